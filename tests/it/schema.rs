//! The schema itself, on every backend: books written before money could go out upgrade whole,
//! and the constraints refuse rows the books cannot hold, whatever the code above them does.

use diesel::connection::SimpleConnection;

use crate::common::{count, now, Backend, TestDb};
use payhook::books::inbox::Evidence;
use payhook::books::verify;
use payhook::config::Settings;
use payhook::crediting::{apply_alone, Outcome};
use payhook::db::{self, Pool};
use payhook::domain::ids::{ChannelName, OrderNo};
use payhook::domain::money::{AmountMinor, Currency};
use payhook::domain::notification::{Notification, NotificationKind, Refund};

/// The first migration, as a database created by the first release holds it.
fn first_release(db: &TestDb) -> Pool {
    let settings = Settings::from_toml("[pool]\nmax_size = 2\n").unwrap();
    let pool = db::connect(&db.url, &settings.pool).expect("connect");
    let folder = match db.backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgresql => "postgresql",
        Backend::Mysql => "mysql",
    };
    let path = format!(
        "{}/migrations/{folder}/2026-11-22-000001_books/up.sql",
        env!("CARGO_MANIFEST_DIR")
    );
    let first = std::fs::read_to_string(path).unwrap();
    let mut conn = pool.get().unwrap();
    conn.batch_execute(&first).expect("first migration");
    conn.batch_execute(
        "CREATE TABLE __diesel_schema_migrations (version VARCHAR(50) PRIMARY KEY NOT NULL, \
             run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP); \
         INSERT INTO __diesel_schema_migrations (version) VALUES ('20261122000001')",
    )
    .expect("record the first migration");
    pool
}

fn books_written_before_money_went_out_upgrade_whole(db: TestDb) {
    let pool = first_release(&db);
    pool.get()
        .unwrap()
        .batch_execute(
            "INSERT INTO accounts (user_id, currency, balance_minor, version, created_at, updated_at) \
             VALUES ('old', 'CNY', 1000, 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP); \
             INSERT INTO orders (order_no, user_id, channel, amount_minor, currency, status, \
                 provider_trade_no, version, created_at, paid_at) \
             VALUES ('OLD-1', 'old', 'alipay', 1000, 'CNY', 'paid', 'T-old', 1, CURRENT_TIMESTAMP, \
                 CURRENT_TIMESTAMP); \
             INSERT INTO orders (order_no, user_id, channel, amount_minor, currency, status, \
                 version, created_at, closed_at) \
             VALUES ('OLD-2', 'old', 'alipay', 500, 'CNY', 'closed', 1, CURRENT_TIMESTAMP, \
                 CURRENT_TIMESTAMP); \
             INSERT INTO ledger (user_id, currency, order_no, kind, amount_minor, balance_after, \
                 created_at) \
             VALUES ('old', 'CNY', 'OLD-1', 'credit', 1000, 1000, CURRENT_TIMESTAMP); \
             INSERT INTO notifications (channel, notification_id, order_no, provider_trade_no, \
                 kind, amount_minor, currency, verified, outcome, raw_headers, raw_body, \
                 first_seen_at, last_seen_at) \
             VALUES ('alipay', 'n-old-paid', 'OLD-1', 'T-old', 'paid', 1000, 'CNY', TRUE, \
                 'credited', '{}', 'x', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP), \
                 ('alipay', 'n-old-late', 'OLD-2', 'T-late', 'paid', 500, 'CNY', TRUE, \
                 'mismatch', '{}', 'x', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP);",
        )
        .expect("books of the first release");

    let ran = db::migrate(&mut pool.get().unwrap()).expect("upgrade");
    let all = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
        .unwrap()
        .count();
    assert_eq!(ran, all - 1, "every migration but the first runs");
    let report = verify::verify(&mut pool.get().unwrap()).unwrap();
    assert!(report.balanced(), "{report}");
    assert_eq!(
        count(
            &pool,
            "SELECT COUNT(*) AS n FROM ledger WHERE entry_key = 'OLD-1' AND kind = 'credit'"
        ),
        1,
        "an old credit is keyed by its order"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT COUNT(*) AS n FROM notifications WHERE anomaly = TRUE"
        ),
        1,
        "an old mismatch is an anomaly"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT COUNT(*) AS n FROM orders WHERE refunded_minor = 0 AND disputed_minor = 0"
        ),
        2
    );

    // The upgraded books take a refund, and still refuse a second credit.
    let refund = Notification {
        channel: ChannelName::parse("alipay").unwrap(),
        notification_id: "n-old-refund".to_owned(),
        order_no: Some(OrderNo::parse("OLD-1").unwrap()),
        provider_trade_no: Some("T-old".to_owned()),
        amount: Some(AmountMinor::new(1000).unwrap()),
        currency: Some(Currency::Cny),
        kind: NotificationKind::Refund(Refund::UpTo {
            total: AmountMinor::new(1000).unwrap(),
            refund_id: None,
        }),
        merchant_mismatch: None,
    };
    let evidence = Evidence {
        headers_json: "{}",
        body: b"x",
        source: payhook::books::inbox::Source::Notify,
    };
    let applied = apply_alone(&mut pool.get().unwrap(), &refund, evidence, now()).unwrap();
    assert_eq!(
        (applied.outcome, applied.balance_after),
        (Outcome::Refunded, Some(0))
    );
    let second_credit = pool.get().unwrap().batch_execute(
        "INSERT INTO ledger (user_id, currency, order_no, kind, amount_minor, balance_after, \
             created_at, entry_key) \
         VALUES ('old', 'CNY', 'OLD-1', 'credit', 1000, 1000, CURRENT_TIMESTAMP, 'OLD-1')",
    );
    assert!(
        second_credit.is_err(),
        "a second credit for one order was accepted"
    );
    let report = verify::verify(&mut pool.get().unwrap()).unwrap();
    assert!(report.balanced(), "{report}");
}

