//! Stripe webhook events: an HMAC-SHA256 `Stripe-Signature` over the timestamp and raw body.
//!
//! Only payments that settled the order are `Paid`; refunded charges and disputes' money are
//! `Refund`, `Chargeback` and `ChargebackReversal`. Every other event is recorded as `Other` with
//! what can be read from it, so an event type we do not act on is never retried for days.

use aws_lc_rs::hmac;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::common::{self, shown, signed_header};
use super::examine::{Examination, Freshness, KeyCheck};
use super::provider::{Provider, RawRequest, Rejection, Reply, RetryReason};
use crate::config::StripeConfig;
use crate::domain::ids::ChannelName;
use crate::domain::money::AmountMinor;
use crate::domain::notification::{Dispute, Notification, NotificationKind, Refund};

pub mod sign;

pub struct Stripe {
    /// One per configured endpoint secret; several while one is being rolled.
    secrets: Vec<hmac::Key>,
    tolerance_secs: u64,
    livemode: Option<bool>,
    account: Option<String>,
}

impl Stripe {
    pub fn new(cfg: &StripeConfig) -> Result<Self, String> {
        if cfg.secrets.is_empty() {
            return Err("secrets: at least one signing secret is needed".to_owned());
        }
        let secrets = cfg
            .secrets
            .iter()
            .enumerate()
            .map(|(i, secret)| match secret.expose() {
                "" => Err(format!("secrets[{i}] is empty")),
                text => Ok(signing_key(text)),
            })
            .collect::<Result<_, _>>()?;
        Ok(Stripe {
            secrets,
            tolerance_secs: cfg.timestamp_tolerance_secs,
            livemode: cfg.livemode,
            account: cfg.account.clone(),
        })
    }

    fn check_signature(
        &self,
        request: &RawRequest<'_>,
        now: DateTime<Utc>,
    ) -> Result<(), Rejection> {
        let header = SignatureHeader::parse(signed_header(request, &["Stripe-Signature"])?)?;
        // Stripe's own libraries refuse only old timestamps, not ones ahead of our clock.
        common::check_timestamp(
            header.timestamp,
            now,
            self.tolerance_secs,
            common::Window::PastOnly,
        )?;
        let payload = signed_payload(header.timestamp, request.body);
        common::check_hmac(&self.secrets, &payload, &header.v1)
    }

    /// What verifying `request` tries (see [`Examination`]): the payload Stripe signs, and each
    /// configured secret by its index.
    pub fn examine(&self, request: &RawRequest<'_>) -> Examination {
        let header =
            match signed_header(request, &["Stripe-Signature"]).and_then(SignatureHeader::parse) {
                Ok(header) => header,
                Err(problem) => return Examination::unread(problem),
            };
        let payload = signed_payload(header.timestamp, request.body);
        let keys = self.secrets.iter().enumerate().map(|(i, secret)| {
            let result = common::check_hmac(std::slice::from_ref(secret), &payload, &header.v1);
            KeyCheck::new(format!("secrets[{i}]"), result)
        });
        Examination {
            keys: keys.collect(),
            signed_content: Some(payload),
            named_key: None,
            freshness: Some(Freshness::new(
                header.timestamp,
                self.tolerance_secs,
                common::Window::PastOnly,
            )),
            problem: None,
        }
    }
}

impl Provider for Stripe {
    fn name(&self) -> &'static str {
        "stripe"
    }

    fn verify(
        &self,
        channel: &ChannelName,
        request: &RawRequest<'_>,
        now: DateTime<Utc>,
    ) -> Result<Notification, Rejection> {
        self.check_signature(request, now)?;
        self.event_notification(channel, request.body)
    }

    fn signed_headers(&self) -> &'static [&'static str] {
        &["Stripe-Signature"]
    }

    fn ack(&self) -> Reply {
        common::json_reply(200, &json!({ "received": true }))
    }

    fn retry(&self, reason: RetryReason, message: &str) -> Reply {
        let status = match reason {
            RetryReason::Unverified | RetryReason::BadRequest => 400,
            RetryReason::Unavailable => 503,
        };
        common::json_reply(status, &json!({ "error": message }))
    }
}

/// The HMAC key a secret stands for: the secret's text, `whsec_` prefix and all.
fn signing_key(secret: &str) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes())
}

/// What Stripe signs: `timestamp.body`, the timestamp as the header carries it. The verifier and
/// the signer both build it here.
fn signed_payload(timestamp: &str, body: &[u8]) -> Vec<u8> {
    [timestamp.as_bytes(), b".", body].concat()
}

