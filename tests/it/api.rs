//! The admin API through the real server on both backends: authentication, idempotent creation,
//! versioned close, balances and the inbox.

use std::collections::HashSet;
use std::sync::{Arc, Barrier};

use crate::common::{count, exec, pay_order, settled_count, spawn_app, TestApp, TestDb};
use chrono::{DateTime, Utc};
use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};

const TOKEN: &str = "test-admin-token-6f1c";
const VECTOR_TIME: i64 = 1_795_375_716;

fn vectors(file: &str) -> Value {
    let path = format!("{}/tests/vectors/{file}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn app_with(db: &TestDb, token: Option<&str>) -> TestApp {
    let webhooks = vectors("standard-webhooks.json");
    let mut config = format!(
        "[channels.gateway]\nprovider = \"standard-webhooks\"\nsecrets = [{:?}]\n\
         [channels.usd]\nprovider = \"standard-webhooks\"\ncurrency = \"USD\"\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n",
        webhooks["secret"].as_str().unwrap()
    );
    if let Some(token) = token {
        config = format!("admin_token = {token:?}\n{config}");
    }
    spawn_app(
        db,
        &config,
        DateTime::<Utc>::from_timestamp(VECTOR_TIME, 0).unwrap(),
    )
}

fn app(db: &TestDb) -> TestApp {
    app_with(db, Some(TOKEN))
}

fn client() -> Client {
    Client::new()
}

fn authed(req: reqwest::blocking::RequestBuilder) -> reqwest::blocking::RequestBuilder {
    req.bearer_auth(TOKEN)
}

fn create(app: &TestApp, body: &Value) -> Response {
    authed(client().post(app.url("/api/orders")))
        .json(body)
        .send()
        .unwrap()
}

fn status_and_json(resp: Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    (status, json)
}

fn order_body(order_no: &str, user: &str, amount: &str) -> Value {
    json!({"order_no": order_no, "user_id": user, "amount": amount, "currency": "CNY", "channel": "gateway"})
}

fn every_api_route_refuses_a_missing_or_wrong_token(db: TestDb) {
    let app = app(&db);
    let routes = [
        ("POST", "/api/order-numbers"),
        ("POST", "/api/orders"),
        ("GET", "/api/orders/X1"),
        ("POST", "/api/orders/X1/close"),
        ("GET", "/api/accounts/u1"),
        ("GET", "/api/notifications?order_no=X1"),
    ];
    for (method, path) in routes {
        let req = |token: Option<&str>| {
            let mut r = match method {
                "GET" => client().get(app.url(path)),
                _ => client().post(app.url(path)),
            };
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            r.send().unwrap()
        };
        assert_eq!(
            req(None).status().as_u16(),
            401,
            "{method} {path} without a token"
        );
        assert_eq!(
            req(Some("wrong")).status().as_u16(),
            401,
            "{method} {path} with a wrong token"
        );
        assert_eq!(
            req(Some(&TOKEN[..TOKEN.len() - 1])).status().as_u16(),
            401,
            "{method} {path} with a prefix of the token"
        );
        assert_ne!(
            req(Some(TOKEN)).status().as_u16(),
            401,
            "{method} {path} with the token"
        );
    }
    let no_token = app_with(&db, None);
    let resp = client()
        .post(no_token.url("/api/order-numbers"))
        .bearer_auth("")
        .send()
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        401,
        "with no token configured /api refuses everything"
    );
}

fn order_numbers_are_unique_and_fit_every_provider(db: TestDb) {
    let app = app(&db);
    let mut seen = HashSet::new();
    for _ in 0..50 {
        let (status, json) = status_and_json(
            authed(client().post(app.url("/api/order-numbers")))
                .send()
                .unwrap(),
        );
        assert_eq!(status, 201);
        let no = json["order_no"].as_str().unwrap().to_owned();
        assert_eq!(no.len(), 32);
        assert!(no.bytes().all(|b| b.is_ascii_alphanumeric()), "{no}");
        assert!(seen.insert(no), "an order number was issued twice");
    }
}

