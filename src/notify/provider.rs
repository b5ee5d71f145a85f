//! What every provider's adapter is: the [`Provider`] trait, the request it reads, why it may
//! refuse one, and the reply it gives.

use chrono::{DateTime, Utc};

use crate::domain::ids::ChannelName;
use crate::domain::notification::Notification;

/// A request as received, before anything is trusted.
#[derive(Debug, Clone, Copy)]
pub struct RawRequest<'a> {
    /// Header names and values as received (names in any case).
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

impl<'a> RawRequest<'a> {
    /// The first header of that name, compared without regard to case.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request was not turned into a notification. Every rejection is answered with the
/// provider's retry form: a key fixed later then lets the provider's next retry succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The signature, its key or its timestamp does not hold.
    #[error("signature: {0}")]
    Signature(String),
    /// The request is not in the provider's format (after the signature held, or before it could
    /// be checked).
    #[error("format: {0}")]
    Format(String),
}

/// The provider's answer to a request, in its own protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// Why we ask the provider to send again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// The request was rejected by verification (bad signature, unknown key, stale timestamp).
    Unverified,
    /// The request could not be parsed.
    BadRequest,
    /// We could not record or process it now (database down, order not yet visible).
    Unavailable,
}

/// One provider's protocol. Implementations are pure: no I/O, the clock passed in.
pub trait Provider: Send + Sync {
    /// The provider's name in configuration (`alipay`, `wechatpay`, `stripe`, `standard-webhooks`).
    fn name(&self) -> &'static str;

    /// Verifies the request against the channel's keys at time `now`, then parses it.
    fn verify(
        &self,
        channel: &ChannelName,
        request: &RawRequest<'_>,
        now: DateTime<Utc>,
    ) -> Result<Notification, Rejection>;

    /// The headers that must be stored with the body so the request can be verified again later.
    fn signed_headers(&self) -> &'static [&'static str];

    /// The answer that stops the provider's retries.
    fn ack(&self) -> Reply;

    /// The answer that makes the provider send again later; never a success status.
    fn retry(&self, reason: RetryReason, message: &str) -> Reply;
}
