//! The operator console through the real server on every backend: login, sessions and CSRF, the
//! security headers, every page with data in it, the search, resolving anomalies (two operators
//! crediting one at once credit it once), and stored attacker bytes shown only escaped.

use std::sync::Arc;

use chrono::Utc;
use reqwest::blocking::{Client, Response};
use reqwest::header::HeaderMap;

use crate::common::{
    count, create_order, exec, pay_order, race, spawn_app, standard_webhooks_payment, TestApp,
    TestDb,
};
use payhook::books::verify::verify;

const TOKEN: &str = "console-admin-token-5e0a";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn app_with(db: &TestDb, token: Option<&str>) -> TestApp {
    let mut config =
        format!("[channels.gateway]\nprovider = \"standard-webhooks\"\nsecrets = [\"{SECRET}\"]\n");
    if let Some(token) = token {
        config = format!("admin_token = {token:?}\n{config}");
    }
    spawn_app(db, &config, Utc::now())
}

fn client() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

struct Page {
    status: u16,
    headers: HeaderMap,
    body: String,
}

fn page(resp: Response) -> Page {
    Page {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.text().unwrap(),
    }
}

/// A logged-in operator.
struct Console {
    base: String,
    cookie: String,
    csrf: String,
}

/// The value of the first hidden `csrf_token` field of a page.
fn csrf_in(html: &str) -> String {
    let marker = "name=\"csrf_token\" value=\"";
    let at = html.find(marker).expect("a form with a CSRF token") + marker.len();
    html[at..].split('"').next().unwrap().to_owned()
}

/// The `payhook_session=...` pair of a login's Set-Cookie.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("payhook_session="))
        .map(str::to_owned)
}

fn login_as(app: &TestApp, name: &str) -> Console {
    let resp = page(
        client()
            .post(app.url("/console/login"))
            .form(&[("token", TOKEN), ("name", name)])
            .send()
            .unwrap(),
    );
    assert_eq!(resp.status, 303, "{}", resp.body);
    let set = session_cookie(&resp.headers).expect("a session cookie");
    let cookie = set.split(';').next().unwrap().to_owned();
    let mut console = Console {
        base: format!("http://{}", app.addr),
        cookie,
        csrf: String::new(),
    };
    let overview = console.get("/console");
    assert_eq!(overview.status, 200);
    console.csrf = csrf_in(&overview.body);
    console
}

impl Console {
    fn get(&self, path: &str) -> Page {
        page(
            client()
                .get(format!("{}{path}", self.base))
                .header("cookie", &self.cookie)
                .send()
                .unwrap(),
        )
    }

    /// POSTs `fields` and this session's CSRF token.
    fn post(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        let mut all = vec![("csrf_token", self.csrf.as_str())];
        all.extend_from_slice(fields);
        self.post_raw(path, &all)
    }

    fn post_raw(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        page(
            client()
                .post(format!("{}{path}", self.base))
                .header("cookie", &self.cookie)
                .form(fields)
                .send()
                .unwrap(),
        )
    }
}

/// Sends a request to `/notify/gateway` that fails verification, so that it is stored.
fn send_rejected(app: &TestApp, id_header: &str, body: &str) {
    let resp = client()
        .post(app.url("/notify/gateway"))
        .header("content-type", "application/json")
        .header("webhook-id", id_header)
        .header("webhook-timestamp", Utc::now().timestamp().to_string())
        .header("webhook-signature", "v1,bm90IGEgc2lnbmF0dXJl")
        .body(body.to_owned())
        .send()
        .unwrap();
    assert!(resp.status().is_client_error() || resp.status().is_server_error());
}

/// An anomaly: a payment that arrived after its order was closed. Returns its inbox id.
fn paid_after_close(app: &TestApp, user: &str, order_no: &str) -> i64 {
    let mut conn = app.pool.get().unwrap();
    create_order(&mut conn, user, "gateway", "12.34", "CNY", Some(order_no));
    exec(
        &app.pool,
        &format!("UPDATE orders SET status = 'closed', closed_at = CURRENT_TIMESTAMP WHERE order_no = '{order_no}'"),
    );
    assert_eq!(
        pay_order(
            &mut conn,
            "gateway",
            order_no,
            &format!("trade-{order_no}"),
            1234,
            "CNY"
        ),
        "mismatch"
    );
    inbox_id(app, order_no)
}

