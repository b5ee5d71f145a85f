//! Channel settings: one configured provider account each, named by its notify URL.

use std::fmt;

use serde::Deserialize;

use crate::domain::money::Currency;

/// A secret value: given inline, or as `{ file = "PATH" }` or `{ env = "NAME" }`.
///
/// Its `Debug` form never shows the value, so a secret cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;

        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Source {
            Inline(String),
            File { file: String },
            Env { env: String },
        }
        match Source::deserialize(d).map_err(|_| {
            D::Error::custom("a secret is a string, { file = \"PATH\" } or { env = \"NAME\" }")
        })? {
            Source::Inline(value) => Ok(Secret(value)),
            Source::File { file } => std::fs::read_to_string(&file)
                .map(|s| Secret(s.trim_end_matches(['\r', '\n']).to_owned()))
                .map_err(|e| D::Error::custom(format!("cannot read secret file {file:?}: {e}"))),
            Source::Env { env } => std::env::var(&env)
                .map(Secret)
                .map_err(|_| D::Error::custom(format!("environment variable {env} is not set"))),
        }
    }
}

fn default_currency() -> Currency {
    Currency::Cny
}

fn default_tolerance() -> u64 {
    300
}

/// What a channel accepts in an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelTerms {
    pub currency: Currency,
    /// The order-number lengths the provider accepts (WeChat Pay: 6 to 32).
    pub order_no_len: std::ops::RangeInclusive<usize>,
}

/// One channel, tagged by `provider`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "provider")]
pub enum ChannelConfig {
    #[serde(rename = "alipay")]
    Alipay(AlipayConfig),
    #[serde(rename = "wechatpay")]
    WechatPay(WechatPayConfig),
    #[serde(rename = "stripe")]
    Stripe(StripeConfig),
    #[serde(rename = "standard-webhooks")]
    StandardWebhooks(StandardWebhooksConfig),
}

/// The widest timestamp tolerance accepted: beyond it, replay protection means little.
pub const MAX_TOLERANCE_SECS: u64 = 3600;

impl ChannelConfig {
    /// Refuses settings that would lose every notification or switch a protection off.
    pub fn check(&self) -> Result<(), String> {
        let (ids, tolerance): (Vec<(&str, &str)>, u64) = match self {
            ChannelConfig::Alipay(c) => {
                let mut ids = vec![("app_id", c.app_id.as_str())];
                if let Some(seller) = &c.seller_id {
                    ids.push(("seller_id", seller.as_str()));
                }
                // Alipay signs no timestamp: the tolerance does not apply.
                (ids, default_tolerance())
            }
            ChannelConfig::WechatPay(c) => (
                vec![("mchid", c.mchid.as_str()), ("appid", c.appid.as_str())],
                c.timestamp_tolerance_secs,
            ),
            ChannelConfig::Stripe(c) => {
                let ids = c.account.iter().map(|a| ("account", a.as_str())).collect();
                (ids, c.timestamp_tolerance_secs)
            }
            ChannelConfig::StandardWebhooks(c) => (vec![], c.timestamp_tolerance_secs),
        };
        if let Some((key, _)) = ids.iter().find(|(_, v)| v.trim().is_empty()) {
            return Err(format!("{key} must not be empty"));
        }
        if !(1..=MAX_TOLERANCE_SECS).contains(&tolerance) {
            return Err(format!(
                "timestamp_tolerance_secs must be 1 to {MAX_TOLERANCE_SECS}"
            ));
        }
        Ok(())
    }

    /// What orders on this channel must look like.
    pub fn terms(&self) -> ChannelTerms {
        let order_no_len = match self {
            ChannelConfig::WechatPay(_) => 6..=32,
            _ => 1..=crate::domain::ids::OrderNo::MAX,
        };
        ChannelTerms {
            currency: self.currency(),
            order_no_len,
        }
    }

    /// The currency orders on this channel are made in.
    pub fn currency(&self) -> Currency {
        match self {
            ChannelConfig::Alipay(c) => c.currency,
            ChannelConfig::WechatPay(c) => c.currency,
            ChannelConfig::Stripe(c) => c.currency,
            ChannelConfig::StandardWebhooks(c) => c.currency,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlipayConfig {
    pub app_id: String,
    /// Checked against the notification's `seller_id` when set.
    pub seller_id: Option<String>,
    /// Alipay's public key (not the app's own): base64 SubjectPublicKeyInfo DER, or PEM.
    pub alipay_public_key: Secret,
    /// The signature scheme the app is set up with. The notification's own `sign_type` is not
    /// covered by its signature, so it may never choose the hash.
    #[serde(default)]
    pub sign_type: AlipaySignType,
    #[serde(default = "default_currency")]
    pub currency: Currency,
}

/// Alipay's two signature schemes, both RSA PKCS #1 v1.5.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum AlipaySignType {
    /// SHA256withRSA, for every app created since 2018.
    #[default]
    #[serde(rename = "RSA2")]
    Rsa2,
    /// SHA1withRSA, for legacy apps only.
    #[serde(rename = "RSA")]
    Rsa,
}

impl AlipaySignType {
    /// The `sign_type` value Alipay writes for this scheme.
    pub fn as_str(self) -> &'static str {
        match self {
            AlipaySignType::Rsa2 => "RSA2",
            AlipaySignType::Rsa => "RSA",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WechatPayConfig {
    pub mchid: String,
    pub appid: String,
    /// The merchant's 32-character APIv3 key, used as-is as the AES-256-GCM key.
    pub apiv3_key: Secret,
    /// `Wechatpay-Serial` value -> PEM public key or platform certificate.
    pub public_keys: std::collections::BTreeMap<String, Secret>,
    #[serde(default = "default_currency")]
    pub currency: Currency,
    #[serde(default = "default_tolerance")]
    pub timestamp_tolerance_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StripeConfig {
    /// Endpoint signing secrets (`whsec_...`); several while one is being rolled.
    pub secrets: Vec<Secret>,
    /// When set, events whose `livemode` differs are kept as anomalies and never credit: a live
    /// endpoint also receives connected accounts' test events.
    pub livemode: Option<bool>,
    /// The connected account (`acct_...`) whose events may credit, for a Connect endpoint.
    /// Unset, only the platform's own events (those without `account`) may credit: a connected
    /// account can create a session that names one of our order numbers and pay it to itself.
    pub account: Option<String>,
    #[serde(default = "default_currency")]
    pub currency: Currency,
    #[serde(default = "default_tolerance")]
    pub timestamp_tolerance_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandardWebhooksConfig {
    /// Signing secrets (`whsec_` + base64); several while one is being rolled.
    pub secrets: Vec<Secret>,
    #[serde(default = "default_currency")]
    pub currency: Currency,
    #[serde(default = "default_tolerance")]
    pub timestamp_tolerance_secs: u64,
}
