//! Signing as Stripe does, for `payhook fixtures` and tests: a completed checkout session or a
//! refunded charge, signed over the same payload the verifier checks.

use aws_lc_rs::hmac;
use chrono::{DateTime, Utc};
use serde_json::json;

use super::{signed_payload, signing_key};
use crate::config::StripeConfig;
use crate::notify::sign::{
    self, random_hex, unique_hex, Payment, RefundSpec, SignError, Signed, SignedPayment,
};

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
    /// event, session and payment intent; the payment intent is the trade.
    pub fn paid(&self, payment: &Payment, now: DateTime<Utc>) -> SignedPayment {
        let id = random_hex();
        let trade_no = format!("pi_{id}");
        let session = json!({
            "id": format!("cs_test_{id}"),
            "object": "checkout.session",
            "client_reference_id": payment.order_no,
            "amount_subtotal": payment.amount.get(),
            "amount_total": payment.amount.get(),
            "currency": payment.currency.code().to_ascii_lowercase(),
            "mode": "payment",
            "payment_status": "paid",
            "status": "complete",
            "payment_intent": trade_no,
            "metadata": { "order_no": payment.order_no },
        });
        SignedPayment {
            signed: self.event("checkout.session.completed", session, now),
            trade_no,
        }
    }

    /// The `charge.refunded` event that reports `refund` of `payment`, paid by the payment
    /// intent `trade_no`, done at `now`: the intent's Charge, whose `amount_refunded` is the
    /// total so far. The Charge carries the order number in its metadata, as Stripe copies a
    /// payment intent's metadata to the Charge it creates.
    pub fn refunded(
        &self,
        payment: &Payment,
        trade_no: &str,
        refund: &RefundSpec,
        now: DateTime<Utc>,
    ) -> Signed {
        let charge = json!({
            "id": format!("ch_{}", trade_no.strip_prefix("pi_").unwrap_or(trade_no)),
            "object": "charge",
            "amount": payment.amount.get(),
            "amount_captured": payment.amount.get(),
            "amount_refunded": refund.total.get(),
            "captured": true,
            "currency": payment.currency.code().to_ascii_lowercase(),
            "paid": true,
            "payment_intent": trade_no,
            "refunded": refund.total == payment.amount,
            "status": "succeeded",
            "metadata": { "order_no": payment.order_no },
        });
        self.event("charge.refunded", charge, now)
    }

    /// An event of `event_type` about `object`, with a fresh id, signed at `now`.
    fn event(&self, event_type: &str, object: serde_json::Value, now: DateTime<Utc>) -> Signed {
        let body = json!({
            "id": format!("evt_{}", unique_hex()),
            "object": "event",
            "api_version": "2024-06-20",
            "created": now.timestamp(),
            "livemode": false,
            "pending_webhooks": 1,
            "type": event_type,
            "data": { "object": object },
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
