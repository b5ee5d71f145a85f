//! End to end with real processes: three `payhook serve` instances behind nginx on one
//! PostgreSQL, made to suffer a killed instance, a database restart and killed connections; one
//! instance on SQLite under a storm of duplicates; and, each in a module of its own, a failover to
//! a synchronous standby ([`failover`]), a frozen instance ([`frozen`]), a flood of garbage
//! ([`flood`]) and full disks ([`full_disk`]). After each, every ack is a committed credit, a
//! second replay (the provider's retry) completes everything, and `payhook verify` passes.
//!
//! The scenarios run one at a time (they time their faults against a running replay) and print
//! what they did: notifications sent, acks, retries and credits.

#[path = "../it/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_port, payhook, MariaDb, PgCluster};
use serde_json::Value;

/// Prints a figure straight to stderr, past the test harness's capture, so that every run (CI's
/// too) shows what each scenario did.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

// The faults of their own, each in a module (after `say!`, which they use).
mod failover;
mod flood;
mod frozen;
mod full_disk;

/// One scenario at a time: each times its faults against its own load.
static SERIAL: Mutex<()> = Mutex::new(());

fn demo_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml")
}

fn alipay_key() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo-keys/alipay-test-private-key.pem")
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run payhook");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// A `payhook serve` process that can be killed and started again on the same port.
struct Instance {
    port: u16,
    database_url: String,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Instance {
    fn start(dir: &Path, n: usize, database_url: &str) -> Instance {
        Instance::start_with(dir, n, database_url, &demo_config())
    }

    /// [`Instance::start`] with a config file of its own.
    fn start_with(dir: &Path, n: usize, database_url: &str, config: &Path) -> Instance {
        Instance::launch(dir.join(format!("payhook-{n}.log")), database_url, config)
    }

    /// As [`Instance::start`], with the log file at `log`, wherever that is.
    fn start_logging_to(log: PathBuf, database_url: &str) -> Instance {
        Instance::launch(log, database_url, &demo_config())
    }

    fn launch(log: PathBuf, database_url: &str, config: &Path) -> Instance {
        let mut instance = Instance {
            port: free_port(),
            database_url: database_url.to_owned(),
            config: config.to_owned(),
            log,
            child: None,
        };
        instance.spawn();
        instance
    }

    /// The process id while the process runs, `None` once it has exited (or was killed).
    fn running_pid(&mut self) -> Option<u32> {
        let child = self.child.as_mut()?;
        matches!(child.try_wait(), Ok(None)).then(|| child.id())
    }

    fn spawn(&mut self) {
        let child = payhook()
            .args(["serve", "--config"])
            .arg(&self.config)
            .args(["--database-url", &self.database_url])
            .args(["--bind", &format!("127.0.0.1:{}", self.port)])
            .arg("--log-file")
            .arg(&self.log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn payhook serve");
        self.child = Some(child);
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn wait_ready(&self) {
        let url = format!("{}/readyz", self.url());
        let deadline = Instant::now() + Duration::from_secs(30);
        while !reqwest::blocking::get(&url).is_ok_and(|r| r.status().as_u16() == 200) {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!("{url} never answered 200; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn wait_for_status(url: &str, status: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if reqwest::blocking::get(url).is_ok_and(|r| r.status().as_u16() == status) {
            return;
        }
        assert!(Instant::now() < deadline, "{url} never answered {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn nginx_binary() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("nginx was not found: the multi-instance tests run nginx as the load balancer (apt-get install nginx)")
}

/// nginx running `deploy/nginx.conf`, pointed at our instances, with its public and internal
/// sides on free ports.
struct Nginx {
    port: u16,
    internal_port: u16,
    dir: PathBuf,
    child: Child,
}

impl Nginx {
    fn start(dir: &Path, upstreams: &[u16]) -> Nginx {
        Nginx::start_with(dir, upstreams, "")
    }

    /// As [`Nginx::start`], with `extra` added to the `http` block.
    fn start_with(dir: &Path, upstreams: &[u16], extra: &str) -> Nginx {
        let example = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx.conf"),
        )
        .unwrap();
        let port = free_port();
        let internal_port = free_port();
        let dir = dir.join("nginx");
        for sub in ["", "body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let d = dir.display();
        let servers: String = upstreams
            .iter()
            .map(|p| format!("        server 127.0.0.1:{p} max_fails=3 fail_timeout=5s;\n"))
            .collect();
        let mut conf = String::new();
        let mut servers_written = false;
        let mut internal_written = false;
        for line in example.lines() {
            let t = line.trim_start();
            if t.starts_with("server 127.0.0.1:808") {
                if !servers_written {
                    conf.push_str(&servers);
                    servers_written = true;
                }
                continue;
            }
            if t.starts_with("listen 8080;") {
                conf.push_str(&format!("        listen 127.0.0.1:{port};\n"));
                continue;
            }
            if t.starts_with("listen 127.0.0.1:8090;") {
                conf.push_str(&format!("        listen 127.0.0.1:{internal_port};\n"));
                internal_written = true;
                continue;
            }
            conf.push_str(line);
            conf.push('\n');
            if t.starts_with("http {") {
                conf.push_str(&format!(
                    "    access_log {d}/access.log;\n    client_body_temp_path {d}/body;\n    \
                     proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n    \
                     uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n{extra}\n"
                ));
            }
        }
        assert!(
            servers_written,
            "deploy/nginx.conf has no upstream servers to replace"
        );
        assert!(
            internal_written,
            "deploy/nginx.conf has no internal side (listen 127.0.0.1:8090) to move"
        );
        let user = if common::is_root() {
            "user root;\n"
        } else {
            ""
        };
        let conf = format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\n{user}pid {d}/nginx.pid;\nerror_log {d}/error.log;\n{conf}"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new(nginx_binary())
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-e", &format!("{d}/error.log")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let nginx = Nginx {
            port,
            internal_port,
            dir,
            child,
        };
        wait_for_status(
            &format!("{}/healthz", nginx.internal_url()),
            200,
            Duration::from_secs(20),
        );
        nginx
    }

    /// The public side: what providers call.
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The internal side: health, metrics and the admin API.
    fn internal_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.internal_port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.dir;
    }
}

/// Creates `count` pending Alipay orders spread over 50 users, and the signed notifications that
/// pay them.
fn fixtures(dir: &Path, database_url: &str, count: usize) -> PathBuf {
    fixtures_over(dir, database_url, count, 50)
}

/// [`fixtures`] spread over `users` users.
fn fixtures_over(dir: &Path, database_url: &str, count: usize, users: usize) -> PathBuf {
    let out = dir.join("alipay.ndjson");
    run_ok(
        payhook()
            .args(["fixtures", "--config"])
            .arg(demo_config())
            .args(["--database-url", database_url, "--channel", "alipay"])
            .args([
                "--count",
                &count.to_string(),
                "--users",
                &users.to_string(),
                "--user-id",
                "fleet",
            ])
            .arg("--private-key")
            .arg(alipay_key())
            .arg("--out")
            .arg(&out),
    );
    out
}

/// A replay's summary and, per order number, how often it was acked.
struct Replayed {
    summary: Value,
    acks: HashMap<String, u64>,
}

fn replay_command(
    url: &str,
    file: &Path,
    results: &Path,
    repeat: u32,
    concurrency: u32,
) -> Command {
    let mut cmd = payhook();
    cmd.args([
        "replay",
        "--url",
        url,
        "--json",
        "--shuffle",
        "--timeout",
        "15",
    ])
    .args([
        "--repeat",
        &repeat.to_string(),
        "--concurrency",
        &concurrency.to_string(),
    ])
    .arg("--results")
    .arg(results)
    .arg(file);
    cmd
}

fn read_replay(stdout: &str, results: &Path) -> Replayed {
    let summary: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("replay summary is not JSON ({e}): {stdout}"));
    let acks = std::fs::read_to_string(results)
        .unwrap()
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            // Items are named "<channel> #<n> <order_no> (<file>:<line>)".
            let item = v["item"].as_str().unwrap();
            let order_no = item.split_whitespace().nth(2).unwrap().to_owned();
            (order_no, v["acks"].as_u64().unwrap())
        })
        .collect();
    Replayed { summary, acks }
}

/// Runs a replay to the end; a non-zero exit (some item not acked) is expected under faults.
fn replay(url: &str, file: &Path, results: &Path, repeat: u32, concurrency: u32) -> Replayed {
    let out = replay_command(url, file, results, repeat, concurrency)
        .output()
        .expect("run replay");
    read_replay(&String::from_utf8_lossy(&out.stdout), results)
}

/// Starts a replay in the background, to fault the fleet while it runs.
fn replay_in_background(url: &str, file: &Path, results: &Path, repeat: u32) -> Child {
    replay_command(url, file, results, repeat, 64)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn replay")
}

fn finish(mut child: Child, results: &Path) -> Replayed {
    let mut stdout = String::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child.wait().unwrap();
    read_replay(&stdout, results)
}

fn answers(r: &Replayed) -> (u64, u64, u64, u64) {
    let a = &r.summary["answers"];
    let n = |k: &str| a[k].as_u64().unwrap();
    (n("ack"), n("retry"), n("http_error"), n("transport_error"))
}

fn credits_by_order(database_url: &str) -> HashMap<String, i64> {
    use diesel::prelude::*;
    use diesel::sql_types::{BigInt, Text};
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        order_no: String,
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let settings = payhook::config::Settings::from_toml("").unwrap();
    let pool = payhook::db::connect(database_url, &settings.pool).expect("connect for checks");
    let mut conn = pool.get().expect("a connection for checks");
    diesel::sql_query("SELECT order_no, COUNT(*) AS n FROM ledger GROUP BY order_no")
        .load::<Row>(&mut *conn)
        .unwrap()
        .into_iter()
        .map(|r| (r.order_no, r.n))
        .collect()
}

/// Every order acked at least once is credited exactly once, and no order twice.
fn assert_acked_are_credited(r: &Replayed, database_url: &str) -> usize {
    let credits = credits_by_order(database_url);
    assert!(
        credits.values().all(|n| *n == 1),
        "an order was credited twice"
    );
    let mut acked = 0;
    for (order, acks) in &r.acks {
        if *acks > 0 {
            acked += 1;
            assert_eq!(
                credits.get(order),
                Some(&1),
                "{order} was acked but is not credited"
            );
        }
    }
    acked
}

fn verify(database_url: &str) -> String {
    let out = payhook()
        .args(["verify", "--database-url", database_url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "verify failed:\n{text}");
    text
}

/// The test secrets of the demo config, none of which may appear in any log.
fn assert_no_secrets_in(logs: &[PathBuf]) {
    let config = std::fs::read_to_string(demo_config()).unwrap();
    let settings = payhook::config::Settings::from_toml(&config).unwrap();
    let mut secrets: Vec<String> = vec![settings.admin_token.unwrap().expose().to_owned()];
    for channel in settings.channels.values() {
        use payhook::config::ChannelConfig::*;
        match channel {
            Alipay(_) => {}
            WechatPay(c) => secrets.push(c.apiv3_key.expose().to_owned()),
            Stripe(c) => secrets.extend(c.secrets.iter().map(|s| s.expose().to_owned())),
            StandardWebhooks(c) => secrets.extend(c.secrets.iter().map(|s| s.expose().to_owned())),
        }
    }
    let key = std::fs::read_to_string(alipay_key()).unwrap();
    let key_line = key.lines().nth(1).unwrap().to_owned();
    secrets.push(key_line);
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{} holds a secret",
                log.display()
            );
        }
        assert!(
            !text.contains("sign="),
            "{} holds a signed body",
            log.display()
        );
    }
}