fn the_schema_refuses_rows_the_books_cannot_hold(db: TestDb) {
    the_schema_refuses_rows_the_books_cannot_hold_in(&db.pool(2));
}

fn the_schema_refuses_rows_the_books_cannot_hold_in(pool: &Pool) {
    pool.get()
        .unwrap()
        .batch_execute(
            "INSERT INTO accounts (user_id, currency, balance_minor, version, created_at, updated_at) \
             VALUES ('s', 'CNY', 0, 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP); \
             INSERT INTO orders (order_no, user_id, channel, amount_minor, currency, status, \
                 version, created_at) \
             VALUES ('S-1', 's', 'alipay', 1000, 'CNY', 'paid', 0, CURRENT_TIMESTAMP)",
        )
        .unwrap();
    let accepted = |sql: &str| pool.get().unwrap().batch_execute(sql).is_ok();
    assert!(accepted(
        "UPDATE orders SET status = 'refunded', refunded_minor = 600, disputed_minor = 400 \
         WHERE order_no = 'S-1'"
    ));
    let ledger = "INSERT INTO ledger (user_id, currency, order_no, kind, amount_minor, \
         balance_after, created_at, entry_key, debit_no) VALUES ";
    assert!(accepted(&format!(
        "{ledger} ('s', 'CNY', 'S-1', 'refund', -1, -1, CURRENT_TIMESTAMP, 'S-1/r', NULL)"
    )));
    assert!(accepted(&format!(
        "{ledger} ('s', 'CNY', NULL, 'debit', -1, -2, CURRENT_TIMESTAMP, 'd1', 'd1')"
    )));
    for refused in [
        "UPDATE orders SET status = 'settled' WHERE order_no = 'S-1'".to_owned(),
        "UPDATE orders SET refunded_minor = 601 WHERE order_no = 'S-1'".to_owned(),
        "UPDATE orders SET refunded_minor = -1, disputed_minor = 0 WHERE order_no = 'S-1'"
            .to_owned(),
        format!("{ledger} ('s', 'CNY', 'S-1', 'bonus', 1, 0, CURRENT_TIMESTAMP, 'b', NULL)"),
        format!("{ledger} ('s', 'CNY', NULL, 'debit', -1, 0, CURRENT_TIMESTAMP, 'd2', NULL)"),
        format!("{ledger} ('s', 'CNY', 'S-1', 'debit', -1, 0, CURRENT_TIMESTAMP, 'd3', 'd3')"),
        format!("{ledger} ('s', 'CNY', NULL, 'refund', -1, 0, CURRENT_TIMESTAMP, 'r2', NULL)"),
        format!("{ledger} ('s', 'CNY', 'S-1', 'refund', -1, 0, CURRENT_TIMESTAMP, 'S-1/r', NULL)"),
        format!("{ledger} ('s', 'CNY', NULL, 'debit', -1, 0, CURRENT_TIMESTAMP, 'd1', 'd1')"),
    ] {
        assert!(!accepted(&refused), "accepted: {refused}");
    }
}

on_every_backend!(
    books_written_before_money_went_out_upgrade_whole,
    the_schema_refuses_rows_the_books_cannot_hold,
);

/// MySQL commits each ALTER on its own, so a start stopped in the middle of a migration leaves
/// part of it done and the next start runs all of it again: every step must find its work done
/// and go on.
#[test]
fn mysql_migrations_run_again_over_themselves() {
    let db = TestDb::new(Backend::Mysql);
    let pool = db.pool(2);
    let folder = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/mysql");
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 3, "{names:?}");
    for name in &names[1..] {
        let up = std::fs::read_to_string(format!("{folder}/{name}/up.sql")).unwrap();
        pool.get()
            .unwrap()
            .batch_execute(&up)
            .unwrap_or_else(|e| panic!("{name} again: {e}"));
    }
    // Still the schema it was: what it refuses and what it takes.
    the_schema_refuses_rows_the_books_cannot_hold_in(&pool);
    let checks = count(
        &pool,
        "SELECT COUNT(*) AS n FROM information_schema.CHECK_CONSTRAINTS \
         WHERE CONSTRAINT_SCHEMA = DATABASE() AND CHECK_CLAUSE LIKE '%closed%'",
    );
    assert_eq!(checks, 1, "one CHECK on the order status");
}