fn inbox_id(app: &TestApp, order_no: &str) -> i64 {
    count(
        &app.pool,
        &format!("SELECT MAX(id) AS n FROM notifications WHERE order_no = '{order_no}'"),
    )
}

fn assert_balanced(app: &TestApp) {
    let report = verify(&mut app.pool.get().unwrap()).unwrap();
    assert!(report.balanced(), "{report}");
}

fn login_logout_and_the_session_cookie(db: TestDb) {
    let app = app_with(&db, Some(TOKEN));
    let anonymous = page(client().get(app.url("/console")).send().unwrap());
    assert_eq!(anonymous.status, 200);
    assert!(
        anonymous.body.contains("name=\"token\""),
        "{}",
        anonymous.body
    );
    assert!(!anonymous.body.contains("Log out"));
    let elsewhere = page(client().get(app.url("/console/anomalies")).send().unwrap());
    assert_eq!(elsewhere.status, 401);
    assert!(elsewhere.body.contains("name=\"token\""));

    let wrong = page(
        client()
            .post(app.url("/console/login"))
            .form(&[("token", "not-the-token")])
            .send()
            .unwrap(),
    );
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("Wrong token") && wrong.body.contains("name=\"token\""));
    assert_eq!(session_cookie(&wrong.headers), None);

    let right = page(
        client()
            .post(app.url("/console/login"))
            .form(&[("token", TOKEN), ("name", "ana")])
            .send()
            .unwrap(),
    );
    assert_eq!(right.status, 303);
    assert_eq!(right.headers["location"], "/console");
    let cookie = session_cookie(&right.headers).unwrap();
    for part in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/console",
        "Max-Age=28800",
    ] {
        assert!(cookie.contains(part), "{part} missing from {cookie}");
    }
    assert!(!cookie.contains("Secure"), "{cookie}");
    let id = cookie
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("payhook_session=");
    assert_eq!(id.len(), 64, "{cookie}");
    assert!(!right.headers["location"].to_str().unwrap().contains(id));
    // Only the digest of the id is stored.
    assert_eq!(
        count(
            &app.pool,
            &format!("SELECT COUNT(*) AS n FROM console_sessions WHERE id_hash = '{id}'")
        ),
        0
    );
    assert_eq!(
        count(&app.pool, "SELECT COUNT(*) AS n FROM console_sessions"),
        1
    );

    // Behind a proxy that terminates TLS, the cookie is Secure.
    let proxied = page(
        client()
            .post(app.url("/console/login"))
            .header("x-forwarded-proto", "https")
            .form(&[("token", TOKEN)])
            .send()
            .unwrap(),
    );
    assert!(session_cookie(&proxied.headers).unwrap().contains("Secure"));

    let console = login_as(&app, "ana");
    let overview = console.get("/console");
    assert!(overview.body.contains("Log out") && overview.body.contains("ana"));
    let refused = console.post_raw("/console/logout", &[]);
    assert_eq!(refused.status, 403);
    assert_eq!(
        console.get("/console/anomalies").status,
        200,
        "still logged in"
    );
    let out = console.post("/console/logout", &[]);
    assert_eq!(out.status, 303);
    let removal = session_cookie(&out.headers).unwrap();
    assert!(removal.contains("Max-Age=0"), "{removal}");
    let after = console.get("/console/anomalies");
    assert_eq!(after.status, 401);
    assert!(after.body.contains("name=\"token\""));
}

fn an_expired_session_logs_out(db: TestDb) {
    let app = app_with(&db, Some(TOKEN));
    let console = login_as(&app, "ana");
    assert_eq!(console.get("/console/notifications").status, 200);
    exec(
        &app.pool,
        "UPDATE console_sessions SET expires_at = '2000-01-01 00:00:00'",
    );
    let expired = console.get("/console/notifications");
    assert_eq!(expired.status, 401);
    assert!(expired.body.contains("name=\"token\""));
    assert_eq!(console.post("/console/logout", &[]).status, 403);
    // A new login forgets the expired session.
    login_as(&app, "ana");
    assert_eq!(
        count(&app.pool, "SELECT COUNT(*) AS n FROM console_sessions"),
        1
    );
}

