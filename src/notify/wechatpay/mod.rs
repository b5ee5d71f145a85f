//! WeChat Pay API v3 notifications (回调通知): an RSA-signed JSON envelope around an
//! AES-256-GCM encrypted resource.
//!
//! The signature covers the raw body with the timestamp and nonce headers, and is checked before
//! the body is parsed; the resource is then decrypted with the merchant's APIv3 key.

use std::collections::BTreeMap;

use aws_lc_rs::aead;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::common::{self, shown, signed_header, RsaHash, RsaPublicKey};
use super::examine::{Examination, Freshness, KeyCheck};
use super::provider::{Provider, RawRequest, Rejection, Reply, RetryReason};
use crate::config::WechatPayConfig;
use crate::domain::ids::ChannelName;
use crate::domain::money::Currency;
use crate::domain::notification::{Notification, NotificationKind, Refund};

pub mod sign;

/// The only scheme API v3 signs notifications with.
const SIGNATURE_TYPE: &str = "WECHATPAY2-SHA256-RSA2048";

/// The only cipher API v3 encrypts resources with.
const RESOURCE_ALGORITHM: &str = "AEAD_AES_256_GCM";

/// WeChat sends deliberately broken signatures with this prefix to check that merchants verify.
const PROBE_PREFIX: &str = "WECHATPAY/SIGNTEST/";

pub struct WechatPay {
    mchid: String,
    appid: String,
    /// `LessSafeKey` because WeChat chooses the nonce; this key only ever opens.
    resource_key: aead::LessSafeKey,
    /// By `Wechatpay-Serial`: platform certificates and public keys side by side while WeChat
    /// migrates a merchant from one to the other.
    public_keys: BTreeMap<String, RsaPublicKey>,
    currency: Currency,
    tolerance_secs: u64,
}

