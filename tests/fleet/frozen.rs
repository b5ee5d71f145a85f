//! A frozen instance: one of three is stopped (SIGSTOP) while it holds row locks in an open
//! transaction. The other two keep crediting, and answer within a provider's patience (WeChat Pay
//! waits 5 s) even for the orders whose rows the frozen one holds; after SIGCONT and the
//! providers' retries everything is credited exactly once.

use std::collections::HashSet;

use super::*;

#[test]
fn postgresql() {
    a_frozen_instance_holding_row_locks_stops_no_one_else(Backend::Postgresql);
}

#[test]
fn mariadb() {
    a_frozen_instance_holding_row_locks_stops_no_one_else(Backend::Mariadb);
}

/// WeChat Pay's patience: an answer later than this is a failed delivery.
const PATIENCE: Duration = Duration::from_secs(5);

/// How long the instance stays frozen at least: several lock timeouts. The server ends its open
/// transactions after `pool.statement_timeout_secs` (15 s) idle.
const FROZEN_FOR: Duration = Duration::from_secs(8);

/// When the test looks again at whether the frozen instance still holds its locks.
const LOOK_AFTER: Duration = Duration::from_secs(6);

fn a_frozen_instance_holding_row_locks_stops_no_one_else(backend: Backend) {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // One user per order, as in a shop: a frozen batch holds its own orders' accounts, not all.
    let orders = 1200;
    let mut fleet = Fleet::start_over(backend, orders, orders);
    let fixtures = fleet.fixtures.clone();

    // The instance to freeze credits at full tilt.
    let busy = replay_command(
        &fleet.instances[2].url(),
        &fixtures,
        &fleet.results("busy.ndjson"),
        1,
        32,
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("spawn replay");
    let size_before = database_bytes(&fleet.cluster, &fleet.database_url);
    let pid = fleet.instances[2].pid();
    let (tries, holding) = freeze_while_holding_locks(&fleet, pid);
    let frozen_at = Instant::now();
    say!(
        "{}: instance :{} frozen after {tries} tries, holding {holding} open transaction(s) with \
         row locks",
        fleet.cluster.name(),
        fleet.instances[2].port
    );

    // The providers go on sending: every notification, to the two live instances. Meanwhile a
    // look, some seconds in, at whether the frozen one still holds its locks.
    let ports = local_ports(pid);
    let (during, still_held) = std::thread::scope(|s| {
        let runs: Vec<_> = (0..2)
            .map(|n| {
                let url = fleet.instances[n].url();
                let results = fleet.results(&format!("live-{n}.ndjson"));
                let fixtures = &fixtures;
                s.spawn(move || replay(&url, fixtures, &results, 1, 16))
            })
            .collect();
        let look = s.spawn(|| {
            std::thread::sleep(LOOK_AFTER.saturating_sub(frozen_at.elapsed()));
            open_transactions_with_locks(&fleet, &ports)
        });
        let during: Vec<Replayed> = runs.into_iter().map(|r| r.join().unwrap()).collect();
        (during, look.join().unwrap())
    });
    std::thread::sleep(FROZEN_FOR.saturating_sub(frozen_at.elapsed()));
    signal(pid, "CONT");
    let mut busy = busy;
    let _ = busy.kill();
    let _ = busy.wait();

    let mut worst = 0.0f64;
    let mut acked = 0;
    for (n, r) in during.iter().enumerate() {
        report(
            &format!("  live instance {n} while the other was frozen"),
            r,
        );
        let max = r.summary["latency_ms"]["max"].as_f64().unwrap_or(f64::MAX);
        worst = worst.max(max);
        let (ack, _, http, transport) = answers(r);
        assert_eq!((http, transport), (0, 0), "every request was answered");
        acked += ack;
    }
    let credited_during = assert_acked_are_credited(&during[0], &fleet.database_url)
        .max(assert_acked_are_credited(&during[1], &fleet.database_url));
    say!(
        "  frozen for {:?}; {still_held} locking transaction(s) still open {LOOK_AFTER:?} in; \
         worst answer {worst:.0} ms; {acked} acks, {} orders credited during the freeze",
        frozen_at.elapsed(),
        credits_by_order(&fleet.database_url).len()
    );
    assert!(
        still_held > 0,
        "the frozen instance's locks were gone {LOOK_AFTER:?} in: the test did not test a \
         frozen lock holder"
    );
    assert!(
        worst < PATIENCE.as_millis() as f64,
        "an answer took {worst} ms, past a provider's patience"
    );
    // The other two kept crediting: all but the orders the frozen one holds.
    assert!(
        credited_during > orders / 2,
        "only {credited_during} of {orders} credited while one instance was frozen"
    );

    // Thawed, the frozen instance finds its session ended (or commits), and is ready again.
    fleet.instances[2].wait_ready();
    let after = replay(
        &fleet.nginx.url(),
        &fixtures,
        &fleet.results("after.ndjson"),
        1,
        32,
    );
    report("  the providers' retries, through nginx", &after);
    assert_eq!(answers(&after).0, orders as u64, "every order acked");
    assert_eq!(
        assert_acked_are_credited(&after, &fleet.database_url),
        orders
    );
    assert_eq!(credits_by_order(&fleet.database_url).len(), orders);
    verify(&fleet.database_url);
    let grown = database_bytes(&fleet.cluster, &fleet.database_url) as i64 - size_before as i64;
    say!("  the database grew {grown} bytes over the fault and the retries");
    fleet.instances[2].kill9();
}

impl Instance {
    fn pid(&self) -> u32 {
        self.child.as_ref().expect("instance running").id()
    }
}

fn signal(pid: u32, name: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{name} {pid} failed");
}

/// Stops `pid` at a moment when it holds row locks in an open transaction: stops it, looks, and
/// lets it go on for a moment if it holds none. Returns the tries and the transactions held.
fn freeze_while_holding_locks(fleet: &Fleet, pid: u32) -> (u32, i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut tries = 0;
    loop {
        tries += 1;
        signal(pid, "STOP");
        // A statement already sent finishes on the server; what is left open is what it holds.
        std::thread::sleep(Duration::from_millis(50));
        let held = open_transactions_with_locks(fleet, &local_ports(pid));
        if held > 0 {
            return (tries, held);
        }
        signal(pid, "CONT");
        assert!(
            Instant::now() < deadline,
            "never caught the instance inside a transaction"
        );
        std::thread::sleep(Duration::from_millis(fastrand::u64(5..40)));
    }
}

/// The local TCP ports of `pid`'s sockets: its connections to the database among them.
fn local_ports(pid: u32) -> HashSet<u16> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
                .map(str::to_owned)
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = fields.get(1)?.rsplit(':').next()?;
            let inode = fields.get(9)?;
            inodes
                .contains(*inode)
                .then(|| u16::from_str_radix(port, 16).ok())
                .flatten()
        })
        .collect()
}

