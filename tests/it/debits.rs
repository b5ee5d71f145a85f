//! Spending a balance through the real server and the real command line, on every backend: one
//! debit per `debit_no`, identical repeats answered alike, conflicts named, a short balance
//! refused without a trace, and real concurrency that never takes twice nor below zero.

use std::process::{Child, Output, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::common::{count, create_order, free_port, now, payhook, spawn_app, TestApp, TestDb};
use chrono::{DateTime, Utc};
use payhook::books::inbox::Evidence;
use payhook::books::verify::verify;
use payhook::crediting::{apply_alone, Outcome};
use payhook::db::Pool;
use payhook::domain::ids::ChannelName;
use payhook::domain::money::{AmountMinor, Currency};
use payhook::domain::notification::{Notification, NotificationKind};
use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};

const TOKEN: &str = "debits-admin-token-3b7e";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const VECTOR_TIME: i64 = 1_795_375_716;

fn app(db: &TestDb) -> TestApp {
    let config = format!(
        "admin_token = {TOKEN:?}\n\
         [channels.gateway]\nprovider = \"standard-webhooks\"\nsecrets = [{SECRET:?}]\n"
    );
    spawn_app(
        db,
        &config,
        DateTime::<Utc>::from_timestamp(VECTOR_TIME, 0).unwrap(),
    )
}

fn status_and_json(resp: Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    (status, json)
}

fn debit_body(debit_no: &str, amount: &str, memo: Option<&str>) -> Value {
    let mut body = json!({"debit_no": debit_no, "amount": amount, "currency": "CNY"});
    if let Some(memo) = memo {
        body["memo"] = memo.into();
    }
    body
}

fn debit(app: &TestApp, user: &str, body: &Value) -> (u16, Value) {
    status_and_json(
        Client::new()
            .post(app.url(&format!("/api/accounts/{user}/debits")))
            .bearer_auth(TOKEN)
            .json(body)
            .send()
            .unwrap(),
    )
}

fn get(app: &TestApp, path: &str) -> (u16, Value) {
    status_and_json(
        Client::new()
            .get(app.url(path))
            .bearer_auth(TOKEN)
            .send()
            .unwrap(),
    )
}

/// Creates an order for `user` and pays it with a signed notification through the server, as a
/// provider would.
fn top_up(app: &TestApp, user: &str, order_no: &str, amount: &str) {
    let (status, order) = status_and_json(
        Client::new()
            .post(app.url("/api/orders"))
            .bearer_auth(TOKEN)
            .json(
                &json!({"order_no": order_no, "user_id": user, "amount": amount,
                          "currency": "CNY", "channel": "gateway"}),
            )
            .send()
            .unwrap(),
    );
    assert_eq!(status, 201, "{order}");
    let minor = order["amount_minor"].as_i64().unwrap();
    let id = format!("msg_{order_no}");
    let body = json!({"type": "payment.succeeded", "data": {"order_no": order_no,
        "amount": minor, "currency": "CNY", "transaction_id": format!("tx_{order_no}")}})
    .to_string();
    let signature = payhook::notify::standard_webhooks::sign::signature(
        SECRET,
        &id,
        VECTOR_TIME,
        body.as_bytes(),
    )
    .unwrap();
    let resp = Client::new()
        .post(app.url("/notify/gateway"))
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", VECTOR_TIME.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .unwrap();
    assert!(resp.status().is_success(), "top-up not acked: {resp:?}");
    let (_, paid) = get(app, &format!("/api/orders/{order_no}"));
    assert_eq!(paid["status"], "paid", "{paid}");
}

/// Credits `user` with a paid order through the library, without a server.
fn fund(pool: &Pool, user: &str, order_no: &str, amount: &str) {
    let mut conn = pool.get().unwrap();
    let order = create_order(&mut conn, user, "gateway", amount, "CNY", Some(order_no));
    let n = Notification {
        channel: ChannelName::parse("gateway").unwrap(),
        notification_id: format!("n-{order_no}"),
        order_no: Some(order),
        provider_trade_no: Some(format!("t-{order_no}")),
        amount: Some(AmountMinor::parse(amount, Currency::Cny).unwrap()),
        currency: Some(Currency::Cny),
        kind: NotificationKind::Paid,
        merchant_mismatch: None,
    };
    let evidence = Evidence {
        headers_json: "{}",
        body: b"x",
        source: payhook::books::inbox::Source::Notify,
    };
    let applied = apply_alone(&mut conn, &n, evidence, now()).unwrap();
    assert_eq!(applied.outcome, Outcome::Credited);
}

