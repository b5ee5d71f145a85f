//! What a batch of notifications reads up front, in two statements for all of them (see
//! `crediting::read::find_for_batch`): the orders they name or their trades paid, and their
//! inbox rows.

use diesel::prelude::*;
use diesel::result::Error as DieselError;
use diesel::sql_types::{Array, BigInt, Text};

use crate::books::orders::OrderRow;
use crate::db::schema::{notifications, orders};
use crate::db::DbConnection;

/// A notification's inbox row, by its channel and id.
#[derive(Debug, Queryable, QueryableByName)]
pub struct Delivered {
    #[diesel(sql_type = Text)]
    pub channel: String,
    #[diesel(sql_type = Text)]
    pub notification_id: String,
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = BigInt)]
    pub delivery_count: i64,
}

/// The orders named in `order_nos` or paid by one of `trades` in one of `channels`, and the inbox
/// rows of `ids` in `channels`.
///
/// On PostgreSQL each list is one array parameter, in unprepared statements planned anew for
/// every batch, from the tables as they are then: a prepared statement keeps its plan for the
/// session, and one chosen while the inbox was small (a new deployment's first flood, before
/// autovacuum has analyzed it) kept `= ANY($1)` a sequential scan as it grew by thousands of rows
/// a second. Elsewhere an `IN` list makes a statement of its own for each length, prepared each
/// time.
pub fn read_for_batch(
    conn: &mut DbConnection,
    order_nos: &[&str],
    channels: &[&str],
    trades: &[&str],
    ids: &[&str],
) -> Result<(Vec<OrderRow>, Vec<Delivered>), DieselError> {
    if let DbConnection::Postgresql(pg) = conn {
        let rows = diesel::sql_query(
            "SELECT * FROM orders WHERE order_no = ANY($1) \
             OR (channel = ANY($2) AND provider_trade_no = ANY($3))",
        )
        .bind::<Array<Text>, _>(order_nos)
        .bind::<Array<Text>, _>(channels)
        .bind::<Array<Text>, _>(trades)
        .load::<OrderRow>(pg)?;
        let inbox = diesel::sql_query(
            "SELECT channel, notification_id, id, delivery_count FROM notifications \
             WHERE channel = ANY($1) AND notification_id = ANY($2)",
        )
        .bind::<Array<Text>, _>(channels)
        .bind::<Array<Text>, _>(ids)
        .load::<Delivered>(pg)?;
        return Ok((rows, inbox));
    }
    let named = orders::order_no.eq_any(order_nos);
    let query = orders::table.select(OrderRow::as_select());
    let rows: Vec<OrderRow> = if trades.is_empty() {
        query.filter(named).load(conn)?
    } else {
        let paid = orders::channel
            .eq_any(channels)
            .and(orders::provider_trade_no.eq_any(trades));
        query.filter(named.or(paid)).load(conn)?
    };
    let inbox = notifications::table
        .filter(notifications::notification_id.eq_any(ids))
        .filter(notifications::channel.eq_any(channels))
        .select((
            notifications::channel,
            notifications::notification_id,
            notifications::id,
            notifications::delivery_count,
        ))
        .load(conn)?;
    Ok((rows, inbox))
}
