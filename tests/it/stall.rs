//! A stalled database: a session holds `accounts` locked whole for 20 s (PostgreSQL's
//! `ACCESS EXCLUSIVE`, MariaDB's `LOCK TABLES ... WRITE`); notifications in that window are
//! answered "retry" within 10 s, never held until their provider gives up, and credited once after.

use std::time::{Duration, Instant};

use chrono::Utc;
use diesel::connection::SimpleConnection;
use diesel::Connection;

use crate::common::{
    count, create_order, spawn_app, standard_webhooks_payment, Backend, TestApp, TestDb,
};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A connection of its own that holds `accounts` locked whole until it is dropped.
#[allow(dead_code)] // Held for its lock, never read.
enum Holder {
    Postgresql(diesel::PgConnection),
    Mysql(diesel::MysqlConnection),
}

fn lock_accounts(db: &TestDb) -> Holder {
    lock_tables(db, &["accounts"])
}

/// `tables` locked whole, against reads too, until the holder is dropped.
fn lock_tables(db: &TestDb, tables: &[&str]) -> Holder {
    match db.backend {
        Backend::Postgresql => {
            let mut c = diesel::PgConnection::establish(&db.url).unwrap();
            c.batch_execute(&format!(
                "BEGIN; LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
                tables.join(", ")
            ))
            .unwrap();
            Holder::Postgresql(c)
        }
        Backend::Mysql => {
            let mut c = diesel::MysqlConnection::establish(&db.url).unwrap();
            let each: Vec<String> = tables.iter().map(|t| format!("{t} WRITE")).collect();
            c.batch_execute(&format!("LOCK TABLES {}", each.join(", ")))
                .unwrap();
            Holder::Mysql(c)
        }
        Backend::Sqlite => unreachable!("SQLite has no table locks"),
    }
}

fn signed(order_no: &str, minor: i64, id: &str) -> (Vec<(String, String)>, String) {
    standard_webhooks_payment(SECRET, order_no, minor, id)
}

/// Delivers the signed payment of 1.00 for `order`; returns the status and how long it took.
fn deliver(client: &reqwest::blocking::Client, app: &TestApp, order: &str) -> (u16, Duration) {
    let (headers, body) = signed(order, 100, &format!("msg-{order}"));
    let mut req = client.post(app.url("/notify/gateway"));
    for (k, v) in &headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let started = Instant::now();
    let status = req.body(body).send().unwrap().status().as_u16();
    (status, started.elapsed())
}

#[test]
fn a_table_locked_for_twenty_seconds_gets_retries_within_ten_seconds_and_credits_once_after_postgresql(
) {
    locked_for_twenty_seconds(TestDb::new(Backend::Postgresql));
}

#[test]
fn a_table_locked_for_twenty_seconds_gets_retries_within_ten_seconds_and_credits_once_after_mariadb(
) {
    locked_for_twenty_seconds(TestDb::new(Backend::Mysql));
}

fn locked_for_twenty_seconds(db: TestDb) {
    let config =
        format!("[channels.gateway]\nprovider = \"standard-webhooks\"\nsecrets = [\"{SECRET}\"]\n");
    let app = spawn_app(&db, &config, Utc::now());
    let orders: Vec<String> = (0..4)
        .map(|_| {
            let mut conn = app.pool.get().unwrap();
            create_order(&mut conn, "stall", "gateway", "1.00", "CNY", None).to_string()
        })
        .collect();
    let holder = lock_accounts(&db);
    let locked = Instant::now();
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let send = |order: &str| deliver(&client, &app, order);
    // Four waves of the same four notifications while the lock is held, 5 s apart.
    let mut during: Vec<(u16, Duration)> = Vec::new();
    for wave in 0..4u64 {
        std::thread::sleep(Duration::from_secs(5 * wave).saturating_sub(locked.elapsed()));
        during.extend(std::thread::scope(|s| {
            let handles: Vec<_> = orders.iter().map(|o| s.spawn(|| send(o))).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        }));
    }
    let held = locked.elapsed();
    let worst = during.iter().map(|(_, t)| *t).max().unwrap();
    let retried = during
        .iter()
        .filter(|(s, _)| !(200..300).contains(s))
        .count();
    std::thread::sleep(Duration::from_secs(20).saturating_sub(locked.elapsed()));
    drop(holder);
    let after: Vec<(u16, Duration)> = orders.iter().map(|o| send(o)).collect();
    let credited = count(
        &app.pool,
        "SELECT COUNT(*) AS n FROM ledger WHERE kind = 'credit'",
    );
    // Straight to stderr, past the harness's capture: the figures show even when it passes.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "{:?}, accounts locked 20 s: {} sent while locked (over {held:?}), {retried} answered \
         retry, worst answer {worst:?}; after: {} sent, {} acked; {credited} credited",
        db.backend,
        during.len(),
        after.len(),
        after.iter().filter(|(s, _)| (200..300).contains(s)).count()
    );
    assert_eq!(
        retried,
        during.len(),
        "acked while the table was locked: {during:?}"
    );
    // Every answer comes well before the provider gives up: a batch that meets the lock waits
    // `lock_timeout` once, and its notifications are then tried alone with short waits.
    assert!(worst < Duration::from_secs(10), "worst answer {worst:?}");
    assert!(
        after.iter().all(|(s, _)| (200..300).contains(s)),
        "{after:?}"
    );
    assert_eq!(credited, 4);
}

#[test]
fn a_repeat_of_a_committed_credit_is_acked_from_memory_while_the_books_are_locked_postgresql() {
    repeat_from_memory(TestDb::new(Backend::Postgresql));
}

#[test]
fn a_repeat_of_a_committed_credit_is_acked_from_memory_while_the_books_are_locked_mariadb() {
    repeat_from_memory(TestDb::new(Backend::Mysql));
}

/// The writer remembers a credit as it commits it, so a repeat needs no database: with every
/// table it would read locked, the repeat is acked at once while a new notification is not.
fn repeat_from_memory(db: TestDb) {
    let config =
        format!("[channels.gateway]\nprovider = \"standard-webhooks\"\nsecrets = [\"{SECRET}\"]\n");
    let app = spawn_app(&db, &config, Utc::now());
    let (first, second) = {
        let mut conn = app.pool.get().unwrap();
        (
            create_order(&mut conn, "memory", "gateway", "1.00", "CNY", None).to_string(),
            create_order(&mut conn, "memory", "gateway", "1.00", "CNY", None).to_string(),
        )
    };
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let send = |order: &str| deliver(&client, &app, order);
    let acked = |status: u16| (200..300).contains(&status);
    assert!(acked(send(&first).0), "the first delivery is credited");
    let holder = lock_tables(&db, &["accounts", "orders", "notifications"]);
    let (repeat, took) = send(&first);
    let (new, _) = send(&second);
    drop(holder);
    assert!(
        acked(repeat),
        "the repeat was not answered from memory: {repeat}"
    );
    assert!(took < Duration::from_secs(1), "the repeat took {took:?}");
    assert_ne!(
        new, 200,
        "the tables were not locked: the test proves nothing"
    );
    assert_eq!(
        count(
            &app.pool,
            "SELECT COUNT(*) AS n FROM ledger WHERE kind = 'credit'"
        ),
        1
    );
}
