//! `payhook fixtures` and `payhook replay` (the binary) against the real server: signed
//! notifications for new orders on every demo channel, replayed over HTTP, checked in the books.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use crate::common::{
    count, free_port, settled_count, spawn_app_with_clock, Backend, TestApp, TestDb,
};
use payhook::domain::clock::SystemClock;
use serde_json::Value;

const DEMO_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml");
const DEMO_KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo-keys");

/// The demo channels, without the demo's own database and token: each test names its database.
fn demo_channels() -> String {
    let text = std::fs::read_to_string(DEMO_CONFIG).expect("config/demo.toml");
    let mut table: toml::Table = text.parse().expect("demo config is TOML");
    table.remove("database_url");
    table.remove("admin_token");
    toml::to_string(&table).expect("TOML")
}

/// The server on the real clock: fixtures are signed at the real time.
fn spawn_demo(db: &TestDb) -> TestApp {
    spawn_app_with_clock(db, &demo_channels(), Arc::new(SystemClock))
}

fn payhook(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_payhook"))
        .args(args)
        .env_remove("PAYHOOK_CONFIG")
        .env_remove("PAYHOOK_DATABASE_URL")
        .env_remove("PAYHOOK_BIND")
        .env_remove("PAYHOOK_ADMIN_TOKEN")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run payhook")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The private key that signs for a demo channel, if its provider signs with RSA.
fn private_key(channel: &str) -> Option<String> {
    let file = match channel {
        "alipay" => "alipay-test-private-key.pem",
        "wxpay" => "wechatpay-test-private-key.pem",
        _ => return None,
    };
    Some(format!("{DEMO_KEYS}/{file}"))
}

/// Runs `payhook fixtures` for `count` orders of `amount` on a demo channel, into `out`.
fn make_fixtures(db: &TestDb, channel: &str, count: u32, amount: &str, user: &str, out: &Path) {
    make_refunded_fixtures(db, channel, count, amount, &[], user, out);
}

/// Runs `payhook fixtures` with one `--refund` per entry of `refunds`.
fn make_refunded_fixtures(
    db: &TestDb,
    channel: &str,
    count: u32,
    amount: &str,
    refunds: &[&str],
    user: &str,
    out: &Path,
) {
    let count = count.to_string();
    let out_arg = out.to_string_lossy().into_owned();
    let mut args = vec![
        "fixtures",
        "--config",
        DEMO_CONFIG,
        "--database-url",
        &db.url,
        "--channel",
        channel,
        "--count",
        &count,
        "--amount",
        amount,
        "--user-id",
        user,
        "--out",
        &out_arg,
    ];
    let key = private_key(channel);
    if let Some(key) = &key {
        args.extend(["--private-key", key.as_str()]);
    }
    for refund in refunds {
        args.extend(["--refund", refund]);
    }
    let made = payhook(&args);
    assert!(made.status.success(), "fixtures {channel}: {}", text(&made));
}

/// Runs `payhook replay` against the server; returns the exit code and the whole output.
fn replay(url: &str, flags: &[&str], paths: &[&Path]) -> (i32, Output) {
    let mut args = vec!["replay", "--url", url];
    args.extend(flags);
    let paths: Vec<String> = paths
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    args.extend(paths.iter().map(String::as_str));
    let out = payhook(&args);
    (out.status.code().expect("an exit code"), out)
}

fn replay_json(url: &str, flags: &[&str], paths: &[&Path]) -> (i32, serde_json::Value) {
    let mut flags = flags.to_vec();
    flags.push("--json");
    let (code, out) = replay(url, &flags, paths);
    let summary = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("--json output is not JSON ({e}): {}", text(&out)));
    (code, summary)
}

fn balance(app: &TestApp, user: &str, currency: &str) -> i64 {
    count(
        &app.pool,
        &format!(
            "SELECT CAST(COALESCE(SUM(balance_minor), 0) AS BIGINT) AS n FROM accounts \
             WHERE user_id = '{user}' AND currency = '{currency}'"
        ),
    )
}

