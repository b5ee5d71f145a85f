//! Money going back, against real databases: refunds (one per id, and cumulative totals),
//! chargebacks and their reversals, each booked once, with the policy for spent credits, unpaid
//! orders and amounts that do not fit; and real concurrency on one refund.

use crate::common::{count, create_order, exec, now, pay_order, race, TestDb};
use payhook::books::inbox::Evidence;
use payhook::books::orders::{self, Order, OrderStatus};
use payhook::books::verify;
use payhook::crediting::{apply_alone, commit_batch, Answer, Applied, ApplyJob, Outcome};
use payhook::db::Pool;
use payhook::domain::ids::{ChannelName, OrderNo};
use payhook::domain::money::{AmountMinor, Currency};
use payhook::domain::notification::{Dispute, Notification, NotificationKind, Refund};

const EVIDENCE: Evidence<'static> = Evidence {
    headers_json: "{}",
    body: b"raw body",
    source: payhook::books::inbox::Source::Notify,
};

fn minor(value: i64) -> AmountMinor {
    AmountMinor::new(value).unwrap()
}

/// A notification of `kind` about `order`, paid by trade `trade`.
fn about(order: &OrderNo, id: &str, trade: &str, kind: NotificationKind) -> Notification {
    Notification {
        channel: ChannelName::parse("alipay").unwrap(),
        notification_id: id.to_owned(),
        order_no: Some(order.clone()),
        provider_trade_no: Some(trade.to_owned()),
        amount: None,
        currency: Some(Currency::Cny),
        kind,
        merchant_mismatch: None,
    }
}

fn refund(order: &OrderNo, id: &str, refund_id: &str, amount: i64) -> Notification {
    let kind = NotificationKind::Refund(Refund::One {
        refund_id: refund_id.to_owned(),
        amount: minor(amount),
    });
    about(order, id, "T1", kind)
}

fn refunds_up_to(order: &OrderNo, id: &str, total: i64) -> Notification {
    let kind = NotificationKind::Refund(Refund::UpTo {
        total: minor(total),
        refund_id: None,
    });
    about(order, id, "T1", kind)
}

fn run(pool: &Pool, n: &Notification) -> Applied {
    apply_alone(&mut pool.get().unwrap(), n, EVIDENCE, now()).expect("apply")
}

fn order(pool: &Pool, order_no: &OrderNo) -> Order {
    orders::find(&mut pool.get().unwrap(), order_no)
        .unwrap()
        .expect("order exists")
}

fn balance(pool: &Pool, user: &str) -> i64 {
    count(
        pool,
        &format!("SELECT CAST(COALESCE(SUM(balance_minor), 0) AS BIGINT) AS n FROM accounts WHERE user_id = '{user}'"),
    )
}

fn rows_of(pool: &Pool, order_no: &OrderNo, kind: &str) -> i64 {
    count(
        pool,
        &format!(
            "SELECT COUNT(*) AS n FROM ledger WHERE order_no = '{order_no}' AND kind = '{kind}'"
        ),
    )
}

/// A paid order of `amount` for `user`, paid by trade `T1`.
fn paid_order(pool: &Pool, user: &str, amount: &str) -> OrderNo {
    let mut conn = pool.get().unwrap();
    let order = create_order(&mut conn, user, "alipay", amount, "CNY", None);
    let minor = AmountMinor::parse(amount, Currency::Cny).unwrap().get();
    assert_eq!(
        pay_order(&mut conn, "alipay", order.as_str(), "T1", minor, "CNY"),
        "credited"
    );
    order
}

/// `payhook verify`'s rules all hold; returns how many accounts owe money.
fn assert_books_balance(pool: &Pool) -> i64 {
    let report = verify::verify(&mut pool.get().unwrap()).expect("verify");
    assert!(report.balanced(), "{report}");
    report.debts
}

fn anomaly_of(pool: &Pool, notification_id: &str) -> bool {
    count(
        pool,
        &format!(
            "SELECT COUNT(*) AS n FROM notifications \
             WHERE notification_id = '{notification_id}' AND anomaly = TRUE"
        ),
    ) == 1
}

