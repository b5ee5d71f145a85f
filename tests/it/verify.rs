//! `payhook verify` on good books and on books corrupted by direct SQL, on both backends.

use std::process::Command;

use crate::common::{create_order, exec, now, TestDb};
use payhook::books::inbox::Evidence;
use payhook::books::verify::verify;
use payhook::crediting::{apply_alone, Outcome};
use payhook::db::Pool;
use payhook::domain::ids::{ChannelName, OrderNo};
use payhook::domain::money::{AmountMinor, Currency};
use payhook::domain::notification::{Notification, NotificationKind, Refund};

/// Three users, four paid orders (the first partly refunded), one pending, one closed, a
/// duplicate and an anomaly per order.
fn good_books(db: &TestDb) -> (Pool, Vec<OrderNo>) {
    let pool = db.pool(4);
    let mut conn = pool.get().unwrap();
    let mut paid = Vec::new();
    for (i, (user, amount)) in [
        ("v1", "10.00"),
        ("v1", "0.50"),
        ("v2", "3.00"),
        ("v3", "99.99"),
    ]
    .into_iter()
    .enumerate()
    {
        let order = create_order(
            &mut conn,
            user,
            "alipay",
            amount,
            "CNY",
            Some(&format!("VER-{i}")),
        );
        let minor = AmountMinor::parse(amount, Currency::Cny).unwrap();
        let n = Notification {
            channel: ChannelName::parse("alipay").unwrap(),
            notification_id: format!("vn-{i}"),
            order_no: Some(order.clone()),
            provider_trade_no: Some(format!("vt-{i}")),
            amount: Some(minor),
            currency: Some(Currency::Cny),
            kind: NotificationKind::Paid,
            merchant_mismatch: None,
        };
        let evidence = Evidence {
            headers_json: "{}",
            body: b"x",
            source: payhook::books::inbox::Source::Notify,
        };
        assert_eq!(
            apply_alone(&mut conn, &n, evidence, now()).unwrap().outcome,
            Outcome::Credited
        );
        assert_eq!(
            apply_alone(&mut conn, &n, evidence, now()).unwrap().outcome,
            Outcome::AlreadyPaid
        );
        let mut wrong = n.clone();
        wrong.notification_id = format!("vn-wrong-{i}");
        wrong.amount = Some(AmountMinor::new(1).unwrap());
        assert_eq!(
            apply_alone(&mut conn, &wrong, evidence, now())
                .unwrap()
                .outcome,
            Outcome::Mismatch
        );
        paid.push(order);
    }
    let mut refund = Notification {
        channel: ChannelName::parse("alipay").unwrap(),
        notification_id: "vn-refund".to_owned(),
        order_no: Some(paid[0].clone()),
        provider_trade_no: Some("vt-0".to_owned()),
        amount: None,
        currency: Some(Currency::Cny),
        kind: NotificationKind::Refund(Refund::One {
            refund_id: "vr-0".to_owned(),
            amount: AmountMinor::new(100).unwrap(),
        }),
        merchant_mismatch: None,
    };
    let evidence = Evidence {
        headers_json: "{}",
        body: b"x",
        source: payhook::books::inbox::Source::Notify,
    };
    for outcome in [Outcome::Refunded, Outcome::AlreadyBooked] {
        let applied = apply_alone(&mut conn, &refund, evidence, now()).unwrap();
        assert_eq!(applied.outcome, outcome);
        refund.notification_id = "vn-refund-again".to_owned();
    }
    create_order(
        &mut conn,
        "v2",
        "alipay",
        "1.00",
        "CNY",
        Some("VER-PENDING"),
    );
    create_order(&mut conn, "v3", "alipay", "2.00", "CNY", Some("VER-CLOSED"));
    exec(
        &pool,
        "UPDATE orders SET status = 'closed' WHERE order_no = 'VER-CLOSED'",
    );
    drop(conn);
    (pool, paid)
}

fn broken_rules(pool: &Pool) -> Vec<(String, Vec<String>)> {
    let report = verify(&mut pool.get().unwrap()).unwrap();
    report
        .checks
        .into_iter()
        .filter(|c| c.violations > 0)
        .map(|c| (c.rule.to_owned(), c.examples))
        .collect()
}

