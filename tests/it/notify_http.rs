//! Every test vector (`tests/vectors`) through the real HTTP server, on SQLite and PostgreSQL: the
//! answer in the provider's protocol, the balance afterwards, and the inbox. Then duplicates and bad
//! input.

use std::sync::{Arc, Barrier};

use crate::common::{count, create_order, pay_order, settled_count, spawn_app, TestApp, TestDb};
use chrono::{DateTime, Utc};
use payhook::domain::money::{AmountMinor, Currency};
use serde_json::Value;

/// The instant every generated vector was signed at.
const VECTOR_TIME: i64 = 1_795_375_716;

fn vector_time() -> DateTime<Utc> {
    DateTime::from_timestamp(VECTOR_TIME, 0).unwrap()
}

fn vectors(file: &str) -> Value {
    let path = format!("{}/tests/vectors/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn s(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing"))
        .to_owned()
}

/// One channel per vector file, configured from the file's own keys.
fn channels_toml() -> String {
    let alipay = vectors("alipay.json");
    let real = vectors("alipay-real.json");
    let wechat = vectors("wechatpay.json");
    let stripe = vectors("stripe.json");
    let webhooks = vectors("standard-webhooks.json");
    format!(
        r#"
[channels.alipay]
provider = "alipay"
app_id = {app_id:?}
seller_id = {seller_id:?}
alipay_public_key = {alipay_key:?}

[channels.alipay_legacy]
provider = "alipay"
sign_type = "RSA"
app_id = {app_id:?}
seller_id = {seller_id:?}
alipay_public_key = {alipay_key:?}

[channels.alipay_real]
provider = "alipay"
app_id = {real_app:?}
seller_id = {real_seller:?}
alipay_public_key = {real_key:?}

[channels.wxpay]
provider = "wechatpay"
mchid = {mchid:?}
appid = {appid:?}
apiv3_key = {apiv3:?}
[channels.wxpay.public_keys]
{serial:?} = {pem:?}

[channels.stripe]
provider = "stripe"
currency = "USD"
secrets = ["whsec_retired_secret_for_rotation", {stripe_secret:?}]

[channels.gateway]
provider = "standard-webhooks"
secrets = [{webhooks_secret:?}]
"#,
        app_id = s(&alipay, "app_id"),
        seller_id = s(&alipay, "seller_id"),
        alipay_key = s(&alipay, "alipay_public_key"),
        real_app = s(&real, "app_id"),
        real_seller = s(&real, "seller_id"),
        real_key = s(&real, "alipay_public_key"),
        mchid = s(&wechat, "mchid"),
        appid = s(&wechat, "appid"),
        apiv3 = s(&wechat, "apiv3_key"),
        serial = s(&wechat, "public_key_id"),
        pem = s(&wechat, "public_key_pem"),
        stripe_secret = s(&stripe, "secret"),
        webhooks_secret = s(&webhooks, "secret"),
    )
}

fn app(db: &TestDb) -> TestApp {
    spawn_app(db, &channels_toml(), vector_time())
}

struct Reply {
    status: u16,
    body: String,
}

fn post(app: &TestApp, channel: &str, headers: &[(String, String)], body: &[u8]) -> Reply {
    let client = reqwest::blocking::Client::new();
    let mut req = client.post(app.url(&format!("/notify/{channel}")));
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let resp = req.body(body.to_vec()).send().expect("request");
    Reply {
        status: resp.status().as_u16(),
        body: resp.text().unwrap_or_default(),
    }
}

fn headers_of(case: &Value, content_type: &str) -> Vec<(String, String)> {
    let mut headers = vec![("Content-Type".to_owned(), content_type.to_owned())];
    if let Some(map) = case["headers"].as_object() {
        for (k, v) in map {
            headers.push((k.clone(), v.as_str().unwrap().to_owned()));
        }
    }
    headers
}

/// An ack in the provider's own terms: Alipay needs the exact body `success`.
fn is_ack(provider: &str, reply: &Reply) -> bool {
    (200..300).contains(&reply.status) && (provider != "alipay" || reply.body == "success")
}