fn refunds_by_id_leave_the_balance_once_each_and_the_order_keeps_what_went_back(db: TestDb) {
    let pool = db.pool(2);
    let order_no = paid_order(&pool, "r1", "10.00");

    let first = refund(&order_no, "n-r1", "R1", 300);
    let applied = run(&pool, &first);
    assert_eq!(applied.outcome, Outcome::Refunded);
    assert_eq!(applied.balance_after, Some(700));
    assert!(!applied.anomaly);
    assert_eq!(balance(&pool, "r1"), 700);
    let o = order(&pool, &order_no);
    assert_eq!((o.status, o.refunded.get()), (OrderStatus::Paid, 300));

    // The provider repeats itself: the same delivery, and the same refund under another id.
    assert_eq!(run(&pool, &first).outcome, Outcome::AlreadyBooked);
    let renamed = refund(&order_no, "n-r1-again", "R1", 300);
    assert_eq!(run(&pool, &renamed).outcome, Outcome::AlreadyBooked);
    assert_eq!(balance(&pool, "r1"), 700);
    let deliveries = count(
        &pool,
        "SELECT delivery_count AS n FROM notifications WHERE notification_id = 'n-r1'",
    );
    assert_eq!(deliveries, 2);
    let kept = count(
        &pool,
        "SELECT COUNT(*) AS n FROM notifications WHERE notification_id = 'n-r1' AND outcome = 'refunded'",
    );
    assert_eq!(kept, 1, "a row that moved money keeps saying so");

    // The rest goes back: the order is refunded.
    assert_eq!(
        run(&pool, &refund(&order_no, "n-r2", "R2", 700)).outcome,
        Outcome::Refunded
    );
    let o = order(&pool, &order_no);
    assert_eq!((o.status, o.refunded.get()), (OrderStatus::Refunded, 1000));
    assert_eq!(balance(&pool, "r1"), 0);

    // Nothing is left to refund: a third refund moves nothing and is for a human.
    let third = refund(&order_no, "n-r3", "R3", 1);
    let applied = run(&pool, &third);
    assert_eq!(applied.outcome, Outcome::Mismatch);
    assert!(applied.anomaly);
    assert!(applied.detail.unwrap().contains("more than"));
    assert!(anomaly_of(&pool, "n-r3"));
    assert_eq!(balance(&pool, "r1"), 0);
    assert_eq!(rows_of(&pool, &order_no, "refund"), 2);

    // A refunded order was paid: its payment's repeat is still a repeat, never a second credit.
    let repeat = pay_order(
        &mut pool.get().unwrap(),
        "alipay",
        order_no.as_str(),
        "T1",
        1000,
        "CNY",
    );
    assert_eq!(repeat, "already_paid");
    assert_eq!(balance(&pool, "r1"), 0);
    assert_eq!(assert_books_balance(&pool), 0);
}

fn cumulative_refunds_move_the_difference_and_a_passed_total_moves_nothing(db: TestDb) {
    let pool = db.pool(2);
    let order_no = paid_order(&pool, "r2", "10.00");
    let steps = [
        ("n-300", 300, Outcome::Refunded, 700),
        ("n-500", 500, Outcome::Refunded, 500),
        // A late copy of an earlier total, under its own notification id: already passed.
        ("n-300-late", 300, Outcome::AlreadyBooked, 500),
        ("n-500", 500, Outcome::AlreadyBooked, 500),
        ("n-1000", 1000, Outcome::Refunded, 0),
        ("n-1200", 1200, Outcome::Mismatch, 0),
    ];
    for (id, total, outcome, left) in steps {
        let applied = run(&pool, &refunds_up_to(&order_no, id, total));
        assert_eq!(applied.outcome, outcome, "{id}");
        assert_eq!(balance(&pool, "r2"), left, "{id}");
    }
    let amounts = count(
        &pool,
        &format!("SELECT CAST(SUM(amount_minor) AS BIGINT) AS n FROM ledger WHERE order_no = '{order_no}' AND kind = 'refund'"),
    );
    assert_eq!(amounts, -1000);
    assert_eq!(rows_of(&pool, &order_no, "refund"), 3);
    assert_eq!(order(&pool, &order_no).status, OrderStatus::Refunded);
    assert_books_balance(&pool);
}