fn payhook_verify(db: &TestDb) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_payhook"))
        .args(["verify", "--database-url", &db.url])
        .env_remove("PAYHOOK_CONFIG")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

fn good_books_verify_with_exit_zero(db: TestDb) {
    let (pool, _) = good_books(&db);
    assert!(broken_rules(&pool).is_empty(), "{:?}", broken_rules(&pool));
    let (code, text) = payhook_verify(&db);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("the books balance"), "{text}");
    assert!(
        text.contains("4 paid orders")
            && text.contains("5 ledger entries")
            && text.contains("1 refunds"),
        "{text}"
    );
    assert!(text.contains("4 anomalies"), "{text}");
}

fn a_bumped_balance_is_found_and_named(db: TestDb) {
    let (pool, _) = good_books(&db);
    exec(
        &pool,
        "UPDATE accounts SET balance_minor = balance_minor + 1 WHERE user_id = 'v2'",
    );
    let broken = broken_rules(&pool);
    assert_eq!(broken.len(), 1, "{broken:?}");
    assert!(broken[0]
        .0
        .contains("balance equals the signed sum of its ledger"));
    assert_eq!(broken[0].1, ["account v2 CNY: balance 301, ledger sum 300"]);
    let (code, text) = payhook_verify(&db);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("account v2 CNY") && text.contains("do NOT balance"),
        "{text}"
    );
}

fn a_duplicate_ledger_row_is_found_and_named(db: TestDb) {
    let (pool, paid) = good_books(&db);
    let drop = match db.backend {
        crate::common::Backend::Mysql => "ALTER TABLE ledger DROP INDEX ledger_kind_key",
        _ => "DROP INDEX ledger_kind_key",
    };
    exec(&pool, drop);
    exec(
        &pool,
        &format!(
            "INSERT INTO ledger (user_id, currency, order_no, kind, amount_minor, balance_after, created_at, entry_key) \
             VALUES ('v3', 'CNY', '{0}', 'credit', 9999, 19998, CURRENT_TIMESTAMP, '{0}'); \
             UPDATE accounts SET balance_minor = balance_minor + 9999 WHERE user_id = 'v3'",
            paid[3]
        ),
    );
    let broken = broken_rules(&pool);
    let rules: Vec<&str> = broken.iter().map(|(r, _)| r.as_str()).collect();
    assert!(
        rules.contains(&"every paid order has exactly one credit of its amount"),
        "{broken:?}"
    );
    assert!(
        rules.contains(&"every credit has exactly one crediting notification"),
        "{broken:?}"
    );
    assert!(
        rules.contains(&"one ledger row per credit, refund, dispute and debit_no"),
        "{broken:?}"
    );
    let examples: Vec<&String> = broken.iter().flat_map(|(_, e)| e).collect();
    assert!(
        examples
            .iter()
            .any(|e| e.contains("VER-3") && e.contains("2 credit(s)")),
        "{examples:?}"
    );
}

fn a_missing_credit_is_found_and_named(db: TestDb) {
    let (pool, paid) = good_books(&db);
    exec(
        &pool,
        &format!(
            "DELETE FROM ledger WHERE order_no = '{0}'; \
             UPDATE accounts SET balance_minor = balance_minor - 300 WHERE user_id = 'v2'",
            paid[2]
        ),
    );
    let broken = broken_rules(&pool);
    let examples: Vec<&String> = broken.iter().flat_map(|(_, e)| e).collect();
    assert!(
        examples
            .iter()
            .any(|e| e.contains("VER-2") && e.contains("0 credit(s)")),
        "{broken:?}"
    );
    assert!(
        examples
            .iter()
            .any(|e| e.contains("vn-2") && e.contains("has no credit")),
        "the inbox disagrees too: {broken:?}"
    );
}

