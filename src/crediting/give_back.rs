//! Money going back: a refund, a chargeback or a chargeback's reversal, booked once each, inside
//! the crediting transaction.
//!
//! The write is the credit's, turned around: a compare-and-set on the order (its `version` as
//! this transaction read it, with the new `refunded_minor` or `disputed_minor`), the balance
//! changed in SQL, and a ledger row under a key the database keeps unique: the provider's refund
//! or dispute id, or, where the provider states a cumulative total (Alipay `refund_fee`, Stripe
//! `amount_refunded`), the total reached. Two deliveries of one refund, at once on two instances,
//! move its money once: the second waits for the first's row locks, then finds its key booked.
//!
//! The policy (what merchants learned the hard way):
//! - a refund is taken even when the user has spent the credit: the balance goes below zero, the
//!   user owes it, and a human is told;
//! - a refund larger than what is left of the payment, or for an order that was never paid,
//!   moves nothing and is for a human;
//! - a refund for an order whose payment has not arrived yet is answered "retry", so that the
//!   payment is applied first; so is a reversal whose chargeback has not arrived.

use chrono::NaiveDateTime;

use super::decision::Decision;
use super::error::CreditError;
use crate::books::accounts::{self, LedgerKind, NewEntry};
use crate::books::orders::{self, Order, OrderStatus};
use crate::db::DbConnection;
use crate::domain::money::AmountMinor;
use crate::domain::notification::{Dispute, Notification, NotificationKind, Refund};
use crate::domain::outcome::Outcome;
use crate::store;

/// The longest refund or dispute id kept: far above any provider's (WeChat's are 32 digits,
/// Stripe's about 30 characters), and within what every backend's key column holds with the
/// order number in front.
const MAX_ID_BYTES: usize = 128;

/// What one notification of money going back would book.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Movement {
    kind: LedgerKind,
    /// Unique within `kind`: see the module doc.
    entry_key: String,
    /// The balance's change: negative for a refund or chargeback.
    delta: i64,
    /// The order's refunds and chargebacks after it.
    refunded: AmountMinor,
    disputed: AmountMinor,
}

/// Why nothing moves, as the provider and a human are told.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    /// Booked already, or (a cumulative total) passed already.
    Booked(Option<String>),
    /// Not yet: what it depends on has to arrive first.
    NotYet(String),
    /// Never: for a human.
    Anomaly(String),
}

/// Applies a refund, chargeback or reversal to `order`, read in this transaction.
pub(super) fn give_back(
    conn: &mut DbConnection,
    order: &Order,
    n: &Notification,
    now: NaiveDateTime,
) -> Result<Decision, CreditError> {
    let movement = match plan(conn, order, n)? {
        Ok(movement) => movement,
        Err(Refusal::Booked(why)) => return Ok(Decision::new(Outcome::AlreadyBooked, why)),
        Err(Refusal::NotYet(why)) => return Decision::because(Outcome::NotYet, why),
        Err(Refusal::Anomaly(why)) => return Decision::for_a_human(Outcome::Mismatch, why),
    };
    if !orders::give_back(conn, order, movement.refunded, movement.disputed)? {
        // The order changed after it was read (row locks make this rare): read it again.
        return Err(CreditError::Changed(order.order_no.clone()));
    }
    let user = order.user_id.as_str();
    let Some(balance_after) =
        store::change_balance(conn, user, order.currency, movement.delta, i64::MIN, now)?
    else {
        return Err(CreditError::not_credited(order));
    };
    accounts::book(
        conn,
        &NewEntry {
            user_id: user,
            currency: order.currency,
            order_no: Some(order.order_no.as_str()),
            kind: movement.kind,
            amount_minor: movement.delta,
            balance_after,
            entry_key: &movement.entry_key,
            debit_no: None,
            memo: None,
            created_at: now,
        },
    )?;
    let outcome = match movement.kind {
        LedgerKind::Chargeback => Outcome::ChargedBack,
        LedgerKind::ChargebackReversal => Outcome::ChargebackReversed,
        _ => Outcome::Refunded,
    };
    let mut decision = Decision::moved(outcome, balance_after);
    if balance_after < 0 && movement.delta < 0 {
        let owed = AmountMinor::new(-balance_after).unwrap_or(AmountMinor::ZERO);
        decision = decision.for_a_human_because(format!(
            "the balance is now -{} {}: the credit was spent, and the user owes it",
            owed.format(order.currency),
            order.currency
        ));
    }
    Ok(decision)
}