fn a_refund_of_a_spent_credit_leaves_a_debt_that_is_kept_for_a_human(db: TestDb) {
    let pool = db.pool(2);
    let order_no = paid_order(&pool, "r3", "10.00");
    // The user spends 8.00 of it.
    exec(
        &pool,
        "INSERT INTO ledger (user_id, currency, order_no, kind, amount_minor, balance_after, \
             created_at, entry_key, debit_no) \
         VALUES ('r3', 'CNY', NULL, 'debit', -800, 200, CURRENT_TIMESTAMP, 'spent', 'spent'); \
         UPDATE accounts SET balance_minor = balance_minor - 800 WHERE user_id = 'r3'",
    );
    let applied = run(&pool, &refund(&order_no, "n-all", "R-all", 1000));
    assert_eq!(
        applied.outcome,
        Outcome::Refunded,
        "the refund is taken all the same"
    );
    assert_eq!(applied.balance_after, Some(-800));
    assert!(applied.anomaly);
    assert!(applied.detail.unwrap().contains("owes"));
    assert!(anomaly_of(&pool, "n-all"));
    assert_eq!(applied.outcome.answer(), Answer::Ack);
    assert_eq!(balance(&pool, "r3"), -800);
    assert_eq!(assert_books_balance(&pool), 1, "one account owes money");
}

fn a_refund_before_its_payment_is_retried_and_applies_after(db: TestDb) {
    let pool = db.pool(2);
    let mut conn = pool.get().unwrap();
    let order_no = create_order(&mut conn, "r4", "alipay", "5.00", "CNY", None);
    drop(conn);
    let early = refund(&order_no, "n-early", "R1", 200);
    let applied = run(&pool, &early);
    assert_eq!(applied.outcome, Outcome::NotYet);
    assert_eq!(applied.outcome.answer(), Answer::Retry);
    assert_eq!(balance(&pool, "r4"), 0);
    assert_eq!(order(&pool, &order_no).status, OrderStatus::Pending);

    let paid = pay_order(
        &mut pool.get().unwrap(),
        "alipay",
        order_no.as_str(),
        "T1",
        500,
        "CNY",
    );
    assert_eq!(paid, "credited");
    assert_eq!(run(&pool, &early).outcome, Outcome::Refunded);
    assert_eq!(balance(&pool, "r4"), 300);
    assert_books_balance(&pool);
}

fn refunds_of_unpaid_or_other_orders_move_nothing_and_are_for_a_human(db: TestDb) {
    let pool = db.pool(2);
    let mut conn = pool.get().unwrap();
    let closed = create_order(&mut conn, "r5", "alipay", "5.00", "CNY", None);
    assert!(orders::close_pending(&mut conn, &closed, None, now()).unwrap());
    drop(conn);
    let paid = paid_order(&pool, "r5", "5.00");

    let mut other_trade = refund(&paid, "n-other-trade", "R1", 100);
    other_trade.provider_trade_no = Some("T-someone-else".to_owned());
    let mut dollars = refund(&paid, "n-dollars", "R2", 100);
    dollars.currency = Some(Currency::Usd);
    let mut wrong_payment = refund(&paid, "n-wrong-payment", "R3", 100);
    wrong_payment.amount = Some(minor(999));
    let mut foreign = refund(&paid, "n-foreign", "R4", 100);
    foreign.merchant_mismatch = Some("app_id 1 is not this channel's".to_owned());
    let cases = [
        (refund(&closed, "n-closed", "R0", 100), "never paid"),
        (other_trade, "trade"),
        (dollars, "USD"),
        (wrong_payment, "payment of"),
        (foreign, "app_id"),
    ];
    for (n, why) in cases {
        let applied = run(&pool, &n);
        assert_eq!(applied.outcome, Outcome::Mismatch, "{}", n.notification_id);
        assert_eq!(applied.outcome.answer(), Answer::Ack);
        assert!(applied.anomaly);
        let detail = applied.detail.unwrap();
        assert!(detail.contains(why), "{detail}");
        assert!(anomaly_of(&pool, &n.notification_id));
    }
    assert_eq!(balance(&pool, "r5"), 500);
    assert_eq!(order(&pool, &paid).refunded.get(), 0);
    assert_eq!(
        rows_of(&pool, &paid, "refund") + rows_of(&pool, &closed, "refund"),
        0
    );
    assert_books_balance(&pool);
}

