//! Test harness: real databases and a real server.
//!
//! - SQLite: a file in a temporary folder.
//! - PostgreSQL: one throwaway cluster per test binary (`initdb` + `pg_ctl` in a temporary folder,
//!   on a free port, `fsync=off`), started on first use, with a fresh database for every test. A
//!   small guardian process stops the cluster and removes its folder when the test process exits.
//! - `spawn_app` starts the real HTTP server on port 0 with an injected clock.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, OnceLock};

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::connection::SimpleConnection;
use diesel::Connection;
use payhook::books::orders::{self, NewOrder};
use payhook::config::Settings;
use payhook::db::{self, DbConnection, Pool};
use payhook::domain::clock::{Clock, FixedClock};
use payhook::domain::ids::{ChannelName, OrderNo, UserId};
use payhook::domain::money::{AmountMinor, Currency};

pub mod simulator;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgresql,
    Mysql,
}

/// A database of its own for one test.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// A database a test made on a server of its own.
    pub fn at(backend: Backend, url: String) -> TestDb {
        TestDb {
            backend,
            url,
            _dir: None,
        }
    }

    pub fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("payhook.db").display());
                TestDb {
                    backend,
                    url,
                    _dir: Some(dir),
                }
            }
            Backend::Postgresql => TestDb {
                backend,
                url: pg_cluster().new_database(),
                _dir: None,
            },
            Backend::Mysql => TestDb {
                backend,
                url: mariadb().new_database(),
                _dir: None,
            },
        }
    }

    /// A migrated pool of `size` connections.
    pub fn pool(&self, size: u32) -> Pool {
        let settings = Settings::from_toml(&format!("[pool]\nmax_size = {size}\n")).unwrap();
        let pool = db::connect(&self.url, &settings.pool).expect("connect");
        db::migrate(&mut pool.get().unwrap()).expect("migrate");
        pool
    }
}

/// Runs a statement directly, bypassing payhook: for setting up or corrupting state.
pub fn exec(pool: &Pool, sql: &str) {
    pool.get().unwrap().batch_execute(sql).expect(sql);
}

/// One count from a `SELECT COUNT(*)`-like query returning a single BigInt.
/// [`count`] once it reaches `expected`, or its last value after 10 s. For what the server writes
/// after it answers: a repeat's delivery count is written by a coming batch.
pub fn settled_count(pool: &Pool, sql: &str, expected: i64) -> i64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let n = count(pool, sql);
        if n == expected || std::time::Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

pub fn count(pool: &Pool, sql: &str) -> i64 {
    use diesel::sql_types::BigInt;
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let mut conn = pool.get().unwrap();
    // MySQL casts to SIGNED, its 64-bit integer, where the others name BIGINT.
    let sql = match &*conn {
        DbConnection::Mysql(_) => sql.replace("AS BIGINT)", "AS SIGNED)"),
        _ => sql.to_owned(),
    };
    let rows: Vec<N> = diesel::sql_query(&sql).load(&mut *conn).expect(&sql);
    rows[0].n
}

pub fn now() -> NaiveDateTime {
    Utc::now().naive_utc()
}

static ORDER_SEQ: AtomicUsize = AtomicUsize::new(0);

/// Creates a pending order through the library; returns its number.
pub fn create_order(
    conn: &mut DbConnection,
    user: &str,
    channel: &str,
    amount: &str,
    currency: &str,
    order_no: Option<&str>,
) -> OrderNo {
    let currency = Currency::parse(currency).unwrap();
    let order_no = order_no.map(|s| s.to_owned()).unwrap_or_else(|| {
        format!(
            "T{}x{}",
            std::process::id(),
            ORDER_SEQ.fetch_add(1, Ordering::SeqCst)
        )
    });
    let new = NewOrder {
        order_no: OrderNo::parse(&order_no).unwrap(),
        user_id: UserId::parse(user).unwrap(),
        channel: ChannelName::parse(channel).unwrap(),
        amount: AmountMinor::parse(amount, currency).unwrap(),
        currency,
    };
    match orders::create(conn, &new, now()).expect("create order") {
        orders::Created::New(o) | orders::Created::Existing(o) => o.order_no,
        orders::Created::Conflict(_, f) => panic!("order conflict on {f:?}"),
    }
}