impl WechatPay {
    pub fn new(cfg: &WechatPayConfig) -> Result<Self, String> {
        let apiv3_key = cfg.apiv3_key.expose().as_bytes();
        if apiv3_key.len() != 32 {
            return Err(format!(
                "apiv3_key must be 32 bytes, not {}",
                apiv3_key.len()
            ));
        }
        let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, apiv3_key)
            .map_err(|_| "apiv3_key is not an AES-256 key".to_owned())?;
        if cfg.public_keys.is_empty() {
            return Err("public_keys: at least one key is needed".to_owned());
        }
        let public_keys = cfg
            .public_keys
            .iter()
            .map(|(serial, key)| {
                RsaPublicKey::from_text(key.expose(), RsaHash::Sha256)
                    .map(|key| (serial.clone(), key))
                    .map_err(|e| format!("public_keys.{serial}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(WechatPay {
            mchid: cfg.mchid.clone(),
            appid: cfg.appid.clone(),
            resource_key: aead::LessSafeKey::new(unbound),
            public_keys,
            currency: cfg.currency,
            tolerance_secs: cfg.timestamp_tolerance_secs,
        })
    }

    fn check_signature(
        &self,
        request: &RawRequest<'_>,
        now: DateTime<Utc>,
    ) -> Result<(), Rejection> {
        let headers = SignatureHeaders::read(request)?;
        let key = self.public_keys.get(headers.serial).ok_or_else(|| {
            Rejection::Signature(format!(
                "unknown Wechatpay-Serial {}",
                shown(headers.serial)
            ))
        })?;
        common::check_timestamp(
            headers.timestamp,
            now,
            self.tolerance_secs,
            common::Window::Both,
        )?;
        let signature = common::signature_from_base64(headers.signature)?;
        let message = signed_message(headers.timestamp, headers.nonce, request.body);
        check_key(key, &message, &signature)
    }

    /// What verifying `request` tries (see [`Examination`]): the message WeChat Pay signs, and
    /// every configured key, of which only the one `Wechatpay-Serial` names counts.
    pub fn examine(&self, request: &RawRequest<'_>) -> Examination {
        let headers = match SignatureHeaders::read(request) {
            Ok(headers) => headers,
            Err(problem) => return Examination::unread(problem),
        };
        let message = signed_message(headers.timestamp, headers.nonce, request.body);
        let freshness =
            Freshness::new(headers.timestamp, self.tolerance_secs, common::Window::Both);
        let (keys, mut problem) = match common::signature_from_base64(headers.signature) {
            Ok(signature) => {
                let keys = self.public_keys.iter().map(|(serial, key)| KeyCheck {
                    key: serial.clone(),
                    chosen: serial == headers.serial,
                    result: check_key(key, &message, &signature),
                });
                (keys.collect(), None)
            }
            Err(problem) => (Vec::new(), Some(problem)),
        };
        if !self.public_keys.contains_key(headers.serial) {
            let serial = shown(headers.serial);
            problem = Some(Rejection::Signature(format!(
                "unknown Wechatpay-Serial {serial}"
            )));
        }
        Examination {
            signed_content: Some(message),
            keys,
            named_key: Some(headers.serial.to_owned()),
            freshness: Some(freshness),
            problem,
        }
    }

    /// Opens the resource. A resource that does not open under an authentic signature means the
    /// configured APIv3 key is wrong, which a retry after fixing it can still recover.
    fn decrypt(&self, resource: &EncryptedResource) -> Result<Vec<u8>, Rejection> {
        if resource.algorithm != RESOURCE_ALGORITHM {
            let algorithm = shown(&resource.algorithm);
            return Err(Rejection::Format(format!(
                "resource algorithm {algorithm} is not {RESOURCE_ALGORITHM}"
            )));
        }
        let nonce = aead::Nonce::try_assume_unique_for_key(resource.nonce.as_bytes())
            .map_err(|_| Rejection::Format("resource nonce is not 12 bytes".to_owned()))?;
        let aad = aead::Aad::from(resource.associated_data.as_deref().unwrap_or_default());
        let mut sealed = STANDARD
            .decode(&resource.ciphertext)
            .map_err(|_| Rejection::Format("resource ciphertext is not base64".to_owned()))?;
        let opened_len = self
            .resource_key
            .open_in_place(nonce, aad, &mut sealed)
            .map_err(|_| {
                Rejection::Signature("resource does not decrypt with apiv3_key".to_owned())
            })?
            .len();
        sealed.truncate(opened_len);
        Ok(sealed)
    }

    fn notification(
        &self,
        channel: &ChannelName,
        notification_id: String,
        kind: NotificationKind,
        resource: Resource,
    ) -> Result<Notification, Rejection> {
        let amount = resource.amount.as_ref();
        let currency = amount
            .and_then(|a| a.currency.as_deref())
            .map(common::currency)
            .transpose()?;
        Ok(Notification {
            channel: channel.clone(),
            notification_id,
            order_no: resource
                .out_trade_no
                .as_deref()
                .map(common::order_no)
                .transpose()?,
            provider_trade_no: resource.transaction_id.clone(),
            amount: amount
                .and_then(|a| a.total)
                .map(common::minor_units)
                .transpose()?,
            // Refund resources state amounts in fen without naming the currency.
            currency: Some(currency.unwrap_or(self.currency)),
            kind,
            merchant_mismatch: self.merchant_mismatch(&resource),
        })
    }

    /// Verifies an answer of WeChat Pay's API exactly as a notification: the `Wechatpay-*`
    /// headers over `timestamp\nnonce\nbody\n`, the key chosen by serial, the same tolerance.
    pub fn check_answer(
        &self,
        answer: &RawRequest<'_>,
        now: DateTime<Utc>,
    ) -> Result<(), Rejection> {
        self.check_signature(answer, now)
    }

    /// What a verified transaction, as the query API answers it in plain JSON, says: the
    /// notification a `TRANSACTION.SUCCESS` carrying it would make. Its id names the
    /// transaction and its state, so asking again and hearing the same is the same notification.
    pub fn transaction_notification(
        &self,
        channel: &ChannelName,
        body: &[u8],
    ) -> Result<Notification, Rejection> {
        let resource: Resource = common::from_json(body, "transaction")?;
        let state = resource.trade_state.clone().unwrap_or_default();
        let trade = resource
            .transaction_id
            .clone()
            .or(resource.out_trade_no.clone())
            .unwrap_or_default();
        let kind = transaction_kind(&resource, "TRANSACTION");
        self.notification(channel, format!("query:{trade}:{state}"), kind, resource)
    }

    /// Refund resources carry no `appid`, so it is compared only where present.
    fn merchant_mismatch(&self, resource: &Resource) -> Option<String> {
        let mchid = resource.mchid.as_deref();
        if mchid != Some(self.mchid.as_str()) {
            let shown_id = shown(mchid.unwrap_or_default());
            return Some(format!("mchid {shown_id} is not this channel's"));
        }
        match resource.appid.as_deref() {
            Some(appid) if appid != self.appid => {
                Some(format!("appid {} is not this channel's", shown(appid)))
            }
            _ => None,
        }
    }
}

impl Provider for WechatPay {
    fn name(&self) -> &'static str {
        "wechatpay"
    }

