//! The operator console in a real browser: Debian's headless Chromium, driven over WebDriver by
//! `chromedriver`. One operator's journey: log in, search an order, open a rejected notification,
//! credit an anomaly by hand, and check that an XSS payload stored through `/notify` did not run.
//! A screenshot of each page is saved under `target/console-screenshots/`.
//!
//! Runs alone with `cargo test --test browser`. Without Chromium or its driver it fails and says
//! what to install: `apt-get install chromium chromium-driver`.

#[path = "it/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{
    count, create_order, exec, free_port, pay_order, spawn_app, Backend, TestApp, TestDb,
};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

const TOKEN: &str = "browser-admin-token-77d2";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Sets the title and marks the page if it ever runs.
const XSS_BODY: &str = "<script>document.title='pwned'</script>\
     <img src=x onerror=\"document.body.setAttribute('data-pwned','1')\">";

const INSTALL: &str = "the browser test needs Debian's Chromium and its WebDriver: \
     apt-get install chromium chromium-driver";

/// A program on PATH or in Debian's folders.
fn program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/lib/chromium".into()])
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// `chromedriver` on a free port, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start(chromedriver: &Path) -> Driver {
        let port = free_port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}; {INSTALL}", chromedriver.display()));
        let driver = Driver { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the screenshots go: `target/console-screenshots/`.
fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target folder")
        .join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot folder");
    dir
}

struct Journey {
    browser: Client,
    base: String,
    shots: PathBuf,
}

impl Journey {
    async fn goto(&self, path: &str) {
        self.browser
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
    }

    async fn shot(&self, name: &str) {
        let png = self.browser.screenshot().await.expect("screenshot");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        eprintln!("screenshot: {}", path.display());
    }

    async fn css(&self, selector: &str) -> fantoccini::elements::Element {
        self.browser
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(selector))
            .await
            .unwrap_or_else(|e| panic!("{selector} not found: {e}"))
    }

    /// The text of `selector` once it is there. An element found on a page that is replaced
    /// before its text is read (a redirect landing) is looked up again on the new one.
    async fn text(&self, selector: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.css(selector).await.text().await {
                Ok(text) => return text,
                Err(e) if e.is_stale_element_reference() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("{selector}: no text: {e}"),
            }
        }
    }

    async fn script(&self, js: &str) -> Value {
        self.browser.execute(js, vec![]).await.expect("script")
    }

    /// No stored script ran on this page: the title is the console's, and nothing marked the
    /// page.
    async fn assert_nothing_ran(&self, page: &str) {
        let title = self.browser.title().await.expect("title");
        assert!(
            title.ends_with("payhook console"),
            "{page}: title {title:?}"
        );
        assert_eq!(
            self.script("return document.body.hasAttribute('data-pwned')")
                .await,
            json!(false),
            "{page}: the stored payload ran"
        );
    }
}

/// A rejected request with the payload, a paid order, an order paid after it was closed, and a
/// pending order.
fn seed(app: &TestApp) -> i64 {
    let resp = reqwest::blocking::Client::new()
        .post(app.url("/notify/gateway"))
        .header("content-type", "text/html")
        .header("webhook-id", "msg_<b>bold</b>")
        .header("webhook-timestamp", Utc::now().timestamp().to_string())
        .header("webhook-signature", "v1,bm90IGEgc2lnbmF0dXJl")
        .body(XSS_BODY)
        .send()
        .unwrap();
    assert!(!resp.status().is_success());
    let mut conn = app.pool.get().unwrap();
    create_order(
        &mut conn,
        "buyer-1",
        "gateway",
        "25.00",
        "CNY",
        Some("WEB-PAID"),
    );
    assert_eq!(
        pay_order(&mut conn, "gateway", "WEB-PAID", "trade-web", 2500, "CNY"),
        "credited"
    );
    create_order(
        &mut conn,
        "buyer-1",
        "gateway",
        "9.90",
        "CNY",
        Some("WEB-LATE"),
    );
    exec(
        &app.pool,
        "UPDATE orders SET status = 'closed', closed_at = CURRENT_TIMESTAMP \
         WHERE order_no = 'WEB-LATE'",
    );
    assert_eq!(
        pay_order(&mut conn, "gateway", "WEB-LATE", "trade-late", 990, "CNY"),
        "mismatch"
    );
    create_order(
        &mut conn,
        "buyer-2",
        "gateway",
        "3.00",
        "CNY",
        Some("WEB-PENDING"),
    );
    count(
        &app.pool,
        "SELECT id AS n FROM notifications WHERE order_no = 'WEB-LATE'",
    )
}

