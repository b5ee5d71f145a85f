//! The inbox: every notification received, verified or not, kept with the bytes and headers that
//! let it be verified again. A repeat of one provider notification (same channel and provider id)
//! bumps the first row's delivery count instead of being stored again.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::result::Error as DieselError;
use serde::Serialize;

use crate::db::schema::notifications;
use crate::db::DbConnection;
use crate::domain::ids::ChannelName;

/// The request as it arrived: what must be kept to verify it again later.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    /// The provider's signature headers, as a JSON object.
    pub headers_json: &'a str,
    pub body: &'a [u8],
    pub source: Source,
}

/// Where an inbox row came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A notification the provider sent.
    Notify,
    /// The provider's answer when payhook asked about an order.
    Query,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Notify => "notify",
            Source::Query => "query",
        }
    }
}

/// The inbox row that counts a delivery, and how many deliveries it has counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxRow {
    pub id: i64,
    pub delivery_count: i64,
}

pub const REJECTED: &str = "rejected";

/// Most of a rejected request's body that is kept. Anyone can send rejected requests, so each
/// keeps enough to see what was sent, not the whole body.
pub const REJECTED_BODY_BYTES: usize = 4096;
/// Most of one header value of a rejected request that is kept.
pub const REJECTED_HEADER_VALUE_BYTES: usize = 1024;
/// Most bytes of a rejected request's headers as stored (a JSON object); headers that would
/// pass it are left out.
pub const REJECTED_HEADERS_BYTES: usize = 4096;

/// Records a request that failed verification or parsing, keyed by a digest of its whole body so
/// a resent copy bumps the same row. Rejected rows never share a key with verified ones, so a
/// forged request cannot occupy a real notification's id. Only [`rejected_headers`] and the first
/// [`REJECTED_BODY_BYTES`] of the body are kept, and the commit does not wait for the disk: a
/// rejected request is answered retry whatever becomes of its row.
pub fn record_rejection(
    conn: &mut DbConnection,
    channel: &ChannelName,
    source: Source,
    reason: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    now: NaiveDateTime,
) -> Result<i64, crate::db::DbError> {
    let key = rejected_key(body);
    let headers_json = rejected_headers(headers);
    let kept_body = &body[..body.len().min(REJECTED_BODY_BYTES)];
    crate::db::transact(conn, |conn| {
        crate::db::commit_without_waiting_for_flush(conn)?;
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
                    notifications::source.eq(source.as_str()),
                    notifications::raw_headers.eq(&headers_json),
                    notifications::raw_body.eq(kept_body),
                    notifications::delivery_count.eq(1i64),
                    notifications::first_seen_at.eq(now),
                    notifications::last_seen_at.eq(now),
                ))
                .execute(conn)?;
        }
        Ok(row.select(notifications::id).first(conn)?)
    })
}

/// Most rejected rows one [`prune_rejected`] deletes, so that a backlog (a database older than the
/// bound, or `keep_rejected` lowered) drains over several prunes instead of in one long
/// transaction.
pub const PRUNE_BATCH: i64 = 1024;

/// How many rejected requests of a channel an instance stores between two prunes of that
/// channel: `keep` while it is below 64, else 64. A channel so holds its newest `keep` rejected
/// rows after a prune, and at most `keep + min(keep, 64) - 1` (per instance) before the next.
pub fn prune_every(keep: u64) -> u64 {
    keep.clamp(1, 64)
}

