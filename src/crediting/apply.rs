//! The decision: what one verified notification does to its order, the balance and the inbox,
//! inside a transaction that the caller opened and will commit.

use chrono::NaiveDateTime;
use diesel::result::Error as DieselError;

use super::decision::Decision;
use super::error::CreditError;
use super::give_back;
use super::read;
use crate::books::inbox::{Evidence, InboxRow};
use crate::books::orders::{self, Order, OrderStatus};
use crate::db::{self, DbConnection};
use crate::domain::ids::{ChannelName, OrderNo};
use crate::domain::money::{AmountMinor, Currency};
use crate::domain::notification::{Notification, NotificationKind};
use crate::domain::outcome::{Outcome, ANOTHER_MERCHANT};
use crate::store::{self, CreditWrite, Verdict};

/// The committed result of [`apply_in`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub outcome: Outcome,
    /// Kept for a human: the outcome is one ([`Outcome::is_anomaly`]), or this delivery has its
    /// own reason (a refund that leaves a debt, a refund that failed at the provider).
    pub anomaly: bool,
    /// Why, for anomalies and ignored notifications.
    pub detail: Option<String>,
    /// The inbox row that counts this delivery.
    pub inbox_id: i64,
    pub delivery_count: i64,
    /// The balance after the credit, when this delivery credited.
    pub balance_after: Option<i64>,
}

/// Applies a verified notification exactly once, in a transaction of its own. See the module doc
/// for what the result means. The HTTP path batches many notifications into one transaction with
/// [`super::committer`]; both run [`apply_in`].
pub fn apply_alone(
    conn: &mut DbConnection,
    notification: &Notification,
    evidence: Evidence<'_>,
    now: NaiveDateTime,
) -> Result<Applied, CreditError> {
    db::transact(conn, |conn| {
        apply_alone_in(conn, notification, evidence, now)
    })
}

/// [`apply_alone`] on a [`store::Hurried`] connection, after a lock timeout: lock waits are cut short
/// and a lock timeout is not tried again, so a notification whose rows a frozen session holds is
/// answered "retry" at once and the others are not kept waiting behind it.
pub fn apply_hurried(
    conn: &mut DbConnection,
    notification: &Notification,
    evidence: Evidence<'_>,
    now: NaiveDateTime,
) -> Result<Applied, CreditError> {
    db::transact_with(conn, 1, |conn| {
        store::hurry(conn)?;
        apply_alone_in(conn, notification, evidence, now)
    })
}

/// The work of [`apply_alone`] inside a transaction the caller opened: for a caller that writes
/// more in the same commit, or rolls it back to see what applying would do (a dry run).
pub fn apply_alone_in(
    conn: &mut DbConnection,
    notification: &Notification,
    evidence: Evidence<'_>,
    now: NaiveDateTime,
) -> Result<Applied, CreditError> {
    // The same lock order as a batch's (see `super::committer`).
    if let Some(order_no) = &notification.order_no {
        store::lock_for_credits(conn, &[order_no.as_str()])?;
    }
    let (applied, durability) = apply_in(conn, notification, evidence, now)?;
    if let Durability::CountOnly { inbox_id } = durability {
        store::count_deliveries(conn, &[inbox_id], 1, now)?;
        db::commit_without_waiting_for_flush(conn)?;
    }
    Ok(applied)
}

/// What is left to write after [`apply_in`], and whether its commit must wait for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Money moved or a notification was stored: the commit must be flushed before anyone is
    /// told.
    Flush,
    /// A repeat of a committed credit: nothing was written. One delivery is left to add to the
    /// inbox row `inbox_id` in the same transaction (a batch adds all of its counts in one
    /// statement), and that commit need not wait for the disk: the credit it repeats was flushed
    /// when it committed, and a lost count loses no money.
    CountOnly { inbox_id: i64 },
}

