//! Accounts: one balance per (user, currency), changed only together with a ledger row.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::result::Error as DieselError;
use serde::Serialize;

use crate::books::orders::Order;
use crate::db::schema::{accounts, ledger};
use crate::db::DbConnection;
use crate::ids::UserId;
use crate::money::{AmountMinor, Currency};

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

/// Adds `amount` to the account in the database (never read-modify-write in the application, so
/// concurrent credits cannot lose each other) and writes the ledger row. Returns the new balance.
///
/// The ledger's unique (order_no, kind) key refuses a second credit for one order even if every
/// check above this line were wrong.
pub fn credit(
    conn: &mut DbConnection,
    order: &Order,
    now: NaiveDateTime,
) -> Result<i64, DieselError> {
    let account = accounts::table.find((order.user_id.as_str(), order.currency.code()));
    // SQLite turns an integer overflow into a float; refuse it here on both backends instead.
    let room = accounts::balance_minor.le(i64::MAX - order.amount.get());
    let increment = diesel::update(account.filter(room)).set((
        accounts::balance_minor.eq(accounts::balance_minor + order.amount.get()),
        accounts::version.eq(accounts::version + 1),
        accounts::updated_at.eq(now),
    ));
    // The new balance comes back from the update itself (RETURNING, on both backends).
    let balance_after: Option<i64> = match conn {
        DbConnection::Postgresql(pg) => increment
            .returning(accounts::balance_minor)
            .get_result(pg)
            .optional()?,
        DbConnection::Sqlite(lite) => increment
            .returning(accounts::balance_minor)
            .get_result(lite)
            .optional()?,
    };
    let balance_after = balance_after.ok_or_else(|| not_credited(order))?;
    diesel::insert_into(ledger::table)
        .values((
            ledger::user_id.eq(order.user_id.as_str()),
            ledger::currency.eq(order.currency.code()),
            ledger::order_no.eq(order.order_no.as_str()),
            ledger::kind.eq("credit"),
            ledger::amount_minor.eq(order.amount.get()),
            ledger::balance_after.eq(balance_after),
            ledger::created_at.eq(now),
        ))
        .execute(conn)?;
    Ok(balance_after)
}

/// Locks, in key order, the accounts that the given orders may credit, and those orders
/// (`SELECT ... FOR UPDATE`, PostgreSQL). A transaction that takes its locks this way before it
/// touches any of those rows waits for another such transaction instead of deadlocking with it.
pub fn lock_for_orders(
    conn: &mut diesel::pg::PgConnection,
    order_nos: &[&str],
) -> Result<(), DieselError> {
    use crate::db::schema::orders;

    if order_nos.is_empty() {
        return Ok(());
    }
    accounts::table
        .inner_join(
            orders::table.on(orders::user_id
                .eq(accounts::user_id)
                .and(orders::currency.eq(accounts::currency))),
        )
        .filter(orders::order_no.eq_any(order_nos))
        .order((accounts::user_id, accounts::currency, orders::order_no))
        .select(accounts::user_id)
        .for_update()
        .load::<String>(conn)?;
    Ok(())
}

/// The error for a credit that found no account to add to, or no room in its balance. It fails
/// the transaction (nothing is credited, the provider is asked to retry) and is for a human.
pub fn not_credited(order: &Order) -> DieselError {
    DieselError::DatabaseError(
        diesel::result::DatabaseErrorKind::CheckViolation,
        Box::new(format!(
            "order {}: account {}/{} is missing or its balance would overflow",
            order.order_no,
            order.user_id,
            order.currency.code()
        )),
    )
}

/// One balance, as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BalanceView {
    pub currency: String,
    pub amount: String,
    pub amount_minor: i64,
}

/// One ledger row, as the API shows it.
#[derive(Debug, Clone, Serialize, Queryable, Selectable, PartialEq, Eq)]
#[diesel(table_name = ledger)]
pub struct LedgerEntry {
    pub id: i64,
    pub order_no: String,
    pub kind: String,
    pub currency: String,
    pub amount_minor: i64,
    pub balance_after: i64,
    #[serde(serialize_with = "as_utc")]
    pub created_at: NaiveDateTime,
}

fn as_utc<S: serde::Serializer>(t: &NaiveDateTime, s: S) -> Result<S::Ok, S::Error> {
    t.and_utc().serialize(s)
}

/// A user's balances and a page of their ledger, newest first.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Statement {
    pub user_id: UserId,
    pub balances: Vec<BalanceView>,
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
    let rows: Vec<(String, i64)> = accounts::table
        .filter(accounts::user_id.eq(user.as_str()))
        .order(accounts::currency.asc())
        .select((accounts::currency, accounts::balance_minor))
        .load(conn)?;
    let balances = rows
        .into_iter()
        .map(|(currency, minor)| BalanceView {
            amount: match (Currency::parse(&currency), AmountMinor::new(minor)) {
                (Ok(c), Ok(a)) => a.format(c),
                _ => minor.to_string(),
            },
            currency,
            amount_minor: minor,
        })
        .collect();
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