/// A fixture file's items as JSON values, to edit.
fn items(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn write_items(path: &Path, items: &[serde_json::Value]) {
    let lines: Vec<String> = items.iter().map(|i| i.to_string()).collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// (channel, amount, currency) for each demo channel.
const CHANNELS: [(&str, &str, &str); 4] = [
    ("alipay", "12.34", "CNY"),
    ("wxpay", "0.01", "CNY"),
    ("stripe", "5.00", "USD"),
    ("gateway", "100.00", "CNY"),
];

fn fixtures_of_every_provider_replayed_five_times_credit_each_order_once(db: TestDb) {
    let app = spawn_demo(&db);
    let dir = tempfile::tempdir().unwrap();
    for (channel, amount, _) in CHANNELS {
        let out = dir.path().join(format!("{channel}.ndjson"));
        make_fixtures(&db, channel, 25, amount, &format!("u-{channel}"), &out);
        assert_eq!(items(&out).len(), 25, "{channel}");
    }
    let pending = "SELECT COUNT(*) AS n FROM orders WHERE status = 'pending'";
    assert_eq!(count(&app.pool, pending), 100);

    let flags = ["--repeat", "5", "--shuffle", "--concurrency", "32"];
    let (code, summary) = replay_json(&app.url(""), &flags, &[dir.path()]);
    assert_eq!(code, 0, "{summary}");
    assert_eq!(summary["items"], 100, "{summary}");
    assert_eq!(summary["requests"], 500, "{summary}");
    assert_eq!(summary["answers"]["ack"], 500, "{summary}");
    for other in ["retry", "http_error", "transport_error"] {
        assert_eq!(summary["answers"][other], 0, "{other}: {summary}");
    }
    assert_eq!(summary["items_with_expect"], 100, "{summary}");
    assert_eq!(summary["mismatched_items"], 0, "{summary}");
    assert!(summary["requests_per_sec"].as_f64().unwrap() > 0.0);
    assert!(summary["latency_ms"]["p99"].as_f64().unwrap() > 0.0);

    assert_eq!(count(&app.pool, pending), 0);
    let paid = "SELECT COUNT(*) AS n FROM orders WHERE status = 'paid'";
    assert_eq!(count(&app.pool, paid), 100);
    let credits = "SELECT COUNT(*) AS n FROM ledger WHERE kind = 'credit'";
    assert_eq!(count(&app.pool, credits), 100);
    for (channel, amount, currency) in CHANNELS {
        let minor: i64 = amount.replace('.', "").parse().unwrap();
        let user = format!("u-{channel}");
        assert_eq!(balance(&app, &user, currency), 25 * minor, "{channel}");
    }
    let notifications = "SELECT COUNT(*) AS n FROM notifications";
    assert_eq!(count(&app.pool, notifications), 100);
    let deliveries = "SELECT CAST(SUM(delivery_count) AS BIGINT) AS n FROM notifications";
    assert_eq!(settled_count(&app.pool, deliveries, 500), 500);
}

on_every_backend!(fixtures_of_every_provider_replayed_five_times_credit_each_order_once);

/// (channel, order amount, refunds, currency) for each demo channel: Alipay and Stripe give the
/// whole payment back in two refunds, WeChat Pay and the gateway part of it.
const REFUNDED: [(&str, &str, &[&str], &str); 4] = [
    ("alipay", "12.34", &["2.34", "10.00"], "CNY"),
    ("wxpay", "10.00", &["1.00", "2.50"], "CNY"),
    ("stripe", "5.00", &["1.50", "3.50"], "USD"),
    ("gateway", "100.00", &["40.00"], "CNY"),
];

fn minor(amount: &str) -> i64 {
    amount.replace('.', "").parse().unwrap()
}

/// The order numbers a fixture file pays, from its payments' names (`channel #N ORDER_NO`).
fn paid_orders(path: &Path) -> Vec<String> {
    items(path)
        .iter()
        .map(|item| item["name"].as_str().unwrap().to_owned())
        .filter(|name| !name.contains(" refund "))
        .map(|name| name.rsplit(' ').next().unwrap().to_owned())
        .collect()
}

fn refunds_of_every_provider_stormed_out_of_order_leave_each_balance_paid_minus_refunded(
    db: TestDb,
) {
    const ORDERS: u32 = 4;
    const TOKEN: &str = "replay-admin-token";
    let config = format!("admin_token = {TOKEN:?}\n{}", demo_channels());
    let app = spawn_app_with_clock(&db, &config, Arc::new(SystemClock));
    let dir = tempfile::tempdir().unwrap();
    let fixtures = dir.path().join("fixtures");
    std::fs::create_dir(&fixtures).unwrap();
    let mut refund_items = 0;
    for (channel, amount, refunds, _) in REFUNDED {
        let out = fixtures.join(format!("{channel}.ndjson"));
        let user = format!("r-{channel}");
        make_refunded_fixtures(&db, channel, ORDERS, amount, refunds, &user, &out);
        let made = items(&out);
        assert_eq!(
            made.len(),
            ORDERS as usize * (1 + refunds.len()),
            "{channel}"
        );
        // Each order's payment comes first, then its refunds in the order given.
        let names: Vec<&str> = made.iter().map(|i| i["name"].as_str().unwrap()).collect();
        assert!(names[0].starts_with(&format!("{channel} #1 ")), "{names:?}");
        assert!(names[1].ends_with(" refund 1"), "{names:?}");
        assert!(made.iter().all(|i| i["expect"] == "ack"), "{channel}");
        refund_items += ORDERS as usize * refunds.len();
    }
    let items_made = (ORDERS as usize) * REFUNDED.len() + refund_items;

    // A shuffled storm: a refund that overtakes its payment is answered retry, never taken.
    let results = dir.path().join("results.txt");
    let results_arg = results.to_string_lossy().into_owned();
    let flags = [
        "--repeat",
        "3",
        "--shuffle",
        "--concurrency",
        "16",
        "--results",
        &results_arg,
    ];
    let (code, summary) = replay_json(&app.url(""), &flags, &[&fixtures]);
    assert_eq!(summary["requests"], 3 * items_made, "{summary}");
    for other in ["http_error", "transport_error"] {
        assert_eq!(summary["answers"][other], 0, "{other}: {summary}");
    }
    let per_item: Vec<Value> = std::fs::read_to_string(&results)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let mut retried = 0;
    for item in &per_item {
        let (sent, acks) = (
            item["sent"].as_u64().unwrap(),
            item["acks"].as_u64().unwrap(),
        );
        assert_eq!(sent, 3, "{item}");
        if !item["item"].as_str().unwrap().contains(" refund ") {
            assert_eq!(acks, 3, "a payment is always acked: {item}");
        }
        retried += sent - acks;
    }
    assert_eq!(summary["answers"]["retry"], retried, "{summary}");
    // Those refunds expected an ack, so the storm reports them.
    assert_eq!(code, i32::from(retried > 0), "{summary}");

    // Replayed again, every payment is in: each refund is taken now or found taken already.
    let (code, summary) = replay_json(&app.url(""), &["--concurrency", "16"], &[&fixtures]);
    assert_eq!(code, 0, "{summary}");
    assert_eq!(summary["answers"]["ack"], items_made, "{summary}");
    assert_eq!(summary["answers"]["retry"], 0, "{summary}");

    let client = reqwest::blocking::Client::new();
    for (channel, amount, refunds, currency) in REFUNDED {
        let (paid, refunded) = (minor(amount), refunds.iter().map(|r| minor(r)).sum::<i64>());
        let user = format!("r-{channel}");
        let expected = i64::from(ORDERS) * (paid - refunded);
        assert_eq!(balance(&app, &user, currency), expected, "{channel}");
        let orders = paid_orders(&fixtures.join(format!("{channel}.ndjson")));
        assert_eq!(orders.len(), ORDERS as usize, "{channel}");
        for order_no in orders {
            let order: Value = client
                .get(app.url(&format!("/api/orders/{order_no}")))
                .bearer_auth(TOKEN)
                .send()
                .unwrap()
                .json()
                .unwrap();
            assert_eq!(order["refunded_minor"], refunded, "{channel}: {order}");
            let status = if refunded == paid { "refunded" } else { "paid" };
            assert_eq!(order["status"], status, "{channel}: {order}");
        }
    }
    // Each refund moves once: WeChat Pay's and the gateway's one row each; a cumulative total
    // (Alipay, Stripe) that overtook the one before it takes both at once, in one row.
    for (channel, _, refunds, _) in REFUNDED {
        let rows = count(
            &app.pool,
            &format!(
                "SELECT COUNT(*) AS n FROM ledger WHERE kind = 'refund' AND user_id = 'r-{channel}'"
            ),
        );
        let most = i64::from(ORDERS) * refunds.len() as i64;
        let least = match channel {
            "alipay" | "stripe" => i64::from(ORDERS),
            _ => most,
        };
        assert!(
            (least..=most).contains(&rows),
            "{channel}: {rows} refund rows"
        );
    }

    let verified = payhook(&["verify", "--config", DEMO_CONFIG, "--database-url", &db.url]);
    assert!(verified.status.success(), "verify: {}", text(&verified));
}

on_every_backend!(
    refunds_of_every_provider_stormed_out_of_order_leave_each_balance_paid_minus_refunded
);

#[test]
fn fixtures_refuse_refunds_beyond_the_order_amount_without_creating_orders() {
    let db = TestDb::new(Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never.ndjson");
    let made = payhook(&[
        "fixtures",
        "--config",
        DEMO_CONFIG,
        "--database-url",
        &db.url,
        "--channel",
        "gateway",
        "--count",
        "5",
        "--amount",
        "10.00",
        "--refund",
        "3.00",
        "--refund",
        "7.01",
        "--out",
        &out.to_string_lossy(),
    ]);
    let message = text(&made);
    assert_eq!(made.status.code(), Some(1), "{message}");
    assert!(
        message.contains("add up to more than the order's 10.00 CNY"),
        "{message}"
    );
    assert!(!out.exists());
    let pool = db.pool(1);
    assert_eq!(count(&pool, "SELECT COUNT(*) AS n FROM orders"), 0);
}

#[test]
fn replay_exits_non_zero_when_an_answer_differs_from_its_expect() {
    let db = TestDb::new(Backend::Sqlite);
    let app = spawn_demo(&db);
    let dir = tempfile::tempdir().unwrap();
    let made = dir.path().join("made.ndjson");
    make_fixtures(&db, "alipay", 3, "10.00", "u-expect", &made);
    let mut edited = items(&made);
    // #2 will be acked, but says retry.
    edited[1]["expect"] = "retry".into();
    // #3 is tampered with, so its signature fails and it gets Alipay's retry, but says ack.
    let tampered = edited[2]["body"]
        .as_str()
        .unwrap()
        .replace("total_amount=10.00", "total_amount=99.00");
    edited[2]["body"] = tampered.clone().into();
    // A tampered copy of #1 that rightly expects a retry.
    let mut refused = edited[0].clone();
    refused["name"] = "refused".into();
    refused["expect"] = "retry".into();
    refused["body"] = edited[0]["body"]
        .as_str()
        .unwrap()
        .replace("total_amount=10.00", "total_amount=99.00")
        .into();
    edited.push(refused);
    let file = dir.path().join("edited.ndjson");
    write_items(&file, &edited);

    let (code, out) = replay(&app.url(""), &[], &[&file]);
    let summary = text(&out);
    assert_eq!(code, 1, "{summary}");
    assert!(
        summary.contains("expect: 2 of 4 items got another answer than expected"),
        "{summary}"
    );
    assert!(
        summary.contains("alipay #2") && summary.contains("expected retry, got ack"),
        "{summary}"
    );
    assert!(
        summary.contains("alipay #3") && summary.contains("expected ack, got retry (HTTP 400)"),
        "{summary}"
    );
    assert!(!summary.contains("refused"), "{summary}");
    assert!(summary.contains("answers: 2 ack, 2 retry, 0 HTTP error, 0 transport error"));
    assert!(
        summary.contains("requests/s") && summary.contains("latency: p50"),
        "{summary}"
    );

    let (code, json) = replay_json(&app.url(""), &[], &[&file]);
    assert_eq!(code, 1, "{json}");
    assert_eq!(json["mismatched_items"], 2, "{json}");
    assert_eq!(json["answers"]["ack"], 2, "{json}");
    assert_eq!(json["answers"]["retry"], 2, "{json}");
    let named: Vec<&str> = json["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["item"].as_str().unwrap())
        .collect();
    assert!(named[0].starts_with("alipay #2 "), "{named:?}");
    assert!(named[1].starts_with("alipay #3 "), "{named:?}");
    assert_eq!(json["mismatches"][1]["status"], 400, "{json}");

    // Only #1 and #2 were paid, once each.
    let credits = "SELECT COUNT(*) AS n FROM ledger WHERE user_id = 'u-expect'";
    assert_eq!(count(&app.pool, credits), 2);

    // The same file with honest expectations passes.
    edited[1]["expect"] = "ack".into();
    edited[2]["expect"] = "retry".into();
    write_items(&file, &edited);
    let (code, out) = replay(&app.url(""), &[], &[&file]);
    assert_eq!(code, 0, "{}", text(&out));
}

#[test]
fn unknown_channels_are_http_errors_and_a_dead_server_is_a_transport_error() {
    let db = TestDb::new(Backend::Sqlite);
    let app = spawn_demo(&db);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nowhere.json");
    let item = serde_json::json!({
        "channel": "nowhere",
        "headers": {"Content-Type": "application/json"},
        "body": "{}",
    });
    std::fs::write(&file, serde_json::json!([item, item]).to_string()).unwrap();

    let (code, json) = replay_json(&app.url(""), &["--repeat", "3"], &[&file]);
    assert_eq!(code, 0, "no item states an answer: {json}");
    assert_eq!(json["answers"]["http_error"], 6, "{json}");
    assert_eq!(json["answers"]["retry"], 0, "{json}");

    let nobody = format!("http://127.0.0.1:{}", free_port());
    let (code, json) = replay_json(&nobody, &["--timeout", "5"], &[&file]);
    assert_eq!(
        code, 0,
        "transport errors alone do not fail the run: {json}"
    );
    assert_eq!(json["answers"]["transport_error"], 2, "{json}");
    assert!(json["latency_ms"].is_null(), "{json}");
    let error = json["first_transport_error"].as_str().unwrap();
    assert!(error.to_lowercase().contains("refused"), "{error}");

    let mut expecting = item.clone();
    expecting["expect"] = "retry".into();
    std::fs::write(&file, serde_json::json!([item, expecting]).to_string()).unwrap();
    let (code, json) = replay_json(&nobody, &[], &[&file]);
    assert_eq!(code, 1, "{json}");
    assert_eq!(json["mismatches"][0]["got"], "transport error", "{json}");
    let (code, json) = replay_json(&app.url(""), &[], &[&file]);
    assert_eq!(code, 1, "{json}");
    assert_eq!(json["mismatches"][0]["got"], "HTTP error", "{json}");
    assert_eq!(json["mismatches"][0]["status"], 404, "{json}");
}

#[test]
fn a_bad_fixture_file_is_refused_before_anything_is_sent() {
    let db = TestDb::new(Backend::Sqlite);
    let app = spawn_demo(&db);
    let dir = tempfile::tempdir().unwrap();
    let file: PathBuf = dir.path().join("bad.ndjson");
    let good = r#"{"channel": "gateway", "headers": {}, "body": "{}", "expect": "retry"}"#;
    std::fs::write(&file, format!("{good}\n{{\"channel\": \"gateway\"}}\n")).unwrap();
    let (code, out) = replay(&app.url(""), &[], &[&file]);
    let message = text(&out);
    assert_eq!(code, 1, "{message}");
    assert!(message.contains("bad.ndjson:2:"), "{message}");
    assert!(message.contains("body"), "{message}");
    let nothing = "SELECT COUNT(*) AS n FROM notifications";
    assert_eq!(count(&app.pool, nothing), 0, "nothing was sent");
}

#[test]
fn fixtures_refuse_a_mismatched_private_key_without_creating_orders() {
    let db = TestDb::new(Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never.ndjson");
    let wrong_key = format!("{DEMO_KEYS}/wechatpay-test-private-key.pem");
    let made = payhook(&[
        "fixtures",
        "--config",
        DEMO_CONFIG,
        "--database-url",
        &db.url,
        "--channel",
        "alipay",
        "--count",
        "5",
        "--private-key",
        &wrong_key,
        "--out",
        &out.to_string_lossy(),
    ]);
    let message = text(&made);
    assert_eq!(made.status.code(), Some(1), "{message}");
    assert!(message.contains("would refuse"), "{message}");
    assert!(message.contains("--private-key"), "{message}");
    assert!(!out.exists());
    let pool = db.pool(1);
    assert_eq!(count(&pool, "SELECT COUNT(*) AS n FROM orders"), 0);
}
