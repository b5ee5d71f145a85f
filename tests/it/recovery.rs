//! Recovery against the provider simulator, on every backend: orders whose notification never
//! came are asked about and credited once, unpaid ones back off, expired ones are closed at both
//! ends, a notification racing a query credits once, a fleet asks about each order once, and every
//! hostile answer is refused without a credit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::simulator::{self, Mode, Provider, Simulator, TradeState};
use crate::common::{count, create_order, pay_order, race, spawn_app_with_clock, TestApp, TestDb};
use payhook::books::verify;
use payhook::domain::clock::{Clock, SystemClock};
use reqwest::blocking::Client;
use serde_json::Value;

const TOKEN: &str = "recovery-admin-token";

/// The simulator's three channels and a Standard Webhooks one that cannot be asked, with
/// `recovery` settings.
fn config(sim: &Simulator, recovery: &str) -> String {
    let mut config = format!("admin_token = \"{TOKEN}\"\n[recovery]\n{recovery}\n");
    for provider in [Provider::Alipay, Provider::WechatPay, Provider::Stripe] {
        let key = match provider {
            Provider::Alipay => "alipay-app-test-private-key.pem".to_owned(),
            Provider::WechatPay => "wechatpay-merchant-test-private-key.pem".to_owned(),
            Provider::Stripe => simulator::vector_json("recovery.json")["stripe_api_key"]
                .as_str()
                .unwrap()
                .to_owned(),
        };
        config.push_str(&sim.channel_toml(provider, simulator::channel_name(provider), &key));
    }
    config.push_str(
        "[channels.gateway]\nprovider = \"standard-webhooks\"\n\
         secrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n",
    );
    config
}

/// Asks soon and often: a first ask after 1 s, then every 2 s at most; expiry far away.
const SOON: &str = "first_query_after_secs = 1\nmax_interval_secs = 2\nexpire_after_secs = 3600";

fn app(db: &TestDb, sim: &Simulator, recovery: &str) -> TestApp {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    spawn_app_with_clock(db, &config(sim, recovery), clock)
}

/// A pending order of `minor` units on `provider`'s channel for `user`.
fn order(app: &TestApp, provider: Provider, user: &str, minor: i64) -> String {
    let currency = if provider == Provider::Stripe {
        "USD"
    } else {
        "CNY"
    };
    let amount = format!("{}.{:02}", minor / 100, minor % 100);
    let channel = simulator::channel_name(provider);
    let mut conn = app.pool.get().unwrap();
    create_order(&mut conn, user, channel, &amount, currency, None).to_string()
}

fn balance(app: &TestApp, user: &str) -> i64 {
    count(
        &app.pool,
        &format!("SELECT CAST(COALESCE(SUM(balance_minor), 0) AS BIGINT) AS n FROM accounts WHERE user_id = '{user}'"),
    )
}

fn status(app: &TestApp, order_no: &str) -> String {
    let order = payhook::books::orders::find(
        &mut app.pool.get().unwrap(),
        &payhook::domain::ids::OrderNo::parse(order_no).unwrap(),
    )
    .unwrap()
    .unwrap();
    order.status.as_str().to_owned()
}

/// Waits up to `secs` for `done`.
fn within(secs: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done()
}

fn assert_books_balance(app: &TestApp) {
    let report = verify::verify(&mut app.pool.get().unwrap()).unwrap();
    assert!(report.balanced(), "{report}");
}

/// How many of the simulator's requests were about `order_no` (WeChat Pay names it in the path).
fn wechat_asks(sim: &Simulator, order_no: &str) -> usize {
    sim.seen()
        .iter()
        .filter(|s| s.provider == Provider::WechatPay && s.method == "GET")
        .filter(|s| s.path.contains(&format!("/out-trade-no/{order_no}?")))
        .count()
}

