//! Provider adapters: raw request in, a verified provider-neutral [`Notification`] out.
//!
//! One folder per provider holds its adapter, its answers and, in `sign`, its signer: what
//! `payhook fixtures` and the tests sign notifications with, over bytes built by the function the
//! adapter verifies them with. [`signer::Signer`] picks a channel's signer as [`from_config`]
//! picks its adapter.
//!
//! Each provider's rules live in its folder behind the [`Provider`] trait. Adapters verify the
//! signature over the raw bytes first and parse afterwards; they hold no database code and never
//! decide about money. What a notification *does* is decided by [`crate::crediting`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{ChannelName, OrderNo};
use crate::money::{AmountMinor, Currency};

pub mod alipay;
pub mod sign;
pub mod signer;
pub mod standard_webhooks;
pub mod stripe;
pub mod wechatpay;

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

/// A request as received, before anything is trusted.
#[derive(Debug, Clone, Copy)]
pub struct RawRequest<'a> {
    /// Header names and values as received (names in any case).
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

impl<'a> RawRequest<'a> {
    /// The first header of that name, compared without regard to case.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request was not turned into a notification. Every rejection is answered with the
/// provider's retry form: a key fixed later then lets the provider's next retry succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The signature, its key or its timestamp does not hold.
    #[error("signature: {0}")]
    Signature(String),
    /// The request is not in the provider's format (after the signature held, or before it could
    /// be checked).
    #[error("format: {0}")]
    Format(String),
}

/// The provider's answer to a request, in its own protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// Why we ask the provider to send again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// The request was rejected by verification (bad signature, unknown key, stale timestamp).
    Unverified,
    /// The request could not be parsed.
    BadRequest,
    /// We could not record or process it now (database down, order not yet visible).
    Unavailable,
}

/// One provider's protocol. Implementations are pure: no I/O, the clock passed in.
pub trait Provider: Send + Sync {
    /// The provider's name in configuration (`alipay`, `wechatpay`, `stripe`, `standard-webhooks`).
    fn name(&self) -> &'static str;

    /// Verifies the request against the channel's keys at time `now`, then parses it.
    fn verify(
        &self,
        channel: &ChannelName,
        request: &RawRequest<'_>,
        now: DateTime<Utc>,
    ) -> Result<Notification, Rejection>;

    /// The headers that must be stored with the body so the request can be verified again later.
    fn signed_headers(&self) -> &'static [&'static str];

    /// The answer that stops the provider's retries.
    fn ack(&self) -> Answer;

    /// The answer that makes the provider send again later; never a success status.
    fn retry(&self, reason: RetryReason, message: &str) -> Answer;
}

mod common;
#[cfg(test)]
mod testing;

/// A provider's protocol named as in the config's `provider` key, for tools that handle its
/// requests without the channel's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProviderName {
    #[serde(rename = "alipay")]
    Alipay,
    #[serde(rename = "wechatpay")]
    WechatPay,
    #[serde(rename = "stripe")]
    Stripe,
    #[serde(rename = "standard-webhooks")]
    StandardWebhooks,
}

impl ProviderName {
    /// Whether an HTTP answer with this status and body stops the provider's retries.
    pub fn is_ack(self, status: u16, body: &[u8]) -> bool {
        match self {
            ProviderName::Alipay => alipay::is_ack(status, body),
            ProviderName::WechatPay => wechatpay::is_ack(status),
            ProviderName::Stripe => stripe::is_ack(status),
            ProviderName::StandardWebhooks => standard_webhooks::is_ack(status),
        }
    }

    /// The provider a request body shows it comes from without its headers or keys, when the
    /// body tells: only Alipay's form does.
    pub fn recognise(body: &str) -> Option<ProviderName> {
        alipay::looks_like_notification(body).then_some(ProviderName::Alipay)
    }
}

/// Verifies a request with its channel's adapter, and holds what comes out to the rules every
/// provider's notification obeys.
///
/// A payment must name its provider trade: the trade is what tells a repeat of the payment that
/// credited an order from a second payment of it, and two payments without one would read as the
/// same.
pub fn verify(
    provider: &dyn Provider,
    channel: &ChannelName,
    request: &RawRequest<'_>,
    now: DateTime<Utc>,
) -> Result<Notification, Rejection> {
    let notification = provider.verify(channel, request, now)?;
    let names_trade = notification
        .provider_trade_no
        .as_deref()
        .is_some_and(|trade| !trade.trim().is_empty());
    if notification.kind == NotificationKind::Paid && !names_trade {
        return Err(Rejection::Format(
            "a payment notification names no provider trade".to_owned(),
        ));
    }
    Ok(notification)
}

/// Builds the adapter a channel names, reading its keys now: a bad key stops startup instead of
/// failing every notification.
pub fn from_config(cfg: &crate::config::ChannelConfig) -> Result<Box<dyn Provider>, String> {
    use crate::config::ChannelConfig;
    Ok(match cfg {
        ChannelConfig::Alipay(c) => Box::new(alipay::Alipay::new(c)?),
        ChannelConfig::WechatPay(c) => Box::new(wechatpay::WechatPay::new(c)?),
        ChannelConfig::Stripe(c) => Box::new(stripe::Stripe::new(c)?),
        ChannelConfig::StandardWebhooks(c) => {
            Box::new(standard_webhooks::StandardWebhooks::new(c)?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ChannelConfig, Secret, StandardWebhooksConfig, StripeConfig};

    #[test]
    fn each_configured_provider_is_built_by_name_and_bad_keys_stop_it() {
        let stripe = ChannelConfig::Stripe(StripeConfig {
            livemode: None,
            account: None,
            secrets: vec![Secret::new("whsec_x")],
            currency: Currency::Usd,
            timestamp_tolerance_secs: 300,
        });
        assert_eq!(from_config(&stripe).unwrap().name(), "stripe");
        let hooks = |secret: &str| {
            ChannelConfig::StandardWebhooks(StandardWebhooksConfig {
                secrets: vec![Secret::new(secret)],
                currency: Currency::Cny,
                timestamp_tolerance_secs: 300,
            })
        };
        let built = from_config(&hooks("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).unwrap();
        assert_eq!(built.name(), "standard-webhooks");
        assert!(from_config(&hooks("whsec_%%%")).is_err());
    }
}
