//! The crediting transaction against real SQLite and PostgreSQL databases: every outcome, and
//! real concurrency on one notification and on one account.

use std::sync::{Arc, Barrier};

use crate::common::{count, create_order, exec, now, pg_cluster, race, Backend, TestDb};
use payhook::books::inbox::{self, Evidence};
use payhook::books::orders::{self, OrderStatus};
use payhook::crediting::{apply_alone, Answer, Outcome};
use payhook::crediting::{commit_batch, Applied, ApplyJob, CountJob, Failure};
use payhook::db::Pool;
use payhook::domain::ids::{ChannelName, OrderNo};
use payhook::domain::money::{AmountMinor, Currency};
use payhook::domain::notification::{Notification, NotificationKind};

const EVIDENCE: Evidence<'static> = Evidence {
    headers_json: "{}",
    body: b"raw body",
    source: payhook::books::inbox::Source::Notify,
};

fn paid(order_no: &OrderNo, trade_no: &str, minor: i64, currency: &str) -> Notification {
    Notification {
        channel: ChannelName::parse("alipay").unwrap(),
        notification_id: format!("n-{trade_no}"),
        order_no: Some(order_no.clone()),
        provider_trade_no: Some(trade_no.to_owned()),
        amount: Some(AmountMinor::new(minor).unwrap()),
        currency: Some(Currency::parse(currency).unwrap()),
        kind: NotificationKind::Paid,
        merchant_mismatch: None,
    }
}

fn run(pool: &Pool, n: &Notification) -> Applied {
    apply_alone(&mut pool.get().unwrap(), n, EVIDENCE, now()).expect("apply")
}

fn balance(pool: &Pool, user: &str) -> i64 {
    count(
        pool,
        &format!("SELECT CAST(COALESCE(SUM(balance_minor), 0) AS BIGINT) AS n FROM accounts WHERE user_id = '{user}'"),
    )
}

fn ledger_rows(pool: &Pool, order_no: &OrderNo) -> i64 {
    count(
        pool,
        &format!("SELECT COUNT(*) AS n FROM ledger WHERE order_no = '{order_no}'"),
    )
}

fn status(pool: &Pool, order_no: &OrderNo) -> OrderStatus {
    orders::find(&mut pool.get().unwrap(), order_no)
        .unwrap()
        .expect("order exists")
        .status
}

/// Balances equal their ledgers, and every paid order has exactly one credit of its amount.
fn assert_books_balance(pool: &Pool) {
    let unbalanced = count(
        pool,
        "SELECT COUNT(*) AS n FROM accounts a WHERE a.balance_minor <> \
         (SELECT CAST(COALESCE(SUM(l.amount_minor), 0) AS BIGINT) FROM ledger l \
          WHERE l.user_id = a.user_id AND l.currency = a.currency)",
    );
    assert_eq!(unbalanced, 0, "an account balance differs from its ledger");
    let bad_paid = count(
        pool,
        "SELECT COUNT(*) AS n FROM orders o WHERE o.status = 'paid' AND \
         (SELECT COUNT(*) FROM ledger l WHERE l.order_no = o.order_no AND l.amount_minor = o.amount_minor) <> 1",
    );
    assert_eq!(bad_paid, 0, "a paid order without exactly one credit");
    let credited_unpaid = count(
        pool,
        "SELECT COUNT(*) AS n FROM ledger l JOIN orders o ON o.order_no = l.order_no WHERE o.status <> 'paid'",
    );
    assert_eq!(credited_unpaid, 0, "a credit for an order that is not paid");
}

fn a_paid_notification_credits_the_order_once(db: TestDb) {
    let pool = db.pool(4);
    let order = create_order(
        &mut pool.get().unwrap(),
        "u1",
        "alipay",
        "10.00",
        "CNY",
        None,
    );
    let n = paid(&order, "T1", 1000, "CNY");

    let first = run(&pool, &n);
    assert_eq!(first.outcome, Outcome::Credited);
    assert_eq!(first.outcome.answer(), Answer::Ack);
    assert_eq!(first.balance_after, Some(1000));
    assert_eq!(balance(&pool, "u1"), 1000);
    assert_eq!(ledger_rows(&pool, &order), 1);
    let stored = orders::find(&mut pool.get().unwrap(), &order)
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, OrderStatus::Paid);
    assert_eq!(stored.provider_trade_no.as_deref(), Some("T1"));
    assert_eq!(stored.version, 1);
    assert!(stored.paid_at.is_some());

    let again = run(&pool, &n);
    assert_eq!(again.outcome, Outcome::AlreadyPaid);
    assert_eq!(again.outcome.answer(), Answer::Ack);
    assert_eq!(again.inbox_id, first.inbox_id);
    assert_eq!(again.delivery_count, 2);
    assert_eq!(balance(&pool, "u1"), 1000);
    assert_eq!(ledger_rows(&pool, &order), 1);

    let row = inbox::find(&mut pool.get().unwrap(), &n.channel, &n.notification_id)
        .unwrap()
        .unwrap();
    assert_eq!(row.delivery_count, 2);
    assert_eq!(
        row.outcome, "credited",
        "the crediting delivery keeps its outcome"
    );
    assert!(row.verified);
    assert_books_balance(&pool);
}

fn a_second_trade_for_a_paid_order_is_an_anomaly_and_never_credits(db: TestDb) {
    let pool = db.pool(2);
    let order = create_order(
        &mut pool.get().unwrap(),
        "u2",
        "alipay",
        "5.00",
        "CNY",
        None,
    );
    assert_eq!(
        run(&pool, &paid(&order, "TA", 500, "CNY")).outcome,
        Outcome::Credited
    );
    let other = run(&pool, &paid(&order, "TB", 500, "CNY"));
    assert_eq!(other.outcome, Outcome::PaidByOtherTrade);
    assert!(other.outcome.is_anomaly());
    assert_eq!(other.outcome.answer(), Answer::Ack);
    assert!(other.detail.unwrap().contains("TA"));
    assert_eq!(balance(&pool, "u2"), 500);
    let row = inbox::find(
        &mut pool.get().unwrap(),
        &ChannelName::parse("alipay").unwrap(),
        "n-TB",
    )
    .unwrap()
    .unwrap();
    assert_eq!(row.outcome, "paid_by_other_trade");
    assert_books_balance(&pool);
}

fn a_trade_that_already_paid_another_order_never_pays_a_second(db: TestDb) {
    let pool = db.pool(2);
    let mut conn = pool.get().unwrap();
    let first = create_order(&mut conn, "u3", "alipay", "1.00", "CNY", None);
    let second = create_order(&mut conn, "u3", "alipay", "1.00", "CNY", None);
    drop(conn);
    assert_eq!(
        run(&pool, &paid(&first, "SAME", 100, "CNY")).outcome,
        Outcome::Credited
    );
    let mut reuse = paid(&second, "SAME", 100, "CNY");
    reuse.notification_id = "n-reuse".into();
    let applied = run(&pool, &reuse);
    assert_eq!(applied.outcome, Outcome::Mismatch);
    assert_eq!(status(&pool, &second), OrderStatus::Pending);
    assert_eq!(balance(&pool, "u3"), 100);
    assert_books_balance(&pool);
}