/// The work of [`apply_alone`] inside a transaction the caller opened and will commit.
pub fn apply_in(
    conn: &mut DbConnection,
    notification: &Notification,
    evidence: Evidence<'_>,
    now: NaiveDateTime,
) -> Result<(Applied, Durability), CreditError> {
    apply_found_in(conn, notification, evidence, now, None)
}

/// [`apply_in`], given what [`read::find_for_batch`] read for this notification in this
/// transaction, when nothing written since has touched its order, trade or inbox row.
pub fn apply_found_in(
    conn: &mut DbConnection,
    notification: &Notification,
    evidence: Evidence<'_>,
    now: NaiveDateTime,
    read_already: Option<read::Found>,
) -> Result<(Applied, Durability), CreditError> {
    let resolved = order_of_trade(conn, notification)?;
    let n = resolved.as_ref().unwrap_or(notification);
    let found = match (&n.order_no, read_already) {
        // A notification that named its order was read as it is.
        (Some(_), Some(found)) if resolved.is_none() => found,
        (Some(order_no), _) => read::find_for_notification(
            conn,
            order_no,
            &n.channel,
            &n.notification_id,
            n.provider_trade_no.as_deref(),
        )?,
        (None, _) => read::Found::default(),
    };
    // The commonest repeat costs this one read: a paid order never leaves `paid`, so once it is
    // paid by this very trade and the delivery has its inbox row, only the count is left.
    if let (true, Some(delivery)) = (repeats_a_credit(n, &found), found.delivery) {
        let applied = Applied {
            outcome: Outcome::AlreadyPaid,
            anomaly: false,
            detail: None,
            inbox_id: delivery.id,
            delivery_count: delivery.delivery_count + 1,
            balance_after: None,
        };
        let durability = Durability::CountOnly {
            inbox_id: delivery.id,
        };
        return Ok((applied, durability));
    }
    let mut decision = decide(conn, n, evidence, found.order, found.trade_paid, now)?;
    let recorded = match decision.recorded.take() {
        Some(recorded) => recorded,
        None => {
            let verdict = Verdict {
                outcome: decision.outcome,
                detail: decision.detail.as_deref(),
                anomaly: decision.anomaly || decision.outcome.is_anomaly(),
            };
            store::record_delivery(conn, n, evidence, verdict, now)?
        }
    };
    let applied = Applied {
        outcome: decision.outcome,
        anomaly: decision.anomaly || decision.outcome.is_anomaly(),
        detail: decision.detail,
        inbox_id: recorded.id,
        delivery_count: recorded.delivery_count,
        balance_after: decision.balance_after,
    };
    Ok((applied, Durability::Flush))
}

/// Whether `n`, as `found` read it, repeats a committed credit whose delivery has its inbox row:
/// applying it writes nothing but one more delivery count.
pub fn repeats_a_credit(n: &Notification, found: &read::Found) -> bool {
    match (&found.order, found.delivery) {
        (Some(order), Some(_)) => Claim::of(n).is_some_and(|claim| claim.is_paid_in(order)),
        _ => false,
    }
}

/// Whether `n`, as `found` read it, is the first payment of its pending order: one that applying
/// would credit with [`store::pay_and_credit`], and that a batch may therefore write together with
/// others ([`store::pay_and_credit_together`]). The same checks as `decide` and `pay` make.
pub fn is_first_payment(n: &Notification, found: &read::Found) -> bool {
    let (Some(claim), Some(order)) = (Claim::of(n), &found.order) else {
        return false;
    };
    order.status == OrderStatus::Pending
        && found.trade_paid.is_none()
        && &order.order_no == claim.order_no
        && &order.channel == claim.channel
        && order.amount == claim.amount
        && order.currency == claim.currency
}

/// What a first payment that was credited comes to: the result [`apply_in`] gives for it.
pub fn credited(balance_after: i64, delivery: InboxRow) -> Applied {
    Applied {
        outcome: Outcome::Credited,
        anomaly: false,
        detail: None,
        inbox_id: delivery.id,
        delivery_count: delivery.delivery_count,
        balance_after: Some(balance_after),
    }
}