fn balance(app: &TestApp, user: &str) -> i64 {
    count(
        &app.pool,
        &format!(
            "SELECT CAST(COALESCE(SUM(balance_minor), 0) AS BIGINT) AS n FROM accounts WHERE user_id = '{user}'"
        ),
    )
}

fn order_status(app: &TestApp, order_no: &str) -> String {
    let mut conn = app.pool.get().unwrap();
    payhook::books::orders::find(
        &mut conn,
        &payhook::domain::ids::OrderNo::parse(order_no).unwrap(),
    )
    .unwrap()
    .unwrap()
    .status
    .as_str()
    .to_owned()
}

/// Cases that are authentic but must not credit.
const NEVER_CREDIT: [&str; 2] = ["closed", "partial-refund"];

/// Cases that refund a payment: their orders are paid first, by the trade they name, and each
/// takes this much back.
const REFUNDS: [(&str, i64); 1] = [("partial-refund", 300)];

fn every_vector_gets_the_right_answer_and_balance(db: TestDb) {
    let app = app(&db);
    let files = [
        ("alipay.json", "alipay", "alipay", Currency::Cny),
        ("wechatpay.json", "wxpay", "wechatpay", Currency::Cny),
        ("stripe.json", "stripe", "stripe", Currency::Usd),
        (
            "standard-webhooks.json",
            "gateway",
            "standard-webhooks",
            Currency::Cny,
        ),
    ];
    let mut checked = 0;
    for (file, channel, provider, currency) in files {
        let set = vectors(file);
        let content_type = s(&set, "content_type");
        for case in set["cases"].as_array().unwrap() {
            // A legacy (SHA-1) notification verifies only on a channel set up for it.
            let channel = match s(case, "body").ends_with("&sign_type=RSA") {
                true => "alipay_legacy",
                false => channel,
            };
            let name = s(case, "name");
            let order_no = s(case, "out_trade_no");
            let minor = case["amount_minor"].as_i64().unwrap();
            let user = format!("u-{order_no}");
            let amount = AmountMinor::new(minor).unwrap().format(currency);
            create_order(
                &mut app.pool.get().unwrap(),
                &user,
                channel,
                &amount,
                currency.code(),
                Some(&order_no),
            );
            let refund = REFUNDS.iter().find(|(n, _)| *n == name).map(|(_, r)| *r);
            if refund.is_some() {
                // The Alipay trade it refunds; the value is plain digits.
                let body = s(case, "body");
                let trade = body
                    .split('&')
                    .find_map(|pair| pair.strip_prefix("trade_no="))
                    .expect("the refund names its trade")
                    .to_owned();
                let paid = pay_order(
                    &mut app.pool.get().unwrap(),
                    channel,
                    &order_no,
                    &trade,
                    minor,
                    currency.code(),
                );
                assert_eq!(paid, "credited");
            }
            let reply = post(
                &app,
                channel,
                &headers_of(case, &content_type),
                s(case, "body").as_bytes(),
            );
            let valid = s(case, "signature") == "valid";
            let label = format!(
                "{file} {name}: status {} body {:?}",
                reply.status, reply.body
            );
            assert_eq!(is_ack(provider, &reply), valid, "{label}");
            if !valid {
                assert!(
                    !(200..300).contains(&reply.status) || provider == "alipay",
                    "{label}"
                );
                if provider == "alipay" {
                    assert_eq!(
                        (reply.status, reply.body.as_str()),
                        (400, "fail"),
                        "{label}"
                    );
                }
                if provider == "wechatpay" {
                    assert_eq!(reply.status, 401, "{label}");
                    let json: Value =
                        serde_json::from_str(&reply.body).expect("WeChat failure is JSON");
                    assert_eq!(json["code"], "FAIL", "{label}");
                }
            }
            let credits = valid && !NEVER_CREDIT.contains(&name.as_str());
            let expected_balance = match (credits, refund) {
                (true, _) => minor,
                (false, Some(refunded)) => minor - refunded,
                (false, None) => 0,
            };
            assert_eq!(balance(&app, &user), expected_balance, "{label}");
            let expected_status = match (credits, name.as_str()) {
                (true, _) => "paid",
                (false, _) if refund.is_some() => "paid",
                (false, "closed") => "closed",
                _ => "pending",
            };
            assert_eq!(order_status(&app, &order_no), expected_status, "{label}");
            checked += 1;
        }
    }
    assert_eq!(checked, 21, "every vector case was sent");

    // Rejected requests are in the inbox with their reason, never verified.
    let rejected = count(
        &app.pool,
        "SELECT COUNT(*) AS n FROM notifications WHERE verified = false AND outcome = 'rejected' AND verify_error IS NOT NULL",
    );
    assert_eq!(rejected, 9, "every invalid case is recorded as rejected");
    let ledger = count(&app.pool, "SELECT COUNT(*) AS n FROM ledger");
    // A refund case's order is paid first: its credit and its refund.
    let expected = 9 + 2 * REFUNDS.len() as i64;
    assert_eq!(ledger, expected, "one ledger row per credit and per refund");
}