fn with_no_admin_token_the_console_admits_no_one(db: TestDb) {
    let app = app_with(&db, None);
    for token in ["", "anything", TOKEN] {
        let resp = page(
            client()
                .post(app.url("/console/login"))
                .form(&[("token", token)])
                .send()
                .unwrap(),
        );
        assert_eq!(resp.status, 403, "{token}");
        assert!(resp.body.contains("No admin token is configured"));
        assert_eq!(session_cookie(&resp.headers), None);
    }
    assert_eq!(
        count(&app.pool, "SELECT COUNT(*) AS n FROM console_sessions"),
        0
    );
}

fn posts_without_the_session_s_csrf_token_are_refused(db: TestDb) {
    let app = app_with(&db, Some(TOKEN));
    let id = paid_after_close(&app, "csrf-user", "CSRF-1");
    let ana = login_as(&app, "ana");
    let bob = login_as(&app, "bob");
    assert_ne!(ana.csrf, bob.csrf);
    let resolve = format!("/console/anomalies/{id}/resolve");
    let reapply = format!("/console/notifications/{id}/reapply");
    let credit = [("action", "credit"), ("note", "paid after close")];
    for path in [resolve.as_str(), reapply.as_str(), "/console/logout"] {
        let missing = ana.post_raw(path, &credit);
        let wrong = ana.post_raw(path, &[("csrf_token", "0000"), credit[0], credit[1]]);
        let others = ana.post_raw(path, &[("csrf_token", &bob.csrf), credit[0], credit[1]]);
        let no_session = page(
            client()
                .post(app.url(path))
                .form(&[("csrf_token", ana.csrf.as_str()), credit[0], credit[1]])
                .send()
                .unwrap(),
        );
        for (what, resp) in [
            ("missing", missing),
            ("wrong", wrong),
            ("another session's", others),
            ("no session", no_session),
        ] {
            assert_eq!(resp.status, 403, "{path} with {what} token: {}", resp.body);
        }
    }
    assert_eq!(
        count(
            &app.pool,
            "SELECT COUNT(*) AS n FROM ledger WHERE kind = 'manual_credit'"
        ),
        0
    );
    assert_eq!(
        count(
            &app.pool,
            "SELECT COUNT(*) AS n FROM notifications WHERE resolution IS NOT NULL"
        ),
        0
    );
    assert_eq!(ana.get("/console").status, 200, "logout was refused");
    // With its own token the same form goes through.
    assert_eq!(ana.post(&resolve, &credit).status, 303);
    // Its stored body was never a signed request: applying it again is refused with what was
    // tried, and nothing changes.
    let dry = ana.post(&reapply, &[("dry_run", "1")]);
    assert_eq!(dry.status, 422, "{}", dry.body);
    assert!(dry.body.contains("does not verify"), "{}", dry.body);
    let again = ana.post(&reapply, &[]);
    assert_eq!(again.status, 422, "{}", again.body);
    assert_eq!(
        count(
            &app.pool,
            "SELECT COUNT(*) AS n FROM ledger WHERE kind = 'credit'"
        ),
        0
    );
}

fn every_console_response_carries_the_security_headers(db: TestDb) {
    let app = app_with(&db, Some(TOKEN));
    let console = login_as(&app, "ana");
    let id = paid_after_close(&app, "hdr-user", "HDR-1");
    let pages = vec![
        page(client().get(app.url("/console")).send().unwrap()),
        page(
            client()
                .get(app.url("/console/notifications"))
                .send()
                .unwrap(),
        ),
        page(
            client()
                .post(app.url("/console/login"))
                .form(&[("token", "wrong")])
                .send()
                .unwrap(),
        ),
        console.get("/console"),
        console.get("/console/notifications?order_no=HDR-1"),
        console.get(&format!("/console/notifications/{id}")),
        console.get("/console/orders/HDR-1"),
        console.get("/console/accounts/hdr-user"),
        console.get("/console/anomalies"),
        console.get("/console/static/console.css"),
        console.get("/console/no-such-page"),
        console.post_raw(&format!("/console/anomalies/{id}/resolve"), &[]),
        console.post(&format!("/console/notifications/{id}/reapply"), &[]),
    ];
    for p in pages {
        let h = |name: &str| {
            p.headers
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_else(|| panic!("{name} missing ({}): {:?}", p.status, p.headers))
        };
        assert_eq!(
            h("content-security-policy"),
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        );
        assert_eq!(h("x-frame-options"), "DENY");
        assert_eq!(h("referrer-policy"), "no-referrer");
        assert_eq!(h("x-content-type-options"), "nosniff");
        assert_eq!(h("cache-control"), "no-store");
        // No page holds inline script or style.
        assert!(!p.body.contains("<script"), "{}", p.body);
        assert!(!p.body.contains("style="), "{}", p.body);
    }
}

