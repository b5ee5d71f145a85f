//! What the storage layer promises the crediting path, against real databases: a frozen peer's
//! locks hold up only its own orders, acks wait for the flush whatever the server's default, a
//! commit is a commit, writers take rows in one order, and SQLite databases do not queue on each
//! other; a full SQLite database credits nothing, and its connection recovers.

use std::sync::mpsc;
use std::time::Duration;

use crate::common::{count, create_order, now, Backend, TestDb};
use diesel::connection::{Connection, SimpleConnection, TransactionManager};
use diesel::PgConnection;
use payhook::config::Settings;
use payhook::crediting::Outcome;
use payhook::crediting::{commit_batch, ApplyJob, CountJob};
use payhook::db::{self, DbConnection, Pool};
use payhook::domain::ids::{ChannelName, OrderNo};
use payhook::domain::money::{AmountMinor, Currency};
use payhook::domain::notification::{Notification, NotificationKind};

/// A paid Alipay notification of 1.00 CNY for `order_no`, its id derived from `trade_no`.
pub(crate) fn paid(order_no: &OrderNo, trade_no: &str) -> Notification {
    Notification {
        channel: ChannelName::parse("alipay").unwrap(),
        notification_id: format!("n-{trade_no}"),
        order_no: Some(order_no.clone()),
        provider_trade_no: Some(trade_no.to_owned()),
        amount: Some(AmountMinor::new(100).unwrap()),
        currency: Some(Currency::parse("CNY").unwrap()),
        kind: NotificationKind::Paid,
        merchant_mismatch: None,
    }
}

fn job(n: &Notification) -> ApplyJob {
    ApplyJob::new(n.clone(), "{}".to_owned(), "raw body".into(), now())
}

/// A migrated pool with these `[pool]` settings.
fn pool_with(db: &TestDb, pool_toml: &str) -> Pool {
    // Only the pool is built here; the commit deadline merely has to pass validation.
    let settings =
        Settings::from_toml(&format!("[commit]\ntimeout_secs = 60\n[pool]\n{pool_toml}")).unwrap();
    let pool = db::connect(&db.url, &settings.pool).expect("connect");
    db::migrate(&mut pool.get().unwrap()).expect("migrate");
    pool
}

/// `n` pending Alipay orders of 1.00, each of its own user `{prefix}-{i}`.
fn orders_of(conn: &mut db::DbConnection, prefix: &str, n: usize) -> Vec<OrderNo> {
    (0..n)
        .map(|i| {
            create_order(
                conn,
                &format!("{prefix}-{i}"),
                "alipay",
                "1.00",
                "CNY",
                None,
            )
        })
        .collect()
}

/// A connection of another process, holding `sql`'s row locks in an open transaction.
fn frozen_peer(db: &TestDb, sql: &str) -> PgConnection {
    let mut peer = PgConnection::establish(&db.url).unwrap();
    peer.batch_execute(&format!("BEGIN; {sql}")).unwrap();
    peer
}

/// The same on either networked backend; dropped, it lets go.
pub(crate) enum Peer {
    Postgresql(PgConnection),
    Mysql(diesel::MysqlConnection),
}

impl Peer {
    pub(crate) fn batch_execute(&mut self, sql: &str) -> diesel::QueryResult<()> {
        match self {
            Peer::Postgresql(c) => c.batch_execute(sql),
            Peer::Mysql(c) => c.batch_execute(sql),
        }
    }
}

pub(crate) fn frozen_peer_on(db: &TestDb, sql: &str) -> Peer {
    match db.backend {
        Backend::Mysql => {
            let mut peer = diesel::MysqlConnection::establish(&db.url).unwrap();
            peer.batch_execute(&format!("BEGIN; {sql}")).unwrap();
            Peer::Mysql(peer)
        }
        _ => Peer::Postgresql(frozen_peer(db, sql)),
    }
}

/// `f` on a thread of its own; its result, or `None` if it took longer than `limit`.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(f());
    });
    result.recv_timeout(limit).ok()
}

#[test]
fn a_row_locked_by_a_frozen_peer_holds_up_only_its_own_order() {
    for backend in [Backend::Postgresql, Backend::Mysql] {
        a_row_locked_by_a_frozen_peer_holds_up_only_its_own_order_on(TestDb::new(backend));
    }
}