fn chargebacks_and_their_reversals_are_booked_once_each(db: TestDb) {
    let pool = db.pool(2);
    let order_no = paid_order(&pool, "r6", "10.00");
    let dispute = |id: &str, dp: &str, amount: i64, reversed: bool| {
        let d = Dispute {
            dispute_id: dp.to_owned(),
            amount: minor(amount),
        };
        let kind = if reversed {
            NotificationKind::ChargebackReversal(d)
        } else {
            NotificationKind::Chargeback(d)
        };
        about(&order_no, id, "T1", kind)
    };
    let steps = [
        // A reversal before its chargeback waits for it.
        (
            dispute("n-rev-early", "dp_1", 1000, true),
            Outcome::NotYet,
            1000,
            OrderStatus::Paid,
        ),
        (
            dispute("n-cb", "dp_1", 1000, false),
            Outcome::ChargedBack,
            0,
            OrderStatus::Refunded,
        ),
        (
            dispute("n-cb", "dp_1", 1000, false),
            Outcome::AlreadyBooked,
            0,
            OrderStatus::Refunded,
        ),
        (
            dispute("n-rev", "dp_1", 1000, true),
            Outcome::ChargebackReversed,
            1000,
            OrderStatus::Paid,
        ),
        (
            dispute("n-rev-early", "dp_1", 1000, true),
            Outcome::AlreadyBooked,
            1000,
            OrderStatus::Paid,
        ),
        // A second dispute of part of it, and a reversal larger than it: for a human.
        (
            dispute("n-cb2", "dp_2", 400, false),
            Outcome::ChargedBack,
            600,
            OrderStatus::Paid,
        ),
        (
            dispute("n-rev2", "dp_2", 500, true),
            Outcome::Mismatch,
            600,
            OrderStatus::Paid,
        ),
    ];
    for (n, outcome, left, status) in steps {
        let applied = run(&pool, &n);
        assert_eq!(applied.outcome, outcome, "{}", n.notification_id);
        assert_eq!(balance(&pool, "r6"), left, "{}", n.notification_id);
        assert_eq!(
            order(&pool, &order_no).status,
            status,
            "{}",
            n.notification_id
        );
    }
    let o = order(&pool, &order_no);
    assert_eq!((o.refunded.get(), o.disputed.get()), (0, 400));
    assert_eq!(rows_of(&pool, &order_no, "chargeback"), 2);
    assert_eq!(rows_of(&pool, &order_no, "chargeback_reversal"), 1);
    assert_books_balance(&pool);
}

fn a_refund_that_names_only_its_trade_finds_the_order_that_trade_paid(db: TestDb) {
    let pool = db.pool(2);
    let order_no = paid_order(&pool, "r7", "10.00");
    let mut by_trade = refunds_up_to(&order_no, "evt_refunded", 250);
    by_trade.order_no = None;
    let applied = run(&pool, &by_trade);
    assert_eq!(applied.outcome, Outcome::Refunded);
    assert_eq!(balance(&pool, "r7"), 750);
    let filed = count(
        &pool,
        &format!("SELECT COUNT(*) AS n FROM notifications WHERE notification_id = 'evt_refunded' AND order_no = '{order_no}'"),
    );
    assert_eq!(
        filed, 1,
        "the inbox files it under the order its trade paid"
    );

    // A refund of a trade that has paid nothing yet: its payment may only be late, so it is
    // retried rather than acked and lost; once the payment is applied, it finds its order.
    let mut early = by_trade.clone();
    early.notification_id = "evt_early".to_owned();
    early.provider_trade_no = Some("pi_late".to_owned());
    let applied = run(&pool, &early);
    assert_eq!(applied.outcome, Outcome::NotYet);
    assert_eq!(applied.outcome.answer(), Answer::Retry);
    assert!(applied.detail.unwrap().contains("pi_late"));
    let mut conn = pool.get().unwrap();
    let late = create_order(&mut conn, "r7", "alipay", "4.00", "CNY", None);
    let paid = pay_order(&mut conn, "alipay", late.as_str(), "pi_late", 400, "CNY");
    assert_eq!(paid, "credited");
    let applied = run(&pool, &early);
    assert_eq!(applied.outcome, Outcome::Refunded);
    assert_eq!(balance(&pool, "r7"), 750 + 400 - 250);
    assert_books_balance(&pool);
}

