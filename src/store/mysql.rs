//! MySQL's and MariaDB's SQL. There is no `RETURNING`, so what a statement changed is read back
//! inside the same transaction, and the inbox upsert is `INSERT ... ON DUPLICATE KEY UPDATE`.
//!
//! The compare-and-set holds as on the other backends: under InnoDB's REPEATABLE READ an
//! `UPDATE ... WHERE status = 'pending'` reads the latest committed row and locks it, so of two
//! transactions paying one order the second waits and then matches no row.

use chrono::NaiveDateTime;
use diesel::mysql::MysqlConnection;
use diesel::prelude::*;
use diesel::result::Error as DieselError;
use diesel::sql_types::{BigInt, Text};

use super::delivery::{delivery_values, moved_money_sql, Verdict, INSERT_DELIVERY};
use super::statement::Statement;
use crate::books::inbox::{Evidence, InboxRow};
use crate::books::orders::{Order, OrderRow};
use crate::db::schema::{notifications, orders as orders_table};
use crate::db::DbConnection;
use crate::domain::ids::OrderNo;
use crate::domain::notification::Notification;

/// The inbox upsert: a new row, or one more delivery on the row the notification has. MySQL
/// assigns left to right, so `detail` and `anomaly` are decided before `outcome` changes.
pub(super) fn record_delivery(
    conn: &mut DbConnection,
    n: &Notification,
    evidence: Evidence<'_>,
    verdict: Verdict<'_>,
    now: NaiveDateTime,
) -> Result<InboxRow, DieselError> {
    let statement = Statement::<()>::new(INSERT_DELIVERY).sql("VALUES (");
    delivery_values(statement, n, evidence, verdict, now)
        .sql(concat!(
            ") ON DUPLICATE KEY UPDATE \
             detail = IF(outcome IN ",
            moved_money_sql!(),
            ", detail, VALUES(detail)), \
             anomaly = IF(resolution IS NOT NULL OR outcome IN ",
            moved_money_sql!(),
            ", anomaly, VALUES(anomaly)), \
             outcome = IF(outcome IN ",
            moved_money_sql!(),
            ", outcome, VALUES(outcome)), \
             order_no = COALESCE(order_no, VALUES(order_no)), \
             delivery_count = delivery_count + 1, last_seen_at = VALUES(last_seen_at)"
        ))
        .execute(conn)?;
    let (id, delivery_count) = notifications::table
        .filter(notifications::channel.eq(n.channel.as_str()))
        .filter(notifications::notification_id.eq(&n.notification_id))
        .select((notifications::id, notifications::delivery_count))
        .first::<(i64, i64)>(conn)?;
    Ok(InboxRow { id, delivery_count })
}

/// `SELECT ... FOR UPDATE`: a locking read sees the latest committed row, not the snapshot.
pub(super) fn order_as_committed(
    my: &mut MysqlConnection,
    order_no: &OrderNo,
) -> Result<Option<Order>, DieselError> {
    orders_table::table
        .find(order_no.as_str())
        .select(OrderRow::as_select())
        .for_update()
        .first(my)
        .optional()?
        .map(Order::try_from)
        .transpose()
}

/// The orders, then the accounts they may credit, each locked in primary-key order. InnoDB locks
/// rows as its plan reads them, not after a sort, so each table gets a statement of its own that
/// reads its primary key in order.
pub(super) fn lock_for_credits(conn: &mut DbConnection, order_nos: &[&str]) -> QueryResult<()> {
    if order_nos.is_empty() {
        return Ok(());
    }
    let users: Vec<String> =
        Statement::<Text>::new("SELECT user_id FROM orders WHERE order_no IN (")
            .text_list(order_nos)
            .sql(") ORDER BY order_no FOR UPDATE")
            .load(conn)?;
    if users.is_empty() {
        return Ok(());
    }
    let mut users: Vec<&str> = users.iter().map(String::as_str).collect();
    users.sort_unstable();
    users.dedup();
    Statement::<Text>::new("SELECT user_id FROM accounts WHERE user_id IN (")
        .text_list(&users)
        .sql(") ORDER BY user_id, currency FOR UPDATE")
        .load::<String>(conn)?;
    Ok(())
}

/// The inbox rows no other transaction holds, in id order, locked (`SKIP LOCKED`).
pub(super) fn lock_inbox_rows(conn: &mut DbConnection, ids: &[i64]) -> QueryResult<Vec<i64>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Statement::<BigInt>::new("SELECT id FROM notifications WHERE id IN (")
        .bigint_list(ids)
        .sql(") ORDER BY id FOR UPDATE SKIP LOCKED")
        .load(conn)
}