fn the_real_alipay_notification_verifies_and_credits(db: TestDb) {
    let app = app(&db);
    let real = vectors("alipay-real.json");
    let order_no = s(&real, "out_trade_no");
    create_order(
        &mut app.pool.get().unwrap(),
        "real-user",
        "alipay_real",
        "0.10",
        "CNY",
        Some(&order_no),
    );
    let form = [(
        "Content-Type".to_owned(),
        "application/x-www-form-urlencoded".to_owned(),
    )];
    let reply = post(&app, "alipay_real", &form, s(&real, "body").as_bytes());
    assert_eq!((reply.status, reply.body.as_str()), (200, "success"));
    assert_eq!(balance(&app, "real-user"), 10);

    // sign_type is not part of the signed string: adding it changes nothing.
    let with_type = format!("{}&sign_type=RSA2", s(&real, "body"));
    let reply = post(&app, "alipay_real", &form, with_type.as_bytes());
    assert_eq!((reply.status, reply.body.as_str()), (200, "success"));
    assert_eq!(
        balance(&app, "real-user"),
        10,
        "the second delivery is a duplicate"
    );
    let deliveries = settled_count(
        &app.pool,
        "SELECT delivery_count AS n FROM notifications WHERE notification_id = '2019081500222155624068450559358070'",
        2,
    );
    assert_eq!(deliveries, 2);
}