/// A refund that names only its trade is resolved to its order when its turn comes, so what a
/// batch could read up front about that order would be stale for every notification after it:
/// those read for themselves (on PostgreSQL and MySQL, where a batch reads up front), and the
/// order's compare-and-set on its version stands behind that.
fn a_batch_reads_an_order_again_after_a_refund_by_trade_changed_it(db: TestDb) {
    let pool = db.pool(2);
    let order_no = paid_order(&pool, "r12", "10.00");
    let other = create_order(
        &mut pool.get().unwrap(),
        "r13",
        "alipay",
        "10.00",
        "CNY",
        None,
    );
    let paid = pay_order(
        &mut pool.get().unwrap(),
        "alipay",
        other.as_str(),
        "T2",
        1000,
        "CNY",
    );
    assert_eq!(paid, "credited");
    let mut by_trade = refunds_up_to(&order_no, "evt_a", 250);
    by_trade.order_no = None;
    let mut of_other = refunds_up_to(&other, "n-other", 100);
    of_other.provider_trade_no = Some("T2".to_owned());
    let job = |n: &Notification| ApplyJob::new(n.clone(), "{}".to_owned(), "x".into(), now());
    // The committer puts notifications without an order first; so does this batch.
    let batch = [
        job(&by_trade),
        job(&of_other),
        job(&refunds_up_to(&order_no, "n-b", 400)),
    ];
    let results: Vec<Outcome> = commit_batch(&mut pool.get().unwrap(), &batch, &[])
        .into_iter()
        .map(|r| r.expect("applied").outcome)
        .collect();
    assert_eq!(results, [Outcome::Refunded; 3]);
    // 2.50 by the trade, then up to 4.00 by the order: 1.50 more, not 4.00.
    assert_eq!(balance(&pool, "r12"), 600);
    assert_eq!(order(&pool, &order_no).refunded.get(), 400);
    assert_eq!(balance(&pool, "r13"), 900);
    assert_books_balance(&pool);
}