fn every_page_shows_its_data(db: TestDb) {
    let app = app_with(&db, Some(TOKEN));
    let mut conn = app.pool.get().unwrap();
    create_order(
        &mut conn,
        "page-user",
        "gateway",
        "5.00",
        "CNY",
        Some("PAGE-PAID"),
    );
    assert_eq!(
        pay_order(&mut conn, "gateway", "PAGE-PAID", "trade-paid", 500, "CNY"),
        "credited"
    );
    create_order(
        &mut conn,
        "page-user",
        "gateway",
        "7.00",
        "CNY",
        Some("PAGE-PENDING"),
    );
    drop(conn);
    let anomaly = paid_after_close(&app, "page-user", "PAGE-CLOSED");
    send_rejected(&app, "msg_page", "{\"not\": \"signed\"}");
    let console = login_as(&app, "ana");

    let overview = console.get("/console");
    assert_eq!(overview.status, 200);
    let body = &overview.body;
    assert!(body.contains("<svg id=\"traffic\""), "{body}");
    assert!(body.contains("<rect class=\"o-credited\""), "{body}");
    assert!(body.contains("<rect class=\"o-rejected\""), "{body}");
    assert!(
        body.contains("<span id=\"open-anomalies\">1</span>"),
        "{body}"
    );
    assert!(
        body.contains(&format!("/console/notifications/{anomaly}\"")),
        "{body}"
    );
    assert!(body.contains("PAGE-PENDING"), "oldest pending: {body}");
    assert!(body.contains("signature"), "rejected by reason: {body}");
    assert!(body.contains("id=\"latency\""), "{body}");

    let list = console.get("/console/notifications");
    assert!(
        list.body.contains("PAGE-PAID") && list.body.contains("rejected"),
        "{}",
        list.body
    );

    let detail = console.get(&format!("/console/notifications/{anomaly}"));
    assert!(
        detail.body.contains("paid after the order was closed"),
        "{}",
        detail.body
    );
    assert!(detail.body.contains("id=\"resolve\""), "{}", detail.body);
    assert!(detail.body.contains("/reapply\""), "{}", detail.body);
    assert!(
        detail.body.contains("paid in the test"),
        "the body: {}",
        detail.body
    );

    let order = console.get("/console/orders/PAGE-PAID");
    for event in [
        "created",
        "notification: paid",
        "credited",
        "paid",
        "credit",
        "trade trade-paid",
    ] {
        assert!(order.body.contains(event), "{event}: {}", order.body);
    }
    let closed = console.get("/console/orders/PAGE-CLOSED");
    assert!(closed.body.contains("closed") && closed.body.contains("mismatch"));
    assert_eq!(console.get("/console/orders/NO-SUCH").status, 404);

    let account = console.get("/console/accounts/page-user");
    assert!(account.body.contains("5.00 CNY"), "{}", account.body);
    assert!(account.body.contains("PAGE-PAID"), "{}", account.body);
    assert_eq!(console.get("/console/accounts/nobody").status, 404);

    let queue = console.get("/console/anomalies");
    assert!(queue.body.contains("PAGE-CLOSED"), "{}", queue.body);

    let go = console.get("/console/orders?order_no=PAGE-PAID");
    assert_eq!(
        (go.status, &go.headers["location"]),
        (303, &"/console/orders/PAGE-PAID".parse().unwrap())
    );
}

