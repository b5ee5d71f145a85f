//! A balance moved in SQL, within bounds: the one way any balance changes; and the lock that
//! makes two debits of one account take turns.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::result::Error as DieselError;

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
    let account = accounts::table.find((user_id, currency.code()));
    // `balance + delta` stays within `floor..=i64::MAX`, written so that the bound itself
    // cannot overflow (SQLite would turn an overflow into a float).
    let Some(lowest) = floor.checked_sub(delta.min(0)) else {
        return Ok(None);
    };
    let within = accounts::balance_minor
        .le(i64::MAX - delta.max(0))
        .and(accounts::balance_minor.ge(lowest));
    let change = diesel::update(account.filter(within)).set((
        accounts::balance_minor.eq(accounts::balance_minor + delta),
        accounts::version.eq(accounts::version + 1),
        accounts::updated_at.eq(now),
    ));
    match conn {
        DbConnection::Postgresql(pg) => change
            .returning(accounts::balance_minor)
            .get_result(pg)
            .optional(),
        DbConnection::Sqlite(lite) => change
            .returning(accounts::balance_minor)
            .get_result(lite)
            .optional(),
        DbConnection::Mysql(my) => {
            if change.execute(my)? != 1 {
                return Ok(None);
            }
            // The row is locked by the update above: this reads the balance it wrote.
            account.select(accounts::balance_minor).first(my).map(Some)
        }
    }
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