/// First payments that a batch writes together (on PostgreSQL, in one statement) book as one by
/// one would: in the batch's order, each ledger row with its running balance, around a refund of
/// the same account between them, and each delivery with its own inbox row.
fn first_payments_of_a_batch_book_in_its_order_around_a_refund(db: TestDb) {
    let pool = db.pool(2);
    let earlier = paid_order(&pool, "w1", "10.00");
    let mut conn = pool.get().unwrap();
    let a = create_order(&mut conn, "w1", "alipay", "5.00", "CNY", None);
    let other = create_order(&mut conn, "w2", "alipay", "7.00", "CNY", None);
    let b = create_order(&mut conn, "w1", "alipay", "3.00", "CNY", None);
    let c = create_order(&mut conn, "w1", "alipay", "2.00", "CNY", None);
    let pay = |order: &OrderNo, trade: &str, amount: i64| {
        let mut n = about(order, &format!("n-{trade}"), trade, NotificationKind::Paid);
        n.amount = Some(minor(amount));
        n
    };
    let job = |n: &Notification| ApplyJob::new(n.clone(), "{}".to_owned(), "x".into(), now());
    let batch = [
        job(&pay(&a, "TA", 500)),
        job(&pay(&other, "TO", 700)),
        job(&pay(&b, "TB", 300)),
        job(&refund(&earlier, "n-r", "R1", 1000)),
        job(&pay(&a, "TA", 500)),
        job(&pay(&c, "TC", 200)),
        job(&pay(&other, "TO2", 700)),
    ];
    let applied: Vec<Applied> = commit_batch(&mut conn, &batch, &[])
        .into_iter()
        .map(|r| r.expect("applied"))
        .collect();
    // Each credit is answered with its own balance and inbox row.
    let credited = [0, 1, 2, 5].map(|i| {
        let inbox_id = count(
            &pool,
            &format!(
                "SELECT id AS n FROM notifications WHERE notification_id = '{}'",
                batch[i].notification.notification_id
            ),
        );
        (applied[i].balance_after, applied[i].inbox_id == inbox_id)
    });
    assert_eq!(
        credited,
        [
            (Some(1500), true),
            (Some(700), true),
            (Some(1800), true),
            (Some(1000), true)
        ]
    );
    let results: Vec<Outcome> = applied.iter().map(|a| a.outcome).collect();
    use Outcome::*;
    assert_eq!(
        results,
        [
            Credited,
            Credited,
            Credited,
            Refunded,
            AlreadyPaid,
            Credited,
            PaidByOtherTrade
        ]
    );
    let ledger: Vec<String> = {
        use diesel::prelude::*;
        use payhook::db::schema::ledger::dsl::*;
        ledger
            .filter(user_id.eq("w1"))
            .order(id)
            .select((order_no, amount_minor, balance_after))
            .load::<(Option<String>, i64, i64)>(&mut conn)
            .unwrap()
            .into_iter()
            .map(|(o, amount, after)| {
                let name = [(&earlier, "earlier"), (&a, "a"), (&b, "b"), (&c, "c")]
                    .into_iter()
                    .find(|(no, _)| Some(no.as_str()) == o.as_deref())
                    .map_or("?", |(_, name)| name);
                format!("{name} {amount:+} = {after}")
            })
            .collect()
    };
    assert_eq!(
        ledger,
        [
            "earlier +1000 = 1000",
            "a +500 = 1500",
            "b +300 = 1800",
            "earlier -1000 = 800",
            "c +200 = 1000"
        ]
    );
    assert_eq!((balance(&pool, "w1"), balance(&pool, "w2")), (1000, 700));
    let inbox = |notification: &str| {
        count(
            &pool,
            &format!(
                "SELECT delivery_count * 10 + CASE WHEN outcome = 'credited' THEN 1 ELSE 0 END AS n \
                 FROM notifications WHERE notification_id = '{notification}'"
            ),
        )
    };
    // Credited, delivered twice; credited once each; delivered once, not credited.
    assert_eq!(inbox("n-TA"), 21);
    assert_eq!((inbox("n-TO"), inbox("n-TB"), inbox("n-TC")), (11, 11, 11));
    assert_eq!(inbox("n-TO2"), 10);
    assert_books_balance(&pool);
}

fn refunds_that_contradict_what_is_booked_or_move_nothing_are_for_a_human(db: TestDb) {
    let pool = db.pool(2);
    let order_no = paid_order(&pool, "r11", "10.00");
    assert_eq!(
        run(&pool, &refund(&order_no, "n-1", "R1", 300)).outcome,
        Outcome::Refunded
    );
    let zero_chargeback = about(
        &order_no,
        "n-zero-dispute",
        "T1",
        NotificationKind::Chargeback(Dispute {
            dispute_id: "dp_0".to_owned(),
            amount: minor(0),
        }),
    );
    let cases = [
        // The same refund id, now with another amount.
        (
            refund(&order_no, "n-1-other", "R1", 400),
            "was booked as 3.00",
        ),
        (refund(&order_no, "n-zero", "R0", 0), "moves nothing"),
        (zero_chargeback, "moves nothing"),
        (
            refund(&order_no, "n-long", &"9".repeat(129), 100),
            "longer than",
        ),
        (refund(&order_no, "n-empty", "", 100), "empty"),
    ];
    for (n, why) in cases {
        let applied = run(&pool, &n);
        assert_eq!(applied.outcome, Outcome::Mismatch, "{}", n.notification_id);
        assert!(applied.anomaly);
        let detail = applied.detail.unwrap();
        assert!(detail.contains(why), "{}: {detail}", n.notification_id);
    }
    assert_eq!(balance(&pool, "r11"), 700);
    assert_eq!(rows_of(&pool, &order_no, "refund"), 1);
    assert_books_balance(&pool);
}

