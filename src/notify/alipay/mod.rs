//! Alipay asynchronous notifications (异步通知): an RSA-signed form.
//!
//! The signature covers the decoded parameters rather than the raw body, so the form is split
//! before anything is verified; nothing in it is trusted until the signature holds. Alipay
//! resends until the answer body is exactly `success`.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use percent_encoding::percent_decode;

use super::common::{self, shown, RsaHash, RsaPublicKey};
use super::examine::{Examination, KeyCheck};
use super::provider::{Provider, RawRequest, Rejection, Reply, RetryReason};
use super::sign::RsaSigner;
use crate::config::{AlipayConfig, AlipaySignType};
use crate::domain::ids::ChannelName;
use crate::domain::money::{AmountMinor, Currency};
use crate::domain::notification::{Notification, NotificationKind, Refund};

pub mod sign;

/// The one key an Alipay channel verifies with, by its configuration name.
const KEY_NAME: &str = "alipay_public_key";

pub struct Alipay {
    app_id: String,
    seller_id: Option<String>,
    public_key: RsaPublicKey,
    sign_type: AlipaySignType,
    currency: Currency,
}

impl Alipay {
    pub fn new(cfg: &AlipayConfig) -> Result<Self, String> {
        let hash = match cfg.sign_type {
            AlipaySignType::Rsa2 => RsaHash::Sha256,
            AlipaySignType::Rsa => RsaHash::Sha1,
        };
        let public_key = RsaPublicKey::from_text(cfg.alipay_public_key.expose(), hash)
            .map_err(|e| format!("alipay_public_key: {e}"))?;
        Ok(Alipay {
            app_id: cfg.app_id.clone(),
            seller_id: cfg.seller_id.clone(),
            public_key,
            sign_type: cfg.sign_type,
            currency: cfg.currency,
        })
    }

    fn check_signature(&self, form: &Form) -> Result<(), Rejection> {
        let signature = self.signature_of(form)?;
        self.check_key(&signed_content(&form.params), &signature)
    }

    /// The form's decoded `sign`, once its `sign_type` is the channel's.
    fn signature_of(&self, form: &Form) -> Result<Vec<u8>, Rejection> {
        self.check_sign_type(form.text("sign_type")?)?;
        let sign = form
            .text("sign")?
            .ok_or_else(|| Rejection::Signature("no sign parameter".to_owned()))?;
        common::signature_from_base64(sign)
    }

    fn check_key(&self, content: &[u8], signature: &[u8]) -> Result<(), Rejection> {
        if self.public_key.verifies(content, signature) {
            Ok(())
        } else {
            Err(Rejection::Signature(
                "sign does not verify with alipay_public_key".to_owned(),
            ))
        }
    }

    /// What verifying `request` tries (see [`Examination`]): the content Alipay signs and the one
    /// key. The form's charset is not checked here: that is a format check, made after a
    /// signature can already be seen to hold.
    pub fn examine(&self, request: &RawRequest<'_>) -> Examination {
        let form = match Form::split(request.body) {
            Ok(form) => form,
            Err(problem) => return Examination::unread(problem),
        };
        let content = signed_content(&form.params);
        let (keys, problem) = match self.signature_of(&form) {
            Ok(signature) => {
                let result = self.check_key(&content, &signature);
                (vec![KeyCheck::new(KEY_NAME, result)], None)
            }
            Err(problem) => (Vec::new(), Some(problem)),
        };
        Examination {
            signed_content: Some(content),
            keys,
            named_key: None,
            freshness: None,
            problem,
        }
    }

    /// Whether the configured `alipay_public_key` is the public half of `private_key`: given the
    /// app's own private key, whether the app's public key was configured where Alipay's belongs.
    /// `None` when `private_key` cannot be read.
    pub fn public_key_pairs_with(&self, private_key: &str) -> Option<bool> {
        let pair = RsaSigner::from_text(private_key).ok()?;
        Some(self.public_key.is_public_half_of(&pair))
    }

    /// The notification a trade's fields make, whether a notification's form or a query answer
    /// stated them: the same amount, kind and merchant checks either way.
    fn trade_notification<F: TradeFields + ?Sized>(
        &self,
        channel: &ChannelName,
        notification_id: String,
        fields: &F,
        addressed: Addressed,
    ) -> Result<Notification, Rejection> {
        let amount = fields
            .text("total_amount")?
            .map(|text| {
                AmountMinor::parse(text, self.currency).map_err(|_| {
                    Rejection::Format(format!("total_amount {} is not an amount", shown(text)))
                })
            })
            .transpose()?;
        Ok(Notification {
            channel: channel.clone(),
            notification_id,
            order_no: fields
                .text("out_trade_no")?
                .map(common::order_no)
                .transpose()?,
            provider_trade_no: fields.text("trade_no")?.map(str::to_owned),
            amount,
            currency: Some(self.currency),
            kind: kind(fields, self.currency)?,
            merchant_mismatch: self.merchant_mismatch(fields, addressed)?,
        })
    }

