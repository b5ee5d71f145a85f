//! When pending orders are asked about at their provider: first `first_query_after` after they
//! were created, then at doubling intervals up to `max_interval`, and once more when they expire.
//!
//! The schedule lives in the order's row (`next_query_at`, `query_attempts`), so every instance
//! sharing a database follows one schedule. An instance claims due orders by moving their
//! `next_query_at` a lease ahead in one short transaction; the rows it holds while it does are
//! skipped by others (`FOR UPDATE SKIP LOCKED`), and once it commits the orders are no longer
//! due. An instance that crashes mid-query leaves its lease to run out, and the order is due
//! again. The lease only keeps instances from asking twice at once; what an answer does to an
//! order is decided by the crediting transaction's compare-and-set, as for a notification.

use std::time::Duration;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::result::Error as DieselError;

use super::orders::{Order, OrderRow, OrderStatus};
use crate::config::RecoverySettings;
use crate::db::schema::{orders, provider_cursors};
use crate::db::{self, DbConnection, DbError};
use crate::domain::ids::ChannelName;
use crate::store;

/// How long a claimed order is left to the instance that claimed it: well past a query's
/// timeout and the commit of what it found.
pub const LEASE: Duration = Duration::from_secs(60);

/// The intervals of asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub first_query_after: Duration,
    pub max_interval: Duration,
    pub expire_after: Duration,
}

impl From<&RecoverySettings> for Schedule {
    fn from(r: &RecoverySettings) -> Schedule {
        Schedule {
            first_query_after: Duration::from_secs(r.first_query_after_secs),
            max_interval: Duration::from_secs(r.max_interval_secs),
            expire_after: Duration::from_secs(r.expire_after_secs),
        }
    }
}

impl Schedule {
    /// When an order created at `created_at` expires.
    pub fn expires_at(&self, created_at: NaiveDateTime) -> NaiveDateTime {
        created_at + self.expire_after
    }

    /// When to ask again after `attempts` asks that found nothing, the latest at `now`: the first
    /// interval doubled per attempt, at most `max_interval`, and never past the expiry, when it is
    /// asked one last time.
    pub fn next_after(
        &self,
        created_at: NaiveDateTime,
        attempts: i64,
        now: NaiveDateTime,
    ) -> NaiveDateTime {
        let doublings = u32::try_from(attempts.clamp(0, 30)).unwrap_or(30);
        let interval = self
            .first_query_after
            .saturating_mul(2u32.saturating_pow(doublings))
            .min(self.max_interval);
        let expiry = self.expires_at(created_at);
        let next = now + interval;
        if now < expiry {
            next.min(expiry)
        } else {
            next
        }
    }
}

/// A pending order this instance has claimed to ask about.
#[derive(Debug, Clone)]
pub struct Due {
    pub order: Order,
    /// How many asks before this one found nothing.
    pub attempts: i64,
    /// Its time is up: this is the last ask before it is closed.
    pub expired: bool,
}

/// Claims up to `limit` due pending orders of `channels`, moving each one's `next_query_at` a
/// [`LEASE`] ahead, in one transaction.
pub fn claim(
    conn: &mut DbConnection,
    channels: &[&ChannelName],
    schedule: &Schedule,
    now: NaiveDateTime,
    limit: i64,
) -> Result<Vec<Due>, DbError> {
    let channels: Vec<&str> = channels.iter().map(|c| c.as_str()).collect();
    let first_due = now - schedule.first_query_after;
    let lease_end = now + LEASE;
    let rows: Vec<(OrderRow, i64)> = db::transact(conn, |conn| {
        let claimed = store::lock_due_orders(conn, &channels, now, first_due, limit)?;
        if claimed.is_empty() {
            return Ok::<_, DbError>(Vec::new());
        }
        diesel::update(orders::table.filter(orders::order_no.eq_any(&claimed)))
            .set(orders::next_query_at.eq(lease_end))
            .execute(conn)?;
        Ok(orders::table
            .filter(orders::order_no.eq_any(&claimed))
            .order(orders::created_at)
            .select((OrderRow::as_select(), orders::query_attempts))
            .load(conn)?)
    })?;
    rows.into_iter()
        .map(|(row, attempts)| {
            let order = Order::try_from(row)?;
            let expired = now >= schedule.expires_at(order.created_at);
            Ok(Due {
                order,
                attempts,
                expired,
            })
        })
        .collect::<Result<Vec<Due>, DieselError>>()
        .map_err(DbError::from)
}