fn concurrent_duplicates_of_one_refund_move_its_money_once(db: TestDb) {
    let pool = db.pool(16);
    let order_no = paid_order(&pool, "r8", "10.00");
    let n = refund(&order_no, "n-race", "R-race", 400);
    let p = pool.clone();
    let outcomes = race(16, move |_| run(&p, &n).outcome);
    let refunded = outcomes.iter().filter(|o| **o == Outcome::Refunded).count();
    let repeats = outcomes
        .iter()
        .filter(|o| **o == Outcome::AlreadyBooked)
        .count();
    assert_eq!((refunded, repeats), (1, 15), "{outcomes:?}");
    assert_eq!(balance(&pool, "r8"), 600);
    assert_eq!(rows_of(&pool, &order_no, "refund"), 1);
    assert_books_balance(&pool);
}

fn concurrent_cumulative_totals_in_any_order_refund_exactly_the_last(db: TestDb) {
    let pool = db.pool(16);
    let order_no = paid_order(&pool, "r9", "10.00");
    // Three refunds reaching 3.00, 5.00 and 10.00, each delivered five times, all at once.
    let totals = [300, 500, 1000];
    let p = pool.clone();
    let o = order_no.clone();
    let outcomes = race(15, move |i| {
        let total = totals[i % 3];
        run(&p, &refunds_up_to(&o, &format!("n-{total}"), total)).outcome
    });
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Outcome::Refunded | Outcome::AlreadyBooked)),
        "{outcomes:?}"
    );
    assert_eq!(balance(&pool, "r9"), 0);
    let o = order(&pool, &order_no);
    assert_eq!((o.status, o.refunded.get()), (OrderStatus::Refunded, 1000));
    assert_books_balance(&pool);
}

fn one_batch_pays_and_refunds_an_order_and_books_each_refund_once(db: TestDb) {
    let pool = db.pool(2);
    let mut conn = pool.get().unwrap();
    let order_no = create_order(&mut conn, "r10", "alipay", "10.00", "CNY", None);
    let mut payment = about(&order_no, "n-pay", "T1", NotificationKind::Paid);
    payment.amount = Some(minor(1000));
    let job = |n: &Notification| ApplyJob::new(n.clone(), "{}".to_owned(), "x".into(), now());
    let batch = [
        job(&payment),
        job(&refund(&order_no, "n-a", "RA", 300)),
        job(&refund(&order_no, "n-a", "RA", 300)),
        job(&refund(&order_no, "n-a-renamed", "RA", 300)),
        job(&refunds_up_to(&order_no, "n-b", 300)),
        job(&refund(&order_no, "n-c", "RC", 800)),
    ];
    let results: Vec<Outcome> = commit_batch(&mut conn, &batch, &[])
        .into_iter()
        .map(|r| r.expect("applied").outcome)
        .collect();
    assert_eq!(
        results,
        [
            Outcome::Credited,
            Outcome::Refunded,
            Outcome::AlreadyBooked,
            Outcome::AlreadyBooked,
            // A cumulative total of 3.00 is what the first refund already reached.
            Outcome::AlreadyBooked,
            // 8.00 is more than the 7.00 left.
            Outcome::Mismatch,
        ]
    );
    assert_eq!(balance(&pool, "r10"), 700);
    assert_eq!(order(&pool, &order_no).refunded.get(), 300);
    assert_books_balance(&pool);
}

on_every_backend!(
    one_batch_pays_and_refunds_an_order_and_books_each_refund_once,
    first_payments_of_a_batch_book_in_its_order_around_a_refund,
    a_batch_reads_an_order_again_after_a_refund_by_trade_changed_it,
    refunds_by_id_leave_the_balance_once_each_and_the_order_keeps_what_went_back,
    cumulative_refunds_move_the_difference_and_a_passed_total_moves_nothing,
    a_refund_of_a_spent_credit_leaves_a_debt_that_is_kept_for_a_human,
    a_refund_before_its_payment_is_retried_and_applies_after,
    refunds_of_unpaid_or_other_orders_move_nothing_and_are_for_a_human,
    chargebacks_and_their_reversals_are_booked_once_each,
    a_refund_that_names_only_its_trade_finds_the_order_that_trade_paid,
    refunds_that_contradict_what_is_booked_or_move_nothing_are_for_a_human,
    concurrent_duplicates_of_one_refund_move_its_money_once,
    concurrent_cumulative_totals_in_any_order_refund_exactly_the_last,
);