fn the_search_filters_and_pages(db: TestDb) {
    let app = app_with(&db, Some(TOKEN));
    let mut conn = app.pool.get().unwrap();
    create_order(
        &mut conn,
        "s-user",
        "gateway",
        "1.00",
        "CNY",
        Some("SEARCH-A"),
    );
    assert_eq!(
        pay_order(&mut conn, "gateway", "SEARCH-A", "ta", 100, "CNY"),
        "credited"
    );
    create_order(
        &mut conn,
        "s-user",
        "gateway",
        "1.00",
        "CNY",
        Some("SEARCH-B"),
    );
    assert_eq!(
        pay_order(&mut conn, "gateway", "SEARCH-B", "tb", 99, "CNY"),
        "mismatch"
    );
    let channel = payhook::domain::ids::ChannelName::parse("gateway").unwrap();
    for i in 0..55 {
        payhook::books::inbox::record_rejection(
            &mut conn,
            &channel,
            payhook::books::inbox::Source::Notify,
            "signature does not verify",
            &[],
            format!("body {i}").as_bytes(),
            crate::common::now(),
        )
        .unwrap();
    }
    exec(
        &app.pool,
        "UPDATE notifications SET source = 'query' WHERE order_no = 'SEARCH-A'",
    );
    drop(conn);
    let console = login_as(&app, "ana");
    let ids = |path: &str| -> Vec<String> {
        let body = console.get(path).body;
        body.split("class=\"notification-link\" href=\"/console/notifications/")
            .skip(1)
            .map(|s| s.split('"').next().unwrap().to_owned())
            .collect()
    };
    let a = inbox_id(&app, "SEARCH-A").to_string();
    let b = inbox_id(&app, "SEARCH-B").to_string();
    assert_eq!(
        ids("/console/notifications?order_no=SEARCH-A"),
        [a.as_str()]
    );
    assert_eq!(ids("/console/notifications?outcome=mismatch"), [b.as_str()]);
    assert_eq!(ids("/console/notifications?source=query"), [a.as_str()]);
    assert_eq!(
        ids("/console/notifications?verified=true"),
        [b.clone(), a.clone()]
    );
    assert_eq!(ids("/console/notifications?channel=other").len(), 0);
    assert_eq!(
        ids("/console/notifications?from=2000-01-01&to=2001-01-01").len(),
        0
    );
    assert_eq!(
        ids("/console/notifications?from=2000-01-01T00:00&verified=true").len(),
        2
    );
    let bad = console.get("/console/notifications?verified=maybe&from=yesterday");
    assert!(bad.body.contains("neither true nor false") && bad.body.contains("is not a time"));
    // 55 rejected requests: a page of 50, then 5 older.
    let first = console.get("/console/notifications?verified=false");
    let first_ids = ids("/console/notifications?verified=false");
    assert_eq!(first_ids.len(), 50);
    let next = first
        .body
        .split("id=\"next\" href=\"")
        .nth(1)
        .expect("a next page");
    let next = next
        .split('"')
        .next()
        .unwrap()
        .replace("&#38;", "&")
        .replace("&amp;", "&");
    assert!(next.contains("verified=false"), "{next}");
    let second = ids(&next);
    assert_eq!(second.len(), 5, "{next}");
    assert!(second.iter().all(|id| !first_ids.contains(id)));
}

