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

/// The orders named in `order_nos` or paid by one of `trades` (channel, trade), and the inbox rows
/// of `deliveries` (channel, notification id).
///
/// On PostgreSQL each list is an array parameter, the pairs unnested and joined to their tables,
/// so that every row is found by its key whatever plan the statement gets: in the committer's
/// transactions that is a generic plan (`plan_cache_mode`), made anew for each batch, and one made
/// from never-analyzed tables (a new deployment's first flood) read every inbox row of a channel
/// when the pairs were two `= ANY` lists. Elsewhere `IN` lists make a statement of their own for
/// each length, prepared each time.
pub fn read_for_batch(
    conn: &mut DbConnection,
    order_nos: &[&str],
    trades: &[(&str, &str)],
    deliveries: &[(&str, &str)],
) -> Result<(Vec<OrderRow>, Vec<Delivered>), DieselError> {
    let unzip = |pairs: &[(&str, &str)]| -> (Vec<String>, Vec<String>) {
        pairs
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .unzip()
    };
    let (trade_channels, trade_nos) = unzip(trades);
    let (channels, ids) = unzip(deliveries);
    if let DbConnection::Postgresql(pg) = conn {
        let rows = diesel::sql_query(
            "SELECT o.* FROM orders AS o WHERE o.order_no = ANY($1) \
             UNION ALL SELECT o.* FROM unnest($2, $3) AS k (channel, trade_no) \
             JOIN orders AS o ON o.channel = k.channel AND o.provider_trade_no = k.trade_no",
        )
        .bind::<Array<Text>, _>(order_nos)
        .bind::<Array<Text>, _>(&trade_channels)
        .bind::<Array<Text>, _>(&trade_nos)
        .load::<OrderRow>(pg)?;
        let inbox = diesel::sql_query(
            "SELECT n.channel, n.notification_id, n.id, n.delivery_count \
             FROM unnest($1, $2) AS k (channel, notification_id) \
             JOIN notifications AS n ON n.channel = k.channel \
                 AND n.notification_id = k.notification_id",
        )
        .bind::<Array<Text>, _>(&channels)
        .bind::<Array<Text>, _>(&ids)
        .load::<Delivered>(pg)?;
        return Ok((rows, inbox));
    }
    let named = orders::order_no.eq_any(order_nos);
    let query = orders::table.select(OrderRow::as_select());
    let rows: Vec<OrderRow> = if trades.is_empty() {
        query.filter(named).load(conn)?
    } else {
        // Every channel with every trade: a superset of the pairs, which the caller matches.
        let paid = orders::channel
            .eq_any(&trade_channels)
            .and(orders::provider_trade_no.eq_any(&trade_nos));
        query.filter(named.or(paid)).load(conn)?
    };
    let inbox = notifications::table
        .filter(notifications::notification_id.eq_any(&ids))
        .filter(notifications::channel.eq_any(&channels))
        .select((
            notifications::channel,
            notifications::notification_id,
            notifications::id,
            notifications::delivery_count,
        ))
        .load(conn)?;
    Ok((rows, inbox))
}