fn creating_an_order_is_idempotent_and_conflicts_name_the_field(db: TestDb) {
    let app = app(&db);
    let body = order_body("ORD-IDEM-1", "alice", "10.00");
    let (status, first) = status_and_json(create(&app, &body));
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["status"], "pending");
    assert_eq!(first["amount"], "10.00");
    assert_eq!(first["amount_minor"], 1000);
    assert_eq!(first["version"], 0);
    assert_eq!(first["currency"], "CNY");

    let (status, again) = status_and_json(create(&app, &body));
    assert_eq!(status, 200, "an identical repeat returns the order");
    assert_eq!(again, first);

    let (status, conflict) =
        status_and_json(create(&app, &order_body("ORD-IDEM-1", "alice", "11.00")));
    assert_eq!(status, 409);
    assert!(
        conflict["error"].as_str().unwrap().contains("amount"),
        "{conflict}"
    );

    let (status, conflict) =
        status_and_json(create(&app, &order_body("ORD-IDEM-1", "bob", "10.00")));
    assert_eq!(status, 409);
    assert!(
        conflict["error"].as_str().unwrap().contains("user_id"),
        "{conflict}"
    );

    // Twenty identical creates at once: one row, every answer the same order.
    let url = app.url("/api/orders");
    let barrier = Arc::new(Barrier::new(20));
    let body = order_body("ORD-RACE-1", "carol", "1.23");
    let handles: Vec<_> = (0..20)
        .map(|_| {
            let (url, barrier, body) = (url.clone(), barrier.clone(), body.clone());
            std::thread::spawn(move || {
                let req = Client::new().post(&url).bearer_auth(TOKEN).json(&body);
                barrier.wait();
                status_and_json(req.send().unwrap())
            })
        })
        .collect();
    let answers: Vec<(u16, Value)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        answers.iter().filter(|(s, _)| *s == 201).count(),
        1,
        "{answers:?}"
    );
    assert!(
        answers.iter().all(|(s, _)| *s == 200 || *s == 201),
        "{answers:?}"
    );
    assert!(
        answers.iter().all(|(_, o)| o == &answers[0].1),
        "every answer is the same order"
    );
    assert_eq!(
        count(
            &app.pool,
            "SELECT COUNT(*) AS n FROM orders WHERE order_no = 'ORD-RACE-1'"
        ),
        1
    );

    // Without an order number the server issues one.
    let (status, issued) = status_and_json(create(
        &app,
        &json!({"user_id": "dave", "amount": "5", "currency": "CNY", "channel": "gateway"}),
    ));
    assert_eq!(status, 201);
    assert_eq!(issued["order_no"].as_str().unwrap().len(), 32);
    assert_eq!(issued["amount"], "5.00");
}