fn amount_currency_and_merchant_mismatches_are_recorded_and_never_credit(db: TestDb) {
    let pool = db.pool(2);
    let order = create_order(
        &mut pool.get().unwrap(),
        "u4",
        "alipay",
        "10.00",
        "CNY",
        None,
    );

    let wrong_amount = paid(&order, "T-amount", 999, "CNY");
    let applied = run(&pool, &wrong_amount);
    assert_eq!(applied.outcome, Outcome::Mismatch);
    assert!(applied.detail.as_deref().unwrap().contains("9.99 CNY"));

    let wrong_currency = paid(&order, "T-currency", 1000, "USD");
    assert_eq!(run(&pool, &wrong_currency).outcome, Outcome::Mismatch);

    let mut other_merchant = paid(&order, "T-merchant", 1000, "CNY");
    other_merchant.merchant_mismatch = Some("app_id 999 is not ours".into());
    assert_eq!(run(&pool, &other_merchant).outcome, Outcome::Mismatch);

    let mut other_channel = paid(&order, "T-channel", 1000, "CNY");
    other_channel.channel = ChannelName::parse("stripe").unwrap();
    assert_eq!(run(&pool, &other_channel).outcome, Outcome::Mismatch);

    assert_eq!(status(&pool, &order), OrderStatus::Pending);
    assert_eq!(balance(&pool, "u4"), 0);
    assert_eq!(ledger_rows(&pool, &order), 0);
    let anomalies = count(
        &pool,
        &format!("SELECT COUNT(*) AS n FROM notifications WHERE order_no = '{order}' AND outcome = 'mismatch'"),
    );
    assert_eq!(anomalies, 4, "every mismatch is recorded against the order");

    // The right notification still credits afterwards.
    assert_eq!(
        run(&pool, &paid(&order, "T-ok", 1000, "CNY")).outcome,
        Outcome::Credited
    );
    assert_books_balance(&pool);
}

fn a_notification_for_an_unknown_order_asks_for_a_retry_and_credits_once_the_order_exists(
    db: TestDb,
) {
    let pool = db.pool(2);
    let order_no = OrderNo::parse("LATE-ORDER-1").unwrap();
    let n = paid(&order_no, "T-late", 700, "CNY");
    let first = run(&pool, &n);
    assert_eq!(first.outcome, Outcome::UnknownOrder);
    assert_eq!(first.outcome.answer(), Answer::Retry);
    let row = inbox::find(&mut pool.get().unwrap(), &n.channel, &n.notification_id)
        .unwrap()
        .expect("the delivery is recorded even though it is retried");
    assert_eq!(row.outcome, "unknown_order");

    create_order(
        &mut pool.get().unwrap(),
        "u5",
        "alipay",
        "7.00",
        "CNY",
        Some("LATE-ORDER-1"),
    );
    let second = run(&pool, &n);
    assert_eq!(second.outcome, Outcome::Credited);
    assert_eq!(second.delivery_count, 2);
    assert_eq!(balance(&pool, "u5"), 700);
    assert_books_balance(&pool);
}

fn a_closed_order_is_never_credited_by_a_late_paid_notification(db: TestDb) {
    let pool = db.pool(2);
    let order = create_order(
        &mut pool.get().unwrap(),
        "u6",
        "alipay",
        "3.00",
        "CNY",
        None,
    );
    let mut closed = paid(&order, "T-close", 300, "CNY");
    closed.kind = NotificationKind::Closed;
    closed.notification_id = "n-close".into();
    assert_eq!(run(&pool, &closed).outcome, Outcome::Closed);
    assert_eq!(status(&pool, &order), OrderStatus::Closed);
    // The same close again is still Closed, not an error.
    assert_eq!(run(&pool, &closed).outcome, Outcome::Closed);

    let late = run(&pool, &paid(&order, "T-late-pay", 300, "CNY"));
    assert_eq!(late.outcome, Outcome::Mismatch);
    assert!(late.outcome.is_anomaly());
    assert!(late.detail.unwrap().contains("closed"));
    assert_eq!(status(&pool, &order), OrderStatus::Closed);
    assert_eq!(balance(&pool, "u6"), 0);
    assert_books_balance(&pool);
}

fn closes_and_other_statuses_never_credit_and_a_paid_order_stays_paid(db: TestDb) {
    let pool = db.pool(2);
    let order = create_order(
        &mut pool.get().unwrap(),
        "u7",
        "alipay",
        "2.00",
        "CNY",
        None,
    );

    let mut waiting = paid(&order, "T-wait", 200, "CNY");
    waiting.kind = NotificationKind::Other("WAIT_BUYER_PAY".into());
    waiting.notification_id = "n-wait".into();
    assert_eq!(run(&pool, &waiting).outcome, Outcome::Ignored);
    assert_eq!(status(&pool, &order), OrderStatus::Pending);

    assert_eq!(
        run(&pool, &paid(&order, "T-pay", 200, "CNY")).outcome,
        Outcome::Credited
    );

    let mut close = paid(&order, "T-pay", 200, "CNY");
    close.kind = NotificationKind::Closed;
    close.notification_id = "n-close-after-pay".into();
    assert_eq!(run(&pool, &close).outcome, Outcome::Ignored);
    assert_eq!(
        status(&pool, &order),
        OrderStatus::Paid,
        "a paid order never leaves paid"
    );
    assert_eq!(balance(&pool, "u7"), 200);
    assert_eq!(ledger_rows(&pool, &order), 1);

    let mut no_order = paid(&order, "T-x", 200, "CNY");
    no_order.order_no = None;
    no_order.kind = NotificationKind::Other("customer.created".into());
    no_order.notification_id = "n-no-order".into();
    assert_eq!(run(&pool, &no_order).outcome, Outcome::Ignored);
    assert_books_balance(&pool);
}

fn the_database_itself_refuses_a_second_credit_for_one_order(db: TestDb) {
    let pool = db.pool(2);
    let order = create_order(
        &mut pool.get().unwrap(),
        "u8",
        "alipay",
        "1.00",
        "CNY",
        None,
    );
    assert_eq!(
        run(&pool, &paid(&order, "T8", 100, "CNY")).outcome,
        Outcome::Credited
    );
    let second = format!(
        "INSERT INTO ledger (user_id, currency, order_no, kind, amount_minor, balance_after, created_at, entry_key) \
         VALUES ('u8', 'CNY', '{order}', 'credit', 100, 200, CURRENT_TIMESTAMP, '{order}')"
    );
    let refused = {
        use diesel::connection::SimpleConnection;
        pool.get().unwrap().batch_execute(&second)
    };
    assert!(
        refused.is_err(),
        "a second ledger credit for one order was accepted"
    );
}

fn a_payment_that_names_no_trade_never_credits_nor_passes_as_a_repeat(db: TestDb) {
    let pool = db.pool(4);
    let order = create_order(
        &mut pool.get().unwrap(),
        "u-tl",
        "alipay",
        "1.00",
        "CNY",
        None,
    );
    let mut first = paid(&order, "unused", 100, "CNY");
    first.provider_trade_no = None;
    let applied = run(&pool, &first);
    assert_eq!(applied.outcome, Outcome::Mismatch);
    assert_eq!(
        applied.detail.as_deref(),
        Some("payment names no provider trade")
    );
    assert_eq!(balance(&pool, "u-tl"), 0);
    assert_eq!(status(&pool, &order), OrderStatus::Pending);

    // Once paid by a named trade, a nameless second payment is not read as its repeat.
    assert_eq!(
        run(&pool, &paid(&order, "T-named", 100, "CNY")).outcome,
        Outcome::Credited
    );
    let mut second = paid(&order, "unused-2", 100, "CNY");
    second.provider_trade_no = None;
    assert_ne!(run(&pool, &second).outcome, Outcome::AlreadyPaid);
    assert_eq!(balance(&pool, "u-tl"), 100);
    assert_books_balance(&pool);

    // An order paid before trades were required, by no named trade: a nameless payment is never
    // its repeat, neither on its first delivery nor on the next ones.
    let legacy = create_order(
        &mut pool.get().unwrap(),
        "u-tl2",
        "alipay",
        "1.00",
        "CNY",
        None,
    );
    exec(
        &pool,
        &format!("UPDATE orders SET status = 'paid', provider_trade_no = NULL WHERE order_no = '{legacy}'"),
    );
    let mut nameless = paid(&legacy, "unused-3", 100, "CNY");
    nameless.provider_trade_no = None;
    for delivery in 1..=2 {
        let outcome = run(&pool, &nameless).outcome;
        assert_eq!(outcome, Outcome::Mismatch, "delivery {delivery}");
    }
}