fn a_credit_on_an_unpaid_order_is_found_and_named(db: TestDb) {
    let (pool, paid) = good_books(&db);
    exec(
        &pool,
        &format!(
            "UPDATE orders SET status = 'closed' WHERE order_no = '{}'",
            paid[0]
        ),
    );
    let broken = broken_rules(&pool);
    let examples: Vec<&String> = broken.iter().flat_map(|(_, e)| e).collect();
    assert!(
        examples
            .iter()
            .any(|e| e.contains("VER-0 is closed but ledger")),
        "{broken:?}"
    );
}

fn money_gone_back_that_the_books_do_not_account_for_is_found_and_named(db: TestDb) {
    let (pool, paid) = good_books(&db);
    // The order forgets part of its refund.
    exec(
        &pool,
        &format!(
            "UPDATE orders SET refunded_minor = 40 WHERE order_no = '{}'",
            paid[0]
        ),
    );
    let broken = broken_rules(&pool);
    assert_eq!(broken.len(), 1, "{broken:?}");
    assert!(
        broken[0].0.contains("never exceed what it paid"),
        "{broken:?}"
    );
    assert!(
        broken[0].1[0].contains("refunds 100") && broken[0].1[0].contains("says 40"),
        "{broken:?}"
    );

    // A reversal of a chargeback that never happened, with its money, and a refund of the
    // wrong sign.
    exec(
        &pool,
        &format!(
            "UPDATE orders SET refunded_minor = 100 WHERE order_no = '{0}'; \
             INSERT INTO ledger (user_id, currency, order_no, kind, amount_minor, balance_after, \
                 created_at, entry_key) \
             VALUES ('v3', 'CNY', '{1}', 'chargeback_reversal', 500, 10499, CURRENT_TIMESTAMP, \
                 '{1}/dp_none'), \
                 ('v3', 'CNY', '{1}', 'refund', 1, 10500, CURRENT_TIMESTAMP, '{1}/r_plus'); \
             UPDATE accounts SET balance_minor = balance_minor + 501 WHERE user_id = 'v3'",
            paid[0], paid[3]
        ),
    );
    let broken = broken_rules(&pool);
    let rules: Vec<&str> = broken.iter().map(|(r, _)| r.as_str()).collect();
    for rule in [
        "every ledger amount has its kind's sign",
        "every chargeback reversal has its chargeback and returns no more than it took",
        "every refund, chargeback and reversal has a notification that says so",
    ] {
        assert!(rules.contains(&rule), "{rule}: {broken:?}");
    }
    let (code, text) = payhook_verify(&db);
    assert_eq!(code, Some(1), "{text}");
}

fn a_debt_is_reported_and_not_an_error(db: TestDb) {
    let (pool, paid) = good_books(&db);
    let mut conn = pool.get().unwrap();
    // v3 spends 99.00 of 99.99, then the whole payment is refunded.
    exec(
        &pool,
        "INSERT INTO ledger (user_id, currency, order_no, kind, amount_minor, balance_after, \
             created_at, entry_key, debit_no) \
         VALUES ('v3', 'CNY', NULL, 'debit', -9900, 99, CURRENT_TIMESTAMP, 'spend', 'spend'); \
         UPDATE accounts SET balance_minor = balance_minor - 9900 WHERE user_id = 'v3'",
    );
    let refund = Notification {
        channel: ChannelName::parse("alipay").unwrap(),
        notification_id: "vn-refund-all".to_owned(),
        order_no: Some(paid[3].clone()),
        provider_trade_no: Some("vt-3".to_owned()),
        amount: None,
        currency: Some(Currency::Cny),
        kind: NotificationKind::Refund(Refund::UpTo {
            total: AmountMinor::new(9999).unwrap(),
            refund_id: None,
        }),
        merchant_mismatch: None,
    };
    let evidence = Evidence {
        headers_json: "{}",
        body: b"x",
        source: payhook::books::inbox::Source::Notify,
    };
    let applied = apply_alone(&mut conn, &refund, evidence, now()).unwrap();
    assert_eq!(
        (applied.outcome, applied.balance_after),
        (Outcome::Refunded, Some(-9900))
    );
    assert!(broken_rules(&pool).is_empty(), "{:?}", broken_rules(&pool));
    let (code, text) = payhook_verify(&db);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("debts: 1 account(s) owe money") && text.contains("account v3 CNY owes 9900"),
        "{text}"
    );
    assert!(text.contains("1 refunded orders"), "{text}");
}

