//! What a batch of notifications reads up front, in two statements for all of them (see
//! `crediting::read::find_for_batch`): the orders they name or their trades paid, and their
//! inbox rows.

use diesel::prelude::*;
use diesel::result::Error as DieselError;
use diesel::sql_types::{BigInt, Text, Untyped};

use super::postgres::ByKeys;
use super::statement::Statement;

use crate::books::orders::OrderRow;
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
/// On PostgreSQL each list is an array parameter, in two statements prepared once per connection;
/// each pair is looked up on its own, in a `LATERAL` subquery whose `LIMIT 1` (the pairs are
/// unique keys) keeps it from being merged into a join. So every row is found by its key whatever
/// plan they keep, and in payhook's write transactions that is a generic plan
/// (`plan_cache_mode`) made for the tables as they were at the first batch: planned while the
/// inbox was empty, two `= ANY` lists read every inbox row of a channel, and a join of the pairs
/// every inbox row, on every batch. Elsewhere the lists are `IN` lists, padded to a few lengths so
/// that their statements stay prepared too.
pub fn read_for_batch(
    conn: &mut DbConnection,
    order_nos: &[&str],
    trades: &[(&str, &str)],
    deliveries: &[(&str, &str)],
) -> Result<(Vec<OrderRow>, Vec<Delivered>), DieselError> {
    let (trade_channels, trade_nos): (Vec<&str>, Vec<&str>) = trades.iter().copied().unzip();
    let (channels, ids): (Vec<&str>, Vec<&str>) = deliveries.iter().copied().unzip();
    if let DbConnection::Postgresql(pg) = conn {
        let rows = ByKeys {
            sql: &[
                "SELECT o.* FROM orders AS o WHERE o.order_no = ANY(",
                ") UNION ALL SELECT t.* FROM unnest(",
                ", ",
                ") AS k (channel, trade_no) CROSS JOIN LATERAL (SELECT * FROM orders AS o \
                 WHERE o.channel = k.channel AND o.provider_trade_no = k.trade_no LIMIT 1) AS t",
            ],
            arrays: [
                order_nos.to_vec(),
                trade_channels.clone(),
                trade_nos.clone(),
            ],
        }
        .load::<OrderRow>(pg)?;
        let inbox = ByKeys {
            sql: &[
                "SELECT n.channel, n.notification_id, n.id, n.delivery_count FROM unnest(",
                ", ",
                ") AS k (channel, notification_id) CROSS JOIN LATERAL (SELECT channel, \
                 notification_id, id, delivery_count FROM notifications AS n \
                 WHERE n.channel = k.channel AND n.notification_id = k.notification_id \
                 LIMIT 1) AS n",
            ],
            arrays: [channels.clone(), ids.clone()],
        }
        .load::<Delivered>(pg)?;
        return Ok((rows, inbox));
    }
    // Each channel once: the lists are padded to powers of two, and fewer lengths make fewer
    // statements to keep prepared.
    fn distinct<'a>(list: &[&'a str]) -> Vec<&'a str> {
        let mut list = list.to_vec();
        list.sort_unstable();
        list.dedup();
        list
    }
    let (trade_channels, channels) = (distinct(&trade_channels), distinct(&channels));
    let orders =
        Statement::<Untyped>::new("SELECT * FROM orders WHERE order_no IN (").text_list(order_nos);
    let rows: Vec<OrderRow> = if trades.is_empty() {
        orders.sql(")").load(conn)?
    } else {
        // Every channel with every trade: a superset of the pairs, which the caller matches.
        orders
            .sql(") OR (channel IN (")
            .text_list(&trade_channels)
            .sql(") AND provider_trade_no IN (")
            .text_list(&trade_nos)
            .sql("))")
            .load(conn)?
    };
    let inbox = Statement::<(Text, Text, BigInt, BigInt)>::new(
        "SELECT channel, notification_id, id, delivery_count FROM notifications \
         WHERE notification_id IN (",
    )
    .text_list(&ids)
    .sql(") AND channel IN (")
    .text_list(&channels)
    .sql(")")
    .load(conn)?;
    Ok((rows, inbox))
}
