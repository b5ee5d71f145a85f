//! Standard Webhooks (the scheme Svix implements): our generic provider.
//!
//! The spec fixes the signature, `v1,<base64 HMAC-SHA256>` over `id.timestamp.body`, and leaves
//! the payload to the sender; ours is `{"type", "data": {"order_no", "amount", "currency",
//! "transaction_id"}}` with amounts in minor units, and `payment.refunded` adds `refund_id`, its
//! `amount` being the refund's.

use aws_lc_rs::hmac;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::common::{self, signed_header};
use super::examine::{Examination, Freshness, KeyCheck};
use super::provider::{Provider, RawRequest, Rejection, Reply, RetryReason};
use crate::config::StandardWebhooksConfig;
use crate::domain::ids::ChannelName;
use crate::domain::notification::{Notification, NotificationKind, Refund};

pub mod sign;

const ID_HEADERS: &[&str] = &["webhook-id", "svix-id"];
const TIMESTAMP_HEADERS: &[&str] = &["webhook-timestamp", "svix-timestamp"];
const SIGNATURE_HEADERS: &[&str] = &["webhook-signature", "svix-signature"];

pub struct StandardWebhooks {
    /// One per configured secret; several while one is being rolled.
    secrets: Vec<hmac::Key>,
    tolerance_secs: u64,
}

impl StandardWebhooks {
    pub fn new(cfg: &StandardWebhooksConfig) -> Result<Self, String> {
        if cfg.secrets.is_empty() {
            return Err("secrets: at least one signing secret is needed".to_owned());
        }
        let secrets = cfg
            .secrets
            .iter()
            .enumerate()
            .map(|(i, secret)| match key_bytes(secret.expose()) {
                None => Err(format!(
                    "secrets[{i}] is not whsec_ followed by non-empty base64"
                )),
                Some(key) if !KEY_BYTES.contains(&key.len()) => Err(format!(
                    "secrets[{i}] is a {}-byte key; Standard Webhooks secrets are {} to {} bytes",
                    key.len(),
                    KEY_BYTES.start(),
                    KEY_BYTES.end()
                )),
                Some(key) => Ok(hmac::Key::new(hmac::HMAC_SHA256, &key)),
            })
            .collect::<Result<_, _>>()?;
        Ok(StandardWebhooks {
            secrets,
            tolerance_secs: cfg.timestamp_tolerance_secs,
        })
    }

    /// Returns the message id, which the signature covers.
    fn check_signature<'a>(
        &self,
        request: &RawRequest<'a>,
        now: DateTime<Utc>,
    ) -> Result<&'a str, Rejection> {
        let (id, timestamp, signatures) = signature_headers(request)?;
        common::check_timestamp(timestamp, now, self.tolerance_secs, common::Window::Both)?;
        let content = signed_content(id, timestamp, request.body);
        common::check_hmac(&self.secrets, &content, &v1_signatures(signatures))?;
        Ok(id)
    }

    /// What verifying `request` tries (see [`Examination`]): the content a sender signs, and
    /// each configured secret by its index.
    pub fn examine(&self, request: &RawRequest<'_>) -> Examination {
        let (id, timestamp, signatures) = match signature_headers(request) {
            Ok(headers) => headers,
            Err(problem) => return Examination::unread(problem),
        };
        let content = signed_content(id, timestamp, request.body);
        let signatures = v1_signatures(signatures);
        let keys = self.secrets.iter().enumerate().map(|(i, secret)| {
            let result = common::check_hmac(std::slice::from_ref(secret), &content, &signatures);
            KeyCheck::new(format!("secrets[{i}]"), result)
        });
        Examination {
            keys: keys.collect(),
            signed_content: Some(content),
            named_key: None,
            freshness: Some(Freshness::new(
                timestamp,
                self.tolerance_secs,
                common::Window::Both,
            )),
            problem: None,
        }
    }
}

