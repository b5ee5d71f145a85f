//! The `payhook` binary itself: `migrate` and `serve` on the SQLite default and on PostgreSQL, and
//! the errors a user sees when something is wrong.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{free_port, Backend, TestDb};

fn payhook(cwd: &Path) -> Command {
    let mut cmd = crate::common::payhook();
    cmd.current_dir(cwd);
    cmd
}

fn output(cmd: &mut Command) -> (Output, String) {
    let out = cmd.output().expect("run payhook");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

/// A `payhook serve` process, killed when dropped.
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(cmd: &mut Command) -> Served {
    Served(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn payhook serve"),
    )
}

/// Polls `url` until it answers `status`, for up to 20 s.
fn wait_for(url: &str, status: u16) {
    let client = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(resp) = client.get(url).send() {
            if resp.status().as_u16() == status {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{url} never answered {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How many migrations the binary embeds (the same on every backend).
fn migrations() -> usize {
    let folder = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite");
    std::fs::read_dir(folder).unwrap().count()
}

#[test]
fn migrate_and_serve_use_the_sqlite_default_path_with_no_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let (out, text) = output(payhook(dir.path()).arg("migrate"));
    assert!(out.status.success(), "{text}");
    let all = format!("{} migration(s) applied", migrations());
    assert!(text.contains(&all), "{text}");
    assert!(dir.path().join("data/payhook.db").exists());

    let (out, text) = output(payhook(dir.path()).arg("migrate"));
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("0 migration(s) applied"),
        "a second migrate is a no-op: {text}"
    );

    let port = free_port();
    let _server =
        serve(payhook(dir.path()).args(["serve", "--bind", &format!("127.0.0.1:{port}")]));
    wait_for(&format!("http://127.0.0.1:{port}/readyz"), 200);
    let health = reqwest::blocking::get(format!("http://127.0.0.1:{port}/healthz")).unwrap();
    assert_eq!(health.status().as_u16(), 200);
}

#[test]
fn migrate_and_serve_work_against_a_postgresql_url() {
    let db = TestDb::new(Backend::Postgresql);
    let dir = tempfile::tempdir().unwrap();
    let (out, text) = output(payhook(dir.path()).args(["migrate", "--database-url", &db.url]));
    assert!(out.status.success(), "{text}");
    let all = format!("{} migration(s) applied", migrations());
    assert!(text.contains(&all), "{text}");
    assert!(
        !dir.path().join("data").exists(),
        "no SQLite file when PostgreSQL is named"
    );

    let port = free_port();
    let _server = serve(
        payhook(dir.path())
            .env("PAYHOOK_DATABASE_URL", &db.url)
            .env("PAYHOOK_BIND", format!("127.0.0.1:{port}"))
            .arg("serve"),
    );
    wait_for(&format!("http://127.0.0.1:{port}/readyz"), 200);
}

#[test]
fn a_mysql_server_that_is_down_or_refuses_the_password_is_named_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let down = format!("mysql://root:hunter2@127.0.0.1:{port}/nowhere");
    let (out, text) = output(payhook(dir.path()).args(["migrate", "--database-url", &down]));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("Can't connect"),
        "the client's own words: {text}"
    );
    assert!(
        !text.contains("hunter2"),
        "the password is never printed: {text}"
    );

    let server = crate::common::mariadb();
    server.admin_exec(
        "CREATE USER IF NOT EXISTS 'payhook_pw'@'%' IDENTIFIED BY 'right-one'; \
         GRANT ALL ON *.* TO 'payhook_pw'@'%'",
    );
    let wrong = format!(
        "mysql://payhook_pw:hunter2@127.0.0.1:{}/mysql",
        server.port()
    );
    let (out, text) = output(payhook(dir.path()).args(["migrate", "--database-url", &wrong]));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("Access denied"), "{text}");
    assert!(
        !text.contains("hunter2"),
        "the password is never printed: {text}"
    );
    assert_eq!(text.trim().lines().count(), 1, "one line: {text}");
}

