//! The inbox: every notification received, verified or not, kept with the bytes and headers that
//! let it be verified again. A repeat of one provider notification (same channel and provider id)
//! bumps the first row's delivery count instead of being stored again.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::result::Error as DieselError;
use serde::Serialize;

use crate::db::schema::notifications;
use crate::db::DbConnection;
use crate::ids::ChannelName;
use crate::notify::Notification;

/// The request as it arrived: what must be kept to verify it again later.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    /// The provider's signature headers, as a JSON object.
    pub headers_json: &'a str,
    pub body: &'a [u8],
}

/// A row's id and the outcome it held before this delivery.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub id: i64,
    pub previous_outcome: String,
    pub delivery_count: i64,
}

pub const REJECTED: &str = "rejected";

/// Records one delivery of `notification` and what it came to: bumps the delivery count of its
/// row, or inserts the first one. A row that once credited keeps saying so: later duplicates count
/// as deliveries, not as new outcomes.
pub fn record(
    conn: &mut DbConnection,
    notification: &Notification,
    evidence: Evidence<'_>,
    outcome: &str,
    detail: Option<&str>,
    now: NaiveDateTime,
) -> Result<Recorded, DieselError> {
    if let Some(recorded) = bump(conn, notification, now)? {
        if recorded.previous_outcome != crate::apply::Outcome::Credited.as_str() {
            diesel::update(notifications::table.find(recorded.id))
                .set((
                    notifications::outcome.eq(outcome),
                    notifications::detail.eq(detail),
                ))
                .execute(conn)?;
        }
        return Ok(recorded);
    }
    diesel::insert_into(notifications::table)
        .values((
            notifications::channel.eq(notification.channel.as_str()),
            notifications::notification_id.eq(&notification.notification_id),
            notifications::order_no.eq(notification.order_no.as_ref().map(|o| o.as_str())),
            notifications::provider_trade_no.eq(notification.provider_trade_no.as_deref()),
            notifications::kind.eq(notification.kind.as_str()),
            notifications::amount_minor.eq(notification.amount.map(|a| a.get())),
            notifications::currency.eq(notification.currency.map(|c| c.code())),
            notifications::verified.eq(true),
            notifications::outcome.eq(outcome),
            notifications::detail.eq(detail),
            notifications::raw_headers.eq(evidence.headers_json),
            notifications::raw_body.eq(evidence.body),
            notifications::delivery_count.eq(1i64),
            notifications::first_seen_at.eq(now),
            notifications::last_seen_at.eq(now),
        ))
        .execute(conn)?;
    Ok(Recorded {
        id: row_of(notification).select(notifications::id).first(conn)?,
        previous_outcome: String::new(),
        delivery_count: 1,
    })
}

/// The inbox row of one (channel, provider notification id).
type RowOf<'a> = diesel::dsl::Filter<
    diesel::dsl::Filter<notifications::table, diesel::dsl::Eq<notifications::channel, &'a str>>,
    diesel::dsl::Eq<notifications::notification_id, &'a str>,
>;

fn row_of(notification: &Notification) -> RowOf<'_> {
    notifications::table
        .filter(notifications::channel.eq(notification.channel.as_str()))
        .filter(notifications::notification_id.eq(notification.notification_id.as_str()))
}

/// Counts another delivery of a notification the inbox already holds; `None` when it holds none.
pub fn bump(
    conn: &mut DbConnection,
    notification: &Notification,
    now: NaiveDateTime,
) -> Result<Option<Recorded>, DieselError> {
    let bumped = diesel::update(row_of(notification))
        .set((
            notifications::delivery_count.eq(notifications::delivery_count + 1),
            notifications::last_seen_at.eq(now),
        ))
        .execute(conn)?;
    if bumped == 0 {
        return Ok(None);
    }
    let (id, previous_outcome, delivery_count) = row_of(notification)
        .select((
            notifications::id,
            notifications::outcome,
            notifications::delivery_count,
        ))
        .first(conn)?;
    Ok(Some(Recorded {
        id,
        previous_outcome,
        delivery_count,
    }))
}