#[test]
fn an_operator_logs_in_searches_reads_a_rejection_and_credits_an_anomaly_in_chromium() {
    let chromium = program(&["chromium", "chromium-browser"])
        .unwrap_or_else(|| panic!("chromium was not found; {INSTALL}"));
    let chromedriver = program(&["chromedriver"])
        .unwrap_or_else(|| panic!("chromedriver was not found; {INSTALL}"));
    let db = TestDb::new(Backend::Sqlite);
    let app = spawn_app(
        &db,
        &format!(
            "admin_token = {TOKEN:?}\n[channels.gateway]\nprovider = \"standard-webhooks\"\n\
             secrets = [\"{SECRET}\"]\n"
        ),
        Utc::now(),
    );
    let anomaly = seed(&app);
    let driver = Driver::start(&chromedriver);
    let profile = tempfile::tempdir().expect("profile folder");
    let shots = screenshot_dir();
    eprintln!("console screenshots go to {}", shots.display());

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": chromium.to_string_lossy(),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1400,1100",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
            .unwrap_or_else(|e| {
                panic!("chromium did not start under chromedriver: {e}; {INSTALL}")
            });
        let journey = Journey {
            browser,
            base: format!("http://{}", app.addr),
            shots,
        };
        walk(&journey, anomaly).await;
        journey.browser.close().await.expect("close the browser");
    });

    assert_eq!(
        count(
            &app.pool,
            "SELECT COUNT(*) AS n FROM ledger WHERE kind = 'manual_credit'"
        ),
        1
    );
    let report = payhook::books::verify::verify(&mut app.pool.get().unwrap()).unwrap();
    assert!(report.balanced(), "{report}");
}

async fn walk(j: &Journey, anomaly: i64) {
    // Log in.
    j.goto("/console").await;
    j.css("#token").await.send_keys(TOKEN).await.unwrap();
    j.css("#name").await.send_keys("ana").await.unwrap();
    j.shot("01-login").await;
    j.css("#login").await.click().await.unwrap();
    j.css("#logout").await;
    assert_eq!(j.text("#open-anomalies").await, "1");
    assert!(j.text("#pending").await.contains("WEB-PENDING"));
    j.assert_nothing_ran("overview").await;
    j.shot("02-overview").await;

    // Search an order and open it.
    j.css("nav a[href='/console/notifications']")
        .await
        .click()
        .await
        .unwrap();
    j.css("#search-order")
        .await
        .send_keys("WEB-PAID")
        .await
        .unwrap();
    j.css("#search-button").await.click().await.unwrap();
    j.css("a.order-link").await;
    let found = j.text("table.rows tbody").await;
    assert!(
        found.contains("WEB-PAID") && found.contains("credited"),
        "{found}"
    );
    assert!(!found.contains("WEB-LATE"), "{found}");
    j.shot("03-search").await;
    j.css("a.order-link").await.click().await.unwrap();
    let timeline = j.text("#timeline").await;
    for event in ["created", "notification: paid", "paid", "credit"] {
        assert!(timeline.contains(event), "{event}: {timeline}");
    }
    j.shot("04-order").await;

    // A rejected notification: its explanation, and the payload shown as text.
    j.goto("/console/notifications?outcome=rejected").await;
    j.assert_nothing_ran("rejected list").await;
    j.css("a.notification-link").await.click().await.unwrap();
    let explanation = j.text("#explanation").await;
    // First of all: the stored payload did not run (the escaping holds, and the CSP would
    // stop inline script if it did not).
    j.assert_nothing_ran("rejected notification").await;
    assert!(
        explanation.contains("now: does not verify") && explanation.contains("keys tried"),
        "{explanation}"
    );
    let body = j.text("#body").await;
    assert!(
        body.contains("<script>document.title='pwned'</script>"),
        "{body}"
    );
    assert!(j.text("#headers").await.contains("msg_<b>bold</b>"));
    assert_eq!(
        j.script("return document.querySelectorAll('main img, #headers b').length")
            .await,
        json!(0)
    );
    j.shot("05-rejected").await;

    // The anomaly: credit it by hand.
    j.css("nav a[href='/console/anomalies']")
        .await
        .click()
        .await
        .unwrap();
    let queue = j.text("#open").await;
    assert!(queue.contains("WEB-LATE"), "{queue}");
    j.shot("06-anomalies").await;
    j.css(&format!("#open a[href='/console/notifications/{anomaly}']"))
        .await
        .click()
        .await
        .unwrap();
    j.css("#note")
        .await
        .send_keys("paid after close; the merchant accepts it")
        .await
        .unwrap();
    j.shot("07-anomaly").await;
    j.css("#credit").await.click().await.unwrap();
    let resolved = j.text("#resolved").await;
    assert!(
        resolved.contains("credited") && resolved.contains("ana (session"),
        "{resolved}"
    );
    j.shot("08-credited").await;

    j.goto("/console/accounts/buyer-1").await;
    let ledger = j.text("#ledger").await;
    assert!(
        ledger.contains("manual_credit") && ledger.contains("9.90 CNY"),
        "{ledger}"
    );
    j.shot("09-account").await;
    j.goto("/console").await;
    assert_eq!(j.text("#open-anomalies").await, "0");
    j.assert_nothing_ran("overview after").await;
    j.shot("10-overview-after").await;

    // Log out: the console asks for the token again.
    j.css("#logout").await.click().await.unwrap();
    j.css("#token").await;
    j.goto("/console/anomalies").await;
    j.css("#token").await;
}