on_every_backend!(
    good_books_verify_with_exit_zero,
    money_gone_back_that_the_books_do_not_account_for_is_found_and_named,
    a_debt_is_reported_and_not_an_error,
    a_bumped_balance_is_found_and_named,
    a_duplicate_ledger_row_is_found_and_named,
    a_missing_credit_is_found_and_named,
    a_credit_on_an_unpaid_order_is_found_and_named,
);

/// An order paid after it was closed, its payment credited by hand through the console's
/// resolution; returns the notification's id.
fn credited_by_hand(pool: &Pool) -> i64 {
    use payhook::books::anomalies::{resolve, Decision, Resolution, Resolving};
    let mut conn = pool.get().unwrap();
    create_order(&mut conn, "v4", "alipay", "4.00", "CNY", Some("VER-LATE"));
    exec(
        pool,
        "UPDATE orders SET status = 'closed' WHERE order_no = 'VER-LATE'",
    );
    let n = Notification {
        channel: ChannelName::parse("alipay").unwrap(),
        notification_id: "vn-late".to_owned(),
        order_no: Some(OrderNo::parse("VER-LATE").unwrap()),
        provider_trade_no: Some("vt-late".to_owned()),
        amount: Some(AmountMinor::new(400).unwrap()),
        currency: Some(Currency::Cny),
        kind: NotificationKind::Paid,
        merchant_mismatch: None,
    };
    let evidence = Evidence {
        headers_json: "{}",
        body: b"x",
        source: payhook::books::inbox::Source::Notify,
    };
    assert_eq!(
        apply_alone(&mut conn, &n, evidence, now()).unwrap().outcome,
        Outcome::Mismatch
    );
    let id = crate::common::count(
        pool,
        "SELECT id AS n FROM notifications WHERE notification_id = 'vn-late'",
    );
    let decision = Decision {
        resolution: Resolution::Credited,
        by: "ana (session 0123abcd)",
        note: "paid after close; the merchant keeps it",
        at: now(),
    };
    assert_eq!(
        resolve(&mut conn, id, &decision).unwrap(),
        Resolving::Done {
            balance_after: Some(400)
        }
    );
    id
}

fn manual_credits_balance_and_need_their_resolution(db: TestDb) {
    let (pool, _) = good_books(&db);
    let id = credited_by_hand(&pool);
    assert!(broken_rules(&pool).is_empty(), "{:?}", broken_rules(&pool));
    let (code, text) = payhook_verify(&db);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("1 manual credits"), "{text}");

    // The resolution is changed by hand to something else: the credit has no reason.
    exec(
        &pool,
        &format!("UPDATE notifications SET resolution = 'dismissed' WHERE id = {id}"),
    );
    let broken = broken_rules(&pool);
    assert_eq!(broken.len(), 1, "{broken:?}");
    assert!(broken[0].0.contains("every manual credit"), "{broken:?}");
    assert!(
        broken[0].1[0].contains(&format!("notification:{id}"))
            && broken[0].1[0].contains("not resolved as credited"),
        "{broken:?}"
    );

    // The credit is gone, with its money: the resolution says credited for nothing.
    exec(
        &pool,
        &format!(
            "UPDATE notifications SET resolution = 'credited' WHERE id = {id}; \
             DELETE FROM ledger WHERE kind = 'manual_credit'; \
             UPDATE accounts SET balance_minor = balance_minor - 400 WHERE user_id = 'v4'"
        ),
    );
    let broken = broken_rules(&pool);
    assert_eq!(broken.len(), 1, "{broken:?}");
    assert!(
        broken[0].0.contains("has its manual credit") && broken[0].1[0].contains("vn-late"),
        "{broken:?}"
    );
    let (code, text) = payhook_verify(&db);
    assert_eq!(code, Some(1), "{text}");
}

on_every_backend!(manual_credits_balance_and_need_their_resolution);
