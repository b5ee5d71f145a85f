//! A verified notification, as every provider's adapter hands it on.

use super::ids::{ChannelName, OrderNo};
use super::money::{AmountMinor, Currency};

/// What a provider says happened to an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotificationKind {
    /// The order was paid: the only kind that credits.
    Paid,
    /// The order was closed unpaid.
    Closed,
    /// Money went back to the buyer at the provider's hands: it leaves the balance once.
    Refund(Refund),
    /// The buyer's bank took the payment back (Stripe `charge.dispute.funds_withdrawn`).
    Chargeback(Dispute),
    /// A chargeback was decided for the merchant and its money came back
    /// (Stripe `charge.dispute.funds_reinstated`).
    ChargebackReversal(Dispute),
    /// The provider reports a refund that moved no money (WeChat Pay `REFUND.ABNORMAL`,
    /// `REFUND.CLOSED`), with its word for why: kept for a human.
    RefundFailed(String),
    /// Anything else (a non-final status, an event we do not act on), with the provider's word.
    Other(String),
}

/// How a provider states a refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refund {
    /// One refund of `amount`, named by the provider's refund id (WeChat Pay `refund_id`,
    /// Standard Webhooks `refund_id`): each id leaves the balance once.
    One {
        refund_id: String,
        amount: AmountMinor,
    },
    /// The trade's refunds so far add up to `total` (Alipay `refund_fee`, Stripe
    /// `amount_refunded`): what leaves the balance is the difference from what was already
    /// refunded, and each total reached is booked once. `refund_id` names the latest refund
    /// where the provider says (Alipay `out_biz_no`, the Stripe charge).
    UpTo {
        total: AmountMinor,
        refund_id: Option<String>,
    },
}

/// A dispute's money, taken or given back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispute {
    /// The provider's dispute id (`dp_...`): its chargeback and its reversal are booked once each.
    pub dispute_id: String,
    pub amount: AmountMinor,
}

impl NotificationKind {
    pub fn as_str(&self) -> &str {
        match self {
            NotificationKind::Paid => "paid",
            NotificationKind::Closed => "closed",
            NotificationKind::Refund(_) => "refund",
            NotificationKind::Chargeback(_) => "chargeback",
            NotificationKind::ChargebackReversal(_) => "chargeback_reversal",
            NotificationKind::RefundFailed(_) => "refund_failed",
            NotificationKind::Other(_) => "other",
        }
    }

    /// Whether this kind moves money back out of (or, reversed, into) a paid order's balance.
    pub fn is_money_back(&self) -> bool {
        matches!(
            self,
            NotificationKind::Refund(_)
                | NotificationKind::Chargeback(_)
                | NotificationKind::ChargebackReversal(_)
        )
    }
}

/// A verified notification, with nothing left that says which provider sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub channel: ChannelName,
    /// The provider's id of this notification; stays the same across the provider's retries.
    pub notification_id: String,
    /// Our order number, when the notification names one.
    pub order_no: Option<OrderNo>,
    /// The provider's id of the payment (Alipay `trade_no`, WeChat `transaction_id`, ...).
    pub provider_trade_no: Option<String>,
    /// The payment's amount, where the notification states it (for a refund too: the amount of
    /// the payment it refunds, not of the refund).
    pub amount: Option<AmountMinor>,
    pub currency: Option<Currency>,
    pub kind: NotificationKind,
    /// Set when the notification is authentic but addressed to another merchant or app
    /// (Alipay `app_id`/`seller_id`, WeChat `mchid`/`appid`): never credited, kept for a human.
    pub merchant_mismatch: Option<String>,
}