    fn verify(
        &self,
        channel: &ChannelName,
        request: &RawRequest<'_>,
        now: DateTime<Utc>,
    ) -> Result<Notification, Rejection> {
        self.check_signature(request, now)?;
        let envelope: Envelope = common::from_json(request.body, "notification")?;
        let plaintext = self.decrypt(&envelope.resource)?;
        let resource: Resource = common::from_json(&plaintext, "decrypted resource")?;
        let kind = kind(&envelope, &resource)?;
        self.notification(channel, envelope.id, kind, resource)
    }

    fn signed_headers(&self) -> &'static [&'static str] {
        &[
            "Wechatpay-Timestamp",
            "Wechatpay-Nonce",
            "Wechatpay-Signature",
            "Wechatpay-Serial",
            "Wechatpay-Signature-Type",
        ]
    }

    fn ack(&self) -> Reply {
        common::text_reply(204, "")
    }

    /// WeChat reads any 200 as delivered, error text or not, so failures are always 4xx/5xx.
    fn retry(&self, reason: RetryReason, message: &str) -> Reply {
        let status = match reason {
            RetryReason::Unverified => 401,
            RetryReason::BadRequest => 400,
            RetryReason::Unavailable => 500,
        };
        common::json_reply(status, &json!({ "code": "FAIL", "message": message }))
    }
}

/// The `Wechatpay-*` headers a signature is checked with.
struct SignatureHeaders<'a> {
    timestamp: &'a str,
    nonce: &'a str,
    signature: &'a str,
    serial: &'a str,
}

impl<'a> SignatureHeaders<'a> {
    /// The headers, present, of the one scheme API v3 signs with, and no probe.
    fn read(request: &RawRequest<'a>) -> Result<SignatureHeaders<'a>, Rejection> {
        let headers = SignatureHeaders {
            timestamp: signed_header(request, &["Wechatpay-Timestamp"])?,
            nonce: signed_header(request, &["Wechatpay-Nonce"])?,
            signature: signed_header(request, &["Wechatpay-Signature"])?,
            serial: signed_header(request, &["Wechatpay-Serial"])?,
        };
        if let Some(scheme) = request.header("Wechatpay-Signature-Type") {
            if scheme != SIGNATURE_TYPE {
                let shown_scheme = shown(scheme);
                return Err(Rejection::Signature(format!(
                    "Wechatpay-Signature-Type {shown_scheme} is not supported"
                )));
            }
        }
        if headers.signature.starts_with(PROBE_PREFIX) {
            return Err(Rejection::Signature("signature probe".to_owned()));
        }
        Ok(headers)
    }
}

fn check_key(key: &RsaPublicKey, message: &[u8], signature: &[u8]) -> Result<(), Rejection> {
    if key.verifies(message, signature) {
        Ok(())
    } else {
        Err(Rejection::Signature(
            "signature does not verify with the Wechatpay-Serial key".to_owned(),
        ))
    }
}

/// What WeChat Pay signs: `timestamp\nnonce\nbody\n`. The verifier and the signer both build it
/// here.
fn signed_message(timestamp: &str, nonce: &str, body: &[u8]) -> Vec<u8> {
    [
        timestamp.as_bytes(),
        b"\n",
        nonce.as_bytes(),
        b"\n",
        body,
        b"\n",
    ]
    .concat()
}

/// Whether an HTTP answer stops WeChat Pay resending: any success status.
pub fn is_ack(status: u16) -> bool {
    common::is_success(status)
}

/// Refund events follow their event type: `REFUND.SUCCESS` gives `amount.refund` back once per
/// `refund_id`; `REFUND.ABNORMAL` and `REFUND.CLOSED` moved nothing and are for a human, and a
/// refund event type WeChat has not defined moves nothing either. Payments follow `trade_state`;
/// a transaction in state `REFUND` has been refunded, which its refund events report.
fn kind(envelope: &Envelope, resource: &Resource) -> Result<NotificationKind, Rejection> {
    let event_type = envelope.event_type.as_str();
    Ok(match event_type {
        "REFUND.SUCCESS" => NotificationKind::Refund(refund(resource)?),
        "REFUND.ABNORMAL" => NotificationKind::RefundFailed("ABNORMAL".to_owned()),
        "REFUND.CLOSED" => NotificationKind::RefundFailed("CLOSED".to_owned()),
        other if other.starts_with("REFUND.") => NotificationKind::Other(other.to_owned()),
        _ => transaction_kind(resource, event_type),
    })
}

/// A transaction follows its `trade_state`; without one, it is named by `otherwise`.
fn transaction_kind(resource: &Resource, otherwise: &str) -> NotificationKind {
    match resource.trade_state.as_deref() {
        Some("SUCCESS") => NotificationKind::Paid,
        Some("CLOSED" | "REVOKED") => NotificationKind::Closed,
        Some(other) => NotificationKind::Other(other.to_owned()),
        None => NotificationKind::Other(otherwise.to_owned()),
    }
}

/// A successful refund: `amount.refund` under WeChat's `refund_id`, both required.
fn refund(resource: &Resource) -> Result<Refund, Rejection> {
    let refund_id = resource
        .refund_id
        .clone()
        .filter(|id| !id.trim().is_empty())
        .ok_or_else(|| Rejection::Format("refund names no refund_id".to_owned()))?;
    let amount = resource
        .amount
        .as_ref()
        .and_then(|a| a.refund)
        .ok_or_else(|| Rejection::Format("refund states no amount.refund".to_owned()))
        .and_then(common::minor_units)?;
    Ok(Refund::One { refund_id, amount })
}

/// The signed body.
#[derive(Deserialize)]
struct Envelope {
    id: String,
    event_type: String,
    resource: EncryptedResource,
}

#[derive(Deserialize)]
struct EncryptedResource {
    algorithm: String,
    ciphertext: String,
    nonce: String,
    associated_data: Option<String>,
}

/// A decrypted transaction or refund; fields one of them lacks are absent.
#[derive(Deserialize)]
struct Resource {
    mchid: Option<String>,
    appid: Option<String>,
    out_trade_no: Option<String>,
    transaction_id: Option<String>,
    trade_state: Option<String>,
    refund_id: Option<String>,
    amount: Option<ResourceAmount>,
}

#[derive(Deserialize)]
struct ResourceAmount {
    /// Fen (or the currency's minor unit).
    total: Option<i64>,
    /// A refund's own amount.
    refund: Option<i64>,
    currency: Option<String>,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::config::Secret;
    use crate::domain::money::AmountMinor;
    use crate::notify::testing::{self, Case};

