//! What verifying a request tries, step by step, for the operator who asks why it failed
//! (`payhook explain`): the bytes the signature covers, each configured key and what it said, and
//! the signed timestamp. Each adapter's `examine` builds it with the functions its `verify` runs,
//! so what an operator reads is what the verifier did.
//!
//! Keys are named as the configuration names them (`alipay_public_key`, a WeChat Pay serial,
//! `secrets[1]`); an examination never holds a key, a secret or a signature.

use chrono::{DateTime, Utc};

use super::common::{self, Window};
use super::provider::Rejection;

/// What checking one request's signature tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Examination {
    /// The exact bytes the signature covers, as the verifier builds them; `None` when the request
    /// could not be read that far.
    pub signed_content: Option<Vec<u8>>,
    /// Every configured key the signature was checked with, in the configuration's order.
    pub keys: Vec<KeyCheck>,
    /// The key the request itself names (WeChat Pay's `Wechatpay-Serial`), when it names one.
    pub named_key: Option<String>,
    /// The signed timestamp and the tolerance it is held to, for providers that sign one.
    pub freshness: Option<Freshness>,
    /// Why no key could be tried, or why a key that verifies would still not count: a missing
    /// header, a probe, an unknown serial.
    pub problem: Option<Rejection>,
}

impl Examination {
    /// A request that could not be read far enough to try a key.
    pub(crate) fn unread(problem: Rejection) -> Examination {
        Examination {
            signed_content: None,
            keys: Vec::new(),
            named_key: None,
            freshness: None,
            problem: Some(problem),
        }
    }

    /// The key that verifies the signature and counts, if any.
    pub fn verified_by(&self) -> Option<&str> {
        if self.problem.is_some() {
            return None;
        }
        self.keys
            .iter()
            .find(|check| check.chosen && check.result.is_ok())
            .map(|check| check.key.as_str())
    }
}

/// One configured key, and whether the signature verifies with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCheck {
    /// The key's name in the channel's configuration, never its value.
    pub key: String,
    /// Whether a match with this key would verify the request: every key does, except where the
    /// request names its key (WeChat Pay), which only that one does.
    pub chosen: bool,
    /// `Ok` when the signature verifies with this key; else why not.
    pub result: Result<(), Rejection>,
}

impl KeyCheck {
    pub(crate) fn new(key: impl Into<String>, result: Result<(), Rejection>) -> KeyCheck {
        KeyCheck {
            key: key.into(),
            chosen: true,
            result,
        }
    }
}

/// A signed timestamp, as sent, and the tolerance the provider's adapter holds it to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freshness {
    timestamp: String,
    pub tolerance_secs: u64,
    window: Window,
}

impl Freshness {
    pub(crate) fn new(timestamp: &str, tolerance_secs: u64, window: Window) -> Freshness {
        Freshness {
            timestamp: timestamp.to_owned(),
            tolerance_secs,
            window,
        }
    }

    /// The timestamp in unix seconds, when it is one.
    pub fn signed_at(&self) -> Option<i64> {
        common::unix_seconds(&self.timestamp)
    }

    /// Whether a timestamp ahead of the clock is held to the tolerance too (Stripe's libraries
    /// accept a sender's clock running ahead; WeChat Pay and Standard Webhooks do not).
    pub fn both_ways(&self) -> bool {
        self.window == Window::Both
    }

