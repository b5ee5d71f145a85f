//! The crediting transaction's one read: the order a notification names, any other order its
//! trade already paid, and the delivery's inbox row, in one statement before anything is written.

use diesel::prelude::*;
use diesel::result::Error as DieselError;

use crate::books::inbox::InboxRow;
use crate::books::orders::{Order, OrderRow};
use crate::db::schema::{notifications, orders};
use crate::db::DbConnection;
use crate::domain::ids::{ChannelName, OrderNo};

/// What one statement reads for a notification before anything is written.
#[derive(Debug, Default)]
pub struct Found {
    /// The order the notification names.
    pub order: Option<Order>,
    /// Another order that the notification's provider trade already paid.
    pub trade_paid: Option<OrderNo>,
    /// The inbox row of this notification, if an earlier delivery recorded it.
    pub delivery: Option<InboxRow>,
}

/// Reads, in one statement, the order a notification names, any other order its provider trade
/// already paid, and the notification's inbox row.
pub fn find_for_notification(
    conn: &mut DbConnection,
    order_no: &OrderNo,
    channel: &ChannelName,
    notification_id: &str,
    trade_no: Option<&str>,
) -> Result<Found, DieselError> {
    let delivery = notifications::table.on(notifications::channel
        .eq(channel.as_str())
        .and(notifications::notification_id.eq(notification_id)));
    let query = orders::table.left_join(delivery).select((
        OrderRow::as_select(),
        (notifications::id, notifications::delivery_count).nullable(),
    ));
    let named = orders::order_no.eq(order_no.as_str());
    let rows: Vec<(OrderRow, Option<(i64, i64)>)> = match trade_no {
        Some(trade_no) => query
            .filter(
                named.or(orders::channel
                    .eq(channel.as_str())
                    .and(orders::provider_trade_no.eq(trade_no))),
            )
            .load(conn)?,
        None => query.filter(named).load(conn)?,
    };
    let mut found = Found::default();
    for (row, inbox) in rows {
        let delivery = inbox.map(|(id, delivery_count)| InboxRow { id, delivery_count });
        found.delivery = found.delivery.or(delivery);
        if row.order_no() == order_no.as_str() {
            found.order = Some(Order::try_from(row)?);
        } else {
            found.trade_paid = OrderNo::parse(row.order_no()).ok();
        }
    }
    Ok(found)
}

/// The order of `channel` that the provider trade `trade_no` paid, if any: how a refund or
/// dispute that names only its trade (Stripe's Charge and Dispute) finds its order. A paid
/// order's trade never changes, so this needs no lock.
pub fn order_paid_by_trade(
    conn: &mut DbConnection,
    channel: &ChannelName,
    trade_no: &str,
) -> Result<Option<OrderNo>, DieselError> {
    let found: Option<String> = orders::table
        .filter(orders::channel.eq(channel.as_str()))
        .filter(orders::provider_trade_no.eq(trade_no))
        .select(orders::order_no)
        .first(conn)
        .optional()?;
    Ok(found.and_then(|no| OrderNo::parse(&no).ok()))
}
