//! Accounts: one balance per (user, currency), changed only together with a ledger row.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::result::Error as DieselError;

use crate::db::schema::{accounts, ledger};
use crate::db::DbConnection;
use crate::domain::ids::UserId;
use crate::domain::money::Currency;

/// Inserts the (user, currency) account with a zero balance unless it exists.
pub fn ensure(
    conn: &mut DbConnection,
    user: &UserId,
    currency: Currency,
    now: NaiveDateTime,
) -> Result<(), DieselError> {
    let exists = accounts::table
        .find((user.as_str(), currency.code()))
        .select(accounts::version)
        .first::<i64>(conn)
        .optional()?
        .is_some();
    if !exists {
        diesel::insert_into(accounts::table)
            .values((
                accounts::user_id.eq(user.as_str()),
                accounts::currency.eq(currency.code()),
                accounts::balance_minor.eq(0i64),
                accounts::version.eq(0i64),
                accounts::created_at.eq(now),
                accounts::updated_at.eq(now),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// Why a ledger row moved a balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerKind {
    /// A paid order's amount, added once.
    Credit,
}

impl LedgerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerKind::Credit => "credit",
        }
    }
}

/// One balance as stored: its currency code and amount in minor units.
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct Balance {
    pub currency: String,
    pub amount_minor: i64,
}

/// One ledger row.
#[derive(Debug, Clone, Queryable, Selectable, PartialEq, Eq)]
#[diesel(table_name = ledger)]
pub struct LedgerEntry {
    pub id: i64,
    pub order_no: String,
    pub kind: String,
    pub currency: String,
    pub amount_minor: i64,
    pub balance_after: i64,
    pub created_at: NaiveDateTime,
}

/// A user's balances and a page of their ledger, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub user_id: UserId,
    pub balances: Vec<Balance>,
    pub ledger: Vec<LedgerEntry>,
    /// Pass as `before` to get the next (older) page; absent on the last page.
    pub next_before: Option<i64>,
}

/// Balances and up to `limit` ledger rows older than `before` (a ledger id).
pub fn statement(
    conn: &mut DbConnection,
    user: &UserId,
    limit: i64,
    before: Option<i64>,
) -> Result<Statement, DieselError> {
    let balances: Vec<Balance> = accounts::table
        .filter(accounts::user_id.eq(user.as_str()))
        .order(accounts::currency.asc())
        .select((accounts::currency, accounts::balance_minor))
        .load(conn)?;
    let mut query = ledger::table
        .filter(ledger::user_id.eq(user.as_str()))
        .order(ledger::id.desc())
        .limit(limit + 1)
        .select(LedgerEntry::as_select())
        .into_boxed();
    if let Some(before) = before {
        query = query.filter(ledger::id.lt(before));
    }
    let mut ledger: Vec<LedgerEntry> = query.load(conn)?;
    let next_before = if ledger.len() as i64 > limit {
        ledger.truncate(limit as usize);
        ledger.last().map(|e| e.id)
    } else {
        None
    };
    Ok(Statement {
        user_id: user.clone(),
        balances,
        ledger,
        next_before,
    })
}
