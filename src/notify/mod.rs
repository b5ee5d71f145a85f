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
mod examine;
mod provider;
pub mod sign;
pub mod signer;
pub mod standard_webhooks;
pub mod stripe;
pub mod wechatpay;

mod common;
#[cfg(test)]
mod testing;

pub(crate) use common::shown;
pub use examine::{Examination, Freshness, KeyCheck};
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
/// same. Money going back must name its order or its trade, or no order could ever match it.
pub fn verify(
    provider: &dyn Provider,
    channel: &ChannelName,
    request: &RawRequest<'_>,
    now: DateTime<Utc>,
) -> Result<Notification, Rejection> {
    held_to_the_rules(provider.verify(channel, request, now)?)
}

/// Holds a notification, however it was learnt (a request, or an answer to our own question), to
/// the rules every provider's notification obeys; see [`verify`].
pub fn held_to_the_rules(notification: Notification) -> Result<Notification, Rejection> {
    let names_trade = notification
        .provider_trade_no
        .as_deref()
        .is_some_and(|trade| !trade.trim().is_empty());
    if notification.kind == NotificationKind::Paid && !names_trade {
        return Err(Rejection::Format(
            "a payment notification names no provider trade".to_owned(),
        ));
    }
    if notification.kind.is_money_back() && notification.order_no.is_none() && !names_trade {
        return Err(Rejection::Format(format!(
            "a {} notification names neither an order nor a provider trade",
            notification.kind.as_str()
        )));
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

/// What verifying `request` with a channel's adapter tries, key by key (see [`Examination`]):
/// for an operator asking why it failed. The adapter is built from the channel's settings as
/// [`from_config`] builds it.
pub fn examine(
    cfg: &crate::config::ChannelConfig,
    request: &RawRequest<'_>,
) -> Result<Examination, String> {
    use crate::config::ChannelConfig;
    Ok(match cfg {
        ChannelConfig::Alipay(c) => alipay::Alipay::new(c)?.examine(request),
        ChannelConfig::WechatPay(c) => wechatpay::WechatPay::new(c)?.examine(request),
        ChannelConfig::Stripe(c) => stripe::Stripe::new(c)?.examine(request),
        ChannelConfig::StandardWebhooks(c) => {
            standard_webhooks::StandardWebhooks::new(c)?.examine(request)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ChannelConfig, Secret, StandardWebhooksConfig, StripeConfig};
    use crate::domain::money::{AmountMinor, Currency};
    use crate::domain::notification::{NotificationKind, Refund};
    use crate::notify::testing;
    use chrono::{DateTime, Utc};

    #[test]
    fn each_configured_provider_is_built_by_name_and_bad_keys_stop_it() {
        let stripe = ChannelConfig::Stripe(StripeConfig {
            livemode: None,
            account: None,
            secrets: vec![Secret::new("whsec_x")],
            currency: Currency::Usd,
            timestamp_tolerance_secs: 300,
            api_key: None,
            api_base: String::new(),
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

    /// An adapter that hands on one notification, whatever it is sent.
    struct Fixed(Notification);

    impl Provider for Fixed {
        fn name(&self) -> &'static str {
            "fixed"
        }

        fn verify(
            &self,
            _channel: &ChannelName,
            _request: &RawRequest<'_>,
            _now: DateTime<Utc>,
        ) -> Result<Notification, Rejection> {
            Ok(self.0.clone())
        }

        fn signed_headers(&self) -> &'static [&'static str] {
            &[]
        }

        fn ack(&self) -> Reply {
            common::text_reply(200, "ok")
        }

        fn retry(&self, _reason: RetryReason, _message: &str) -> Reply {
            common::text_reply(500, "retry")
        }
    }

    #[test]
    fn money_going_back_must_name_its_order_or_its_trade() {
        let secret = "whsec_x";
        let stripe = from_config(&ChannelConfig::Stripe(StripeConfig {
            livemode: None,
            account: None,
            secrets: vec![Secret::new(secret)],
            currency: Currency::Usd,
            timestamp_tolerance_secs: 300,
            api_key: None,
            api_base: String::new(),
        }))
        .unwrap();
        let now = testing::at(1_795_375_716);
        let verify_event = |event_type: &str, object: serde_json::Value| {
            let body = serde_json::json!({ "id": "evt_1", "type": event_type,
                                           "data": { "object": object } })
            .to_string();
            let header = stripe::sign::signature(secret, now.timestamp(), body.as_bytes());
            let headers = [("Stripe-Signature".to_owned(), header)];
            let request = testing::request(&headers, body.as_bytes());
            verify(stripe.as_ref(), &testing::channel(), &request, now)
        };
        let charge = |payment_intent: serde_json::Value, metadata: serde_json::Value| {
            serde_json::json!({ "id": "ch_1", "object": "charge", "amount": 500,
                                "amount_refunded": 200, "currency": "usd",
                                "payment_intent": payment_intent, "metadata": metadata })
        };
        // A Stripe charge that is not ours names neither: it is acked as ignored.
        let nothing = charge(serde_json::Value::Null, serde_json::json!({}));
        let kind = verify_event("charge.refunded", nothing).map(|n| n.kind);
        assert!(matches!(kind, Ok(NotificationKind::Other(_))), "{kind:?}");
        let dispute = serde_json::json!({ "id": "dp_1", "object": "dispute", "amount": 500,
                                          "currency": "usd", "payment_intent": null });
        let kind = verify_event("charge.dispute.funds_withdrawn", dispute).map(|n| n.kind);
        assert!(matches!(kind, Ok(NotificationKind::Other(_))), "{kind:?}");

        // Any other adapter's money going back that names neither is refused.
        let nameless = Notification {
            channel: testing::channel(),
            notification_id: "n1".to_owned(),
            order_no: None,
            provider_trade_no: None,
            amount: None,
            currency: Some(Currency::Usd),
            kind: NotificationKind::Refund(Refund::One {
                refund_id: "R1".to_owned(),
                amount: AmountMinor::new(1).unwrap(),
            }),
            merchant_mismatch: None,
        };
        let request = testing::request(&[], b"");
        let result = verify(&Fixed(nameless), &testing::channel(), &request, now);
        assert!(
            testing::is_format_rejection_about(&result, "neither an order nor a provider trade"),
            "{result:?}"
        );

        let by_trade = charge("pi_1".into(), serde_json::json!({}));
        assert!(verify_event("charge.refunded", by_trade).is_ok());
        let by_order = charge(
            serde_json::Value::Null,
            serde_json::json!({ "order_no": "S1" }),
        );
        assert!(verify_event("charge.refunded", by_order).is_ok());
        // Events that move no money are kept whatever they name.
        let other = charge(serde_json::Value::Null, serde_json::json!({}));
        assert!(verify_event("charge.refund.updated", other).is_ok());
    }
}
