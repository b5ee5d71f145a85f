//! The console's pages as askama templates (under `templates/console/`), and the values they
//! show, made from the books' own types. askama escapes every value it writes into HTML.

use askama::Template;
use base64::Engine;
use chrono::NaiveDateTime;

use super::chart::Chart;
use crate::books::accounts::LedgerEntry;
use crate::books::anomalies::Resolved;
use crate::books::overview::Rejected;
use crate::books::search::Found;
use crate::domain::money::{format_signed, Currency};

/// What every page of a logged-in operator shows at its top.
#[derive(Debug, Clone)]
pub struct Nav {
    pub operator: String,
    pub csrf_token: String,
}

/// A time as the console shows it.
pub fn when(t: &NaiveDateTime) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// An amount in minor units as a decimal, or the bare minor units for a currency this build
/// does not know.
pub fn money(minor: i64, currency: &str) -> String {
    match Currency::parse(currency) {
        Ok(c) => format!("{} {currency}", format_signed(minor, c)),
        Err(_) => format!("{minor} (minor units) {currency}"),
    }
}

#[derive(Template)]
#[template(path = "console/login.html")]
pub struct Login {
    pub error: Option<String>,
    /// Never set: the login page has no navigation.
    pub nav: Option<Nav>,
}

#[derive(Template)]
#[template(path = "console/message.html")]
pub struct Message {
    pub title: &'static str,
    pub text: String,
    pub nav: Option<Nav>,
}

/// One stored notification in a list.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: i64,
    pub first_seen: String,
    pub channel: String,
    pub notification_id: String,
    pub order_no: Option<String>,
    pub kind: String,
    pub amount: String,
    pub outcome: String,
    pub verified: bool,
    pub source: String,
    pub deliveries: i64,
    pub anomaly: bool,
    pub detail: String,
    pub resolution: Option<String>,
}

impl From<&Found> for Row {
    fn from(f: &Found) -> Row {
        let e = &f.entry;
        Row {
            id: e.id,
            first_seen: when(&e.first_seen_at),
            channel: e.channel.clone(),
            notification_id: e.notification_id.clone(),
            order_no: e.order_no.clone(),
            kind: e.kind.clone(),
            amount: match (e.amount_minor, &e.currency) {
                (Some(minor), Some(currency)) => money(minor, currency),
                (Some(minor), None) => minor.to_string(),
                _ => String::new(),
            },
            outcome: e.outcome.clone(),
            verified: e.verified,
            source: e.source.clone(),
            deliveries: e.delivery_count,
            anomaly: e.anomaly,
            detail: e
                .detail
                .clone()
                .or(e.verify_error.clone())
                .unwrap_or_default(),
            resolution: f.resolved.resolution.clone(),
        }
    }
}

/// A pending order on the overview.
#[derive(Debug, Clone)]
pub struct PendingRow {
    pub order_no: String,
    pub user_id: String,
    pub channel: String,
    pub amount: String,
    pub created: String,
}

/// The apply latency the overview shows, in milliseconds.
#[derive(Debug, Clone)]
pub struct LatencyView {
    pub count: u64,
    pub mean_ms: String,
    pub p50_ms: String,
    pub p99_ms: String,
}

#[derive(Template)]
#[template(path = "console/overview.html")]
pub struct Overview {
    pub nav: Option<Nav>,
    pub chart: Chart,
    pub latency: Option<LatencyView>,
    pub open_anomalies: i64,
    pub anomalies: Vec<Row>,
    pub pending: Vec<PendingRow>,
    pub rejected: Vec<RejectedRow>,
}

#[derive(Debug, Clone)]
pub struct RejectedRow {
    pub channel: String,
    pub reason: String,
    pub requests: i64,
    pub last_seen: String,
}

impl From<&Rejected> for RejectedRow {
    fn from(r: &Rejected) -> RejectedRow {
        RejectedRow {
            channel: r.channel.clone(),
            reason: r.reason.clone(),
            requests: r.requests,
            last_seen: r.last_seen_at.as_ref().map(when).unwrap_or_default(),
        }
    }
}

/// The search form's fields as given, shown back in the form.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct SearchForm {
    #[serde(default)]
    pub order_no: String,
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub outcome: String,
    #[serde(default)]
    pub verified: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: String,
    #[serde(default)]
    pub before: Option<i64>,
}