fn invalid_or_malformed_orders_are_refused_naming_the_field(db: TestDb) {
    let app = app(&db);
    let cases = [
        (
            json!({"user_id": "a", "amount": "10.001", "currency": "CNY", "channel": "gateway"}),
            422,
            "amount",
        ),
        (
            json!({"user_id": "a", "amount": "-1", "currency": "CNY", "channel": "gateway"}),
            422,
            "amount",
        ),
        (
            json!({"user_id": "a", "amount": "0", "currency": "CNY", "channel": "gateway"}),
            422,
            "amount",
        ),
        (
            json!({"user_id": "a", "amount": 10.0, "currency": "CNY", "channel": "gateway"}),
            422,
            "string",
        ),
        (
            json!({"user_id": "a", "amount": "1", "currency": "USD", "channel": "gateway"}),
            422,
            "currency",
        ),
        (
            json!({"user_id": "a", "amount": "1", "currency": "XXX", "channel": "gateway"}),
            422,
            "currency",
        ),
        (
            json!({"user_id": "a", "amount": "1", "currency": "CNY", "channel": "nowhere"}),
            422,
            "channel",
        ),
        (
            json!({"user_id": "a b", "amount": "1", "currency": "CNY", "channel": "gateway"}),
            422,
            "user_id",
        ),
        (
            json!({"user_id": "a", "amount": "1", "currency": "CNY", "channel": "gateway", "order_no": "x/y"}),
            422,
            "order_no",
        ),
        (
            json!({"amount": "1", "currency": "CNY", "channel": "gateway"}),
            422,
            "user_id",
        ),
        (
            json!({"user_id": "a", "amount": "1", "currency": "CNY", "channel": "gateway", "extra": 1}),
            422,
            "extra",
        ),
    ];
    for (body, status, field) in cases {
        let (got, json) = status_and_json(create(&app, &body));
        assert_eq!(got, status, "{body}: {json}");
        assert!(
            json["error"].as_str().unwrap().contains(field),
            "{body}: {json}"
        );
    }
    for raw in ["{", "not json", "", "[1,2"] {
        let resp = authed(client().post(app.url("/api/orders")))
            .header("Content-Type", "application/json")
            .body(raw)
            .send()
            .unwrap();
        let (status, json) = status_and_json(resp);
        assert!(status == 400 || status == 422, "{raw:?}: {status}");
        assert!(json["error"].is_string());
    }
    assert_eq!(count(&app.pool, "SELECT COUNT(*) AS n FROM orders"), 0);
}

fn close_needs_the_current_version(db: TestDb) {
    let app = app(&db);
    let (_, order) = status_and_json(create(&app, &order_body("ORD-CLOSE-1", "erin", "3.00")));
    let get = authed(client().get(app.url("/api/orders/ORD-CLOSE-1")))
        .send()
        .unwrap();
    assert_eq!(get.status().as_u16(), 200);
    assert_eq!(get.headers()["etag"], "\"0\"");
    assert_eq!(get.json::<Value>().unwrap(), order);

    let close = |if_match: Option<&str>| {
        let mut req = authed(client().post(app.url("/api/orders/ORD-CLOSE-1/close")));
        if let Some(v) = if_match {
            req = req.header("If-Match", v);
        }
        req.send().unwrap()
    };
    assert_eq!(close(None).status().as_u16(), 428);
    assert_eq!(
        close(Some("\"7\"")).status().as_u16(),
        412,
        "a stale version changes nothing"
    );
    assert_eq!(close(Some("garbage")).status().as_u16(), 412);
    assert_eq!(
        close(Some("*")).status().as_u16(),
        412,
        "a version is needed"
    );
    assert_eq!(
        close(Some("\"0\", \"7\"")).status().as_u16(),
        412,
        "one version, not a list"
    );
    let ok = close(Some("\"0\""));
    assert_eq!(ok.status().as_u16(), 200);
    assert_eq!(ok.headers()["etag"], "\"1\"");
    let closed: Value = ok.json().unwrap();
    assert_eq!(closed["status"], "closed");
    assert_eq!(closed["version"], 1);
    // A retried close with the old version must not pass: the order is no longer pending.
    assert_eq!(close(Some("\"0\"")).status().as_u16(), 409);
    assert_eq!(close(Some("\"1\"")).status().as_u16(), 409);
    let missing = authed(client().post(app.url("/api/orders/NOPE/close")))
        .header("If-Match", "\"0\"")
        .send()
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    // A weak tag names the same version.
    create(&app, &order_body("ORD-CLOSE-2", "erin", "3.00"));
    let weak = authed(client().post(app.url("/api/orders/ORD-CLOSE-2/close")))
        .header("If-Match", "W/\"0\"")
        .send()
        .unwrap();
    assert_eq!(weak.status().as_u16(), 200);
    assert_eq!(weak.headers()["etag"], "\"1\"");
    assert_eq!(
        authed(client().get(app.url("/api/orders/NOPE")))
            .send()
            .unwrap()
            .status()
            .as_u16(),
        404
    );
}