    const SENT_AT: i64 = 1_795_375_716;

    #[derive(Deserialize)]
    struct Vectors {
        mchid: String,
        appid: String,
        apiv3_key: String,
        public_key_id: String,
        public_key_pem: String,
        cases: Vec<Case>,
    }

    #[derive(Deserialize)]
    struct Published {
        #[serde(rename = "wechatpay-aes-256-gcm")]
        aes: AesVector,
    }

    #[derive(Deserialize)]
    struct AesVector {
        key: String,
        nonce: String,
        associated_data: String,
        ciphertext: String,
        plaintext: String,
    }

    fn config(v: &Vectors, public_key: &str) -> WechatPayConfig {
        WechatPayConfig {
            mchid: v.mchid.clone(),
            appid: v.appid.clone(),
            apiv3_key: Secret::new(v.apiv3_key.clone()),
            public_keys: [(v.public_key_id.clone(), Secret::new(public_key))].into(),
            currency: Currency::Cny,
            timestamp_tolerance_secs: 300,
            merchant_private_key: None,
            merchant_serial_no: None,
            api_base: String::new(),
        }
    }

    fn vectors() -> (WechatPay, Vectors) {
        let v: Vectors = testing::load("wechatpay.json");
        let wechat = WechatPay::new(&config(&v, &v.public_key_pem)).unwrap();
        (wechat, v)
    }

    fn verify_at(
        wechat: &WechatPay,
        headers: &[(String, String)],
        body: &[u8],
        now: i64,
    ) -> Result<Notification, Rejection> {
        let request = testing::request(headers, body);
        wechat.verify(&testing::channel(), &request, testing::at(now))
    }

    fn expected_kind(case: &str) -> NotificationKind {
        match case {
            "closed" => NotificationKind::Closed,
            _ => NotificationKind::Paid,
        }
    }