fn a_row_locked_by_a_frozen_peer_holds_up_only_its_own_order_on(db: TestDb) {
    let pool = pool_with(
        &db,
        "max_size = 4\nlock_timeout_secs = 1\nstatement_timeout_secs = 30\n",
    );
    let mut conn = pool.get().unwrap();
    let stuck = create_order(&mut conn, "u-stuck", "alipay", "1.00", "CNY", None);
    let free = create_order(&mut conn, "u-free", "alipay", "1.00", "CNY", None);
    drop(conn);
    let _peer = frozen_peer_on(
        &db,
        &format!("SELECT 1 FROM orders WHERE order_no = '{stuck}' FOR UPDATE"),
    );

    let jobs = [job(&paid(&stuck, "T-stuck")), job(&paid(&free, "T-free"))];
    let writer = pool.clone();
    let results = within(Duration::from_secs(60), move || {
        commit_batch(&mut writer.get().unwrap(), &jobs, &[])
    })
    .expect("the writer waited on the frozen peer's lock instead of giving up");
    assert!(
        results[0]
            .as_ref()
            .is_err_and(|e| e.to_string().contains("lock timeout")
                || e.to_string().contains("Lock wait timeout")),
        "{:?}",
        results[0]
    );
    assert_eq!(
        results[1].as_ref().map(|a| a.outcome).ok(),
        Some(Outcome::Credited)
    );
}

/// On PostgreSQL a repeat of a committed credit takes no row lock: repeats of payments whose orders
/// and accounts a frozen peer holds are answered at once, from the batch's read.
#[test]
fn repeats_are_answered_while_a_frozen_peer_holds_their_orders() {
    let db = TestDb::new(Backend::Postgresql);
    let pool = pool_with(
        &db,
        "max_size = 4\nlock_timeout_secs = 1\nstatement_timeout_secs = 30\n",
    );
    let mut conn = pool.get().unwrap();
    let orders = orders_of(&mut conn, "u-held", 2);
    let payments = [paid(&orders[0], "T-held-0"), paid(&orders[1], "T-held-1")];
    let jobs: Vec<ApplyJob> = payments.iter().map(job).collect();
    let first: Vec<_> = commit_batch(&mut conn, &jobs, &[])
        .into_iter()
        .map(|r| r.map(|a| a.outcome).ok())
        .collect();
    assert_eq!(first, [Some(Outcome::Credited); 2]);
    drop(conn);
    let _peer = frozen_peer(
        &db,
        &format!(
            "SELECT 1 FROM orders JOIN accounts USING (user_id, currency) \
             WHERE order_no IN ('{}', '{}') FOR UPDATE",
            orders[0], orders[1]
        ),
    );
    let writer = pool.clone();
    let results = within(Duration::from_secs(60), move || {
        commit_batch(&mut writer.get().unwrap(), &jobs, &[])
    })
    .expect("the repeats waited for the peer");
    let again: Vec<_> = results
        .iter()
        .map(|r| {
            r.as_ref()
                .map(|a| (a.outcome, a.delivery_count))
                .map_err(|e| e.to_string())
        })
        .collect();
    assert_eq!(
        again,
        [Ok((Outcome::AlreadyPaid, 2)), Ok((Outcome::AlreadyPaid, 2))]
    );
}