/// Sends the same request from `n` threads at once.
fn storm(
    app: &TestApp,
    n: usize,
    channel: &str,
    headers: Vec<(String, String)>,
    body: String,
) -> Vec<Reply> {
    let url = app.url(&format!("/notify/{channel}"));
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (url, headers, body, barrier) =
                (url.clone(), headers.clone(), body.clone(), barrier.clone());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::new();
                let mut req = client.post(&url);
                for (k, v) in &headers {
                    req = req.header(k.as_str(), v.as_str());
                }
                barrier.wait();
                let resp = req.body(body).send().expect("request");
                Reply {
                    status: resp.status().as_u16(),
                    body: resp.text().unwrap_or_default(),
                }
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn twenty_concurrent_duplicates_credit_once_and_all_get_acks(db: TestDb) {
    let app = app(&db);
    for (file, channel, provider) in [
        ("alipay.json", "alipay", "alipay"),
        ("wechatpay.json", "wxpay", "wechatpay"),
    ] {
        let set = vectors(file);
        let case = &set["cases"][0];
        let order_no = s(case, "out_trade_no");
        let user = format!("dup-{order_no}");
        let minor = case["amount_minor"].as_i64().unwrap();
        create_order(
            &mut app.pool.get().unwrap(),
            &user,
            channel,
            &AmountMinor::new(minor).unwrap().format(Currency::Cny),
            "CNY",
            Some(&order_no),
        );
        let replies = storm(
            &app,
            20,
            channel,
            headers_of(case, &s(&set, "content_type")),
            s(case, "body"),
        );
        let acks = replies.iter().filter(|r| is_ack(provider, r)).count();
        assert_eq!(acks, 20, "{file}: every duplicate is acked");
        assert_eq!(balance(&app, &user), minor, "{file}: credited once");
        let deliveries = settled_count(
            &app.pool,
            &format!("SELECT delivery_count AS n FROM notifications WHERE order_no = '{order_no}'"),
            20,
        );
        assert_eq!(
            deliveries, 20,
            "{file}: one inbox row counts every delivery"
        );
    }
}

fn bad_input_gets_a_clear_refusal_and_never_credits(db: TestDb) {
    let app = app(&db);
    let alipay = vectors("alipay.json");
    let wechat = vectors("wechatpay.json");
    let stripe = vectors("stripe.json");
    let paid_alipay = &alipay["cases"][0];
    let paid_wechat = &wechat["cases"][0];
    let paid_stripe = &stripe["cases"][0];
    for (channel, case, currency) in [
        ("alipay", paid_alipay, "CNY"),
        ("wxpay", paid_wechat, "CNY"),
        ("stripe", paid_stripe, "USD"),
    ] {
        let minor = case["amount_minor"].as_i64().unwrap();
        let cur = Currency::parse(currency).unwrap();
        create_order(
            &mut app.pool.get().unwrap(),
            "victim",
            channel,
            &AmountMinor::new(minor).unwrap().format(cur),
            currency,
            Some(&s(case, "out_trade_no")),
        );
    }
    let json = ("Content-Type".to_owned(), "application/json".to_owned());
    let form = (
        "Content-Type".to_owned(),
        "application/x-www-form-urlencoded".to_owned(),
    );
    let wechat_headers = headers_of(paid_wechat, "application/json");
    let wechat_body = s(paid_wechat, "body");
    let alipay_body = s(paid_alipay, "body");
    let without_sign: String = alipay_body
        .split('&')
        .filter(|kv| !kv.starts_with("sign="))
        .collect::<Vec<_>>()
        .join("&");
    let mut bad_base64 = headers_of(paid_stripe, "application/json");
    bad_base64[1].1 = "t=1795375716,v1=zz-not-hex".into();
    let mut wechat_bad_sig = wechat_headers.clone();
    for (k, v) in wechat_bad_sig.iter_mut() {
        if k == "Wechatpay-Signature" {
            *v = "%%%not base64%%%".into();
        }
    }
    let mut non_utf8 = alipay_body.clone().into_bytes();
    non_utf8.extend_from_slice(b"&subject=\xff\xfe");

    type Case<'a> = (&'a str, &'a str, Vec<(String, String)>, Vec<u8>);
    let cases: Vec<Case> = vec![
        ("empty alipay body", "alipay", vec![form.clone()], vec![]),
        ("empty wechat body", "wxpay", wechat_headers.clone(), vec![]),
        (
            "truncated wechat JSON",
            "wxpay",
            wechat_headers.clone(),
            wechat_body.as_bytes()[..wechat_body.len() / 2].to_vec(),
        ),
        (
            "alipay form without sign",
            "alipay",
            vec![form.clone()],
            without_sign.into_bytes(),
        ),
        (
            "alipay body sent as JSON",
            "alipay",
            vec![json.clone()],
            b"{\"out_trade_no\":\"A20261122000001\"}".to_vec(),
        ),
        (
            "non-UTF-8 alipay body",
            "alipay",
            vec![form.clone()],
            non_utf8,
        ),
        (
            "stripe header with a bad signature encoding",
            "stripe",
            bad_base64,
            s(paid_stripe, "body").into_bytes(),
        ),
        (
            "wechat header with bad base64",
            "wxpay",
            wechat_bad_sig,
            wechat_body.clone().into_bytes(),
        ),
        (
            "stripe without its header",
            "stripe",
            vec![json.clone()],
            s(paid_stripe, "body").into_bytes(),
        ),
    ];
    for (what, channel, headers, body) in cases {
        let reply = post(&app, channel, &headers, &body);
        let provider = if channel == "alipay" {
            "alipay"
        } else {
            "other"
        };
        assert!(
            !is_ack(provider, &reply),
            "{what}: answered {} {:?}",
            reply.status,
            reply.body
        );
        assert!(
            (400..500).contains(&reply.status),
            "{what}: a refusal, not a crash: {}",
            reply.status
        );
        assert_eq!(balance(&app, "victim"), 0, "{what} credited");
    }

    // A stale timestamp: the same valid WeChat request, one second past the tolerance.
    let late = spawn_app(
        &db,
        &channels_toml(),
        vector_time() + chrono::Duration::seconds(301),
    );
    let reply = post(&late, "wxpay", &wechat_headers, wechat_body.as_bytes());
    assert_eq!(reply.status, 401, "stale timestamp: {}", reply.body);
    assert_eq!(balance(&app, "victim"), 0);

    // A 10 MB body never reaches the adapter.
    let huge = vec![b'a'; 10 * 1024 * 1024];
    let client = reqwest::blocking::Client::new();
    let status = client
        .post(app.url("/notify/alipay"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(huge)
        .send()
        .map(|r| r.status().as_u16());
    // The server may answer 413 before the whole body is sent, or reset the connection.
    assert!(matches!(status, Ok(413) | Err(_)), "10 MB body: {status:?}");

    // Unknown channel and wrong method.
    assert_eq!(
        post(&app, "nope", std::slice::from_ref(&form), b"a=1").status,
        404
    );
    assert_eq!(
        post(&app, "bad name!", std::slice::from_ref(&form), b"a=1").status,
        404
    );
    let get = client.get(app.url("/notify/alipay")).send().unwrap();
    assert_eq!(get.status().as_u16(), 405);

    // And the genuine notification still credits after all that.
    let reply = post(&app, "alipay", &[form], alipay_body.as_bytes());
    assert!(is_ack("alipay", &reply));
    assert_eq!(balance(&app, "victim"), 10000);
}

fn a_notification_before_its_order_is_retried_then_credited(db: TestDb) {
    let app = app(&db);
    let set = vectors("standard-webhooks.json");
    let case = &set["cases"][0];
    let headers = headers_of(case, "application/json");
    let body = s(case, "body");
    let first = post(&app, "gateway", &headers, body.as_bytes());
    assert!(
        !(200..300).contains(&first.status),
        "unknown order must be retried: {}",
        first.status
    );
    assert!(
        first.status >= 500,
        "a retry for a transient state is a 5xx: {}",
        first.status
    );
    create_order(
        &mut app.pool.get().unwrap(),
        "late",
        "gateway",
        "12.34",
        "CNY",
        Some(&s(case, "out_trade_no")),
    );
    let second = post(&app, "gateway", &headers, body.as_bytes());
    assert!((200..300).contains(&second.status));
    assert_eq!(balance(&app, "late"), 1234);
}

/// A Standard Webhooks delivery of `event` for `data`, signed with the vectors' secret.
fn webhook(id: &str, event: &str, data: Value) -> (Vec<(String, String)>, Vec<u8>) {
    let secret = s(&vectors("standard-webhooks.json"), "secret");
    let body = serde_json::json!({ "type": event, "data": data }).to_string();
    let signature = payhook::notify::standard_webhooks::sign::signature(
        &secret,
        id,
        VECTOR_TIME,
        body.as_bytes(),
    )
    .unwrap();
    let headers = vec![
        ("content-type".to_owned(), "application/json".to_owned()),
        ("webhook-id".to_owned(), id.to_owned()),
        ("webhook-timestamp".to_owned(), VECTOR_TIME.to_string()),
        ("webhook-signature".to_owned(), signature),
    ];
    (headers, body.into_bytes())
}

fn a_payment_that_names_no_trade_is_retried_and_never_credits(db: TestDb) {
    let app = app(&db);
    create_order(
        &mut app.pool.get().unwrap(),
        "tradeless",
        "gateway",
        "5.00",
        "CNY",
        Some("G-TRADELESS-1"),
    );
    let data = serde_json::json!({ "order_no": "G-TRADELESS-1", "amount": 500, "currency": "CNY" });
    for id in ["msg_tradeless_1", "msg_tradeless_2"] {
        let (headers, body) = webhook(id, "payment.succeeded", data.clone());
        let reply = post(&app, "gateway", &headers, &body);
        assert!(reply.status >= 400, "{id}: status {}", reply.status);
    }
    assert_eq!(balance(&app, "tradeless"), 0);
    assert_eq!(order_status(&app, "G-TRADELESS-1"), "pending");
    let rejected = count(
        &app.pool,
        "SELECT CAST(COALESCE(SUM(delivery_count), 0) AS BIGINT) AS n FROM notifications \
         WHERE outcome = 'rejected' AND verify_error LIKE '%names no provider trade%'",
    );
    assert_eq!(
        rejected, 2,
        "both deliveries are kept as rejected, with the reason"
    );

    // Named, the same payment credits once; another trade for the paid order is an anomaly.
    let mut named = data.clone();
    named["transaction_id"] = "tx_first".into();
    let (headers, body) = webhook("msg_tradeless_3", "payment.succeeded", named.clone());
    assert!((200..300).contains(&post(&app, "gateway", &headers, &body).status));
    named["transaction_id"] = "tx_second".into();
    let (headers, body) = webhook("msg_tradeless_4", "payment.succeeded", named);
    assert!((200..300).contains(&post(&app, "gateway", &headers, &body).status));
    assert_eq!(balance(&app, "tradeless"), 500);
    let other = count(
        &app.pool,
        "SELECT COUNT(*) AS n FROM notifications WHERE notification_id = 'msg_tradeless_4' \
         AND outcome = 'paid_by_other_trade'",
    );
    assert_eq!(other, 1);
}

fn a_connected_accounts_stripe_event_is_acked_as_an_anomaly_and_never_credits(db: TestDb) {
    let app = app(&db);
    let stripe = vectors("stripe.json");
    create_order(
        &mut app.pool.get().unwrap(),
        "platform-user",
        "stripe",
        "10.00",
        "USD",
        Some("S-CONNECT-1"),
    );
    let event = serde_json::json!({
        "id": "evt_connect_1", "object": "event", "type": "checkout.session.completed",
        "account": "acct_1Connected",
        "data": { "object": {
            "id": "cs_connect_1", "object": "checkout.session", "payment_status": "paid",
            "client_reference_id": "S-CONNECT-1", "amount_total": 1000, "currency": "usd",
            "payment_intent": "pi_connect_1"
        } }
    })
    .to_string();
    let signature = payhook::notify::stripe::sign::signature(
        &s(&stripe, "secret"),
        VECTOR_TIME,
        event.as_bytes(),
    );
    let headers = vec![
        ("content-type".to_owned(), "application/json".to_owned()),
        ("stripe-signature".to_owned(), signature),
    ];
    let reply = post(&app, "stripe", &headers, event.as_bytes());
    assert!(is_ack("stripe", &reply), "status {}", reply.status);
    assert_eq!(balance(&app, "platform-user"), 0);
    assert_eq!(order_status(&app, "S-CONNECT-1"), "pending");
    let kept = count(
        &app.pool,
        "SELECT COUNT(*) AS n FROM notifications WHERE notification_id = 'evt_connect_1' \
         AND outcome = 'mismatch' AND detail LIKE '%acct_1Connected%'",
    );
    assert_eq!(kept, 1, "kept for a human, naming the account");
}

/// Alipay resends on any body but `success`, so the status tells its operators apart: 400 for a
/// request that is not a genuine notification, 500 only when payhook itself failed.
fn alipay_answers_400_to_what_it_cannot_verify_and_500_when_payhook_fails(db: TestDb) {
    let app = spawn_app(
        &db,
        &format!(
            "[pool]\nmax_size = 1\nconnection_timeout_secs = 1\n{}",
            channels_toml()
        ),
        vector_time(),
    );
    let set = vectors("alipay.json");
    let form = [(
        "Content-Type".to_owned(),
        "application/x-www-form-urlencoded".to_owned(),
    )];
    let tampered = set["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "tampered-amount")
        .unwrap();
    for (what, body) in [
        ("garbage", b"garbage".to_vec()),
        ("not UTF-8", b"subject=\xff&notify_id=1".to_vec()),
        ("a tampered notification", s(tampered, "body").into_bytes()),
    ] {
        let reply = post(&app, "alipay", &form, &body);
        assert_eq!((reply.status, reply.body.as_str()), (400, "fail"), "{what}");
    }

    // With the only connection taken, the genuine notification cannot be recorded.
    let paid = &set["cases"][0];
    create_order(
        &mut app.pool.get().unwrap(),
        "down",
        "alipay",
        "100.00",
        "CNY",
        Some(&s(paid, "out_trade_no")),
    );
    let held = app.pool.get().unwrap();
    let reply = post(&app, "alipay", &form, s(paid, "body").as_bytes());
    assert_eq!((reply.status, reply.body.as_str()), (500, "fail"));
    drop(held);
    let reply = post(&app, "alipay", &form, s(paid, "body").as_bytes());
    assert_eq!((reply.status, reply.body.as_str()), (200, "success"));
}

/// A rejected request as stored.
#[derive(diesel::QueryableByName)]
struct Rejected {
    #[diesel(sql_type = diesel::sql_types::Text)]
    notification_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    raw_headers: String,
    #[diesel(sql_type = diesel::sql_types::Binary)]
    raw_body: Vec<u8>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    delivery_count: i64,
}

fn rejected_rows(app: &TestApp) -> Vec<Rejected> {
    use diesel::RunQueryDsl;
    diesel::sql_query(
        "SELECT notification_id, raw_headers, raw_body, delivery_count FROM notifications \
         WHERE outcome = 'rejected' ORDER BY id",
    )
    .load(&mut *app.pool.get().unwrap())
    .unwrap()
}

/// Anyone can send a rejected request, so each keeps only its digest, cut headers and the start
/// of its body; the digest is still of the whole body.
fn a_rejected_request_keeps_its_digest_cut_headers_and_the_first_4_kib(db: TestDb) {
    let app = app(&db);
    let big = "x\"".repeat(1000);
    let mut headers = vec![("Content-Type".to_owned(), "application/json".to_owned())];
    for name in [
        "Wechatpay-Timestamp",
        "Wechatpay-Nonce",
        "Wechatpay-Signature",
        "Wechatpay-Serial",
        "Wechatpay-Signature-Type",
    ] {
        headers.push((name.to_owned(), big.clone()));
    }
    let body: Vec<u8> = (0..60 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let reply = post(&app, "wxpay", &headers, &body);
    assert_eq!(reply.status, 401, "{}", reply.body);

    let rows = rejected_rows(&app);
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &body);
    assert_eq!(
        row.notification_id,
        format!("unverified:{}", hex::encode(digest.as_ref()))
    );
    assert_eq!(row.raw_body.len(), 4096);
    assert!(body.starts_with(&row.raw_body));
    assert!(row.raw_headers.len() <= 4096, "{}", row.raw_headers.len());
    let kept: serde_json::Map<String, Value> = serde_json::from_str(&row.raw_headers).unwrap();
    assert_eq!(kept["content-type"], "application/json");
    assert!(kept.len() > 1, "{kept:?}");
    for (name, value) in &kept {
        let value = value.as_str().unwrap();
        assert!(value.len() <= 1024, "{name}: {} bytes", value.len());
        let sent = &headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .unwrap()
            .1;
        assert!(sent.starts_with(value), "{name}");
    }

    // The same body again counts on its row; one that differs after 4 KiB has a row of its own.
    post(&app, "wxpay", &headers, &body);
    let mut longer = body.clone();
    longer.push(b'!');
    post(&app, "wxpay", &headers, &longer);
    let rows = rejected_rows(&app);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].delivery_count, 2);
    assert!(rows[1].raw_body == rows[0].raw_body);
}

on_every_backend!(
    a_payment_that_names_no_trade_is_retried_and_never_credits,
    a_connected_accounts_stripe_event_is_acked_as_an_anomaly_and_never_credits,
    a_rejected_request_keeps_its_digest_cut_headers_and_the_first_4_kib,
    alipay_answers_400_to_what_it_cannot_verify_and_500_when_payhook_fails,
    every_vector_gets_the_right_answer_and_balance,
    the_real_alipay_notification_verifies_and_credits,
    twenty_concurrent_duplicates_credit_once_and_all_get_acks,
    bad_input_gets_a_clear_refusal_and_never_credits,
    a_notification_before_its_order_is_retried_then_credited,
);