fn identifiers_that_differ_only_in_case_are_different_orders(db: TestDb) {
    let pool = db.pool(4);
    let mut conn = pool.get().unwrap();
    let upper = create_order(
        &mut conn,
        "Case-User",
        "alipay",
        "1.00",
        "CNY",
        Some("CASE-A1"),
    );
    let lower = create_order(
        &mut conn,
        "case-user",
        "alipay",
        "2.00",
        "CNY",
        Some("case-a1"),
    );
    drop(conn);
    assert_ne!(upper, lower);
    let mut n = paid(&lower, "T-case", 200, "CNY");
    n.notification_id = "n-Case".to_owned();
    assert_eq!(run(&pool, &n).outcome, Outcome::Credited);
    // A notification id, trade and order that differ only in case are others: this one credits
    // its own order, and is neither a repeat of the first nor a second payment of its order.
    let mut other = paid(&upper, "t-CASE", 100, "CNY");
    other.notification_id = "n-case".to_owned();
    assert_eq!(run(&pool, &other).outcome, Outcome::Credited);
    assert_eq!(balance(&pool, "case-user"), 200);
    assert_eq!(balance(&pool, "Case-User"), 100);
    assert_eq!(status(&pool, &upper), OrderStatus::Paid);
    assert_eq!(
        count(
            &pool,
            "SELECT COUNT(*) AS n FROM notifications WHERE notification_id IN ('n-Case', 'n-case')"
        ),
        2
    );
    assert_books_balance(&pool);
}

fn job(n: &Notification) -> ApplyJob {
    ApplyJob::new(n.clone(), "{}".to_owned(), "raw body".into(), now())
}

fn outcomes(
    results: &[Result<payhook::crediting::Applied, payhook::crediting::Failure>],
) -> Vec<Result<Outcome, String>> {
    results
        .iter()
        .map(|r| r.as_ref().map(|a| a.outcome).map_err(|e| e.to_string()))
        .collect()
}

fn a_batch_answers_each_notification_as_if_it_were_alone(db: TestDb) {
    let pool = db.pool(2);
    let mut conn = pool.get().unwrap();
    let a = create_order(&mut conn, "b1", "alipay", "1.00", "CNY", None);
    let b = create_order(&mut conn, "b2", "alipay", "2.00", "CNY", None);
    let c = create_order(&mut conn, "b3", "alipay", "3.00", "CNY", None);
    let d = create_order(&mut conn, "b4", "alipay", "4.00", "CNY", None);
    let settled = run(&pool, &paid(&d, "TD", 400, "CNY"));
    assert_eq!(settled.outcome, Outcome::Credited);
    let counted = |_| CountJob {
        inbox_id: settled.inbox_id,
        now: now(),
    };

    let batch = [
        job(&paid(&a, "TA", 100, "CNY")),
        job(&paid(&b, "TB", 200, "CNY")),
        job(&paid(&a, "TA", 100, "CNY")),
        job(&paid(&c, "TC", 999, "CNY")),
    ];
    let counts: Vec<CountJob> = (0..3).map(counted).collect();
    let results = commit_batch(&mut conn, &batch, &counts);
    assert_eq!(
        outcomes(&results),
        vec![
            Ok(Outcome::Credited),
            Ok(Outcome::Credited),
            Ok(Outcome::AlreadyPaid),
            Ok(Outcome::Mismatch)
        ],
        "a later notification in a batch sees what an earlier one wrote"
    );
    assert_eq!(balance(&pool, "b1"), 100);
    assert_eq!(balance(&pool, "b2"), 200);
    assert_eq!(balance(&pool, "b3"), 0);
    assert_eq!(ledger_rows(&pool, &a), 1);
    assert_eq!(status(&pool, &c), OrderStatus::Pending);
    let deliveries = |id: &str| {
        count(
            &pool,
            &format!(
                "SELECT delivery_count AS n FROM notifications WHERE notification_id = '{id}'"
            ),
        )
    };
    assert_eq!(deliveries("n-TA"), 2);
    assert_eq!(deliveries("n-TD"), 4, "the counted deliveries are written");
    assert_books_balance(&pool);
}