fn resolutions_record_who_when_and_why_once(db: TestDb) {
    let app = app_with(&db, Some(TOKEN));
    let dismissed = paid_after_close(&app, "r-user", "RES-1");
    let refunded = paid_after_close(&app, "r-user", "RES-2");
    let console = login_as(&app, "ana");
    let resolve = |id: i64, fields: &[(&str, &str)]| {
        console.post(&format!("/console/anomalies/{id}/resolve"), fields)
    };
    let empty = resolve(dismissed, &[("action", "dismiss"), ("note", "  ")]);
    assert_eq!(empty.status, 422, "{}", empty.body);
    let odd = resolve(dismissed, &[("action", "explode"), ("note", "x")]);
    assert_eq!(odd.status, 422);
    let done = resolve(
        dismissed,
        &[("action", "dismiss"), ("note", "a test payment")],
    );
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(
        done.headers["location"],
        format!("/console/notifications/{dismissed}").as_str()
    );
    let shown = console.get(&format!("/console/notifications/{dismissed}"));
    assert!(
        shown
            .body
            .contains("Resolved as <strong>dismissed</strong> by ana (session "),
        "{}",
        shown.body
    );
    assert!(shown.body.contains("a test payment"));
    assert!(!shown.body.contains("id=\"resolve\""));
    let again = resolve(
        dismissed,
        &[("action", "credit"), ("note", "changed my mind")],
    );
    assert_eq!(again.status, 409, "{}", again.body);
    assert!(
        again.body.contains("resolved first as dismissed by ana"),
        "{}",
        again.body
    );
    assert_eq!(
        resolve(
            refunded,
            &[
                ("action", "refunded_to_buyer"),
                ("note", "refunded by bank transfer")
            ]
        )
        .status,
        303
    );
    // Neither moved money.
    assert_eq!(count(&app.pool, "SELECT COUNT(*) AS n FROM ledger"), 0);
    assert_eq!(
        count(
            &app.pool,
            "SELECT COUNT(*) AS n FROM notifications WHERE resolution IS NOT NULL \
             AND resolved_by LIKE 'ana (session %' AND resolved_at IS NOT NULL"
        ),
        2
    );
    // A notification that is no anomaly, and one that is no payment, are refused.
    let mut conn = app.pool.get().unwrap();
    create_order(
        &mut conn,
        "r-user",
        "gateway",
        "1.00",
        "CNY",
        Some("RES-OK"),
    );
    assert_eq!(
        pay_order(&mut conn, "gateway", "RES-OK", "t-ok", 100, "CNY"),
        "credited"
    );
    drop(conn);
    let fine = inbox_id(&app, "RES-OK");
    assert_eq!(
        resolve(fine, &[("action", "dismiss"), ("note", "x")]).status,
        409
    );
    assert_eq!(
        resolve(999_999, &[("action", "dismiss"), ("note", "x")]).status,
        404
    );
    exec(
        &app.pool,
        &format!("UPDATE notifications SET kind = 'refund' WHERE id = {refunded}"),
    );
    let queue = console.get("/console/anomalies");
    assert!(queue.body.contains("refunded_to_buyer"), "{}", queue.body);
    let overview = console.get("/console");
    assert!(overview
        .body
        .contains("<span id=\"open-anomalies\">0</span>"));
    assert_balanced(&app);
}

fn two_operators_crediting_one_anomaly_at_once_credit_it_once(db: TestDb) {
    let app = app_with(&db, Some(TOKEN));
    let id = paid_after_close(&app, "race-user", "RACE-1");
    let operators: Arc<Vec<Console>> =
        Arc::new((0..4).map(|i| login_as(&app, &format!("op{i}"))).collect());
    let path = format!("/console/anomalies/{id}/resolve");
    let answers = race(8, move |i| {
        let answer = operators[i % 4].post(
            &path,
            &[("action", "credit"), ("note", "the merchant accepts it")],
        );
        (answer.status, answer.body)
    });
    let mut statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
    statuses.sort();
    assert_eq!(statuses, [303, 409, 409, 409, 409, 409, 409, 409]);
    // Each loser is told who won.
    for (_, body) in answers.iter().filter(|(status, _)| *status == 409) {
        assert!(body.contains("resolved first as credited by op"), "{body}");
    }
    assert_eq!(
        count(
            &app.pool,
            "SELECT COUNT(*) AS n FROM ledger WHERE kind = 'manual_credit'"
        ),
        1
    );
    assert_eq!(
        count(
            &app.pool,
            &format!(
                "SELECT COUNT(*) AS n FROM ledger WHERE kind = 'manual_credit' \
                 AND entry_key = 'notification:{id}' AND amount_minor = 1234 \
                 AND order_no = 'RACE-1' AND memo = 'the merchant accepts it'"
            )
        ),
        1
    );
    assert_eq!(
        count(
            &app.pool,
            "SELECT balance_minor AS n FROM accounts WHERE user_id = 'race-user'"
        ),
        1234
    );
    assert_balanced(&app);
    let console = login_as(&app, "checker");
    let account = console.get("/console/accounts/race-user");
    assert!(account.body.contains("manual_credit") && account.body.contains("12.34 CNY"));
    let order = console.get("/console/orders/RACE-1");
    assert!(order.body.contains("manual_credit"), "{}", order.body);
}