/// Pays `order_no` as its payment notification would (trade `trade_no`), through the crediting
/// transaction, and returns the outcome's name.
pub fn pay_order(
    conn: &mut DbConnection,
    channel: &str,
    order_no: &str,
    trade_no: &str,
    minor: i64,
    currency: &str,
) -> &'static str {
    let n = payhook::domain::notification::Notification {
        channel: ChannelName::parse(channel).unwrap(),
        notification_id: format!("paid-{order_no}-{trade_no}"),
        order_no: Some(OrderNo::parse(order_no).unwrap()),
        provider_trade_no: Some(trade_no.to_owned()),
        amount: Some(AmountMinor::new(minor).unwrap()),
        currency: Some(Currency::parse(currency).unwrap()),
        kind: payhook::domain::notification::NotificationKind::Paid,
        merchant_mismatch: None,
    };
    let evidence = payhook::books::inbox::Evidence {
        headers_json: "{}",
        body: b"paid in the test",
        source: payhook::books::inbox::Source::Notify,
    };
    payhook::crediting::apply_alone(conn, &n, evidence, now())
        .expect("pay the order")
        .outcome
        .as_str()
}

/// The `payhook` binary, with none of the `PAYHOOK_*` settings of the calling environment.
pub fn payhook() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_payhook"));
    cmd.env_remove("PAYHOOK_CONFIG")
        .env_remove("PAYHOOK_DATABASE_URL")
        .env_remove("PAYHOOK_BIND")
        .env_remove("PAYHOOK_ADMIN_TOKEN")
        .env("RUST_LOG", "info");
    cmd
}

// ---------------------------------------------------------------- PostgreSQL

pub struct PgCluster {
    port: u16,
    dir: PathBuf,
    pg_ctl: PathBuf,
    /// The server options it was started with, to start it again the same way.
    opts: String,
    root: bool,
    databases: AtomicUsize,
}