fn sync(app: &TestApp, order_no: &str) -> (u16, Value) {
    let resp = Client::new()
        .post(app.url(&format!("/api/orders/{order_no}/sync")))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

fn paid_orders_that_were_never_notified_are_credited_within_seconds_once(db: TestDb) {
    let sim = Simulator::start();
    let app = app(&db, &sim, SOON);
    // Each trade is at the provider before its order could be asked about.
    let ali = order(&app, Provider::Alipay, "q-ali", 1000);
    sim.set_trade(&ali, TradeState::Paid, 1000, "2026ALI1");
    let wx = order(&app, Provider::WechatPay, "q-wx", 2000);
    sim.set_trade(&wx, TradeState::Paid, 2000, "4200WX1");
    let st = order(&app, Provider::Stripe, "q-st", 3000);
    sim.stripe_paid(&st, 3000, "pi_q1", true);
    let waiting = order(&app, Provider::WechatPay, "q-wait", 500);
    sim.set_trade(&waiting, TradeState::Waiting, 500, "");

    let started = Instant::now();
    assert!(
        within(15, || balance(&app, "q-ali") == 1000
            && balance(&app, "q-wx") == 2000
            && balance(&app, "q-st") == 3000),
        "not credited: {} {} {}",
        balance(&app, "q-ali"),
        balance(&app, "q-wx"),
        balance(&app, "q-st")
    );
    eprintln!("credited by queries in {:?}", started.elapsed());
    let from_queries = count(
        &app.pool,
        "SELECT COUNT(*) AS n FROM notifications WHERE source = 'query' AND outcome = 'credited'",
    );
    assert_eq!(from_queries, 3);
    let metrics = Client::new()
        .get(app.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    for line in [
        "payhook_recovery_queries_total{channel=\"wx\",result=\"credited\"}",
        "payhook_recovery_queries_total{channel=\"ali\",result=\"credited\"}",
        "payhook_oldest_pending_order_seconds",
    ] {
        assert!(metrics.contains(line), "{line} missing from /metrics");
    }

    // Paid orders are not asked about again; the unpaid one is, less and less often.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(balance(&app, "q-ali"), 1000);
    assert_eq!(
        wechat_asks(&sim, &wx),
        1,
        "a paid order is not asked about again"
    );
    let asks = wechat_asks(&sim, &waiting);
    let waited = started.elapsed().as_secs();
    assert!(
        asks >= 2 && (asks as u64) < waited,
        "{asks} asks in {waited} s: not backing off"
    );
    assert_eq!(status(&app, &waiting), "pending");
    let attempts = count(
        &app.pool,
        &format!("SELECT query_attempts AS n FROM orders WHERE order_no = '{waiting}'"),
    );
    assert!(attempts >= 2, "{attempts}");
    assert_books_balance(&app);
}

fn expired_orders_are_closed_at_the_provider_and_here(db: TestDb) {
    let sim = Simulator::start();
    let app = app(
        &db,
        &sim,
        "first_query_after_secs = 1\nmax_interval_secs = 1\nexpire_after_secs = 3",
    );
    let ali = order(&app, Provider::Alipay, "x-ali", 100);
    let wx = order(&app, Provider::WechatPay, "x-wx", 100);
    let st = order(&app, Provider::Stripe, "x-st", 100);
    sim.set_trade(&ali, TradeState::Waiting, 100, "");
    sim.set_trade(&wx, TradeState::Waiting, 100, "");
    assert!(
        within(15, || [&ali, &wx, &st]
            .iter()
            .all(|o| status(&app, o) == "closed")),
        "not closed: {} {} {}",
        status(&app, &ali),
        status(&app, &wx),
        status(&app, &st)
    );
    let closed = sim.closed();
    assert!(
        closed.contains(&(Provider::Alipay, ali.clone())),
        "{closed:?}"
    );
    assert!(
        closed.contains(&(Provider::WechatPay, wx.clone())),
        "{closed:?}"
    );
    assert_eq!(sim.trade_state(&ali), Some(TradeState::Closed));
    assert_books_balance(&app);
}

fn an_order_paid_as_it_expires_is_credited_not_closed(db: TestDb) {
    let sim = Simulator::start();
    let app = app(
        &db,
        &sim,
        "first_query_after_secs = 1\nmax_interval_secs = 1\nexpire_after_secs = 2",
    );
    // The buyers pay just as their orders expire: each close is refused as paid, the order is
    // asked about again and credited, never closed here.
    let ali = order(&app, Provider::Alipay, "late-ali", 700);
    sim.set_trade(&ali, TradeState::PaysAtClose, 700, "2026LATE");
    let wx = order(&app, Provider::WechatPay, "late-wx", 800);
    sim.set_trade(&wx, TradeState::PaysAtClose, 800, "4200LATE");
    // A close the provider accepts while a payment in flight then settles: asked once more
    // after the close, the payment wins.
    let in_flight = order(&app, Provider::WechatPay, "late-flight", 900);
    sim.set_trade(&in_flight, TradeState::PaysAfterClose, 900, "4200FLIGHT");
    assert!(within(15, || balance(&app, "late-ali") == 700
        && balance(&app, "late-wx") == 800
        && balance(&app, "late-flight") == 900));
    for o in [&ali, &wx, &in_flight] {
        assert_eq!(status(&app, o), "paid");
    }
    assert_eq!(sim.closed(), [(Provider::WechatPay, in_flight.clone())]);
    assert_books_balance(&app);
}

fn a_notification_and_queries_racing_for_one_order_credit_it_once(db: TestDb) {
    let sim = Simulator::start();
    // Recovery's own loop stays out of the way: only the racers ask.
    let app = app(
        &db,
        &sim,
        "first_query_after_secs = 3000\nmax_interval_secs = 600\nexpire_after_secs = 7200",
    );
    let wx = order(&app, Provider::WechatPay, "racer", 1234);
    sim.set_trade(&wx, TradeState::Paid, 1234, "4200RACE");
    let app = Arc::new(app);
    let (a, o) = (app.clone(), wx.clone());
    let results = race(9, move |i| {
        if i == 0 {
            let mut conn = a.pool.get().unwrap();
            pay_order(&mut conn, "wx", &o, "4200RACE", 1234, "CNY").to_owned()
        } else {
            let (status, body) = sync(&a, &o);
            assert_eq!(status, 200, "{body}");
            body["status"].as_str().unwrap().to_owned()
        }
    });
    assert!(
        results
            .iter()
            .all(|r| r == "credited" || r == "already_paid" || r == "paid"),
        "{results:?}"
    );
    assert_eq!(balance(&app, "racer"), 1234);
    let credits = count(
        &app.pool,
        &format!("SELECT COUNT(*) AS n FROM ledger WHERE order_no = '{wx}'"),
    );
    assert_eq!(credits, 1);
    assert_books_balance(&app);
}

fn three_instances_share_the_work_without_asking_twice(db: TestDb) {
    let sim = Simulator::start();
    let apps: Vec<TestApp> = (0..3).map(|_| app(&db, &sim, SOON)).collect();
    let orders: Vec<String> = (0..24)
        .map(|i| {
            let o = order(&apps[0], Provider::WechatPay, "fleet", 100);
            sim.set_trade(&o, TradeState::Paid, 100, &format!("4200F{i}"));
            o
        })
        .collect();
    assert!(
        within(20, || balance(&apps[0], "fleet") == 2400),
        "{}",
        balance(&apps[0], "fleet")
    );
    for o in &orders {
        assert_eq!(
            wechat_asks(&sim, o),
            1,
            "order {o} was asked about more than once"
        );
    }
    assert_books_balance(&apps[0]);
}

fn every_hostile_answer_is_refused_and_credits_nothing(db: TestDb) {
    let sim = Simulator::start();
    let app = app(
        &db,
        &sim,
        "first_query_after_secs = 3000\nmax_interval_secs = 600\nexpire_after_secs = 7200",
    );
    for provider in [Provider::Alipay, Provider::WechatPay, Provider::Stripe] {
        let o = order(&app, provider, "hostile", 100);
        match provider {
            Provider::Stripe => {
                sim.stripe_paid(&o, 100, &format!("pi_{o}"), true);
            }
            _ => sim.set_trade(&o, TradeState::Paid, 100, &format!("T{o}")),
        }
        for (mode, error) in [
            (Mode::BadSignature, "provider_answer_invalid"),
            (Mode::ServerError, "provider_unreachable"),
            (Mode::NotJson, "provider_answer_invalid"),
            (Mode::AnotherOrder, "provider_answer_invalid"),
            (Mode::Hang, "provider_unreachable"),
        ] {
            if provider == Provider::Stripe
                && matches!(mode, Mode::BadSignature | Mode::AnotherOrder)
            {
                continue; // Stripe's answers are not signed, and name their own orders
            }
            sim.set_mode(provider, mode);
            let started = Instant::now();
            let (status, body) = sync(&app, &o);
            assert_eq!(
                (status, body["error"].as_str()),
                (502, Some(error)),
                "{provider:?} {mode:?}: {body}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "{provider:?} {mode:?} hung"
            );
            assert_eq!(
                balance(&app, "hostile"),
                0,
                "{provider:?} {mode:?} credited"
            );
        }
        sim.set_mode(provider, Mode::Honest);
    }
    let rejected = count(
        &app.pool,
        "SELECT COUNT(*) AS n FROM notifications WHERE source = 'query' AND outcome = 'rejected'",
    );
    assert!(rejected >= 5, "rejected queries are kept: {rejected}");

    // An authentic answer with another amount is a mismatch for a human, never a credit.
    let o = order(&app, Provider::Alipay, "short", 1000);
    sim.set_trade(&o, TradeState::Paid, 999, "2026SHORT");
    let (status, body) = sync(&app, &o);
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("pending")),
        "{body}"
    );
    let anomalies = count(
        &app.pool,
        &format!("SELECT COUNT(*) AS n FROM notifications WHERE order_no = '{o}' AND source = 'query' AND outcome = 'mismatch' AND anomaly = TRUE"),
    );
    assert_eq!(anomalies, 1);
    assert_eq!(balance(&app, "short"), 0);

    // A channel that cannot be asked, and an order that does not exist.
    let sw = {
        let mut conn = app.pool.get().unwrap();
        create_order(&mut conn, "sw", "gateway", "1.00", "CNY", None).to_string()
    };
    let (status, body) = sync(&app, &sw);
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("channel_cannot_be_asked"))
    );
    assert_eq!(sync(&app, "NOPE-1").0, 404);
    assert_books_balance(&app);
}