/// On PostgreSQL the row locks are taken in key order of the accounts, whatever order the orders
/// come in: with the second account held by a peer, the first is already locked while the
/// statement waits, so two writers never hold one each while waiting for the other's.
#[test]
fn row_locks_are_taken_in_key_order_whatever_the_order_of_the_orders() {
    let db = TestDb::new(Backend::Postgresql);
    let pool = pool_with(
        &db,
        "max_size = 4\nlock_timeout_secs = 5\nstatement_timeout_secs = 30\n",
    );
    let mut conn = pool.get().unwrap();
    let first = create_order(&mut conn, "k-1", "alipay", "1.00", "CNY", None);
    let second = create_order(&mut conn, "k-2", "alipay", "1.00", "CNY", None);
    drop(conn);
    let peer = frozen_peer(
        &db,
        "SELECT 1 FROM accounts WHERE user_id = 'k-2' FOR UPDATE",
    );
    let writer = pool.clone();
    let (second_no, first_no) = (second.to_string(), first.to_string());
    let locking = std::thread::spawn(move || {
        let mut conn = writer.get().unwrap();
        db::write_transaction(&mut conn, |conn| {
            payhook::store::lock_for_credits(conn, &[&second_no, &first_no])
        })
    });
    // While it waits for k-2, k-1 (first in key order) is held by it already.
    let mut probe = PgConnection::establish(&db.url).unwrap();
    let mut held = false;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(50));
        held = probe
            .batch_execute(
                "BEGIN; SELECT 1 FROM accounts WHERE user_id = 'k-1' FOR UPDATE NOWAIT; ROLLBACK",
            )
            .is_err();
        if held {
            break;
        }
        probe.batch_execute("ROLLBACK").ok();
    }
    drop(peer);
    assert!(locking.join().unwrap().is_ok());
    assert!(
        held,
        "k-1 was not locked before the statement waited for k-2"
    );
}

#[test]
fn a_frozen_payhook_session_loses_its_locks() {
    for backend in [Backend::Postgresql, Backend::Mysql] {
        a_frozen_payhook_session_loses_its_locks_on(TestDb::new(backend));
    }
}

fn a_frozen_payhook_session_loses_its_locks_on(db: TestDb) {
    let pool = pool_with(
        &db,
        "max_size = 2\nlock_timeout_secs = 1\nstatement_timeout_secs = 2\n",
    );
    let mut frozen = pool.get().unwrap();
    frozen
        .batch_execute("BEGIN; SELECT 1 FROM orders FOR UPDATE")
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let after = frozen.batch_execute("SELECT 1");
    assert!(
        after.is_err(),
        "a session idle in its transaction past statement_timeout_secs was left holding its locks"
    );
}

#[test]
fn crediting_sessions_wait_for_the_flush_whatever_the_database_default() {
    let db = TestDb::new(Backend::Postgresql);
    let name = db.url.rsplit('/').next().unwrap().to_owned();
    crate::common::pg_cluster().admin_exec(&format!(
        "ALTER DATABASE {name} SET synchronous_commit = off"
    ));
    let show = |conn: &mut dyn FnMut() -> String| conn();
    let mut plain = PgConnection::establish(&db.url).unwrap();
    let mut read_plain = || setting(&mut plain, "synchronous_commit");
    assert_eq!(show(&mut read_plain), "off", "the database default is off");

    let pool = pool_with(&db, "max_size = 2\n");
    let mut conn = pool.get().unwrap();
    let DbConnection::Postgresql(pg) = &mut *conn else {
        unreachable!()
    };
    assert_eq!(setting(pg, "synchronous_commit"), "on");
    assert_eq!(setting(pg, "lock_timeout"), "2s");
    assert_eq!(setting(pg, "statement_timeout"), "15s");
    // Migrations lift the timeouts while they run, and put them back.
    db::migrate(&mut conn).unwrap();
    let DbConnection::Postgresql(pg) = &mut *conn else {
        unreachable!()
    };
    assert_eq!(setting(pg, "lock_timeout"), "2s");
    assert_eq!(setting(pg, "statement_timeout"), "15s");

    // A pooler may hand a transaction a session that never saw payhook's settings: each write
    // transaction sets what an ack depends on itself.
    pg.batch_execute("SET synchronous_commit = off").unwrap();
    let inside = db::write_transaction(&mut conn, |conn| {
        let DbConnection::Postgresql(pg) = conn else {
            unreachable!()
        };
        Ok::<_, diesel::result::Error>(setting(pg, "synchronous_commit"))
    });
    assert_eq!(inside.unwrap(), "on");
}