fn balance(pool: &Pool, user: &str) -> i64 {
    count(
        pool,
        &format!(
            "SELECT CAST(COALESCE(SUM(balance_minor), 0) AS BIGINT) AS n FROM accounts \
             WHERE user_id = '{user}'"
        ),
    )
}

fn debit_rows(pool: &Pool, filter: &str) -> i64 {
    count(
        pool,
        &format!("SELECT COUNT(*) AS n FROM ledger WHERE kind = 'debit' AND {filter}"),
    )
}

fn assert_books_balance(pool: &Pool) {
    let report = verify(&mut pool.get().unwrap()).unwrap();
    assert!(report.balanced(), "{report}");
}

fn a_debit_is_taken_once_and_an_identical_repeat_gets_the_same_answer(db: TestDb) {
    let app = app(&db);
    top_up(&app, "alice", "DEB-TOPUP-1", "10.00");
    let body = debit_body("DEB-1", "3.00", Some("coffee and cake"));
    let (status, first) = debit(&app, "alice", &body);
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["debit_no"], "DEB-1");
    assert_eq!(first["user_id"], "alice");
    assert_eq!(first["amount"], "3.00");
    assert_eq!(first["amount_minor"], 300);
    assert_eq!(first["currency"], "CNY");
    assert_eq!(first["memo"], "coffee and cake");
    assert_eq!(first["balance_after"], 700);
    assert!(first["created_at"].is_string(), "{first}");
    assert_eq!(balance(&app.pool, "alice"), 700);

    let (status, again) = debit(&app, "alice", &body);
    assert_eq!(status, 200, "an identical repeat: {again}");
    assert_eq!(again, first, "the same body");
    assert_eq!(balance(&app.pool, "alice"), 700, "taken once");
    assert_eq!(debit_rows(&app.pool, "debit_no = 'DEB-1'"), 1);

    let (status, found) = get(&app, "/api/debits/DEB-1");
    assert_eq!(status, 200);
    assert_eq!(found, first);
    assert_eq!(get(&app, "/api/debits/DEB-NONE").0, 404);
    assert_eq!(get(&app, "/api/debits/not%20an%20id").0, 404);

    // Without a memo, the debit keeps none.
    let (status, plain) = debit(&app, "alice", &debit_body("DEB-2", "0.5", None));
    assert_eq!(status, 201, "{plain}");
    assert_eq!(plain["amount"], "0.50");
    assert_eq!(plain["memo"], Value::Null);
    assert_eq!(plain["balance_after"], 650);

    let (status, account) = get(&app, "/api/accounts/alice");
    assert_eq!(status, 200);
    assert_eq!(
        account["balances"],
        json!([{"currency": "CNY", "amount": "6.50", "amount_minor": 650}])
    );
    let ledger = account["ledger"].as_array().unwrap();
    assert_eq!(ledger.len(), 3, "{account}");
    let (newest, debited, credit) = (&ledger[0], &ledger[1], &ledger[2]);
    assert_eq!(newest["debit_no"], "DEB-2");
    assert_eq!(debited["kind"], "debit");
    assert_eq!(debited["amount"], "3.00");
    assert_eq!(debited["amount_minor"], -300);
    assert_eq!(debited["balance_after"], 700);
    assert_eq!(debited["debit_no"], "DEB-1");
    assert_eq!(debited["order_no"], Value::Null);
    assert_eq!(debited["memo"], "coffee and cake");
    assert_eq!(credit["kind"], "credit");
    assert_eq!(credit["debit_no"], Value::Null);
    assert_eq!(credit["order_no"], "DEB-TOPUP-1");
    assert_books_balance(&app.pool);
}

