//! Explaining and applying again stored notifications, on every backend: requests are stored by
//! the real server (rejected under a wrong key, or mangled on the way by a known trap), then
//! explained and applied again through the library and the `payhook` binary.

use std::path::Path;

use chrono::{DateTime, Duration, NaiveDateTime, Utc};
use diesel::prelude::*;
use payhook::books::inbox::InboxEntry;
use payhook::config::Settings;
use payhook::db::schema::notifications;
use payhook::db::Pool;
use payhook::domain::ids::{ChannelName, OrderNo};
use payhook::domain::money::{AmountMinor, Currency};
use payhook::inspect::{self, Application, Channels, Explanation, Reapplied, Trap, TrapKind};
use payhook::notify::alipay::sign::rsa2;
use payhook::notify::sign::{Payment, RsaSigner, Signed};
use payhook::notify::signer::Signer;
use serde_json::Value;

use crate::common::{count, create_order, race, spawn_app, TestApp, TestDb};

/// When the server receives everything: the instant the test vectors were signed at.
const ARRIVED: i64 = 1_795_375_716;

fn arrived() -> DateTime<Utc> {
    DateTime::from_timestamp(ARRIVED, 0).unwrap()
}

/// When the operator applies it again: long after any provider's timestamp tolerance.
fn two_days_later() -> NaiveDateTime {
    (arrived() + Duration::days(2)).naive_utc()
}

fn vector_file(file: &str) -> String {
    let path = format!("{}/tests/vectors/{file}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn vectors(file: &str) -> Value {
    serde_json::from_str(&vector_file(file)).unwrap()
}

fn s(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key}"))
        .to_owned()
}

/// The keys a test configures its channels with.
struct Keys {
    alipay_public_key: String,
    app_private_key: Option<String>,
    /// `Wechatpay-Serial` -> PEM.
    wechat: Vec<(String, String)>,
    stripe: Vec<String>,
    webhooks: Vec<String>,
}

/// The keys the test vectors are signed with: notifications signed below verify under these.
fn right_keys() -> Keys {
    let wechat = vectors("wechatpay.json");
    Keys {
        alipay_public_key: s(&vectors("alipay.json"), "alipay_public_key"),
        app_private_key: None,
        wechat: vec![(s(&wechat, "public_key_id"), s(&wechat, "public_key_pem"))],
        stripe: vec![
            "whsec_retired_secret_for_rotation".to_owned(),
            s(&vectors("stripe.json"), "secret"),
        ],
        webhooks: vec![s(&vectors("standard-webhooks.json"), "secret")],
    }
}