    /// A notification carrying `resource`, encrypted and signed with the test keys.
    fn signed_notification(
        v: &Vectors,
        event_type: &str,
        resource: &serde_json::Value,
    ) -> (Vec<(String, String)>, Vec<u8>) {
        let nonce = "0123456789ab";
        let ciphertext = sign::encrypt(
            &v.apiv3_key,
            nonce,
            "transaction",
            resource.to_string().as_bytes(),
        )
        .unwrap();
        let body = json!({
            "id": "extra-notification",
            "event_type": event_type,
            "resource_type": "encrypt-resource",
            "resource": {
                "algorithm": "AEAD_AES_256_GCM",
                "ciphertext": ciphertext,
                "nonce": nonce,
                "associated_data": "transaction",
            },
        })
        .to_string();
        let timestamp = SENT_AT.to_string();
        let signer = testing::signer("wechatpay-test-private-key.pem");
        let signature = sign::signature(&signer, &timestamp, "NONCE", body.as_bytes());
        let headers = [
            ("Wechatpay-Timestamp", timestamp),
            ("Wechatpay-Nonce", "NONCE".to_owned()),
            ("Wechatpay-Signature", signature),
            ("Wechatpay-Serial", v.public_key_id.clone()),
        ];
        let headers = headers.map(|(k, v)| (k.to_owned(), v)).to_vec();
        (headers, body.into_bytes())
    }

    #[test]
    fn a_queried_transaction_is_held_to_the_same_checks_as_a_notified_one() {
        let (wechat, v) = vectors();
        let read = |transaction: serde_json::Value| {
            let body = transaction.to_string();
            wechat.transaction_notification(&testing::channel(), body.as_bytes())
        };
        let n = read(transaction(&v.mchid, &v.appid, "SUCCESS")).unwrap();
        assert_eq!(n.kind, NotificationKind::Paid);
        assert_eq!(n.amount, Some(AmountMinor::new(4321).unwrap()));
        assert_eq!(
            n.notification_id,
            "query:4200000000202611220000000099:SUCCESS"
        );
        assert_eq!(n.merchant_mismatch, None);
        let other = read(transaction("1900000999", &v.appid, "SUCCESS")).unwrap();
        assert!(other.merchant_mismatch.unwrap().contains("mchid"));
        let other = read(transaction(&v.mchid, "wx_other", "SUCCESS")).unwrap();
        assert!(other.merchant_mismatch.unwrap().contains("appid"));
        for (state, kind) in [
            ("CLOSED", NotificationKind::Closed),
            ("REVOKED", NotificationKind::Closed),
            ("NOTPAY", NotificationKind::Other("NOTPAY".to_owned())),
            ("PAYERROR", NotificationKind::Other("PAYERROR".to_owned())),
        ] {
            assert_eq!(
                read(transaction(&v.mchid, &v.appid, state)).unwrap().kind,
                kind
            );
        }
        let mut bad = transaction(&v.mchid, &v.appid, "SUCCESS");
        bad["amount"]["currency"] = "XXX".into();
        assert!(testing::is_format_rejection_about(&read(bad), "currency"));
        let result = wechat.transaction_notification(&testing::channel(), b"<html>");
        assert!(matches!(result, Err(Rejection::Format(_))), "{result:?}");
    }

    fn transaction(mchid: &str, appid: &str, trade_state: &str) -> serde_json::Value {
        json!({
            "mchid": mchid, "appid": appid, "out_trade_no": "W20261122000099",
            "transaction_id": "4200000000202611220000000099", "trade_state": trade_state,
            "amount": { "total": 4321, "payer_total": 4321, "currency": "CNY", "payer_currency": "CNY" },
        })
    }

    #[test]
    fn every_vector_verifies_or_is_rejected_as_its_file_says() {
        let (wechat, v) = vectors();
        assert_eq!(v.cases.len(), 6);
        for case in &v.cases {
            let result = verify_at(&wechat, &case.header_list(), case.body.as_bytes(), SENT_AT);
            if case.is_valid() {
                let notification = result.unwrap_or_else(|e| panic!("{}: {e}", case.name));
                case.assert_pays(&notification, expected_kind(&case.name));
                assert_eq!(notification.currency, Some(Currency::Cny));
                assert!(notification.provider_trade_no.is_some());
            } else {
                let expected = match case.name.as_str() {
                    "probe" => "probe",
                    "unknown-serial" => "unknown Wechatpay-Serial",
                    _ => "does not verify",
                };
                let rejected_for_that =
                    matches!(&result, Err(Rejection::Signature(m)) if m.contains(expected));
                assert!(rejected_for_that, "{}: {result:?}", case.name);
            }
        }
    }

