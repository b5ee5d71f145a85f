//! The test vectors (`tests/vectors`), read at test time, and what the adapters' tests
//! need around them: a fixed clock, the channel, and the test keys to sign extra cases with.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::provider::{RawRequest, Rejection};
use super::sign::RsaSigner;
use crate::domain::ids::ChannelName;
use crate::domain::notification::{Notification, NotificationKind};

/// A self-signed certificate over the WeChat Pay test key.
pub const WECHAT_TEST_CERTIFICATE: &str = "-----BEGIN CERTIFICATE-----
MIIDOzCCAiOgAwIBAgIUFglxzr+LJEtWONoIfASUYXPseF0wDQYJKoZIhvcNAQEL
BQAwLDEqMCgGA1UEAwwhcGF5aG9vayB0ZXN0IHBsYXRmb3JtIGNlcnRpZmljYXRl
MCAXDTI2MTEyMjE5NDQyM1oYDzIxMjYxMDI5MTk0NDIzWjAsMSowKAYDVQQDDCFw
YXlob29rIHRlc3QgcGxhdGZvcm0gY2VydGlmaWNhdGUwggEiMA0GCSqGSIb3DQEB
AQUAA4IBDwAwggEKAoIBAQDOlUr+RE87nWWW6X4jjgV8uwEhIv+uU9EzhEAOw5M8
e6wMfCdnkk7BBihq1jzdSCr3vP1mKsbQGW8CXHnS3T47ie2qVyVuj94AsN6lMBzt
tAxEp5pykNh2UkroYRAgXx7Scf/05C/aQQbLzsCZDfDCYc27sKfacmrHCj8SaiCh
+l0HCBNFwSe6/budss3nVDvZjYffomV1QmsnoXgubqIVySJJ23U4kJZn7eWO9mQb
owH5DwJzA5pmANI6+4JkLDH0/U/kLVnz6AxlCzn6oFMQ6XPy7xokX0a9zehK6euv
d7fJE7cDtLfSxpkGxkzs9+TtL59GzFDM9Fp9h7uCHkPrAgMBAAGjUzBRMB0GA1Ud
DgQWBBTfWiIgzvcC/DNm6bakiIjT2+lSfDAfBgNVHSMEGDAWgBTfWiIgzvcC/DNm
6bakiIjT2+lSfDAPBgNVHRMBAf8EBTADAQH/MA0GCSqGSIb3DQEBCwUAA4IBAQAC
yh+T+JFK7XNAoQf7W+qdv/bcpag7CzzmXVEz2TkKl4oDDsRMUDKhktPOgfJFmlQD
kUMG6HLJJpY/EcIDqMz7EPMb8Gsg3aYW11R9Nd+WJjEFkVQcsOuseIH6RITummpS
bkT+260qhW8mDWDUBDj5qmX66zWJG9nF7eWuQFfIEeLONKzXoupurvqswVpYBoID
Nr56ZS7oPdlsWgAxG1M5Sn0KYWBFuInnuXSpFZgbTZJgLLqPP0xOHR61GPmGaGyW
70gSn1SxyUsCjv1wCee9Q0PCHGs8yJWl77QoUSFVDUksUQTVnFZDyiJKx1WeFVdx
Rrpxayb3wIvA88BnN0Uc
-----END CERTIFICATE-----
";

/// A vector file's text, from the repository's `tests/vectors`.
pub fn read(file: &str) -> String {
    let path = format!("{}/tests/vectors/{file}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

pub fn load<T: DeserializeOwned>(file: &str) -> T {
    serde_json::from_str(&read(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// One case of a vector file (`README.md` there describes the fields).
#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    pub name: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub body: String,
    pub signature: String,
    pub out_trade_no: String,
    pub amount_minor: i64,
}

impl Case {
    pub fn is_valid(&self) -> bool {
        match self.signature.as_str() {
            "valid" => true,
            "invalid" => false,
            other => panic!("case {}: signature is {other:?}", self.name),
        }
    }

    pub fn header_list(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Checks a verified notification against what the case says it pays.
    pub fn assert_pays(&self, notification: &Notification, kind: NotificationKind) {
        let order_no = notification.order_no.as_ref().map(|o| o.as_str());
        assert_eq!(order_no, Some(self.out_trade_no.as_str()), "{}", self.name);
        let amount = notification.amount.map(|a| a.get());
        assert_eq!(amount, Some(self.amount_minor), "{}", self.name);
        assert_eq!(notification.kind, kind, "{}", self.name);
        assert_eq!(notification.merchant_mismatch, None, "{}", self.name);
        assert_eq!(notification.channel, channel());
    }
}

/// A request built from owned parts, for tests that vary one of them.
pub fn request<'a>(headers: &'a [(String, String)], body: &'a [u8]) -> RawRequest<'a> {
    RawRequest { headers, body }
}

pub fn at(unix_seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(unix_seconds, 0).expect("timestamp in range")
}

pub fn channel() -> ChannelName {
    ChannelName::parse("test-channel").expect("valid channel name")
}

/// A test key from the vectors folder, to sign cases the files do not hold.
pub fn signer(file: &str) -> RsaSigner {
    RsaSigner::from_pem(&read(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

pub fn is_signature_rejection(result: &Result<Notification, Rejection>) -> bool {
    matches!(result, Err(Rejection::Signature(_)))
}

/// `bytes` with one bit flipped.
pub fn flip_bit(bytes: &[u8], index: usize, bit: u8) -> Vec<u8> {
    let mut flipped = bytes.to_vec();
    if let Some(byte) = flipped.get_mut(index % bytes.len().max(1)) {
        *byte ^= 1 << (bit % 8);
    }
    flipped
}

/// Whether `result` is a format rejection whose message names `what`, so a test cannot pass for
/// another reason.
pub fn is_format_rejection_about(result: &Result<Notification, Rejection>, what: &str) -> bool {
    matches!(result, Err(Rejection::Format(message)) if message.contains(what))
}