/// The database server a fleet shares, of either networked backend.
enum Server {
    Postgresql(PgCluster),
    Mariadb(MariaDb),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Postgresql,
    Mariadb,
}

impl Server {
    fn start(backend: Backend) -> Server {
        match backend {
            Backend::Postgresql => Server::Postgresql(PgCluster::start()),
            Backend::Mariadb => Server::Mariadb(MariaDb::start()),
        }
    }

    fn new_database(&self) -> String {
        match self {
            Server::Postgresql(c) => c.new_database(),
            Server::Mariadb(m) => m.new_database(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Server::Postgresql(_) => "PostgreSQL",
            Server::Mariadb(_) => "MariaDB",
        }
    }

    /// Stops the server, keeps it down for `down`, and starts it again on the same port.
    fn restart(&self, down: Duration) {
        match self {
            Server::Postgresql(c) => c.restart(down),
            Server::Mariadb(m) => m.restart(down),
        }
    }

    /// Kills every connection to `database`; returns how many.
    fn kill_connections(&self, database: &str) -> i64 {
        match self {
            Server::Postgresql(c) => {
                use diesel::prelude::*;
                #[derive(QueryableByName)]
                struct N {
                    #[diesel(sql_type = diesel::sql_types::BigInt)]
                    n: i64,
                }
                let mut admin = diesel::PgConnection::establish(&c.admin_url()).unwrap();
                let killed: Vec<N> = diesel::sql_query(format!(
                    "SELECT COUNT(*) AS n FROM (SELECT pg_terminate_backend(pid) FROM \
                     pg_stat_activity WHERE datname = '{database}' AND pid <> pg_backend_pid()) t"
                ))
                .load(&mut admin)
                .unwrap();
                killed[0].n
            }
            Server::Mariadb(m) => m.kill_connections(database),
        }
    }
}

/// A database's size on its server: PostgreSQL's own figure, MariaDB's files.
fn database_bytes(server: &Server, database_url: &str) -> u64 {
    match server {
        Server::Postgresql(_) => postgresql_database_bytes(database_url),
        Server::Mariadb(m) => {
            let name = database_url.rsplit('/').next().unwrap();
            std::fs::read_dir(m.dir().join("data").join(name))
                .unwrap()
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        }
    }
}

/// `pg_database_size` of the database `database_url` names.
fn postgresql_database_bytes(database_url: &str) -> u64 {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct Size {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        bytes: i64,
    }
    let mut conn = diesel::PgConnection::establish(database_url).unwrap();
    let size: Size = diesel::sql_query("SELECT pg_database_size(current_database()) AS bytes")
        .get_result(&mut conn)
        .unwrap();
    size.bytes as u64
}

/// Three instances and nginx on a fresh database server; returns them with the fixture file.
struct Fleet {
    cluster: Server,
    database_url: String,
    dir: tempfile::TempDir,
    instances: Vec<Instance>,
    nginx: Nginx,
    fixtures: PathBuf,
}

impl Fleet {
    fn start(backend: Backend, orders: usize) -> Fleet {
        Fleet::start_over(backend, orders, 50)
    }