/// The message id, timestamp and signature list headers, under either family of names.
fn signature_headers<'a>(
    request: &RawRequest<'a>,
) -> Result<(&'a str, &'a str, &'a str), Rejection> {
    Ok((
        signed_header(request, ID_HEADERS)?,
        signed_header(request, TIMESTAMP_HEADERS)?,
        signed_header(request, SIGNATURE_HEADERS)?,
    ))
}

/// The key sizes the specification allows: a shorter key is guessable.
const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// The secret is `whsec_` and base64; the libraries also take it without the prefix.
fn key_bytes(secret: &str) -> Option<Vec<u8>> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    STANDARD.decode(encoded).ok().filter(|key| !key.is_empty())
}

/// The HMAC key a secret stands for.
fn signing_key(secret: &str) -> Option<hmac::Key> {
    key_bytes(secret).map(|key| hmac::Key::new(hmac::HMAC_SHA256, &key))
}

/// What a Standard Webhooks sender signs: `id.timestamp.body`. The verifier and the signer both
/// build it here.
fn signed_content(id: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    [id.as_bytes(), b".", timestamp.as_bytes(), b".", body].concat()
}

/// The space-separated `v1,<base64>` entries; other versions and malformed entries cannot
/// match, so they are dropped.
fn v1_signatures(header: &str) -> Vec<Vec<u8>> {
    header
        .split(' ')
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|encoded| STANDARD.decode(encoded).ok())
        .collect()
}

impl Provider for StandardWebhooks {
    fn name(&self) -> &'static str {
        "standard-webhooks"
    }

    fn verify(
        &self,
        channel: &ChannelName,
        request: &RawRequest<'_>,
        now: DateTime<Utc>,
    ) -> Result<Notification, Rejection> {
        let id = self.check_signature(request, now)?;
        let payload: Payload = common::from_json(request.body, "payload")?;
        let data = payload.data;
        let kind = match payload.event_type.as_str() {
            "payment.succeeded" => NotificationKind::Paid,
            "payment.closed" => NotificationKind::Closed,
            "payment.refunded" => NotificationKind::Refund(refund(&data)?),
            other => NotificationKind::Other(other.to_owned()),
        };
        // A refund's `amount` is the refund's own; the payment's is not stated.
        let amount = match kind {
            NotificationKind::Refund(_) => None,
            _ => data.amount.map(common::minor_units).transpose()?,
        };
        Ok(Notification {
            channel: channel.clone(),
            notification_id: id.to_owned(),
            order_no: data.order_no.as_deref().map(common::order_no).transpose()?,
            provider_trade_no: data.transaction_id,
            amount,
            currency: data.currency.as_deref().map(common::currency).transpose()?,
            kind,
            merchant_mismatch: None,
        })
    }

    fn signed_headers(&self) -> &'static [&'static str] {
        &[
            "webhook-id",
            "webhook-timestamp",
            "webhook-signature",
            "svix-id",
            "svix-timestamp",
            "svix-signature",
        ]
    }

    fn ack(&self) -> Reply {
        common::text_reply(204, "")
    }

    fn retry(&self, reason: RetryReason, message: &str) -> Reply {
        let status = match reason {
            RetryReason::Unverified => 401,
            RetryReason::BadRequest => 400,
            RetryReason::Unavailable => 503,
        };
        common::json_reply(status, &json!({ "error": message }))
    }
}

/// A `payment.refunded` message's refund: `amount` leaves the balance once per `refund_id`, so
/// both must be there.
fn refund(data: &PaymentData) -> Result<Refund, Rejection> {
    let refund_id = data
        .refund_id
        .clone()
        .filter(|id| !id.trim().is_empty())
        .ok_or_else(|| Rejection::Format("payment.refunded names no refund_id".to_owned()))?;
    let amount = data
        .amount
        .ok_or_else(|| Rejection::Format("payment.refunded states no amount".to_owned()))
        .and_then(common::minor_units)?;
    Ok(Refund::One { refund_id, amount })
}

/// Whether an HTTP answer stops a Standard Webhooks sender resending: any success status.
pub fn is_ack(status: u16) -> bool {
    common::is_success(status)
}

#[derive(Deserialize)]
struct Payload {
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    data: PaymentData,
}

