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

use crate::domain::ids::ChannelName;
use crate::domain::notification::{Notification, NotificationKind};

pub mod alipay;
mod provider;
pub mod sign;
pub mod signer;
pub mod standard_webhooks;
pub mod stripe;
pub mod wechatpay;

mod common;
#[cfg(test)]
mod testing;

pub use provider::{Provider, RawRequest, Rejection, Reply, RetryReason};

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
    use crate::domain::money::Currency;

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