/// `text` as askama escapes it into HTML.
fn escaped(text: &str) -> String {
    text.replace('&', "&#38;")
        .replace('<', "&#60;")
        .replace('>', "&#62;")
        .replace('"', "&#34;")
        .replace('\'', "&#39;")
}

const XSS_BODY: &str = "<script>document.title='pwned'</script><img src=x onerror=\"alert(1)\">";
const XSS_HEADER: &str = "\"><script>alert('header')</script>";

fn stored_and_reflected_attacker_bytes_are_shown_escaped(db: TestDb) {
    let app = app_with(&db, Some(TOKEN));
    send_rejected(&app, XSS_HEADER, XSS_BODY);
    let id = count(
        &app.pool,
        "SELECT MAX(id) AS n FROM notifications WHERE outcome = 'rejected'",
    );
    // A binary body too.
    let resp = client()
        .post(app.url("/notify/gateway"))
        .header("webhook-id", "msg_binary")
        .body(vec![0xff_u8, 0x00, 0x3c, 0x73])
        .send()
        .unwrap();
    assert!(!resp.status().is_success());
    let binary = count(
        &app.pool,
        "SELECT MAX(id) AS n FROM notifications WHERE outcome = 'rejected'",
    );
    let console = login_as(&app, "<script>alert('name')</script>");
    let detail = console.get(&format!("/console/notifications/{id}"));
    assert_eq!(detail.status, 200);
    assert!(!detail.body.contains("<script>"), "{}", detail.body);
    assert!(!detail.body.contains("<img src=x"), "{}", detail.body);
    assert!(detail.body.contains(&escaped(XSS_BODY)), "{}", detail.body);
    assert!(
        detail.body.contains(&escaped(XSS_HEADER)),
        "{}",
        detail.body
    );
    // What was tried, with the current keys, and the payload still only as text.
    assert!(
        detail.body.contains("now: does not verify"),
        "{}",
        detail.body
    );
    let hex = console.get(&format!("/console/notifications/{binary}"));
    assert!(hex.body.contains("ff00 3c73"), "{}", hex.body);
    assert!(hex.body.contains("/wA8cw=="), "{}", hex.body);

    for path in [
        "/console/notifications?order_no=%3Cscript%3Ealert(1)%3C/script%3E&channel=%22%3E%3Cb%3E",
        "/console/orders/%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        "/console/accounts/%3Cimg%20src=x%20onerror=alert(1)%3E",
        "/console/notifications/%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        "/console/%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        "/console",
        "/console/notifications",
        "/console/anomalies",
    ] {
        let p = console.get(path);
        assert!(!p.body.contains("<script"), "{path}: {}", p.body);
        assert!(!p.body.contains("<img src=x"), "{path}: {}", p.body);
        assert!(!p.body.contains("\"><b>"), "{path}: {}", p.body);
    }
    let reflected =
        console.get("/console/notifications?order_no=%3Cscript%3Ealert(1)%3C/script%3E");
    assert!(
        reflected.body.contains(&format!(
            "value=\"{}\"",
            escaped("<script>alert(1)</script>")
        )),
        "{}",
        reflected.body
    );
}

fn a_stored_notification_is_applied_again_from_the_console_once(db: TestDb) {
    let app = app_with(&db, Some(TOKEN));
    {
        let mut conn = app.pool.get().unwrap();
        create_order(&mut conn, "reap", "gateway", "5.00", "CNY", Some("REAP-1"));
    }
    let (headers, body) = standard_webhooks_payment(SECRET, "REAP-1", 500, "msg_reap_1");
    let mut req = client().post(app.url("/notify/gateway"));
    for (k, v) in &headers {
        req = req.header(k.as_str(), v.as_str());
    }
    assert!(req.body(body).send().unwrap().status().is_success());
    let id = inbox_id(&app, "REAP-1");
    let credits = || {
        count(
            &app.pool,
            "SELECT COUNT(*) AS n FROM ledger WHERE order_no = 'REAP-1' AND kind = 'credit'",
        )
    };
    assert_eq!(credits(), 1);

    let console = login_as(&app, "ana");
    let reapply = format!("/console/notifications/{id}/reapply");
    let detail = console.get(&format!("/console/notifications/{id}"));
    assert!(
        detail.body.contains("id=\"verified\">yes") && !detail.body.contains("id=\"explanation\""),
        "{}",
        detail.body
    );
    let dry = console.post(&reapply, &[("dry_run", "1")]);
    assert_eq!(dry.status, 200, "{}", dry.body);
    assert!(
        dry.body.contains("Dry run") && dry.body.contains("already_paid"),
        "{}",
        dry.body
    );
    let again = console.post(&reapply, &[]);
    assert_eq!(again.status, 200, "{}", again.body);
    assert!(
        again.body.contains("Applied again") && again.body.contains("already_paid"),
        "{}",
        again.body
    );
    assert_eq!(credits(), 1, "applying it again credits nothing more");
    assert_balanced(&app);
}

