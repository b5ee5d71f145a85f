//! Failover to a synchronous standby (PostgreSQL): a primary with a streaming standby it waits
//! for at every commit, and three instances that know both (`host=P1,P2`,
//! `target_session_attrs=read-write`). Mid-storm the primary is killed (every process of it, with
//! SIGKILL) and the standby promoted. Every notification acked before is credited on the new
//! primary, the providers' retries complete the rest, and every instance is ready again without a
//! restart.
//!
//! Before that, the standby is stopped for a while: commits wait for it, and the waits are
//! cancelled (`pg_cancel_backend`), which PostgreSQL reports as a successful COMMIT with a mere
//! WARNING; nothing is acked, and once the standby is back everything is credited once.

use super::*;

/// The instances' config: the demo channels, and a statement timeout below the commit deadline
/// (4 s), which must not cut a commit's wait for its standby short (the server disarms it before
/// committing).
fn config(dir: &Path) -> PathBuf {
    let path = dir.join("failover.toml");
    let demo = std::fs::read_to_string(demo_config()).unwrap();
    std::fs::write(
        &path,
        format!("{demo}\n[pool]\nlock_timeout_secs = 1\nstatement_timeout_secs = 2\n"),
    )
    .unwrap();
    path
}

#[test]
fn a_synchronous_standby_takes_over_and_nothing_acked_is_lost_postgresql() {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let primary = PgCluster::start();
    let primary_url = primary.new_database();
    let database = primary_url.rsplit('/').next().unwrap().to_owned();
    let standby = primary.standby();
    primary.admin_exec("ALTER SYSTEM SET synchronous_standby_names = '*'");
    primary.admin_exec("SELECT pg_reload_conf()");
    wait_for_synchronous_standby(&primary);
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{database}?target_session_attrs=read-write",
        primary.port(),
        standby.port()
    );

    let dir = tempfile::tempdir().unwrap();
    if common::is_root() {
        let _ = Command::new("chmod").args(["755"]).arg(dir.path()).status();
    }
    let config = config(dir.path());
    let mut instances: Vec<Instance> = (0..3)
        .map(|n| Instance::start_with(dir.path(), n, &url, &config))
        .collect();
    for instance in &instances {
        instance.wait_ready();
    }
    let ports: Vec<u16> = instances.iter().map(|i| i.port).collect();
    let nginx = Nginx::start(dir.path(), &ports);
    let orders = 1500;
    let fixtures = fixtures(dir.path(), &url, orders);
    let part = dir.path().join("first-40.ndjson");
    let lines: Vec<String> = std::fs::read_to_string(&fixtures)
        .unwrap()
        .lines()
        .take(40)
        .map(str::to_owned)
        .collect();
    std::fs::write(&part, lines.join("\n") + "\n").unwrap();

    let size_before = postgresql_database_bytes(&url);
    // The standby stops: commits wait for it, and every answer is "retry". Halfway, an operator
    // cancels the waiting sessions, which PostgreSQL reports to each as a committed COMMIT with a
    // WARNING: still no ack.
    standby.stop_immediately();
    let stalled = std::thread::scope(|s| {
        let replaying = s.spawn(|| {
            replay(
                &instances[0].url(),
                &part,
                &dir.path().join("stalled.ndjson"),
                1,
                8,
            )
        });
        let mut cancelled = 0;
        while !replaying.is_finished() {
            std::thread::sleep(Duration::from_millis(300));
            cancelled += cancel_waits_for_standby(&primary);
        }
        say!("  {cancelled} commits' waits for the standby cancelled");
        replaying.join().unwrap()
    });
    report("standby stopped (commits wait for it)", &stalled);
    let (ack, retry, _, _) = answers(&stalled);
    let worst = stalled.summary["latency_ms"]["max"].as_f64().unwrap();
    say!("  worst answer {worst:.0} ms");
    assert_eq!(
        ack, 0,
        "acked while the synchronous standby was down: a commit was not replicated"
    );
    assert_eq!(retry, 40);
    standby.start_again();
    wait_for_synchronous_standby(&primary);
    let resumed = replay(
        &instances[0].url(),
        &part,
        &dir.path().join("resumed.ndjson"),
        1,
        8,
    );
    report("standby back", &resumed);
    assert_eq!(answers(&resumed).0, 40);
    assert_eq!(assert_acked_are_credited(&resumed, &url), 40);

    // The storm, and the primary dies in it.
    let results = dir.path().join("storm.ndjson");
    let child = replay_in_background(&nginx.url(), &fixtures, &results, 3);
    std::thread::sleep(Duration::from_millis(1500));
    primary.kill9();
    let killed = Instant::now();
    std::thread::sleep(Duration::from_millis(1000));
    standby.promote();
    say!(
        "primary killed; standby promoted {:?} later",
        killed.elapsed()
    );
    let during = finish(child, &results);
    report("storm across the failover", &during);
    // What was acked was on the standby when it was acked: it is all there now.
    let acked = assert_acked_are_credited(&during, &url);
    say!("  {acked} orders acked during the storm, all credited on the new primary");

    for instance in &instances {
        instance.wait_ready();
    }
    let after = replay(
        &nginx.url(),
        &fixtures,
        &dir.path().join("after.ndjson"),
        1,
        32,
    );
    report("the providers' retries", &after);
    assert_eq!(answers(&after).0, orders as u64, "every order acked");
    assert_eq!(credits_by_order(&url).len(), orders);
    let books = verify(&url);
    assert!(books.contains(&format!("{orders} paid orders")), "{books}");
    let grown = postgresql_database_bytes(&url) as i64 - size_before as i64;
    say!("  the database grew {grown} bytes over both faults and the retries");
    for instance in &mut instances {
        instance.kill9();
    }
}

/// `pg_cancel_backend` on every session waiting for a synchronous standby; returns how many.
fn cancel_waits_for_standby(primary: &PgCluster) -> i64 {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut admin = diesel::PgConnection::establish(&primary.admin_url()).unwrap();
    diesel::sql_query(
        "SELECT COUNT(*) AS n FROM (SELECT pg_cancel_backend(pid) FROM pg_stat_activity \
         WHERE wait_event = 'SyncRep') t",
    )
    .load::<N>(&mut admin)
    .unwrap()[0]
        .n
}

/// Waits until the primary has a standby in `sync` state.
fn wait_for_synchronous_standby(primary: &PgCluster) {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut admin = diesel::PgConnection::establish(&primary.admin_url()).unwrap();
        let n = diesel::sql_query(
            "SELECT COUNT(*) AS n FROM pg_stat_replication WHERE sync_state = 'sync' \
             AND state = 'streaming'",
        )
        .load::<N>(&mut admin)
        .unwrap()[0]
            .n;
        if n > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the standby never became synchronous"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