/// Records a request that failed verification or parsing, keyed by a digest of its body so a
/// resent copy bumps the same row. Rejected rows never share a key with verified ones, so a
/// forged request cannot occupy a real notification's id.
pub fn record_rejection(
    conn: &mut DbConnection,
    channel: &ChannelName,
    reason: &str,
    evidence: Evidence<'_>,
    now: NaiveDateTime,
) -> Result<i64, crate::db::DbError> {
    let digest = ring::digest::digest(&ring::digest::SHA256, evidence.body);
    let key = format!("unverified:{}", hex::encode(digest.as_ref()));
    crate::db::transact(conn, |conn| {
        let row = notifications::table
            .filter(notifications::channel.eq(channel.as_str()))
            .filter(notifications::notification_id.eq(&key));
        let bumped = diesel::update(row)
            .set((
                notifications::delivery_count.eq(notifications::delivery_count + 1),
                notifications::last_seen_at.eq(now),
                notifications::verify_error.eq(reason),
            ))
            .execute(conn)?;
        if bumped == 0 {
            diesel::insert_into(notifications::table)
                .values((
                    notifications::channel.eq(channel.as_str()),
                    notifications::notification_id.eq(&key),
                    notifications::kind.eq("unknown"),
                    notifications::verified.eq(false),
                    notifications::verify_error.eq(reason),
                    notifications::outcome.eq(REJECTED),
                    notifications::raw_headers.eq(evidence.headers_json),
                    notifications::raw_body.eq(evidence.body),
                    notifications::delivery_count.eq(1i64),
                    notifications::first_seen_at.eq(now),
                    notifications::last_seen_at.eq(now),
                ))
                .execute(conn)?;
        }
        row.select(notifications::id).first(conn)
    })
}

/// A stored notification, as the API and operators see it.
#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = notifications)]
pub struct StoredNotification {
    pub id: i64,
    pub channel: String,
    pub notification_id: String,
    pub order_no: Option<String>,
    pub provider_trade_no: Option<String>,
    pub kind: String,
    pub amount_minor: Option<i64>,
    pub currency: Option<String>,
    pub verified: bool,
    pub verify_error: Option<String>,
    pub outcome: String,
    pub detail: Option<String>,
    pub delivery_count: i64,
    pub first_seen_at: NaiveDateTime,
    pub last_seen_at: NaiveDateTime,
}

/// Every stored notification for one order, oldest first.
pub fn for_order(
    conn: &mut DbConnection,
    order_no: &str,
) -> Result<Vec<StoredNotification>, DieselError> {
    notifications::table
        .filter(notifications::order_no.eq(order_no))
        .order(notifications::id.asc())
        .select(StoredNotification::as_select())
        .load(conn)
}

/// One stored notification by channel and provider id.
pub fn find(
    conn: &mut DbConnection,
    channel: &ChannelName,
    notification_id: &str,
) -> Result<Option<StoredNotification>, DieselError> {
    notifications::table
        .filter(notifications::channel.eq(channel.as_str()))
        .filter(notifications::notification_id.eq(notification_id))
        .select(StoredNotification::as_select())
        .first(conn)
        .optional()
}

/// A stored notification with, on request, the bytes and headers it arrived with.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    #[serde(flatten)]
    pub notification: StoredNotification,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<RawEvidence>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RawEvidence {
    pub headers: serde_json::Value,
    /// The body as text when it is UTF-8.
    pub body: Option<String>,
    pub body_base64: String,
}

/// Every stored notification for one order, oldest first; with `with_raw`, their evidence too.
pub fn list_for_order(
    conn: &mut DbConnection,
    order_no: &str,
    with_raw: bool,
) -> Result<Vec<Listed>, DieselError> {
    use base64::Engine;
    let stored = for_order(conn, order_no)?;
    let mut raws: std::collections::HashMap<i64, (String, Vec<u8>)> = if with_raw {
        notifications::table
            .filter(notifications::order_no.eq(order_no))
            .select((
                notifications::id,
                notifications::raw_headers,
                notifications::raw_body,
            ))
            .load::<(i64, String, Vec<u8>)>(conn)?
            .into_iter()
            .map(|(id, h, b)| (id, (h, b)))
            .collect()
    } else {
        Default::default()
    };
    Ok(stored
        .into_iter()
        .map(|notification| {
            let raw = raws
                .remove(&notification.id)
                .map(|(headers, body)| RawEvidence {
                    headers: serde_json::from_str(&headers).unwrap_or(serde_json::Value::Null),
                    body_base64: base64::engine::general_purpose::STANDARD.encode(&body),
                    body: String::from_utf8(body).ok(),
                });
            Listed { notification, raw }
        })
        .collect())
}