    /// The signature proves Alipay sent it, not that it is for this app: apps can share
    /// Alipay's key. A notification must name our app; a query answer names none, because it
    /// answers our own signed request, so it is held to what it does name.
    fn merchant_mismatch<F: TradeFields + ?Sized>(
        &self,
        fields: &F,
        addressed: Addressed,
    ) -> Result<Option<String>, Rejection> {
        let differs = |stated: Option<&str>, ours: &str| match (stated, addressed) {
            (None, Addressed::ByRequest) => false,
            (stated, _) => stated != Some(ours),
        };
        let app_id = fields.text("app_id")?;
        if differs(app_id, &self.app_id) {
            let shown_id = shown(app_id.unwrap_or_default());
            return Ok(Some(format!("app_id {shown_id} is not this channel's")));
        }
        if let Some(ours) = &self.seller_id {
            let seller_id = fields.text("seller_id")?;
            if differs(seller_id, ours) {
                let shown_id = shown(seller_id.unwrap_or_default());
                return Ok(Some(format!("seller_id {shown_id} is not this channel's")));
            }
        }
        Ok(None)
    }

    /// Checks Alipay's `sign` over `content`: the exact bytes of a gateway answer's response
    /// object as sent, never a re-encoding of it.
    pub fn check_answer_signature(&self, content: &[u8], sign: &str) -> Result<(), Rejection> {
        let signature = common::signature_from_base64(sign)?;
        if self.public_key.verifies(content, &signature) {
            Ok(())
        } else {
            Err(Rejection::Signature(
                "answer's sign does not verify with alipay_public_key".to_owned(),
            ))
        }
    }

    /// What a verified `alipay.trade.query` answer says about its trade, as the notification
    /// that would have said it. Its id names the trade and the status, so asking again and
    /// hearing the same is the same notification.
    pub fn answer_notification(
        &self,
        channel: &ChannelName,
        answer: &Answer,
    ) -> Result<Notification, Rejection> {
        let trade = answer
            .text("trade_no")?
            .or(answer.text("out_trade_no")?)
            .unwrap_or_default();
        let status = answer.text("trade_status")?.unwrap_or_default();
        let id = format!("query:{trade}:{status}");
        self.trade_notification(channel, id, answer, Addressed::ByRequest)
    }
}

/// How a trade's fields are known to be for this app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Addressed {
    /// A notification names its app, and its seller: both must be ours.
    ByFields,
    /// A query answer replies to our own signed request, which named our app.
    ByRequest,
}

/// A trade's fields as Alipay states them: a notification's form or a query answer's object.
trait TradeFields {
    fn text(&self, key: &str) -> Result<Option<&str>, Rejection>;
}

impl TradeFields for Form<'_> {
    fn text(&self, key: &str) -> Result<Option<&str>, Rejection> {
        Form::text(self, key)
    }
}

/// The response object of a gateway answer (`alipay_trade_query_response`, ...), whose string
/// fields are read like a notification's form.
pub struct Answer {
    fields: serde_json::Map<String, serde_json::Value>,
}

impl Answer {
    /// Parses the response object's exact text; call it only once its signature held.
    pub fn parse(content: &[u8]) -> Result<Answer, Rejection> {
        common::from_json(content, "answer").map(|fields| Answer { fields })
    }

    /// A field Alipay writes as a string; any other JSON type there is a format error.
    pub fn text(&self, key: &str) -> Result<Option<&str>, Rejection> {
        match self.fields.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(text)) => Ok(Some(text)),
            Some(_) => Err(Rejection::Format(format!("{key} is not a string"))),
        }
    }
}

impl TradeFields for Answer {
    fn text(&self, key: &str) -> Result<Option<&str>, Rejection> {
        Answer::text(self, key)
    }
}

impl Provider for Alipay {
    fn name(&self) -> &'static str {
        "alipay"
    }

    /// Alipay defines no freshness check and resends for 25 hours, so `now` plays no part; a
    /// replay is harmless because `notify_id` stays the same.
    fn verify(
        &self,
        channel: &ChannelName,
        request: &RawRequest<'_>,
        _now: DateTime<Utc>,
    ) -> Result<Notification, Rejection> {
        let form = Form::parse(request.body)?;
        self.check_signature(&form)?;
        let notification_id = form
            .text("notify_id")?
            .ok_or_else(|| Rejection::Format("no notify_id".to_owned()))?
            .to_owned();
        self.trade_notification(channel, notification_id, &form, Addressed::ByFields)
    }

    fn signed_headers(&self) -> &'static [&'static str] {
        &[]
    }

    fn ack(&self) -> Reply {
        common::text_reply(200, ACK)
    }

    /// Alipay resends on any body but `success`; the status is for people: 400 when the request
    /// is not a notification we can verify, 500 only when payhook itself failed.
    fn retry(&self, reason: RetryReason, _message: &str) -> Reply {
        let status = match reason {
            RetryReason::Unverified | RetryReason::BadRequest => 400,
            RetryReason::Unavailable => 500,
        };
        common::text_reply(status, "fail")
    }
}

/// The one answer body that stops Alipay resending.
const ACK: &str = "success";

/// Whether an HTTP answer stops Alipay resending: a success status, and exactly `success`.
pub fn is_ack(status: u16, body: &[u8]) -> bool {
    common::is_success(status) && body == ACK.as_bytes()
}