fn a_debit_number_used_again_with_other_content_is_a_conflict_naming_the_fields(db: TestDb) {
    let app = app(&db);
    top_up(&app, "bob", "DEB-TOPUP-2", "10.00");
    top_up(&app, "carol", "DEB-TOPUP-3", "10.00");
    let (status, first) = debit(&app, "bob", &debit_body("DEB-X", "3.00", Some("tea")));
    assert_eq!(status, 201, "{first}");
    let usd = json!({"debit_no": "DEB-X", "amount": "3.00", "currency": "USD", "memo": "tea"});
    for (user, body, fields) in [
        (
            "bob",
            debit_body("DEB-X", "4.00", Some("tea")),
            vec!["amount"],
        ),
        (
            "bob",
            debit_body("DEB-X", "3.00", Some("milk")),
            vec!["memo"],
        ),
        ("bob", debit_body("DEB-X", "3.00", None), vec!["memo"]),
        ("bob", usd, vec!["currency"]),
        (
            "carol",
            debit_body("DEB-X", "3.00", Some("tea")),
            vec!["user_id"],
        ),
        (
            "carol",
            debit_body("DEB-X", "1.00", None),
            vec!["user_id", "amount", "memo"],
        ),
    ] {
        let (status, conflict) = debit(&app, user, &body);
        assert_eq!(status, 409, "{user} {body}: {conflict}");
        assert_eq!(conflict["fields"], json!(fields), "{conflict}");
        let message = conflict["error"].as_str().unwrap();
        assert!(
            message.contains("DEB-X") && fields.iter().all(|f| message.contains(f)),
            "{message}"
        );
    }
    assert_eq!(balance(&app.pool, "bob"), 700);
    assert_eq!(balance(&app.pool, "carol"), 1000);
    assert_eq!(debit_rows(&app.pool, "debit_no = 'DEB-X'"), 1);
    assert_eq!(get(&app, "/api/debits/DEB-X").1, first);
    assert_books_balance(&app.pool);
}

fn a_debit_the_balance_cannot_cover_takes_nothing_and_succeeds_after_a_top_up(db: TestDb) {
    let app = app(&db);
    top_up(&app, "dave", "DEB-TOPUP-4", "2.00");
    let body = debit_body("DEB-SHORT", "3.00", Some("a book"));
    let (status, short) = debit(&app, "dave", &body);
    assert_eq!(status, 422, "{short}");
    assert_eq!(short["error"], "insufficient_balance");
    assert_eq!(short["balance"], "2.00");
    assert_eq!(short["balance_minor"], 200);
    assert_eq!(balance(&app.pool, "dave"), 200, "nothing taken");
    assert_eq!(
        debit_rows(&app.pool, "user_id = 'dave'"),
        0,
        "nothing booked"
    );
    assert_eq!(get(&app, "/api/debits/DEB-SHORT").0, 404);

    // No account at all is a balance of zero, and creates nothing.
    let (status, none) = debit(&app, "nobody", &debit_body("DEB-NOBODY", "0.01", None));
    assert_eq!(status, 422, "{none}");
    assert_eq!(none["error"], "insufficient_balance");
    assert_eq!(none["balance_minor"], 0);
    assert_eq!(
        count(
            &app.pool,
            "SELECT COUNT(*) AS n FROM accounts WHERE user_id = 'nobody'"
        ),
        0
    );

    top_up(&app, "dave", "DEB-TOPUP-5", "1.50");
    let (status, taken) = debit(&app, "dave", &body);
    assert_eq!(
        status, 201,
        "the same debit_no succeeds after a top-up: {taken}"
    );
    assert_eq!(taken["balance_after"], 50);
    // The whole balance may be spent, and not a cent more.
    let (status, all) = debit(&app, "dave", &debit_body("DEB-ALL", "0.50", None));
    assert_eq!(status, 201, "{all}");
    assert_eq!(all["balance_after"], 0);
    let (status, over) = debit(&app, "dave", &debit_body("DEB-OVER", "0.01", None));
    assert_eq!(status, 422, "{over}");
    assert_eq!(over["balance"], "0.00");
    assert_eq!(balance(&app.pool, "dave"), 0);
    assert_books_balance(&app.pool);
}