#[derive(Default, Deserialize)]
struct PaymentData {
    order_no: Option<String>,
    /// A refund's id (`payment.refunded`).
    refund_id: Option<String>,
    /// Minor units: the payment's, or a refund's own.
    amount: Option<i64>,
    currency: Option<String>,
    transaction_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::config::Secret;
    use crate::domain::money::Currency;
    use crate::notify::testing::{self, Case};

    #[derive(Deserialize)]
    struct Vectors {
        secret: String,
        timestamp: i64,
        cases: Vec<Case>,
    }

    #[derive(Deserialize)]
    struct Published {
        #[serde(rename = "standard-webhooks-spec")]
        spec: SpecVector,
    }

    #[derive(Deserialize)]
    struct SpecVector {
        secret: String,
        id: String,
        timestamp: i64,
        body: String,
        signature: String,
    }

    fn config(secrets: &[&str]) -> StandardWebhooksConfig {
        StandardWebhooksConfig {
            secrets: secrets.iter().map(|s| Secret::new(*s)).collect(),
            currency: Currency::Cny,
            timestamp_tolerance_secs: 300,
        }
    }

    fn vectors() -> (StandardWebhooks, Vectors) {
        let v: Vectors = testing::load("standard-webhooks.json");
        (StandardWebhooks::new(&config(&[&v.secret])).unwrap(), v)
    }

    fn verify_at(
        hooks: &StandardWebhooks,
        headers: &[(String, String)],
        body: &[u8],
        now: i64,
    ) -> Result<Notification, Rejection> {
        hooks.verify(
            &testing::channel(),
            &testing::request(headers, body),
            testing::at(now),
        )
    }

    /// `body` signed with the vectors' secret at their timestamp.
    fn signed(v: &Vectors, body: &serde_json::Value) -> (Vec<(String, String)>, Vec<u8>) {
        let body = body.to_string().into_bytes();
        let signature = sign::signature(&v.secret, "msg_extra", v.timestamp, &body).unwrap();
        let headers = [
            ("webhook-id", "msg_extra".to_owned()),
            ("webhook-timestamp", v.timestamp.to_string()),
            ("webhook-signature", format!("v1a,ignored {signature}")),
        ];
        (headers.map(|(k, v)| (k.to_owned(), v)).to_vec(), body)
    }

    #[test]
    fn every_vector_verifies_or_is_rejected_as_its_file_says() {
        let (hooks, v) = vectors();
        assert_eq!(v.cases.len(), 3);
        for case in &v.cases {
            let result = verify_at(
                &hooks,
                &case.header_list(),
                case.body.as_bytes(),
                v.timestamp,
            );
            if case.is_valid() {
                let notification = result.unwrap_or_else(|e| panic!("{}: {e}", case.name));
                case.assert_pays(&notification, NotificationKind::Paid);
                assert_eq!(notification.currency, Some(Currency::Cny));
                assert!(notification.notification_id.starts_with("msg_"));
                assert!(notification.provider_trade_no.unwrap().starts_with("tx_"));
            } else {
                assert!(testing::is_signature_rejection(&result), "{}", case.name);
            }
        }
    }

    #[test]
    fn the_timestamp_holds_only_within_the_tolerance_either_way() {
        let (hooks, v) = vectors();
        let paid = &v.cases[0];
        let verify = |now| verify_at(&hooks, &paid.header_list(), paid.body.as_bytes(), now);
        assert!(verify(v.timestamp + 300).is_ok());
        assert!(verify(v.timestamp - 300).is_ok());
        assert!(testing::is_signature_rejection(&verify(v.timestamp + 301)));
        assert!(testing::is_signature_rejection(&verify(v.timestamp - 301)));
    }