/// Deletes `channel`'s rejected rows (see [`record_rejection`]) but the newest `keep`, at most
/// [`PRUNE_BATCH`] of them, oldest first; returns how many. Rejected rows are referred to by
/// nothing else (no ledger row, no anomaly, no other channel), so the rows of verified
/// notifications are never touched. Rows go by their own ids, found through the
/// `notifications_rejected` index, so the statement locks only what it deletes. Like the
/// rejection itself, its commit does not wait for the disk.
pub fn prune_rejected(
    conn: &mut DbConnection,
    channel: &ChannelName,
    keep: u64,
) -> Result<usize, crate::db::DbError> {
    // Written out rather than bound, so that PostgreSQL and SQLite match the partial index.
    let rejected = || diesel::dsl::sql::<diesel::sql_types::Bool>("outcome = 'rejected'");
    let offset = i64::try_from(keep.max(1) - 1).unwrap_or(i64::MAX);
    crate::db::transact(conn, |conn| {
        crate::db::commit_without_waiting_for_flush(conn)?;
        let oldest_kept: Option<i64> = notifications::table
            .filter(notifications::channel.eq(channel.as_str()))
            .filter(rejected())
            .order(notifications::id.desc())
            .offset(offset)
            .select(notifications::id)
            .first(conn)
            .optional()?;
        let Some(oldest_kept) = oldest_kept else {
            return Ok(0);
        };
        let older: Vec<i64> = notifications::table
            .filter(notifications::channel.eq(channel.as_str()))
            .filter(rejected())
            .filter(notifications::id.lt(oldest_kept))
            .order(notifications::id.asc())
            .limit(PRUNE_BATCH)
            .select(notifications::id)
            .load(conn)?;
        if older.is_empty() {
            return Ok(0);
        }
        Ok(diesel::delete(
            notifications::table
                .filter(notifications::id.eq_any(&older))
                .filter(rejected()),
        )
        .execute(conn)?)
    })
}

/// What the inbox keys a rejected request by: the digest of its whole body.
const REJECTED_KEY_PREFIX: &str = "unverified:";

fn rejected_key(body: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body);
    format!("{REJECTED_KEY_PREFIX}{}", hex::encode(digest.as_ref()))
}

/// Whether a row's `notification_id` is a rejected request's key rather than a provider's id.
pub fn is_rejected_key(notification_id: &str) -> bool {
    notification_id.starts_with(REJECTED_KEY_PREFIX)
}

/// Whether the body a rejected row keeps is the whole body that arrived, as its key (the digest
/// of the whole body) proves; `None` for a row that is not keyed by a rejected body.
pub fn keeps_whole_body(notification_id: &str, kept_body: &[u8]) -> Option<bool> {
    is_rejected_key(notification_id).then(|| rejected_key(kept_body) == notification_id)
}

/// Notes on a rejected row what became of its request after it was stored (it was applied
/// again); `verified` stays false and `verify_error` says why it was rejected when it arrived.
pub fn note_on_rejected(
    conn: &mut DbConnection,
    id: i64,
    detail: &str,
) -> Result<usize, DieselError> {
    diesel::update(
        notifications::table
            .filter(notifications::id.eq(id))
            .filter(notifications::verified.eq(false)),
    )
    .set(notifications::detail.eq(detail))
    .execute(conn)
}

/// Moves a row's `first_seen_at` back to `at` if it is later: a notification applied again from
/// a rejected row first arrived when that row did, and its timestamp is judged as of then.
pub fn first_seen_no_later_than(
    conn: &mut DbConnection,
    id: i64,
    at: NaiveDateTime,
) -> Result<usize, DieselError> {
    diesel::update(
        notifications::table
            .filter(notifications::id.eq(id))
            .filter(notifications::first_seen_at.gt(at)),
    )
    .set(notifications::first_seen_at.eq(at))
    .execute(conn)
}

/// A rejected request's headers as stored: a JSON object of each value's first
/// [`REJECTED_HEADER_VALUE_BYTES`], taken in order while the whole stays within
/// [`REJECTED_HEADERS_BYTES`].
pub fn rejected_headers(headers: &[(&str, &str)]) -> String {
    let json_len = |text: &str| serde_json::Value::from(text).to_string().len();
    let mut kept = serde_json::Map::new();
    // The braces.
    let mut len = 2;
    for (name, value) in headers {
        let value = cut(value, REJECTED_HEADER_VALUE_BYTES);
        // A name, a colon, a value and, after the first, a comma.
        let entry = json_len(name) + 1 + json_len(value) + usize::from(!kept.is_empty());
        if len + entry <= REJECTED_HEADERS_BYTES && !kept.contains_key(*name) {
            len += entry;
            kept.insert((*name).to_owned(), value.into());
        }
    }
    serde_json::Value::Object(kept).to_string()
}