/// Whether an HTTP answer stops Stripe resending: any success status.
pub fn is_ack(status: u16) -> bool {
    common::is_success(status)
}

/// `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]`.
struct SignatureHeader<'a> {
    timestamp: &'a str,
    v1: Vec<Vec<u8>>,
}

impl<'a> SignatureHeader<'a> {
    /// Other schemes (`v0`, ...) are ignored, as Stripe's own libraries do; a `v1` that is not
    /// hex cannot match, so it is dropped.
    fn parse(value: &'a str) -> Result<Self, Rejection> {
        let mut timestamp = None;
        let mut v1 = Vec::new();
        for (scheme, item) in value
            .split(',')
            .filter_map(|item| item.trim().split_once('='))
        {
            match scheme {
                "t" if timestamp.is_some() => {
                    return Err(Rejection::Signature(
                        "Stripe-Signature has two timestamps".to_owned(),
                    ))
                }
                "t" => timestamp = Some(item),
                "v1" => v1.extend(hex::decode(item).ok()),
                _ => {}
            }
        }
        let timestamp = timestamp
            .ok_or_else(|| Rejection::Signature("Stripe-Signature has no timestamp".to_owned()))?;
        Ok(SignatureHeader { timestamp, v1 })
    }
}

impl Stripe {
    /// What an event says, whether it came signed to the webhook or over TLS with our API key
    /// from the Events API: the same event object either way, and the same checks.
    pub fn event_notification(
        &self,
        channel: &ChannelName,
        event: &[u8],
    ) -> Result<Notification, Rejection> {
        let event: Event = common::from_json(event, "event")?;
        let mismatch = self.merchant_mismatch(&event);
        notification(channel, event, mismatch)
    }

    /// The signature proves Stripe sent the event, not that it is the merchant's own: a Connect
    /// endpoint also carries connected accounts' events, named by a top-level `account`, and a
    /// live endpoint their test events.
    fn merchant_mismatch(&self, event: &Event) -> Option<String> {
        match (&self.account, &event.account) {
            (None, Some(theirs)) => {
                return Some(format!(
                    "event comes from connected account {}; this channel takes the platform's own events",
                    shown(theirs)
                ))
            }
            (Some(ours), theirs) if theirs.as_deref() != Some(ours.as_str()) => {
                let theirs = theirs.as_deref().map_or("no account".to_owned(), shown);
                return Some(format!(
                    "event is for {theirs}; this channel takes account {}",
                    shown(ours)
                ));
            }
            _ => {}
        }
        match (self.livemode, event.livemode) {
            (Some(ours), Some(theirs)) if ours != theirs => Some(format!(
                "event livemode is {theirs}, this channel takes livemode {ours}"
            )),
            (Some(ours), None) => Some(format!(
                "event does not say its livemode; this channel takes livemode {ours}"
            )),
            _ => None,
        }
    }
}

fn notification(
    channel: &ChannelName,
    event: Event,
    merchant_mismatch: Option<String>,
) -> Result<Notification, Rejection> {
    let kind = kind(&event.event_type, &event.data.object)?;
    let object = event.data.object;
    let money_back = kind.is_money_back();
    // A payment's or a refund's fields must be well formed; other events keep whatever can be
    // read.
    let strict = kind == NotificationKind::Paid || money_back;
    let order_no = object
        .client_reference_id
        .as_deref()
        .or(object.metadata.as_ref().and_then(|m| m.order_no.as_deref()))
        .map(common::order_no)
        .transpose();
    let currency = object.currency.as_deref().map(common::currency).transpose();
    // The payment's amount: a Charge states it as `amount`; a Dispute's `amount` is the
    // dispute's own, not the payment's.
    let amount = match &kind {
        NotificationKind::Refund(_) => object.amount,
        NotificationKind::Chargeback(_) | NotificationKind::ChargebackReversal(_) => None,
        _ => object.amount_total.or(object.amount_received),
    };
    let amount = amount.map(common::minor_units).transpose();
    // The payment intent is the trade; a session paid without one is its own trade. A Charge's or
    // a Dispute's own id paid no order, so money going back names only the intent.
    let payment_intent = object.payment_intent.map(Expandable::into_id);
    let provider_trade_no = if money_back {
        payment_intent
    } else if object.object.as_deref() == Some("payment_intent") {
        object.id
    } else {
        payment_intent.or(object.id)
    };
    let order_no = lenient(order_no, strict)?;
    // A Charge or Dispute with neither a payment intent nor our order number was not made by a
    // Checkout Session or PaymentIntent of ours (a legacy charge, another integration on the
    // account): nothing could ever match it, so it is acked as ignored rather than retried.
    let kind = if money_back && provider_trade_no.is_none() && order_no.is_none() {
        NotificationKind::Other(format!(
            "{} of a charge with no payment intent and no order_no",
            event.event_type
        ))
    } else {
        kind
    };
    Ok(Notification {
        channel: channel.clone(),
        notification_id: event.id,
        order_no,
        provider_trade_no,
        amount: lenient(amount, strict)?,
        currency: lenient(currency, strict)?,
        kind,
        merchant_mismatch,
    })
}

