//! Signing as Alipay does, for `payhook fixtures` and tests: a form of the trade's parameters,
//! a payment's or a refund's, signed over the same content the verifier checks.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, FixedOffset, Utc};
use serde_json::json;

use super::signed_content;
use crate::config::AlipayConfig;
use crate::notify::sign::{
    self, china, digits, unique_hex, Payment, RefundSpec, RsaSigner, SignError, Signed,
    SignedPayment,
};

/// An Alipay channel's app, with the private key that signs as Alipay.
pub struct AlipaySigner {
    app_id: String,
    seller_id: Option<String>,
    key: RsaSigner,
}

impl AlipaySigner {
    /// `private_key` is PEM text: the pair of the channel's `alipay_public_key`, which the
    /// channel itself does not hold.
    pub fn new(cfg: &AlipayConfig, private_key: Option<&str>) -> Result<AlipaySigner, SignError> {
        Ok(AlipaySigner {
            app_id: cfg.app_id.clone(),
            seller_id: cfg.seller_id.clone(),
            key: sign::private_key(private_key, "Alipay", "alipay_public_key")?,
        })
    }

    /// The `TRADE_SUCCESS` notification that reports `payment` paid at `now`, with a fresh
    /// `notify_id` and `trade_no`.
    pub fn paid(&self, payment: &Payment, now: DateTime<Utc>) -> SignedPayment {
        let local = china(now);
        let trade_no = format!("{}22001{}", local.format("%Y%m%d"), digits(15));
        let amount = payment.amount.format(payment.currency);
        let fund_bill_list =
            json!([{ "amount": amount, "fundChannel": "ALIPAYACCOUNT" }]).to_string();
        let mut fields = self.trade_fields(payment, &trade_no, now);
        fields.extend([
            ("fund_bill_list", fund_bill_list),
            ("trade_status", "TRADE_SUCCESS".to_owned()),
            ("point_amount", "0.00".to_owned()),
        ]);
        SignedPayment {
            signed: self.sign(&fields),
            trade_no,
        }
    }

    /// The notification that reports `refund` of `payment`, paid by `trade_no`, done at `now`:
    /// the trade's status with the cumulative `refund_fee`, `TRADE_CLOSED` once all of the
    /// payment has gone back.
    pub fn refunded(
        &self,
        payment: &Payment,
        trade_no: &str,
        refund: &RefundSpec,
        now: DateTime<Utc>,
    ) -> Signed {
        let all_back = refund.total == payment.amount;
        let status = if all_back {
            "TRADE_CLOSED"
        } else {
            "TRADE_SUCCESS"
        };
        let mut fields = self.trade_fields(payment, trade_no, now);
        fields.extend([
            ("trade_status", status.to_owned()),
            ("refund_fee", refund.total.format(payment.currency)),
            ("out_biz_no", refund.refund_id.clone()),
            (
                "gmt_refund",
                china(now).format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
            ),
        ]);
        if all_back {
            fields.push(("gmt_close", time(china(now))));
        }
        self.sign(&fields)
    }

    /// What every notification about the trade that paid `payment` carries, sent at `now`.
    fn trade_fields(
        &self,
        payment: &Payment,
        trade_no: &str,
        now: DateTime<Utc>,
    ) -> Vec<(&'static str, String)> {
        let local = china(now);
        let amount = payment.amount.format(payment.currency);
        let seller_id = self
            .seller_id
            .clone()
            .unwrap_or_else(|| format!("2088{}", digits(12)));
        vec![
            ("gmt_create", time(local - chrono::Duration::seconds(5))),
            ("charset", "utf-8".to_owned()),
            ("subject", "充值 (payhook fixture)".to_owned()),
            ("buyer_id", format!("2088{}", digits(12))),
            ("invoice_amount", amount.clone()),
            ("notify_id", unique_hex()),
            ("notify_type", "trade_status_sync".to_owned()),
            ("receipt_amount", amount.clone()),
            ("buyer_pay_amount", amount.clone()),
            ("app_id", self.app_id.clone()),
            ("seller_id", seller_id),
            ("gmt_payment", time(local - chrono::Duration::seconds(1))),
            ("notify_time", time(local)),
            ("version", "1.0".to_owned()),
            ("out_trade_no", payment.order_no.to_string()),
            ("total_amount", amount),
            ("trade_no", trade_no.to_owned()),
            ("auth_app_id", self.app_id.clone()),
        ]
    }

    /// The form of `fields`, signed `RSA2`.
    fn sign(&self, fields: &[(&str, String)]) -> Signed {
        let mut params: Vec<(&str, &[u8])> =
            fields.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        let signature = rsa2(&params, &self.key);
        params.push(("sign", signature.as_bytes()));
        params.push(("sign_type", b"RSA2"));
        Signed {
            headers: vec![(
                "Content-Type".to_owned(),
                "application/x-www-form-urlencoded; charset=utf-8".to_owned(),
            )],
            body: form_encode(&params),
        }
    }
}

/// Alipay's time format, in China Standard Time.
fn time(t: DateTime<FixedOffset>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// Alipay's `RSA2` `sign` for form parameters given decoded: SHA256withRSA, in base64, over the
/// content `signed_content` builds for the verifier too.
pub fn rsa2(params: &[(&str, &[u8])], key: &RsaSigner) -> String {
    STANDARD.encode(key.sign_sha256(&signed_content(params)))
}

/// An `application/x-www-form-urlencoded` body, values given as bytes (in the form's charset).
pub fn form_encode(fields: &[(&str, &[u8])]) -> String {
    let mut body = String::new();
    for (k, v) in fields {
        if !body.is_empty() {
            body.push('&');
        }
        body.extend(form_urlencoded::byte_serialize(k.as_bytes()));
        body.push('=');
        body.extend(form_urlencoded::byte_serialize(v));
    }
    body
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::notify::testing;

    #[test]
    fn an_rsa2_sign_matches_the_alipay_vector_made_by_another_signer() {
        // PKCS #1 v1.5 is deterministic, so re-signing a vector's form must give its `sign`.
        #[derive(Deserialize)]
        struct Vectors {
            cases: Vec<testing::Case>,
        }
        let v: Vectors = testing::load("alipay.json");
        let paid = &v.cases[0];
        let params: Vec<(String, Vec<u8>)> = form_urlencoded::parse(paid.body.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned().into_bytes()))
            .collect();
        let borrowed: Vec<(&str, &[u8])> = params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        let sign = params.iter().find(|(k, _)| k == "sign").unwrap();
        let key = testing::signer("alipay-test-private-key.pem");
        assert_eq!(rsa2(&borrowed, &key).as_bytes(), sign.1.as_slice());
    }

    #[test]
    fn form_encoding_round_trips_reserved_characters() {
        let fields: [(&str, &[u8]); 2] = [
            ("subject", "充值 100% & more=yes+1".as_bytes()),
            ("body", b""),
        ];
        let encoded = form_encode(&fields);
        assert!(
            !encoded.contains(' ') && encoded.matches('&').count() == 1,
            "{encoded}"
        );
        let decoded: Vec<(String, String)> = form_urlencoded::parse(encoded.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(
            decoded,
            [
                ("subject".to_owned(), "充值 100% & more=yes+1".to_owned()),
                ("body".to_owned(), String::new())
            ]
        );
    }
}