    #[test]
    fn the_timestamp_holds_only_within_the_tolerance_either_way() {
        let (wechat, v) = vectors();
        let paid = &v.cases[0];
        let verify = |now| verify_at(&wechat, &paid.header_list(), paid.body.as_bytes(), now);
        assert!(verify(SENT_AT + 300).is_ok());
        assert!(verify(SENT_AT - 300).is_ok());
        assert!(testing::is_signature_rejection(&verify(SENT_AT + 301)));
        assert!(testing::is_signature_rejection(&verify(SENT_AT - 301)));
    }

    #[test]
    fn a_platform_certificate_verifies_like_its_public_key() {
        let (_, v) = vectors();
        let wechat = WechatPay::new(&config(&v, testing::WECHAT_TEST_CERTIFICATE)).unwrap();
        let paid = &v.cases[0];
        assert!(verify_at(&wechat, &paid.header_list(), paid.body.as_bytes(), SENT_AT).is_ok());
    }

    #[test]
    fn the_published_aes_gcm_vector_decrypts() {
        let published: Published = testing::load("published.json");
        let (_, v) = vectors();
        let mut cfg = config(&v, &v.public_key_pem);
        cfg.apiv3_key = Secret::new(published.aes.key.clone());
        let wechat = WechatPay::new(&cfg).unwrap();
        let mut resource = EncryptedResource {
            algorithm: "AEAD_AES_256_GCM".to_owned(),
            ciphertext: published.aes.ciphertext.clone(),
            nonce: published.aes.nonce.clone(),
            associated_data: Some(published.aes.associated_data.clone()),
        };
        let plaintext = wechat.decrypt(&resource).unwrap();
        assert_eq!(plaintext, published.aes.plaintext.as_bytes());
        resource.associated_data = Some("other".to_owned());
        assert!(matches!(
            wechat.decrypt(&resource),
            Err(Rejection::Signature(_))
        ));
        resource.nonce = "short".to_owned();
        assert!(matches!(
            wechat.decrypt(&resource),
            Err(Rejection::Format(_))
        ));
    }

    #[test]
    fn another_merchant_or_app_is_authentic_but_flagged() {
        let (wechat, v) = vectors();
        for (mchid, appid, field) in [
            ("1900000999", v.appid.as_str(), "mchid"),
            (v.mchid.as_str(), "wx_other", "appid"),
        ] {
            let (headers, body) = signed_notification(
                &v,
                "TRANSACTION.SUCCESS",
                &transaction(mchid, appid, "SUCCESS"),
            );
            let notification = verify_at(&wechat, &headers, &body, SENT_AT).unwrap();
            assert!(notification.merchant_mismatch.unwrap().contains(field));
        }
    }

    #[test]
    fn trade_state_and_refund_events_decide_the_kind() {
        let (wechat, v) = vectors();
        let refund = json!({
            "mchid": v.mchid, "out_trade_no": "W20261122000099", "transaction_id": "4200000099",
            "out_refund_no": "R1", "refund_id": "5000000099", "refund_status": "SUCCESS",
            "amount": { "total": 4321, "refund": 100, "payer_total": 4321, "payer_refund": 100 },
        });
        let cases = [
            (
                "TRANSACTION.SUCCESS",
                transaction(&v.mchid, &v.appid, "SUCCESS"),
                NotificationKind::Paid,
            ),
            (
                "TRANSACTION.SUCCESS",
                transaction(&v.mchid, &v.appid, "REVOKED"),
                NotificationKind::Closed,
            ),
            (
                "TRANSACTION.SUCCESS",
                transaction(&v.mchid, &v.appid, "REFUND"),
                NotificationKind::Other("REFUND".to_owned()),
            ),
            (
                "TRANSACTION.SUCCESS",
                transaction(&v.mchid, &v.appid, "NOTPAY"),
                NotificationKind::Other("NOTPAY".to_owned()),
            ),
            (
                "REFUND.SUCCESS",
                refund.clone(),
                NotificationKind::Refund(Refund::One {
                    refund_id: "5000000099".to_owned(),
                    amount: AmountMinor::new(100).unwrap(),
                }),
            ),
            (
                "REFUND.ABNORMAL",
                refund.clone(),
                NotificationKind::RefundFailed("ABNORMAL".to_owned()),
            ),
            (
                "REFUND.CLOSED",
                refund,
                NotificationKind::RefundFailed("CLOSED".to_owned()),
            ),
        ];
        for (event_type, resource, kind) in cases {
            let (headers, body) = signed_notification(&v, event_type, &resource);
            let notification = verify_at(&wechat, &headers, &body, SENT_AT).unwrap();
            assert_eq!(notification.kind, kind, "{resource}");
            assert_eq!(notification.amount.unwrap().get(), 4321);
            assert_eq!(notification.currency, Some(Currency::Cny));
            assert_eq!(notification.merchant_mismatch, None);
            assert_eq!(notification.notification_id, "extra-notification");
        }
    }