    #[test]
    fn the_spec_vector_verifies() {
        let published: Published = testing::load("published.json");
        let spec = published.spec;
        let hooks = StandardWebhooks::new(&config(&[&spec.secret])).unwrap();
        let headers = [
            ("webhook-id".to_owned(), spec.id.clone()),
            ("webhook-timestamp".to_owned(), spec.timestamp.to_string()),
            ("webhook-signature".to_owned(), spec.signature.clone()),
        ];
        let request = testing::request(&headers, spec.body.as_bytes());
        assert_eq!(
            hooks.check_signature(&request, testing::at(spec.timestamp)),
            Ok(spec.id.as_str())
        );
        // Authentic, but not our payload.
        let result = verify_at(&hooks, &headers, spec.body.as_bytes(), spec.timestamp);
        assert!(testing::is_format_rejection_about(&result, "`type`"));
        let other_id = [("webhook-id".to_owned(), "msg_other".to_owned())];
        let headers: Vec<_> = other_id.iter().chain(&headers[1..]).cloned().collect();
        let request = testing::request(&headers, spec.body.as_bytes());
        assert!(hooks
            .check_signature(&request, testing::at(spec.timestamp))
            .is_err());
    }

    #[test]
    fn payload_types_decide_the_kind() {
        let (hooks, v) = vectors();
        let data =
            json!({ "order_no": "H1", "amount": 100, "currency": "JPY", "transaction_id": "tx_1" });
        let cases = [
            ("payment.succeeded", NotificationKind::Paid),
            ("payment.closed", NotificationKind::Closed),
            (
                "payment.pending",
                NotificationKind::Other("payment.pending".to_owned()),
            ),
        ];
        for (event_type, kind) in cases {
            let (headers, body) = signed(&v, &json!({ "type": event_type, "data": data }));
            let notification = verify_at(&hooks, &headers, &body, v.timestamp).unwrap();
            assert_eq!(notification.kind, kind);
            assert_eq!(notification.notification_id, "msg_extra");
            assert_eq!(notification.currency, Some(Currency::Jpy));
        }
    }

    #[test]
    fn a_refund_message_gives_back_its_own_amount_once_per_refund_id() {
        let (hooks, v) = vectors();
        let refunded = json!({ "type": "payment.refunded", "data": {
            "order_no": "H1", "refund_id": "R1", "amount": 250, "currency": "CNY",
            "transaction_id": "tx_1" } });
        let (headers, body) = signed(&v, &refunded);
        let n = verify_at(&hooks, &headers, &body, v.timestamp).unwrap();
        assert_eq!(
            n.kind,
            NotificationKind::Refund(Refund::One {
                refund_id: "R1".to_owned(),
                amount: crate::domain::money::AmountMinor::new(250).unwrap(),
            })
        );
        assert_eq!(n.amount, None, "the refund's amount is not the payment's");
        assert_eq!(n.order_no.unwrap().as_str(), "H1");
        assert_eq!(n.provider_trade_no.as_deref(), Some("tx_1"));
        assert_eq!(n.currency, Some(Currency::Cny));
        assert_eq!(n.notification_id, "msg_extra");
    }

    #[test]
    fn a_refund_without_its_id_or_amount_is_a_format_rejection() {
        let (hooks, v) = vectors();
        let data = json!({ "order_no": "H1", "refund_id": "R1", "amount": 250,
                           "currency": "CNY", "transaction_id": "tx_1" });
        let without = |field: &str| {
            let mut data = data.clone();
            data.as_object_mut().unwrap().remove(field);
            data
        };
        let with = |field: &str, value: serde_json::Value| {
            let mut data = data.clone();
            data[field] = value;
            data
        };
        for (data, complaint) in [
            (without("refund_id"), "refund_id"),
            (with("refund_id", json!(" ")), "refund_id"),
            (without("amount"), "amount"),
            (with("amount", json!(-250)), "negative"),
            (with("order_no", json!("H/1")), "order number"),
        ] {
            let (headers, body) = signed(&v, &json!({ "type": "payment.refunded", "data": data }));
            let result = verify_at(&hooks, &headers, &body, v.timestamp);
            assert!(
                testing::is_format_rejection_about(&result, complaint),
                "{result:?}"
            );
        }
    }

