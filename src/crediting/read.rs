//! The crediting transaction's one read: the order a notification names, any other order its
//! trade already paid, and the delivery's inbox row, in one statement before anything is written;
//! or, for a batch, for all its notifications that may be read up front at once (one statement
//! on PostgreSQL, two elsewhere).

use diesel::prelude::*;
use diesel::result::Error as DieselError;

use crate::books::inbox::InboxRow;
use crate::books::orders::{Order, OrderRow};
use crate::db::schema::{notifications, orders};
use crate::db::DbConnection;
use crate::domain::ids::{ChannelName, OrderNo};
use crate::domain::notification::Notification;
use crate::store;

/// What one statement reads for a notification before anything is written.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
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

/// What a notification is read by: [`find_for_notification`]'s arguments.
#[derive(Debug, Clone, Copy)]
pub struct Key<'a> {
    pub order_no: &'a OrderNo,
    pub channel: &'a ChannelName,
    pub notification_id: &'a str,
    pub trade_no: Option<&'a str>,
}

/// What [`find_for_notification`] finds for each of `keys`, in order, read for all of them at
/// once: the orders named or paid by the trades, and the inbox rows (one statement on
/// PostgreSQL, two elsewhere; one key is read by `find_for_notification` itself). A batch reads
/// this way once instead of once per notification: a statement is a round trip to a server, and
/// on SQLite one more statement to bind and run on the one writer.
///
/// Each is read as it stands now: a caller that then applies them in turn gives it only keys
/// whose order, trade and notification no earlier one shares ([`read_up_front`]).
pub fn find_for_batch(
    conn: &mut DbConnection,
    keys: &[Key<'_>],
) -> Result<Vec<Found>, DieselError> {
    match keys {
        [] => return Ok(Vec::new()),
        // One alone is read as any notification is, by the simpler statement.
        [key] => {
            let found = find_for_notification(
                conn,
                key.order_no,
                key.channel,
                key.notification_id,
                key.trade_no,
            )?;
            return Ok(vec![found]);
        }
        _ => {}
    }
    let order_nos: Vec<&str> = keys.iter().map(|k| k.order_no.as_str()).collect();
    let trades: Vec<(&str, &str, &str)> = keys
        .iter()
        .filter_map(|k| Some((k.channel.as_str(), k.trade_no?, k.notification_id)))
        .collect();
    let deliveries: Vec<(&str, &str)> = keys
        .iter()
        .map(|k| (k.channel.as_str(), k.notification_id))
        .collect();
    let (rows, inbox) = store::read_for_batch(conn, &order_nos, &trades, &deliveries)?;
    // Only the rows a key needs are parsed, as `find_for_notification` does: a row that does not
    // parse fails the batch only if one of its notifications is about it.
    keys.iter()
        .map(|key| {
            let order = rows
                .iter()
                .find(|row| row.order_no() == key.order_no.as_str())
                .cloned()
                .map(Order::try_from)
                .transpose()?;
            let trade_paid = key.trade_no.and_then(|trade| {
                rows.iter()
                    .find(|row| {
                        row.order_no() != key.order_no.as_str()
                            && row.channel() == key.channel.as_str()
                            && row.provider_trade_no() == Some(trade)
                    })
                    .and_then(|row| OrderNo::parse(row.order_no()).ok())
            });
            // As the one statement of `find_for_notification` joins the inbox row to the orders
            // it found, a notification that found no order has no delivery either.
            let delivery = inbox
                .iter()
                .find(|d| {
                    d.channel == key.channel.as_str() && d.notification_id == key.notification_id
                })
                .filter(|_| order.is_some() || trade_paid.is_some())
                .map(|d| InboxRow {
                    id: d.id,
                    delivery_count: d.delivery_count,
                });
            Ok(Found {
                order,
                trade_paid,
                delivery,
            })
        })
        .collect()
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

/// Which notifications of a batch (`None`: one that will not run) may be read before any of them
/// is applied. Not one whose order, trade or inbox row an earlier one in the batch shares: that
/// one may have changed them by then. Nor, after a refund or dispute that names only its trade
/// (resolved to its order when applied, an order unknown until then), any later one.
/// A read gone stale would not credit twice (every write is a compare-and-set) but would fail
/// the batch and run it again.
pub fn read_up_front<'a>(batch: impl Iterator<Item = Option<&'a Notification>>) -> Vec<bool> {
    let mut seen = std::collections::HashSet::new();
    let mut unnamed = false;
    batch
        .map(|n| {
            let Some(n) = n else { return false };
            let Some(order_no) = &n.order_no else {
                // Money going back that names only its trade finds its order when applied.
                unnamed |= n.kind.is_money_back() && n.provider_trade_no.is_some();
                return false;
            };
            let channel = n.channel.as_str();
            let trade = n.provider_trade_no.as_deref().unwrap_or_default();
            let touches = [
                ("order", "", order_no.as_str()),
                ("trade", channel, trade),
                ("inbox", channel, n.notification_id.as_str()),
            ];
            let mut first = !unnamed;
            for touch in touches.into_iter().filter(|t| !t.2.is_empty()) {
                first &= seen.insert(touch);
            }
            first
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::{ChannelName, OrderNo};
    use crate::domain::money::AmountMinor;
    use crate::domain::notification::{NotificationKind, Refund};

    fn paid(order: Option<&str>, trade: &str, id: &str) -> Notification {
        Notification {
            channel: ChannelName::parse("alipay").unwrap(),
            notification_id: id.to_owned(),
            order_no: order.map(|o| OrderNo::parse(o).unwrap()),
            provider_trade_no: Some(trade.to_owned()),
            amount: None,
            currency: None,
            kind: NotificationKind::Paid,
            merchant_mismatch: None,
        }
    }

    fn up_front(batch: &[Option<Notification>]) -> Vec<bool> {
        read_up_front(batch.iter().map(Option::as_ref))
    }

    #[test]
    fn only_the_first_to_touch_an_order_trade_or_inbox_row_is_read_up_front() {
        let a = paid(Some("A"), "TA", "n-a");
        let b = paid(Some("B"), "TB", "n-b");
        let again = |n: &Notification, f: fn(&mut Notification)| {
            let mut n = n.clone();
            f(&mut n);
            Some(n)
        };
        let batch = [
            Some(a.clone()),
            Some(b.clone()),
            again(&a, |n| n.notification_id = "n-a2".into()),
            again(&b, |n| n.order_no = OrderNo::parse("C").ok()),
            again(&a, |n| {
                n.order_no = OrderNo::parse("D").ok();
                n.provider_trade_no = Some("TD".into());
            }),
            Some(paid(Some("E"), "TE", "n-e")),
        ];
        assert_eq!(up_front(&batch), [true, true, false, false, false, true]);
        // One that will not run touches nothing.
        assert_eq!(up_front(&[None, Some(a.clone())]), [false, true]);
    }

    #[test]
    fn nothing_after_a_refund_that_names_only_its_trade_is_read_up_front() {
        let mut by_trade = paid(None, "TX", "n-x");
        by_trade.kind = NotificationKind::Refund(Refund::UpTo {
            total: AmountMinor::new(100).unwrap(),
            refund_id: None,
        });
        let batch = [
            Some(by_trade),
            Some(paid(Some("A"), "TA", "n-a")),
            Some(paid(Some("B"), "TB", "n-b")),
        ];
        assert_eq!(up_front(&batch), [false, false, false]);
        // A payment that names no order is only refused: it changes no order.
        let batch = [
            Some(paid(None, "TX", "n-x")),
            Some(paid(Some("A"), "TA", "n-a")),
        ];
        assert_eq!(up_front(&batch), [false, true]);
    }
}
