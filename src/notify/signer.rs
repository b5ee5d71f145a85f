//! A channel's signer: the provider's signer for a channel's configuration, picked as
//! [`super::from_config`] picks its adapter. For `payhook fixtures` and for tests; nothing on the
//! receiving path uses it.

use chrono::{DateTime, Utc};

use super::alipay::sign::AlipaySigner;
use super::sign::{Payment, RefundSpec, SignError, Signed, SignedPayment};
use super::standard_webhooks::sign::StandardWebhooksSigner;
use super::stripe::sign::StripeSigner;
use super::wechatpay::sign::WechatPaySigner;
use super::ProviderName;
use crate::config::ChannelConfig;

/// A channel's keys, ready to sign its provider's payment and refund notifications.
pub enum Signer {
    Alipay(AlipaySigner),
    WechatPay(WechatPaySigner),
    Stripe(StripeSigner),
    StandardWebhooks(StandardWebhooksSigner),
}

impl Signer {
    /// `private_key` is PEM text, needed by the RSA providers and ignored by the others.
    pub fn new(
        cfg: &ChannelConfig,
        private_key: Option<&str>,
        serial: Option<&str>,
    ) -> Result<Signer, SignError> {
        Ok(match cfg {
            ChannelConfig::Alipay(c) => Signer::Alipay(AlipaySigner::new(c, private_key)?),
            ChannelConfig::WechatPay(c) => {
                Signer::WechatPay(WechatPaySigner::new(c, private_key, serial)?)
            }
            ChannelConfig::Stripe(c) => Signer::Stripe(StripeSigner::new(c)?),
            ChannelConfig::StandardWebhooks(c) => {
                Signer::StandardWebhooks(StandardWebhooksSigner::new(c)?)
            }
        })
    }

    /// The provider whose notifications this signs.
    pub fn provider(&self) -> ProviderName {
        match self {
            Signer::Alipay(_) => ProviderName::Alipay,
            Signer::WechatPay(_) => ProviderName::WechatPay,
            Signer::Stripe(_) => ProviderName::Stripe,
            Signer::StandardWebhooks(_) => ProviderName::StandardWebhooks,
        }
    }

    /// The notification that reports `payment` paid, signed at `now`, with fresh notification
    /// and trade ids; the trade id comes back with it, for the payment's refunds.
    pub fn paid(&self, payment: &Payment, now: DateTime<Utc>) -> Result<SignedPayment, SignError> {
        match self {
            Signer::Alipay(signer) => Ok(signer.paid(payment, now)),
            Signer::WechatPay(signer) => signer.paid(payment, now),
            Signer::Stripe(signer) => Ok(signer.paid(payment, now)),
            Signer::StandardWebhooks(signer) => signer.paid(payment, now),
        }
    }

    /// The notification that reports `refund` of `payment`, which the trade `trade_no` paid,
    /// signed at `now` with a fresh notification id: Alipay's `refund_fee` and Stripe's
    /// `amount_refunded` state `refund.total`, WeChat Pay and Standard Webhooks `refund.amount`.
    pub fn refunded(
        &self,
        payment: &Payment,
        trade_no: &str,
        refund: &RefundSpec,
        now: DateTime<Utc>,
    ) -> Result<Signed, SignError> {
        match self {
            Signer::Alipay(signer) => Ok(signer.refunded(payment, trade_no, refund, now)),
            Signer::WechatPay(signer) => signer.refunded(payment, trade_no, refund, now),
            Signer::Stripe(signer) => Ok(signer.refunded(payment, trade_no, refund, now)),
            Signer::StandardWebhooks(signer) => signer.refunded(payment, trade_no, refund, now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::domain::ids::ChannelName;

    fn demo() -> Settings {
        Settings::from_toml(include_str!("../../config/demo.toml")).expect("demo config")
    }

    fn demo_key(file: &str) -> String {
        let path = format!("{}/config/demo-keys/{file}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn rsa_channels_need_a_private_key_and_a_configured_serial() {
        let settings = demo();
        let channel = |name: &str| &settings.channels[&ChannelName::parse(name).unwrap()];
        let error = Signer::new(channel("alipay"), None, None).err().unwrap();
        let error = error.to_string();
        assert!(error.contains("--private-key"), "{error}");
        let key = demo_key("wechatpay-test-private-key.pem");
        let error = Signer::new(channel("wxpay"), Some(&key), Some("PUB_KEY_ID_NOPE"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("PUB_KEY_ID_NOPE") && error.contains("PUB_KEY_ID_0119"),
            "{error}"
        );
        let error = Signer::new(channel("wxpay"), Some("not a key"), None)
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("--private-key"), "{error}");
        assert!(Signer::new(channel("stripe"), None, None).is_ok());
    }
}