/// The longest start of `text` of at most `max` bytes that ends on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A stored notification, as the API and operators see it.
#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = notifications)]
pub struct InboxEntry {
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
    /// Kept for a human; `detail` says why.
    pub anomaly: bool,
    /// `notify` or `query`.
    pub source: String,
    pub delivery_count: i64,
    pub first_seen_at: NaiveDateTime,
    pub last_seen_at: NaiveDateTime,
}

/// Every stored notification for one order, oldest first.
pub fn for_order(conn: &mut DbConnection, order_no: &str) -> Result<Vec<InboxEntry>, DieselError> {
    notifications::table
        .filter(notifications::order_no.eq(order_no))
        .order(notifications::id.asc())
        .select(InboxEntry::as_select())
        .load(conn)
}

/// One stored notification by channel and provider id.
pub fn find(
    conn: &mut DbConnection,
    channel: &ChannelName,
    notification_id: &str,
) -> Result<Option<InboxEntry>, DieselError> {
    notifications::table
        .filter(notifications::channel.eq(channel.as_str()))
        .filter(notifications::notification_id.eq(notification_id))
        .select(InboxEntry::as_select())
        .first(conn)
        .optional()
}

/// A stored notification with, on request, the headers (a JSON object) and bytes it arrived
/// with.
#[derive(Debug, Clone)]
pub struct Listed {
    pub notification: InboxEntry,
    pub raw: Option<(String, Vec<u8>)>,
}

/// One stored notification by its row id; with `with_raw`, its evidence too.
pub fn by_id(
    conn: &mut DbConnection,
    id: i64,
    with_raw: bool,
) -> Result<Option<Listed>, DieselError> {
    let row = notifications::table.filter(notifications::id.eq(id));
    if !with_raw {
        let found = row.select(InboxEntry::as_select()).first(conn).optional()?;
        return Ok(found.map(|notification| Listed {
            notification,
            raw: None,
        }));
    }
    let found = row
        .select((
            InboxEntry::as_select(),
            notifications::raw_headers,
            notifications::raw_body,
        ))
        .first::<(InboxEntry, String, Vec<u8>)>(conn)
        .optional()?;
    Ok(found.map(|(notification, headers, body)| Listed {
        notification,
        raw: Some((headers, body)),
    }))
}

/// Every stored notification for one order, oldest first; with `with_raw`, their evidence too.
pub fn list_for_order(
    conn: &mut DbConnection,
    order_no: &str,
    with_raw: bool,
) -> Result<Vec<Listed>, DieselError> {
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
            let raw = raws.remove(&notification.id);
            Listed { notification, raw }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_headers_are_cut_per_value_and_in_all() {
        let long = "é\"".repeat(600);
        let names: Vec<String> = (0..10).map(|i| format!("x-header-{i}")).collect();
        let headers: Vec<(&str, &str)> =
            names.iter().map(|n| (n.as_str(), long.as_str())).collect();
        let json = rejected_headers(&headers);
        assert!(json.len() <= REJECTED_HEADERS_BYTES, "{}", json.len());
        let kept: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&json).unwrap();
        assert!((1..10).contains(&kept.len()), "{}", kept.len());
        for value in kept.values() {
            let value = value.as_str().unwrap();
            assert!(long.starts_with(value));
            assert!(value.len() > REJECTED_HEADER_VALUE_BYTES - 4);
            assert!(value.len() <= REJECTED_HEADER_VALUE_BYTES);
        }
        let short = rejected_headers(&[("content-type", "text/plain")]);
        assert_eq!(short, r#"{"content-type":"text/plain"}"#);
    }
}