#[test]
fn a_database_that_is_down_is_reported_with_its_own_message() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("postgres://postgres:hunter2@127.0.0.1:{port}/nowhere");
    let (out, text) = output(payhook(dir.path()).args(["migrate", "--database-url", &url]));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("Connection refused") || text.contains("connection to server"),
        "libpq's own words are shown: {text}"
    );
    assert!(!text.contains("Invalid connection url"), "{text}");
    assert!(
        !text.contains("hunter2"),
        "the password is never printed: {text}"
    );
}

#[test]
fn a_wrong_config_key_or_url_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("payhook.toml");
    std::fs::write(&config, "[pool]\nmax_sise = 4\n").unwrap();
    let (out, text) = output(
        payhook(dir.path())
            .args(["migrate", "--config"])
            .arg(&config),
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("pool") && text.contains("max_sise"), "{text}");

    let (out, text) = output(payhook(dir.path()).args(["migrate", "--database-url", "oracle://x"]));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("sqlite://") && text.contains("postgres://") && text.contains("mysql://"),
        "{text}"
    );

    let (out, text) = output(
        payhook(dir.path())
            .env("PAYHOOK_CONFIG", dir.path().join("missing.toml"))
            .arg("migrate"),
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("missing.toml"), "{text}");
}

#[test]
fn serve_refuses_a_weak_webhook_secret_naming_its_channel() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("payhook.toml");
    std::fs::write(
        &config,
        "[channels.gateway]\nprovider = \"standard-webhooks\"\nsecrets = [\"whsec_AAAA\"]\n",
    )
    .unwrap();
    let (out, text) = output(
        payhook(dir.path())
            .args(["serve", "--bind", "127.0.0.1:0", "--config"])
            .arg(&config),
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("gateway"), "{text}");
    assert!(text.contains("3-byte key"), "{text}");
}

#[test]
fn serve_refuses_a_port_that_is_taken() {
    let db = TestDb::new(Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (out, text) =
        output(payhook(dir.path()).args(["serve", "--database-url", &db.url, "--bind", &addr]));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(&addr), "{text}");
}

#[test]
fn order_create_and_account_show_work_without_the_server() {
    let db = TestDb::new(Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("payhook.toml");
    std::fs::write(
        &config,
        "[channels.gateway]\nprovider = \"standard-webhooks\"\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n",
    )
    .unwrap();
    let create = |amount: &str, channel: &str| {
        let mut cmd = payhook(dir.path());
        cmd.args(["order", "create", "--config"])
            .arg(&config)
            .args([
                "--database-url",
                &db.url,
                "--user-id",
                "cli-user",
                "--amount",
                amount,
            ])
            .args([
                "--currency",
                "CNY",
                "--channel",
                channel,
                "--order-no",
                "CLI-ORDER-1",
            ]);
        output(&mut cmd)
    };
    let (out, text) = create("3.50", "gateway");
    assert!(out.status.success(), "{text}");
    let order: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(order["order_no"], "CLI-ORDER-1");
    assert_eq!(order["amount"], "3.50");
    assert_eq!(order["amount_minor"], 350);
    assert_eq!(order["status"], "pending");

    let (out, _) = create("3.50", "gateway");
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again, order, "an identical repeat prints the same order");
    let (out, text) = create("4.00", "gateway");
    assert_eq!(out.status.code(), Some(1));
    assert!(text.contains("different amount"), "{text}");
    let (out, text) = create("3.50", "elsewhere");
    assert_eq!(out.status.code(), Some(1));
    assert!(text.contains("channel"), "{text}");

    let show = |user: &str| {
        let mut cmd = payhook(dir.path());
        cmd.args(["account", "show", "--database-url", &db.url, user]);
        output(&mut cmd)
    };
    let (out, text) = show("cli-user");
    assert!(out.status.success(), "{text}");
    let account: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        account["balances"],
        serde_json::json!([{"currency": "CNY", "amount": "0.00", "amount_minor": 0}])
    );
    assert_eq!(account["ledger"], serde_json::json!([]));
    let (out, text) = show("nobody");
    assert_eq!(out.status.code(), Some(1));
    assert!(text.contains("no account"), "{text}");
}