fn lenient<T>(value: Result<Option<T>, Rejection>, strict: bool) -> Result<Option<T>, Rejection> {
    match value {
        Err(_) if !strict => Ok(None),
        value => value,
    }
}

/// A completed checkout is paid only when its `payment_status` says so: delayed methods
/// complete first and settle with `async_payment_succeeded` later.
///
/// Money goes back through one family of events only: refunds through `charge.refunded`, whose
/// Charge states the cumulative `amount_refunded`, and disputes through `funds_withdrawn` and
/// `funds_reinstated`. `refund.created`, `refund.updated`, `charge.refund.updated` and the other
/// dispute events announce the same money again, so they stay `Other`: acting on both families
/// would take a refund twice.
fn kind(event_type: &str, object: &EventObject) -> Result<NotificationKind, Rejection> {
    Ok(match event_type {
        "checkout.session.completed" if object.payment_status.as_deref() == Some("paid") => {
            NotificationKind::Paid
        }
        "checkout.session.async_payment_succeeded" | "payment_intent.succeeded" => {
            NotificationKind::Paid
        }
        "charge.refunded" => refunded(object)?,
        "charge.dispute.funds_withdrawn" => NotificationKind::Chargeback(dispute(object)?),
        "charge.dispute.funds_reinstated" => NotificationKind::ChargebackReversal(dispute(object)?),
        other => NotificationKind::Other(other.to_owned()),
    })
}

/// A refunded Charge: its refunds so far, named by the charge. A Charge always states
/// `amount_refunded`, so one without it is not a Charge we can read. A total of zero (nothing
/// has gone back) would book nothing however often it came, so it is kept as `Other` and acked.
fn refunded(charge: &EventObject) -> Result<NotificationKind, Rejection> {
    let total = charge
        .amount_refunded
        .ok_or_else(|| Rejection::Format("charge.refunded states no amount_refunded".to_owned()))
        .and_then(common::minor_units)?;
    if total == AmountMinor::ZERO {
        return Ok(NotificationKind::Other(
            "charge.refunded with amount_refunded 0".to_owned(),
        ));
    }
    Ok(NotificationKind::Refund(Refund::UpTo {
        total,
        refund_id: charge.id.clone(),
    }))
}

/// A Dispute's id and amount, which its chargeback and reversal are booked by.
fn dispute(object: &EventObject) -> Result<Dispute, Rejection> {
    let dispute_id = object
        .id
        .clone()
        .filter(|id| !id.trim().is_empty())
        .ok_or_else(|| Rejection::Format("dispute has no id".to_owned()))?;
    let amount = object
        .amount
        .ok_or_else(|| Rejection::Format("dispute states no amount".to_owned()))
        .and_then(common::minor_units)?;
    Ok(Dispute { dispute_id, amount })
}

#[derive(Deserialize)]
struct Event {
    id: String,
    livemode: Option<bool>,
    /// The connected account the event happened on (Stripe Connect); absent for the platform's.
    account: Option<String>,
    #[serde(rename = "type")]
    event_type: String,
    data: EventData,
}

#[derive(Deserialize)]
struct EventData {
    object: EventObject,
}

/// The fields of a checkout session, payment intent, Charge or Dispute that name the order, its
/// trade and amounts.
#[derive(Deserialize)]
struct EventObject {
    id: Option<String>,
    object: Option<String>,
    client_reference_id: Option<String>,
    metadata: Option<Metadata>,
    amount_total: Option<i64>,
    amount_received: Option<i64>,
    /// A Charge's amount, or a Dispute's.
    amount: Option<i64>,
    /// A Charge's refunds so far.
    amount_refunded: Option<i64>,
    currency: Option<String>,
    payment_status: Option<String>,
    payment_intent: Option<Expandable>,
}

#[derive(Deserialize)]
struct Metadata {
    order_no: Option<String>,
}

/// A related object: its id, or the object itself when the endpoint expands it.
#[derive(Deserialize)]
#[serde(untagged)]
enum Expandable {
    Id(String),
    Object { id: String },
}

