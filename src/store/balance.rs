//! A balance moved in SQL, within bounds: the one way any balance changes; and the lock that
//! makes two debits of one account take turns.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::result::Error as DieselError;
use diesel::sql_types::BigInt;

use super::statement::Statement;

use crate::db::schema::accounts;
use crate::db::DbConnection;
use crate::domain::money::Currency;

/// Adds `delta` (negative to take) to the (user, currency) balance in the database, never
/// read-modify-write in the application, so concurrent changes cannot lose each other. The
/// update is a compare-and-set on what the balance may become: it changes nothing when the
/// account is missing, when the new balance would be below `floor` (a debit's zero), or when it
/// would overflow. Returns the new balance when it changed.
pub fn change_balance(
    conn: &mut DbConnection,
    user_id: &str,
    currency: Currency,
    delta: i64,
    floor: i64,
    now: NaiveDateTime,
) -> Result<Option<i64>, DieselError> {
    // `balance + delta` stays within `floor..=i64::MAX`, written so that the bound itself
    // cannot overflow (SQLite would turn an overflow into a float).
    let Some(lowest) = floor.checked_sub(delta.min(0)) else {
        return Ok(None);
    };
    // A `Statement`, because diesel prepares its own `UPDATE`s anew on every call.
    let change = Statement::<BigInt>::new("UPDATE accounts SET balance_minor = balance_minor + ")
        .bigint(delta)
        .sql(", version = version + 1, updated_at = ")
        .timestamp(now)
        .sql(" WHERE user_id = ")
        .text(user_id)
        .sql(" AND currency = ")
        .text(currency.code())
        .sql(" AND balance_minor <= ")
        .bigint(i64::MAX - delta.max(0))
        .sql(" AND balance_minor >= ")
        .bigint(lowest);
    if matches!(conn, DbConnection::Mysql(_)) {
        if change.execute(conn)? != 1 {
            return Ok(None);
        }
        // The row is locked by the update above: this reads the balance it wrote.
        return accounts::table
            .find((user_id, currency.code()))
            .select(accounts::balance_minor)
            .first(conn)
            .map(Some);
    }
    change
        .sql(" RETURNING balance_minor")
        .get_result(conn)
        .optional()
}

/// Locks the (user, currency) account row until the transaction ends, so that two debits of one
/// account take turns: the second reads the ledger only after the first has committed. A missing
/// account locks nothing. On SQLite the database lock serialises writers already.
pub fn lock_account(
    conn: &mut DbConnection,
    user_id: &str,
    currency: Currency,
) -> Result<(), DieselError> {
    let account = accounts::table
        .find((user_id, currency.code()))
        .select(accounts::user_id)
        .for_update();
    match conn {
        DbConnection::Postgresql(pg) => account.load::<String>(pg).map(drop),
        DbConnection::Mysql(my) => account.load::<String>(my).map(drop),
        DbConnection::Sqlite(_) => Ok(()),
    }
}
