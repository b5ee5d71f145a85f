//! Asking a provider about an order (补单): one client per provider, built from the channel's
//! query keys, that asks whether an order was paid, closes it at the provider, and (Stripe) lists
//! the events it could not deliver.
//!
//! An answer is trusted exactly as far as a notification would be: Alipay's and WeChat Pay's are
//! verified with the channel's provider keys, Stripe's are authentic because they came over TLS
//! with our API key. What an answer says is handed on as the
//! [`Notification`](crate::domain::notification::Notification) the provider's
//! adapter would have made of it, with the same amount, currency and merchant checks, to be
//! applied by the crediting transaction like any other.
//!
//! Errors tell the caller what to do next:
//! - [`AskError::Unreachable`]: no answer (connect error, timeout, 5xx, rate limit); ask again
//!   later.
//! - [`AskError::Invalid`]: an answer that does not verify, does not parse, or says something
//!   impossible (another order, a refused key); keep its evidence for a human, and never credit.
//!
//! No secret, signature or key ever goes into an error or a log line.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::books::orders::Order;
use crate::config::ChannelConfig;
use crate::domain::clock::{Clock, SystemClock};
use crate::domain::ids::ChannelName;

pub mod alipay;
mod answer;
pub mod stripe;
pub mod wechatpay;

pub use answer::{http_client, AskError, Closing, Queried, QueryEvidence, ASK_TIMEOUT};

/// A channel's client for asking its provider; `None` from [`Asker::new`] when the channel lacks
/// query keys.
#[allow(clippy::large_enum_variant)] // one per channel, built once at start-up
pub enum Asker {
    Alipay(alipay::AlipayAsker),
    WechatPay(wechatpay::WechatPayAsker),
    Stripe(stripe::StripeAsker),
}

