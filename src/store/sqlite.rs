//! SQLite's SQL: separate statements, since SQLite runs in-process and a round trip costs little.

use chrono::NaiveDateTime;
use diesel::result::Error as DieselError;

use super::balance::change_balance;
use super::delivery::{book_credit, Credit, CreditWrite};
use crate::books::orders::{self, Order};
use crate::db::DbConnection;
use crate::domain::notification::Notification;

/// The compare-and-set, then for its winner the credit and the ledger row; the caller records the
/// delivery.
pub(super) fn pay_and_credit(
    conn: &mut DbConnection,
    order: &Order,
    n: &Notification,
    now: NaiveDateTime,
) -> Result<CreditWrite, DieselError> {
    let trade_no = n.provider_trade_no.as_deref();
    if !orders::mark_paid(conn, &order.order_no, trade_no, now)? {
        return Ok(CreditWrite::NotPending);
    }
    Ok(match credit(conn, order, now)? {
        Some(balance_after) => CreditWrite::Credited(Credit {
            balance_after,
            delivery: None,
        }),
        None => CreditWrite::NotCredited,
    })
}

/// Adds the order's amount to its account and writes the ledger row. Returns the new balance,
/// or `None` when the account is missing or the balance would overflow.
///
/// The ledger's unique (kind, entry_key) key refuses a second credit for one order even if every
/// check above this line were wrong.
fn credit(
    conn: &mut DbConnection,
    order: &Order,
    now: NaiveDateTime,
) -> Result<Option<i64>, DieselError> {
    let user = order.user_id.as_str();
    let Some(balance_after) = change_balance(
        conn,
        user,
        order.currency,
        order.amount.get(),
        i64::MIN,
        now,
    )?
    else {
        return Ok(None);
    };
    book_credit(conn, order, balance_after, now)?;
    Ok(Some(balance_after))
}
