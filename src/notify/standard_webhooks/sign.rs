//! Signing as a Standard Webhooks sender does, for `payhook fixtures` and tests: our payment and
//! refund payloads, signed over the same content the verifier checks.

use aws_lc_rs::hmac;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::json;

use super::{signed_content, signing_key};
use crate::config::StandardWebhooksConfig;
use crate::notify::sign::{
    self, random_hex, unique_hex, Payment, RefundSpec, SignError, Signed, SignedPayment,
};

/// A Standard Webhooks channel's signing secret.
pub struct StandardWebhooksSigner {
    secret: String,
}

impl StandardWebhooksSigner {
    pub fn new(cfg: &StandardWebhooksConfig) -> Result<StandardWebhooksSigner, SignError> {
        Ok(StandardWebhooksSigner {
            secret: sign::first_secret(&cfg.secrets)?,
        })
    }

    /// The `payment.succeeded` message that reports `payment` paid at `now`, with a fresh
    /// message id and `transaction_id`.
    pub fn paid(&self, payment: &Payment, now: DateTime<Utc>) -> Result<SignedPayment, SignError> {
        let trade_no = format!("tx_{}", random_hex());
        let data = json!({
            "order_no": payment.order_no,
            "amount": payment.amount.get(),
            "currency": payment.currency.code(),
            "transaction_id": trade_no,
        });
        let signed = self.message("payment.succeeded", data, now)?;
        Ok(SignedPayment { signed, trade_no })
    }

    /// The `payment.refunded` message that reports `refund` of `payment`, paid by `trade_no`,
    /// done at `now`: `amount` is this refund's.
    pub fn refunded(
        &self,
        payment: &Payment,
        trade_no: &str,
        refund: &RefundSpec,
        now: DateTime<Utc>,
    ) -> Result<Signed, SignError> {
        let data = json!({
            "order_no": payment.order_no,
            "refund_id": refund.refund_id,
            "amount": refund.amount.get(),
            "currency": payment.currency.code(),
            "transaction_id": trade_no,
        });
        self.message("payment.refunded", data, now)
    }

    /// A message of `event_type` with `data`, a fresh message id, signed at `now`.
    fn message(
        &self,
        event_type: &str,
        data: serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<Signed, SignError> {
        let body = json!({ "type": event_type, "data": data }).to_string();
        let message_id = format!("msg_{}", unique_hex());
        let signature = signature(&self.secret, &message_id, now.timestamp(), body.as_bytes())?;
        let headers = [
            ("Content-Type", "application/json".to_owned()),
            ("webhook-id", message_id),
            ("webhook-signature", signature),
            ("webhook-timestamp", now.timestamp().to_string()),
        ];
        Ok(Signed {
            headers: headers.map(|(k, v)| (k.to_owned(), v)).to_vec(),
            body,
        })
    }
}

/// A `webhook-signature` entry: `v1,<base64 HMAC-SHA256>` over the content `signed_content`
/// builds for the verifier too, keyed with the base64-decoded secret after `whsec_`.
pub fn signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, SignError> {
    let key = signing_key(secret).ok_or(SignError::Secret)?;
    let content = signed_content(id, &timestamp.to_string(), body);
    Ok(format!(
        "v1,{}",
        STANDARD.encode(hmac::sign(&key, &content))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::OrderNo;
    use crate::domain::money::{AmountMinor, Currency};
    use crate::notify::testing;

    #[test]
    fn the_spec_vector_comes_out_byte_for_byte() {
        let published: serde_json::Value = testing::load("published.json");
        let spec = &published["standard-webhooks-spec"];
        let text = |key: &str| spec[key].as_str().expect(key).to_owned();
        let timestamp = spec["timestamp"].as_i64().expect("timestamp");
        let entry = signature(
            &text("secret"),
            &text("id"),
            timestamp,
            text("body").as_bytes(),
        );
        assert_eq!(entry.unwrap(), text("signature"));
    }

    /// Fixtures' trade ids fall anywhere in the orders' trade index, as a provider's do, and as
    /// Alipay's fixtures' do: ids made in order would be appended at its end, which costs the
    /// database less and would flatter this channel in a benchmark.
    #[test]
    fn fixtures_trade_ids_are_distinct_and_come_in_no_order() {
        let signer = StandardWebhooksSigner {
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned(),
        };
        let payment = Payment {
            order_no: OrderNo::parse("H1").unwrap(),
            amount: AmountMinor::new(100).unwrap(),
            currency: Currency::Cny,
        };
        let now = testing::at(1_795_375_716);
        let ids: Vec<String> = (0..64)
            .map(|_| signer.paid(&payment, now).unwrap().trade_no)
            .collect();
        assert!(ids.iter().all(|id| id.len() == 35 && id.starts_with("tx_")));
        assert_eq!(
            ids.iter().collect::<std::collections::HashSet<_>>().len(),
            64
        );
        assert!(!ids.is_sorted(), "{ids:?}");
    }
}