impl Asker {
    /// Reads the channel's query keys now, so a bad one stops start-up; the error names the key
    /// and describes it, never showing it.
    pub fn new(
        channel: &ChannelName,
        cfg: &ChannelConfig,
        http: reqwest::Client,
    ) -> Result<Option<Asker>, String> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        Ok(match cfg {
            ChannelConfig::Alipay(c) => {
                alipay::AlipayAsker::new(channel, c, http, clock)?.map(Asker::Alipay)
            }
            ChannelConfig::WechatPay(c) => {
                wechatpay::WechatPayAsker::new(channel, c, http, clock)?.map(Asker::WechatPay)
            }
            ChannelConfig::Stripe(c) => {
                stripe::StripeAsker::new(channel, c, http)?.map(Asker::Stripe)
            }
            ChannelConfig::StandardWebhooks(_) => None,
        })
    }

    /// The same asker on another clock: the one its requests are dated by and its answers'
    /// timestamps are checked against (Stripe's requests and answers carry none).
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Asker {
        match self {
            Asker::Alipay(a) => Asker::Alipay(a.with_clock(clock)),
            Asker::WechatPay(a) => Asker::WechatPay(a.with_clock(clock)),
            stripe @ Asker::Stripe(_) => stripe,
        }
    }

    /// Stripe: fewer events per page (1 to 100; 100 unless set). Others are unchanged.
    pub fn with_page_size(self, page_size: u8) -> Asker {
        match self {
            Asker::Stripe(a) => Asker::Stripe(a.with_page_size(page_size)),
            other => other,
        }
    }

    /// Asks about one order. Answers that do not verify are [`AskError::Invalid`] with the bytes
    /// as evidence.
    pub async fn query(&self, order: &Order) -> Result<Queried, AskError> {
        match self {
            Asker::Alipay(a) => a.query(order).await,
            Asker::WechatPay(a) => a.query(order).await,
            Asker::Stripe(a) => a.query(order).await,
        }
    }

    /// Closes the order at the provider so the buyer cannot pay it any more (Alipay
    /// `alipay.trade.close`, WeChat Pay close); Stripe: `Ok(Closing::NotSupported)`.
    pub async fn close(&self, order: &Order) -> Result<Closing, AskError> {
        match self {
            Asker::Alipay(a) => a.close(order).await,
            Asker::WechatPay(a) => a.close(order).await,
            Asker::Stripe(_) => Ok(Closing::NotSupported),
        }
    }

    /// Stripe only: the events it could not deliver (`delivery_success=false`) after `cursor`
    /// (an event id; `None` starts from `since`), paged, oldest first; with the new cursor (the
    /// newest event id seen, or `cursor` when there was none). Others: `Ok((vec![], cursor))`.
    pub async fn undelivered(
        &self,
        cursor: Option<&str>,
        since: DateTime<Utc>,
    ) -> Result<(Vec<Queried>, Option<String>), AskError> {
        match self {
            Asker::Stripe(a) => a.undelivered(cursor, since).await,
            _ => Ok((vec![], cursor.map(str::to_owned))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn channel(text: &str) -> (ChannelName, ChannelConfig) {
        let settings = Settings::from_toml(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        settings.channels.into_iter().next().expect("one channel")
    }

    fn key(file: &str) -> String {
        let path = format!("{}/tests/vectors/{file}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    const ALIPAY: &str = "[channels.ali]\nprovider = \"alipay\"\napp_id = \"2021000000000001\"\n\
                          alipay_public_key = \"MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAhtc5v9/ab02OT0UAwkEL67YK0D3bQ81sUpJ5Ds4SjCgl9Vax5cABqHqEeT3z5Y0jzE4g1DOhpqFvQLgXoE6ecPOyFu0RURGNOU45uDOXTjyEmJ79irzlcOcldsAKY8AT3rb6Lny3jX5rRR37pvnOvjBqcKp3PTHLCEcRQdgyHqg6i+4QZ+G/Ojvv4uHezQIdVJTWm0yMMQI8O6lP9Vlu/OAVRT/M3yYfOuBpCu5Ugl6J4tlYDXaQ2F2NQcdYAN9gpCXqyT2ZyByO60HZGvc7xfWJPI/IcLLoDAKLDm5F/qntIGkYX8OxvspjEsqJsl7bjdO4ezwXiZHFfcpRJHiQWwIDAQAB\"\n";

    #[test]
    fn a_channel_without_query_keys_only_listens() {
        let http = http_client().unwrap();
        let (name, cfg) = channel(ALIPAY);
        assert!(Asker::new(&name, &cfg, http.clone()).unwrap().is_none());
        let (name, cfg) = channel(
            "[channels.s]\nprovider = \"stripe\"\nsecrets = [\"whsec_x\"]\ncurrency = \"USD\"\n",
        );
        assert!(Asker::new(&name, &cfg, http.clone()).unwrap().is_none());
        let (name, cfg) = channel(
            "[channels.g]\nprovider = \"standard-webhooks\"\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n",
        );
        assert!(Asker::new(&name, &cfg, http).unwrap().is_none());
    }

    #[test]
    fn query_keys_are_read_in_every_form_and_bad_ones_are_named_but_never_shown() {
        let http = http_client().unwrap();
        let pkcs1 = key("alipay-app-test-private-key.pem");
        let pkcs8 = key("wechatpay-merchant-test-private-key.pem");
        let bare: String = pkcs8.lines().filter(|l| !l.starts_with("-----")).collect();
        for app_key in [pkcs1.as_str(), pkcs8.as_str(), bare.as_str()] {
            let text = format!("{ALIPAY}app_private_key = '''{app_key}'''\n");
            let (name, cfg) = channel(&text);
            let asker = Asker::new(&name, &cfg, http.clone()).unwrap();
            assert!(matches!(asker, Some(Asker::Alipay(_))));
        }
        let secret = "MIIEs3cr3tButBroken";
        let text = format!("{ALIPAY}app_private_key = \"{secret}\"\n");
        let (name, cfg) = channel(&text);
        let error = Asker::new(&name, &cfg, http.clone()).err().unwrap();
        assert!(error.starts_with("app_private_key: "), "{error}");
        assert!(!error.contains("s3cr3t"), "{error}");

        let platform: serde_json::Value = serde_json::from_str(&key("wechatpay.json")).unwrap();
        let wechat = format!(
            "[channels.wx]\nprovider = \"wechatpay\"\nmchid = \"1900000109\"\nappid = \"wx1\"\n\
             apiv3_key = \"71fNYmphNcWI9rQWOwjauQLKX783FSU8\"\nmerchant_serial_no = \"5157F0\"\n\
             merchant_private_key = \"{secret}\"\n[channels.wx.public_keys]\nK1 = '''{}'''\n",
            platform["public_key_pem"].as_str().unwrap()
        );
        let (name, cfg) = channel(&wechat);
        let error = Asker::new(&name, &cfg, http).err().unwrap();
        assert!(error.starts_with("merchant_private_key: "), "{error}");
        assert!(!error.contains("s3cr3t"), "{error}");
    }
}