/// A refund or dispute that names only its trade (Stripe's Charge and Dispute objects carry no
/// order number), with the order that trade paid filled in and locked, as a batch locks the
/// orders it names up front; `None` when there is nothing to fill in or no such order.
fn order_of_trade(
    conn: &mut DbConnection,
    n: &Notification,
) -> Result<Option<Notification>, CreditError> {
    let (None, Some(trade_no)) = (&n.order_no, n.provider_trade_no.as_deref()) else {
        return Ok(None);
    };
    if !n.kind.is_money_back() {
        return Ok(None);
    }
    let Some(order_no) = read::order_paid_by_trade(conn, &n.channel, trade_no)? else {
        return Ok(None);
    };
    store::lock_for_credits(conn, &[order_no.as_str()])?;
    Ok(Some(Notification {
        order_no: Some(order_no),
        ..n.clone()
    }))
}

/// What a payment notification claims: the facts that decide whether it repeats a credit. Only
/// a payment addressed to us that names its order, trade, amount and currency claims anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim<'a> {
    pub channel: &'a ChannelName,
    pub order_no: &'a OrderNo,
    pub trade_no: &'a str,
    pub amount: AmountMinor,
    pub currency: Currency,
}

impl<'a> Claim<'a> {
    pub fn of(n: &'a Notification) -> Option<Claim<'a>> {
        if n.kind != NotificationKind::Paid || n.merchant_mismatch.is_some() {
            return None;
        }
        Some(Claim {
            channel: &n.channel,
            order_no: n.order_no.as_ref()?,
            trade_no: n.provider_trade_no.as_deref()?,
            amount: n.amount?,
            currency: n.currency?,
        })
    }

    /// Whether `order` is already paid by exactly this payment: a repeat of its credit.
    pub fn is_paid_in(&self, order: &Order) -> bool {
        order.status.was_paid()
            && &order.order_no == self.order_no
            && &order.channel == self.channel
            && order.provider_trade_no.as_deref() == Some(self.trade_no)
            && order.amount == self.amount
            && order.currency == self.currency
    }
}

/// What the notification does to its order. `order` is the order as read at the start of this
/// transaction, and `trade_paid` another order that the notification's trade already paid.
fn decide(
    conn: &mut DbConnection,
    n: &Notification,
    evidence: Evidence<'_>,
    order: Option<Order>,
    trade_paid: Option<OrderNo>,
    now: NaiveDateTime,
) -> Result<Decision, CreditError> {
    if n.order_no.is_none() {
        // Money going back that names only its trade (Stripe's Charge and Dispute) and meets no
        // order paid by it: its payment has not been applied yet, or it is not ours. Acking it
        // would lose it if the payment is only late, so the provider is asked to retry.
        if let (Some(trade), true) = (n.provider_trade_no.as_deref(), n.kind.is_money_back()) {
            let why = format!(
                "{} for trade {trade}, which has paid no order of this channel yet; asked to \
                 retry so that the payment is applied first",
                n.kind.as_str()
            );
            return Decision::because(Outcome::NotYet, why);
        }
        let why = format!("{} notification names no order", n.kind.as_str());
        return Decision::because(Outcome::Ignored, why);
    }
    // Another merchant's notification never becomes ours, whether or not the order exists.
    if let Some(why) = &n.merchant_mismatch {
        return Decision::because(Outcome::Mismatch, format!("{ANOTHER_MERCHANT}{why}"));
    }
    let Some(order) = order else {
        return Ok(Decision::new(Outcome::UnknownOrder, None));
    };
    if order.channel != n.channel {
        let why = format!("order belongs to channel {}", order.channel);
        return Decision::because(Outcome::Mismatch, why);
    }
    match &n.kind {
        NotificationKind::Paid => pay(conn, &order, trade_paid, n, evidence, now),
        NotificationKind::Closed => close(conn, &order, now),
        NotificationKind::Refund(_)
        | NotificationKind::Chargeback(_)
        | NotificationKind::ChargebackReversal(_) => give_back::give_back(conn, &order, n, now),
        NotificationKind::RefundFailed(status) => Decision::for_a_human(
            Outcome::Ignored,
            format!("the provider reports refund status {status}: nothing moved"),
        ),
        NotificationKind::Other(status) => {
            Decision::because(Outcome::Ignored, format!("status {status} is not final"))
        }
    }
}

/// The compare-and-set from pending to paid, and the credit for the one transaction that wins it.
fn pay(
    conn: &mut DbConnection,
    order: &Order,
    trade_paid: Option<OrderNo>,
    n: &Notification,
    evidence: Evidence<'_>,
    now: NaiveDateTime,
) -> Result<Decision, CreditError> {
    if n.amount != Some(order.amount) || n.currency != Some(order.currency) {
        let said = match (n.amount, n.currency) {
            (Some(a), Some(c)) => format!("{} {c}", a.format(c)),
            _ => "no amount".to_owned(),
        };
        let is = format!("{} {}", order.amount.format(order.currency), order.currency);
        let why = format!("notification says {said}, order is {is}");
        return Decision::because(Outcome::Mismatch, why);
    }
    // Without its trade, a second payment of this order could not be told from a repeat of the
    // first. The adapters refuse such a payment (`notify::verify`); this keeps it from crediting
    // on any other path.
    let Some(trade_no) = n.provider_trade_no.as_deref() else {
        return Decision::because(Outcome::Mismatch, "payment names no provider trade");
    };
    if let Some(other) = trade_paid {
        let why = format!("trade {trade_no} already paid order {other}");
        return Decision::because(Outcome::Mismatch, why);
    }
    match store::pay_and_credit(conn, order, n, evidence, now)? {
        CreditWrite::Credited(credit) => {
            let mut decision = Decision::new(Outcome::Credited, None);
            decision.balance_after = Some(credit.balance_after);
            decision.recorded = credit.delivery;
            return Ok(decision);
        }
        CreditWrite::NotCredited => return Err(CreditError::not_credited(order)),
        CreditWrite::NotPending => {}
    }
    // Lost the compare-and-set: read what the winner committed.
    let current = store::order_as_committed(conn, &order.order_no)?.ok_or(DieselError::NotFound)?;
    let paid_by = current.provider_trade_no.as_deref();
    match current.status {
        OrderStatus::Paid | OrderStatus::Refunded if paid_by == Some(trade_no) => {
            Ok(Decision::new(Outcome::AlreadyPaid, None))
        }
        OrderStatus::Paid | OrderStatus::Refunded => Decision::because(
            Outcome::PaidByOtherTrade,
            format!(
                "order was paid by trade {}; this notification is for trade {trade_no}",
                paid_by.unwrap_or("(none)")
            ),
        ),
        OrderStatus::Closed => Decision::because(
            Outcome::Mismatch,
            "paid after the order was closed; refund the buyer",
        ),
        OrderStatus::Pending => Err(CreditError::StillPending(order.order_no.clone())),
    }
}

/// A provider's close of a pending order. A paid order stays paid: the provider's word that it
/// closed is kept for a human.
fn close(
    conn: &mut DbConnection,
    order: &Order,
    now: NaiveDateTime,
) -> Result<Decision, CreditError> {
    if orders::close_pending(conn, &order.order_no, None, now)? {
        return Ok(Decision::new(Outcome::Closed, None));
    }
    let current = store::order_as_committed(conn, &order.order_no)?.ok_or(DieselError::NotFound)?;
    match current.status {
        OrderStatus::Closed => Decision::because(Outcome::Closed, "already closed"),
        OrderStatus::Paid | OrderStatus::Refunded => Decision::because(
            Outcome::Ignored,
            "provider reports closed, but the order is paid",
        ),
        OrderStatus::Pending => Err(CreditError::StillPending(order.order_no.clone())),
    }
}