/// The cluster for this test process, started on first use.
pub fn pg_cluster() -> &'static PgCluster {
    static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
    CLUSTER.get_or_init(PgCluster::start)
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Finds a PostgreSQL server program on PATH or in Debian's versioned folders.
fn pg_bin(name: &str) -> PathBuf {
    if let Ok(out) = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
    {
        let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() && !path.is_empty() {
            return PathBuf::from(path);
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL's `{name}` was not found on PATH or under /usr/lib/postgresql/*/bin. \
             The PostgreSQL tests need the server binaries: apt-get install postgresql"
        )
    })
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs a server program, as the `postgres` user when this process is root (PostgreSQL refuses
/// to run as root).
fn run_pg(program: &Path, args: &[&str], as_postgres: bool) {
    let mut cmd = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    let out = cmd.args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {}: {e}", program.display());
    });
    assert!(
        out.status.success(),
        "{} {:?} failed: {}{}",
        program.display(),
        args,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PgCluster {
    /// A cluster of the caller's own, for tests that restart it; stopped when the process exits.
    pub fn start() -> PgCluster {
        let initdb = pg_bin("initdb");
        let root = is_root();
        let dir = cluster_dir(root);
        let data = dir.join("data");
        let data_s = data.to_string_lossy().into_owned();
        run_pg(
            &initdb,
            &[
                "-D",
                &data_s,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
            root,
        );
        PgCluster::launch(dir, root)
    }

    /// Starts the server in `dir`/data on a free port, with a guardian.
    fn launch(dir: PathBuf, root: bool) -> PgCluster {
        let pg_ctl = pg_bin("pg_ctl");
        let data_s = dir.join("data").to_string_lossy().into_owned();
        let dir_s = dir.to_string_lossy().into_owned();
        let port = free_port();
        let opts = format!(
            "-p {port} -k {dir_s} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
        );
        let cluster = PgCluster {
            port,
            dir,
            pg_ctl,
            opts,
            root,
            databases: AtomicUsize::new(0),
        };
        cluster.start_again();
        spawn_guardian(&cluster.pg_ctl, &data_s, &dir_s, root);
        cluster
    }

    /// Starts the server again, stopped or killed, on its port with its options.
    pub fn start_again(&self) {
        let data = self.dir.join("data").to_string_lossy().into_owned();
        // With its log named, the server does not hold this process's pipes open.
        let log = self.dir.join("postgres.log").to_string_lossy().into_owned();
        run_pg(
            &self.pg_ctl,
            &["-D", &data, "-o", &self.opts, "-l", &log, "-w", "start"],
            self.root,
        );
    }

    /// `pg_ctl stop -m immediate`: every process ends at once, as in a crash, but cleanly enough
    /// to start again.
    pub fn stop_immediately(&self) {
        let data = self.dir.join("data").to_string_lossy().into_owned();
        run_pg(
            &self.pg_ctl,
            &["-D", &data, "-m", "immediate", "-w", "stop"],
            self.root,
        );
    }

    /// A streaming standby of this cluster, cloned with `pg_basebackup -R` and started on a port of
    /// its own; stopped when the process exits.
    pub fn standby(&self) -> PgCluster {
        let root = self.root;
        let dir = cluster_dir(root);
        let data = dir.join("data").to_string_lossy().into_owned();
        run_pg(
            &pg_bin("pg_basebackup"),
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-D",
                &data,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ],
            root,
        );
        PgCluster::launch(dir, root)
    }

    /// `pg_ctl promote`: a standby becomes a primary that takes writes.
    pub fn promote(&self) {
        let data = self.dir.join("data").to_string_lossy().into_owned();
        run_pg(&self.pg_ctl, &["-D", &data, "-w", "promote"], self.root);
    }

    /// SIGKILL to the server and every process of it, as when its machine dies: nothing is flushed
    /// or said to clients.
    pub fn kill9(&self) {
        let pidfile = std::fs::read_to_string(self.dir.join("data/postmaster.pid"))
            .expect("the server is running");
        let postmaster: u32 = pidfile.lines().next().unwrap().trim().parse().unwrap();
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // pid (comm) state ppid ...: the fields after the last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(postmaster) {
                if let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() {
                    pids.push(pid);
                }
            }
        }
        let status = Command::new("kill")
            .arg("-KILL")
            .args(pids.iter().map(u32::to_string))
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -9 {pids:?}");
    }

    /// `pg_ctl restart -m fast`, with the server down for `down` in between: every connection
    /// is cut, and the server comes back on the same port with the same options.
    pub fn restart(&self, down: std::time::Duration) {
        let data = self.dir.join("data").to_string_lossy().into_owned();
        run_pg(
            &self.pg_ctl,
            &["-D", &data, "-m", "fast", "-w", "stop"],
            self.root,
        );
        std::thread::sleep(down);
        self.start_again();
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Creates an empty database and returns its URL.
    pub fn new_database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::SeqCst);
        let name = format!("payhook_test_{n}");
        let mut admin = diesel::PgConnection::establish(&self.admin_url()).expect("admin conn");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create database");
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs SQL as the superuser on the `postgres` database.
    pub fn admin_exec(&self, sql: &str) {
        let mut admin = diesel::PgConnection::establish(&self.admin_url()).expect("admin conn");
        admin.batch_execute(sql).expect(sql);
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A folder of its own for a cluster, owned by `postgres` when this process is root.
fn cluster_dir(root: bool) -> PathBuf {
    let dir = tempfile::Builder::new()
        .prefix("payhook-pg-")
        .tempdir()
        .expect("temp dir")
        .keep();
    if root {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "cannot chown {} to postgres", dir.display());
    }
    dir
}

/// Stops the cluster and removes its folder once this test process has exited, however it exits.
fn spawn_guardian(pg_ctl: &Path, data: &str, dir: &str, root: bool) {
    let stop = format!("{} -D {data} -m immediate stop", pg_ctl.to_string_lossy());
    let stop = if root {
        format!("runuser -u postgres -- {stop}")
    } else {
        stop
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop} >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id()
    );
    // Deliberately not waited for: it must outlive this process.
    #[allow(clippy::zombie_processes)]
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn cluster guardian");
}

// ---------------------------------------------------------------- MariaDB

