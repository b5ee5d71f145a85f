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
    /// Money the provider gave back to the buyer, taken from the balance once per refund.
    Refund,
    /// A payment the buyer's bank took back, taken once per dispute.
    Chargeback,
    /// A chargeback's money returned, given back once per dispute.
    ChargebackReversal,
    /// The balance spent, once per `debit_no`.
    Debit,
    /// A payment an operator credited by hand, once.
    ManualCredit,
}

impl LedgerKind {
    pub const ALL: [LedgerKind; 6] = [
        LedgerKind::Credit,
        LedgerKind::Refund,
        LedgerKind::Chargeback,
        LedgerKind::ChargebackReversal,
        LedgerKind::Debit,
        LedgerKind::ManualCredit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LedgerKind::Credit => "credit",
            LedgerKind::Refund => "refund",
            LedgerKind::Chargeback => "chargeback",
            LedgerKind::ChargebackReversal => "chargeback_reversal",
            LedgerKind::Debit => "debit",
            LedgerKind::ManualCredit => "manual_credit",
        }
    }
}

/// A ledger row to write, once its balance change has been made.
#[derive(Debug, Clone, Copy)]
pub struct NewEntry<'a> {
    pub user_id: &'a str,
    pub currency: Currency,
    /// The order a credit, refund or chargeback belongs to; `None` for a debit.
    pub order_no: Option<&'a str>,
    pub kind: LedgerKind,
    /// Signed: negative for money going out.
    pub amount_minor: i64,
    pub balance_after: i64,
    /// What makes the row unique within its kind (see the migration): a second row with the
    /// same kind and key is refused by the database.
    pub entry_key: &'a str,
    pub debit_no: Option<&'a str>,
    pub memo: Option<&'a str>,
    pub created_at: NaiveDateTime,
}

/// Writes one ledger row.
pub fn book(conn: &mut DbConnection, entry: &NewEntry<'_>) -> Result<(), DieselError> {
    diesel::insert_into(ledger::table)
        .values((
            ledger::user_id.eq(entry.user_id),
            ledger::currency.eq(entry.currency.code()),
            ledger::order_no.eq(entry.order_no),
            ledger::kind.eq(entry.kind.as_str()),
            ledger::amount_minor.eq(entry.amount_minor),
            ledger::balance_after.eq(entry.balance_after),
            ledger::created_at.eq(entry.created_at),
            ledger::entry_key.eq(entry.entry_key),
            ledger::debit_no.eq(entry.debit_no),
            ledger::memo.eq(entry.memo),
        ))
        .execute(conn)?;
    Ok(())
}

/// The ledger row of `kind` under `entry_key`, if one was written.
pub fn find_entry(
    conn: &mut DbConnection,
    kind: LedgerKind,
    entry_key: &str,
) -> Result<Option<LedgerEntry>, DieselError> {
    ledger::table
        .filter(ledger::kind.eq(kind.as_str()))
        .filter(ledger::entry_key.eq(entry_key))
        .select(LedgerEntry::as_select())
        .first(conn)
        .optional()
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
    pub user_id: String,
    pub order_no: Option<String>,
    pub debit_no: Option<String>,
    pub memo: Option<String>,
    pub kind: String,
    pub currency: String,
    /// Signed: negative for money going out.
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
