//! Every backend's SQL. Code above this module is written once against [`DbConnection`]; where
//! the backends need different SQL, the difference is one function here that dispatches to
//! `postgres.rs`, `mysql.rs` or `sqlite.rs`; what SQLite shares with the others is in
//! `delivery.rs` and `balance.rs`. Nothing outside this module (and [`crate::db`], which opens,
//! migrates and runs transactions) matches on the backend.
//!
//! - [`pay_and_credit`]: the compare-and-set from pending to paid, and for its winner the balance
//!   increment and the ledger row; [`pay_and_credit_together`]: the same for many first payments
//!   at once (`sqlite.rs` for SQLite's).
//! - [`record_delivery`]: one delivery of a verified notification into the inbox.
//! - [`change_balance`]: a balance moved in SQL, within bounds.
//! - [`lock_for_credits`] and [`lock_inbox_rows`]: row locks taken in one order, before writing;
//!   [`lock_account`]: one account's row, before a debit reads and changes it;
//!   [`lock_due_orders`]: pending orders due to be asked about, skipping those others hold.
//! - [`read_for_batch`]: the orders and inbox rows of a batch's notifications, read up front.
//! - [`Hurried`] and [`hurry`]: short lock waits, for work that follows a lock timeout.

use chrono::NaiveDateTime;
use diesel::result::Error as DieselError;

use crate::books::inbox::{Evidence, InboxRow};
use crate::books::orders::{self, Order};
use crate::db::DbConnection;
use crate::domain::ids::OrderNo;
use crate::domain::notification::Notification;

mod balance;
mod batch_read;
mod delivery;
mod hurried;
mod mysql;
mod postgres;
mod sqlite;
pub mod statement;

pub use balance::{change_balance, lock_account};
pub use batch_read::{read_for_batch, Delivered};
pub use delivery::{Credit, CreditWrite, FirstPayment, Verdict};
pub use hurried::{hurry, Hurried, HURRIED_LOCK_WAIT};

/// The compare-and-set `UPDATE orders SET status = paid ... WHERE order_no = ? AND status =
/// pending`, and only for the transaction whose update changed the row, the balance increment and
/// the ledger row.
///
/// On PostgreSQL the three writes and the inbox record of the delivery are one statement, one
/// round trip; on SQLite and MySQL they are separate statements and the caller records the
/// delivery.
pub fn pay_and_credit(
    conn: &mut DbConnection,
    order: &Order,
    n: &Notification,
    evidence: Evidence<'_>,
    now: NaiveDateTime,
) -> Result<CreditWrite, DieselError> {
    match conn {
        DbConnection::Postgresql(_) => postgres::pay_and_credit(conn, order, n, evidence, now),
        DbConnection::Sqlite(_) | DbConnection::Mysql(_) => {
            delivery::pay_then_credit(conn, order, n, now)
        }
    }
}

