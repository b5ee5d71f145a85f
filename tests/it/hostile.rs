//! Hostile clients against the real server: slow senders, oversized bodies, wrong methods and a
//! thousand connections at once. None of them may credit, crash the server or hold it hostage.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::{count, create_order, settled_count, spawn_app, Backend, TestApp, TestDb};
use chrono::{DateTime, Utc};
use serde_json::Value;

const VECTOR_TIME: i64 = 1_795_375_716;

fn paid_case() -> (String, Value) {
    let path = format!(
        "{}/tests/vectors/standard-webhooks.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let set: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    (
        set["secret"].as_str().unwrap().to_owned(),
        set["cases"][0].clone(),
    )
}

fn app(db: &TestDb) -> TestApp {
    app_with(db, "")
}

/// The server with `extra` config (whole tables) besides the gateway channel.
fn app_with(db: &TestDb, extra: &str) -> TestApp {
    let (secret, _) = paid_case();
    let config = format!(
        "[http]\nrequest_timeout_secs = 1\nbody_limit_bytes = 4096\n\
         [channels.gateway]\nprovider = \"standard-webhooks\"\nsecrets = [{secret:?}]\n{extra}"
    );
    spawn_app(
        db,
        &config,
        DateTime::<Utc>::from_timestamp(VECTOR_TIME, 0).unwrap(),
    )
}

/// The raw HTTP/1.1 request for the paid vector, closing the connection after the answer.
fn raw_request(case: &Value, body: &str) -> String {
    let mut head = String::from("POST /notify/gateway HTTP/1.1\r\nHost: payhook\r\nConnection: close\r\nContent-Type: application/json\r\n");
    for (k, v) in case["headers"].as_object().unwrap() {
        head.push_str(&format!("{k}: {}\r\n", v.as_str().unwrap()));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    head
}

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

/// Reads until the server answers or closes, for at most `limit`.
fn read_answer(stream: &mut TcpStream, limit: Duration) -> String {
    read_until_closed(stream, limit).0
}

/// What the server sent, and whether it then closed the connection (false when the socket was
/// still open after `limit`, or was reset).
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let closed = stream.read_to_end(&mut out).is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

#[test]
fn slow_clients_are_cut_off_by_the_request_timeout() {
    let db = TestDb::new(Backend::Sqlite);
    let app = app(&db);
    let (_, case) = paid_case();

    // Headers that never finish.
    let started = Instant::now();
    let mut stream = TcpStream::connect(app.addr).unwrap();
    stream
        .write_all(b"POST /notify/gateway HTTP/1.1\r\nHost: payhook\r\n")
        .unwrap();
    let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(10));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a slow head was held {:?}",
        started.elapsed()
    );
    // The server's client_request_timeout: actix-web answers 408, then closes.
    assert_eq!(
        status_line(&answer),
        "HTTP/1.1 408 Request Timeout",
        "{answer:?}"
    );
    assert!(
        closed,
        "the server left the connection open after: {answer:?}"
    );

    // A body that stops half-way.
    let body = case["body"].as_str().unwrap();
    let request = raw_request(&case, body);
    let cut = request.len() - body.len() / 2;
    let started = Instant::now();
    let mut stream = TcpStream::connect(app.addr).unwrap();
    stream.write_all(&request.as_bytes()[..cut]).unwrap();
    let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(10));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a slow body was held {:?}",
        started.elapsed()
    );
    // The handler's own body timeout (`read_body`): 408 with its reason, then the connection
    // closes, as the request asked.
    assert_eq!(
        status_line(&answer),
        "HTTP/1.1 408 Request Timeout",
        "{answer:?}"
    );
    assert!(answer.ends_with("body not received in time"), "{answer:?}");
    assert!(
        closed,
        "the server left the connection open after: {answer:?}"
    );
    assert_eq!(
        count(&app.pool, "SELECT COUNT(*) AS n FROM notifications"),
        0
    );
}