    /// [`Fleet::start`] with the orders spread over `users` users.
    fn start_over(backend: Backend, orders: usize, users: usize) -> Fleet {
        let cluster = Server::start(backend);
        let database_url = cluster.new_database();
        let dir = tempfile::tempdir().unwrap();
        if common::is_root() {
            // nginx's workers write their temporary files under it.
            let _ = Command::new("chmod").args(["755"]).arg(dir.path()).status();
        }
        // All three start at once, racing for the migrations.
        let instances: Vec<Instance> = (0..3)
            .map(|n| Instance::start(dir.path(), n, &database_url))
            .collect();
        for instance in &instances {
            instance.wait_ready();
        }
        let ports: Vec<u16> = instances.iter().map(|i| i.port).collect();
        let nginx = Nginx::start(dir.path(), &ports);
        let fixtures = fixtures_over(dir.path(), &database_url, orders, users);
        Fleet {
            cluster,
            database_url,
            dir,
            instances,
            nginx,
            fixtures,
        }
    }

    fn results(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn logs(&self) -> Vec<PathBuf> {
        let mut logs: Vec<PathBuf> = self.instances.iter().map(|i| i.log.clone()).collect();
        logs.push(self.nginx.dir.join("access.log"));
        logs.push(self.nginx.dir.join("error.log"));
        logs
    }
}

fn report(scenario: &str, r: &Replayed) {
    let (ack, retry, http, transport) = answers(r);
    say!(
        "{scenario}: {} requests, {ack} ack, {retry} retry, {http} HTTP error, {transport} transport error, {:.0} requests/s",
        r.summary["requests"], r.summary["requests_per_sec"].as_f64().unwrap_or(0.0)
    );
}

mod three_instances_behind_nginx_credit_2000_orders_once_under_duplicate_storms {
    use super::*;