fn invalid_debits_are_refused_naming_the_field(db: TestDb) {
    let app = app(&db);
    top_up(&app, "erin", "DEB-TOPUP-6", "10.00");
    let long_memo = "m".repeat(257);
    let cases = [
        (
            "erin",
            json!({"debit_no": "D1", "amount": "1.001", "currency": "CNY"}),
            "amount",
        ),
        (
            "erin",
            json!({"debit_no": "D1", "amount": "-1", "currency": "CNY"}),
            "amount",
        ),
        (
            "erin",
            json!({"debit_no": "D1", "amount": "0", "currency": "CNY"}),
            "amount",
        ),
        (
            "erin",
            json!({"debit_no": "D1", "amount": "abc", "currency": "CNY"}),
            "amount",
        ),
        (
            "erin",
            json!({"debit_no": "D1", "amount": 1.0, "currency": "CNY"}),
            "string",
        ),
        (
            "erin",
            json!({"debit_no": "D1", "amount": "1", "currency": "XXX"}),
            "currency",
        ),
        (
            "erin",
            json!({"debit_no": "D 1", "amount": "1", "currency": "CNY"}),
            "debit_no",
        ),
        (
            "erin",
            json!({"debit_no": "", "amount": "1", "currency": "CNY"}),
            "debit_no",
        ),
        (
            "erin",
            json!({"debit_no": "d".repeat(65), "amount": "1", "currency": "CNY"}),
            "debit_no",
        ),
        (
            "erin",
            json!({"amount": "1", "currency": "CNY"}),
            "debit_no",
        ),
        (
            "erin",
            json!({"debit_no": "D1", "currency": "CNY"}),
            "amount",
        ),
        (
            "erin",
            json!({"debit_no": "D1", "amount": "1", "currency": "CNY", "memo": long_memo}),
            "memo",
        ),
        (
            "erin",
            json!({"debit_no": "D1", "amount": "1", "currency": "CNY", "extra": 1}),
            "extra",
        ),
        (
            "e%20rin",
            json!({"debit_no": "D1", "amount": "1", "currency": "CNY"}),
            "user_id",
        ),
    ];
    for (user, body, field) in cases {
        let (status, json) = debit(&app, user, &body);
        assert_eq!(status, 422, "{user} {body}: {json}");
        assert!(
            json["error"].as_str().unwrap().contains(field),
            "{user} {body}: {json}"
        );
    }
    for raw in ["{", "not json", "", "[1,2"] {
        let resp = Client::new()
            .post(app.url("/api/accounts/erin/debits"))
            .bearer_auth(TOKEN)
            .header("Content-Type", "application/json")
            .body(raw)
            .send()
            .unwrap();
        let (status, json) = status_and_json(resp);
        assert!(status == 400 || status == 422, "{raw:?}: {status}");
        assert!(json["error"].is_string());
    }
    assert_eq!(debit_rows(&app.pool, "1 = 1"), 0);
    assert_eq!(balance(&app.pool, "erin"), 1000);
}

fn debit_routes_refuse_a_missing_or_wrong_token(db: TestDb) {
    let app = app(&db);
    top_up(&app, "frank", "DEB-TOPUP-7", "10.00");
    let body = debit_body("DEB-AUTH", "1.00", None);
    for token in [None, Some("wrong"), Some(&TOKEN[..TOKEN.len() - 1])] {
        let mut post = Client::new()
            .post(app.url("/api/accounts/frank/debits"))
            .json(&body);
        let mut read = Client::new().get(app.url("/api/debits/DEB-AUTH"));
        if let Some(token) = token {
            post = post.bearer_auth(token);
            read = read.bearer_auth(token);
        }
        assert_eq!(post.send().unwrap().status().as_u16(), 401, "{token:?}");
        assert_eq!(read.send().unwrap().status().as_u16(), 401, "{token:?}");
    }
    assert_eq!(balance(&app.pool, "frank"), 1000, "nothing taken");
    assert_eq!(debit(&app, "frank", &body).0, 201);
}