/// Well-formed keys of the wrong parties: every notification signed below fails under them.
fn wrong_keys() -> Keys {
    let recovery = vectors("recovery.json");
    Keys {
        // The public key of a real Alipay notification: Alipay's, but not for these vectors.
        alipay_public_key: s(&vectors("alipay-real.json"), "alipay_public_key"),
        app_private_key: None,
        wechat: vec![(
            s(&vectors("wechatpay.json"), "public_key_id"),
            s(&recovery, "wechatpay_merchant_public_key_pem"),
        )],
        stripe: vec!["whsec_retired_secret_for_rotation".to_owned()],
        webhooks: vec!["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned()],
    }
}

/// One channel per provider (`alipay`, `wxpay`, `stripe`, `gateway`), keyed with `keys`.
fn channels_toml(keys: &Keys) -> String {
    let wechat = vectors("wechatpay.json");
    let serials: String = keys
        .wechat
        .iter()
        .map(|(serial, pem)| format!("{serial:?} = {pem:?}\n"))
        .collect();
    let app_key = keys
        .app_private_key
        .as_ref()
        .map(|pem| format!("app_private_key = {pem:?}\n"))
        .unwrap_or_default();
    format!(
        r#"
[recovery]
enabled = false

[channels.alipay]
provider = "alipay"
app_id = "2021000000000001"
seller_id = "2088000000000001"
alipay_public_key = {alipay:?}
{app_key}
[channels.wxpay]
provider = "wechatpay"
mchid = {mchid:?}
appid = {appid:?}
apiv3_key = {apiv3:?}
[channels.wxpay.public_keys]
{serials}
[channels.stripe]
provider = "stripe"
currency = "USD"
secrets = {stripe:?}

[channels.gateway]
provider = "standard-webhooks"
secrets = {webhooks:?}
"#,
        alipay = keys.alipay_public_key,
        mchid = s(&wechat, "mchid"),
        appid = s(&wechat, "appid"),
        apiv3 = s(&wechat, "apiv3_key"),
        stripe = keys.stripe,
        webhooks = keys.webhooks,
    )
}

fn channels(keys: &Keys) -> Channels {
    Settings::from_toml(&channels_toml(keys))
        .expect("channels")
        .channels
}

/// A payment notification for `order_no`, signed by the provider of `channel` at `arrived()`.
fn signed_payment(channel: &str, order_no: &str, currency: Currency) -> Signed {
    // Stripe signs with its endpoint's current secret, the last of the right ones.
    let mut signing = right_keys();
    signing.stripe.remove(0);
    let channels = channels(&signing);
    let cfg = &channels[&ChannelName::parse(channel).unwrap()];
    let private_key = match channel {
        "alipay" => Some(vector_file("alipay-test-private-key.pem")),
        "wxpay" => Some(vector_file("wechatpay-test-private-key.pem")),
        _ => None,
    };
    let payment = Payment {
        order_no: OrderNo::parse(order_no).unwrap(),
        amount: AmountMinor::new(1234).unwrap(),
        currency,
    };
    Signer::new(cfg, private_key.as_deref(), None)
        .unwrap()
        .paid(&payment, arrived())
        .unwrap()
        .signed
}

fn post(app: &TestApp, channel: &str, headers: &[(String, String)], body: &[u8]) -> u16 {
    let client = reqwest::blocking::Client::new();
    let mut request = client.post(app.url(&format!("/notify/{channel}")));
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    request
        .body(body.to_vec())
        .send()
        .unwrap()
        .status()
        .as_u16()
}

/// Posts a request the server must refuse, and returns the id of the row that stored it.
fn store_rejected(app: &TestApp, channel: &str, headers: &[(String, String)], body: &[u8]) -> i64 {
    let status = post(app, channel, headers, body);
    assert!(status >= 400, "{channel}: answered {status}");
    count(
        &app.pool,
        &format!(
            "SELECT CAST(MAX(id) AS BIGINT) AS n FROM notifications \
             WHERE channel = '{channel}' AND outcome = 'rejected'"
        ),
    )
}

fn form_headers() -> Vec<(String, String)> {
    vec![(
        "Content-Type".to_owned(),
        "application/x-www-form-urlencoded".to_owned(),
    )]
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

fn ledger_rows(pool: &Pool, order_no: &str) -> i64 {
    count(
        pool,
        &format!("SELECT CAST(COUNT(*) AS BIGINT) AS n FROM ledger WHERE order_no = '{order_no}'"),
    )
}

fn inbox(pool: &Pool) -> Vec<InboxEntry> {
    notifications::table
        .order(notifications::id)
        .select(InboxEntry::as_select())
        .load(&mut *pool.get().unwrap())
        .unwrap()
}

fn explain(pool: &Pool, keys: &Keys, id: i64) -> Explanation {
    inspect::explain(&mut pool.get().unwrap(), &channels(keys), id).unwrap()
}

fn reapply(pool: &Pool, keys: &Keys, id: i64, dry_run: bool) -> Reapplied {
    let mut conn = pool.get().unwrap();
    inspect::reapply(&mut conn, &channels(keys), id, dry_run, two_days_later()).unwrap()
}

fn applied(reapplied: Reapplied) -> Application {
    match reapplied {
        Reapplied::Applied(application) => application,
        Reapplied::NotVerified(why) => panic!("not applied:\n{why}"),
    }
}

fn trap(explanation: &Explanation, kind: TrapKind) -> &Trap {
    explanation
        .traps
        .iter()
        .find(|trap| trap.trap == kind)
        .unwrap_or_else(|| panic!("no {} trap in:\n{explanation}", kind.as_str()))
}

/// Every provider's payment, rejected under a wrong key, explained, then applied once the key is
/// right: credited once, however often it is applied again.
fn a_payment_rejected_under_a_wrong_key_is_explained_then_applied_once(db: TestDb) {
    let app = spawn_app(&db, &channels_toml(&wrong_keys()), arrived());
    let cases = [
        ("alipay", "alipay", Currency::Cny, "alipay_public_key"),
        (
            "wxpay",
            "wechatpay",
            Currency::Cny,
            "PUB_KEY_ID_0119000001092026112200000000000001",
        ),
        ("stripe", "stripe", Currency::Usd, "secrets[1]"),
        ("gateway", "standard-webhooks", Currency::Cny, "secrets[0]"),
    ];
    for (channel, provider, currency, right_key) in cases {
        let user = format!("u-{channel}");
        let order_no = format!("INSPECT{channel}01");
        let mut conn = app.pool.get().unwrap();
        create_order(
            &mut conn,
            &user,
            channel,
            "12.34",
            currency.code(),
            Some(&order_no),
        );
        let signed = signed_payment(channel, &order_no, currency);
        let id = store_rejected(&app, channel, &signed.headers, signed.body.as_bytes());

        let why = explain(&app.pool, &wrong_keys(), id);
        assert!(!why.verifies && !why.was_verified, "{why}");
        assert_eq!(why.provider, Some(provider));
        assert!(
            why.rejection.as_deref().unwrap().starts_with("signature:"),
            "{why}"
        );
        assert_eq!(why.verified_by, None);
        assert!(!why.keys.is_empty(), "{why}");
        for key in &why.keys {
            assert!(!key.verified, "{why}");
            assert!(key.why_not.is_some(), "{why}");
        }
        let content = why.signed_content.as_ref().expect("the signed content");
        assert!(!content.text.contains('\n'), "escaped: {}", content.text);
        match channel {
            "alipay" => {
                assert_eq!(why.keys[0].key, "alipay_public_key");
                assert!(content.text.contains(&format!("&out_trade_no={order_no}&")));
                assert!(content.text.contains("subject=充值"), "{}", content.text);
                assert_eq!(why.timestamp, None, "Alipay signs no timestamp");
            }
            "wxpay" => {
                assert_eq!(why.keys[0].key, right_key);
                assert!(why.keys[0].chosen);
                let timestamp = format!("{ARRIVED}\\n");
                assert!(content.text.starts_with(&timestamp), "{}", content.text);
                assert!(content.text.ends_with("}\\n"), "{}", content.text);
            }
            "stripe" => {
                assert_eq!(why.keys.len(), 1);
                assert_eq!(why.keys[0].key, "secrets[0]");
                assert!(content.text.starts_with(&format!("{ARRIVED}.{{")));
            }
            _ => {
                assert_eq!(why.keys[0].key, "secrets[0]");
                assert!(content.text.contains(&format!(".{ARRIVED}.{{")));
            }
        }
        if channel != "alipay" {
            let skew = why.timestamp.as_ref().expect("a signed timestamp");
            assert_eq!((skew.signed_at, skew.skew_secs), (Some(ARRIVED), Some(0)));
            assert_eq!(skew.stale, None);
        }
        let text = why.to_string();
        assert!(text.contains("does not verify"), "{text}");
        for secret in wrong_keys().stripe.iter().chain(&right_keys().webhooks) {
            assert!(
                !text.contains(secret.as_str()),
                "no secret is shown: {text}"
            );
        }
        assert!(!why.traps.iter().any(|t| t.confirmed), "{why}");
        let refused = reapply(&app.pool, &wrong_keys(), id, false);
        assert!(matches!(refused, Reapplied::NotVerified(_)), "{refused}");
        assert_eq!(balance(&app.pool, &user), 0);

        // The key is put right: it verifies, with its timestamp judged as of its arrival.
        let why = explain(&app.pool, &right_keys(), id);
        assert!(why.verifies, "{why}");
        assert_eq!(why.verified_by.as_deref(), Some(right_key), "{why}");
        let first = applied(reapply(&app.pool, &right_keys(), id, false));
        assert_eq!(first.outcome, "credited", "{channel}");
        assert_eq!(first.balance_after, Some(1234));
        assert!(first.noted_on_rejected_row && !first.dry_run);
        assert_eq!(first.verified_by.as_deref(), Some(right_key));
        assert_eq!(balance(&app.pool, &user), 1234, "{channel}");
        let again = applied(reapply(&app.pool, &right_keys(), id, false));
        assert_eq!(again.outcome, "already_paid", "{channel}");
        assert_eq!(again.inbox_id, first.inbox_id);
        assert_eq!(balance(&app.pool, &user), 1234, "{channel}: credited once");
        assert_eq!(ledger_rows(&app.pool, &order_no), 1, "{channel}");

        let rows = inbox(&app.pool);
        let verified = rows.iter().find(|r| r.id == first.inbox_id).unwrap();
        assert!(verified.verified);
        assert_eq!(verified.notification_id, first.notification_id);
        assert_eq!(verified.outcome, "credited");
        assert_eq!(verified.order_no.as_deref(), Some(order_no.as_str()));
        let why = explain(&app.pool, &right_keys(), first.inbox_id);
        assert!(why.verifies && why.was_verified, "{why}");
        let rejected = rows.iter().find(|r| r.id == id).unwrap();
        assert!(!rejected.verified);
        assert_eq!(rejected.outcome, "rejected");
        assert_eq!(
            verified.first_seen_at, rejected.first_seen_at,
            "when it first came"
        );
        let note = rejected.detail.as_deref().unwrap_or_default();
        assert!(note.starts_with("applied again at "), "{note}");
        assert!(note.contains(&first.notification_id), "{note}");
    }
}

/// A dry run goes through the same transaction and says what it would do, and every row is as it
/// was afterwards.
fn a_dry_run_says_what_it_would_do_and_changes_nothing(db: TestDb) {
    let app = spawn_app(&db, &channels_toml(&wrong_keys()), arrived());
    let order_no = "INSPECTDRY01";
    create_order(
        &mut app.pool.get().unwrap(),
        "dry",
        "gateway",
        "12.34",
        "CNY",
        Some(order_no),
    );
    let signed = signed_payment("gateway", order_no, Currency::Cny);
    let id = store_rejected(&app, "gateway", &signed.headers, signed.body.as_bytes());
    let order = |pool: &Pool| {
        let mut conn = pool.get().unwrap();
        let no = OrderNo::parse(order_no).unwrap();
        format!(
            "{:?}",
            payhook::books::orders::find(&mut conn, &no).unwrap()
        )
    };
    let before = (
        inbox(&app.pool),
        order(&app.pool),
        balance(&app.pool, "dry"),
    );
    let notifications_before = format!("{:?}", before.0);

    for _ in 0..2 {
        let would = applied(reapply(&app.pool, &right_keys(), id, true));
        assert!(would.dry_run);
        assert_eq!(would.outcome, "credited");
        assert_eq!(would.balance_after, Some(1234));
        assert!(would.noted_on_rejected_row);
        let text = Reapplied::Applied(would).to_string();
        assert!(
            text.contains("dry run (rolled back): would be credited"),
            "{text}"
        );
    }
    assert_eq!(format!("{:?}", inbox(&app.pool)), notifications_before);
    assert_eq!(order(&app.pool), before.1);
    assert_eq!(balance(&app.pool, "dry"), before.2);
    assert_eq!(ledger_rows(&app.pool, order_no), 0);

    let done = applied(reapply(&app.pool, &right_keys(), id, false));
    assert_eq!(done.outcome, "credited");
    assert_ne!(format!("{:?}", inbox(&app.pool)), notifications_before);
    assert_eq!(balance(&app.pool, "dry"), 1234);
    let would = applied(reapply(&app.pool, &right_keys(), id, true));
    assert_eq!(would.outcome, "already_paid");
    assert_eq!(balance(&app.pool, "dry"), 1234);
}

/// Operators clicking at once: the order's compare-and-set lets one of them credit.
fn applying_one_notification_from_several_threads_at_once_credits_once(db: TestDb) {
    let app = spawn_app(&db, &channels_toml(&wrong_keys()), arrived());
    let order_no = "INSPECTRACE1";
    create_order(
        &mut app.pool.get().unwrap(),
        "racer",
        "stripe",
        "12.34",
        "USD",
        Some(order_no),
    );
    let signed = signed_payment("stripe", order_no, Currency::Usd);
    let id = store_rejected(&app, "stripe", &signed.headers, signed.body.as_bytes());
    let pool = app.pool.clone();
    let outcomes = race(4, move |_| {
        applied(reapply(&pool, &right_keys(), id, false)).outcome
    });
    let credited = outcomes.iter().filter(|o| **o == "credited").count();
    assert_eq!(credited, 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|o| ["credited", "already_paid"].contains(o)),
        "{outcomes:?}"
    );
    assert_eq!(balance(&app.pool, "racer"), 1234);
    assert_eq!(ledger_rows(&app.pool, order_no), 1);
}

/// A timestamp is judged as of the request's arrival, not as of now: one that was stale when it
/// came stays refused whatever the keys.
fn a_notification_stale_when_it_arrived_stays_refused(db: TestDb) {
    let late = arrived() + Duration::seconds(301);
    let app = spawn_app(&db, &channels_toml(&right_keys()), late);
    create_order(
        &mut app.pool.get().unwrap(),
        "late",
        "wxpay",
        "12.34",
        "CNY",
        Some("INSPECTLATE1"),
    );
    let signed = signed_payment("wxpay", "INSPECTLATE1", Currency::Cny);
    let id = store_rejected(&app, "wxpay", &signed.headers, signed.body.as_bytes());

    let why = explain(&app.pool, &right_keys(), id);
    assert!(!why.verifies, "{why}");
    assert_eq!(
        why.verified_by.as_deref(),
        Some(right_keys().wechat[0].0.as_str())
    );
    let skew = why.timestamp.as_ref().unwrap();
    assert_eq!(skew.skew_secs, Some(301));
    assert!(skew.stale.as_deref().unwrap().contains("301 s"), "{why}");
    assert!(why.to_string().contains("first seen 301 s later"), "{why}");
    let refused = reapply(&app.pool, &right_keys(), id, false);
    assert!(matches!(refused, Reapplied::NotVerified(_)), "{refused}");
    assert_eq!(balance(&app.pool, "late"), 0);
}

/// Alipay fields, decoded, for a payment of 12.34 of `order_no`.
fn alipay_fields(order_no: &str) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("notify_id", format!("N{order_no}").into_bytes()),
        ("app_id", b"2021000000000001".to_vec()),
        ("seller_id", b"2088000000000001".to_vec()),
        ("out_trade_no", order_no.as_bytes().to_vec()),
        ("trade_no", format!("2026112222001{order_no}").into_bytes()),
        ("total_amount", b"12.34".to_vec()),
        ("trade_status", b"TRADE_SUCCESS".to_vec()),
        ("charset", b"utf-8".to_vec()),
        ("gmt_payment", b"2026-11-22 10:00:00".to_vec()),
    ]
}