/// How many transactions of the connections from `ports` are open and hold row locks.
fn open_transactions_with_locks(fleet: &Fleet, ports: &HashSet<u16>) -> i64 {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    if ports.is_empty() {
        return 0;
    }
    let list = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    match &fleet.cluster {
        // A transaction id is assigned once a row is written or locked.
        Server::Postgresql(c) => {
            let mut admin = diesel::PgConnection::establish(&c.admin_url()).unwrap();
            diesel::sql_query(format!(
                "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE client_port IN ({list}) \
                 AND state = 'idle in transaction' AND backend_xid IS NOT NULL"
            ))
            .load::<N>(&mut admin)
            .unwrap()[0]
                .n
        }
        Server::Mariadb(m) => {
            let hosts = ports
                .iter()
                .map(|p| format!("'127.0.0.1:{p}'"))
                .collect::<Vec<_>>()
                .join(",");
            let mut admin = diesel::MysqlConnection::establish(&m.admin_url()).unwrap();
            diesel::sql_query(format!(
                "SELECT COUNT(*) AS n FROM information_schema.INNODB_TRX t \
                 JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id \
                 WHERE p.HOST IN ({hosts}) AND p.COMMAND = 'Sleep' AND t.trx_rows_locked > 0"
            ))
            .load::<N>(&mut admin)
            .unwrap()[0]
                .n
        }
    }
}
