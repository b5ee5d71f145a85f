//! What the console's overview and order pages read: recent traffic by outcome, what waits for a
//! human, the oldest pending orders, rejected requests by reason, and one order's history.

use chrono::NaiveDateTime;
use diesel::dsl::{count_star, max};
use diesel::prelude::*;
use diesel::result::Error as DieselError;

use crate::books::accounts::LedgerEntry;
use crate::books::inbox::{self, InboxEntry};
use crate::books::orders::{Order, OrderRow, OrderStatus};
use crate::db::schema::{ledger, notifications, orders};
use crate::db::DbConnection;
use crate::domain::ids::OrderNo;

/// The most recent notifications the traffic chart reads; beyond them it shows what it read.
pub const TRAFFIC_ROWS: i64 = 200_000;

/// When each notification first seen since `since` arrived, and what it came to, oldest first.
pub fn traffic(
    conn: &mut DbConnection,
    since: NaiveDateTime,
) -> Result<Vec<(NaiveDateTime, String)>, DieselError> {
    notifications::table
        .filter(notifications::first_seen_at.ge(since))
        .order(notifications::first_seen_at.asc())
        .limit(TRAFFIC_ROWS)
        .select((notifications::first_seen_at, notifications::outcome))
        .load(conn)
}

/// How many anomalies no one has resolved yet.
pub fn open_anomalies(conn: &mut DbConnection) -> Result<i64, DieselError> {
    notifications::table
        .filter(notifications::anomaly.eq(true))
        .filter(notifications::resolution.is_null())
        .select(count_star())
        .first(conn)
}

/// Up to `limit` pending orders, oldest first.
pub fn oldest_pending(conn: &mut DbConnection, limit: i64) -> Result<Vec<Order>, DieselError> {
    orders::table
        .filter(orders::status.eq(OrderStatus::Pending.as_str()))
        .order(orders::created_at.asc())
        .limit(limit)
        .select(OrderRow::as_select())
        .load::<OrderRow>(conn)?
        .into_iter()
        .map(Order::try_from)
        .collect()
}

/// Rejected requests of one channel that failed for one reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub channel: String,
    pub reason: String,
    /// Distinct bodies; repeats of one body are one.
    pub requests: i64,
    pub last_seen_at: Option<NaiveDateTime>,
}

/// Rejected requests by channel and reason, the most frequent first.
pub fn rejected_by_reason(
    conn: &mut DbConnection,
    limit: usize,
) -> Result<Vec<Rejected>, DieselError> {
    let mut rows: Vec<Rejected> = notifications::table
        .filter(notifications::outcome.eq(inbox::REJECTED))
        .group_by((notifications::channel, notifications::verify_error))
        .select((
            notifications::channel,
            notifications::verify_error,
            count_star(),
            max(notifications::last_seen_at),
        ))
        .load::<(String, Option<String>, i64, Option<NaiveDateTime>)>(conn)?
        .into_iter()
        .map(|(channel, reason, requests, last_seen_at)| Rejected {
            channel,
            reason: reason.unwrap_or_default(),
            requests,
            last_seen_at,
        })
        .collect();
    rows.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.reason.cmp(&b.reason)));
    rows.truncate(limit);
    Ok(rows)
}

/// An order and everything that happened to it.
#[derive(Debug, Clone)]
pub struct History {
    pub order: Order,
    /// Every delivery and query answer filed under it, oldest first.
    pub inbox: Vec<InboxEntry>,
    /// Its credit, refunds, chargebacks and manual credits, oldest first.
    pub ledger: Vec<LedgerEntry>,
}

/// The history of `order_no`, if the order exists.
pub fn history(
    conn: &mut DbConnection,
    order_no: &OrderNo,
) -> Result<Option<History>, DieselError> {
    let Some(order) = crate::books::orders::find(conn, order_no)? else {
        return Ok(None);
    };
    let inbox = inbox::for_order(conn, order_no.as_str())?;
    let ledger = ledger::table
        .filter(ledger::order_no.eq(order_no.as_str()))
        .order(ledger::id.asc())
        .select(LedgerEntry::as_select())
        .load(conn)?;
    Ok(Some(History {
        order,
        inbox,
        ledger,
    }))
}