/// What the notification would book on `order`, or why it books nothing. Reads the ledger for
/// the movement's key.
fn plan(
    conn: &mut DbConnection,
    order: &Order,
    n: &Notification,
) -> Result<Result<Movement, Refusal>, CreditError> {
    if let Err(refusal) = check(order, n) {
        return Ok(Err(refusal));
    }
    let order_no = order.order_no.as_str();
    let currency = order.currency;
    let shown = |minor: AmountMinor| format!("{} {currency}", minor.format(currency));
    let left = AmountMinor::new(order.remaining()).unwrap_or(AmountMinor::ZERO);
    let too_much = |amount: AmountMinor| {
        Refusal::Anomaly(format!(
            "{} {} is more than the {} of the payment not yet gone back; nothing moved",
            n.kind.as_str(),
            shown(amount),
            shown(left)
        ))
    };
    // A key booked already is a duplicate, unless the provider now states another amount for
    // it: that is for a human.
    let booked = |conn: &mut DbConnection, kind: LedgerKind, key: &str, amount: Option<i64>| {
        let entry = accounts::find_entry(conn, kind, key)?;
        Ok::<_, CreditError>(entry.map(|entry| match amount {
            Some(amount) if amount != entry.amount_minor.abs() => Refusal::Anomaly(format!(
                "{} {key} was booked as {}, and this notification says {}; nothing moved",
                kind.as_str(),
                shown(AmountMinor::new(entry.amount_minor.abs()).unwrap_or(AmountMinor::ZERO)),
                shown(AmountMinor::new(amount).unwrap_or(AmountMinor::ZERO))
            )),
            _ => Refusal::Booked(None),
        }))
    };
    // Ids the provider could not have issued: nothing a key could keep.
    let id = match &n.kind {
        NotificationKind::Refund(Refund::One { refund_id: id, .. })
        | NotificationKind::Chargeback(Dispute { dispute_id: id, .. })
        | NotificationKind::ChargebackReversal(Dispute { dispute_id: id, .. }) => Some(id),
        _ => None,
    };
    if id.is_some_and(|id| id.is_empty() || id.len() > MAX_ID_BYTES) {
        return Ok(Err(Refusal::Anomaly(format!(
            "{} names a refund or dispute id that is empty or longer than {MAX_ID_BYTES} \
             bytes; nothing moved",
            n.kind.as_str()
        ))));
    }
    let amount = match &n.kind {
        NotificationKind::Refund(Refund::One { amount, .. })
        | NotificationKind::Chargeback(Dispute { amount, .. })
        | NotificationKind::ChargebackReversal(Dispute { amount, .. }) => Some(*amount),
        _ => None,
    };
    if amount == Some(AmountMinor::ZERO) {
        return Ok(Err(Refusal::Anomaly(format!(
            "{} of {} moves nothing",
            n.kind.as_str(),
            shown(AmountMinor::ZERO)
        ))));
    }
    let (refunded, disputed) = (order.refunded, order.disputed);
    let movement = |kind, entry_key, delta, refunded, disputed| Movement {
        kind,
        entry_key,
        delta,
        refunded,
        disputed,
    };
    Ok(match &n.kind {
        NotificationKind::Refund(Refund::One { refund_id, amount }) => {
            let key = format!("{order_no}/{refund_id}");
            if let Some(refusal) = booked(conn, LedgerKind::Refund, &key, Some(amount.get()))? {
                return Ok(Err(refusal));
            }
            match add(refunded, *amount) {
                Some(after) if amount.get() <= left.get() => Ok(movement(
                    LedgerKind::Refund,
                    key,
                    -amount.get(),
                    after,
                    disputed,
                )),
                _ => Err(too_much(*amount)),
            }
        }
        NotificationKind::Refund(Refund::UpTo { total, .. }) => {
            let key = format!("{order_no}/total/{}", total.get());
            if let Some(refusal) = booked(conn, LedgerKind::Refund, &key, None)? {
                return Ok(Err(refusal));
            }
            match AmountMinor::new(total.get() - refunded.get()) {
                Ok(AmountMinor::ZERO) | Err(_) => Err(Refusal::Booked(Some(format!(
                    "refunds already reach {}; this notification says {}",
                    shown(refunded),
                    shown(*total)
                )))),
                Ok(more) if more.get() <= left.get() => Ok(movement(
                    LedgerKind::Refund,
                    key,
                    -more.get(),
                    *total,
                    disputed,
                )),
                Ok(more) => Err(too_much(more)),
            }
        }
        NotificationKind::Chargeback(Dispute { dispute_id, amount }) => {
            let key = format!("{order_no}/{dispute_id}");
            let amount_minor = Some(amount.get());
            if let Some(refusal) = booked(conn, LedgerKind::Chargeback, &key, amount_minor)? {
                return Ok(Err(refusal));
            }
            match add(disputed, *amount) {
                Some(after) if amount.get() <= left.get() => Ok(movement(
                    LedgerKind::Chargeback,
                    key,
                    -amount.get(),
                    refunded,
                    after,
                )),
                _ => Err(too_much(*amount)),
            }
        }
        NotificationKind::ChargebackReversal(Dispute { dispute_id, amount }) => {
            let key = format!("{order_no}/{dispute_id}");
            let amount_minor = Some(amount.get());
            if let Some(refusal) = booked(conn, LedgerKind::ChargebackReversal, &key, amount_minor)?
            {
                return Ok(Err(refusal));
            }
            let taken = accounts::find_entry(conn, LedgerKind::Chargeback, &key)?
                .map(|entry| -entry.amount_minor);
            match taken {
                None => Err(Refusal::NotYet(format!(
                    "dispute {dispute_id}'s chargeback has not arrived; asked to retry so that \
                     it is booked first"
                ))),
                Some(taken) if amount.get() > taken || amount.get() > disputed.get() => {
                    Err(Refusal::Anomaly(format!(
                        "reversal of {} is more than its chargeback holds; nothing moved",
                        shown(*amount),
                    )))
                }
                Some(_) => Ok(movement(
                    LedgerKind::ChargebackReversal,
                    key,
                    amount.get(),
                    refunded,
                    AmountMinor::new(disputed.get() - amount.get()).unwrap_or(AmountMinor::ZERO),
                )),
            }
        }
        other => Err(Refusal::Anomaly(format!(
            "a {} notification gives no money back",
            other.as_str()
        ))),
    })
}

