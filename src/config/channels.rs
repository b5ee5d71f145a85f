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

fn default_alipay_gateway() -> String {
    "https://openapi.alipay.com/gateway.do".to_owned()
}

fn default_wechatpay_api() -> String {
    "https://api.mch.weixin.qq.com".to_owned()
}

fn default_stripe_api() -> String {
    "https://api.stripe.com".to_owned()
}

/// Letters, digits and `_`: what goes into a header as is.
fn is_plain_id(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A provider's API address: HTTPS, or plain HTTP to this machine only (a simulator in tests),
/// since every request carries a key or a signature.
fn check_base_url(key: &str, value: &str) -> Result<(), String> {
    let url = url::Url::parse(value).map_err(|_| format!("{key} is not a URL"))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(name)) => name == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    let secure = url.scheme() == "https" || (url.scheme() == "http" && loopback);
    if !secure || url.host().is_none() {
        return Err(format!("{key} must be an https:// URL"));
    }
    if !url.username().is_empty() || url.password().is_some() || url.query().is_some() {
        return Err(format!("{key} must hold no credentials or query"));
    }
    Ok(())
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
        self.check_query_keys()
    }

    /// The keys that let payhook ask the provider about an order: their shapes only, never their
    /// values in a message. The private keys themselves are read by the query clients at start-up.
    fn check_query_keys(&self) -> Result<(), String> {
        let not_empty = |key: &str, secret: &Option<Secret>| match secret {
            Some(s) if s.expose().trim().is_empty() => Err(format!("{key} must not be empty")),
            _ => Ok(()),
        };
        match self {
            ChannelConfig::Alipay(c) => {
                not_empty("app_private_key", &c.app_private_key)?;
                if c.app_private_key.is_some() && c.sign_type != AlipaySignType::Rsa2 {
                    return Err(
                        "app_private_key: asking Alipay needs an app set up for RSA2".to_owned(),
                    );
                }
                check_base_url("gateway_url", &c.gateway_url)
            }
            ChannelConfig::WechatPay(c) => {
                not_empty("merchant_private_key", &c.merchant_private_key)?;
                match (&c.merchant_private_key, &c.merchant_serial_no) {
                    (Some(_), None) | (None, Some(_)) => {
                        return Err(
                            "merchant_private_key and merchant_serial_no go together".to_owned()
                        )
                    }
                    (_, Some(serial)) if !is_plain_id(serial) => {
                        return Err(
                            "merchant_serial_no must be the certificate's serial number (letters and digits)"
                                .to_owned(),
                        )
                    }
                    _ => {}
                }
                check_base_url("api_base", &c.api_base)
            }
            ChannelConfig::Stripe(c) => {
                if let Some(key) = &c.api_key {
                    let key = key.expose();
                    let secret_key = key.starts_with("sk_") || key.starts_with("rk_");
                    if !secret_key || !is_plain_id(key) {
                        return Err(
                            "api_key must be a secret key (sk_...) or a restricted key (rk_...)"
                                .to_owned(),
                        );
                    }
                }
                check_base_url("api_base", &c.api_base)
            }
            ChannelConfig::StandardWebhooks(_) => Ok(()),
        }
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
    /// The app's own private key (应用私钥; PEM PKCS #8 or PKCS #1, or bare base64 DER), to ask
    /// Alipay about orders; without it the channel only listens.
    pub app_private_key: Option<Secret>,
    /// Alipay's OpenAPI gateway.
    #[serde(default = "default_alipay_gateway")]
    pub gateway_url: String,
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
    /// The merchant API certificate's private key (`apiclient_key.pem`), to ask WeChat Pay about
    /// orders; without it the channel only listens.
    pub merchant_private_key: Option<Secret>,
    /// The serial number of the merchant API certificate that key belongs to.
    pub merchant_serial_no: Option<String>,
    /// WeChat Pay's API.
    #[serde(default = "default_wechatpay_api")]
    pub api_base: String,
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
    /// A secret key (`sk_...`) or a restricted key (`rk_...`) with read access to Events, to ask
    /// Stripe about orders; without it the channel only listens.
    pub api_key: Option<Secret>,
    /// Stripe's API.
    #[serde(default = "default_stripe_api")]
    pub api_base: String,
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
