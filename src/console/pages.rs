//! The console's pages; each needs a session, and without one shows the login page.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::NaiveDateTime;

use super::chart;
use super::respond::{html, with_db};
use super::session::{self, Session};
use super::views::{
    money, when, AccountPage, AnomaliesPage, BodyView, Event, HeaderRow, LatencyView, LedgerRow,
    Message, Nav, NotificationPage, Notifications, OrderPage, Overview, PendingRow, RejectedRow,
    ResolutionView, Row, SearchForm,
};
use crate::books::accounts;
use crate::books::overview::{self, History};
use crate::books::search::{self, Filter};
use crate::domain::ids::{OrderNo, UserId};
use crate::http::state::AppState;
use crate::telemetry;

/// How many rows a list shows per page.
const PAGE: i64 = 50;

/// The session, or the response to give instead: the login page (401 but on `/console`).
async fn logged_in(
    req: &HttpRequest,
    state: &web::Data<AppState>,
) -> Result<Session, HttpResponse> {
    match session::current(req, state).await {
        Ok(Some(session)) => Ok(session),
        Ok(None) => {
            let status = if matches!(req.path(), "/console" | "/console/") {
                StatusCode::OK
            } else {
                StatusCode::UNAUTHORIZED
            };
            Err(session::login_page(status, None))
        }
        Err(failed) => Err(failed.into()),
    }
}

fn nav(session: &Session) -> Option<Nav> {
    Some(Nav {
        operator: session.operator.clone(),
        csrf_token: session.csrf_token.clone(),
    })
}

fn message(
    status: StatusCode,
    title: &'static str,
    text: String,
    session: &Session,
) -> HttpResponse {
    html(
        status,
        &Message {
            title,
            text,
            nav: nav(session),
        },
    )
}

/// `GET /console`: traffic, latency, what waits for a human, what waits for its payment, and
/// what was rejected.
pub async fn overview(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let session = match logged_in(&req, &state).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    let now = state.clock.now().naive_utc();
    let since = now - chrono::Duration::minutes(chart::MINUTES + 1);
    let read = with_db(&state, move |conn| {
        let traffic = overview::traffic(conn, since)?;
        let open = overview::open_anomalies(conn)?;
        let filter = Filter {
            anomaly: Some(true),
            open: Some(true),
            ..Filter::default()
        };
        let anomalies = search::search(conn, &filter, None, 10)?;
        let pending = overview::oldest_pending(conn, 10)?;
        let rejected = overview::rejected_by_reason(conn, 20)?;
        Ok((traffic, open, anomalies, pending, rejected))
    })
    .await;
    let (traffic, open_anomalies, anomalies, pending, rejected) = match read {
        Ok(read) => read,
        Err(failed) => return failed.into(),
    };
    let latency = telemetry::apply_latency().map(|l| LatencyView {
        count: l.count,
        mean_ms: format!("{:.1}", l.mean_seconds * 1000.0),
        p50_ms: format!("≤ {}", l.p50_seconds * 1000.0),
        p99_ms: format!("≤ {}", l.p99_seconds * 1000.0),
    });
    let page = Overview {
        nav: nav(&session),
        chart: chart::draw(&traffic, now),
        latency,
        open_anomalies,
        anomalies: anomalies.rows.iter().map(Row::from).collect(),
        pending: pending
            .iter()
            .map(|o| PendingRow {
                order_no: o.order_no.to_string(),
                user_id: o.user_id.to_string(),
                channel: o.channel.to_string(),
                amount: money(o.amount.get(), o.currency.code()),
                created: when(&o.created_at),
            })
            .collect(),
        rejected: rejected.iter().map(RejectedRow::from).collect(),
    };
    html(StatusCode::OK, &page)
}