/// The checks a payment has too, for money going back: the order was paid, by this trade, in
/// this currency and amount.
fn check(order: &Order, n: &Notification) -> Result<(), Refusal> {
    match order.status {
        OrderStatus::Paid | OrderStatus::Refunded => {}
        OrderStatus::Pending => {
            return Err(Refusal::NotYet(
                "the order's payment has not arrived; asked to retry so that it is applied first"
                    .to_owned(),
            ))
        }
        OrderStatus::Closed => {
            return Err(Refusal::Anomaly(format!(
                "{} for an order that was never paid; nothing moved",
                n.kind.as_str()
            )))
        }
    }
    if let Some(trade) = n.provider_trade_no.as_deref() {
        if order.provider_trade_no.as_deref() != Some(trade) {
            return Err(Refusal::Anomaly(format!(
                "{} is for trade {trade}, but the order was paid by trade {}; nothing moved",
                n.kind.as_str(),
                order.provider_trade_no.as_deref().unwrap_or("(none)")
            )));
        }
    }
    if n.currency.is_some_and(|c| c != order.currency) {
        return Err(Refusal::Anomaly(format!(
            "{} in {}, but the order is in {}; nothing moved",
            n.kind.as_str(),
            n.currency.map_or("-", |c| c.code()),
            order.currency
        )));
    }
    if n.amount.is_some_and(|a| a != order.amount) {
        return Err(Refusal::Anomaly(format!(
            "{} names a payment of {}, but the order is {}; nothing moved",
            n.kind.as_str(),
            n.amount
                .map_or_else(String::new, |a| a.format(order.currency)),
            order.amount.format(order.currency)
        )));
    }
    Ok(())
}

fn add(a: AmountMinor, b: AmountMinor) -> Option<AmountMinor> {
    a.get()
        .checked_add(b.get())
        .and_then(|sum| AmountMinor::new(sum).ok())
}