/// Whether a body is an Alipay notification's form, for a request recorded without its provider:
/// a form with `notify_id` and `sign`. Alipay's key names are plain ASCII, so they are compared
/// undecoded.
pub fn looks_like_notification(body: &str) -> bool {
    if body.trim_start().starts_with(['{', '[']) {
        return false;
    }
    let has = |name: &str| {
        body.split('&')
            .any(|pair| pair.split_once('=').map_or(pair, |(key, _)| key) == name)
    };
    has("notify_id") && has("sign")
}

impl Alipay {
    /// The hash is the channel's (its key is parsed for it): `sign_type` is left out of what
    /// Alipay signs, so a request that names another scheme is refused rather than obeyed. Some
    /// notifications omit it.
    fn check_sign_type(&self, sign_type: Option<&str>) -> Result<(), Rejection> {
        match sign_type.filter(|named| *named != self.sign_type.as_str()) {
            Some(named) => Err(Rejection::Signature(format!(
                "sign_type {} is not this channel's {}",
                shown(named),
                self.sign_type.as_str()
            ))),
            None => Ok(()),
        }
    }
}

/// A refund arrives as the trade's status with the cumulative `refund_fee` added; it must never
/// read as a second payment.
fn kind<F: TradeFields + ?Sized>(
    form: &F,
    currency: Currency,
) -> Result<NotificationKind, Rejection> {
    // Only a positive fee is a refund: some notifications carry `refund_fee=0.00`.
    let refunded = form
        .text("refund_fee")?
        .filter(|fee| !fee.is_empty())
        .map(|fee| {
            AmountMinor::parse(fee, currency).map_err(|_| {
                Rejection::Format(format!("refund_fee {} is not an amount", shown(fee)))
            })
        })
        .transpose()?
        .filter(|fee| *fee != AmountMinor::ZERO);
    let status = form.text("trade_status")?.unwrap_or_default();
    Ok(match (status, refunded) {
        ("TRADE_SUCCESS" | "TRADE_FINISHED" | "TRADE_CLOSED", Some(total)) => {
            NotificationKind::Refund(Refund::UpTo {
                total,
                refund_id: form
                    .text("out_biz_no")?
                    .filter(|id| !id.is_empty())
                    .map(str::to_owned),
            })
        }
        ("TRADE_SUCCESS" | "TRADE_FINISHED", None) => NotificationKind::Paid,
        ("TRADE_CLOSED", None) => NotificationKind::Closed,
        (other, _) => NotificationKind::Other(other.to_owned()),
    })
}

/// A form body decoded exactly once into bytes, sorted by key, each key present once.
///
/// Values stay bytes because the signature covers them in the notification's own charset: a
/// `gbk` notification verifies over its GBK bytes as sent. `form_urlencoded` would decode to
/// UTF-8 lossily, hiding malformed input and losing those bytes, so the pairs are split here and
/// only the percent-decoding is left to `percent_encoding`.
///
/// A key or value with nothing to decode borrows the body, as most of Alipay's do.
struct Form<'a> {
    params: Vec<Param<'a>>,
}

/// A decoded key and value.
type Param<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>);

