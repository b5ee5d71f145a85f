//! What an operator sees of a running `payhook serve`: log lines with request ids, metrics that
//! move, and a clean stop on SIGTERM with nothing half-done.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{
    free_port, payhook, standard_webhooks_payment, standard_webhooks_request, Backend, TestDb,
};
use serde_json::Value;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const ADMIN_TOKEN: &str = "operate-admin-token-91d2";

fn write_config(dir: &Path, db: &TestDb, port: u16) -> std::path::PathBuf {
    let path = dir.join("payhook.toml");
    std::fs::write(
        &path,
        format!(
            "bind = \"127.0.0.1:{port}\"\ndatabase_url = {:?}\nadmin_token = {ADMIN_TOKEN:?}\n\
             [channels.gateway]\nprovider = \"standard-webhooks\"\nsecrets = [{SECRET:?}]\n",
            db.url
        ),
    )
    .unwrap();
    path
}

struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if reqwest::blocking::get(format!("http://127.0.0.1:{port}/readyz"))
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("payhook on port {port} never became ready");
}

fn create_order(config: &Path, order_no: &str, user: &str, amount: &str) {
    let out = payhook()
        .args(["order", "create", "--config"])
        .arg(config)
        .args([
            "--user-id",
            user,
            "--amount",
            amount,
            "--currency",
            "CNY",
            "--channel",
            "gateway",
            "--order-no",
            order_no,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let order: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(order["order_no"], order_no);
    assert_eq!(order["status"], "pending");
}

/// A Standard Webhooks request paying `order_no`, signed now.
fn signed(order_no: &str, minor: i64, id: &str) -> (Vec<(String, String)>, String) {
    standard_webhooks_payment(SECRET, order_no, minor, id)
}

/// A Standard Webhooks request refunding `minor` of `order_no`, paid by transaction `tx-{paid_by}`.
fn signed_refund(
    order_no: &str,
    minor: i64,
    paid_by: &str,
    id: &str,
) -> (Vec<(String, String)>, String) {
    let body = format!(
        "{{\"type\":\"payment.refunded\",\"data\":{{\"order_no\":\"{order_no}\",\"refund_id\":\"rf-{id}\",\"amount\":{minor},\"currency\":\"CNY\",\"transaction_id\":\"tx-{paid_by}\"}}}}"
    );
    standard_webhooks_request(SECRET, id, body)
}

fn send(
    client: &reqwest::blocking::Client,
    port: u16,
    headers: &[(String, String)],
    body: &str,
    request_id: Option<&str>,
) -> reqwest::Result<reqwest::blocking::Response> {
    let mut req = client.post(format!("http://127.0.0.1:{port}/notify/gateway"));
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    if let Some(id) = request_id {
        req = req.header("X-Request-Id", id);
    }
    req.body(body.to_owned()).send()
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

#[test]
fn log_lines_carry_the_request_id_and_outcome_and_metrics_move() {
    let db = TestDb::new(Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), &db, port);
    let log = dir.path().join("payhook.log");
    let _server = Served(
        payhook()
            .args(["serve", "--log-format", "json", "--log-file"])
            .arg(&log)
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_ready(port);
    create_order(&config, "LOG-1", "logger", "4.20");
    let client = reqwest::blocking::Client::new();
    let before = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();

    let (headers, body) = signed("LOG-1", 420, "msg_log_1");
    let resp = send(&client, port, &headers, &body, Some("nginx-req-42")).unwrap();
    assert!(resp.status().is_success());
    assert_eq!(resp.headers()["x-request-id"], "nginx-req-42");
    let resp = send(&client, port, &headers, &body, None).unwrap();
    let generated = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(
        !generated.is_empty(),
        "a request id is generated when none came"
    );
    let (refund_headers, refund_body) = signed_refund("LOG-1", 100, "msg_log_1", "msg_refund_1");
    let resp = send(
        &client,
        port,
        &refund_headers,
        &refund_body,
        Some("nginx-req-44"),
    )
    .unwrap();
    assert!(resp.status().is_success());
    let mut tampered = headers.clone();
    tampered[3].1 = "v1,AAAA".into();
    assert!(!send(&client, port, &tampered, &body, Some("nginx-req-43"))
        .unwrap()
        .status()
        .is_success());

    let after = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let credited = "payhook_notifications_total{channel=\"gateway\",outcome=\"credited\"}";
    let duplicate = "payhook_notifications_total{channel=\"gateway\",outcome=\"already_paid\"}";
    let rejected = "payhook_notifications_total{channel=\"gateway\",outcome=\"rejected\"}";
    assert_eq!(
        metric(&after, credited) - metric(&before, credited),
        1.0,
        "{after}"
    );
    assert_eq!(
        metric(&after, duplicate) - metric(&before, duplicate),
        1.0,
        "{after}"
    );
    assert_eq!(
        metric(&after, rejected) - metric(&before, rejected),
        1.0,
        "{after}"
    );
    let refunded =
        "payhook_money_back_total{channel=\"gateway\",kind=\"refund\",outcome=\"refunded\"}";
    assert_eq!(
        metric(&after, refunded) - metric(&before, refunded),
        1.0,
        "{after}"
    );
    let acks = "payhook_answers_total{channel=\"gateway\",answer=\"ack\"}";
    assert_eq!(metric(&after, acks) - metric(&before, acks), 3.0);
    assert!(after.contains("payhook_apply_seconds_bucket"), "{after}");
    assert!(
        after.contains("payhook_pool_connections{state=\"in_use\"}"),
        "{after}"
    );

    // The log file has one JSON object per line, and the credit's line says what happened.
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines: Vec<Value> = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
            .collect();
        if lines.iter().filter(|l| l["msg"] == "notification").count() >= 4
            || Instant::now() > deadline
        {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let credit = lines
        .iter()
        .find(|l| l["request_id"] == "nginx-req-42")
        .expect("a line for the request id nginx set");
    assert_eq!(credit["outcome"], "credited");
    assert_eq!(credit["answer"], "ack");
    assert_eq!(credit["order_no"], "LOG-1");
    assert_eq!(credit["channel"], "gateway");
    assert_eq!(credit["notification_id"], "msg_log_1");
    assert_eq!(credit["amount"], 420);
    assert_eq!(credit["level"], "INFO");
    assert!(credit["duration_ms"].is_i64());
    let dup = lines
        .iter()
        .find(|l| l["request_id"] == generated.as_str())
        .expect("generated id logged");
    assert_eq!(dup["outcome"], "already_paid");
    let rejected = lines
        .iter()
        .find(|l| l["request_id"] == "nginx-req-43")
        .expect("rejection logged");
    assert_eq!(rejected["outcome"], "rejected");
    assert_eq!(rejected["level"], "WARN");
    // The stored row's id, which `payhook explain` takes.
    let error = rejected["error"].as_str().unwrap_or_default();
    assert!(error.contains("(stored as notification "), "{error}");
    let refund = lines
        .iter()
        .find(|l| l["request_id"] == "nginx-req-44")
        .expect("the refund is logged");
    assert_eq!(
        (&refund["outcome"], &refund["kind"], &refund["anomaly"]),
        (
            &Value::from("refunded"),
            &Value::from("refund"),
            &Value::from(false)
        )
    );

    let text = std::fs::read_to_string(&log).unwrap();
    for secret in [
        SECRET,
        SECRET.trim_start_matches("whsec_"),
        ADMIN_TOKEN,
        headers[3].1.as_str(),
    ] {
        assert!(
            !text.contains(secret),
            "a secret or signature reached the log: {secret}"
        );
    }
    assert!(
        !text.contains("payment.succeeded"),
        "bodies are never logged"
    );
}

/// SIGTERM while notifications are in flight: the server drains and exits 0, every ack it gave is
/// a committed credit, and the books balance.
#[test]
fn sigterm_during_load_drains_and_leaves_balanced_books() {
    let db = TestDb::new(Backend::Postgresql);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), &db, port);
    let mut server = payhook()
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_ready(port);
    const ORDERS: usize = 60;
    for i in 0..ORDERS {
        create_order(&config, &format!("TERM-{i}"), "term", "1.00");
    }
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..4)
        .map(|t| {
            let (acked, stop) = (acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                for i in (t..ORDERS).step_by(4) {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let order = format!("TERM-{i}");
                    let (headers, body) = signed(&order, 100, &format!("msg_term_{i}"));
                    if let Ok(resp) = send(&client, port, &headers, &body, None) {
                        if resp.status().is_success() {
                            acked.lock().unwrap().push(order);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(150));
    let pid = server.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "payhook did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    assert!(status.success(), "SIGTERM ends with exit 0: {status:?}");

    let pool = db.pool(2);
    let acked = acked.lock().unwrap().clone();
    assert!(
        !acked.is_empty(),
        "some notifications were acked before the stop"
    );
    for order in &acked {
        let credited = crate::common::count(
            &pool,
            &format!("SELECT COUNT(*) AS n FROM ledger WHERE order_no = '{order}'"),
        );
        assert_eq!(credited, 1, "{order} was acked, so it must be credited");
    }
    let out = payhook()
        .args(["verify", "--database-url", &db.url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    eprintln!(
        "sigterm: {} of {ORDERS} notifications acked before the stop",
        acked.len()
    );
}