impl Expandable {
    fn into_id(self) -> String {
        match self {
            Expandable::Id(id) | Expandable::Object { id } => id,
        }
    }
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
        #[serde(rename = "stripe-derived")]
        stripe: PublishedVector,
    }

    #[derive(Deserialize)]
    struct PublishedVector {
        secret: String,
        timestamp: i64,
        body: String,
        signature: String,
    }

    fn stripe_with(secrets: &[&str]) -> Stripe {
        Stripe::new(&StripeConfig {
            livemode: None,
            account: None,
            secrets: secrets.iter().map(|s| Secret::new(*s)).collect(),
            currency: Currency::Cny,
            timestamp_tolerance_secs: 300,
            api_key: None,
            api_base: String::new(),
        })
        .unwrap()
    }

    fn vectors() -> (Stripe, Vectors) {
        let v: Vectors = testing::load("stripe.json");
        (stripe_with(&[&v.secret]), v)
    }

    fn verify_at(
        stripe: &Stripe,
        headers: &[(String, String)],
        body: &[u8],
        now: i64,
    ) -> Result<Notification, Rejection> {
        stripe.verify(
            &testing::channel(),
            &testing::request(headers, body),
            testing::at(now),
        )
    }

    /// `body` signed at `timestamp` with the vectors' secret.
    fn signed(v: &Vectors, body: &serde_json::Value) -> (Vec<(String, String)>, Vec<u8>) {
        let body = body.to_string().into_bytes();
        let header = sign::signature(&v.secret, v.timestamp, &body);
        (vec![("Stripe-Signature".to_owned(), header)], body)
    }

    fn event(event_type: &str, object: serde_json::Value) -> serde_json::Value {
        json!({ "id": "evt_extra", "object": "event", "type": event_type, "data": { "object": object } })
    }

    #[test]
    fn every_vector_verifies_or_is_rejected_as_its_file_says() {
        let (stripe, v) = vectors();
        assert_eq!(v.cases.len(), 4);
        for case in &v.cases {
            let result = verify_at(
                &stripe,
                &case.header_list(),
                case.body.as_bytes(),
                v.timestamp,
            );
            if case.is_valid() {
                let notification = result.unwrap_or_else(|e| panic!("{}: {e}", case.name));
                case.assert_pays(&notification, NotificationKind::Paid);
                assert_eq!(notification.currency, Some(Currency::Usd));
                assert!(notification.notification_id.starts_with("evt_"));
                assert!(notification.provider_trade_no.unwrap().starts_with("pi_"));
            } else {
                assert!(testing::is_signature_rejection(&result), "{}", case.name);
            }
        }
    }

    #[test]
    fn only_timestamps_older_than_the_tolerance_are_refused() {
        let (stripe, v) = vectors();
        let paid = &v.cases[0];
        let verify = |now| verify_at(&stripe, &paid.header_list(), paid.body.as_bytes(), now);
        assert!(verify(v.timestamp + 300).is_ok());
        assert!(testing::is_signature_rejection(&verify(v.timestamp + 301)));
        // Like Stripe's libraries: a timestamp ahead of a slow clock still verifies.
        assert!(verify(v.timestamp - 301).is_ok());
    }

    #[test]
    fn an_event_from_the_other_mode_is_kept_as_a_mismatch() {
        let (_, v) = vectors();
        let paid = &v.cases[0];
        let mut live = stripe_with(&[&v.secret]);
        live.livemode = Some(true);
        let n = verify_at(
            &live,
            &paid.header_list(),
            paid.body.as_bytes(),
            v.timestamp,
        )
        .unwrap();
        assert_eq!(n.kind, NotificationKind::Paid);
        assert!(n.merchant_mismatch.unwrap().contains("livemode"));
        let mut test_mode = stripe_with(&[&v.secret]);
        test_mode.livemode = Some(false);
        let n = verify_at(
            &test_mode,
            &paid.header_list(),
            paid.body.as_bytes(),
            v.timestamp,
        );
        assert_eq!(n.unwrap().merchant_mismatch, None);
    }

    #[test]
    fn a_connected_accounts_event_never_credits_the_platforms_orders() {
        let (platform, v) = vectors();
        let session = json!({
            "id": "cs_connect", "object": "checkout.session", "payment_status": "paid",
            "client_reference_id": "S20261122000001", "amount_total": 1000, "currency": "usd",
            "payment_intent": "pi_connect"
        });
        let mut connected = event("checkout.session.completed", session);
        connected["account"] = json!("acct_1Connected");
        let (headers, body) = signed(&v, &connected);
        let n = verify_at(&platform, &headers, &body, v.timestamp).unwrap();
        assert_eq!(n.kind, NotificationKind::Paid);
        let why = n
            .merchant_mismatch
            .expect("a connected account's event is a mismatch");
        assert!(why.contains("acct_1Connected"), "{why}");

        // A channel for one connected account takes that account's events, and only those.
        let mut ours = stripe_with(&[&v.secret]);
        ours.account = Some("acct_1Connected".to_owned());
        let n = verify_at(&ours, &headers, &body, v.timestamp).unwrap();
        assert_eq!(n.merchant_mismatch, None);
        let mut other = connected.clone();
        other["account"] = json!("acct_2Other");
        let (headers, body) = signed(&v, &other);
        let n = verify_at(&ours, &headers, &body, v.timestamp).unwrap();
        assert!(n.merchant_mismatch.unwrap().contains("acct_1Connected"));
        let paid = &v.cases[0];
        let n = verify_at(
            &ours,
            &paid.header_list(),
            paid.body.as_bytes(),
            v.timestamp,
        );
        assert!(n.unwrap().merchant_mismatch.unwrap().contains("no account"));
    }

    #[test]
    fn a_session_paid_without_a_payment_intent_is_its_own_trade() {
        let (stripe, v) = vectors();
        let session = json!({
            "id": "cs_without_intent", "object": "checkout.session", "payment_status": "paid",
            "client_reference_id": "S20261122000001", "amount_total": 1000, "currency": "usd"
        });
        let (headers, body) = signed(&v, &event("checkout.session.completed", session));
        let n = verify_at(&stripe, &headers, &body, v.timestamp).unwrap();
        assert_eq!(n.kind, NotificationKind::Paid);
        assert_eq!(n.provider_trade_no.as_deref(), Some("cs_without_intent"));
    }

    fn charge(amount_refunded: serde_json::Value) -> serde_json::Value {
        json!({
            "id": "ch_1", "object": "charge", "amount": 1000, "amount_captured": 1000,
            "amount_refunded": amount_refunded, "currency": "usd", "refunded": false,
            "payment_intent": "pi_1", "metadata": { "order_no": "S5" }
        })
    }

    fn up_to(total: i64, refund_id: &str) -> NotificationKind {
        NotificationKind::Refund(Refund::UpTo {
            total: AmountMinor::new(total).unwrap(),
            refund_id: Some(refund_id.to_owned()),
        })
    }

    #[test]
    fn a_refunded_charge_gives_back_its_refunds_so_far_by_its_payment_intent() {
        let (stripe, v) = vectors();
        let (headers, body) = signed(&v, &event("charge.refunded", charge(json!(300))));
        let n = verify_at(&stripe, &headers, &body, v.timestamp).unwrap();
        assert_eq!(n.kind, up_to(300, "ch_1"));
        assert_eq!(n.order_no.unwrap().as_str(), "S5");
        assert_eq!(n.provider_trade_no.as_deref(), Some("pi_1"));
        assert_eq!(n.amount.unwrap().get(), 1000, "the payment's amount");
        assert_eq!(n.currency, Some(Currency::Usd));
        assert_eq!(n.merchant_mismatch, None);
        assert_eq!(n.notification_id, "evt_extra");

        // Without the order number, the trade names the order; an expanded intent names it too.
        let mut bare = charge(json!(1000));
        bare["metadata"] = json!({});
        bare["refunded"] = json!(true);
        bare["payment_intent"] = json!({ "id": "pi_1", "object": "payment_intent" });
        let (headers, body) = signed(&v, &event("charge.refunded", bare));
        let n = verify_at(&stripe, &headers, &body, v.timestamp).unwrap();
        assert_eq!(n.kind, up_to(1000, "ch_1"));
        assert_eq!(n.order_no, None);
        assert_eq!(n.provider_trade_no.as_deref(), Some("pi_1"));
    }

    #[test]
    fn a_charge_without_its_refunds_so_far_is_refused_and_one_with_none_is_other() {
        let (stripe, v) = vectors();
        let mut missing = charge(json!(300));
        missing.as_object_mut().unwrap().remove("amount_refunded");
        for (object, complaint) in [
            (missing, "amount_refunded"),
            (charge(json!(null)), "amount_refunded"),
            (charge(json!(-1)), "negative"),
            (charge(json!("3.00")), "event"),
        ] {
            let (headers, body) = signed(&v, &event("charge.refunded", object));
            let result = verify_at(&stripe, &headers, &body, v.timestamp);
            assert!(
                testing::is_format_rejection_about(&result, complaint),
                "{result:?}"
            );
        }
        // A refund's fields must be well formed, as a payment's are.
        let mut bad_currency = charge(json!(300));
        bad_currency["currency"] = json!("xbt");
        let (headers, body) = signed(&v, &event("charge.refunded", bad_currency));
        let result = verify_at(&stripe, &headers, &body, v.timestamp);
        assert!(testing::is_format_rejection_about(&result, "currency"));

        let (headers, body) = signed(&v, &event("charge.refunded", charge(json!(0))));
        let n = verify_at(&stripe, &headers, &body, v.timestamp).unwrap();
        assert!(
            matches!(&n.kind, NotificationKind::Other(word) if word.starts_with("charge.refunded")),
            "{:?}",
            n.kind
        );
    }

    #[test]
    fn a_disputes_funds_leave_and_come_back_by_its_own_id_and_amount() {
        let (stripe, v) = vectors();
        let dispute = json!({
            "id": "dp_1", "object": "dispute", "amount": 400, "currency": "usd",
            "charge": "ch_1", "payment_intent": "pi_1", "status": "needs_response"
        });
        let taken = Dispute {
            dispute_id: "dp_1".to_owned(),
            amount: AmountMinor::new(400).unwrap(),
        };
        for (event_type, kind) in [
            (
                "charge.dispute.funds_withdrawn",
                NotificationKind::Chargeback(taken.clone()),
            ),
            (
                "charge.dispute.funds_reinstated",
                NotificationKind::ChargebackReversal(taken.clone()),
            ),
        ] {
            let (headers, body) = signed(&v, &event(event_type, dispute.clone()));
            let n = verify_at(&stripe, &headers, &body, v.timestamp).unwrap();
            assert_eq!(n.kind, kind, "{event_type}");
            assert_eq!(n.amount, None, "a dispute's amount is not the payment's");
            assert_eq!(n.order_no, None);
            assert_eq!(n.provider_trade_no.as_deref(), Some("pi_1"));
            assert_eq!(n.currency, Some(Currency::Usd));
        }
        let mut no_amount = dispute.clone();
        no_amount.as_object_mut().unwrap().remove("amount");
        let mut no_id = dispute;
        no_id.as_object_mut().unwrap().remove("id");
        for (object, complaint) in [(no_amount, "amount"), (no_id, "id")] {
            let (headers, body) = signed(&v, &event("charge.dispute.funds_withdrawn", object));
            let result = verify_at(&stripe, &headers, &body, v.timestamp);
            assert!(
                testing::is_format_rejection_about(&result, complaint),
                "{result:?}"
            );
        }
    }

    #[test]
    fn refund_objects_and_other_dispute_events_are_not_acted_on() {
        let (stripe, v) = vectors();
        let refund = json!({ "id": "re_1", "object": "refund", "amount": 300, "currency": "usd",
                             "charge": "ch_1", "payment_intent": "pi_1", "status": "succeeded" });
        let dispute = json!({ "id": "dp_1", "object": "dispute", "amount": 400, "currency": "usd",
                              "payment_intent": "pi_1" });
        for (event_type, object) in [
            ("refund.created", refund.clone()),
            ("refund.updated", refund.clone()),
            ("charge.refund.updated", refund),
            ("charge.dispute.created", dispute.clone()),
            ("charge.dispute.closed", dispute),
        ] {
            let (headers, body) = signed(&v, &event(event_type, object));
            let n = verify_at(&stripe, &headers, &body, v.timestamp).unwrap();
            assert_eq!(n.kind, NotificationKind::Other(event_type.to_owned()));
        }
    }

    #[test]
    fn money_back_from_a_connected_account_or_the_other_mode_is_a_mismatch() {
        let (platform, v) = vectors();
        let dispute = json!({ "id": "dp_1", "object": "dispute", "amount": 400, "currency": "usd",
                              "payment_intent": "pi_1" });
        for (event_type, object) in [
            ("charge.refunded", charge(json!(300))),
            ("charge.dispute.funds_withdrawn", dispute.clone()),
            ("charge.dispute.funds_reinstated", dispute),
        ] {
            let mut connected = event(event_type, object.clone());
            connected["account"] = json!("acct_1Connected");
            let (headers, body) = signed(&v, &connected);
            let n = verify_at(&platform, &headers, &body, v.timestamp).unwrap();
            assert!(n.kind.is_money_back(), "{event_type}");
            let why = n.merchant_mismatch.expect("a connected account's refund");
            assert!(why.contains("acct_1Connected"), "{why}");

            let mut ours = stripe_with(&[&v.secret]);
            ours.account = Some("acct_1Connected".to_owned());
            let n = verify_at(&ours, &headers, &body, v.timestamp).unwrap();
            assert_eq!(n.merchant_mismatch, None, "{event_type}");

            let mut test_event = event(event_type, object);
            test_event["livemode"] = json!(false);
            let (headers, body) = signed(&v, &test_event);
            let mut live = stripe_with(&[&v.secret]);
            live.livemode = Some(true);
            let n = verify_at(&live, &headers, &body, v.timestamp).unwrap();
            assert!(n.merchant_mismatch.unwrap().contains("livemode"));
            live.livemode = Some(false);
            let n = verify_at(&live, &headers, &body, v.timestamp).unwrap();
            assert_eq!(n.merchant_mismatch, None, "{event_type}");
        }
    }

    #[test]
    fn any_configured_secret_matches_any_v1() {
        let (_, v) = vectors();
        let rotation = &v.cases[1];
        let rolled = stripe_with(&["whsec_retired", &v.secret]);
        assert!(verify_at(
            &rolled,
            &rotation.header_list(),
            rotation.body.as_bytes(),
            v.timestamp
        )
        .is_ok());
        let other = stripe_with(&["whsec_someone_else"]);
        let result = verify_at(
            &other,
            &rotation.header_list(),
            rotation.body.as_bytes(),
            v.timestamp,
        );
        assert!(testing::is_signature_rejection(&result));
    }

    #[test]
    fn the_published_vector_verifies() {
        let published: Published = testing::load("published.json");
        let p = published.stripe;
        let stripe = stripe_with(&[&p.secret]);
        let header = [(
            "stripe-signature".to_owned(),
            format!("t={},{}", p.timestamp, p.signature),
        )];
        let request = testing::request(&header, p.body.as_bytes());
        assert!(stripe
            .check_signature(&request, testing::at(p.timestamp))
            .is_ok());
        let tampered = p.body.replace("evt_test_webhook", "evt_test_webhooK");
        let request = testing::request(&header, tampered.as_bytes());
        assert!(stripe
            .check_signature(&request, testing::at(p.timestamp))
            .is_err());
    }

    #[test]
    fn malformed_signature_headers_are_signature_rejections() {
        let (stripe, v) = vectors();
        let paid = &v.cases[0];
        let header = paid.headers.get("Stripe-Signature").unwrap();
        let signature = header.split_once(",v1=").unwrap().1;
        for value in [
            String::new(),
            format!("v1={signature}"),
            format!("t={0},t={0},v1={signature}", v.timestamp),
            format!("t={},v1=zz", v.timestamp),
            format!("t={},v1={}", v.timestamp, &signature[..10]),
        ] {
            let headers = [("Stripe-Signature".to_owned(), value.clone())];
            let result = verify_at(&stripe, &headers, paid.body.as_bytes(), v.timestamp);
            assert!(testing::is_signature_rejection(&result), "{value}");
        }
        let result = verify_at(&stripe, &[], paid.body.as_bytes(), v.timestamp);
        assert!(testing::is_signature_rejection(&result));
    }

    #[test]
    fn payment_intents_carry_the_order_in_metadata() {
        let (stripe, v) = vectors();
        let body = event(
            "payment_intent.succeeded",
            json!({ "id": "pi_1", "object": "payment_intent", "amount": 500, "amount_received": 500,
                    "currency": "jpy", "metadata": { "order_no": "S1" } }),
        );
        let (headers, body) = signed(&v, &body);
        let notification = verify_at(&stripe, &headers, &body, v.timestamp).unwrap();
        assert_eq!(notification.kind, NotificationKind::Paid);
        assert_eq!(notification.order_no.unwrap().as_str(), "S1");
        assert_eq!(notification.amount.unwrap().get(), 500);
        assert_eq!(notification.currency, Some(Currency::Jpy));
        assert_eq!(notification.provider_trade_no.as_deref(), Some("pi_1"));
        assert_eq!(notification.notification_id, "evt_extra");
    }

    #[test]
    fn only_settled_payments_are_paid() {
        let (stripe, v) = vectors();
        let session = |status: &str| {
            json!({ "id": "cs_1", "object": "checkout.session", "client_reference_id": "S2",
                    "amount_total": 100, "currency": "usd", "payment_status": status,
                    "payment_intent": { "id": "pi_2", "object": "payment_intent" } })
        };
        let cases = [
            (
                "checkout.session.completed",
                session("unpaid"),
                NotificationKind::Other("checkout.session.completed".to_owned()),
            ),
            (
                "checkout.session.async_payment_succeeded",
                session("paid"),
                NotificationKind::Paid,
            ),
            (
                "checkout.session.expired",
                session("unpaid"),
                NotificationKind::Other("checkout.session.expired".to_owned()),
            ),
        ];
        for (event_type, object, kind) in cases {
            let (headers, body) = signed(&v, &event(event_type, object));
            let notification = verify_at(&stripe, &headers, &body, v.timestamp).unwrap();
            assert_eq!(notification.kind, kind, "{event_type}");
            assert_eq!(notification.order_no.unwrap().as_str(), "S2");
            assert_eq!(notification.provider_trade_no.as_deref(), Some("pi_2"));
        }
    }

    #[test]
    fn malformed_fields_reject_a_payment_but_not_another_event() {
        let (stripe, v) = vectors();
        let object = json!({ "id": "pi_3", "object": "payment_intent", "amount_received": 100,
                             "currency": "xbt", "metadata": { "order_no": "not ours!" } });
        for (field, value, complaint) in [
            ("currency", json!("usd"), "order number"),
            ("metadata", json!({ "order_no": "S3" }), "currency"),
        ] {
            let mut payment = object.clone();
            payment[field] = value;
            let (headers, body) = signed(&v, &event("payment_intent.succeeded", payment));
            let result = verify_at(&stripe, &headers, &body, v.timestamp);
            assert!(
                testing::is_format_rejection_about(&result, complaint),
                "{result:?}"
            );
        }
        let (headers, body) = signed(&v, &event("payment_intent.created", object));
        let notification = verify_at(&stripe, &headers, &body, v.timestamp).unwrap();
        assert_eq!(notification.order_no, None);
        assert_eq!(notification.currency, None);
        assert_eq!(notification.amount.unwrap().get(), 100);
        let (headers, body) = signed(&v, &json!({ "id": "evt_no_data" }));
        let result = verify_at(&stripe, &headers, &body, v.timestamp);
        assert!(testing::is_format_rejection_about(&result, "event"));
    }

    #[test]
    fn an_empty_secret_list_or_secret_is_a_startup_error() {
        let config = |secrets: Vec<Secret>| StripeConfig {
            livemode: None,
            account: None,
            secrets,
            currency: Currency::Usd,
            timestamp_tolerance_secs: 300,
            api_key: None,
            api_base: String::new(),
        };
        assert!(Stripe::new(&config(vec![])).is_err());
        let error = Stripe::new(&config(vec![Secret::new("whsec_a"), Secret::new("")]))
            .err()
            .unwrap();
        assert!(error.contains("secrets[1]"), "{error}");
    }

    #[test]
    fn failures_are_never_answered_with_a_success_status() {
        let (stripe, _) = vectors();
        assert_eq!(stripe.ack().status, 200);
        assert!(is_ack(stripe.ack().status));
        assert_eq!(stripe.retry(RetryReason::Unverified, "x").status, 400);
        assert_eq!(stripe.retry(RetryReason::BadRequest, "x").status, 400);
        assert_eq!(stripe.retry(RetryReason::Unavailable, "x").status, 503);
        assert!(!is_ack(stripe.retry(RetryReason::Unavailable, "x").status));
        assert_eq!(stripe.signed_headers(), ["Stripe-Signature"]);
    }

    proptest! {
        #[test]
        fn random_bodies_never_verify(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let (stripe, v) = vectors();
            let result = verify_at(&stripe, &v.cases[0].header_list(), &body, v.timestamp);
            prop_assert!(testing::is_signature_rejection(&result));
        }

        #[test]
        fn a_flipped_bit_anywhere_in_the_body_breaks_the_signature(index in any::<usize>(), bit in 0u8..8) {
            let (stripe, v) = vectors();
            let paid = &v.cases[0];
            let flipped = testing::flip_bit(paid.body.as_bytes(), index, bit);
            let result = verify_at(&stripe, &paid.header_list(), &flipped, v.timestamp);
            prop_assert!(testing::is_signature_rejection(&result));
        }

        #[test]
        fn random_signature_headers_are_rejected_without_panicking(header in "\\PC{0,300}") {
            let (stripe, v) = vectors();
            let headers = [("Stripe-Signature".to_owned(), header)];
            prop_assert!(verify_at(&stripe, &headers, v.cases[0].body.as_bytes(), v.timestamp).is_err());
        }
    }
}
