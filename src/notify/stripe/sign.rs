//! Signing as Stripe does, for `payhook fixtures` and tests: a completed checkout session,
//! signed over the same payload the verifier checks.

use chrono::{DateTime, Utc};
use ring::hmac;
use serde_json::json;

use super::{signed_payload, signing_key};
use crate::config::StripeConfig;
use crate::notify::sign::{self, unique_hex, Payment, SignError, Signed};

/// A Stripe endpoint's signing secret.
pub struct StripeSigner {
    secret: String,
}

impl StripeSigner {
    pub fn new(cfg: &StripeConfig) -> Result<StripeSigner, SignError> {
        Ok(StripeSigner {
            secret: sign::first_secret(&cfg.secrets)?,
        })
    }

    /// The `checkout.session.completed` event that reports `payment` paid at `now`, with a fresh
    /// event, session and payment intent.
    pub fn paid(&self, payment: &Payment, now: DateTime<Utc>) -> Signed {
        let id = unique_hex();
        let body = json!({
            "id": format!("evt_{id}"),
            "object": "event",
            "api_version": "2024-06-20",
            "created": now.timestamp(),
            "livemode": false,
            "pending_webhooks": 1,
            "type": "checkout.session.completed",
            "data": {
                "object": {
                    "id": format!("cs_test_{id}"),
                    "object": "checkout.session",
                    "client_reference_id": payment.order_no,
                    "amount_subtotal": payment.amount.get(),
                    "amount_total": payment.amount.get(),
                    "currency": payment.currency.code().to_ascii_lowercase(),
                    "mode": "payment",
                    "payment_status": "paid",
                    "status": "complete",
                    "payment_intent": format!("pi_{id}"),
                    "metadata": { "order_no": payment.order_no },
                }
            },
        })
        .to_string();
        let header = signature(&self.secret, now.timestamp(), body.as_bytes());
        Signed {
            headers: vec![
                (
                    "Content-Type".to_owned(),
                    "application/json; charset=utf-8".to_owned(),
                ),
                ("Stripe-Signature".to_owned(), header),
            ],
            body,
        }
    }
}

/// Stripe's `Stripe-Signature` value: `t=<timestamp>,v1=<hex HMAC-SHA256>` over the payload
/// `signed_payload` builds for the verifier too, keyed as the verifier keys it.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let payload = signed_payload(&timestamp.to_string(), body);
    let v1 = hex::encode(hmac::sign(&signing_key(secret), &payload));
    format!("t={timestamp},v1={v1}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::testing;

    #[test]
    fn the_published_vector_comes_out_byte_for_byte() {
        let published: serde_json::Value = testing::load("published.json");
        let p = &published["stripe-derived"];
        let text = |key: &str| p[key].as_str().expect(key).to_owned();
        let timestamp = p["timestamp"].as_i64().expect("timestamp");
        let header = signature(&text("secret"), timestamp, text("body").as_bytes());
        assert_eq!(header, format!("t={timestamp},{}", text("signature")));
    }
}