pub struct MariaDb {
    port: u16,
    dir: PathBuf,
    user: String,
    databases: AtomicUsize,
    /// The running `mariadbd`, reaped when it is stopped.
    server: std::sync::Mutex<Option<std::process::Child>>,
}

/// The MariaDB server for this test process, started on first use.
pub fn mariadb() -> &'static MariaDb {
    static SERVER: OnceLock<MariaDb> = OnceLock::new();
    SERVER.get_or_init(MariaDb::start)
}

/// A MariaDB program on PATH or in Debian's folders.
fn mariadb_bin(name: &str) -> PathBuf {
    ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "MariaDB's `{name}` was not found. The MySQL tests need the server: \
                 apt-get install mariadb-server"
            )
        })
}

impl MariaDb {
    /// A server of the caller's own: `mariadb-install-db` into a temporary folder, then
    /// `mariadbd` on a free port, with no option files; stopped and removed when the test process
    /// exits.
    pub fn start() -> MariaDb {
        let dir = tempfile::Builder::new()
            .prefix("payhook-mariadb-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let user = if is_root() {
            "root".to_owned()
        } else {
            whoami()
        };
        let out = Command::new(mariadb_bin("mariadb-install-db"))
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--user={user}"))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .output()
            .expect("run mariadb-install-db");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let server = MariaDb {
            port: free_port(),
            dir: dir.clone(),
            user,
            databases: AtomicUsize::new(0),
            server: std::sync::Mutex::new(None),
        };
        server.spawn();
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
             kill -9 $(cat {pidfile}) >/dev/null 2>&1; sleep 0.5; rm -rf {dir}",
            pid = std::process::id(),
            pidfile = dir.join("pid").display(),
            dir = dir.display()
        );
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn mariadb guardian");
        server
    }

    /// Starts `mariadbd` on this server's folder and port, and waits until it answers.
    fn spawn(&self) {
        let dir = &self.dir;
        let child = Command::new(mariadb_bin("mariadbd"))
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--socket={}", dir.join("sock").display()))
            .arg(format!("--port={}", self.port))
            .args(["--bind-address=127.0.0.1", "--skip-name-resolve"])
            .arg(format!("--user={}", self.user))
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            .arg(format!("--log-error={}", dir.join("err.log").display()))
            .arg(format!("--tmpdir={}", dir.display()))
            // Durability is not what these tests measure; the benchmark sets its own.
            .args([
                "--innodb-flush-log-at-trx-commit=2",
                "--max-connections=500",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start mariadbd");
        *self.server.lock().unwrap() = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while diesel::MysqlConnection::establish(&self.admin_url()).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "mariadbd did not answer within 30 s: see {}",
                dir.join("err.log").display()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Stops the server (SIGTERM, waiting for it to go), keeps it down for `down`, and starts it
    /// again on the same port: every connection is cut.
    pub fn restart(&self, down: std::time::Duration) {
        if let Some(mut child) = self.server.lock().unwrap().take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            child.wait().expect("mariadbd stops on SIGTERM");
        }
        std::thread::sleep(down);
        self.spawn();
    }

    /// Kills every client connection to `database` but the caller's; returns how many.
    pub fn kill_connections(&self, database: &str) -> i64 {
        use diesel::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct Id {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            id: i64,
        }
        let mut admin = diesel::MysqlConnection::establish(&self.admin_url()).expect("admin conn");
        let ids: Vec<Id> = diesel::sql_query(format!(
            "SELECT CAST(ID AS SIGNED) AS id FROM information_schema.PROCESSLIST \
             WHERE DB = '{database}' AND ID <> CONNECTION_ID()"
        ))
        .load(&mut admin)
        .expect("processlist");
        let mut killed = 0;
        for Id { id } in ids {
            if admin
                .batch_execute(&format!("KILL CONNECTION {id}"))
                .is_ok()
            {
                killed += 1;
            }
        }
        killed
    }

    pub fn admin_url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}/mysql", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates an empty database and returns its URL.
    pub fn new_database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::SeqCst);
        let name = format!("payhook_test_{n}");
        let mut admin = diesel::MysqlConnection::establish(&self.admin_url()).expect("admin conn");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create database");
        format!("mysql://root@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs SQL as root.
    pub fn admin_exec(&self, sql: &str) {
        let mut admin = diesel::MysqlConnection::establish(&self.admin_url()).expect("admin conn");
        admin.batch_execute(sql).expect(sql);
    }
}