impl<'a> Form<'a> {
    fn parse(body: &'a [u8]) -> Result<Form<'a>, Rejection> {
        let form = Form::split(body)?;
        form.check_charset()?;
        Ok(form)
    }

    /// The form's parameters, decoded once and sorted; its charset is left unchecked.
    fn split(body: &'a [u8]) -> Result<Form<'a>, Rejection> {
        let mut params: Vec<Param<'a>> =
            Vec::with_capacity(body.iter().filter(|&&b| b == b'&').count() + 1);
        params.extend(raw_pairs(body).map(|(key, value)| (form_decode(key), form_decode(value))));
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let repeated = params.windows(2).find_map(|pair| match pair {
            [a, b] if a.0 == b.0 => Some(String::from_utf8_lossy(&a.0)),
            _ => None,
        });
        if let Some(key) = repeated {
            return Err(Rejection::Format(format!(
                "parameter {} appears more than once",
                shown(&key)
            )));
        }
        Ok(Form { params })
    }

    /// A UTF-8 notification must decode as UTF-8 throughout; GBK ones are verified as bytes and
    /// only their ASCII fields are read.
    fn check_charset(&self) -> Result<(), Rejection> {
        let charset = self.text("charset")?.unwrap_or("utf-8");
        if charset.eq_ignore_ascii_case("gbk") || charset.eq_ignore_ascii_case("gb2312") {
            return Ok(());
        }
        if !charset.eq_ignore_ascii_case("utf-8") {
            return Err(Rejection::Format(format!(
                "charset {} is not supported",
                shown(charset)
            )));
        }
        let utf8 = |bytes: &[u8]| std::str::from_utf8(bytes).is_ok();
        if self.params.iter().all(|(k, v)| utf8(k) && utf8(v)) {
            Ok(())
        } else {
            Err(Rejection::Format("form is not valid UTF-8".to_owned()))
        }
    }

    fn get(&self, key: &str) -> Option<&[u8]> {
        let index = self
            .params
            .binary_search_by(|(k, _)| k.as_ref().cmp(key.as_bytes()))
            .ok()?;
        self.params.get(index).map(|(_, value)| value.as_ref())
    }

    fn text(&self, key: &str) -> Result<Option<&str>, Rejection> {
        self.get(key)
            .map(|value| {
                std::str::from_utf8(value)
                    .map_err(|_| Rejection::Format(format!("{key} is not UTF-8")))
            })
            .transpose()
    }
}

/// What Alipay signs: every parameter but `sign` and `sign_type`, empty ones included, sorted by
/// key and joined as `k=v` with `&`. The verifier and the signer both build it here.
fn signed_content<K: AsRef<[u8]>, V: AsRef<[u8]>>(params: &[(K, V)]) -> Vec<u8> {
    sorted_pairs(params, |key, _| key != b"sign" && key != b"sign_type")
}

/// What an app signs in a request to Alipay's gateway: as a notification, but `sign_type` is
/// signed and empty values are left out (Alipay's "自行实现签名" and its SDKs).
pub fn request_content<K: AsRef<[u8]>, V: AsRef<[u8]>>(params: &[(K, V)]) -> Vec<u8> {
    sorted_pairs(params, |key, value| key != b"sign" && !value.is_empty())
}

/// The parameters `keep` keeps, sorted by key and joined as `k=v` with `&`.
fn sorted_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    params: &[(K, V)],
    keep: impl Fn(&[u8], &[u8]) -> bool,
) -> Vec<u8> {
    let mut signed: Vec<(&[u8], &[u8])> = params
        .iter()
        .map(|(key, value)| (key.as_ref(), value.as_ref()))
        .filter(|(key, value)| keep(key, value))
        .collect();
    signed.sort_by_key(|(key, _)| *key);
    let length = signed
        .iter()
        .map(|(key, value)| key.len() + value.len() + 2);
    let mut content = Vec::with_capacity(length.sum());
    for (key, value) in signed {
        if !content.is_empty() {
            content.push(b'&');
        }
        content.extend_from_slice(key);
        content.push(b'=');
        content.extend_from_slice(value);
    }
    content
}

/// A form body's `key=value` pairs as sent, not decoded; empty pairs are skipped.
pub fn raw_pairs(body: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    body.split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let mut parts = pair.splitn(2, |&b| b == b'=');
            let key = parts.next().unwrap_or_default();
            (key, parts.next().unwrap_or_default())
        })
}

