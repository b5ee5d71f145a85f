//! What asking a provider comes to: the provider's word on an order, or why there is none; and
//! the HTTP call every provider's client makes, with its timeout and its evidence.

use std::time::Duration;

use crate::books::orders::Order;
use crate::domain::notification::Notification;
use crate::notify::Rejection;

/// How long one call to a provider may take, connecting and reading the whole answer included.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest answer read; a provider's answer about one order is a few kilobytes.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// The HTTP client for asking providers: rustls with the Mozilla roots, no redirects (a payment
/// API never redirects, and a redirect would carry our signature elsewhere), [`ASK_TIMEOUT`].
pub fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .user_agent(concat!("payhook/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(ASK_TIMEOUT)
        .timeout(ASK_TIMEOUT)
        // The client is shared by the server's workers and recovery's loop, each on a runtime of
        // its own; a pooled connection belongs to the runtime that opened it, so none is kept.
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// What the provider said about an order.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // handed on at once, never kept in bulk
pub enum Queried {
    /// The provider's word on the order, as a verified notification to apply through the
    /// crediting transaction exactly like a notification (`Paid` with trade, amount and currency;
    /// `Closed`; `Other(status)`), with the answer kept as evidence.
    Said {
        notification: Notification,
        evidence: QueryEvidence,
    },
    /// The provider knows no paid trade for it yet (Alipay `ACQ.TRADE_NOT_EXIST` or
    /// `WAIT_BUYER_PAY`, WeChat Pay `ORDER_NOT_EXIST`, `NOTPAY` or `USERPAYING`, Stripe: no
    /// event names it).
    NotPaid,
}

/// The provider's answer as received: the headers that carry its signature (WeChat Pay's
/// `Wechatpay-*`; Stripe's `Request-Id`), as a JSON object, and the body bytes exactly as sent
/// (for a Stripe event, the event object's own bytes in the list).
#[derive(Clone, PartialEq, Eq)]
pub struct QueryEvidence {
    pub headers_json: String,
    pub body: Vec<u8>,
}

/// Its size only: the body holds the provider's signature, which stays out of logs.
impl std::fmt::Debug for QueryEvidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QueryEvidence({} header bytes, {} body bytes)",
            self.headers_json.len(),
            self.body.len()
        )
    }
}

/// What closing an order at the provider came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// The buyer can no longer pay it (or there was nothing to close). WeChat Pay answers a close
    /// of an unknown order the same way, and a buyer already typing a password may still pay:
    /// ask once more after closing.
    Closed,
    /// The provider refused: the trade is paid (Alipay `ACQ.TRADE_STATUS_ERROR` also covers a
    /// trade already finished or closed). Ask it to learn which.
    AlreadyPaid,
    /// The provider cannot close a payment by our order number (Stripe).
    NotSupported,
}

#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// No answer: a connect error, a timeout, a 5xx or a rate limit. Ask again later.
    #[error("provider unreachable: {0}")]
    Unreachable(String),
    /// An answer that does not verify or parse, or says something impossible. Never credits.
    #[error("provider answer invalid: {reason}")]
    Invalid {
        reason: String,
        evidence: QueryEvidence,
    },
}

/// An answer as received.
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: Vec<u8>,
}

impl Answer {
    /// The named headers it carries, as a JSON object, with its body: what is kept as evidence.
    pub(super) fn evidence(&self, headers: &[&str]) -> QueryEvidence {
        let object: serde_json::Map<String, serde_json::Value> = headers
            .iter()
            .filter_map(|name| {
                let (_, value) = self
                    .headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))?;
                Some(((*name).to_owned(), value.as_str().into()))
            })
            .collect();
        QueryEvidence {
            headers_json: serde_json::Value::Object(object).to_string(),
            body: self.body.clone(),
        }
    }

    /// Invalid, for `reason`, with this answer as evidence.
    pub(super) fn invalid(&self, headers: &[&str], reason: impl Into<String>) -> AskError {
        AskError::Invalid {
            reason: reason.into(),
            evidence: self.evidence(headers),
        }
    }
}

/// Sends `request` and reads the whole answer. No answer, a 5xx and a 429 are
/// [`AskError::Unreachable`]; `what` names the call in messages (never with its secrets).
pub(super) async fn send(request: reqwest::RequestBuilder, what: &str) -> Result<Answer, AskError> {
    let unreachable = |e: reqwest::Error| {
        let why = if e.is_timeout() {
            format!("no answer within {} s", ASK_TIMEOUT.as_secs())
        } else if e.is_connect() {
            "cannot connect".to_owned()
        } else {
            e.without_url().to_string()
        };
        AskError::Unreachable(format!("{what}: {why}"))
    };
    let mut response = request
        .timeout(ASK_TIMEOUT)
        .send()
        .await
        .map_err(unreachable)?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_ANSWER_BYTES {
            return Err(AskError::Invalid {
                reason: format!("{what}: answer larger than {MAX_ANSWER_BYTES} bytes"),
                evidence: QueryEvidence {
                    headers_json: "{}".to_owned(),
                    body: Vec::new(),
                },
            });
        }
    }
    if status >= 500 || status == 429 {
        return Err(AskError::Unreachable(format!("{what}: HTTP {status}")));
    }
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// A rejection of an answer by the provider's adapter, as an invalid answer.
pub(super) fn rejected(answer: &Answer, headers: &[&str], rejection: Rejection) -> AskError {
    answer.invalid(headers, rejection.to_string())
}

/// The answer's word on the order, once the adapter made it a notification: held to the rules
/// every notification obeys, and about the order asked after.
pub(super) fn said(
    answer: &Answer,
    headers: &[&str],
    order: &Order,
    notification: Result<Notification, Rejection>,
) -> Result<Queried, AskError> {
    let notification = notification
        .and_then(crate::notify::held_to_the_rules)
        .map_err(|r| rejected(answer, headers, r))?;
    if notification.order_no.as_ref() != Some(&order.order_no) {
        return Err(answer.invalid(headers, "the answer is about another order"));
    }
    Ok(Queried::Said {
        notification,
        evidence: answer.evidence(headers),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_never_prints_its_bytes() {
        let evidence = QueryEvidence {
            headers_json: "{\"Wechatpay-Signature\":\"c2lnbmF0dXJl\"}".to_owned(),
            body: b"{\"sign\":\"c2lnbmF0dXJl\"}".to_vec(),
        };
        let error = AskError::Invalid {
            reason: "does not verify".to_owned(),
            evidence,
        };
        for printed in [format!("{error:?}"), error.to_string()] {
            assert!(!printed.contains("c2lnbmF0dXJl"), "{printed}");
        }
    }
}