    #[test]
    fn postgresql() {
        super::three_instances_behind_nginx_credit_2000_orders_once_under_duplicate_storms(
            Backend::Postgresql,
        );
    }

    #[test]
    fn mariadb() {
        super::three_instances_behind_nginx_credit_2000_orders_once_under_duplicate_storms(
            Backend::Mariadb,
        );
    }
}

fn three_instances_behind_nginx_credit_2000_orders_once_under_duplicate_storms(backend: Backend) {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fleet = Fleet::start(backend, 2000);
    let r = replay(
        &fleet.nginx.url(),
        &fleet.fixtures,
        &fleet.results("r1.ndjson"),
        5,
        64,
    );
    report("3 instances, --repeat 5 --shuffle at 64", &r);
    let (ack, retry, http, transport) = answers(&r);
    assert_eq!((ack, retry, http, transport), (10_000, 0, 0, 0));
    assert_eq!(assert_acked_are_credited(&r, &fleet.database_url), 2000);
    let credits = credits_by_order(&fleet.database_url);
    assert_eq!(credits.len(), 2000, "exactly 2,000 credits");
    let books = verify(&fleet.database_url);
    assert!(
        books.contains("2000 paid orders") && books.contains("2000 ledger entries"),
        "{books}"
    );

    // Duplicates really did land on different instances: each one credited some orders and
    // answered duplicates of others.
    for instance in &fleet.instances {
        let log = std::fs::read_to_string(&instance.log).unwrap();
        let credited = log.matches("outcome=credited").count();
        let duplicates = log.matches("outcome=already_paid").count();
        say!(
            "  instance :{}: {credited} credited, {duplicates} duplicates",
            instance.port
        );
        assert!(
            credited > 0 && duplicates > 0,
            "instance :{} idle",
            instance.port
        );
    }
    let access = std::fs::read_to_string(fleet.nginx.dir.join("access.log")).unwrap();
    let proxied = access
        .lines()
        .filter(|l| l.contains("POST /notify/alipay"))
        .count();
    assert_eq!(proxied, 10_000, "nginx passed every request");
    assert_no_secrets_in(&fleet.logs());
}

mod a_killed_instance_loses_no_ack_and_a_second_replay_completes_everything {
    use super::*;

