//! Anomalies: notifications kept for a human, and how a human resolves each one, once.
//!
//! A resolution is a compare-and-set on the notification (`... WHERE id = ? AND anomaly AND
//! resolution IS NULL`), so of two operators resolving one anomaly at once the second changes
//! nothing and is told who was first. Crediting by hand writes, in the same transaction and only
//! for the winner, a `manual_credit` ledger row of the order's amount under the key
//! `notification:<id>` (which the database keeps unique), with the balance changed in SQL.
//! Dismissing it or marking it refunded to the buyer (outside payhook) moves no money.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::result::Error as DieselError;

use crate::books::accounts::{self, LedgerKind, NewEntry};
use crate::books::orders::{self, Order};
use crate::db::schema::notifications;
use crate::db::{self, DbConnection, DbError};
use crate::domain::ids::OrderNo;
use crate::domain::outcome::ANOTHER_MERCHANT;
use crate::store;

/// The longest note kept with a resolution, in characters.
pub const NOTE_MAX_CHARS: usize = 1000;

/// What a human decided about an anomaly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Nothing to do: a note says why.
    Dismissed,
    /// The order's amount credited by hand, once.
    Credited,
    /// The money went back to the buyer outside payhook.
    RefundedToBuyer,
}

impl Resolution {
    pub const ALL: [Resolution; 3] = [
        Resolution::Dismissed,
        Resolution::Credited,
        Resolution::RefundedToBuyer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Dismissed => "dismissed",
            Resolution::Credited => "credited",
            Resolution::RefundedToBuyer => "refunded_to_buyer",
        }
    }

    pub fn parse(s: &str) -> Option<Resolution> {
        Resolution::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// The ledger key of the manual credit that resolves notification `id`.
pub fn entry_key(id: i64) -> String {
    format!("notification:{id}")
}

/// How a resolution is recorded: who, when and why.
#[derive(Debug, Clone)]
pub struct Decision<'a> {
    pub resolution: Resolution,
    pub by: &'a str,
    pub note: &'a str,
    pub at: NaiveDateTime,
}

/// A resolution as stored on the notification.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = notifications)]
pub struct Resolved {
    pub resolution: Option<String>,
    pub resolved_by: Option<String>,
    pub resolved_at: Option<NaiveDateTime>,
    pub resolution_note: Option<String>,
}

/// How an attempt to resolve ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolving {
    /// Recorded now; for a credit, with the balance after it.
    Done { balance_after: Option<i64> },
    /// Someone resolved it first; nothing was written now.
    AlreadyResolved(Resolved),
    /// No such notification.
    NotFound,
    /// The notification is no anomaly.
    NotAnAnomaly,
    /// Only a payment whose order payhook knows can be credited by hand.
    CannotCredit(String),
}

/// Resolves anomaly `id` once, as `decision` says, in one transaction.
pub fn resolve(
    conn: &mut DbConnection,
    id: i64,
    decision: &Decision<'_>,
) -> Result<Resolving, DbError> {
    let resolving = db::transact(conn, |conn| {
        resolve_in(conn, id, decision).map_err(DbError::from)
    })?;
    match resolving {
        // Read after the transaction: under MySQL's REPEATABLE READ the loser's own snapshot
        // still shows the row unresolved.
        Resolving::AlreadyResolved(_) => Ok(Resolving::AlreadyResolved(resolved(conn, id)?)),
        other => Ok(other),
    }
}

