//! Short lock waits, for work that follows a lock timeout.

use diesel::connection::SimpleConnection;
use diesel::result::Error as DieselError;

use crate::db::DbConnection;

/// How long a statement waits for a lock while [`Hurried`]: on PostgreSQL.
pub const HURRIED_LOCK_WAIT: &str = "200ms";

/// A connection whose lock waits are cut short, for work that follows a lock timeout: the rows or
/// the table one notification of a batch needs are held by a session that may be frozen, and the
/// others should neither wait the whole timeout again nor be refused with it.
///
/// PostgreSQL: each transaction sets its own `lock_timeout` ([`hurry`]); MySQL and MariaDB count
/// lock waits in whole seconds, for the session, so the session waits one second until this guard
/// is dropped, which restores the configured timeout.
pub struct Hurried<'c> {
    conn: &'c mut DbConnection,
    restore_mysql: bool,
}

impl<'c> Hurried<'c> {
    pub fn new(conn: &'c mut DbConnection) -> Hurried<'c> {
        let mut restore_mysql = false;
        if let DbConnection::Mysql(my) = conn {
            match my.batch_execute(
                "SET @payhook_row_wait = @@SESSION.innodb_lock_wait_timeout, \
                     @payhook_table_wait = @@SESSION.lock_wait_timeout; \
                 SET SESSION innodb_lock_wait_timeout = 1, lock_wait_timeout = 1",
            ) {
                Ok(()) => restore_mysql = true,
                Err(e) => log::warn!("cannot shorten lock waits: {e}"),
            }
        }
        Hurried {
            conn,
            restore_mysql,
        }
    }

    pub fn conn(&mut self) -> &mut DbConnection {
        self.conn
    }
}

impl Drop for Hurried<'_> {
    fn drop(&mut self) {
        if let (true, DbConnection::Mysql(my)) = (self.restore_mysql, &mut *self.conn) {
            let restored = my.batch_execute(
                "SET SESSION innodb_lock_wait_timeout = @payhook_row_wait, \
                     lock_wait_timeout = @payhook_table_wait",
            );
            if let Err(e) = restored {
                log::warn!("cannot restore the lock wait timeouts of a connection: {e}");
            }
        }
    }
}

/// Inside a transaction of a [`Hurried`] connection: on PostgreSQL, this transaction's lock waits
/// last [`HURRIED_LOCK_WAIT`] at most (MySQL's are the session's, set by [`Hurried`]).
pub fn hurry(conn: &mut DbConnection) -> Result<(), DieselError> {
    match conn {
        DbConnection::Postgresql(pg) => {
            pg.batch_execute(&format!("SET LOCAL lock_timeout = '{HURRIED_LOCK_WAIT}'"))
        }
        DbConnection::Sqlite(_) | DbConnection::Mysql(_) => Ok(()),
    }
}
