//! Reading the inbox the way an operator looks for something: by order, channel, outcome,
//! verification, source and time, newest first, a page at a time; and one stored notification
//! whole, with its evidence and its resolution.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::result::Error as DieselError;

use crate::books::anomalies::Resolved;
use crate::books::inbox::InboxEntry;
use crate::db::schema::notifications;
use crate::db::DbConnection;

/// What to look for; every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub order_no: Option<String>,
    pub channel: Option<String>,
    pub outcome: Option<String>,
    pub verified: Option<bool>,
    pub source: Option<String>,
    /// First seen at or after.
    pub from: Option<NaiveDateTime>,
    /// First seen before.
    pub to: Option<NaiveDateTime>,
    /// Only anomalies.
    pub anomaly: Option<bool>,
    /// Only those still open (`true`) or resolved (`false`).
    pub open: Option<bool>,
}

/// A stored notification and how it was resolved.
#[derive(Debug, Clone)]
pub struct Found {
    pub entry: InboxEntry,
    pub resolved: Resolved,
}

/// One page of what matched, newest first.
#[derive(Debug, Clone)]
pub struct Page {
    pub rows: Vec<Found>,
    /// Pass as `before` for the next (older) page; `None` on the last page.
    pub next_before: Option<i64>,
}

/// Up to `limit` notifications matching `filter` with an id below `before`, newest first.
pub fn search(
    conn: &mut DbConnection,
    filter: &Filter,
    before: Option<i64>,
    limit: i64,
) -> Result<Page, DieselError> {
    let mut query = notifications::table
        .select((InboxEntry::as_select(), Resolved::as_select()))
        .order(notifications::id.desc())
        .limit(limit + 1)
        .into_boxed();
    if let Some(order_no) = &filter.order_no {
        query = query.filter(notifications::order_no.eq(order_no.clone()));
    }
    if let Some(channel) = &filter.channel {
        query = query.filter(notifications::channel.eq(channel.clone()));
    }
    if let Some(outcome) = &filter.outcome {
        query = query.filter(notifications::outcome.eq(outcome.clone()));
    }
    if let Some(verified) = filter.verified {
        query = query.filter(notifications::verified.eq(verified));
    }
    if let Some(source) = &filter.source {
        query = query.filter(notifications::source.eq(source.clone()));
    }
    if let Some(from) = filter.from {
        query = query.filter(notifications::first_seen_at.ge(from));
    }
    if let Some(to) = filter.to {
        query = query.filter(notifications::first_seen_at.lt(to));
    }
    if let Some(anomaly) = filter.anomaly {
        query = query.filter(notifications::anomaly.eq(anomaly));
    }
    match filter.open {
        Some(true) => query = query.filter(notifications::resolution.is_null()),
        Some(false) => query = query.filter(notifications::resolution.is_not_null()),
        None => {}
    }
    if let Some(before) = before {
        query = query.filter(notifications::id.lt(before));
    }
    let mut rows: Vec<Found> = query
        .load::<(InboxEntry, Resolved)>(conn)?
        .into_iter()
        .map(|(entry, resolved)| Found { entry, resolved })
        .collect();
    let next_before = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|f| f.entry.id)
    } else {
        None
    };
    Ok(Page { rows, next_before })
}

/// One stored notification, whole.
#[derive(Debug, Clone)]
pub struct Stored {
    pub found: Found,
    /// The kept headers, a JSON object.
    pub raw_headers: String,
    pub raw_body: Vec<u8>,
}

/// Notification `id` with its evidence, if it exists.
pub fn stored(conn: &mut DbConnection, id: i64) -> Result<Option<Stored>, DieselError> {
    let row = notifications::table
        .find(id)
        .select((
            InboxEntry::as_select(),
            Resolved::as_select(),
            notifications::raw_headers,
            notifications::raw_body,
        ))
        .first::<(InboxEntry, Resolved, String, Vec<u8>)>(conn)
        .optional()?;
    Ok(row.map(|(entry, resolved, raw_headers, raw_body)| Stored {
        found: Found { entry, resolved },
        raw_headers,
        raw_body,
    }))
}