    #[test]
    fn postgresql() {
        super::a_killed_instance_loses_no_ack_and_a_second_replay_completes_everything(
            Backend::Postgresql,
        );
    }

    #[test]
    fn mariadb() {
        super::a_killed_instance_loses_no_ack_and_a_second_replay_completes_everything(
            Backend::Mariadb,
        );
    }
}

fn a_killed_instance_loses_no_ack_and_a_second_replay_completes_everything(backend: Backend) {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut fleet = Fleet::start(backend, 1500);
    let results = fleet.results("crash.ndjson");
    let child = replay_in_background(&fleet.nginx.url(), &fleet.fixtures, &results, 3);
    std::thread::sleep(Duration::from_millis(700));
    fleet.instances[1].kill9();
    std::thread::sleep(Duration::from_millis(300));
    fleet.instances[1].spawn();
    let during = finish(child, &results);
    report("kill -9 of one instance mid-replay", &during);
    let acked = assert_acked_are_credited(&during, &fleet.database_url);
    fleet.instances[1].wait_ready();

    let after = replay(
        &fleet.nginx.url(),
        &fleet.fixtures,
        &fleet.results("crash-2.ndjson"),
        1,
        32,
    );
    report("second replay", &after);
    assert_eq!(
        answers(&after).0,
        1500,
        "the provider's retry is acked for every order"
    );
    assert_eq!(credits_by_order(&fleet.database_url).len(), 1500);
    say!("  {acked} orders acked during the crash run, all credited once");
    verify(&fleet.database_url);
    assert_no_secrets_in(&fleet.logs());
}

mod a_database_restart_gets_retries_never_false_acks_and_instances_reconnect {
    use super::*;

    #[test]
    fn postgresql() {
        super::a_database_restart_gets_retries_never_false_acks_and_instances_reconnect(
            Backend::Postgresql,
        );
    }