/// An SQLite session waits for the disk at each commit and keeps its statement journals (what a
/// statement that fails halfway rolls back) in memory, not in a temporary file each batch.
#[test]
fn sqlite_sessions_commit_durably_and_journal_statements_in_memory() {
    use diesel::sql_types::BigInt;
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Setting {
        #[diesel(sql_type = BigInt)]
        value: i64,
    }
    let db = TestDb::new(Backend::Sqlite);
    let pool = pool_with(&db, "max_size = 2\n");
    let mut conn = pool.get().unwrap();
    let DbConnection::Sqlite(lite) = &mut *conn else {
        unreachable!()
    };
    let mut pragma = |name: &str| {
        diesel::sql_query(format!("SELECT {name} AS value FROM pragma_{name}()"))
            .get_result::<Setting>(lite)
            .unwrap()
            .value
    };
    assert_eq!(pragma("synchronous"), 2, "FULL");
    assert_eq!(pragma("temp_store"), 2, "MEMORY");
    assert_eq!(pragma("foreign_keys"), 1);
}

#[test]
fn crediting_statements_keep_one_plan_in_their_transactions_only() {
    let db = TestDb::new(Backend::Postgresql);
    let pool = pool_with(&db, "max_size = 2\n");
    let mut conn = pool.get().unwrap();
    let inside = db::write_transaction(&mut conn, |conn| {
        let DbConnection::Postgresql(pg) = conn else {
            unreachable!()
        };
        Ok::<_, diesel::result::Error>((
            setting(pg, "plan_cache_mode"),
            setting(pg, "enable_seqscan"),
        ))
    });
    assert_eq!(
        inside.unwrap(),
        ("force_generic_plan".to_owned(), "off".to_owned())
    );
    let DbConnection::Postgresql(pg) = &mut *conn else {
        unreachable!()
    };
    assert_eq!(
        (
            setting(pg, "plan_cache_mode"),
            setting(pg, "enable_seqscan")
        ),
        ("auto".to_owned(), "on".to_owned()),
        "other statements of the session plan as the server chooses"
    );
}

fn setting(conn: &mut PgConnection, name: &str) -> String {
    use diesel::sql_types::Text;
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Value {
        #[diesel(sql_type = Text)]
        value: String,
    }
    let rows: Vec<Value> = diesel::sql_query(format!("SELECT current_setting('{name}') AS value"))
        .load(conn)
        .unwrap();
    rows[0].value.clone()
}

fn a_transaction_left_open_inside_a_write_transaction_is_not_a_commit(db: TestDb) {
    let pool = db.pool(2);
    let mut conn = pool.get().unwrap();
    let result: Result<(), diesel::result::Error> = db::write_transaction(&mut conn, |conn| {
        <DbConnection as Connection>::TransactionManager::begin_transaction(conn)?;
        conn.batch_execute(
            "INSERT INTO accounts (user_id, currency, balance_minor, version, created_at, \
             updated_at) VALUES ('u-open', 'CNY', 1, 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
        )
    });
    assert!(
        result.is_err(),
        "a commit that left a transaction open was reported as done"
    );
    drop(conn);
    let kept = count(
        &pool,
        "SELECT COUNT(*) AS n FROM accounts WHERE user_id = 'u-open'",
    );
    assert_eq!(kept, 0);
    // The connection is left clean for its next user.
    let mut conn = pool.get().unwrap();
    let ok: Result<(), diesel::result::Error> =
        db::write_transaction(&mut conn, |conn| conn.batch_execute("SELECT 1"));
    assert!(ok.is_ok());
}

on_every_backend!(a_transaction_left_open_inside_a_write_transaction_is_not_a_commit);

#[test]
fn delivery_counts_never_wait_for_a_held_row() {
    for backend in [Backend::Postgresql, Backend::Mysql] {
        delivery_counts_never_wait_for_a_held_row_on(TestDb::new(backend));
    }
}