fn resolve_in(
    conn: &mut DbConnection,
    id: i64,
    decision: &Decision<'_>,
) -> Result<Resolving, DieselError> {
    let row = notifications::table
        .find(id)
        .select((
            notifications::anomaly,
            notifications::kind,
            notifications::order_no,
            notifications::channel,
            notifications::currency,
            notifications::detail,
        ))
        .first::<Row>(conn)
        .optional()?;
    let Some(row) = row else {
        return Ok(Resolving::NotFound);
    };
    if !row.0 {
        return Ok(Resolving::NotAnAnomaly);
    }
    let order = if decision.resolution == Resolution::Credited {
        // The order's row is locked first, so that two anomalies of one order resolved at once
        // take turns, and the second finds the first's credit.
        if let Some(order_no) = row.2.as_deref() {
            store::lock_for_credits(conn, &[order_no])?;
        }
        // Whoever held the lock may have resolved this very anomaly.
        let resolution: Option<String> = notifications::table
            .find(id)
            .select(notifications::resolution)
            .first(conn)?;
        if resolution.is_some() {
            return Ok(Resolving::AlreadyResolved(resolved(conn, id)?));
        }
        match creditable(conn, &row)? {
            Ok(order) => Some(order),
            Err(why) => return Ok(Resolving::CannotCredit(why)),
        }
    } else {
        None
    };
    // The compare-and-set: only the first resolution of this anomaly changes the row.
    let won = diesel::update(
        notifications::table
            .find(id)
            .filter(notifications::anomaly.eq(true))
            .filter(notifications::resolution.is_null()),
    )
    .set((
        notifications::resolution.eq(decision.resolution.as_str()),
        notifications::resolved_by.eq(decision.by),
        notifications::resolved_at.eq(decision.at),
        notifications::resolution_note.eq(decision.note),
    ))
    .execute(conn)?;
    if won != 1 {
        return Ok(Resolving::AlreadyResolved(resolved(conn, id)?));
    }
    let Some(order) = order else {
        return Ok(Resolving::Done {
            balance_after: None,
        });
    };
    let user = order.user_id.as_str();
    let amount = order.amount.get();
    let Some(balance_after) =
        store::change_balance(conn, user, order.currency, amount, i64::MIN, decision.at)?
    else {
        return Err(DieselError::DatabaseError(
            diesel::result::DatabaseErrorKind::Unknown,
            Box::new(format!(
                "account {user} {} cannot take the credit",
                order.currency
            )),
        ));
    };
    let key = entry_key(id);
    accounts::book(
        conn,
        &NewEntry {
            user_id: user,
            currency: order.currency,
            order_no: Some(order.order_no.as_str()),
            kind: LedgerKind::ManualCredit,
            amount_minor: amount,
            balance_after,
            entry_key: &key,
            debit_no: None,
            memo: Some(decision.note),
            created_at: decision.at,
        },
    )?;
    // The order is settled by hand: a pending one is closed, so that no later notification
    // credits it a second time (one that comes is kept as a payment after close).
    orders::close_pending(conn, &order.order_no, None, decision.at)?;
    Ok(Resolving::Done {
        balance_after: Some(balance_after),
    })
}

/// What deciding whether an anomaly can be credited by hand reads of its row: anomaly, kind,
/// order, channel, currency, detail.
type Row = (
    bool,
    String,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
);

/// The order a payment notification names, or why it cannot be credited by hand: only a payment
/// to this merchant, on the order's channel and in its currency, of an order that no credit has
/// paid yet (automatic or by hand).
fn creditable(conn: &mut DbConnection, row: &Row) -> Result<Result<Order, String>, DieselError> {
    let (_, kind, order_no, channel, currency, detail) = row;
    if kind != "paid" {
        return Ok(Err(format!(
            "a {kind} notification moves no money in; only a payment can be credited by hand"
        )));
    }
    if detail
        .as_deref()
        .is_some_and(|d| d.starts_with(ANOTHER_MERCHANT))
    {
        return Ok(Err(
            "the payment was made to another merchant or app, not to this channel".to_owned(),
        ));
    }
    let Some(order_no) = order_no.as_deref().and_then(|no| OrderNo::parse(no).ok()) else {
        return Ok(Err(
            "the notification names no order payhook knows".to_owned()
        ));
    };
    let Some(order) = orders::find(conn, &order_no)? else {
        return Ok(Err(format!("order {order_no} does not exist")));
    };
    if order.channel.as_str() != channel {
        return Ok(Err(format!(
            "order {order_no} belongs to channel {}, the payment came on {channel}",
            order.channel
        )));
    }
    if currency
        .as_deref()
        .is_some_and(|c| c != order.currency.code())
    {
        return Ok(Err(format!(
            "the payment is in {}, order {order_no} in {}",
            currency.as_deref().unwrap_or("-"),
            order.currency
        )));
    }
    if order.status.was_paid() {
        return Ok(Err(format!(
            "order {order_no} is {} already: crediting it by hand would pay it twice",
            order.status.as_str()
        )));
    }
    let by_hand: i64 = crate::db::schema::ledger::table
        .filter(crate::db::schema::ledger::order_no.eq(order_no.as_str()))
        .filter(crate::db::schema::ledger::kind.eq(LedgerKind::ManualCredit.as_str()))
        .count()
        .get_result(conn)?;
    if by_hand > 0 {
        return Ok(Err(format!(
            "order {order_no} was credited by hand already, from another of its notifications"
        )));
    }
    Ok(Ok(order))
}

/// The resolution notification `id` holds.
pub fn resolved(conn: &mut DbConnection, id: i64) -> Result<Resolved, DieselError> {
    notifications::table
        .find(id)
        .select(Resolved::as_select())
        .first(conn)
}