/// [`pay_and_credit`] for many first payments of pending orders at once, where the backend writes
/// them that way: in one statement on PostgreSQL, in four on SQLite (one per table); `None` on
/// MySQL, where the caller writes them one by one. One result per payment, in order. The payments
/// must name distinct orders, trades and notifications, and their orders must be locked already
/// ([`lock_for_credits`]), except where [`locks_together`].
pub fn pay_and_credit_together(
    conn: &mut DbConnection,
    payments: &[FirstPayment<'_>],
) -> Result<Option<Vec<CreditWrite>>, DieselError> {
    match conn {
        DbConnection::Postgresql(pg) => postgres::pay_and_credit_together(pg, payments).map(Some),
        DbConnection::Sqlite(_) => sqlite::pay_and_credit_together(conn, payments).map(Some),
        DbConnection::Mysql(_) => Ok(None),
    }
}

/// Records one delivery of a verified notification and what it came to: inserts its row, or
/// (same channel and provider id) counts one more delivery on the row it has. A row that once
/// credited keeps saying so: later duplicates count as deliveries, not as new outcomes.
pub fn record_delivery(
    conn: &mut DbConnection,
    n: &Notification,
    evidence: Evidence<'_>,
    verdict: Verdict<'_>,
    now: NaiveDateTime,
) -> Result<InboxRow, DieselError> {
    match conn {
        DbConnection::Mysql(_) => mysql::record_delivery(conn, n, evidence, verdict, now),
        _ => delivery::record_delivery(conn, n, evidence, verdict, now),
    }
}

/// The order as the transaction that last changed it committed it: after a lost compare-and-set,
/// the winner's state. PostgreSQL (READ COMMITTED) and SQLite (one writer) see it with a plain
/// read; under InnoDB's REPEATABLE READ a plain read would return this transaction's older
/// snapshot, so MySQL reads it with a locking read.
pub fn order_as_committed(
    conn: &mut DbConnection,
    order_no: &OrderNo,
) -> Result<Option<Order>, DieselError> {
    match conn {
        DbConnection::Mysql(my) => mysql::order_as_committed(my, order_no),
        _ => orders::find(conn, order_no),
    }
}

/// Locks, in key order, the accounts that the given orders may credit and those orders, so that a
/// transaction taking its locks this way waits for another instead of deadlocking with it. On
/// SQLite the database lock serialises writers already.
pub fn lock_for_credits(conn: &mut DbConnection, order_nos: &[&str]) -> Result<(), DieselError> {
    match conn {
        DbConnection::Postgresql(pg) => postgres::lock_for_credits(pg, order_nos),
        DbConnection::Mysql(_) => mysql::lock_for_credits(conn, order_nos),
        DbConnection::Sqlite(_) => Ok(()),
    }
}

/// Locks up to `limit` pending orders of `channels` that are due to be asked about, oldest
/// first: those whose `next_query_at` has come, and those never asked that were created at or
/// before `first_due`. Rows another transaction holds are skipped (`FOR UPDATE SKIP LOCKED` on
/// PostgreSQL and MySQL), so instances sharing one database claim different orders; on SQLite the
/// database lock serialises writers already.
pub fn lock_due_orders(
    conn: &mut DbConnection,
    channels: &[&str],
    now: NaiveDateTime,
    first_due: NaiveDateTime,
    limit: i64,
) -> Result<Vec<String>, DieselError> {
    use crate::books::orders::OrderStatus;
    use crate::db::schema::orders;
    use diesel::prelude::*;

    let due = orders::table
        .filter(orders::status.eq(OrderStatus::Pending.as_str()))
        .filter(orders::channel.eq_any(channels))
        .filter(
            orders::next_query_at.le(now).or(orders::next_query_at
                .is_null()
                .and(orders::created_at.le(first_due))
                .nullable()),
        )
        .order(orders::created_at)
        .limit(limit)
        .select(orders::order_no);
    match conn {
        DbConnection::Postgresql(pg) => due.for_update().skip_locked().load(pg),
        DbConnection::Mysql(my) => due.for_update().skip_locked().load(my),
        DbConnection::Sqlite(lite) => due.load(lite),
    }
}

/// Locks those of the inbox rows `ids` that no other transaction holds, and returns them: a
/// delivery count never waits for a row, which another writer may hold for a moment or a frozen
/// session for as long as it is frozen. On SQLite the database lock is the only one: all of them.
pub fn lock_inbox_rows(conn: &mut DbConnection, ids: &[i64]) -> Result<Vec<i64>, DieselError> {
    match conn {
        DbConnection::Postgresql(pg) => postgres::lock_inbox_rows(pg, ids),
        DbConnection::Mysql(_) => mysql::lock_inbox_rows(conn, ids),
        DbConnection::Sqlite(_) => Ok(ids.to_vec()),
    }
}

/// Adds `increment` deliveries to each of the inbox rows `ids` (distinct), and sets when they were
/// last seen, in one statement. Returns the rows changed.
pub fn count_deliveries(
    conn: &mut DbConnection,
    ids: &[i64],
    increment: i64,
    now: NaiveDateTime,
) -> Result<usize, DieselError> {
    match conn {
        DbConnection::Postgresql(pg) => postgres::count_deliveries(pg, ids, increment, now),
        _ => delivery::count_deliveries(conn, ids, increment, now),
    }
}

/// Whether [`pay_and_credit_together`] writes many first payments at once here (PostgreSQL and
/// SQLite), so that a batch gains by holding them back to write them together.
pub fn pays_together(conn: &DbConnection) -> bool {
    !matches!(conn, DbConnection::Mysql(_))
}

/// Whether [`pay_and_credit_together`] and [`pay_and_credit`] take the locks of
/// [`lock_for_credits`] on their payments' orders and accounts themselves, in the same order,
/// before they write (PostgreSQL): a batch whose only writes are those payments has no need to
/// lock them first.
pub fn locks_together(conn: &DbConnection) -> bool {
    matches!(conn, DbConnection::Postgresql(_))
}

/// Whether each statement sees the latest commits, so that a batch reads first and locks after,
/// only what may write (PostgreSQL's READ COMMITTED). Under InnoDB's REPEATABLE READ a batch
/// locks first; on SQLite, whose writer holds the database, nothing is locked.
pub fn reads_then_locks(conn: &DbConnection) -> bool {
    matches!(conn, DbConnection::Postgresql(_))
}