fn an_order_is_credited_by_hand_once_and_never_on_top_of_a_payment(db: TestDb) {
    let app = app_with(&db, Some(TOKEN));
    {
        let mut conn = app.pool.get().unwrap();
        create_order(&mut conn, "hand", "gateway", "10.00", "CNY", Some("HAND-1"));
        create_order(&mut conn, "hand", "gateway", "3.00", "CNY", Some("HAND-2"));
        // Two payments of the wrong amount for one pending order: two anomalies.
        for trade in ["t-short-1", "t-short-2"] {
            assert_eq!(
                pay_order(&mut conn, "gateway", "HAND-1", trade, 999, "CNY"),
                "mismatch"
            );
        }
        // A paid order, and a second trade for it: an anomaly on a paid order.
        assert_eq!(
            pay_order(&mut conn, "gateway", "HAND-2", "t-ok", 300, "CNY"),
            "credited"
        );
        assert_eq!(
            pay_order(&mut conn, "gateway", "HAND-2", "t-other", 300, "CNY"),
            "paid_by_other_trade"
        );
    }
    let ids = |order_no: &str| -> Vec<i64> {
        let mut conn = app.pool.get().unwrap();
        payhook::books::inbox::for_order(&mut conn, order_no)
            .unwrap()
            .into_iter()
            .filter(|n| n.anomaly)
            .map(|n| n.id)
            .collect()
    };
    let (short, other) = (ids("HAND-1"), ids("HAND-2"));
    assert_eq!((short.len(), other.len()), (2, 1));
    let console = login_as(&app, "ana");
    let credit = [("action", "credit"), ("note", "the merchant accepts it")];
    let post = |id: i64| console.post(&format!("/console/anomalies/{id}/resolve"), &credit);
    assert_eq!(post(short[0]).status, 303);
    let second = post(short[1]);
    assert_eq!(second.status, 422, "{}", second.body);
    assert!(
        second.body.contains("credited by hand already"),
        "{}",
        second.body
    );
    let paid = post(other[0]);
    assert_eq!(paid.status, 422, "{}", paid.body);
    assert!(paid.body.contains("paid already"), "{}", paid.body);
    // Settled by hand, the order no longer waits for a payment that would credit it again.
    let status = count(
        &app.pool,
        "SELECT COUNT(*) AS n FROM orders WHERE order_no = 'HAND-1' AND status = 'closed'",
    );
    assert_eq!(status, 1);
    let mut conn = app.pool.get().unwrap();
    assert_eq!(
        pay_order(&mut conn, "gateway", "HAND-1", "t-right", 1000, "CNY"),
        "mismatch",
        "a later payment is kept as a payment after close"
    );
    assert_eq!(
        count(
            &app.pool,
            "SELECT CAST(SUM(balance_minor) AS BIGINT) AS n FROM accounts WHERE user_id = 'hand'"
        ),
        1000 + 300
    );
    assert_balanced(&app);
}

on_every_backend!(
    an_order_is_credited_by_hand_once_and_never_on_top_of_a_payment,
    a_stored_notification_is_applied_again_from_the_console_once,
    login_logout_and_the_session_cookie,
    an_expired_session_logs_out,
    with_no_admin_token_the_console_admits_no_one,
    posts_without_the_session_s_csrf_token_are_refused,
    every_console_response_carries_the_security_headers,
    every_page_shows_its_data,
    the_search_filters_and_pages,
    resolutions_record_who_when_and_why_once,
    two_operators_crediting_one_anomaly_at_once_credit_it_once,
    stored_and_reflected_attacker_bytes_are_shown_escaped,
);