/// A close and a paid notification for the same order, sent at the same instant: exactly one of
/// them wins, and the books balance either way.
fn close_racing_a_paid_notification_has_exactly_one_winner(db: TestDb) {
    let app = app(&db);
    let set = vectors("standard-webhooks.json");
    for case in set["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["signature"] == "valid")
    {
        let order_no = case["out_trade_no"].as_str().unwrap();
        let user = format!("racer-{order_no}");
        let (status, _) = status_and_json(create(&app, &order_body(order_no, &user, "12.34")));
        assert_eq!(status, 201);
        let barrier = Arc::new(Barrier::new(2));
        let close_url = app.url(&format!("/api/orders/{order_no}/close"));
        let b = barrier.clone();
        let closer = std::thread::spawn(move || {
            let req = Client::new()
                .post(&close_url)
                .bearer_auth(TOKEN)
                .header("If-Match", "\"0\"");
            b.wait();
            req.send().unwrap().status().as_u16()
        });
        let notify_url = app.url("/notify/gateway");
        let mut req = Client::new()
            .post(&notify_url)
            .header("Content-Type", "application/json");
        for (k, v) in case["headers"].as_object().unwrap() {
            req = req.header(k.as_str(), v.as_str().unwrap());
        }
        let req = req.body(case["body"].as_str().unwrap().to_owned());
        barrier.wait();
        let notify_status = req.send().unwrap().status().as_u16();
        let close_status = closer.join().unwrap();
        assert!(
            (200..300).contains(&notify_status),
            "the notification is acked either way"
        );
        let (_, order) = status_and_json(
            authed(client().get(app.url(&format!("/api/orders/{order_no}"))))
                .send()
                .unwrap(),
        );
        let credited = count(
            &app.pool,
            &format!("SELECT COUNT(*) AS n FROM ledger WHERE order_no = '{order_no}'"),
        );
        match order["status"].as_str().unwrap() {
            "paid" => {
                assert!(
                    close_status == 409 || close_status == 412,
                    "close lost: {close_status}"
                );
                assert_eq!(credited, 1);
            }
            "closed" => {
                assert_eq!(close_status, 200);
                assert_eq!(credited, 0, "a closed order is never credited");
                let outcome = count(
                    &app.pool,
                    &format!("SELECT COUNT(*) AS n FROM notifications WHERE order_no = '{order_no}' AND outcome = 'mismatch'"),
                );
                assert_eq!(outcome, 1, "the late payment is kept as an anomaly");
            }
            other => panic!("order ended {other}"),
        }
        let unbalanced = count(
            &app.pool,
            "SELECT COUNT(*) AS n FROM accounts a WHERE a.balance_minor <> \
             (SELECT CAST(COALESCE(SUM(l.amount_minor), 0) AS BIGINT) FROM ledger l \
              WHERE l.user_id = a.user_id AND l.currency = a.currency)",
        );
        assert_eq!(unbalanced, 0);
    }
}

fn accounts_show_balances_and_a_paged_ledger_and_the_inbox_shows_deliveries(db: TestDb) {
    let app = app(&db);
    let set = vectors("standard-webhooks.json");
    let valid: Vec<&Value> = set["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["signature"] == "valid")
        .collect();
    for case in &valid {
        let order_no = case["out_trade_no"].as_str().unwrap();
        create(&app, &order_body(order_no, "frank", "12.34"));
        for _ in 0..2 {
            let mut req = client()
                .post(app.url("/notify/gateway"))
                .header("Content-Type", "application/json");
            for (k, v) in case["headers"].as_object().unwrap() {
                req = req.header(k.as_str(), v.as_str().unwrap());
            }
            assert!(req
                .body(case["body"].as_str().unwrap().to_owned())
                .send()
                .unwrap()
                .status()
                .is_success());
        }
    }
    let (status, account) = status_and_json(
        authed(client().get(app.url("/api/accounts/frank")))
            .send()
            .unwrap(),
    );
    assert_eq!(status, 200);
    assert_eq!(account["user_id"], "frank");
    assert_eq!(
        account["balances"],
        json!([{"currency": "CNY", "amount": "24.68", "amount_minor": 2468}])
    );
    let ledger = account["ledger"].as_array().unwrap();
    assert_eq!(ledger.len(), 2);
    assert!(
        ledger[0]["id"].as_i64() > ledger[1]["id"].as_i64(),
        "newest first"
    );
    assert_eq!(ledger[0]["balance_after"], 2468);

    let (_, page1) = status_and_json(
        authed(client().get(app.url("/api/accounts/frank?limit=1")))
            .send()
            .unwrap(),
    );
    assert_eq!(page1["ledger"].as_array().unwrap().len(), 1);
    let before = page1["next_before"].as_i64().expect("a next page");
    let (_, page2) = status_and_json(
        authed(client().get(app.url(&format!("/api/accounts/frank?limit=1&before={before}"))))
            .send()
            .unwrap(),
    );
    assert_eq!(page2["ledger"].as_array().unwrap().len(), 1);
    assert_ne!(page2["ledger"][0]["id"], page1["ledger"][0]["id"]);
    assert!(page2["next_before"].is_null());
    assert_eq!(
        authed(client().get(app.url("/api/accounts/nobody")))
            .send()
            .unwrap()
            .status()
            .as_u16(),
        404
    );

    let order_no = valid[0]["out_trade_no"].as_str().unwrap();
    // The repeat's delivery count is written by the writer's next batch, after the answer.
    settled_count(
        &app.pool,
        &format!("SELECT delivery_count AS n FROM notifications WHERE order_no = '{order_no}'"),
        2,
    );
    let (status, list) = status_and_json(
        authed(client().get(app.url(&format!("/api/notifications?order_no={order_no}"))))
            .send()
            .unwrap(),
    );
    assert_eq!(status, 200);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["delivery_count"], 2);
    assert_eq!(list[0]["outcome"], "credited");
    assert_eq!(list[0]["verified"], true);
    assert!(list[0].get("raw").is_none(), "raw bodies only on request");
    let (_, raw) = status_and_json(
        authed(client().get(app.url(&format!("/api/notifications?order_no={order_no}&raw=1"))))
            .send()
            .unwrap(),
    );
    assert_eq!(raw[0]["raw"]["body"], valid[0]["body"]);
    assert!(raw[0]["raw"]["headers"]["webhook-signature"].is_string());
}

/// Applies a refund of `amount` (refund id `refund_id`) to `order_no`, paid by `trade`.
fn refund(app: &TestApp, order_no: &str, trade: &str, refund_id: &str, amount: i64) -> String {
    use payhook::domain::ids::{ChannelName, OrderNo};
    use payhook::domain::money::{AmountMinor, Currency};
    use payhook::domain::notification::{Notification, NotificationKind, Refund};
    let n = Notification {
        channel: ChannelName::parse("gateway").unwrap(),
        notification_id: format!("refund-{refund_id}"),
        order_no: Some(OrderNo::parse(order_no).unwrap()),
        provider_trade_no: Some(trade.to_owned()),
        amount: None,
        currency: Some(Currency::Cny),
        kind: NotificationKind::Refund(Refund::One {
            refund_id: refund_id.to_owned(),
            amount: AmountMinor::new(amount).unwrap(),
        }),
        merchant_mismatch: None,
    };
    let evidence = payhook::books::inbox::Evidence {
        headers_json: "{}",
        body: b"{}",
        source: payhook::books::inbox::Source::Notify,
    };
    let mut conn = app.pool.get().unwrap();
    payhook::crediting::apply_alone(&mut conn, &n, evidence, crate::common::now())
        .unwrap()
        .outcome
        .as_str()
        .to_owned()
}

fn money_going_back_shows_in_the_order_the_ledger_and_the_inbox(db: TestDb) {
    let app = app(&db);
    let (status, _) = status_and_json(create(&app, &order_body("BACK-1", "gina", "10.00")));
    assert_eq!(status, 201);
    let paid = pay_order(
        &mut app.pool.get().unwrap(),
        "gateway",
        "BACK-1",
        "tx-1",
        1000,
        "CNY",
    );
    assert_eq!(paid, "credited");
    assert_eq!(refund(&app, "BACK-1", "tx-1", "rf-1", 250), "refunded");

    let (status, order) = status_and_json(
        authed(client().get(app.url("/api/orders/BACK-1")))
            .send()
            .unwrap(),
    );
    assert_eq!(status, 200);
    assert_eq!(order["status"], "paid");
    assert_eq!(
        (&order["refunded"], &order["refunded_minor"]),
        (&json!("2.50"), &json!(250))
    );

    // All of it goes back, and more than the balance holds once the user has spent some.
    exec(
        &app.pool,
        "INSERT INTO ledger (user_id, currency, order_no, kind, amount_minor, balance_after, \
             created_at, entry_key, debit_no) \
         VALUES ('gina', 'CNY', NULL, 'debit', -700, 50, CURRENT_TIMESTAMP, 'spend-1', 'spend-1'); \
         UPDATE accounts SET balance_minor = balance_minor - 700 WHERE user_id = 'gina'",
    );
    assert_eq!(refund(&app, "BACK-1", "tx-1", "rf-2", 750), "refunded");
    let (_, order) = status_and_json(
        authed(client().get(app.url("/api/orders/BACK-1")))
            .send()
            .unwrap(),
    );
    assert_eq!(order["status"], "refunded");
    assert_eq!(order["refunded_minor"], 1000);

    let (_, account) = status_and_json(
        authed(client().get(app.url("/api/accounts/gina")))
            .send()
            .unwrap(),
    );
    assert_eq!(
        account["balances"],
        json!([{"currency": "CNY", "amount": "-7.00", "amount_minor": -700}])
    );
    let ledger = account["ledger"].as_array().unwrap();
    let shown: Vec<(&str, &str, i64, &Value, &Value)> = ledger
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap(),
                e["amount"].as_str().unwrap(),
                e["amount_minor"].as_i64().unwrap(),
                &e["order_no"],
                &e["debit_no"],
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            ("refund", "7.50", -750, &json!("BACK-1"), &Value::Null),
            ("debit", "7.00", -700, &Value::Null, &json!("spend-1")),
            ("refund", "2.50", -250, &json!("BACK-1"), &Value::Null),
            ("credit", "10.00", 1000, &json!("BACK-1"), &Value::Null),
        ]
    );
    assert_eq!(ledger[0]["balance_after"], -700);

    let (_, list) = status_and_json(
        authed(client().get(app.url("/api/notifications?order_no=BACK-1")))
            .send()
            .unwrap(),
    );
    let debt = list
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["notification_id"] == "refund-rf-2")
        .expect("the second refund is in the inbox");
    assert_eq!(debt["outcome"], "refunded");
    assert_eq!(debt["anomaly"], true);
    assert!(debt["detail"].as_str().unwrap().contains("owes"), "{debt}");
    let first = list
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["notification_id"] == "refund-rf-1")
        .unwrap();
    assert_eq!(
        (&first["anomaly"], &first["kind"]),
        (&json!(false), &json!("refund"))
    );
}

on_every_backend!(
    money_going_back_shows_in_the_order_the_ledger_and_the_inbox,
    every_api_route_refuses_a_missing_or_wrong_token,
    order_numbers_are_unique_and_fit_every_provider,
    creating_an_order_is_idempotent_and_conflicts_name_the_field,
    invalid_or_malformed_orders_are_refused_naming_the_field,
    close_needs_the_current_version,
    close_racing_a_paid_notification_has_exactly_one_winner,
    accounts_show_balances_and_a_paged_ledger_and_the_inbox_shows_deliveries,
);