fn delivery_counts_never_wait_for_a_held_row_on(db: TestDb) {
    let pool = pool_with(
        &db,
        "max_size = 4\nlock_timeout_secs = 5\nstatement_timeout_secs = 30\n",
    );
    let mut conn = pool.get().unwrap();
    let orders = orders_of(&mut conn, "u-count", 10);
    let jobs: Vec<ApplyJob> = orders
        .iter()
        .enumerate()
        .map(|(i, o)| job(&paid(o, &format!("T-count-{i}"))))
        .collect();
    let mut rows: Vec<i64> = commit_batch(&mut conn, &jobs, &[])
        .into_iter()
        .map(|r| r.expect("credited").inbox_id)
        .collect();
    rows.sort_unstable();
    let (first, rest) = rows.split_first().unwrap();
    let deliveries = |pool: &Pool, id: i64| {
        count(
            pool,
            &format!("SELECT delivery_count AS n FROM notifications WHERE id = {id}"),
        )
    };

    // A session that may be frozen holds one row; the counts of the others go through at once,
    // well inside the lock timeout (5 s), and that one's is left for later.
    let mut peer = frozen_peer_on(
        &db,
        &format!("SELECT 1 FROM notifications WHERE id = {first} FOR UPDATE"),
    );
    let mut counts: Vec<CountJob> = Vec::new();
    for (i, id) in rows.iter().enumerate() {
        for _ in 0..(1 + i % 3) {
            counts.push(CountJob {
                inbox_id: *id,
                now: now(),
            });
        }
    }
    let started = std::time::Instant::now();
    let results = commit_batch(&mut conn, &[], &counts);
    let took = started.elapsed();
    assert!(results.is_empty());
    assert!(
        took < Duration::from_secs(2),
        "the counts waited {took:?} for the held row"
    );
    peer.batch_execute("ROLLBACK").unwrap();
    assert_eq!(deliveries(&pool, *first), 1, "the held row was counted");
    for (i, id) in rest.iter().enumerate() {
        assert_eq!(
            deliveries(&pool, *id),
            1 + 1 + ((i + 1) % 3) as i64,
            "row {id}"
        );
    }
}

#[test]
fn sqlite_databases_of_one_process_do_not_wait_for_each_other() {
    let (a, b) = (TestDb::new(Backend::Sqlite), TestDb::new(Backend::Sqlite));
    let (pool_a, pool_b) = (a.pool(2), b.pool(2));
    let (entered, in_a) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let mut conn = pool_a.get().unwrap();
        db::write_transaction(&mut conn, |_| {
            entered.send(()).unwrap();
            let _ = released.recv_timeout(Duration::from_secs(20));
            Ok::<(), diesel::result::Error>(())
        })
    });
    in_a.recv().unwrap();
    let wrote = within(Duration::from_secs(5), move || {
        let mut conn = pool_b.get().unwrap();
        db::write_transaction(&mut conn, |conn| conn.batch_execute("SELECT 1"))
    });
    release.send(()).unwrap();
    holder.join().unwrap().unwrap();
    assert!(
        wrote.is_some_and(|r| r.is_ok()),
        "a write to one SQLite database waited for a write to another"
    );
}

#[test]
fn a_full_sqlite_database_credits_nothing_and_the_same_connection_credits_once_there_is_room() {
    let db = TestDb::new(Backend::Sqlite);
    let pool = db.pool(2);
    let mut conn = pool.get().unwrap();
    let orders = orders_of(&mut conn, "u-full", 20);
    // Bodies that need pages of their own, so that every notification needs room.
    let jobs: Vec<ApplyJob> = orders
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let n = paid(o, &format!("T-full-{i}"));
            ApplyJob::new(n, "{}".to_owned(), vec![b'x'; 16 * 1024].into(), now())
        })
        .collect();
    // SQLite's page limit stands in for a full disk: both are SQLITE_FULL, "database or disk is
    // full".
    #[derive(diesel::QueryableByName)]
    struct Pages {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        page_count: i64,
    }
    let pages: Pages = diesel::RunQueryDsl::get_result(
        diesel::sql_query("SELECT page_count FROM pragma_page_count()"),
        &mut *conn,
    )
    .unwrap();
    conn.batch_execute(&format!("PRAGMA max_page_count = {}", pages.page_count))
        .unwrap();
    for result in commit_batch(&mut conn, &jobs, &[]) {
        let error = result.expect_err("a notification was credited on a full database");
        assert!(
            error.to_string().contains("database or disk is full"),
            "{error}"
        );
    }
    let ledger = "SELECT COUNT(*) AS n FROM ledger";
    assert_eq!(count(&pool, ledger), 0);

    // Room again: the same connection, no longer in any transaction, credits every one once.
    conn.batch_execute("PRAGMA max_page_count = 1073741823")
        .unwrap();
    for result in commit_batch(&mut conn, &jobs, &[]) {
        assert_eq!(result.expect("credited").outcome, Outcome::Credited);
    }
    assert_eq!(count(&pool, ledger), 20);
}