/// Form decoding: `+` is a space, then percent-escapes are bytes. Borrows `encoded` when it has
/// neither.
pub fn form_decode(encoded: &[u8]) -> Cow<'_, [u8]> {
    if !encoded.contains(&b'+') {
        if !encoded.contains(&b'%') {
            return Cow::Borrowed(encoded);
        }
        return percent_decode(encoded).into();
    }
    let spaced: Vec<u8> = encoded
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    Cow::Owned(percent_decode(&spaced).collect())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde::Deserialize;

    use super::*;
    use crate::config::{AlipaySignType, Secret};
    use crate::notify::testing::{self, Case};

    #[derive(Deserialize)]
    struct Vectors {
        alipay_public_key: String,
        app_id: String,
        seller_id: String,
        cases: Vec<Case>,
    }

    #[derive(Deserialize)]
    struct RealVector {
        alipay_public_key: String,
        app_id: String,
        seller_id: String,
        body: String,
        out_trade_no: String,
        amount_minor: i64,
    }

    fn config(public_key: &str, app_id: &str, seller_id: &str) -> AlipayConfig {
        AlipayConfig {
            app_id: app_id.to_owned(),
            seller_id: Some(seller_id.to_owned()),
            alipay_public_key: Secret::new(public_key),
            sign_type: AlipaySignType::Rsa2,
            currency: Currency::Cny,
            app_private_key: None,
            gateway_url: String::new(),
        }
    }

    fn vectors() -> (Alipay, Vectors) {
        let v: Vectors = testing::load("alipay.json");
        let alipay = Alipay::new(&config(&v.alipay_public_key, &v.app_id, &v.seller_id)).unwrap();
        (alipay, v)
    }

    /// The vectors' keys on a channel set up for the legacy scheme.
    fn legacy() -> Alipay {
        let v: Vectors = testing::load("alipay.json");
        let mut cfg = config(&v.alipay_public_key, &v.app_id, &v.seller_id);
        cfg.sign_type = AlipaySignType::Rsa;
        Alipay::new(&cfg).unwrap()
    }

    fn verify(alipay: &Alipay, body: &[u8]) -> Result<Notification, Rejection> {
        let request = testing::request(&[], body);
        alipay.verify(&testing::channel(), &request, testing::at(1_795_375_716))
    }

    /// What each case of `alipay.json` means, by name.
    fn expected_kind(case: &str) -> NotificationKind {
        match case {
            "closed" => NotificationKind::Closed,
            "partial-refund" => NotificationKind::Refund(Refund::UpTo {
                total: AmountMinor::new(300).unwrap(),
                refund_id: Some("RF1".to_owned()),
            }),
            _ => NotificationKind::Paid,
        }
    }

    /// A form signed (RSA2) with the test key, for cases the vector file does not hold.
    fn signed_form(params: &[(&str, &[u8])], sign_type: Option<&str>) -> Vec<u8> {
        let key = testing::signer("alipay-test-private-key.pem");
        let sign = sign::rsa2(params, &key);
        let mut fields: Vec<(&str, &[u8])> = params.to_vec();
        fields.push(("sign", sign.as_bytes()));
        if let Some(sign_type) = sign_type {
            fields.push(("sign_type", sign_type.as_bytes()));
        }
        sign::form_encode(&fields).into_bytes()
    }

    /// Form fields that add to or replace a test trade's, as raw (unencoded) bytes.
    type Fields<'a> = &'a [(&'static str, &'a [u8])];

    fn trade(status: &str, extra: Fields<'_>) -> Vec<(&'static str, Vec<u8>)> {
        let mut params: Vec<(&str, Vec<u8>)> = vec![
            ("notify_id", b"Nextra".to_vec()),
            ("app_id", b"2021000000000001".to_vec()),
            ("seller_id", b"2088000000000001".to_vec()),
            ("out_trade_no", b"A20261122000099".to_vec()),
            ("trade_no", b"2026112222001800000000000099".to_vec()),
            ("total_amount", b"12.34".to_vec()),
            ("trade_status", status.as_bytes().to_vec()),
        ];
        params.retain(|(key, _)| extra.iter().all(|(replaced, _)| replaced != key));
        params.extend(extra.iter().map(|(k, v)| (*k, v.to_vec())));
        params
    }

    fn signed_trade(params: &[(&str, Vec<u8>)], sign_type: Option<&str>) -> Vec<u8> {
        let borrowed: Vec<(&str, &[u8])> = params.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        signed_form(&borrowed, sign_type)
    }

    #[test]
    fn every_vector_verifies_or_is_rejected_as_its_file_says() {
        let (alipay, vectors) = vectors();
        let legacy = legacy();
        assert_eq!(vectors.cases.len(), 8);
        for case in &vectors.cases {
            let channel = match case.body.ends_with("&sign_type=RSA") {
                true => &legacy,
                false => &alipay,
            };
            let result = verify(channel, case.body.as_bytes());
            if case.is_valid() {
                let notification = result.unwrap_or_else(|e| panic!("{}: {e}", case.name));
                case.assert_pays(&notification, expected_kind(&case.name));
                assert_eq!(notification.currency, Some(Currency::Cny));
                assert!(notification.notification_id.starts_with('N'));
            } else {
                assert!(testing::is_signature_rejection(&result), "{}", case.name);
            }
        }
    }

    #[test]
    fn the_real_2019_notification_verifies_with_or_without_sign_type() {
        let v: RealVector = testing::load("alipay-real.json");
        let alipay = Alipay::new(&config(&v.alipay_public_key, &v.app_id, &v.seller_id)).unwrap();
        for body in [v.body.clone(), format!("{}&sign_type=RSA2", v.body)] {
            let notification = verify(&alipay, body.as_bytes()).unwrap();
            assert_eq!(
                notification.order_no.unwrap().as_str(),
                v.out_trade_no.as_str()
            );
            assert_eq!(notification.amount.unwrap().get(), v.amount_minor);
            assert_eq!(notification.kind, NotificationKind::Paid);
            assert_eq!(
                notification.notification_id,
                "2019081500222155624068450559358070"
            );
            assert_eq!(
                notification.provider_trade_no.as_deref(),
                Some("2019081522001468450512505578")
            );
        }
        let sha1 = format!("{}&sign_type=RSA", v.body);
        assert!(testing::is_signature_rejection(&verify(
            &alipay,
            sha1.as_bytes()
        )));
        let test_keys = vectors().0;
        assert!(testing::is_signature_rejection(&verify(
            &test_keys,
            v.body.as_bytes()
        )));
    }

    #[test]
    fn a_notification_for_another_app_or_seller_is_authentic_but_flagged() {
        let (_, v) = vectors();
        let paid = &v.cases[0];
        let other_app =
            Alipay::new(&config(&v.alipay_public_key, "2021999", &v.seller_id)).unwrap();
        let mismatch = verify(&other_app, paid.body.as_bytes())
            .unwrap()
            .merchant_mismatch;
        assert!(mismatch.unwrap().contains("app_id"));
        let other_seller =
            Alipay::new(&config(&v.alipay_public_key, &v.app_id, "2088999")).unwrap();
        let mismatch = verify(&other_seller, paid.body.as_bytes())
            .unwrap()
            .merchant_mismatch;
        assert!(mismatch.unwrap().contains("seller_id"));
        let mut any_seller = config(&v.alipay_public_key, &v.app_id, "");
        any_seller.seller_id = None;
        let any_seller = Alipay::new(&any_seller).unwrap();
        assert_eq!(
            verify(&any_seller, paid.body.as_bytes())
                .unwrap()
                .merchant_mismatch,
            None
        );
    }

    #[test]
    fn a_query_answer_is_held_to_the_same_amount_and_merchant_checks_as_a_notification() {
        let (alipay, _) = vectors();
        let answer = |extra: &str| {
            let text = format!(
                r#"{{"code":"10000","msg":"Success","out_trade_no":"A1","trade_no":"T1","total_amount":"12.34","trade_status":"TRADE_SUCCESS"{extra}}}"#
            );
            alipay.answer_notification(
                &testing::channel(),
                &Answer::parse(text.as_bytes()).unwrap(),
            )
        };
        let n = answer("").unwrap();
        assert_eq!(n.kind, NotificationKind::Paid);
        assert_eq!(n.amount, Some(AmountMinor::new(1234).unwrap()));
        assert_eq!(n.notification_id, "query:T1:TRADE_SUCCESS");
        // It answers our own signed request, so naming no app is not a mismatch; naming
        // another app or seller is.
        assert_eq!(n.merchant_mismatch, None);
        let other_app = answer(r#","app_id":"2021999""#).unwrap().merchant_mismatch;
        assert!(other_app.unwrap().contains("app_id"));
        let other_seller = answer(r#","seller_id":"2088999""#)
            .unwrap()
            .merchant_mismatch;
        assert!(other_seller.unwrap().contains("seller_id"));
        let ours = answer(r#","app_id":"2021000000000001","seller_id":"2088000000000001""#);
        assert_eq!(ours.unwrap().merchant_mismatch, None);
        // A notification that names no app is still flagged.
        let mut no_app = trade("TRADE_SUCCESS", &[]);
        no_app.retain(|(k, _)| *k != "app_id");
        let n = verify(&alipay, &signed_trade(&no_app, None)).unwrap();
        assert!(n.merchant_mismatch.unwrap().contains("app_id"));
        for (extra, field) in [
            (r#","total_amount":"1.234""#, "total_amount"),
            (r#","total_amount":12.34"#, "total_amount"),
        ] {
            let text = format!(
                r#"{{"code":"10000","out_trade_no":"A1","trade_no":"T1","trade_status":"TRADE_SUCCESS"{extra}}}"#
            );
            let result = alipay.answer_notification(
                &testing::channel(),
                &Answer::parse(text.as_bytes()).unwrap(),
            );
            assert!(
                testing::is_format_rejection_about(&result, field),
                "{extra}: {result:?}"
            );
        }
    }

    #[test]
    fn a_repeated_parameter_is_a_format_rejection_even_when_signed() {
        let (alipay, v) = vectors();
        let repeated = format!("{}&out_trade_no=A20261122000001", v.cases[0].body);
        let result = verify(&alipay, repeated.as_bytes());
        assert!(testing::is_format_rejection_about(
            &result,
            "more than once"
        ));
        let mut params = trade("TRADE_SUCCESS", &[]);
        params.push(("out_trade_no", b"B1".to_vec()));
        let result = verify(&alipay, &signed_trade(&params, Some("RSA2")));
        assert!(testing::is_format_rejection_about(&result, "out_trade_no"));
    }

    #[test]
    fn trade_status_and_refund_fee_decide_the_kind() {
        let (alipay, _) = vectors();
        let up_to = |total: i64, refund_id: Option<&str>| {
            NotificationKind::Refund(Refund::UpTo {
                total: AmountMinor::new(total).unwrap(),
                refund_id: refund_id.map(str::to_owned),
            })
        };
        let cases: [(&str, Fields, NotificationKind); 8] = [
            (
                "TRADE_CLOSED",
                &[("refund_fee", b"12.34"), ("out_biz_no", b"RF9")],
                up_to(1234, Some("RF9")),
            ),
            (
                "TRADE_SUCCESS",
                &[("refund_fee", b"2.00"), ("out_biz_no", b"")],
                up_to(200, None),
            ),
            (
                "TRADE_FINISHED",
                &[("refund_fee", b"1.00")],
                up_to(100, None),
            ),
            (
                "TRADE_SUCCESS",
                &[("refund_fee", b"0.00")],
                NotificationKind::Paid,
            ),
            ("TRADE_SUCCESS", &[("refund_fee", b"0.5")], up_to(50, None)),
            (
                "TRADE_SUCCESS",
                &[("refund_fee", b"")],
                NotificationKind::Paid,
            ),
            ("TRADE_CLOSED", &[], NotificationKind::Closed),
            (
                "WAIT_BUYER_PAY",
                &[],
                NotificationKind::Other("WAIT_BUYER_PAY".to_owned()),
            ),
        ];
        for (status, extra, kind) in cases {
            let body = signed_trade(&trade(status, extra), None);
            let notification = verify(&alipay, &body).unwrap();
            assert_eq!(notification.kind, kind, "{status} {extra:?}");
            assert_eq!(notification.amount.unwrap().get(), 1234);
        }
    }

    #[test]
    fn a_refund_names_its_order_and_trade_and_another_apps_is_flagged() {
        let (alipay, v) = vectors();
        let refund = trade(
            "TRADE_SUCCESS",
            &[
                ("refund_fee", b"3.00"),
                ("out_biz_no", b"RF1"),
                ("gmt_refund", b"2026-11-22 10:00:00.123"),
            ],
        );
        let n = verify(&alipay, &signed_trade(&refund, Some("RSA2"))).unwrap();
        assert!(n.kind.is_money_back());
        assert_eq!(n.order_no.unwrap().as_str(), "A20261122000099");
        assert_eq!(
            n.provider_trade_no.as_deref(),
            Some("2026112222001800000000000099")
        );
        assert_eq!(n.amount.unwrap().get(), 1234, "total_amount, the payment's");
        assert_eq!(n.merchant_mismatch, None);
        let other_app =
            Alipay::new(&config(&v.alipay_public_key, "2021999", &v.seller_id)).unwrap();
        let n = verify(&other_app, &signed_trade(&refund, Some("RSA2"))).unwrap();
        assert!(n.kind.is_money_back());
        assert!(n.merchant_mismatch.unwrap().contains("app_id"));
    }

    #[test]
    fn a_gbk_notification_verifies_over_its_own_bytes() {
        let (alipay, _) = vectors();
        // "充值" in GBK.
        let subject: &[u8] = &[0xB3, 0xE4, 0xD6, 0xB5];
        let gbk = trade(
            "TRADE_SUCCESS",
            &[("charset", b"gbk"), ("subject", subject)],
        );
        let notification = verify(&alipay, &signed_trade(&gbk, Some("RSA2"))).unwrap();
        assert_eq!(notification.kind, NotificationKind::Paid);
        let mislabelled = trade(
            "TRADE_SUCCESS",
            &[("charset", b"utf-8"), ("subject", subject)],
        );
        let result = verify(&alipay, &signed_trade(&mislabelled, Some("RSA2")));
        assert!(testing::is_format_rejection_about(&result, "UTF-8"));
        let latin1 = trade("TRADE_SUCCESS", &[("charset", b"iso-8859-1")]);
        let result = verify(&alipay, &signed_trade(&latin1, Some("RSA2")));
        assert!(testing::is_format_rejection_about(&result, "charset"));
    }

    #[test]
    fn malformed_fields_of_an_authentic_notification_are_format_rejections() {
        let (alipay, _) = vectors();
        let bad_amount = signed_trade(&trade("TRADE_SUCCESS", &[("total_amount", b"1.234")]), None);
        let result = verify(&alipay, &bad_amount);
        assert!(testing::is_format_rejection_about(&result, "total_amount"));
        let mut no_notify_id = trade("TRADE_SUCCESS", &[]);
        no_notify_id.retain(|(k, _)| *k != "notify_id");
        let result = verify(&alipay, &signed_trade(&no_notify_id, None));
        assert!(testing::is_format_rejection_about(&result, "notify_id"));
    }

    #[test]
    fn the_channel_not_the_request_chooses_the_hash() {
        let (rsa2, v) = vectors();
        let rsa = legacy();
        let sha1 = v.cases.iter().find(|c| c.body.ends_with("&sign_type=RSA"));
        let sha1 = sha1.expect("a legacy RSA case").body.as_bytes();
        let sha256 = v.cases[0].body.as_bytes();
        assert!(verify(&rsa, sha1).is_ok());
        assert!(verify(&rsa2, sha256).is_ok());
        // Each signature is genuine, but names the scheme the channel does not use.
        for (channel, body) in [(&rsa2, sha1), (&rsa, sha256)] {
            let result = verify(channel, body);
            assert!(testing::is_signature_rejection(&result), "{result:?}");
            let Err(Rejection::Signature(why)) = result else {
                unreachable!()
            };
            assert!(why.contains("not this channel's"), "{why}");
        }
        // Without `sign_type` the channel's scheme applies.
        let bare = |body: &[u8]| {
            let text = std::str::from_utf8(body).unwrap();
            text.split('&')
                .filter(|pair| !pair.starts_with("sign_type="))
                .collect::<Vec<_>>()
                .join("&")
        };
        assert!(verify(&rsa, bare(sha1).as_bytes()).is_ok());
        assert!(testing::is_signature_rejection(&verify(
            &rsa2,
            bare(sha1).as_bytes()
        )));
    }

    #[test]
    fn a_missing_sign_or_unknown_sign_type_is_a_signature_rejection() {
        let (alipay, v) = vectors();
        let body = &v.cases[0].body;
        let without_sign: Vec<&str> = body
            .split('&')
            .filter(|p| !p.starts_with("sign="))
            .collect();
        let result = verify(&alipay, without_sign.join("&").as_bytes());
        assert!(testing::is_signature_rejection(&result));
        let md5 = body.replace("sign_type=RSA2", "sign_type=MD5");
        assert!(testing::is_signature_rejection(&verify(
            &alipay,
            md5.as_bytes()
        )));
    }

    #[test]
    fn a_bad_public_key_is_a_startup_error_that_does_not_show_the_key() {
        let (_, v) = vectors();
        let truncated = v.alipay_public_key.get(..200).unwrap();
        let error = Alipay::new(&config(truncated, &v.app_id, &v.seller_id))
            .err()
            .unwrap();
        assert!(error.starts_with("alipay_public_key: "), "{error}");
        assert!(!error.contains(&truncated[..40]), "{error}");
        let pem =
            |body: &str| format!("-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n");
        let lines: Vec<String> = v
            .alipay_public_key
            .as_bytes()
            .chunks(64)
            .map(|line| String::from_utf8_lossy(line).into_owned())
            .collect();
        assert!(Alipay::new(&config(&pem(&lines.join("\n")), &v.app_id, &v.seller_id)).is_ok());
        let one_line = Alipay::new(&config(&pem(&v.alipay_public_key), &v.app_id, &v.seller_id));
        let error = one_line.err().unwrap();
        assert!(error.contains("PEM"), "{error}");
    }

    #[test]
    fn only_success_stops_alipay_resending() {
        let (alipay, _) = vectors();
        assert_eq!(alipay.ack().body, b"success");
        assert_eq!(alipay.ack().status, 200);
        for (reason, status) in [
            (RetryReason::Unverified, 400),
            (RetryReason::BadRequest, 400),
            (RetryReason::Unavailable, 500),
        ] {
            let answer = alipay.retry(reason, "database down");
            assert_eq!(
                (answer.status, answer.body.as_slice()),
                (status, &b"fail"[..])
            );
            assert!(!is_ack(answer.status, &answer.body));
        }
        assert!(alipay.signed_headers().is_empty());
        assert!(is_ack(alipay.ack().status, &alipay.ack().body));
        assert!(is_ack(204, b"success"));
        for (status, body) in [(200, &b"fail"[..]), (200, b"success\n"), (500, b"success")] {
            assert!(!is_ack(status, body), "{status} {body:?}");
        }
    }

    #[test]
    fn a_form_with_notify_id_and_sign_is_told_apart_as_alipay() {
        assert!(looks_like_notification("a=1&notify_id=N&sign=x%3D"));
        assert!(!looks_like_notification("notify_id=N&total_amount=1.00"));
        assert!(!looks_like_notification(r#"{"q": "notify_id=N&sign=x"}"#));
        assert!(!looks_like_notification("x_notify_id=N&sign=x"));
    }

    /// The parameters a form decodes to, by an independent decoder.
    fn decoded(body: &[u8]) -> Vec<(String, String)> {
        let mut params: Vec<(String, String)> =
            serde_urlencoded::from_bytes(body).unwrap_or_default();
        params.sort();
        params
    }

    /// Parameters a forger must leave alone for the form to reach the signature check at all.
    const NOT_SIGNED_OR_PARSED_FIRST: [&str; 3] = ["sign", "sign_type", "charset"];

    proptest! {
        /// Well-formed notifications that Alipay did not sign: a valid vector with one value
        /// changed or one parameter added, its `sign` kept or replaced by random bytes.
        #[test]
        fn well_formed_but_unsigned_notifications_fail_the_signature_check(
            case in 0usize..8,
            edit in any::<usize>(),
            added_key in proptest::option::of("[a-z_]{1,16}"),
            value in "\\PC{0,32}",
            forged_sign in proptest::option::of(proptest::collection::vec(any::<u8>(), 256)),
        ) {
            use base64::Engine;
            let (alipay, v) = vectors();
            let valid: Vec<&Case> = v.cases.iter().filter(|c| c.is_valid()).collect();
            let original = &valid[case % valid.len()].body;
            // Each case on the channel whose scheme it is signed with.
            let alipay = if original.ends_with("&sign_type=RSA") { legacy() } else { alipay };
            let mut params: Vec<(String, String)> = serde_urlencoded::from_str(original).unwrap();
            match added_key {
                Some(key) => {
                    prop_assume!(!NOT_SIGNED_OR_PARSED_FIRST.contains(&key.as_str()));
                    prop_assume!(params.iter().all(|(k, _)| *k != key));
                    params.push((key, value));
                }
                None => {
                    let editable: Vec<usize> = (0..params.len())
                        .filter(|&i| !NOT_SIGNED_OR_PARSED_FIRST.contains(&params[i].0.as_str()))
                        .collect();
                    let old = &mut params[editable[edit % editable.len()]].1;
                    prop_assume!(*old != value);
                    *old = value;
                }
            }
            if let Some(bytes) = forged_sign {
                let sign = base64::engine::general_purpose::STANDARD.encode(bytes);
                params.iter_mut().filter(|(k, _)| k == "sign").for_each(|(_, v)| *v = sign.clone());
            }
            let fields: Vec<(&str, &[u8])> =
                params.iter().map(|(k, v)| (k.as_str(), v.as_bytes())).collect();
            let result = verify(&alipay, sign::form_encode(&fields).as_bytes());
            prop_assert!(testing::is_signature_rejection(&result), "{:?}", result);
        }

        #[test]
        fn flipping_a_bit_that_changes_a_parameter_breaks_the_signature(
            case in 0usize..6, index in any::<usize>(), bit in 0u8..8
        ) {
            let (alipay, v) = vectors();
            let valid: Vec<&Case> = v.cases.iter().filter(|c| c.is_valid()).collect();
            let original = valid[case % valid.len()].body.as_bytes();
            let alipay = if original.ends_with(b"&sign_type=RSA") { legacy() } else { alipay };
            let flipped = testing::flip_bit(original, index, bit);
            // `%2F` and `%2f` decode alike: such a flip changes nothing that is signed.
            prop_assume!(decoded(&flipped) != decoded(original));
            prop_assert!(verify(&alipay, &flipped).is_err());
        }
    }
}