/// A time from a search form: `2026-12-03T10:00` (as a browser's datetime-local sends it), with
/// seconds, or a bare date; read as UTC.
fn parse_time(text: &str) -> Option<NaiveDateTime> {
    let text = text.trim();
    [
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
    .or_else(|| {
        chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
    })
}

/// The filter a search form asks for, or what is wrong with it.
fn filter_of(form: &SearchForm) -> (Filter, Vec<String>) {
    let given = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
    let mut problems = Vec::new();
    let verified = match form.verified.trim() {
        "" => None,
        "true" | "yes" | "1" => Some(true),
        "false" | "no" | "0" => Some(false),
        other => {
            problems.push(format!("verified: {other:?} is neither true nor false"));
            None
        }
    };
    let mut time = |name: &str, text: &str| {
        let parsed = given(text).and_then(|t| parse_time(&t));
        if parsed.is_none() && given(text).is_some() {
            problems.push(format!(
                "{name}: {text:?} is not a time like 2026-12-03T10:00"
            ));
        }
        parsed
    };
    let from = time("from", &form.from);
    let to = time("to", &form.to);
    let filter = Filter {
        order_no: given(&form.order_no),
        channel: given(&form.channel),
        outcome: given(&form.outcome),
        verified,
        source: given(&form.source),
        from,
        to,
        anomaly: None,
        open: None,
    };
    (filter, problems)
}

/// A link to `path` with `pairs` as its query.
fn link(path: &str, pairs: &[(&str, &str)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        query.append_pair(k, v);
    }
    format!("{path}?{}", query.finish())
}

/// `GET /console/notifications`: the inbox, searched, newest first.
pub async fn notifications(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Query<SearchForm>,
) -> HttpResponse {
    let session = match logged_in(&req, &state).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    let form = form.into_inner();
    let (filter, problems) = filter_of(&form);
    let before = form.before;
    let page = match with_db(&state, move |conn| {
        Ok(search::search(conn, &filter, before, PAGE)?)
    })
    .await
    {
        Ok(page) => page,
        Err(failed) => return failed.into(),
    };
    let next = page.next_before.map(|before| {
        let before = before.to_string();
        link(
            "/console/notifications",
            &[
                ("order_no", &form.order_no),
                ("channel", &form.channel),
                ("outcome", &form.outcome),
                ("verified", &form.verified),
                ("source", &form.source),
                ("from", &form.from),
                ("to", &form.to),
                ("before", &before),
            ],
        )
    });
    let page = Notifications {
        nav: nav(&session),
        rows: page.rows.iter().map(Row::from).collect(),
        form,
        problems,
        next,
    };
    html(StatusCode::OK, &page)
}

/// `GET /console/notifications/{id}`: one notification whole: its evidence, why it was or was
/// not verified, its deliveries and its resolution.
pub async fn notification(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> HttpResponse {
    let session = match logged_in(&req, &state).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    let missing = || {
        message(
            StatusCode::NOT_FOUND,
            "Not found",
            format!("No notification {:?}.", path.as_str()),
            &session,
        )
    };
    let Ok(id) = path.parse::<i64>() else {
        return missing();
    };
    let stored = match with_db(&state, move |conn| Ok(search::stored(conn, id)?)).await {
        Ok(Some(stored)) => stored,
        Ok(None) => return missing(),
        Err(failed) => return failed.into(),
    };
    let (headers, headers_raw) = match serde_json::from_str::<
        serde_json::Map<String, serde_json::Value>,
    >(&stored.raw_headers)
    {
        Ok(map) => (
            map.into_iter()
                .map(|(name, value)| HeaderRow {
                    name,
                    value: value
                        .as_str()
                        .map_or_else(|| value.to_string(), str::to_owned),
                })
                .collect(),
            None,
        ),
        Err(_) => (Vec::new(), Some(stored.raw_headers.clone())),
    };
    let entry = &stored.found.entry;
    // What was tried, for a notification that did not verify, with the current keys.
    let explanation = if entry.verified {
        None
    } else {
        let channels = state.channel_configs.clone();
        let explained = with_db(&state, move |conn| {
            Ok(crate::inspect::explain(conn, &channels, id))
        })
        .await;
        match explained {
            Ok(Ok(explanation)) => Some(explanation.to_string()),
            Ok(Err(e)) => Some(e.to_string()),
            Err(failed) => return failed.into(),
        }
    };
    let resolved = ResolutionView::from_resolved(&stored.found.resolved);
    let page = NotificationPage {
        nav: nav(&session),
        row: Row::from(&stored.found),
        provider_trade_no: entry.provider_trade_no.clone(),
        verify_error: entry.verify_error.clone(),
        first_seen: when(&entry.first_seen_at),
        last_seen: when(&entry.last_seen_at),
        headers,
        headers_raw,
        body: BodyView::new(&stored.raw_body),
        explanation,
        open: entry.anomaly && resolved.is_none(),
        resolved,
    };
    html(StatusCode::OK, &page)
}

/// `GET /console/orders?order_no=`: the order page of the number given.
pub async fn find_order(
    query: web::Query<std::collections::HashMap<String, String>>,
) -> HttpResponse {
    go_to("/console/orders/", query.get("order_no"))
}

/// `GET /console/accounts?user_id=`: the account page of the user given.
pub async fn find_account(
    query: web::Query<std::collections::HashMap<String, String>>,
) -> HttpResponse {
    go_to("/console/accounts/", query.get("user_id"))
}

/// What a path segment keeps as it is: letters, digits and `-._~`.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn go_to(prefix: &str, name: Option<&String>) -> HttpResponse {
    let name = name.map_or("", |n| n.trim());
    let segment: String = percent_encoding::utf8_percent_encode(name, SEGMENT).collect();
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, format!("{prefix}{segment}")))
        .finish()
}