    /// A refund resource as WeChat Pay sends it: no `appid`, and amounts without a currency.
    fn refund_resource(mchid: &str) -> serde_json::Value {
        json!({
            "mchid": mchid, "out_trade_no": "W20261122000099", "transaction_id": "4200000099",
            "out_refund_no": "R1", "refund_id": "5000000099", "refund_status": "SUCCESS",
            "success_time": "2026-11-22T10:00:00+08:00", "user_received_account": "支付用户零钱",
            "amount": { "total": 4321, "refund": 100, "payer_total": 4321, "payer_refund": 100 },
        })
    }

    #[test]
    fn a_refund_names_its_order_its_trade_and_the_payments_amount() {
        let (wechat, v) = vectors();
        let (headers, body) = signed_notification(&v, "REFUND.SUCCESS", &refund_resource(&v.mchid));
        let n = verify_at(&wechat, &headers, &body, SENT_AT).unwrap();
        assert_eq!(n.order_no.unwrap().as_str(), "W20261122000099");
        assert_eq!(n.provider_trade_no.as_deref(), Some("4200000099"));
        assert_eq!(n.amount.unwrap().get(), 4321, "amount.total, the payment's");
        assert_eq!(n.merchant_mismatch, None);

        // Another merchant's refund is authentic but never ours.
        let (headers, body) =
            signed_notification(&v, "REFUND.SUCCESS", &refund_resource("1900000999"));
        let n = verify_at(&wechat, &headers, &body, SENT_AT).unwrap();
        assert!(n.kind.is_money_back());
        assert!(n.merchant_mismatch.unwrap().contains("mchid"));

        // A refund event type WeChat has not defined moves nothing.
        let (headers, body) = signed_notification(&v, "REFUND.UNKNOWN", &refund_resource(&v.mchid));
        let n = verify_at(&wechat, &headers, &body, SENT_AT).unwrap();
        assert_eq!(n.kind, NotificationKind::Other("REFUND.UNKNOWN".to_owned()));
    }

    #[test]
    fn a_successful_refund_without_its_id_or_amount_is_a_format_rejection() {
        let (wechat, v) = vectors();
        let mut no_id = refund_resource(&v.mchid);
        no_id.as_object_mut().unwrap().remove("refund_id");
        let mut blank_id = refund_resource(&v.mchid);
        blank_id["refund_id"] = json!("");
        let mut no_amount = refund_resource(&v.mchid);
        no_amount["amount"]
            .as_object_mut()
            .unwrap()
            .remove("refund");
        let mut negative = refund_resource(&v.mchid);
        negative["amount"]["refund"] = json!(-100);
        for (resource, complaint) in [
            (no_id, "refund_id"),
            (blank_id, "refund_id"),
            (no_amount, "amount.refund"),
            (negative, "negative"),
        ] {
            let (headers, body) = signed_notification(&v, "REFUND.SUCCESS", &resource);
            let result = verify_at(&wechat, &headers, &body, SENT_AT);
            assert!(
                testing::is_format_rejection_about(&result, complaint),
                "{result:?}"
            );
            // A failed refund moved nothing, so what it lacks does not matter.
            let (headers, body) = signed_notification(&v, "REFUND.ABNORMAL", &resource);
            let n = verify_at(&wechat, &headers, &body, SENT_AT).unwrap();
            assert_eq!(
                n.kind,
                NotificationKind::RefundFailed("ABNORMAL".to_owned())
            );
        }
    }

