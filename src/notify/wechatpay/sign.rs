//! Signing as WeChat Pay does, for `payhook fixtures` and tests: a transaction or a refund
//! encrypted under the APIv3 key, in an envelope signed over the same message the verifier checks.

use aws_lc_rs::aead;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;

use super::{signed_message, RESOURCE_ALGORITHM, SIGNATURE_TYPE};
use crate::config::WechatPayConfig;
use crate::notify::sign::{
    self, china, digits, unique_hex, Payment, RefundSpec, RsaSigner, SignError, Signed,
    SignedPayment,
};

/// A WeChat Pay channel's merchant, with the private key that signs as WeChat Pay.
pub struct WechatPaySigner {
    mchid: String,
    appid: String,
    apiv3_key: String,
    serial: String,
    key: RsaSigner,
}

impl WechatPaySigner {
    /// `private_key` is PEM text: the pair of the public key `serial` names (by default the
    /// channel's first), which the channel itself does not hold.
    pub fn new(
        cfg: &WechatPayConfig,
        private_key: Option<&str>,
        serial: Option<&str>,
    ) -> Result<WechatPaySigner, SignError> {
        let serial = match serial {
            Some(s) if cfg.public_keys.contains_key(s) => s.to_owned(),
            Some(s) => {
                let known: Vec<&str> = cfg.public_keys.keys().map(String::as_str).collect();
                return Err(SignError::UnknownSerial {
                    serial: s.to_owned(),
                    known: known.join(", "),
                });
            }
            None => cfg
                .public_keys
                .keys()
                .next()
                .cloned()
                .ok_or(SignError::NoPublicKeys)?,
        };
        Ok(WechatPaySigner {
            mchid: cfg.mchid.clone(),
            appid: cfg.appid.clone(),
            apiv3_key: cfg.apiv3_key.expose().to_owned(),
            serial,
            key: sign::private_key(private_key, "WeChat Pay", "public key")?,
        })
    }

    /// The `TRANSACTION.SUCCESS` notification that reports `payment` paid at `now`, with a fresh
    /// notification id and `transaction_id`.
    pub fn paid(&self, payment: &Payment, now: DateTime<Utc>) -> Result<SignedPayment, SignError> {
        let local = china(now);
        let trade_no = format!("42000{}{}{}", digits(5), local.format("%Y%m%d"), digits(10));
        let transaction = json!({
            "mchid": self.mchid,
            "appid": self.appid,
            "out_trade_no": payment.order_no,
            "transaction_id": trade_no,
            "trade_type": "JSAPI",
            "trade_state": "SUCCESS",
            "trade_state_desc": "支付成功",
            "bank_type": "OTHERS",
            "attach": "",
            "success_time": local.to_rfc3339_opts(SecondsFormat::Secs, false),
            "payer": { "openid": format!("o{}", &unique_hex()[..27]) },
            "amount": {
                "total": payment.amount.get(),
                "payer_total": payment.amount.get(),
                "currency": payment.currency.code(),
                "payer_currency": payment.currency.code(),
            },
        });
        let signed = self.notification(
            "TRANSACTION.SUCCESS",
            "支付成功",
            "transaction",
            &transaction,
            now,
        )?;
        Ok(SignedPayment { signed, trade_no })
    }

    /// The `REFUND.SUCCESS` notification that reports `refund` of `payment`, paid by `trade_no`,
    /// done at `now`; `refund.refund_id` is WeChat Pay's `refund_id`.
    pub fn refunded(
        &self,
        payment: &Payment,
        trade_no: &str,
        refund: &RefundSpec,
        now: DateTime<Utc>,
    ) -> Result<Signed, SignError> {
        let resource = json!({
            "mchid": self.mchid,
            "out_trade_no": payment.order_no,
            "transaction_id": trade_no,
            "out_refund_no": format!("R{}", unique_hex()),
            "refund_id": refund.refund_id,
            "refund_status": "SUCCESS",
            "success_time": china(now).to_rfc3339_opts(SecondsFormat::Secs, false),
            "user_received_account": "支付用户零钱",
            "amount": {
                "total": payment.amount.get(),
                "refund": refund.amount.get(),
                "payer_total": payment.amount.get(),
                "payer_refund": refund.amount.get(),
            },
        });
        self.notification("REFUND.SUCCESS", "退款成功", "refund", &resource, now)
    }