fn stripe_events_it_could_not_deliver_are_swept_and_credited(db: TestDb) {
    let sim = Simulator::start();
    // The order and Stripe's undelivered event exist before the server starts: its first sweep
    // runs at once, the next a minute later.
    let st = {
        let mut conn = db.pool(1).get().unwrap();
        create_order(&mut conn, "swept", "stripe", "42.00", "USD", None).to_string()
    };
    let event = sim.stripe_paid(&st, 4200, "pi_swept", false);
    let app = app(
        &db,
        &sim,
        "first_query_after_secs = 3000\nmax_interval_secs = 600\nexpire_after_secs = 7200",
    );
    assert!(
        within(15, || balance(&app, "swept") == 4200),
        "{}",
        balance(&app, "swept")
    );
    let cursor = count(
        &app.pool,
        &format!("SELECT COUNT(*) AS n FROM provider_cursors WHERE channel = 'stripe' AND read_up_to = '{event}'"),
    );
    assert_eq!(cursor, 1, "the sweep keeps how far it read");
    let kept = count(
        &app.pool,
        &format!("SELECT COUNT(*) AS n FROM notifications WHERE notification_id = '{event}' AND source = 'query'"),
    );
    assert_eq!(kept, 1);
    assert_books_balance(&app);
}

fn order_sync_on_the_command_line_asks_and_credits(db: TestDb) {
    let sim = Simulator::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("payhook.toml");
    std::fs::write(&path, config(&sim, "enabled = false")).unwrap();
    let pool = db.pool(1);
    let (paid, unreachable, sw) = {
        let mut conn = pool.get().unwrap();
        let paid = create_order(&mut conn, "cli-sync", "ali", "5.00", "CNY", None).to_string();
        let other = create_order(&mut conn, "cli-sync", "wx", "5.00", "CNY", None).to_string();
        let sw = create_order(&mut conn, "cli-sync", "gateway", "5.00", "CNY", None).to_string();
        (paid, other, sw)
    };
    sim.set_trade(&paid, TradeState::Paid, 500, "2026CLI");
    sim.set_mode(Provider::WechatPay, Mode::ServerError);
    let run = |order_no: &str| {
        let out = crate::common::payhook()
            .args([
                "order",
                "sync",
                order_no,
                "--database-url",
                &db.url,
                "--config",
            ])
            .arg(&path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let text = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
        (out.status.success(), stdout, text)
    };
    let (ok, stdout, text) = run(&paid);
    assert!(ok, "{text}");
    let order: Value = serde_json::from_str(&stdout).unwrap_or_else(|_| panic!("{text}"));
    assert_eq!(order["status"], "paid");
    assert_eq!(
        count(
            &pool,
            &format!("SELECT COUNT(*) AS n FROM ledger WHERE order_no = '{paid}'")
        ),
        1
    );
    let (ok, _, text) = run(&unreachable);
    assert!(!ok && text.contains("unreachable"), "{text}");
    let (ok, _, text) = run(&sw);
    assert!(!ok && text.contains("no keys to ask"), "{text}");
    let (ok, _, text) = run("NO-SUCH-ORDER");
    assert!(!ok && text.contains("no order"), "{text}");
}

on_every_backend!(
    order_sync_on_the_command_line_asks_and_credits,
    paid_orders_that_were_never_notified_are_credited_within_seconds_once,
    expired_orders_are_closed_at_the_provider_and_here,
    an_order_paid_as_it_expires_is_credited_not_closed,
    a_notification_and_queries_racing_for_one_order_credit_it_once,
    three_instances_share_the_work_without_asking_twice,
    every_hostile_answer_is_refused_and_credits_nothing,
    stripe_events_it_could_not_deliver_are_swept_and_credited,
);