#[derive(Template)]
#[template(path = "console/notifications.html")]
pub struct Notifications {
    pub nav: Option<Nav>,
    pub form: SearchForm,
    pub problems: Vec<String>,
    pub rows: Vec<Row>,
    /// The link to the next (older) page.
    pub next: Option<String>,
}

/// One header as stored.
#[derive(Debug, Clone)]
pub struct HeaderRow {
    pub name: String,
    pub value: String,
}

/// A stored body, shown as text when it is UTF-8, else as hex and base64.
#[derive(Debug, Clone)]
pub struct BodyView {
    pub text: Option<String>,
    pub hex: String,
    pub base64: String,
    pub bytes: usize,
}

impl BodyView {
    pub fn new(body: &[u8]) -> BodyView {
        let text = std::str::from_utf8(body).ok().map(str::to_owned);
        let hex = if text.is_some() {
            String::new()
        } else {
            body.chunks(32)
                .map(|line| {
                    line.chunks(2)
                        .map(hex::encode)
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        BodyView {
            text,
            hex,
            base64: base64::engine::general_purpose::STANDARD.encode(body),
            bytes: body.len(),
        }
    }
}

/// How an anomaly was resolved, for the page.
#[derive(Debug, Clone)]
pub struct ResolutionView {
    pub resolution: String,
    pub by: String,
    pub at: String,
    pub note: String,
}

impl ResolutionView {
    pub fn from_resolved(r: &Resolved) -> Option<ResolutionView> {
        Some(ResolutionView {
            resolution: r.resolution.clone()?,
            by: r.resolved_by.clone().unwrap_or_default(),
            at: r.resolved_at.as_ref().map(when).unwrap_or_default(),
            note: r.resolution_note.clone().unwrap_or_default(),
        })
    }
}

#[derive(Template)]
#[template(path = "console/notification.html")]
pub struct NotificationPage {
    pub nav: Option<Nav>,
    pub row: Row,
    pub provider_trade_no: Option<String>,
    pub verify_error: Option<String>,
    pub first_seen: String,
    pub last_seen: String,
    pub headers: Vec<HeaderRow>,
    /// The stored headers as text, when they are not a JSON object.
    pub headers_raw: Option<String>,
    pub body: BodyView,
    /// What explaining the failure found; `None` until explaining is wired in.
    pub explanation: Option<String>,
    pub resolved: Option<ResolutionView>,
    /// An anomaly that no one has resolved yet.
    pub open: bool,
}

/// One line of an order's timeline.
#[derive(Debug, Clone)]
pub struct Event {
    pub at: String,
    pub what: String,
    pub detail: String,
    /// The notification it came from, linked.
    pub notification: Option<i64>,
}

#[derive(Template)]
#[template(path = "console/order.html")]
pub struct OrderPage {
    pub nav: Option<Nav>,
    pub order_no: String,
    pub user_id: String,
    pub channel: String,
    pub amount: String,
    pub status: String,
    pub provider_trade_no: Option<String>,
    pub refunded: String,
    pub charged_back: String,
    pub version: i64,
    pub events: Vec<Event>,
}

/// One ledger row on an account's page.
#[derive(Debug, Clone)]
pub struct LedgerRow {
    pub id: i64,
    pub at: String,
    pub kind: String,
    pub amount: String,
    pub balance_after: String,
    pub order_no: Option<String>,
    pub debit_no: Option<String>,
    pub memo: String,
}

impl From<&LedgerEntry> for LedgerRow {
    fn from(e: &LedgerEntry) -> LedgerRow {
        LedgerRow {
            id: e.id,
            at: when(&e.created_at),
            kind: e.kind.clone(),
            amount: money(e.amount_minor, &e.currency),
            balance_after: money(e.balance_after, &e.currency),
            order_no: e.order_no.clone(),
            debit_no: e.debit_no.clone(),
            memo: e.memo.clone().unwrap_or_default(),
        }
    }
}

#[derive(Template)]
#[template(path = "console/account.html")]
pub struct AccountPage {
    pub nav: Option<Nav>,
    pub user_id: String,
    pub balances: Vec<String>,
    pub ledger: Vec<LedgerRow>,
    pub next: Option<String>,
}

#[derive(Template)]
#[template(path = "console/anomalies.html")]
pub struct AnomaliesPage {
    pub nav: Option<Nav>,
    pub open: Vec<Row>,
    pub resolved: Vec<Row>,
    pub next: Option<String>,
}
