//! Applying a stored notification again: its stored request verified with the channel's current
//! keys, then applied through the crediting transaction, exactly as if it had just arrived. This
//! recovers notifications rejected while a key was wrong.
//!
//! The notification gets the inbox row of its provider id, as a delivery would give it, first
//! seen when the stored request first arrived; a rejected row (keyed `unverified:<digest>`) stays
//! as the record of what arrived and why it was refused, and its `detail` says when it was
//! applied again, as which notification and to what outcome. Applying twice credits once, as a
//! repeated delivery does: the crediting transaction finds the order paid by this very trade.

use std::fmt;

use chrono::NaiveDateTime;
use diesel::result::Error as DieselError;
use serde::Serialize;

use super::error::InspectError;
use super::explain::{examine_stored, Channels, Explanation, Stored};
use crate::books::inbox::{self, Evidence, Source};
use crate::crediting::{self, Applied};
use crate::db::{self, DbConnection, Retry};
use crate::domain::money::{format_signed, Currency};
use crate::domain::notification::Notification;

/// What applying a stored notification again came to.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Reapplied {
    /// It verifies now and went through the crediting transaction (rolled back in a dry run).
    Applied(Application),
    /// It still does not verify: nothing was written, and this is why.
    NotVerified(Box<Explanation>),
}

/// A stored notification applied again, or what applying it would do.
#[derive(Debug, Clone, Serialize)]
pub struct Application {
    /// The stored row applied again.
    pub id: i64,
    /// Whether everything was rolled back: the result says what applying would do.
    pub dry_run: bool,
    pub channel: String,
    /// The provider's notification id, which the notification's inbox row is keyed by.
    pub notification_id: String,
    pub order_no: Option<String>,
    pub kind: String,
    /// What the crediting transaction decided (`credited`, `already_paid`, ...).
    pub outcome: &'static str,
    pub anomaly: bool,
    pub detail: Option<String>,
    /// The balance after the credit, in minor units of `currency`, when this credited.
    pub balance_after: Option<i64>,
    pub currency: Option<Currency>,
    /// The inbox row of the notification. In a dry run, the row it would have had: a new row's
    /// id is not kept.
    pub inbox_id: i64,
    pub delivery_count: i64,
    /// The key that verified it, by name.
    pub verified_by: Option<String>,
    /// Whether the stored row was a rejected one, now noted as applied again.
    pub noted_on_rejected_row: bool,
}

/// Applies the stored notification `id` again at `now`, or with `dry_run` shows what that would
/// do in a transaction that is rolled back.
///
/// Its signature is checked with the channel's current keys, and its timestamp (for providers
/// that sign one) against the moment it first arrived (`first_seen_at`), not against `now`: a
/// stored notification is older than any tolerance by the time someone applies it again, but it
/// was fresh, or not, when it came.
pub fn reapply(
    conn: &mut DbConnection,
    channels: &Channels,
    id: i64,
    dry_run: bool,
    now: NaiveDateTime,
) -> Result<Reapplied, InspectError> {
    let stored = Stored::load(conn, id)?;
    let (explanation, notification) = examine_stored(&stored, channels);
    let Some(notification) = notification else {
        log_refused(&explanation, dry_run);
        return Ok(Reapplied::NotVerified(Box::new(explanation)));
    };
    let headers_json = stored.headers_json();
    let request = stored.request();
    let evidence = Evidence {
        headers_json: &headers_json,
        body: request.body,
        source: Source::Notify,
    };
    let rejected_row =
        !stored.entry.verified && inbox::is_rejected_key(&stored.entry.notification_id);
    let result = db::transact(conn, |conn| {
        let applied = crediting::apply_alone_in(conn, &notification, evidence, now)
            .map_err(|e| Stop::Failed(e.into()))?;
        if rejected_row {
            let note = note(&notification, &applied, now);
            inbox::note_on_rejected(conn, stored.entry.id, &note)?;
            let arrived = stored.entry.first_seen_at;
            inbox::first_seen_no_later_than(conn, applied.inbox_id, arrived)?;
        }
        match dry_run {
            true => Err(Stop::DryRun(Box::new(applied))),
            false => Ok(applied),
        }
    });
    let applied = match result {
        Ok(applied) => applied,
        Err(Stop::DryRun(applied)) => *applied,
        Err(Stop::Failed(e)) => return Err(e),
    };
    let application = Application {
        id,
        dry_run,
        channel: notification.channel.to_string(),
        notification_id: notification.notification_id.clone(),
        order_no: notification
            .order_no
            .as_ref()
            .map(|o| o.as_str().to_owned()),
        kind: notification.kind.as_str().to_owned(),
        outcome: applied.outcome.as_str(),
        anomaly: applied.anomaly,
        detail: applied.detail,
        balance_after: applied.balance_after,
        currency: notification.currency,
        inbox_id: applied.inbox_id,
        delivery_count: applied.delivery_count,
        verified_by: explanation.verified_by,
        noted_on_rejected_row: rejected_row,
    };
    log_applied(&application);
    Ok(Reapplied::Applied(application))
}