fn a_notification_that_fails_in_a_batch_fails_alone(db: TestDb) {
    let pool = db.pool(2);
    let mut conn = pool.get().unwrap();
    let a = create_order(&mut conn, "f1", "alipay", "1.00", "CNY", None);
    let full = create_order(&mut conn, "f2", "alipay", "10.00", "CNY", None);
    let b = create_order(&mut conn, "f3", "alipay", "3.00", "CNY", None);
    // No room left in f2's balance: its credit must fail, and only its credit.
    exec(
        &pool,
        "UPDATE accounts SET balance_minor = 9223372036854775000 WHERE user_id = 'f2'",
    );

    let batch = [
        job(&paid(&a, "FA", 100, "CNY")),
        job(&paid(&full, "FF", 1000, "CNY")),
        job(&paid(&b, "FB", 300, "CNY")),
    ];
    let results = commit_batch(&mut conn, &batch, &[]);
    assert_eq!(results[0].as_ref().unwrap().outcome, Outcome::Credited);
    let error = results[1].as_ref().unwrap_err();
    assert!(
        matches!(**error, payhook::crediting::CreditError::NotCredited { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("overflow"), "{error}");
    assert_eq!(results[2].as_ref().unwrap().outcome, Outcome::Credited);
    assert_eq!(balance(&pool, "f1"), 100);
    assert_eq!(balance(&pool, "f3"), 300);
    assert_eq!(balance(&pool, "f2"), 9223372036854775000, "untouched");
    assert_eq!(status(&pool, &full), OrderStatus::Pending, "rolled back");
    assert_eq!(ledger_rows(&pool, &full), 0);
}

/// An account near its bound takes, in the batch's order, the credits that fit: the first, and
/// not the later one that would overflow it, even where the batch writes them together.
fn an_account_near_its_bound_takes_the_credits_that_fit_in_the_batch_s_order(db: TestDb) {
    let pool = db.pool(2);
    let mut conn = pool.get().unwrap();
    let first = create_order(&mut conn, "n1", "alipay", "10.00", "CNY", None);
    let other = create_order(&mut conn, "n2", "alipay", "3.00", "CNY", None);
    let second = create_order(&mut conn, "n1", "alipay", "10.00", "CNY", None);
    exec(
        &pool,
        "UPDATE accounts SET balance_minor = 9223372036854775807 - 1500 WHERE user_id = 'n1'",
    );
    let batch = [
        job(&paid(&first, "NF", 1000, "CNY")),
        job(&paid(&other, "NO", 300, "CNY")),
        job(&paid(&second, "NS", 1000, "CNY")),
    ];
    let results = commit_batch(&mut conn, &batch, &[]);
    assert_eq!(results[0].as_ref().unwrap().outcome, Outcome::Credited);
    assert_eq!(results[1].as_ref().unwrap().outcome, Outcome::Credited);
    let error = results[2].as_ref().unwrap_err();
    assert!(
        matches!(**error, payhook::crediting::CreditError::NotCredited { .. }),
        "{error}"
    );
    assert_eq!(balance(&pool, "n1"), 9223372036854775807 - 500);
    assert_eq!(balance(&pool, "n2"), 300);
    assert_eq!(status(&pool, &second), OrderStatus::Pending);
    assert_eq!(ledger_rows(&pool, &second), 0);
}

/// Every statement that crediting runs (the reads, the row locks, the compare-and-set and the
/// balance where they are statements of their own, the inbox, the delivery counts of repeats) is
/// prepared once and found in the statement cache afterwards, and lists padded to one length
/// share a statement. diesel prepares anew on every call its own `UPDATE`s (on SQLite a sixth of
/// the writer's time) and, outside PostgreSQL, every statement with an `IN` list. SQLite's
/// inserts of a batch's ledger and inbox rows cannot be padded: they write in runs of
/// power-of-two lengths, so a batch of four prepares the run of four that batches of three (a
/// run of two and one of one) did not, and nothing else.
fn the_statements_of_crediting_stay_prepared(db: TestDb) {
    use diesel::connection::{Connection, InstrumentationEvent};
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    let pool = db.pool(1);
    let mut conn = pool.get().unwrap();
    // SQL text -> (runs, times put in the cache)
    let statements: Arc<Mutex<BTreeMap<String, (usize, usize)>>> = Arc::default();
    let seen = Arc::clone(&statements);
    conn.set_instrumentation(move |event: InstrumentationEvent<'_>| {
        let (sql, ran) = match event {
            InstrumentationEvent::StartQuery { query, .. } => (query.to_string(), true),
            InstrumentationEvent::CacheQuery { sql, .. } => (sql.to_owned(), false),
            _ => return,
        };
        let sql = sql.split(" -- binds:").next().unwrap_or_default().trim();
        let mut seen = seen.lock().unwrap();
        let entry = seen.entry(sql.to_owned()).or_default();
        if ran {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
    });
    let mut credited = Vec::new();
    let mut after_threes = BTreeMap::new();
    // Batches of three first payments and counts of up to three rows, then of four: lists that
    // are padded alike, so the fours prepare nothing the threes did not (but SQLite's runs).
    for i in 0..6 {
        let size = if i < 3 { 3 } else { 4 };
        if i == 3 {
            after_threes = statements.lock().unwrap().clone();
        }
        let order = create_order(&mut conn, "prep", "alipay", "1.00", "CNY", None);
        let n = paid(&order, &format!("UP{i}"), 100, "CNY");
        let alone = apply_alone(&mut conn, &n, EVIDENCE, now()).unwrap();
        assert_eq!(alone.outcome, Outcome::Credited);
        let repeat = apply_alone(&mut conn, &n, EVIDENCE, now()).unwrap();
        assert_eq!(repeat.outcome, Outcome::AlreadyPaid);
        credited.push(alone.inbox_id);
        let counts: Vec<CountJob> = credited
            .iter()
            .rev()
            .take(size)
            .map(|&inbox_id| CountJob {
                inbox_id,
                now: now(),
            })
            .collect();
        let batch: Vec<ApplyJob> = (0..size)
            .map(|j| {
                let order = create_order(&mut conn, "prep", "alipay", "1.00", "CNY", None);
                job(&paid(&order, &format!("UPB{i}-{j}"), 100, "CNY"))
            })
            .collect();
        let results = commit_batch(&mut conn, &batch, &counts);
        assert_eq!(outcomes(&results), vec![Ok(Outcome::Credited); size]);
    }
    let statements = statements.lock().unwrap();
    let prepared_by_fours: Vec<&String> = statements
        .iter()
        .filter(|(sql, (_, cached))| {
            *cached > after_threes.get(*sql).map_or(0, |(_, cached)| *cached)
        })
        .map(|(sql, _)| sql)
        .collect();
    let runs_of_four = |sql: &str| {
        matches!(db.backend, Backend::Sqlite)
            && (sql.starts_with("INSERT INTO ledger")
                || sql.starts_with("INSERT INTO notifications"))
            && sql.matches("), (").count() == 3
    };
    assert!(
        prepared_by_fours.iter().all(|sql| runs_of_four(sql)),
        "batches of four prepared statements that batches of three did not: {prepared_by_fours:?}"
    );
    if matches!(db.backend, Backend::Sqlite) {
        assert_eq!(prepared_by_fours.len(), 2, "{prepared_by_fours:?}");
    }
    // Transaction control is sent as text, with nothing to prepare.
    let control = [
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "SAVEPOINT",
        "RELEASE",
        "SET",
        "SELECT SET_CONFIG",
    ];
    let crediting: Vec<_> = statements
        .iter()
        .filter(|(sql, _)| !control.iter().any(|c| sql.to_uppercase().starts_with(c)))
        .collect();
    assert!(
        crediting
            .iter()
            .any(|(sql, _)| sql.contains("delivery_count +")),
        "the repeats were counted: {statements:?}"
    );
    // What a connection runs on its first use alone runs once.
    for (sql, (runs, cached)) in crediting.into_iter().filter(|(_, (runs, _))| *runs > 1) {
        assert_eq!(
            *cached, 1,
            "{sql}: ran {runs} times, prepared for the cache {cached} times"
        );
    }
}

/// A batch of first payments reads its orders with one statement however many notifications it
/// holds, on every backend: on SQLite, where one writer does all of the database's work, a read
/// per notification was a sixth of that writer's time. On PostgreSQL that statement reads the
/// inbox rows too, and elsewhere one more does. Nor does it open a savepoint per notification:
/// on SQLite that copied every page each one touched once more. It writes them together too,
/// where the backend can: on PostgreSQL in one statement, on SQLite in one per table (the inserts
/// in runs of power-of-two lengths, five rows in a run of four and one of one); MySQL, without
/// `RETURNING`, writes one by one.
fn a_batch_reads_its_orders_up_front_in_one_statement(db: TestDb) {
    use diesel::connection::{Connection, InstrumentationEvent};
    use std::sync::Mutex;

    let pool = db.pool(1);
    let mut conn = pool.get().unwrap();
    let batch: Vec<ApplyJob> = (0..5)
        .map(|j| {
            let order = create_order(&mut conn, "reads", "alipay", "1.00", "CNY", None);
            job(&paid(&order, &format!("RD{j}"), 100, "CNY"))
        })
        .collect();
    // Every read of orders in the batch, and the reads of orders or inbox rows before its first
    // write (after it, MySQL, which has no `RETURNING`, reads back each inbox row it inserts).
    #[derive(Default)]
    struct Seen {
        of_orders: Vec<String>,
        up_front: Vec<String>,
        savepoints: Vec<String>,
        locks: Vec<String>,
        orders_written: usize,
        ledger_written: usize,
    }
    let reads: Arc<Mutex<Seen>> = Arc::default();
    let seen = Arc::clone(&reads);
    let mut wrote = false;
    conn.set_instrumentation(move |event: InstrumentationEvent<'_>| {
        if let InstrumentationEvent::StartQuery { query, .. } = event {
            let sql = query.to_string().to_lowercase().replace(['"', '`'], "");
            let sql = sql.trim_start();
            wrote |= ["insert", "update", "with", "delete"]
                .iter()
                .any(|write| sql.starts_with(write));
            if sql.starts_with("savepoint") {
                seen.lock().unwrap().savepoints.push(sql.to_owned());
            }
            if sql.starts_with("update orders")
                || sql.starts_with("with") && sql.contains("update orders")
            {
                seen.lock().unwrap().orders_written += 1;
            }
            if sql.contains("insert into ledger") {
                seen.lock().unwrap().ledger_written += 1;
            }
            if sql.starts_with("select") && sql.contains("for update") {
                seen.lock().unwrap().locks.push(sql.to_owned());
            }
            // Row locks read their rows too; they are not the reads counted here.
            if !sql.starts_with("select") || sql.contains("for update") {
                return;
            }
            let mut seen = seen.lock().unwrap();
            if sql.contains("orders") {
                seen.of_orders.push(sql.to_owned());
            }
            if !wrote && (sql.contains("orders") || sql.contains("notifications")) {
                seen.up_front.push(sql.to_owned());
            }
        }
    });
    let results = commit_batch(&mut conn, &batch, &[]);
    assert_eq!(outcomes(&results), vec![Ok(Outcome::Credited); 5]);
    let Seen {
        of_orders,
        up_front,
        savepoints,
        locks,
        orders_written,
        ledger_written,
    } = &*reads.lock().unwrap();
    assert_eq!(savepoints.len(), 0, "{savepoints:#?}");
    // PostgreSQL's statement that writes first payments together takes their locks itself; MySQL
    // locks orders, then accounts; SQLite's writer holds the whole database.
    let expected = match db.backend {
        Backend::Postgresql | Backend::Sqlite => 0,
        Backend::Mysql => 2,
    };
    assert_eq!(
        locks.len(),
        expected,
        "statements of their own that lock rows: {locks:#?}"
    );
    let (orders, ledger) = match db.backend {
        Backend::Postgresql => (1, 1),
        Backend::Sqlite => (1, 2),
        Backend::Mysql => (5, 5),
    };
    assert_eq!(
        (*orders_written, *ledger_written),
        (orders, ledger),
        "statements writing orders and the ledger"
    );
    assert_eq!(of_orders.len(), 1, "{of_orders:#?}");
    let expected = match db.backend {
        Backend::Postgresql => 1,
        _ => 2,
    };
    assert_eq!(up_front.len(), expected, "{up_front:#?}");
}

/// A batch's repeats of many notifications count each delivery once on its own row, however the
/// rows are split between statements.
fn repeats_of_many_notifications_count_each_delivery_once(db: TestDb) {
    let pool = db.pool(2);
    let mut conn = pool.get().unwrap();
    let settled: Vec<_> = (0..37)
        .map(|i| {
            let order = create_order(&mut conn, "many", "alipay", "1.00", "CNY", None);
            let applied = apply_alone(
                &mut conn,
                &paid(&order, &format!("M{i}"), 100, "CNY"),
                EVIDENCE,
                now(),
            )
            .unwrap();
            assert_eq!(applied.outcome, Outcome::Credited);
            applied.inbox_id
        })
        .collect();
    // Every row once, the first two more times, the last once more.
    let mut counts: Vec<CountJob> = settled
        .iter()
        .chain([settled[0], settled[0], settled[36]].iter())
        .map(|&inbox_id| CountJob {
            inbox_id,
            now: now(),
        })
        .collect();
    counts.rotate_left(5);
    let results = commit_batch(&mut conn, &[], &counts);
    assert!(results.is_empty());
    for (i, id) in settled.iter().enumerate() {
        let expected = match i {
            0 => 4,
            36 => 3,
            _ => 2,
        };
        let deliveries = count(
            &pool,
            &format!("SELECT delivery_count AS n FROM notifications WHERE id = {id}"),
        );
        assert_eq!(deliveries, expected, "row {i}");
    }
}

fn a_conflict_that_persists_leaves_the_rest_of_the_batch_credited(db: TestDb) {
    let pool = db.pool(2);
    let mut conn = pool.get().unwrap();
    let a = create_order(&mut conn, "p1", "alipay", "1.00", "CNY", None);
    let stuck = create_order(&mut conn, "p2", "alipay", "2.00", "CNY", None);
    let b = create_order(&mut conn, "p3", "alipay", "3.00", "CNY", None);
    // A ledger row already holds p2's credit key: its insert meets a unique violation every time,
    // which looks like a racing insert, so the batch is run again before it gives up on p2.
    exec(
        &pool,
        &format!(
            "INSERT INTO ledger (user_id, currency, order_no, kind, amount_minor, balance_after, created_at, entry_key) \
             VALUES ('p2', 'CNY', '{stuck}', 'credit', 200, 200, CURRENT_TIMESTAMP, '{stuck}')"
        ),
    );

    let batch = [
        job(&paid(&a, "PA", 100, "CNY")),
        job(&paid(&stuck, "PS", 200, "CNY")),
        job(&paid(&b, "PB", 300, "CNY")),
    ];
    let results = commit_batch(&mut conn, &batch, &[]);
    assert_eq!(results[0].as_ref().unwrap().outcome, Outcome::Credited);
    assert!(results[1].is_err(), "{:?}", results[1]);
    assert_eq!(results[2].as_ref().unwrap().outcome, Outcome::Credited);
    assert_eq!(balance(&pool, "p1"), 100);
    assert_eq!(balance(&pool, "p3"), 300);
    assert_eq!(balance(&pool, "p2"), 0);
    assert_eq!(status(&pool, &stuck), OrderStatus::Pending);
}

/// First payments written in one statement must name distinct orders, trades and notifications:
/// two about one order would both be reported credited by its one credit, so such a call is
/// refused whole and writes nothing; distinct ones are each credited.
/// Where a backend credits first payments together (PostgreSQL in one statement, SQLite in one
/// per table), it refuses payments that share an order, a trade or an inbox row, and each result
/// is its own payment's: its balance after, its inbox row. A long batch is written in several
/// lists (SQLite's hold at most 32 payments) and still reads as if credited one by one.
fn payments_credited_together_share_nothing_and_each_gets_its_own_result(db: TestDb) {
    use payhook::store::{self, CreditWrite, FirstPayment};
    let pool = db.pool(2);
    let mut conn = pool.get().unwrap();
    let a = create_order(&mut conn, "d1", "alipay", "1.00", "CNY", None);
    let b = create_order(&mut conn, "d1", "alipay", "2.00", "CNY", None);
    let first = paid(&a, "TA", 100, "CNY");
    let pay = |notification| FirstPayment {
        notification,
        evidence: EVIDENCE,
        now: now(),
    };
    if matches!(db.backend, Backend::Mysql) {
        let alone = store::pay_and_credit_together(&mut conn, &[pay(&first)]).unwrap();
        assert!(alone.is_none(), "MySQL writes payments one by one");
        return;
    }
    let mut same_order = first.clone();
    same_order.notification_id = "n-again".into();
    let mut same_trade = paid(&b, "TA", 200, "CNY");
    same_trade.notification_id = "n-b".into();
    let mut same_id = paid(&b, "TB", 200, "CNY");
    same_id.notification_id = first.notification_id.clone();
    for shares in [&same_order, &same_trade, &same_id] {
        let refused = store::pay_and_credit_together(&mut conn, &[pay(&first), pay(shares)]);
        assert!(refused.is_err(), "{refused:?}");
    }
    assert_eq!(
        (balance(&pool, "d1"), status(&pool, &a)),
        (0, OrderStatus::Pending)
    );
    let settled = create_order(&mut conn, "d2", "alipay", "5.00", "CNY", None);
    assert_eq!(
        run(&pool, &paid(&settled, "TS", 500, "CNY")).outcome,
        Outcome::Credited
    );
    let mut again = paid(&settled, "TS2", 500, "CNY");
    again.notification_id = "n-settled-again".into();
    let payments = [
        paid(&b, "TB", 200, "CNY"),
        again,
        paid(&a, "TA", 100, "CNY"),
    ];
    let payments: Vec<FirstPayment> = payments.iter().map(pay).collect();
    let writes = store::pay_and_credit_together(&mut conn, &payments)
        .unwrap()
        .expect("this backend pays together");
    // Each result is its own payment's: its balance after, its inbox row.
    let inbox_id = |id: &str| {
        count(
            &pool,
            &format!("SELECT id AS n FROM notifications WHERE notification_id = '{id}'"),
        )
    };
    let said: Vec<Option<(i64, i64)>> = writes
        .iter()
        .map(|write| match write {
            CreditWrite::Credited(credit) => {
                Some((credit.balance_after, credit.delivery.unwrap().id))
            }
            CreditWrite::NotPending => None,
            CreditWrite::NotCredited => panic!("not credited"),
        })
        .collect();
    assert_eq!(
        said,
        [
            Some((200, inbox_id("n-TB"))),
            None,
            Some((300, inbox_id("n-TA")))
        ]
    );
    let recorded = "SELECT COUNT(*) AS n FROM notifications \
                    WHERE notification_id = 'n-settled-again'";
    assert_eq!(
        count(&pool, recorded),
        0,
        "a payment that paid nothing is not recorded here"
    );
    assert_eq!(status(&pool, &settled), OrderStatus::Paid);
    assert_eq!((balance(&pool, "d1"), balance(&pool, "d2")), (300, 500));

    // 63 payments to three accounts: more than one list, and runs of every length (32 to 1).
    let orders: Vec<(String, OrderNo, i64)> = (0..63)
        .map(|i| {
            let user = format!("m{}", i % 3);
            let minor = i64::from(i) + 1;
            let amount = format!("{}.{:02}", minor / 100, minor % 100);
            let order = create_order(&mut conn, &user, "alipay", &amount, "CNY", None);
            (user, order, minor)
        })
        .collect();
    let notifications: Vec<Notification> = orders
        .iter()
        .enumerate()
        .map(|(i, (_, order, minor))| paid(order, &format!("TM{i}"), *minor, "CNY"))
        .collect();
    let payments: Vec<FirstPayment> = notifications.iter().map(pay).collect();
    let writes = store::pay_and_credit_together(&mut conn, &payments)
        .unwrap()
        .expect("this backend pays together");
    assert_eq!(writes.len(), payments.len());
    let mut running = std::collections::HashMap::new();
    for (i, ((user, order, minor), write)) in orders.iter().zip(&writes).enumerate() {
        let balance = running.entry(user.as_str()).or_insert(0);
        *balance += minor;
        let CreditWrite::Credited(credit) = write else {
            panic!("payment {i} was not credited: {write:?}");
        };
        assert_eq!(credit.balance_after, *balance, "payment {i}");
        assert_eq!(
            credit.delivery.unwrap().id,
            inbox_id(&format!("n-TM{i}")),
            "payment {i}"
        );
        let booked = count(
            &pool,
            &format!(
                "SELECT balance_after AS n FROM ledger WHERE order_no = '{}'",
                order.as_str()
            ),
        );
        assert_eq!(booked, *balance, "payment {i}");
    }
    for (user, total) in running {
        assert_eq!(balance(&pool, user), total, "{user}");
    }
    assert_books_balance(&pool);
}

/// A new deployment's first batches plan the crediting statements while the tables are nearly
/// empty, and each connection keeps those plans while the tables grow, until they are analyzed
/// again: those plans still find rows by their keys, never by reading whole tables.
#[test]
fn postgresql_batches_planned_on_empty_tables_never_scan_them_whole() {
    let db = TestDb::new(Backend::Postgresql);
    // One connection: the one that planned on the empty tables runs the next batch too.
    let pool = db.pool(1);
    let mut conn = pool.get().unwrap();
    let mut orders = Vec::new();
    for user in ["g1", "g2", "g3", "g4"] {
        orders.push(create_order(&mut conn, user, "alipay", "1.00", "CNY", None));
    }
    let batch = |pays: &[(&OrderNo, &str)]| {
        let jobs: Vec<ApplyJob> = pays
            .iter()
            .map(|(order, trade)| job(&paid(order, trade, 100, "CNY")))
            .collect();
        outcomes(&commit_batch(&mut pool.get().unwrap(), &jobs, &[]))
    };
    let credited = |n| vec![Ok(Outcome::Credited); n];
    drop(conn);
    // Analyzed while nearly empty, as after a manual ANALYZE of a new deployment's tables.
    exec(&pool, "ANALYZE");
    assert_eq!(
        batch(&[(&orders[0], "G1"), (&orders[1], "G2")]),
        credited(2)
    );
    // Thousands of rows arrive before the tables are analyzed again.
    exec(
        &pool,
        "INSERT INTO accounts SELECT 'grown' || i, 'CNY', 0, 0, now(), now() \
             FROM generate_series(1, 20000) i; \
         INSERT INTO orders (order_no, user_id, channel, amount_minor, currency, status, version, \
             created_at) SELECT 'grown' || i, 'grown' || i, 'alipay', 100, 'CNY', 'pending', 0, \
             now() FROM generate_series(1, 20000) i; \
         INSERT INTO notifications (channel, notification_id, kind, verified, outcome, \
             raw_headers, raw_body, first_seen_at, last_seen_at) SELECT 'alipay', 'grown' || i, \
             'paid', TRUE, 'unknown_order', '{}', '', now(), now() \
             FROM generate_series(1, 20000) i",
    );
    let rows_read = || {
        // The connection reports what it has read so far.
        exec(&pool, "SELECT pg_stat_force_next_flush()");
        count(
            &pool,
            "SELECT CAST(SUM(seq_tup_read + COALESCE(idx_tup_fetch, 0)) AS BIGINT) AS n \
             FROM pg_stat_user_tables \
             WHERE relname IN ('accounts', 'orders', 'notifications', 'ledger')",
        )
    };
    let before = rows_read();
    assert_eq!(
        batch(&[(&orders[2], "G3"), (&orders[3], "G4")]),
        credited(2)
    );
    // Four payments' rows, not the 60,000 added: read by their keys, in an index or a table.
    let read = rows_read() - before;
    assert!(read < 100, "{read} rows read for a batch of two payments");
}

/// The crediting statements are parsed and planned once per connection, not once per
/// notification: after several credits on one connection, each is one prepared statement.
#[test]
fn postgresql_keeps_the_crediting_statements_prepared() {
    let db = TestDb::new(Backend::Postgresql);
    let pool = db.pool(1);
    let mut conn = pool.get().unwrap();
    for i in 0..5 {
        let order = create_order(&mut conn, "prep", "alipay", "1.00", "CNY", None);
        let n = paid(&order, &format!("PREP{i}"), 100, "CNY");
        let applied = apply_alone(&mut conn, &n, EVIDENCE, now()).unwrap();
        assert_eq!(applied.outcome, Outcome::Credited);
        // A wrong amount is recorded by the inbox's own statement.
        let order = create_order(&mut conn, "prep", "alipay", "1.00", "CNY", None);
        let n = paid(&order, &format!("PREPX{i}"), 99, "CNY");
        let applied = apply_alone(&mut conn, &n, EVIDENCE, now()).unwrap();
        assert_eq!(applied.outcome, Outcome::Mismatch);
        // A batch's reads and its first payments' one statement.
        let batch: Vec<ApplyJob> = (0..3)
            .map(|j| {
                let order = create_order(&mut conn, "prep", "alipay", "1.00", "CNY", None);
                job(&paid(&order, &format!("PREPB{i}-{j}"), 100, "CNY"))
            })
            .collect();
        let results = outcomes(&commit_batch(&mut conn, &batch, &[]));
        assert_eq!(results, vec![Ok(Outcome::Credited); 3]);
    }
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Prepared {
        #[diesel(sql_type = diesel::sql_types::Text)]
        statement: String,
    }
    let prepared: Vec<Prepared> = diesel::sql_query("SELECT statement FROM pg_prepared_statements")
        .load(&mut *conn)
        .unwrap();
    let statements = [
        // One payment's statement, then many payments' (both lock first).
        "WITH locked AS (SELECT 1 FROM (SELECT a.user_id FROM accounts",
        "INSERT INTO notifications",
        "WITH locked AS (SELECT 1 FROM (SELECT o.user_id",
        "SELECT o.*, n.channel AS inbox_channel",
    ];
    for start in statements {
        let n = prepared
            .iter()
            .filter(|p| p.statement.trim_start().starts_with(start))
            .count();
        assert_eq!(n, 1, "{start}: {n} prepared statements");
    }
}

/// Two writers whose batches credit the same two accounts in opposite orders wait for each other
/// instead of deadlocking: every batch locks its accounts in key order before it writes.
#[test]
fn crossing_batches_on_postgresql_never_deadlock() {
    let db = TestDb::new(Backend::Postgresql);
    crossing_batches_never_deadlock(&db, 10, pg_deadlocks);
}

/// The deadlocks PostgreSQL has detected in the pool's database.
fn pg_deadlocks(pool: &Pool) -> i64 {
    count(
        pool,
        "SELECT CAST(deadlocks AS BIGINT) AS n FROM pg_stat_database WHERE datname = current_database()",
    )
}

/// The same on MariaDB, on a server of its own (the deadlock count is the server's), with enough
/// other accounts that InnoDB reads them by the orders rather than whole.
#[test]
fn crossing_batches_on_mariadb_never_deadlock() {
    let server = crate::common::MariaDb::start();
    let db = TestDb::at(Backend::Mysql, server.new_database());
    {
        let pool = db.pool(2);
        let mut conn = pool.get().unwrap();
        for i in 0..300 {
            create_order(
                &mut conn,
                &format!("filler{i:04}"),
                "alipay",
                "1.00",
                "CNY",
                None,
            );
        }
    }
    let deadlocks = |pool: &Pool| {
        count(
            pool,
            "SELECT CAST(VARIABLE_VALUE AS SIGNED) AS n FROM information_schema.GLOBAL_STATUS \
             WHERE VARIABLE_NAME = 'INNODB_DEADLOCKS'",
        )
    };
    crossing_batches_never_deadlock(&db, 40, deadlocks);
}

/// Two instances that received the same two payments, in opposite orders, credit each once and
/// wait for each other instead of deadlocking: the statement that writes them together locks
/// their orders and accounts in key order before it writes any. One batch also holds a payment of
/// the wrong amount, so it locks its rows in a statement of its own first, as every batch that
/// writes more than first payments does; the other's only writes are the two first payments.
#[test]
fn crossing_batches_of_the_same_payments_on_postgresql_never_deadlock() {
    let db = TestDb::new(Backend::Postgresql);
    let rounds = 50;
    let pool = batches_crossing_on_postgresql(
        &db,
        rounds,
        [("su", "A"), ("sv", "B"), ("su", "M")],
        |[a, b, m]| {
            let wrong = paid(&m, &format!("T-{m}"), 99, "CNY");
            [vec![pay(&a), pay(&b), wrong], vec![pay(&b), pay(&a)]]
        },
        [
            Outcome::AlreadyPaid,
            Outcome::AlreadyPaid,
            Outcome::Credited,
            Outcome::Credited,
            Outcome::Mismatch,
        ],
    );
    assert_eq!(balance(&pool, "su"), 100 * rounds);
    assert_eq!(balance(&pool, "sv"), 100 * rounds);
}

/// A batch of one payment locks its account before its order, as a batch of many does, though
/// it takes those locks in the statement that writes it: written the other way round, it would
/// hold the order another batch waits for while it waits for that batch's account.
#[test]
fn a_lone_payment_crossing_a_batch_of_its_account_on_postgresql_never_deadlocks() {
    let db = TestDb::new(Backend::Postgresql);
    let rounds = 50;
    let pool = batches_crossing_on_postgresql(
        &db,
        rounds,
        [("lu", "A"), ("lu", "B")],
        |[a, b]| [vec![pay(&b)], vec![pay(&a), pay(&b)]],
        [Outcome::AlreadyPaid, Outcome::Credited, Outcome::Credited],
    );
    assert_eq!(balance(&pool, "lu"), 200 * rounds);
}

/// On PostgreSQL a batch of one first payment is read, written and committed: the statement that
/// writes it takes its row locks, so no statement of its own locks them first.
#[test]
fn a_lone_first_payment_on_postgresql_takes_no_statement_of_its_own_to_lock() {
    use diesel::connection::{Connection, InstrumentationEvent};
    use std::sync::Mutex;

    let db = TestDb::new(Backend::Postgresql);
    let pool = db.pool(1);
    let mut conn = pool.get().unwrap();
    let order = create_order(&mut conn, "lone", "alipay", "1.00", "CNY", None);
    let statements: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = Arc::clone(&statements);
    conn.set_instrumentation(move |event: InstrumentationEvent<'_>| {
        if let InstrumentationEvent::StartQuery { query, .. } = event {
            let sql = query.to_string().to_lowercase().replace('"', "");
            seen.lock().unwrap().push(sql.trim_start().to_owned());
        }
    });
    let batch = [job(&paid(&order, "LONE1", 100, "CNY"))];
    let results = commit_batch(&mut conn, &batch, &[]);
    assert_eq!(outcomes(&results), vec![Ok(Outcome::Credited)]);
    let statements = statements.lock().unwrap();
    let kinds: Vec<&str> = statements
        .iter()
        .map(|sql| match sql {
            s if s.starts_with("begin") => "begin",
            s if s.starts_with("commit") => "commit",
            s if s.starts_with("select") && s.contains("for update") => "lock",
            s if s.starts_with("select") && s.contains("orders") => "read",
            s if s.starts_with("with locked as") && s.contains("update orders") => "write",
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        ["begin", "read", "write", "commit"],
        "{statements:#?}"
    );
}

/// A payment of 1.00 CNY of `order`, by the trade named after it.
fn pay(order: &OrderNo) -> Notification {
    paid(order, &format!("T-{order}"), 100, "CNY")
}

/// `rounds` times on PostgreSQL: makes the orders (user, letter) of `orders` and commits the
/// batches `batches` makes of them at once, expecting the outcomes `expected` in any order. Then
/// checks that the database detected no deadlock and that the books balance.
fn batches_crossing_on_postgresql<const O: usize, const B: usize, const E: usize>(
    db: &TestDb,
    rounds: i64,
    orders: [(&str, &str); O],
    batches: impl Fn([OrderNo; O]) -> [Vec<Notification>; B],
    mut expected: [Outcome; E],
) -> Pool {
    let pool = db.pool(4);
    let before = pg_deadlocks(&pool);
    expected.sort_by_key(|o| o.as_str());
    for round in 0..rounds {
        let mut conn = pool.get().unwrap();
        let made = orders.map(|(user, letter)| {
            let no = format!("X{round}{letter}");
            create_order(&mut conn, user, "alipay", "1.00", "CNY", Some(&no))
        });
        drop(conn);
        let mut outcomes: Vec<Outcome> = batches_at_once(&pool, batches(made))
            .into_iter()
            .map(|result| result.unwrap().outcome)
            .collect();
        outcomes.sort_by_key(|o| o.as_str());
        assert_eq!(outcomes, expected, "round {round}");
    }
    assert_eq!(
        pg_deadlocks(&pool) - before,
        0,
        "the database detected deadlocks"
    );
    assert_books_balance(&pool);
    pool
}

/// Commits each batch of notifications on a thread of its own, the threads starting together;
/// every result, batch after batch.
fn batches_at_once<const N: usize>(
    pool: &Pool,
    batches: [Vec<Notification>; N],
) -> Vec<Result<Applied, Failure>> {
    let barrier = Arc::new(Barrier::new(N));
    let handles: Vec<_> = batches
        .into_iter()
        .map(|payments| {
            let (pool, barrier) = (pool.clone(), barrier.clone());
            std::thread::spawn(move || {
                let jobs: Vec<ApplyJob> = payments.iter().map(job).collect();
                let mut conn = pool.get().unwrap();
                barrier.wait();
                commit_batch(&mut conn, &jobs, &[])
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|handle| handle.join().unwrap())
        .collect()
}

fn crossing_batches_never_deadlock(db: &TestDb, rounds: usize, deadlocks: impl Fn(&Pool) -> i64) {
    let pool = db.pool(4);
    let before = deadlocks(&pool);
    for round in 0..rounds {
        let mut conn = pool.get().unwrap();
        // Order numbers sort A < B < C < D; U owns A and D, V owns B and C.
        let mut order = |user: &str, letter: &str| {
            let no = format!("X{round}{letter}");
            create_order(&mut conn, user, "alipay", "1.00", "CNY", Some(&no))
        };
        let (a, b, c, d) = (
            order("xu", "A"),
            order("xv", "B"),
            order("xv", "C"),
            order("xu", "D"),
        );
        drop(conn);
        let pay = |o: &OrderNo| paid(o, &format!("T-{o}"), 100, "CNY");
        for result in batches_at_once(&pool, [vec![pay(&a), pay(&c)], vec![pay(&b), pay(&d)]]) {
            assert_eq!(result.unwrap().outcome, Outcome::Credited);
        }
    }
    let each = 200 * rounds as i64;
    assert_eq!(balance(&pool, "xu"), each);
    assert_eq!(balance(&pool, "xv"), each);
    assert_eq!(
        deadlocks(&pool) - before,
        0,
        "the database detected deadlocks"
    );
    assert_books_balance(&pool);
}

fn thirty_two_threads_applying_one_paid_notification_credit_once(db: TestDb) {
    let pool = db.pool(32);
    let order = create_order(
        &mut pool.get().unwrap(),
        "racer",
        "alipay",
        "12.34",
        "CNY",
        None,
    );
    let n = paid(&order, "T-race", 1234, "CNY");
    let p = pool.clone();
    let outcomes = race(32, move |_| run(&p, &n).outcome);
    let credited = outcomes.iter().filter(|o| **o == Outcome::Credited).count();
    let duplicates = outcomes
        .iter()
        .filter(|o| **o == Outcome::AlreadyPaid)
        .count();
    assert_eq!((credited, duplicates), (1, 31), "outcomes: {outcomes:?}");
    assert_eq!(ledger_rows(&pool, &order), 1);
    assert_eq!(balance(&pool, "racer"), 1234);
    let deliveries = count(
        &pool,
        "SELECT delivery_count AS n FROM notifications WHERE notification_id = 'n-T-race'",
    );
    assert_eq!(deliveries, 32);
    assert_books_balance(&pool);
}

fn thirty_two_threads_paying_different_orders_of_one_user_add_up(db: TestDb) {
    let pool = db.pool(32);
    let orders: Vec<OrderNo> = (0..32)
        .map(|i| {
            create_order(
                &mut pool.get().unwrap(),
                "many",
                "alipay",
                &format!("{}.01", i + 1),
                "CNY",
                None,
            )
        })
        .collect();
    let expected: i64 = (0..32).map(|i| (i + 1) * 100 + 1).sum();
    let p = pool.clone();
    let outcomes = race(32, move |i| {
        let minor = (i as i64 + 1) * 100 + 1;
        run(&p, &paid(&orders[i], &format!("T-many-{i}"), minor, "CNY")).outcome
    });
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Credited),
        "{outcomes:?}"
    );
    assert_eq!(balance(&pool, "many"), expected);
    assert_eq!(
        count(
            &pool,
            "SELECT COUNT(*) AS n FROM ledger WHERE user_id = 'many'"
        ),
        32
    );
    assert_books_balance(&pool);
}

/// What a batch reads up front for each notification is what it would read alone: an order, the
/// other order its trade already paid, an inbox row only beside an order, channels kept apart.
fn a_batch_read_finds_what_each_notification_would_find_alone(db: TestDb) {
    let pool = db.pool(2);
    let mut conn = pool.get().unwrap();
    let a = create_order(&mut conn, "k1", "alipay", "1.00", "CNY", None);
    let b = create_order(&mut conn, "k2", "alipay", "2.00", "CNY", None);
    let in_wxpay = create_order(&mut conn, "k3", "wxpay", "3.00", "CNY", None);
    assert_eq!(
        run(&pool, &paid(&a, "TA", 100, "CNY")).outcome,
        Outcome::Credited
    );
    let unknown = OrderNo::parse("no-such-order").unwrap();
    assert_eq!(
        run(&pool, &paid(&unknown, "TU", 100, "CNY")).outcome,
        Outcome::UnknownOrder
    );
    // An unknown order named by a notification of its own whose trade paid a.
    let unknown_too = OrderNo::parse("no-such-order-either").unwrap();
    let mut again = paid(&unknown_too, "TA", 100, "CNY");
    again.notification_id = "n-TA-again".to_owned();
    run(&pool, &again);
    let alipay = ChannelName::parse("alipay").unwrap();
    let wxpay = ChannelName::parse("wxpay").unwrap();
    let key = |order_no, channel, notification_id, trade_no| payhook::crediting::Key {
        order_no,
        channel,
        notification_id,
        trade_no,
    };
    let keys = [
        // A repeat of a's payment: its order and its inbox row.
        key(&a, &alipay, "n-TA", Some("TA")),
        // b paid by the trade that paid a: a is the order that trade paid.
        key(&b, &alipay, "n-b", Some("TA")),
        // The same trade in another channel paid nothing there.
        key(&in_wxpay, &wxpay, "n-TA", Some("TA")),
        // An unknown order whose notification has an inbox row: no order, so no delivery.
        key(&unknown, &alipay, "n-TU", Some("TU")),
        key(&b, &alipay, "n-none", None),
        // An unknown order whose trade paid another order, and whose notification has an inbox
        // row: found by the trade, so with its delivery.
        key(&unknown_too, &alipay, "n-TA-again", Some("TA")),
    ];
    let together = payhook::crediting::find_for_batch(&mut conn, &keys).unwrap();
    let alone: Vec<payhook::crediting::Found> = keys
        .iter()
        .map(|k| {
            payhook::crediting::find_for_notification(
                &mut conn,
                k.order_no,
                k.channel,
                k.notification_id,
                k.trade_no,
            )
            .unwrap()
        })
        .collect();
    assert_eq!(together, alone);
    assert!(together[0].order.is_some() && together[0].delivery.is_some());
    assert_eq!(together[1].trade_paid.as_ref(), Some(&a));
    assert_eq!(
        (together[2].trade_paid.as_ref(), together[2].delivery),
        (None, None)
    );
    assert_eq!(
        (together[3].order.as_ref(), together[3].delivery),
        (None, None)
    );
    assert_eq!(together[5].trade_paid.as_ref(), Some(&a));
    assert!(together[5].order.is_none() && together[5].delivery.is_some());
    assert_ne!(together[5].delivery, together[0].delivery);
}

on_every_backend!(
    a_batch_read_finds_what_each_notification_would_find_alone,
    identifiers_that_differ_only_in_case_are_different_orders,
    a_payment_that_names_no_trade_never_credits_nor_passes_as_a_repeat,
    a_paid_notification_credits_the_order_once,
    a_second_trade_for_a_paid_order_is_an_anomaly_and_never_credits,
    a_trade_that_already_paid_another_order_never_pays_a_second,
    amount_currency_and_merchant_mismatches_are_recorded_and_never_credit,
    a_notification_for_an_unknown_order_asks_for_a_retry_and_credits_once_the_order_exists,
    a_closed_order_is_never_credited_by_a_late_paid_notification,
    closes_and_other_statuses_never_credit_and_a_paid_order_stays_paid,
    the_database_itself_refuses_a_second_credit_for_one_order,
    a_batch_answers_each_notification_as_if_it_were_alone,
    a_notification_that_fails_in_a_batch_fails_alone,
    an_account_near_its_bound_takes_the_credits_that_fit_in_the_batch_s_order,
    the_statements_of_crediting_stay_prepared,
    a_batch_reads_its_orders_up_front_in_one_statement,
    payments_credited_together_share_nothing_and_each_gets_its_own_result,
    repeats_of_many_notifications_count_each_delivery_once,
    a_conflict_that_persists_leaves_the_rest_of_the_batch_credited,
    thirty_two_threads_applying_one_paid_notification_credit_once,
    thirty_two_threads_paying_different_orders_of_one_user_add_up,
);

/// Under SERIALIZABLE the losers of the compare-and-set get SQLSTATE 40001; the bounded retry
/// loop must turn every one of them into a clean duplicate, never an error or a second credit.
#[test]
fn serializable_isolation_conflicts_are_retried_into_exactly_one_credit() {
    let db = TestDb::new(Backend::Postgresql);
    let name = db.url.rsplit('/').next().unwrap().to_owned();
    pg_cluster().admin_exec(&format!(
        "ALTER DATABASE {name} SET default_transaction_isolation = 'serializable'"
    ));
    let pool = db.pool(16);
    let isolation = count(
        &pool,
        "SELECT CASE WHEN current_setting('transaction_isolation') = 'serializable' THEN 1 ELSE 0 END::bigint AS n",
    );
    assert_eq!(isolation, 1, "the test database must run SERIALIZABLE");

    let order = create_order(
        &mut pool.get().unwrap(),
        "ser",
        "alipay",
        "1.00",
        "CNY",
        None,
    );
    let n = paid(&order, "T-ser", 100, "CNY");
    let p = pool.clone();
    let outcomes = race(16, move |_| {
        apply_alone(&mut p.get().unwrap(), &n, EVIDENCE, now()).map(|a| a.outcome)
    });
    let outcomes: Vec<Outcome> = outcomes
        .into_iter()
        .map(|r| r.expect("every racer ends cleanly after retries"))
        .collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == Outcome::Credited).count(),
        1
    );
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == Outcome::AlreadyPaid)
            .count(),
        15
    );

    let others: Vec<OrderNo> = (0..16)
        .map(|_| {
            create_order(
                &mut pool.get().unwrap(),
                "ser",
                "alipay",
                "1.00",
                "CNY",
                None,
            )
        })
        .collect();
    let p = pool.clone();
    let outcomes = race(16, move |i| {
        apply_alone(
            &mut p.get().unwrap(),
            &paid(&others[i], &format!("T-ser-{i}"), 100, "CNY"),
            EVIDENCE,
            now(),
        )
        .map(|a| a.outcome)
    });
    assert!(
        outcomes.iter().all(|o| matches!(o, Ok(Outcome::Credited))),
        "{outcomes:?}"
    );
    assert_eq!(balance(&pool, "ser"), 1700);
    assert_books_balance(&pool);
    exec(&pool, "SELECT 1");
}