/// Sends every body at the same instant, one thread each, and returns the answers.
fn all_at_once(app: &TestApp, user: &str, bodies: Vec<Value>) -> Vec<(u16, Value)> {
    let url = app.url(&format!("/api/accounts/{user}/debits"));
    let barrier = Arc::new(Barrier::new(bodies.len()));
    let threads: Vec<_> = bodies
        .into_iter()
        .map(|body| {
            let (url, barrier) = (url.clone(), barrier.clone());
            std::thread::spawn(move || {
                let req = Client::new().post(&url).bearer_auth(TOKEN).json(&body);
                barrier.wait();
                status_and_json(req.send().unwrap())
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

fn thirty_identical_debits_at_once_take_the_amount_once(db: TestDb) {
    let app = app(&db);
    top_up(&app, "gina", "DEB-TOPUP-8", "10.00");
    let body = debit_body("DEB-SAME", "3.00", Some("once"));
    let answers = all_at_once(&app, "gina", vec![body; 30]);
    let created = answers.iter().filter(|(s, _)| *s == 201).count();
    assert_eq!(created, 1, "{answers:?}");
    assert!(
        answers.iter().all(|(s, _)| *s == 200 || *s == 201),
        "{answers:?}"
    );
    assert!(
        answers.iter().all(|(_, b)| b == &answers[0].1),
        "every answer is the same debit: {answers:?}"
    );
    assert_eq!(answers[0].1["balance_after"], 700);
    assert_eq!(debit_rows(&app.pool, "debit_no = 'DEB-SAME'"), 1);
    assert_eq!(balance(&app.pool, "gina"), 700);
    assert_books_balance(&app.pool);
}

fn forty_different_debits_against_ten_yuan_take_exactly_ten_and_never_go_below_zero(db: TestDb) {
    let app = app(&db);
    top_up(&app, "hank", "DEB-TOPUP-9", "10.00");
    let bodies = (0..40)
        .map(|i| debit_body(&format!("DEB-MANY-{i}"), "1.00", None))
        .collect();
    let answers = all_at_once(&app, "hank", bodies);
    let created: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 201)
        .map(|(_, b)| b)
        .collect();
    let short: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 422)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(created.len(), 10, "{answers:?}");
    assert_eq!(short.len(), 30, "{answers:?}");
    assert!(
        short.iter().all(|b| b["error"] == "insufficient_balance"
            && (0..100).contains(&b["balance_minor"].as_i64().unwrap())),
        "{short:?}"
    );
    let mut after: Vec<i64> = created
        .iter()
        .map(|b| b["balance_after"].as_i64().unwrap())
        .collect();
    after.sort_unstable();
    assert_eq!(
        after,
        (0..10).map(|i| i * 100).collect::<Vec<_>>(),
        "each debit saw the balance the one before left"
    );
    assert_eq!(balance(&app.pool, "hank"), 0);
    assert_eq!(debit_rows(&app.pool, "user_id = 'hank'"), 10);
    assert_eq!(
        count(
            &app.pool,
            "SELECT COUNT(*) AS n FROM ledger WHERE user_id = 'hank' AND balance_after < 0"
        ),
        0,
        "the balance never went below zero"
    );
    assert_books_balance(&app.pool);
}

fn run(cmd: &mut std::process::Command) -> (Output, String) {
    let out = cmd.output().expect("run payhook");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stderr)
}

fn account_debit_on_the_command_line_takes_once_and_refuses_a_short_balance(db: TestDb) {
    let pool = db.pool(2);
    fund(&pool, "ivy", "DEB-CLI-TOPUP", "5.00");
    let dir = tempfile::tempdir().unwrap();
    let debit = |debit_no: &str, amount: &str, memo: Option<&str>| {
        let mut cmd = payhook();
        cmd.current_dir(dir.path())
            .args(["account", "debit", "ivy", "--database-url", &db.url])
            .args([
                "--debit-no",
                debit_no,
                "--amount",
                amount,
                "--currency",
                "CNY",
            ]);
        if let Some(memo) = memo {
            cmd.args(["--memo", memo]);
        }
        run(&mut cmd)
    };
    let (out, stderr) = debit("DEB-CLI-1", "3.00", Some("by hand"));
    assert!(out.status.success(), "{stderr}");
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["debit_no"], "DEB-CLI-1");
    assert_eq!(printed["user_id"], "ivy");
    assert_eq!(printed["amount"], "3.00");
    assert_eq!(printed["amount_minor"], 300);
    assert_eq!(printed["memo"], "by hand");
    assert_eq!(printed["balance_after"], 200);

    let (out, stderr) = debit("DEB-CLI-1", "3.00", Some("by hand"));
    assert!(out.status.success(), "an identical repeat: {stderr}");
    let again: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again, printed);
    assert_eq!(balance(&pool, "ivy"), 200);

    let (out, stderr) = debit("DEB-CLI-2", "2.01", None);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(
        stderr.contains("insufficient balance") && stderr.contains("2.00 CNY"),
        "{stderr}"
    );
    let (out, stderr) = debit("DEB-CLI-1", "1.00", Some("by hand"));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("different amount"), "{stderr}");
    let (out, stderr) = debit("DEB-CLI-3", "1.001", None);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("amount"), "{stderr}");
    assert_eq!(balance(&pool, "ivy"), 200);
    assert_eq!(debit_rows(&pool, "user_id = 'ivy'"), 1);

    let out = payhook()
        .current_dir(dir.path())
        .args(["verify", "--database-url", &db.url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("the books balance"), "{text}");
}