/// The fields signed with Alipay's test key, as `(key, value as sent)` pairs for the test to
/// mangle before they are joined into a body.
fn alipay_signed(fields: &[(&'static str, Vec<u8>)]) -> Vec<(&'static str, String)> {
    let key = RsaSigner::from_pem(&vector_file("alipay-test-private-key.pem")).unwrap();
    let borrowed: Vec<(&str, &[u8])> = fields.iter().map(|(k, v)| (*k, v.as_slice())).collect();
    let sign = rsa2(&borrowed, &key);
    let mut pairs: Vec<(&'static str, String)> = fields
        .iter()
        .map(|(k, v)| (*k, form_urlencoded::byte_serialize(v).collect()))
        .collect();
    pairs.push((
        "sign",
        form_urlencoded::byte_serialize(sign.as_bytes()).collect(),
    ));
    pairs.push(("sign_type", "RSA2".to_owned()));
    pairs
}

fn joined(pairs: &[(&str, String)]) -> String {
    let pairs: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join("&")
}

fn set(pairs: &mut [(&str, String)], key: &str, sent: String) {
    pairs.iter_mut().find(|(k, _)| *k == key).unwrap().1 = sent;
}

/// A framework HTML-escaped `fund_bill_list` before payhook saw it: `&quot;` where Alipay
/// signed `"`.
fn an_html_escaped_fund_bill_list_is_found(db: TestDb) {
    let app = spawn_app(&db, &channels_toml(&right_keys()), arrived());
    create_order(
        &mut app.pool.get().unwrap(),
        "esc",
        "alipay",
        "12.34",
        "CNY",
        Some("INSPECTESC1"),
    );
    let bills = r#"[{"amount":"12.34","fundChannel":"ALIPAYACCOUNT"}]"#;
    let mut fields = alipay_fields("INSPECTESC1");
    fields.push(("fund_bill_list", bills.as_bytes().to_vec()));
    let mut pairs = alipay_signed(&fields);
    let escaped = bills.replace('"', "&quot;");
    set(
        &mut pairs,
        "fund_bill_list",
        form_urlencoded::byte_serialize(escaped.as_bytes()).collect(),
    );
    let id = store_rejected(&app, "alipay", &form_headers(), joined(&pairs).as_bytes());

    let why = explain(&app.pool, &right_keys(), id);
    assert!(!why.verifies, "{why}");
    let found = trap(&why, TrapKind::HtmlEscaped);
    assert!(found.confirmed, "{why}");
    assert!(
        found.detail.contains("\"fund_bill_list\""),
        "{}",
        found.detail
    );
    assert!(why
        .signed_content
        .unwrap()
        .text
        .contains("fund_bill_list=[{&quot;amount&quot;"));
    // Only the stored bytes are ever applied.
    let refused = reapply(&app.pool, &right_keys(), id, false);
    assert!(matches!(refused, Reapplied::NotVerified(_)), "{refused}");
    assert_eq!(balance(&app.pool, "esc"), 0);
}

/// A proxy decoded the form once before payhook decoded it again: the value Alipay signed held
/// `%2F`, and arrived as it.
fn a_value_decoded_twice_is_found(db: TestDb) {
    let app = spawn_app(&db, &channels_toml(&right_keys()), arrived());
    let mut fields = alipay_fields("INSPECTPCT1");
    fields.push(("passback_params", b"next%2Fpage%3D2".to_vec()));
    let mut pairs = alipay_signed(&fields);
    set(&mut pairs, "passback_params", "next%2Fpage%3D2".to_owned());
    let id = store_rejected(&app, "alipay", &form_headers(), joined(&pairs).as_bytes());

    let why = explain(&app.pool, &right_keys(), id);
    assert!(!why.verifies, "{why}");
    assert!(why
        .signed_content
        .as_ref()
        .unwrap()
        .text
        .contains("passback_params=next/page=2"));
    let found = trap(&why, TrapKind::DecodedTwice);
    assert!(found.confirmed, "{why}");
    assert!(
        found.detail.contains("\"passback_params\""),
        "{}",
        found.detail
    );
    assert!(
        !why.traps.iter().any(|t| t.trap == TrapKind::HtmlEscaped),
        "{why}"
    );
}

/// The app's own public key configured as Alipay's, found through the app's private key.
fn the_apps_own_key_configured_as_alipays_is_found(db: TestDb) {
    let mixed_up = Keys {
        alipay_public_key: s(&vectors("recovery.json"), "alipay_app_public_key"),
        app_private_key: Some(vector_file("alipay-app-test-private-key.pem")),
        ..right_keys()
    };
    let app = spawn_app(&db, &channels_toml(&mixed_up), arrived());
    create_order(
        &mut app.pool.get().unwrap(),
        "app",
        "alipay",
        "12.34",
        "CNY",
        Some("INSPECTAPP1"),
    );
    let signed = signed_payment("alipay", "INSPECTAPP1", Currency::Cny);
    let id = store_rejected(&app, "alipay", &signed.headers, signed.body.as_bytes());

    let why = explain(&app.pool, &mixed_up, id);
    let found = trap(&why, TrapKind::AppKeyConfigured);
    assert!(
        found.confirmed && found.detail.contains("app_private_key"),
        "{why}"
    );
    let without_app_key = Keys {
        app_private_key: None,
        alipay_public_key: mixed_up.alipay_public_key.clone(),
        ..right_keys()
    };
    let why = explain(&app.pool, &without_app_key, id);
    assert!(
        !why.traps
            .iter()
            .any(|t| t.trap == TrapKind::AppKeyConfigured),
        "{why}"
    );

    let fixed = Keys {
        app_private_key: mixed_up.app_private_key.clone(),
        ..right_keys()
    };
    let why = explain(&app.pool, &fixed, id);
    assert!(why.verifies && why.traps.is_empty(), "{why}");
    assert_eq!(
        applied(reapply(&app.pool, &fixed, id, false)).outcome,
        "credited"
    );
    assert_eq!(balance(&app.pool, "app"), 1234);
}

/// A GBK form, transcoded to UTF-8 on the way while still saying `charset=gbk`.
fn a_form_transcoded_out_of_its_charset_is_found(db: TestDb) {
    let app = spawn_app(&db, &channels_toml(&right_keys()), arrived());
    let mut fields = alipay_fields("INSPECTGBK1");
    set_field(&mut fields, "charset", b"gbk");
    // "充值" in GBK.
    fields.push(("subject", vec![0xB3, 0xE4, 0xD6, 0xB5]));
    let mut pairs = alipay_signed(&fields);
    set(
        &mut pairs,
        "subject",
        form_urlencoded::byte_serialize("充值".as_bytes()).collect(),
    );
    let id = store_rejected(&app, "alipay", &form_headers(), joined(&pairs).as_bytes());

    let why = explain(&app.pool, &right_keys(), id);
    assert!(!why.verifies, "{why}");
    let found = trap(&why, TrapKind::CharsetMismatch);
    assert!(found.confirmed, "{why}");
    assert!(
        found.detail.contains("\"subject\"") && found.detail.contains("UTF-8"),
        "{}",
        found.detail
    );
}

fn set_field(fields: &mut [(&str, Vec<u8>)], key: &str, value: &[u8]) {
    fields.iter_mut().find(|(k, _)| *k == key).unwrap().1 = value.to_vec();
}

/// WeChat Pay names a serial the channel does not have; the key is there under another name.
fn an_unknown_wechat_serial_is_found_and_applied_once_configured(db: TestDb) {
    let right = right_keys();
    let (serial, pem) = right.wechat[0].clone();
    let misfiled = Keys {
        wechat: vec![("PUB_KEY_ID_OLD".to_owned(), pem.clone())],
        ..right_keys()
    };
    let app = spawn_app(&db, &channels_toml(&misfiled), arrived());
    create_order(
        &mut app.pool.get().unwrap(),
        "wx",
        "wxpay",
        "12.34",
        "CNY",
        Some("INSPECTWX01"),
    );
    let signed = signed_payment("wxpay", "INSPECTWX01", Currency::Cny);
    let id = store_rejected(&app, "wxpay", &signed.headers, signed.body.as_bytes());

    let why = explain(&app.pool, &misfiled, id);
    assert!(
        why.problem
            .as_deref()
            .unwrap()
            .contains("unknown Wechatpay-Serial"),
        "{why}"
    );
    assert_eq!(why.keys.len(), 1);
    assert!(!why.keys[0].chosen && why.keys[0].verified, "{why}");
    assert_eq!(why.verified_by, None);
    let found = trap(&why, TrapKind::UnknownSerial);
    assert!(found.confirmed, "{why}");
    assert!(
        found.detail.contains(&serial) && found.detail.contains("PUB_KEY_ID_OLD"),
        "{}",
        found.detail
    );

    let both = Keys {
        wechat: vec![
            ("PUB_KEY_ID_OLD".to_owned(), pem.clone()),
            (serial.clone(), pem),
        ],
        ..right_keys()
    };
    assert_eq!(
        applied(reapply(&app.pool, &both, id, false)).outcome,
        "credited"
    );
    assert_eq!(balance(&app.pool, "wx"), 1234);
}

/// A rejected request keeps only the start of a long body: it cannot be verified again, and
/// applying it again says why.
fn a_truncated_body_is_found_and_never_applied(db: TestDb) {
    let app = spawn_app(&db, &channels_toml(&wrong_keys()), arrived());
    create_order(
        &mut app.pool.get().unwrap(),
        "long",
        "alipay",
        "12.34",
        "CNY",
        Some("INSPECTCUT1"),
    );
    let mut fields = alipay_fields("INSPECTCUT1");
    fields.push(("body", "x".repeat(5000).into_bytes()));
    let pairs = alipay_signed(&fields);
    let id = store_rejected(&app, "alipay", &form_headers(), joined(&pairs).as_bytes());

    let why = explain(&app.pool, &right_keys(), id);
    let found = trap(&why, TrapKind::TruncatedBody);
    assert!(found.confirmed && found.detail.contains("4096"), "{why}");
    match reapply(&app.pool, &right_keys(), id, false) {
        Reapplied::NotVerified(why) => {
            assert!(
                why.traps.iter().any(|t| t.trap == TrapKind::TruncatedBody),
                "{why}"
            );
        }
        Reapplied::Applied(a) => panic!("applied a truncated body: {a:?}"),
    }
    assert_eq!(balance(&app.pool, "long"), 0);
}

/// Bytes anyone can send are shown escaped: control characters, a bidirectional override, a
/// terminal escape.
fn hostile_bytes_in_a_stored_request_are_shown_escaped(db: TestDb) {
    let app = spawn_app(&db, &channels_toml(&right_keys()), arrived());
    let body = "{\"type\":\"payment.succeeded\u{1b}[2J\u{202e}\",\r\n\"x\":\"<script>\"}";
    let headers = vec![
        ("webhook-id".to_owned(), "msg_hostile".to_owned()),
        ("webhook-timestamp".to_owned(), ARRIVED.to_string()),
        ("webhook-signature".to_owned(), "v1,AAAA".to_owned()),
    ];
    let id = store_rejected(&app, "gateway", &headers, body.as_bytes());
    let why = explain(&app.pool, &right_keys(), id);
    let text = why.signed_content.as_ref().unwrap().text.clone();
    assert!(text.contains("\\u{1b}[2J\\u{202e}"), "{text}");
    assert!(text.contains("\\r\\n"), "{text}");
    assert!(
        !text.contains(['\u{1b}', '\u{202e}', '\r', '\n']),
        "{text:?}"
    );
    let shown = why.to_string();
    assert!(!shown.contains(['\u{1b}', '\u{202e}', '\r']), "{shown:?}");
}

/// `payhook explain` and `payhook reapply` through the real binary: exit codes, text and JSON.
fn explain_and_reapply_run_from_the_command_line(db: TestDb) {
    let app = spawn_app(&db, &channels_toml(&wrong_keys()), arrived());
    create_order(
        &mut app.pool.get().unwrap(),
        "cli",
        "gateway",
        "12.34",
        "CNY",
        Some("INSPECTCLI1"),
    );
    let signed = signed_payment("gateway", "INSPECTCLI1", Currency::Cny);
    let id = store_rejected(&app, "gateway", &signed.headers, signed.body.as_bytes());
    let dir = tempfile::tempdir().unwrap();
    let config = |name: &str, keys: &Keys| {
        let path = dir.path().join(name);
        let text = format!("database_url = {:?}\n{}", db.url, channels_toml(keys));
        std::fs::write(&path, text).unwrap();
        path
    };
    let wrong = config("wrong.toml", &wrong_keys());
    let right = config("right.toml", &right_keys());
    let id = id.to_string();
    let run = |args: &[&str], config: &Path| {
        let out = crate::common::payhook()
            .args(args)
            .arg("--config")
            .arg(config)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), stdout, stderr)
    };

    let (code, stdout, stderr) = run(&["explain", &id], &wrong);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("secrets[0]: does not verify"), "{stdout}");
    assert!(stdout.contains("now: does not verify"), "{stdout}");
    assert!(stderr.contains("payhook::inspect explained"), "{stderr}");
    for secret in wrong_keys().webhooks.iter().chain(&right_keys().webhooks) {
        assert!(!stdout.contains(secret.as_str()) && !stderr.contains(secret.as_str()));
    }
    let (code, stdout, _) = run(&["explain", &id, "--json"], &right);
    assert_eq!(code, Some(0), "{stdout}");
    let json: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["verifies"], true);
    assert_eq!(json["verified_by"], "secrets[0]");
    assert_eq!(json["timestamp"]["skew_secs"], 0);

    let (code, stdout, _) = run(&["reapply", &id], &wrong);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("not applied: it does not verify"),
        "{stdout}"
    );
    let (code, stdout, _) = run(&["reapply", &id, "--dry-run"], &right);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("would be credited"), "{stdout}");
    assert_eq!(balance(&app.pool, "cli"), 0);
    let (code, stdout, _) = run(&["reapply", &id, "--json"], &right);
    assert_eq!(code, Some(0), "{stdout}");
    let json: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (json["result"].as_str(), json["outcome"].as_str()),
        (Some("applied"), Some("credited"))
    );
    assert_eq!(balance(&app.pool, "cli"), 1234);
    let (code, stdout, _) = run(&["reapply", &id], &right);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("applied: already_paid"), "{stdout}");
    assert_eq!(balance(&app.pool, "cli"), 1234);

    let (code, _, stderr) = run(&["explain", "999999"], &right);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("no stored notification has id 999999"),
        "{stderr}"
    );
}

on_every_backend!(
    a_payment_rejected_under_a_wrong_key_is_explained_then_applied_once,
    a_dry_run_says_what_it_would_do_and_changes_nothing,
    applying_one_notification_from_several_threads_at_once_credits_once,
    a_notification_stale_when_it_arrived_stays_refused,
    an_html_escaped_fund_bill_list_is_found,
    a_value_decoded_twice_is_found,
    the_apps_own_key_configured_as_alipays_is_found,
    a_form_transcoded_out_of_its_charset_is_found,
    an_unknown_wechat_serial_is_found_and_applied_once_configured,
    a_truncated_body_is_found_and_never_applied,
    hostile_bytes_in_a_stored_request_are_shown_escaped,
    explain_and_reapply_run_from_the_command_line,
);
