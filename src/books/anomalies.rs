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
        ))
        .first::<(bool, String, Option<String>)>(conn)
        .optional()?;
    let Some((anomaly, kind, order_no)) = row else {
        return Ok(Resolving::NotFound);
    };
    if !anomaly {
        return Ok(Resolving::NotAnAnomaly);
    }
    let order = if decision.resolution == Resolution::Credited {
        match creditable(conn, &kind, order_no.as_deref())? {
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
    Ok(Resolving::Done {
        balance_after: Some(balance_after),
    })
}

/// The order a payment notification names, or why it cannot be credited by hand.
fn creditable(
    conn: &mut DbConnection,
    kind: &str,
    order_no: Option<&str>,
) -> Result<Result<Order, String>, DieselError> {
    if kind != "paid" {
        return Ok(Err(format!(
            "a {kind} notification moves no money in; only a payment can be credited by hand"
        )));
    }
    let Some(order_no) = order_no.and_then(|no| OrderNo::parse(no).ok()) else {
        return Ok(Err(
            "the notification names no order payhook knows".to_owned()
        ));
    };
    Ok(orders::find(conn, &order_no)?.ok_or_else(|| format!("order {order_no} does not exist")))
}

/// The resolution notification `id` holds.
pub fn resolved(conn: &mut DbConnection, id: i64) -> Result<Resolved, DieselError> {
    notifications::table
        .find(id)
        .select(Resolved::as_select())
        .first(conn)
}