on_every_backend!(
    a_debit_is_taken_once_and_an_identical_repeat_gets_the_same_answer,
    a_debit_number_used_again_with_other_content_is_a_conflict_naming_the_fields,
    a_debit_the_balance_cannot_cover_takes_nothing_and_succeeds_after_a_top_up,
    invalid_debits_are_refused_naming_the_field,
    debit_routes_refuse_a_missing_or_wrong_token,
    thirty_identical_debits_at_once_take_the_amount_once,
    forty_different_debits_against_ten_yuan_take_exactly_ten_and_never_go_below_zero,
    account_debit_on_the_command_line_takes_once_and_refuses_a_short_balance,
);

/// A `payhook serve` process of its own, killed when dropped: its metrics count only its own
/// requests.
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

#[test]
fn every_debit_outcome_is_counted_in_the_metrics() {
    let db = TestDb::new(crate::common::Backend::Sqlite);
    fund(&db.pool(2), "jack", "DEB-METRICS-TOPUP", "5.00");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("payhook.toml");
    std::fs::write(
        &config,
        format!(
            "bind = \"127.0.0.1:{port}\"\ndatabase_url = {:?}\nadmin_token = {TOKEN:?}\n",
            db.url
        ),
    )
    .unwrap();
    let _server = Served(
        payhook()
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let client = Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !client
        .get(format!("{base}/readyz"))
        .send()
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "payhook never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let post = |body: Value| {
        client
            .post(format!("{base}/api/accounts/jack/debits"))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    let statuses = [
        post(debit_body("DEB-M-1", "1.00", None)),
        post(debit_body("DEB-M-2", "1.00", None)),
        post(debit_body("DEB-M-1", "1.00", None)),
        post(debit_body("DEB-M-1", "2.00", None)),
        post(debit_body("DEB-M-3", "9.00", None)),
        post(debit_body("DEB-M-4", "0", None)),
        post(json!({"debit_no": "DEB-M-5"})),
    ];
    assert_eq!(statuses, [201, 201, 200, 409, 422, 422, 422]);
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    for (outcome, n) in [
        ("debited", 2.0),
        ("repeat", 1.0),
        ("conflict", 1.0),
        ("insufficient_balance", 1.0),
        ("invalid", 2.0),
    ] {
        let name = format!("payhook_debits_total{{outcome=\"{outcome}\"}}");
        assert_eq!(metric(&text, &name), n, "{name} in {text}");
    }
}
