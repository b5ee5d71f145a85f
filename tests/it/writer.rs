//! A writer's connection, against real databases: a writer busy with batch after batch keeps its
//! connection instead of checking one out of the pool (a ping) for each batch, and a kept
//! connection that the server has ended since costs no batch its credit. Delivery counts whose
//! rows were held are written once they are free, even when nothing else comes, and so are those
//! queued while no connection could be had.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use diesel::connection::{Connection, InstrumentationEvent, SimpleConnection};
use diesel::r2d2::{self, CustomizeConnection};
use diesel::PgConnection;
use payhook::books::inbox::Source;
use payhook::config::Settings;
use payhook::crediting::{Committer, Outcome};
use payhook::db::{self, DatabaseUrl, DbConnection, Manager, Pool, SessionSettings};
use payhook::domain::ids::OrderNo;
use payhook::domain::notification::Notification;

use crate::common::{count, create_order, now, settled_count, Backend, TestDb};
use crate::storage::{frozen_peer_on, paid};

/// payhook's own session settings, and a count of the pool's checks (`SELECT 1`) on every
/// connection.
#[derive(Debug)]
struct CountingPings {
    settings: SessionSettings,
    pings: Arc<AtomicUsize>,
}

impl CustomizeConnection<DbConnection, r2d2::Error> for CountingPings {
    fn on_acquire(&self, conn: &mut DbConnection) -> Result<(), r2d2::Error> {
        self.settings.on_acquire(conn)?;
        let pings = Arc::clone(&self.pings);
        conn.set_instrumentation(move |event: InstrumentationEvent<'_>| {
            if let InstrumentationEvent::StartQuery { query, .. } = event {
                let sql = query.to_string();
                if sql.split(" -- binds:").next().map(str::trim) == Some("SELECT 1") {
                    pings.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(())
    }
}

/// A pool built as payhook builds it (checked on checkout), whose pings are counted.
fn counted_pool(db: &TestDb) -> (Pool, Arc<AtomicUsize>) {
    let settings = Settings::from_toml("[pool]\nmax_size = 3\n").unwrap();
    let pings = Arc::new(AtomicUsize::new(0));
    let manager = Manager::new(DatabaseUrl::parse(&db.url).unwrap()).unwrap();
    let pool = r2d2::Pool::builder()
        .max_size(3)
        .test_on_check_out(true)
        .connection_customizer(Box::new(CountingPings {
            settings: SessionSettings::new(&settings.pool),
            pings: Arc::clone(&pings),
        }))
        .build(manager)
        .unwrap();
    db::migrate(&mut pool.get().unwrap()).unwrap();
    (pool, pings)
}

/// Submits `n` to `committer` and waits for its commit.
fn submit(committer: &Committer, n: Notification) -> Outcome {
    let applied = actix_web::rt::System::new().block_on(committer.submit(
        n,
        "{}".to_owned(),
        "raw body".into(),
        Source::Notify,
        now(),
    ));
    applied.expect("committed").outcome
}

/// Batches one after another, each waited for, as a writer meets them when callers come one at a
/// time: the pool checks the writer's connection once, not once per batch. Once the writer has
/// waited a second for more, the connection is back in the pool.
fn a_busy_writer_keeps_its_connection_between_batches(db: TestDb) {
    let (pool, pings) = counted_pool(&db);
    let orders: Vec<OrderNo> = {
        let mut conn = pool.get().unwrap();
        (0..10)
            .map(|i| {
                create_order(
                    &mut conn,
                    &format!("kept-{i}"),
                    "alipay",
                    "1.00",
                    "CNY",
                    None,
                )
            })
            .collect()
    };
    let committer = Committer::start(pool.clone(), 1, 64, Duration::from_secs(30)).unwrap();
    pings.store(0, Ordering::Relaxed);
    for (i, order) in orders.iter().enumerate() {
        assert_eq!(
            submit(&committer, paid(order, &format!("K{i}"))),
            Outcome::Credited
        );
    }
    // One check, and one more for each pause of a second or more on a busy machine.
    let pinged = pings.load(Ordering::Relaxed);
    assert!((1..=3).contains(&pinged), "{pinged} checks for ten batches");
    assert_eq!(
        count(
            &pool,
            "SELECT COUNT(*) AS n FROM ledger WHERE user_id LIKE 'kept-%'"
        ),
        10
    );
    std::thread::sleep(Duration::from_millis(1500));
    let state = pool.state();
    assert_eq!(
        state.idle_connections, state.connections,
        "an idle writer holds no connection"
    );
}

crate::on_every_backend!(a_busy_writer_keeps_its_connection_between_batches);

/// The server ends the writer's kept connection between two batches (a restart, a failover, an
/// operator's `pg_terminate_backend`): the next notification is still credited, not answered
/// "retry", as it was when every batch checked its connection out of the pool.
#[test]
fn a_kept_connection_the_server_ended_costs_no_batch_its_credit() {
    let db = TestDb::new(Backend::Postgresql);
    let (pool, _) = counted_pool(&db);
    let (first, second) = {
        let mut conn = pool.get().unwrap();
        (
            create_order(&mut conn, "ended-1", "alipay", "1.00", "CNY", None),
            create_order(&mut conn, "ended-2", "alipay", "1.00", "CNY", None),
        )
    };
    let committer = Committer::start(pool.clone(), 1, 64, Duration::from_secs(30)).unwrap();
    assert_eq!(submit(&committer, paid(&first, "E1")), Outcome::Credited);

    let mut admin = PgConnection::establish(&db.url).unwrap();
    admin
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
             AND backend_type = 'client backend'",
        )
        .unwrap();
    let mut others = || {
        use diesel::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        diesel::sql_query(
            "SELECT COUNT(*) AS n FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
             AND backend_type = 'client backend'",
        )
        .get_result::<N>(&mut admin)
        .unwrap()
        .n
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while others() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(others(), 0, "the writer's session was ended");

    assert_eq!(submit(&committer, paid(&second, "E2")), Outcome::Credited);
    assert_eq!(
        count(
            &pool,
            "SELECT COUNT(*) AS n FROM ledger WHERE user_id IN ('ended-1', 'ended-2')"
        ),
        2
    );
}

/// A repeat's delivery count meets its inbox row held by another session and is left for later;
/// the session lets go and nothing else arrives: the writer writes the count all the same.
#[test]
fn a_count_left_for_later_is_written_when_nothing_else_comes() {
    for backend in [Backend::Postgresql, Backend::Mysql] {
        a_count_left_for_later_is_written_when_nothing_else_comes_on(TestDb::new(backend));
    }
}

fn a_count_left_for_later_is_written_when_nothing_else_comes_on(db: TestDb) {
    let (pool, _) = counted_pool(&db);
    let order = {
        let mut conn = pool.get().unwrap();
        create_order(&mut conn, "later-1", "alipay", "1.00", "CNY", None)
    };
    let committer = Committer::start(pool.clone(), 1, 64, Duration::from_secs(30)).unwrap();
    let notification = paid(&order, "L1");
    assert_eq!(submit(&committer, notification.clone()), Outcome::Credited);
    let deliveries = "SELECT delivery_count AS n FROM notifications WHERE notification_id = 'n-L1'";

    let mut peer = frozen_peer_on(
        &db,
        "SELECT 1 FROM notifications WHERE notification_id = 'n-L1' FOR UPDATE",
    );
    for _ in 0..2 {
        submit(&committer, notification.clone());
    }
    // The repeats were answered; their counts could not be written while the row was held.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        count(&pool, deliveries),
        1,
        "a count went through a held row"
    );
    peer.batch_execute("ROLLBACK").unwrap();
    assert_eq!(settled_count(&pool, deliveries, 3), 3);
}

/// One writer waits on a row a frozen peer holds; the notifications that come meanwhile, whatever
/// their orders, are committed by the other writer before that wait ends: the writers share one
/// queue, and a free writer takes what is queued. A second delivery of the held order does not
/// hold up the other writer too: it is set aside, tried with a short lock wait, and answered.
#[test]
fn a_writer_held_up_by_a_frozen_peer_leaves_the_rest_to_the_other() {
    let db = TestDb::new(Backend::Postgresql);
    let settings = Settings::from_toml(
        "[commit]\ntimeout_secs = 60\n\
         [pool]\nmax_size = 4\nlock_timeout_secs = 8\nstatement_timeout_secs = 30\n",
    )
    .unwrap();
    let pool = db::connect(&db.url, &settings.pool).unwrap();
    db::migrate(&mut pool.get().unwrap()).unwrap();
    let (stuck, free) = {
        let mut conn = pool.get().unwrap();
        let order = |conn: &mut DbConnection, user: &str| {
            create_order(conn, user, "alipay", "1.00", "CNY", None)
        };
        let stuck = order(&mut conn, "shared-stuck");
        let free: Vec<OrderNo> = (0..8)
            .map(|i| order(&mut conn, &format!("shared-{i}")))
            .collect();
        (stuck, free)
    };
    let _peer = frozen_peer_on(
        &db,
        &format!("SELECT 1 FROM orders WHERE order_no = '{stuck}' FOR UPDATE"),
    );
    let committer = Committer::start(pool.clone(), 2, 64, Duration::from_secs(60)).unwrap();
    let deliver = |n: Notification| {
        let (done, answered) = std::sync::mpsc::channel();
        let writer = committer.clone();
        std::thread::spawn(move || {
            let applied = actix_web::rt::System::new().block_on(writer.submit(
                n,
                "{}".to_owned(),
                "raw body".into(),
                Source::Notify,
                now(),
            ));
            let _ = done.send(applied.map(|a| a.outcome).map_err(|e| e.to_string()));
        });
        answered
    };
    let held_up = deliver(paid(&stuck, "SH-stuck"));
    let waiting = "SELECT COUNT(*) AS n FROM pg_stat_activity \
                   WHERE wait_event_type = 'Lock' AND datname = current_database()";
    assert_eq!(
        settled_count(&pool, waiting, 1),
        1,
        "no writer waits on the peer"
    );
    let again = deliver(paid(&stuck, "SH-stuck"))
        .recv_timeout(Duration::from_secs(5))
        .expect("a second delivery of the held order waited as long as the first");
    assert!(again.is_err(), "{again:?}");

    let others: Vec<_> = free
        .iter()
        .enumerate()
        .map(|(i, order)| {
            let (committer, n) = (committer.clone(), paid(order, &format!("SH{i}")));
            std::thread::spawn(move || submit(&committer, n))
        })
        .collect();
    for other in others {
        assert_eq!(other.join().unwrap(), Outcome::Credited);
    }
    assert!(
        held_up.try_recv().is_err(),
        "the held-up notification was answered before the others: they waited for its writer"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT COUNT(*) AS n FROM ledger WHERE user_id LIKE 'shared-%'"
        ),
        8
    );
}

/// While the database cannot be reached, the delivery counts queued behind the batch that found
/// no connection wait for it with that batch's own, and are written once it can be reached.
#[test]
fn counts_queued_while_no_connection_can_be_had_are_written_later() {
    let db = TestDb::new(Backend::Postgresql);
    let settings =
        Settings::from_toml("[pool]\nmax_size = 1\nconnection_timeout_secs = 1\n").unwrap();
    let pool = db::connect(&db.url, &settings.pool).unwrap();
    db::migrate(&mut pool.get().unwrap()).unwrap();
    let (credited, waiting) = {
        let mut conn = pool.get().unwrap();
        let mut order = || create_order(&mut conn, "no-conn", "alipay", "1.00", "CNY", None);
        (order(), order())
    };
    let committer = Committer::start(pool.clone(), 1, 64, Duration::from_secs(30)).unwrap();
    let notification = paid(&credited, "NC1");
    assert_eq!(submit(&committer, notification.clone()), Outcome::Credited);
    // The writer gives its connection back after a second without work; then it is taken.
    std::thread::sleep(Duration::from_millis(1500));
    let taken = pool.get().unwrap();
    std::thread::scope(|scope| {
        let stuck = scope.spawn(|| {
            actix_web::rt::System::new().block_on(committer.submit(
                paid(&waiting, "NC2"),
                "{}".to_owned(),
                "raw body".into(),
                Source::Notify,
                now(),
            ))
        });
        // The writer waits for a connection with that payment; three repeats are answered from
        // memory meanwhile, their counts queued behind it.
        std::thread::sleep(Duration::from_millis(300));
        for _ in 0..3 {
            assert_eq!(
                submit(&committer, notification.clone()),
                Outcome::AlreadyPaid
            );
        }
        assert!(
            stuck.join().unwrap().is_err(),
            "credited with no connection"
        );
    });
    drop(taken);
    let deliveries =
        "SELECT delivery_count AS n FROM notifications WHERE notification_id = 'n-NC1'";
    assert_eq!(settled_count(&db.pool(1), deliveries, 4), 4);
}