/// `GET /console/orders/{order_no}`: the order and its timeline.
pub async fn order(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> HttpResponse {
    let session = match logged_in(&req, &state).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    let missing = || {
        message(
            StatusCode::NOT_FOUND,
            "Not found",
            format!("No order {:?}.", path.as_str()),
            &session,
        )
    };
    let Ok(order_no) = OrderNo::parse(&path) else {
        return missing();
    };
    let history = match with_db(&state, move |conn| Ok(overview::history(conn, &order_no)?)).await {
        Ok(Some(history)) => history,
        Ok(None) => return missing(),
        Err(failed) => return failed.into(),
    };
    let o = &history.order;
    let page = OrderPage {
        nav: nav(&session),
        order_no: o.order_no.to_string(),
        user_id: o.user_id.to_string(),
        channel: o.channel.to_string(),
        amount: money(o.amount.get(), o.currency.code()),
        status: o.status.as_str().to_owned(),
        provider_trade_no: o.provider_trade_no.clone(),
        refunded: money(o.refunded.get(), o.currency.code()),
        charged_back: money(o.disputed.get(), o.currency.code()),
        version: o.version,
        events: timeline(&history),
    };
    html(StatusCode::OK, &page)
}

/// Everything that happened to an order, oldest first.
fn timeline(history: &History) -> Vec<Event> {
    let o = &history.order;
    let mut events: Vec<(NaiveDateTime, u8, Event)> = Vec::new();
    let mut add = |at: NaiveDateTime, rank: u8, what: String, detail: String, n: Option<i64>| {
        events.push((
            at,
            rank,
            Event {
                at: when(&at),
                what,
                detail,
                notification: n,
            },
        ))
    };
    add(
        o.created_at,
        0,
        "created".to_owned(),
        format!(
            "{} for {} through {}",
            money(o.amount.get(), o.currency.code()),
            o.user_id,
            o.channel
        ),
        None,
    );
    for n in &history.inbox {
        let what = match n.source.as_str() {
            "query" => format!("query answer: {}", n.kind),
            _ => format!("notification: {}", n.kind),
        };
        let mut detail = format!("{}; {} delivery(ies)", n.outcome, n.delivery_count);
        if n.delivery_count > 1 {
            detail.push_str(&format!(", last {}", when(&n.last_seen_at)));
        }
        if let Some(why) = n.detail.as_ref().or(n.verify_error.as_ref()) {
            detail.push_str(&format!("; {why}"));
        }
        add(n.first_seen_at, 1, what, detail, Some(n.id));
    }
    if let Some(paid_at) = o.paid_at {
        let trade = o.provider_trade_no.as_deref().unwrap_or("-");
        add(
            paid_at,
            2,
            "paid".to_owned(),
            format!("trade {trade}"),
            None,
        );
    }
    for e in &history.ledger {
        let mut detail = format!(
            "{}, balance after {}",
            money(e.amount_minor, &e.currency),
            money(e.balance_after, &e.currency)
        );
        if let Some(memo) = &e.memo {
            detail.push_str(&format!("; {memo}"));
        }
        add(e.created_at, 3, e.kind.clone(), detail, None);
    }
    if let Some(closed_at) = o.closed_at {
        add(closed_at, 4, "closed".to_owned(), String::new(), None);
    }
    events.sort_by_key(|(at, rank, _)| (*at, *rank));
    events.into_iter().map(|(_, _, e)| e).collect()
}

#[derive(Debug, serde::Deserialize)]
pub struct Before {
    before: Option<i64>,
}

/// `GET /console/accounts/{user_id}`: balances and the ledger, newest first, paged.
pub async fn account(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    page: web::Query<Before>,
) -> HttpResponse {
    let session = match logged_in(&req, &state).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    let missing = || {
        message(
            StatusCode::NOT_FOUND,
            "Not found",
            format!("No account {:?}.", path.as_str()),
            &session,
        )
    };
    let Ok(user) = UserId::parse(&path) else {
        return missing();
    };
    let before = page.before;
    let statement = match with_db(&state, move |conn| {
        Ok(accounts::statement(conn, &user, PAGE, before)?)
    })
    .await
    {
        Ok(statement) if statement.balances.is_empty() => return missing(),
        Ok(statement) => statement,
        Err(failed) => return failed.into(),
    };
    let user_id = statement.user_id.to_string();
    let page = AccountPage {
        nav: nav(&session),
        next: statement.next_before.map(|b| {
            let path = format!("/console/accounts/{user_id}");
            link(&path, &[("before", &b.to_string())])
        }),
        balances: statement
            .balances
            .iter()
            .map(|b| money(b.amount_minor, &b.currency))
            .collect(),
        ledger: statement.ledger.iter().map(LedgerRow::from).collect(),
        user_id,
    };
    html(StatusCode::OK, &page)
}

/// `GET /console/anomalies`: every open anomaly, oldest last; then those resolved, paged.
pub async fn anomalies(
    req: HttpRequest,
    state: web::Data<AppState>,
    page: web::Query<Before>,
) -> HttpResponse {
    let session = match logged_in(&req, &state).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    let before = page.before;
    let read = with_db(&state, move |conn| {
        let open = Filter {
            anomaly: Some(true),
            open: Some(true),
            ..Filter::default()
        };
        let resolved = Filter {
            open: Some(false),
            ..open.clone()
        };
        Ok((
            search::search(conn, &open, None, 500)?,
            search::search(conn, &resolved, before, PAGE)?,
        ))
    })
    .await;
    let (open, resolved) = match read {
        Ok(read) => read,
        Err(failed) => return failed.into(),
    };
    let page = AnomaliesPage {
        nav: nav(&session),
        open: open.rows.iter().map(Row::from).collect(),
        resolved: resolved.rows.iter().map(Row::from).collect(),
        next: resolved
            .next_before
            .map(|b| link("/console/anomalies", &[("before", &b.to_string())])),
    };
    html(StatusCode::OK, &page)
}

/// Any other path under `/console`.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    html(
        StatusCode::NOT_FOUND,
        &Message {
            title: "Not found",
            text: format!("Nothing at {:?}.", req.path()),
            nav: None,
        },
    )
}