#[test]
fn bodies_over_the_limit_get_413_and_wrong_methods_405() {
    let db = TestDb::new(Backend::Sqlite);
    let app = app(&db);
    let client = reqwest::blocking::Client::new();
    let post = |len: usize| {
        client
            .post(app.url("/notify/gateway"))
            .header("Content-Type", "application/json")
            .body(vec![b'x'; len])
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(post(4097), 413);
    assert_ne!(
        post(4096),
        413,
        "a body at the limit is read (and refused for its signature)"
    );
    for method in ["GET", "PUT", "DELETE", "PATCH"] {
        let status = client
            .request(method.parse().unwrap(), app.url("/notify/gateway"))
            .send()
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(status, 405, "{method}");
    }
}

/// A thousand connections open at once, each delivering the same paid notification: every one is
/// answered with an ack, and the order is credited once.
#[test]
fn a_thousand_concurrent_connections_are_all_answered_and_credit_once() {
    let db = TestDb::new(Backend::Postgresql);
    // Every one is to be acked: the commit may take longer than a provider's patience when the
    // machine runs the rest of the suite beside it, and would be answered "retry".
    let app = app_with(&db, "[commit]\ntimeout_secs = 60\n");
    let (_, case) = paid_case();
    let order_no = case["out_trade_no"].as_str().unwrap();
    create_order(
        &mut app.pool.get().unwrap(),
        "thousand",
        "gateway",
        "12.34",
        "CNY",
        Some(order_no),
    );
    let request = raw_request(&case, case["body"].as_str().unwrap());

    let mut streams: Vec<TcpStream> = (0..1000)
        .map(|i| TcpStream::connect(app.addr).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    for stream in &mut streams {
        stream.write_all(request.as_bytes()).unwrap();
    }
    let mut statuses = std::collections::BTreeMap::new();
    for stream in &mut streams {
        let answer = read_answer(stream, Duration::from_secs(60));
        *statuses.entry(status_line(&answer).to_owned()).or_insert(0) += 1;
    }
    assert_eq!(statuses.len(), 1, "{statuses:?}");
    let (line, n) = statuses.iter().next().unwrap();
    assert!(line.starts_with("HTTP/1.1 2"), "{statuses:?}");
    assert_eq!(*n, 1000);
    assert_eq!(count(&app.pool, "SELECT COUNT(*) AS n FROM ledger"), 1);
    assert_eq!(
        settled_count(
            &app.pool,
            "SELECT delivery_count AS n FROM notifications",
            1000
        ),
        1000
    );
}

/// Requests that fail verification are stored apart from the writers' connections. Here every
/// rejection blocks on a row lock held by the test, as a flood could hold up that path: garbage is
/// still answered, and a genuine notification is still credited and acked.
#[test]
fn a_held_up_rejection_path_leaves_the_writers_their_connections() {
    use diesel::connection::SimpleConnection;
    use diesel::{Connection, PgConnection, RunQueryDsl};

    let db = TestDb::new(Backend::Postgresql);
    let app = app_with(
        &db,
        "[pool]\nmax_size = 2\nconnection_timeout_secs = 1\nrejection_max_size = 2\n",
    );
    let (_, case) = paid_case();
    create_order(
        &mut app.pool.get().unwrap(),
        "flooded",
        "gateway",
        "12.34",
        "CNY",
        Some(case["out_trade_no"].as_str().unwrap()),
    );
    let send_garbage = {
        let url = app.url("/notify/gateway");
        move || {
            reqwest::blocking::Client::new()
                .post(&url)
                .header("Content-Type", "application/json")
                .body("garbage")
                .send()
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(send_garbage(), 401, "the first copy makes the row");

    let mut locker = PgConnection::establish(&db.url).unwrap();
    locker
        .batch_execute(
            "BEGIN; SELECT id FROM notifications WHERE notification_id LIKE 'unverified:%' FOR UPDATE;",
        )
        .unwrap();
    let (answered, answers) = std::sync::mpsc::channel();
    let senders: Vec<_> = (0..6)
        .map(|_| {
            let (send_garbage, answered) = (send_garbage.clone(), answered.clone());
            std::thread::spawn(move || answered.send(send_garbage()).unwrap())
        })
        .collect();
    // Wait until the rejection path is full: two requests wait on the lock.
    #[derive(diesel::QueryableByName)]
    struct Waiting {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut watcher = PgConnection::establish(&db.url).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: Waiting = diesel::sql_query(
            "SELECT COUNT(*) AS n FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .get_result(&mut watcher)
        .unwrap();
        if waiting.n >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} waiting on the lock",
            waiting.n
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let request = raw_request(&case, case["body"].as_str().unwrap());
    let mut stream = TcpStream::connect(app.addr).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let answer = read_answer(&mut stream, Duration::from_secs(30));
    assert!(status_line(&answer).starts_with("HTTP/1.1 2"), "{answer:?}");
    assert_eq!(count(&app.pool, "SELECT COUNT(*) AS n FROM ledger"), 1);
    // The requests that found the rejection path full were answered without waiting for it.
    for _ in 0..4 {
        let status = answers.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(status, 401);
    }

    locker.batch_execute("ROLLBACK").unwrap();
    for sender in senders {
        sender.join().unwrap();
    }
    let statuses: Vec<u16> = answers.try_iter().collect();
    assert_eq!(statuses, [401, 401]);
}

on_every_backend!(rejected_requests_keep_the_newest_per_channel_and_leave_credits_alone);

/// Anyone can send requests that fail verification, so a channel keeps only its newest
/// `inbox.keep_rejected` of them: older ones are deleted as new ones arrive, every
/// min(keep_rejected, 64) stored. A genuine notification among them is credited and keeps its row,
/// and another channel's rejected requests are its own.
fn rejected_requests_keep_the_newest_per_channel_and_leave_credits_alone(db: TestDb) {
    use diesel::RunQueryDsl;

    let app = app_with(
        &db,
        "[inbox]\nkeep_rejected = 5\n\
         [channels.other]\nprovider = \"stripe\"\nsecrets = [\"whsec_igept++Kr45l40HJJToFBEaKempD9VAj\"]\n",
    );
    let (_, case) = paid_case();
    create_order(
        &mut app.pool.get().unwrap(),
        "flooded",
        "gateway",
        "12.34",
        "CNY",
        Some(case["out_trade_no"].as_str().unwrap()),
    );
    let client = reqwest::blocking::Client::new();
    let send = |channel: &str, body: String| -> u16 {
        client
            .post(app.url(&format!("/notify/{channel}")))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    let genuine = || -> u16 {
        let mut req = client
            .post(app.url("/notify/gateway"))
            .header("Content-Type", "application/json");
        for (k, v) in case["headers"].as_object().unwrap() {
            req = req.header(k.as_str(), v.as_str().unwrap());
        }
        req.body(case["body"].as_str().unwrap().to_owned())
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    let garbage = |i: usize| format!("{{\"garbage\":{i}}}");
    let key = |body: &str| {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body.as_bytes());
        format!("unverified:{}", hex::encode(digest.as_ref()))
    };
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        notification_id: String,
    }
    let rejected = |channel: &str| -> Vec<String> {
        diesel::sql_query(format!(
            "SELECT notification_id FROM notifications \
             WHERE channel = '{channel}' AND outcome = 'rejected' ORDER BY id"
        ))
        .load::<Row>(&mut *app.pool.get().unwrap())
        .unwrap()
        .into_iter()
        .map(|r| r.notification_id)
        .collect()
    };
    let newest = |from: usize, to: usize| -> Vec<String> {
        (from..to).map(|i| key(&garbage(i))).collect::<Vec<_>>()
    };

    for i in 0..12 {
        assert_eq!(send("gateway", garbage(i)), 401);
    }
    assert!(
        (200..300).contains(&genuine()),
        "the genuine notification is acked"
    );
    for i in 0..3 {
        assert!(send("other", garbage(i)) >= 400);
    }
    for i in 12..28 {
        assert_eq!(send("gateway", garbage(i)), 401);
    }
    // Pruned after the 25th: the newest five, and the three stored since.
    assert_eq!(rejected("gateway"), newest(20, 28));
    assert_eq!(send("gateway", garbage(28)), 401);
    // A resent body counts on its row, and towards the next prune.
    assert_eq!(send("gateway", garbage(27)), 401);
    // Pruned after the 30th: exactly the newest five.
    assert_eq!(rejected("gateway"), newest(24, 29));
    assert_eq!(
        rejected("other"),
        (0..3).map(|i| key(&garbage(i))).collect::<Vec<_>>()
    );

    // The credit and its notification are untouched, and a repeat is still a duplicate.
    assert_eq!(count(&app.pool, "SELECT COUNT(*) AS n FROM ledger"), 1);
    let verified = "SELECT COUNT(*) AS n FROM notifications WHERE verified = TRUE";
    assert_eq!(count(&app.pool, verified), 1);
    assert!((200..300).contains(&genuine()), "a repeat is acked");
    assert_eq!(count(&app.pool, "SELECT COUNT(*) AS n FROM ledger"), 1);
    assert_eq!(count(&app.pool, verified), 1);
    assert_eq!(
        count(
            &app.pool,
            "SELECT COUNT(*) AS n FROM orders WHERE status = 'paid'"
        ),
        1
    );
}