    #[test]
    fn mariadb() {
        super::a_database_restart_gets_retries_never_false_acks_and_instances_reconnect(
            Backend::Mariadb,
        );
    }
}

fn a_database_restart_gets_retries_never_false_acks_and_instances_reconnect(backend: Backend) {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fleet = Fleet::start(backend, 1500);
    let results = fleet.results("restart.ndjson");
    // Watch one instance's readiness through the restart.
    let watching = Arc::new(AtomicBool::new(true));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let watcher = {
        let (watching, seen) = (watching.clone(), seen.clone());
        let url = format!("{}/readyz", fleet.instances[0].url());
        std::thread::spawn(move || {
            let client = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            while watching.load(Ordering::Relaxed) {
                if let Ok(resp) = client.get(&url).send() {
                    let status = resp.status().as_u16();
                    let mut seen = seen.lock().unwrap();
                    if seen.last() != Some(&status) {
                        seen.push(status);
                    }
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        })
    };
    let child = replay_in_background(&fleet.nginx.url(), &fleet.fixtures, &results, 3);
    std::thread::sleep(Duration::from_millis(700));
    // A fast restart, held down long enough for the probes to see it.
    fleet.cluster.restart(Duration::from_millis(1500));
    let during = finish(child, &results);
    report(
        &format!("{} restart (1.5 s down) mid-replay", fleet.cluster.name()),
        &during,
    );
    // The instances come back by themselves.
    for instance in &fleet.instances {
        instance.wait_ready();
    }
    watching.store(false, Ordering::Relaxed);
    watcher.join().unwrap();
    let seen = seen.lock().unwrap().clone();
    say!("  /readyz went {seen:?}");
    assert!(
        seen.windows(2).any(|w| w == [503, 200]),
        "/readyz never went 503 then 200: {seen:?}"
    );

    // Requests cut by the restart are answered retry (how many depends on timing: most wait for
    // a connection and succeed once the database is back); what must hold is that no ack was
    // given for anything not committed.
    let (_, retry, http, transport) = answers(&during);
    say!("  {retry} retries, {http} HTTP errors, {transport} transport errors during the restart");
    let acked = assert_acked_are_credited(&during, &fleet.database_url);
    let after = replay(
        &fleet.nginx.url(),
        &fleet.fixtures,
        &fleet.results("restart-2.ndjson"),
        1,
        32,
    );
    report("second replay", &after);
    assert_eq!(answers(&after).0, 1500);
    assert_eq!(credits_by_order(&fleet.database_url).len(), 1500);
    say!("  {acked} orders acked during the restart run, all credited once");
    verify(&fleet.database_url);
}

mod killed_database_connections_heal_with_the_same_guarantees {
    use super::*;

    #[test]
    fn postgresql() {
        super::killed_database_connections_heal_with_the_same_guarantees(Backend::Postgresql);
    }

    #[test]
    fn mariadb() {
        super::killed_database_connections_heal_with_the_same_guarantees(Backend::Mariadb);
    }
}

fn killed_database_connections_heal_with_the_same_guarantees(backend: Backend) {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fleet = Fleet::start(backend, 1500);
    let results = fleet.results("terminate.ndjson");
    let child = replay_in_background(&fleet.nginx.url(), &fleet.fixtures, &results, 3);
    let db = fleet.database_url.rsplit('/').next().unwrap().to_owned();
    let mut terminated = 0;
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(400));
        terminated += fleet.cluster.kill_connections(&db);
    }
    let during = finish(child, &results);
    report(
        &format!("{} connections killed x3 mid-replay", fleet.cluster.name()),
        &during,
    );
    say!("  {terminated} connections terminated");
    assert!(terminated > 0);
    let acked = assert_acked_are_credited(&during, &fleet.database_url);
    for instance in &fleet.instances {
        instance.wait_ready();
    }
    let after = replay(
        &fleet.nginx.url(),
        &fleet.fixtures,
        &fleet.results("terminate-2.ndjson"),
        1,
        32,
    );
    report("second replay", &after);
    assert_eq!(answers(&after).0, 1500);
    say!("  {acked} orders acked during the run, all credited once");
    verify(&fleet.database_url);
}

/// The shipped load balancer publishes `/notify/` and nothing else; health, metrics and the admin
/// API answer on its internal side, and only to loopback and private addresses.
#[test]
fn the_load_balancer_publishes_notifications_only_and_keeps_the_rest_internal() {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    if common::is_root() {
        // nginx's workers write their temporary files under it.
        let _ = Command::new("chmod").args(["755"]).arg(dir.path()).status();
    }
    let database_url = format!("sqlite://{}", dir.path().join("lb.db").display());
    let instance = Instance::start(dir.path(), 0, &database_url);
    instance.wait_ready();
    // The test's requests all come from 127.0.0.1; X-Real-IP stands in for other clients.
    let nginx = Nginx::start_with(
        dir.path(),
        &[instance.port],
        "    set_real_ip_from 127.0.0.1;\n    real_ip_header X-Real-IP;",
    );
    let client = reqwest::blocking::Client::new();
    let from = |method: reqwest::Method, url: String, client_ip: Option<&str>| {
        let mut req = client.request(method, url);
        if let Some(ip) = client_ip {
            req = req.header("X-Real-IP", ip);
        }
        req.send().unwrap()
    };
    // payhook stamps every answer with a request id; nginx's own refusals have none.
    let from_payhook = |r: &reqwest::blocking::Response| r.headers().contains_key("x-request-id");

    let public = nginx.url();
    for (method, path) in [
        (reqwest::Method::GET, "/metrics"),
        (reqwest::Method::GET, "/api/orders/ORD-1"),
        (reqwest::Method::POST, "/api/orders"),
        (reqwest::Method::POST, "/api/orders/ORD-1/close"),
        (reqwest::Method::GET, "/console"),
        (reqwest::Method::GET, "/healthz"),
        (reqwest::Method::GET, "/readyz"),
        (reqwest::Method::GET, "/"),
    ] {
        let r = from(method.clone(), format!("{public}{path}"), None);
        assert!(
            matches!(r.status().as_u16(), 403 | 404) && !from_payhook(&r),
            "the public side served {method} {path}: {}",
            r.status()
        );
    }
    let notify = from(
        reqwest::Method::POST,
        format!("{public}/notify/alipay"),
        Some("203.0.113.7"),
    );
    assert!(
        from_payhook(&notify),
        "/notify/ reaches payhook: {}",
        notify.status()
    );

    let internal = nginx.internal_url();
    for ip in [
        None,
        Some("10.1.2.3"),
        Some("172.20.0.9"),
        Some("192.168.1.20"),
    ] {
        let metrics = from(reqwest::Method::GET, format!("{internal}/metrics"), ip);
        assert_eq!(metrics.status().as_u16(), 200, "from {ip:?}");
        assert!(metrics.text().unwrap().contains("payhook_"));
        let api = from(
            reqwest::Method::GET,
            format!("{internal}/api/orders/ORD-1"),
            ip,
        );
        assert_eq!(
            api.status().as_u16(),
            401,
            "from {ip:?}: payhook asks for the token"
        );
    }
    for ip in ["203.0.113.7", "8.8.8.8", "2001:db8::1"] {
        for path in ["/metrics", "/api/orders/ORD-1", "/healthz"] {
            let r = from(reqwest::Method::GET, format!("{internal}{path}"), Some(ip));
            assert_eq!(
                r.status().as_u16(),
                403,
                "the internal side refuses {ip} for {path}"
            );
            assert!(!from_payhook(&r));
        }
    }
}

#[test]
fn one_sqlite_instance_under_64_concurrent_duplicates_of_500_notifications() {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}", dir.path().join("storm.db").display());
    let instance = Instance::start(dir.path(), 0, &database_url);
    instance.wait_ready();
    let file = fixtures(dir.path(), &database_url, 500);
    let results = dir.path().join("storm.ndjson");
    let r = replay(&instance.url(), &file, &results, 64, 64);
    report("SQLite, 500 notifications x 64 at concurrency 64", &r);
    let (ack, retry, http, transport) = answers(&r);
    assert_eq!(http + transport, 0, "every request got a protocol answer");
    assert_eq!(ack + retry, 32_000);
    let log = std::fs::read_to_string(&instance.log).unwrap();
    let locked = log
        .lines()
        .filter(|l| l.contains("database is locked"))
        .count();
    let locked_acked = log
        .lines()
        .filter(|l| l.contains("database is locked") && !l.contains("answer=retry"))
        .count();
    say!("  {locked} 'database is locked' lines, all answered retry");
    assert_eq!(
        locked_acked, 0,
        "a locked database reached a provider as something other than retry"
    );
    // What was acked is credited, and the provider's retry completes the rest.
    let url = database_url.clone();
    let credited = {
        use diesel::prelude::*;
        #[derive(QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn =
            diesel::SqliteConnection::establish(url.trim_start_matches("sqlite://")).unwrap();
        let acked_orders: Vec<&String> = r
            .acks
            .iter()
            .filter(|(_, a)| **a > 0)
            .map(|(o, _)| o)
            .collect();
        for order in &acked_orders {
            let n: Vec<N> = diesel::sql_query(format!(
                "SELECT COUNT(*) AS n FROM ledger WHERE order_no = '{order}'"
            ))
            .load(&mut conn)
            .unwrap();
            assert_eq!(n[0].n, 1, "{order} acked but not credited once");
        }
        acked_orders.len()
    };
    let after = replay(
        &instance.url(),
        &file,
        &dir.path().join("storm-2.ndjson"),
        1,
        16,
    );
    assert_eq!(answers(&after).0, 500);
    say!("  {credited} orders acked in the storm; the second replay acked all 500");
    let books = verify(&database_url);
    assert!(
        books.contains("500 paid orders") && books.contains("500 ledger entries"),
        "{books}"
    );
    assert_no_secrets_in(std::slice::from_ref(&instance.log));
}