    #[test]
    fn malformed_payloads_under_a_good_signature_are_format_rejections() {
        let (hooks, v) = vectors();
        let succeeded = |data| json!({ "type": "payment.succeeded", "data": data });
        for (body, complaint) in [
            (
                succeeded(json!({ "order_no": "H1", "amount": -5 })),
                "negative",
            ),
            (
                succeeded(json!({ "order_no": "H1", "amount": "1.00" })),
                "invalid type",
            ),
            (succeeded(json!({ "order_no": "H/1" })), "order number"),
            (succeeded(json!({ "currency": "XBT" })), "currency"),
            (json!({ "data": {} }), "`type`"),
        ] {
            let (headers, body) = signed(&v, &body);
            let result = verify_at(&hooks, &headers, &body, v.timestamp);
            assert!(
                testing::is_format_rejection_about(&result, complaint),
                "{result:?}"
            );
        }
    }

    #[test]
    fn secrets_must_be_whsec_base64() {
        let (_, v) = vectors();
        let bare = v.secret.strip_prefix("whsec_").unwrap();
        assert!(StandardWebhooks::new(&config(&[bare])).is_ok());
        for bad in ["whsec_", "whsec_not base64!", ""] {
            let error = StandardWebhooks::new(&config(&[&v.secret, bad]))
                .err()
                .unwrap();
            assert!(error.contains("secrets[1]"), "{error}");
        }
        assert!(StandardWebhooks::new(&config(&[])).is_err());
    }

    #[test]
    fn secrets_of_fewer_than_24_or_more_than_64_bytes_are_refused() {
        use base64::engine::general_purpose::STANDARD;
        let secret = |bytes: usize| format!("whsec_{}", STANDARD.encode(vec![7u8; bytes]));
        for bytes in [24, 32, 64] {
            assert!(
                StandardWebhooks::new(&config(&[&secret(bytes)])).is_ok(),
                "{bytes}"
            );
        }
        for (weak, bytes) in [
            ("whsec_AAAA".to_owned(), 3),
            (secret(23), 23),
            (secret(65), 65),
        ] {
            let error = StandardWebhooks::new(&config(&[&weak])).err().unwrap();
            assert!(
                error.contains(&format!("secrets[0] is a {bytes}-byte key")),
                "{error}"
            );
            assert!(!error.contains(&weak), "the secret is never shown: {error}");
        }
    }

    #[test]
    fn failures_are_never_answered_with_a_success_status() {
        let (hooks, _) = vectors();
        assert!(is_ack(hooks.ack().status));
        for reason in [
            RetryReason::Unverified,
            RetryReason::BadRequest,
            RetryReason::Unavailable,
        ] {
            let answer = hooks.retry(reason, "x");
            assert!(answer.status >= 400 && !is_ack(answer.status));
            assert_eq!(answer.content_type, "application/json");
        }
    }

    proptest! {
        #[test]
        fn random_bodies_never_verify(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let (hooks, v) = vectors();
            let result = verify_at(&hooks, &v.cases[0].header_list(), &body, v.timestamp);
            prop_assert!(testing::is_signature_rejection(&result));
        }

        #[test]
        fn a_flipped_bit_anywhere_in_the_body_breaks_the_signature(index in any::<usize>(), bit in 0u8..8) {
            let (hooks, v) = vectors();
            let paid = &v.cases[0];
            let flipped = testing::flip_bit(paid.body.as_bytes(), index, bit);
            let result = verify_at(&hooks, &paid.header_list(), &flipped, v.timestamp);
            prop_assert!(testing::is_signature_rejection(&result));
        }

        #[test]
        fn random_headers_are_rejected_without_panicking(
            id in "\\PC{0,40}", timestamp in "\\PC{0,20}", signature in "\\PC{0,200}"
        ) {
            let (hooks, v) = vectors();
            let headers = [
                ("svix-id".to_owned(), id),
                ("svix-timestamp".to_owned(), timestamp),
                ("svix-signature".to_owned(), signature),
            ];
            prop_assert!(verify_at(&hooks, &headers, v.cases[0].body.as_bytes(), v.timestamp).is_err());
        }
    }
}