    /// The adapter's own freshness check, as if the request had arrived at `at`.
    pub fn check(&self, at: DateTime<Utc>) -> Result<(), Rejection> {
        common::check_timestamp(&self.timestamp, at, self.tolerance_secs, self.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AlipayConfig, AlipaySignType, Secret, StripeConfig, WechatPayConfig};
    use crate::domain::money::Currency;
    use crate::notify::testing::{self, Case};
    use crate::notify::{alipay, stripe, wechatpay, Provider};

    #[derive(serde::Deserialize)]
    struct Vectors {
        #[serde(default)]
        alipay_public_key: String,
        #[serde(default)]
        public_key_id: String,
        #[serde(default)]
        public_key_pem: String,
        #[serde(default)]
        apiv3_key: String,
        #[serde(default)]
        secret: String,
        cases: Vec<Case>,
    }

    fn case<'a>(v: &'a Vectors, name: &str) -> &'a Case {
        v.cases.iter().find(|c| c.name == name).expect(name)
    }

    /// What `examine` says agrees with what `verify` decides, for every case of every vector file.
    #[test]
    fn an_examination_agrees_with_verification_and_names_keys_not_their_values() {
        let now = testing::at(1_795_375_716);
        let v: Vectors = testing::load("alipay.json");
        let alipay = alipay::Alipay::new(&AlipayConfig {
            app_id: "2021000000000001".to_owned(),
            seller_id: None,
            alipay_public_key: Secret::new(&v.alipay_public_key),
            sign_type: AlipaySignType::Rsa2,
            currency: Currency::Cny,
            app_private_key: None,
            gateway_url: String::new(),
        })
        .unwrap();
        for case in &v.cases {
            let headers = case.header_list();
            let request = testing::request(&headers, case.body.as_bytes());
            let examination = alipay.examine(&request);
            let verified = alipay.verify(&testing::channel(), &request, now).is_ok();
            assert_eq!(
                examination.verified_by().is_some(),
                verified,
                "{}",
                case.name
            );
            assert!(examination
                .keys
                .iter()
                .all(|k| k.key == "alipay_public_key"));
        }
        let paid = case(&v, "paid");
        let examination = alipay.examine(&testing::request(&[], paid.body.as_bytes()));
        let content = String::from_utf8(examination.signed_content.unwrap()).unwrap();
        assert!(
            content.starts_with("app_id=") && !content.contains("sign="),
            "{content}"
        );
        assert_eq!(examination.freshness, None);

        let v: Vectors = testing::load("wechatpay.json");
        let wechat = wechatpay::WechatPay::new(&WechatPayConfig {
            mchid: "1900000109".to_owned(),
            appid: "wxd678efh567hg6787".to_owned(),
            apiv3_key: Secret::new(&v.apiv3_key),
            public_keys: [(v.public_key_id.clone(), Secret::new(&v.public_key_pem))].into(),
            currency: Currency::Cny,
            timestamp_tolerance_secs: 300,
            merchant_private_key: None,
            merchant_serial_no: None,
            api_base: String::new(),
        })
        .unwrap();
        for case in &v.cases {
            let headers = case.header_list();
            let request = testing::request(&headers, case.body.as_bytes());
            let examination = wechat.examine(&request);
            let verified = wechat.verify(&testing::channel(), &request, now).is_ok();
            assert_eq!(
                examination.verified_by().is_some(),
                verified,
                "{}",
                case.name
            );
        }
        let paid = case(&v, "paid");
        let headers = paid.header_list();
        let examination = wechat.examine(&testing::request(&headers, paid.body.as_bytes()));
        assert_eq!(examination.verified_by(), Some(v.public_key_id.as_str()));
        let message = examination.signed_content.clone().unwrap();
        assert!(message.starts_with(b"1795375716\n") && message.ends_with(b"}\n"));
        let freshness = examination.freshness.unwrap();
        assert_eq!(freshness.signed_at(), Some(1_795_375_716));
        assert!(freshness.check(now).is_ok());
        assert!(freshness.check(testing::at(1_795_375_716 + 301)).is_err());
        assert!(freshness.check(testing::at(1_795_375_716 - 301)).is_err());
        let unknown = case(&v, "unknown-serial");
        let headers = unknown.header_list();
        let examination = wechat.examine(&testing::request(&headers, unknown.body.as_bytes()));
        assert!(examination.named_key.is_some());
        assert!(examination.keys.iter().all(|k| !k.chosen));
        assert_eq!(examination.verified_by(), None);
        let probe = case(&v, "probe");
        let headers = probe.header_list();
        let examination = wechat.examine(&testing::request(&headers, probe.body.as_bytes()));
        assert_eq!(
            examination.problem,
            Some(Rejection::Signature("signature probe".to_owned()))
        );

        let v: Vectors = testing::load("stripe.json");
        let stripe = stripe::Stripe::new(&StripeConfig {
            secrets: vec![Secret::new("whsec_old"), Secret::new(&v.secret)],
            livemode: None,
            account: None,
            currency: Currency::Usd,
            timestamp_tolerance_secs: 300,
            api_key: None,
            api_base: String::new(),
        })
        .unwrap();
        let paid = case(&v, "paid");
        let headers = paid.header_list();
        let examination = stripe.examine(&testing::request(&headers, paid.body.as_bytes()));
        assert_eq!(examination.verified_by(), Some("secrets[1]"));
        assert!(examination.keys[0].result.is_err());
        let stale = examination.freshness.unwrap();
        assert!(
            stale.check(testing::at(1_795_375_716 - 1000)).is_ok(),
            "ahead is fine"
        );
        assert!(!stale.both_ways());
    }
}