    /// An `event_type` notification carrying `resource` encrypted, signed at `now`.
    fn notification(
        &self,
        event_type: &str,
        summary: &str,
        original_type: &str,
        resource: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<Signed, SignError> {
        let resource_nonce: String = (0..12).map(|_| fastrand::alphanumeric()).collect();
        let ciphertext = encrypt(
            &self.apiv3_key,
            &resource_nonce,
            original_type,
            resource.to_string().as_bytes(),
        )?;
        let body = json!({
            "id": uuid::Uuid::now_v7().hyphenated().to_string(),
            "create_time": china(now).to_rfc3339_opts(SecondsFormat::Secs, false),
            "resource_type": "encrypt-resource",
            "event_type": event_type,
            "summary": summary,
            "resource": {
                "original_type": original_type,
                "algorithm": RESOURCE_ALGORITHM,
                "ciphertext": ciphertext,
                "associated_data": original_type,
                "nonce": resource_nonce,
            },
        })
        .to_string();
        let timestamp = now.timestamp().to_string();
        let nonce = unique_hex().to_uppercase();
        let signature = signature(&self.key, &timestamp, &nonce, body.as_bytes());
        let headers = [
            ("Content-Type", "application/json".to_owned()),
            ("Wechatpay-Nonce", nonce),
            ("Wechatpay-Serial", self.serial.clone()),
            ("Wechatpay-Signature", signature),
            ("Wechatpay-Signature-Type", SIGNATURE_TYPE.to_owned()),
            ("Wechatpay-Timestamp", timestamp),
        ];
        Ok(Signed {
            headers: headers.map(|(k, v)| (k.to_owned(), v)).to_vec(),
            body,
        })
    }
}

/// WeChat Pay's encrypted `resource.ciphertext`: AES-256-GCM under the 32-byte APIv3 key, tag
/// appended, in base64. `nonce` must be 12 bytes and never reused with the same key.
pub fn encrypt(
    apiv3_key: &str,
    nonce: &str,
    associated_data: &str,
    plaintext: &[u8],
) -> Result<String, SignError> {
    let key = aead::UnboundKey::new(&aead::AES_256_GCM, apiv3_key.as_bytes())
        .map_err(|_| SignError::ApiV3KeyLength)?;
    let nonce = aead::Nonce::try_assume_unique_for_key(nonce.as_bytes())
        .map_err(|_| SignError::NonceLength)?;
    let mut sealed = plaintext.to_vec();
    aead::LessSafeKey::new(key)
        .seal_in_place_append_tag(
            nonce,
            aead::Aad::from(associated_data.as_bytes()),
            &mut sealed,
        )
        .map_err(|_| SignError::TooLarge)?;
    Ok(STANDARD.encode(sealed))
}

/// WeChat Pay v3's `Wechatpay-Signature`: SHA256withRSA, in base64, over the message
/// `signed_message` builds for the verifier too.
pub fn signature(key: &RsaSigner, timestamp: &str, nonce: &str, body: &[u8]) -> String {
    STANDARD.encode(key.sign_sha256(&signed_message(timestamp, nonce, body)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::testing;

    #[test]
    fn the_published_aes_gcm_vector_comes_out_byte_for_byte() {
        let published: serde_json::Value = testing::load("published.json");
        let aes = &published["wechatpay-aes-256-gcm"];
        let text = |key: &str| aes[key].as_str().expect(key).to_owned();
        let sealed = encrypt(
            &text("key"),
            &text("nonce"),
            &text("associated_data"),
            text("plaintext").as_bytes(),
        )
        .unwrap();
        assert_eq!(sealed, text("ciphertext"));
    }
}
