//! A verified notification, as every provider's adapter hands it on.

use super::ids::{ChannelName, OrderNo};
use super::money::{AmountMinor, Currency};

/// What a provider says happened to an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotificationKind {
    /// The order was paid: the only kind that can credit.
    Paid,
    /// The order was closed unpaid.
    Closed,
    /// A (partial or full) refund; recorded, never credited.
    Refund,
    /// Anything else (a non-final status, an event we do not act on), with the provider's word.
    Other(String),
}

impl NotificationKind {
    pub fn as_str(&self) -> &str {
        match self {
            NotificationKind::Paid => "paid",
            NotificationKind::Closed => "closed",
            NotificationKind::Refund => "refund",
            NotificationKind::Other(_) => "other",
        }
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
    pub amount: Option<AmountMinor>,
    pub currency: Option<Currency>,
    pub kind: NotificationKind,
    /// Set when the notification is authentic but addressed to another merchant or app
    /// (Alipay `app_id`/`seller_id`, WeChat `mchid`/`appid`): never credited, kept for a human.
    pub merchant_mismatch: Option<String>,
}