fn whoami() -> String {
    Command::new("id")
        .arg("-un")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

// ---------------------------------------------------------------- the server

/// A running server on a free port.
pub struct TestApp {
    pub addr: SocketAddr,
    pub pool: Pool,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        actix_web::rt::System::new().block_on(handle.stop(false));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the real server on the test database, with `extra` config TOML and a fixed clock.
pub fn spawn_app(db: &TestDb, extra: &str, now: DateTime<Utc>) -> TestApp {
    let clock: Arc<dyn Clock> = Arc::new(FixedClock(now));
    spawn_app_with_clock(db, extra, clock)
}

pub fn spawn_app_with_clock(db: &TestDb, extra: &str, clock: Arc<dyn Clock>) -> TestApp {
    let toml = format!(
        "bind = \"127.0.0.1:0\"\ndatabase_url = \"{}\"\n{extra}\n",
        db.url
    );
    let mut settings = Settings::from_toml(&toml).expect("settings");
    settings.http.workers = 2;
    let pool = db::connect(&db.url, &settings.pool).expect("connect");
    db::migrate(&mut pool.get().unwrap()).expect("migrate");
    let state = payhook::http::AppState::new(&settings, pool.clone(), clock).expect("state");
    let bound = payhook::http::bind(&settings, state).expect("bind");
    let addr = bound.addrs[0];
    let handle = bound.server.handle();
    let server = bound.server;
    let thread = std::thread::spawn(move || {
        actix_web::rt::System::new()
            .block_on(server)
            .expect("server");
    });
    TestApp {
        addr,
        pool,
        handle,
        thread: Some(thread),
    }
}

/// A Standard Webhooks request of `body` as message `id`, signed now with `secret` by payhook's
/// own signer: its headers and body.
pub fn standard_webhooks_request(
    secret: &str,
    id: &str,
    body: String,
) -> (Vec<(String, String)>, String) {
    let ts = Utc::now().timestamp();
    let signature =
        payhook::notify::standard_webhooks::sign::signature(secret, id, ts, body.as_bytes())
            .expect("a whsec_ secret");
    let headers = vec![
        ("content-type".to_owned(), "application/json".to_owned()),
        ("webhook-id".to_owned(), id.to_owned()),
        ("webhook-timestamp".to_owned(), ts.to_string()),
        ("webhook-signature".to_owned(), signature),
    ];
    (headers, body)
}

/// A Standard Webhooks `payment.succeeded` paying `minor` CNY of `order_no` by transaction
/// `tx-{id}`, as message `id`, signed now with `secret`.
pub fn standard_webhooks_payment(
    secret: &str,
    order_no: &str,
    minor: i64,
    id: &str,
) -> (Vec<(String, String)>, String) {
    let body = format!(
        "{{\"type\":\"payment.succeeded\",\"data\":{{\"order_no\":\"{order_no}\",\"amount\":{minor},\"currency\":\"CNY\",\"transaction_id\":\"tx-{id}\"}}}}"
    );
    standard_webhooks_request(secret, id, body)
}

/// Runs `f(i)` on `threads` threads released at the same instant.
pub fn race<T: Send + 'static>(
    threads: usize,
    f: impl Fn(usize) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let f = Arc::new(f);
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (f, barrier) = (f.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                f(i)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect()
}

/// Declares one test per backend: `name::sqlite`, `name::postgresql` and `name::mysql`.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn sqlite() {
                    super::$name($crate::common::TestDb::new($crate::common::Backend::Sqlite));
                }
                #[test]
                fn postgresql() {
                    super::$name($crate::common::TestDb::new($crate::common::Backend::Postgresql));
                }
                #[test]
                fn mysql() {
                    super::$name($crate::common::TestDb::new($crate::common::Backend::Mysql));
                }
            }
        )*
    };
}