/// What a rejected row says once its request was applied again.
fn note(n: &Notification, applied: &Applied, now: NaiveDateTime) -> String {
    format!(
        "applied again at {} UTC as notification {} (inbox row {}): {}",
        now.format("%Y-%m-%d %H:%M:%S"),
        n.notification_id,
        applied.inbox_id,
        applied.outcome.as_str()
    )
}

/// How the reapply transaction ends other than by committing.
#[derive(Debug)]
enum Stop {
    /// A dry run: everything rolled back, and this is what it came to.
    DryRun(Box<Applied>),
    Failed(InspectError),
}

impl From<DieselError> for Stop {
    fn from(e: DieselError) -> Stop {
        Stop::Failed(e.into())
    }
}

impl Retry for Stop {
    fn is_transient(&self) -> bool {
        matches!(self, Stop::Failed(e) if e.is_transient())
    }

    fn is_lock_timeout(&self) -> bool {
        matches!(self, Stop::Failed(e) if e.is_lock_timeout())
    }
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::DryRun(applied) => {
                write!(f, "dry run, rolled back: {}", applied.outcome.as_str())
            }
            Stop::Failed(e) => e.fmt(f),
        }
    }
}

fn log_applied(a: &Application) {
    log::info!(
        target: "payhook::inspect",
        id = a.id,
        dry_run = a.dry_run,
        channel = a.channel.as_str(),
        notification_id = a.notification_id.as_str(),
        order_no = a.order_no.as_deref().unwrap_or("-"),
        outcome = a.outcome,
        inbox_id = a.inbox_id,
        verified_by = a.verified_by.as_deref().unwrap_or("-");
        "reapplied"
    );
}

fn log_refused(e: &Explanation, dry_run: bool) {
    log::warn!(
        target: "payhook::inspect",
        id = e.id,
        dry_run = dry_run,
        channel = e.channel.as_str(),
        rejection = e.rejection.as_deref().unwrap_or("");
        "not reapplied: it does not verify"
    );
}

impl fmt::Display for Reapplied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reapplied::NotVerified(explanation) => {
                writeln!(f, "not applied: it does not verify")?;
                explanation.fmt(f)
            }
            Reapplied::Applied(a) => {
                let would = if a.dry_run {
                    "dry run (rolled back): would be"
                } else {
                    "applied:"
                };
                writeln!(
                    f,
                    "{would} {} on channel {}, notification {} (inbox row {}), order {}",
                    a.outcome,
                    a.channel,
                    a.notification_id,
                    a.inbox_id,
                    a.order_no.as_deref().unwrap_or("-")
                )?;
                if let Some(key) = &a.verified_by {
                    writeln!(f, "  verified by {key}")?;
                }
                if let (Some(balance), Some(currency)) = (a.balance_after, a.currency) {
                    writeln!(
                        f,
                        "  balance after: {} {currency}",
                        format_signed(balance, currency)
                    )?;
                }
                if let Some(detail) = &a.detail {
                    writeln!(f, "  detail: {detail}")?;
                }
                if a.anomaly {
                    writeln!(f, "  kept for a human (anomaly)")?;
                }
                if a.noted_on_rejected_row {
                    let would = if a.dry_run { "would say" } else { "says" };
                    writeln!(
                        f,
                        "  the rejected row {} {would} it was applied again",
                        a.id
                    )?;
                }
                Ok(())
            }
        }
    }
}