/// After an ask that left `due` pending: counts it, and sets when to ask next. A paid or closed
/// order is left as it is.
pub fn reschedule(
    conn: &mut DbConnection,
    due: &Due,
    schedule: &Schedule,
    now: NaiveDateTime,
) -> Result<NaiveDateTime, DieselError> {
    let next = schedule.next_after(due.order.created_at, due.attempts + 1, now);
    diesel::update(
        orders::table
            .filter(orders::order_no.eq(due.order.order_no.as_str()))
            .filter(orders::status.eq(OrderStatus::Pending.as_str())),
    )
    .set((
        orders::next_query_at.eq(next),
        orders::query_attempts.eq(orders::query_attempts + 1),
    ))
    .execute(conn)?;
    Ok(next)
}

/// When the oldest pending order was created, if any is pending.
pub fn oldest_pending(conn: &mut DbConnection) -> Result<Option<NaiveDateTime>, DieselError> {
    orders::table
        .filter(orders::status.eq(OrderStatus::Pending.as_str()))
        .select(diesel::dsl::min(orders::created_at))
        .first(conn)
}

/// How far `channel`'s sweep of undelivered provider events has read: the newest event it saw,
/// and when that sweep started.
pub fn cursor(
    conn: &mut DbConnection,
    channel: &ChannelName,
) -> Result<Option<(String, NaiveDateTime)>, DieselError> {
    provider_cursors::table
        .find(channel.as_str())
        .select((provider_cursors::read_up_to, provider_cursors::updated_at))
        .first(conn)
        .optional()
}

/// Records how far `channel`'s sweep has read (`now`: when that sweep started), once what it
/// read has been applied.
pub fn save_cursor(
    conn: &mut DbConnection,
    channel: &ChannelName,
    read_up_to: &str,
    now: NaiveDateTime,
) -> Result<(), DbError> {
    db::transact(conn, |conn| {
        let moved = diesel::update(provider_cursors::table.find(channel.as_str()))
            .set((
                provider_cursors::read_up_to.eq(read_up_to),
                provider_cursors::updated_at.eq(now),
            ))
            .execute(conn)?;
        if moved == 0 {
            // Two instances inserting at once: the loser's unique violation runs this again.
            diesel::insert_into(provider_cursors::table)
                .values((
                    provider_cursors::channel.eq(channel.as_str()),
                    provider_cursors::read_up_to.eq(read_up_to),
                    provider_cursors::updated_at.eq(now),
                ))
                .execute(conn)?;
        }
        Ok::<_, DbError>(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> NaiveDateTime {
        chrono::DateTime::from_timestamp(1_800_000_000 + secs, 0)
            .unwrap()
            .naive_utc()
    }

    #[test]
    fn intervals_double_up_to_the_most_and_end_at_the_expiry() {
        let schedule = Schedule {
            first_query_after: Duration::from_secs(60),
            max_interval: Duration::from_secs(600),
            expire_after: Duration::from_secs(7200),
        };
        let created = at(0);
        let waits: Vec<i64> = (1..=6)
            .map(|attempts| {
                (schedule.next_after(created, attempts, at(1000)) - at(1000)).num_seconds()
            })
            .collect();
        assert_eq!(waits, [120, 240, 480, 600, 600, 600]);
        // Close to the expiry, the next ask is the last one, at the expiry.
        assert_eq!(schedule.next_after(created, 9, at(7000)), at(7200));
        // Past it (the last ask failed to reach the provider), asking goes on.
        assert_eq!(schedule.next_after(created, 9, at(7300)), at(7900));
        assert_eq!(schedule.next_after(created, i64::MAX, at(10)), at(610));
    }
}
