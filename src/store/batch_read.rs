//! What a batch of notifications reads up front for all of them (see
//! `crediting::read::find_for_batch`): the orders they name or their trades paid, and their
//! inbox rows; one statement on PostgreSQL, two elsewhere.

use diesel::prelude::*;
use diesel::result::Error as DieselError;
use diesel::sql_types::{BigInt, Nullable, Text, Untyped};

use super::postgres::ByKeys;
use super::statement::Statement;

use crate::books::orders::OrderRow;
use crate::db::DbConnection;

/// An order, and the inbox row of the notification that named it, if it has one.
#[derive(QueryableByName)]
struct OrderAndDelivery {
    #[diesel(embed)]
    order: OrderRow,
    #[diesel(sql_type = Nullable<Text>)]
    inbox_channel: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    inbox_notification_id: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    inbox_id: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    inbox_delivery_count: Option<i64>,
}

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

/// The orders named in `order_nos` or paid by one of `trades` (channel, trade, and the
/// notification id of the notification naming it), and the inbox rows of `deliveries` (channel,
/// notification id, one for each of `order_nos`).
///
/// On PostgreSQL this is one statement, prepared once per connection, with each list an array
/// parameter: each order found comes with the inbox row of the notification that named it, which
/// is all the caller uses (a notification that found no order has no delivery). Each key is
/// looked up on its own, in a `LATERAL` subquery whose `LIMIT 1` (the keys are unique) keeps it
/// from being merged into a join. So every row is found by its key whatever plan the statement
/// keeps, and in payhook's write transactions that is a generic plan (`plan_cache_mode`) made for
/// the tables as they were at the first batch: planned while the inbox was empty, two `= ANY`
/// lists read every inbox row of a channel, and a join of the pairs every inbox row, on every
/// batch. Elsewhere two statements read the orders and the inbox rows, with `IN` lists padded to
/// a few lengths so that their statements stay prepared too.
pub fn read_for_batch(
    conn: &mut DbConnection,
    order_nos: &[&str],
    trades: &[(&str, &str, &str)],
    deliveries: &[(&str, &str)],
) -> Result<(Vec<OrderRow>, Vec<Delivered>), DieselError> {
    // One statement pairs each order number with its inbox key.
    debug_assert_eq!(order_nos.len(), deliveries.len());
    let (channels, ids): (Vec<&str>, Vec<&str>) = deliveries.iter().copied().unzip();
    let trade_channels: Vec<&str> = trades.iter().map(|t| t.0).collect();
    let trade_nos: Vec<&str> = trades.iter().map(|t| t.1).collect();
    if let DbConnection::Postgresql(pg) = conn {
        let trade_ids: Vec<&str> = trades.iter().map(|t| t.2).collect();
        let found = ByKeys {
            sql: &[
                "SELECT o.*, n.channel AS inbox_channel, n.notification_id AS inbox_notification_id, \
                 n.id AS inbox_id, n.delivery_count AS inbox_delivery_count FROM unnest(",
                ", ",
                ", ",
                ") AS k (order_no, channel, notification_id) CROSS JOIN LATERAL (SELECT * \
                 FROM orders AS o WHERE o.order_no = k.order_no LIMIT 1) AS o \
                 LEFT JOIN LATERAL (SELECT channel, notification_id, id, delivery_count \
                 FROM notifications AS n WHERE n.channel = k.channel \
                 AND n.notification_id = k.notification_id LIMIT 1) AS n ON true \
                 UNION ALL SELECT t.*, n.channel, n.notification_id, n.id, n.delivery_count \
                 FROM unnest(",
                ", ",
                ", ",
                ") AS k (channel, trade_no, notification_id) CROSS JOIN LATERAL (SELECT * \
                 FROM orders AS o WHERE o.channel = k.channel AND o.provider_trade_no = k.trade_no \
                 LIMIT 1) AS t \
                 LEFT JOIN LATERAL (SELECT channel, notification_id, id, delivery_count \
                 FROM notifications AS n WHERE n.channel = k.channel \
                 AND n.notification_id = k.notification_id LIMIT 1) AS n ON true",
            ],
            arrays: [
                order_nos.to_vec(),
                channels,
                ids,
                trade_channels,
                trade_nos,
                trade_ids,
            ],
        }
        .load::<OrderAndDelivery>(pg)?;
        let mut rows = Vec::with_capacity(found.len());
        let mut inbox = Vec::new();
        for row in found {
            if let (Some(channel), Some(notification_id), Some(id), Some(delivery_count)) = (
                row.inbox_channel,
                row.inbox_notification_id,
                row.inbox_id,
                row.inbox_delivery_count,
            ) {
                inbox.push(Delivered {
                    channel,
                    notification_id,
                    id,
                    delivery_count,
                });
            }
            rows.push(row.order);
        }
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