    #[test]
    fn malformed_resources_under_a_good_signature_are_format_rejections() {
        let (wechat, v) = vectors();
        let mut negative = transaction(&v.mchid, &v.appid, "SUCCESS");
        negative["amount"]["total"] = json!(-1);
        let mut unknown_currency = transaction(&v.mchid, &v.appid, "SUCCESS");
        unknown_currency["amount"]["currency"] = json!("XBT");
        let mut bad_order = transaction(&v.mchid, &v.appid, "SUCCESS");
        bad_order["out_trade_no"] = json!("W 1");
        for (resource, complaint) in [
            (negative, "negative"),
            (unknown_currency, "currency"),
            (bad_order, "order number"),
            (json!([1, 2]), "decrypted resource"),
        ] {
            let (headers, body) = signed_notification(&v, "TRANSACTION.SUCCESS", &resource);
            let result = verify_at(&wechat, &headers, &body, SENT_AT);
            assert!(
                testing::is_format_rejection_about(&result, complaint),
                "{result:?}"
            );
        }
    }

    #[test]
    fn a_missing_header_or_another_signature_scheme_is_a_signature_rejection() {
        let (wechat, v) = vectors();
        let paid = &v.cases[0];
        for name in [
            "Wechatpay-Timestamp",
            "Wechatpay-Nonce",
            "Wechatpay-Signature",
            "Wechatpay-Serial",
        ] {
            let mut headers = paid.header_list();
            headers.retain(|(k, _)| k != name);
            let result = verify_at(&wechat, &headers, paid.body.as_bytes(), SENT_AT);
            assert!(testing::is_signature_rejection(&result), "{name}");
        }
        let mut headers = paid.header_list();
        for (k, value) in &mut headers {
            if k == "Wechatpay-Signature-Type" {
                *value = "WECHATPAY2-SM2-WITH-SM3".to_owned();
            }
        }
        let result = verify_at(&wechat, &headers, paid.body.as_bytes(), SENT_AT);
        assert!(testing::is_signature_rejection(&result));
    }

    #[test]
    fn bad_keys_are_startup_errors_naming_the_problem() {
        let (_, v) = vectors();
        let mut short_key = config(&v, &v.public_key_pem);
        short_key.apiv3_key = Secret::new("too short");
        assert!(WechatPay::new(&short_key)
            .err()
            .unwrap()
            .contains("apiv3_key"));
        let bad_public_key = config(
            &v,
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
        );
        let error = WechatPay::new(&bad_public_key).err().unwrap();
        assert!(error.contains(&v.public_key_id), "{error}");
        let mut no_keys = config(&v, &v.public_key_pem);
        no_keys.public_keys.clear();
        assert!(WechatPay::new(&no_keys).is_err());
    }

    #[test]
    fn failures_are_never_answered_with_a_success_status() {
        let (wechat, _) = vectors();
        assert!(is_ack(wechat.ack().status));
        for (reason, status) in [
            (RetryReason::Unverified, 401),
            (RetryReason::BadRequest, 400),
            (RetryReason::Unavailable, 500),
        ] {
            let answer = wechat.retry(reason, "said \"no\"");
            assert_eq!(answer.status, status);
            assert!(!is_ack(answer.status));
            let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
            assert_eq!(body, json!({ "code": "FAIL", "message": "said \"no\"" }));
        }
        assert_eq!(wechat.signed_headers().len(), 5);
    }

    proptest! {
        #[test]
        fn random_bodies_never_verify(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let (wechat, v) = vectors();
            let result = verify_at(&wechat, &v.cases[0].header_list(), &body, SENT_AT);
            prop_assert!(testing::is_signature_rejection(&result));
        }

        #[test]
        fn a_flipped_bit_anywhere_in_the_body_breaks_the_signature(index in any::<usize>(), bit in 0u8..8) {
            let (wechat, v) = vectors();
            let paid = &v.cases[0];
            let flipped = testing::flip_bit(paid.body.as_bytes(), index, bit);
            let result = verify_at(&wechat, &paid.header_list(), &flipped, SENT_AT);
            prop_assert!(testing::is_signature_rejection(&result));
        }

        #[test]
        fn random_header_values_are_rejected_without_panicking(
            values in proptest::collection::vec("\\PC{0,80}", 5), serial_known in any::<bool>()
        ) {
            let (wechat, v) = vectors();
            let mut headers: Vec<(String, String)> = v.cases[0].header_list();
            for ((_, value), random) in headers.iter_mut().zip(values) {
                *value = random;
            }
            if serial_known {
                headers.insert(0, ("Wechatpay-Serial".to_owned(), v.public_key_id.clone()));
            }
            prop_assert!(verify_at(&wechat, &headers, v.cases[0].body.as_bytes(), SENT_AT).is_err());
        }
    }
}
