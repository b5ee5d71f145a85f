//! Asking Stripe: it has no query by our order number, so its Events API (`GET /v1/events`,
//! paged) is read for the events that name the order, and for the events it could not deliver.
//! They are the same event objects webhooks carry, unsigned: they are authentic because they
//! came over TLS with our API key. Stripe's Search API lags, so it is not used.

use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::answer::{said, send, Answer, AskError, Queried};
use crate::books::orders::Order;
use crate::config::{Secret, StripeConfig};
use crate::domain::ids::ChannelName;
use crate::domain::notification::NotificationKind;
use crate::notify::stripe::Stripe;

/// The events that pay an order, as the adapter reads them.
const PAID: [&str; 3] = [
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "payment_intent.succeeded",
];

/// The events that move money back, which the adapter acts on.
const MONEY_BACK: [&str; 3] = [
    "charge.refunded",
    "charge.dispute.funds_withdrawn",
    "charge.dispute.funds_reinstated",
];

/// Events per page: Stripe's largest.
const PAGE_SIZE: u8 = 100;

/// The most pages one question reads; beyond them the question is too broad to answer now.
const MAX_PAGES: usize = 50;

/// How long before an order's creation its events are looked for: clocks differ.
const CLOCK_SLACK_SECS: i64 = 60;

/// Stripe puts its request id in this header; kept as evidence so Stripe can trace an answer.
const EVIDENCE_HEADERS: &[&str] = &["Request-Id"];

/// A Stripe channel's account, with the API key that reads its events.
pub struct StripeAsker {
    channel: ChannelName,
    adapter: Stripe,
    api_key: Secret,
    api_base: String,
    http: reqwest::Client,
    page_size: u8,
}

/// Where a page of the list starts.
enum From {
    /// The newest events.
    Newest,
    /// Events older than this one.
    After(String),
    /// The events just newer than this one.
    Before(String),
}

/// One page of events: each event's own bytes as received, newest first.
struct Page {
    answer: Answer,
    events: Vec<Event>,
    has_more: bool,
}

struct Event {
    id: String,
    bytes: Vec<u8>,
}

impl StripeAsker {
    pub(super) fn new(
        channel: &ChannelName,
        cfg: &StripeConfig,
        http: reqwest::Client,
    ) -> Result<Option<StripeAsker>, String> {
        let Some(api_key) = &cfg.api_key else {
            return Ok(None);
        };
        Ok(Some(StripeAsker {
            channel: channel.clone(),
            adapter: Stripe::new(cfg)?,
            api_key: api_key.clone(),
            api_base: cfg.api_base.trim_end_matches('/').to_owned(),
            http,
            page_size: PAGE_SIZE,
        }))
    }

    /// Fewer events per page (1 to 100), so tests can page with a few events.
    pub fn with_page_size(self, page_size: u8) -> StripeAsker {
        StripeAsker {
            page_size: page_size.clamp(1, PAGE_SIZE),
            ..self
        }
    }

    /// The payment events since the order was made that name it: the paid one if any (one of
    /// this account's before one flagged as another's), else not paid.
    pub(super) async fn query(&self, order: &Order) -> Result<Queried, AskError> {
        let since = order.created_at.and_utc() - Duration::seconds(CLOCK_SLACK_SECS);
        let mut flagged = None;
        let mut from = From::Newest;
        for _ in 0..MAX_PAGES {
            let page = self.page(&PAID, since, false, &from).await?;
            for event in &page.events {
                let one = page.one(event);
                let notification =
                    match self.adapter.event_notification(&self.channel, &event.bytes) {
                        Ok(n) => n,
                        // An event we cannot read may be ours only if it names the order.
                        Err(rejection) if names(&event.bytes, order) => {
                            return Err(one.invalid(EVIDENCE_HEADERS, rejection.to_string()))
                        }
                        Err(_) => continue,
                    };
                if notification.order_no.as_ref() != Some(&order.order_no)
                    || notification.kind != NotificationKind::Paid
                {
                    continue;
                }
                let flagged_one = notification.merchant_mismatch.is_some();
                let queried = said(&one, EVIDENCE_HEADERS, order, Ok(notification))?;
                if !flagged_one {
                    return Ok(queried);
                }
                flagged.get_or_insert(queried);
            }
            match page.events.last() {
                Some(last) if page.has_more => from = From::After(last.id.clone()),
                _ => return Ok(flagged.unwrap_or(Queried::NotPaid)),
            }
        }
        Err(too_many())
    }

    /// The events Stripe could not deliver after `cursor` (or since `since`), oldest first, and
    /// the newest event id seen. An event the adapter cannot read is left out and logged: the
    /// webhook would have refused it too.
    pub(super) async fn undelivered(
        &self,
        cursor: Option<&str>,
        since: DateTime<Utc>,
    ) -> Result<(Vec<Queried>, Option<String>), AskError> {
        let types: Vec<&str> = PAID.iter().chain(&MONEY_BACK).copied().collect();
        // After a cursor the pages run towards newer events; from the start, towards older ones.
        let towards_newer = cursor.is_some();
        let mut from = match cursor {
            Some(id) => From::Before(id.to_owned()),
            None => From::Newest,
        };
        // Each page's events oldest first, as each event's own evidence.
        let mut pages: Vec<Vec<(String, Answer)>> = Vec::new();
        for _ in 0..MAX_PAGES {
            let page = self.page(&types, since, true, &from).await?;
            let next = match (towards_newer, page.has_more) {
                (true, true) => page.events.first().map(|e| From::Before(e.id.clone())),
                (false, true) => page.events.last().map(|e| From::After(e.id.clone())),
                (_, false) => None,
            };
            let events = page.events.iter().rev();
            pages.push(events.map(|e| (e.id.clone(), page.one(e))).collect());
            let Some(next) = next else {
                if !towards_newer {
                    pages.reverse();
                }
                let events: Vec<(String, Answer)> = pages.into_iter().flatten().collect();
                let newest = events.last().map(|(id, _)| id.clone());
                let said = events
                    .iter()
                    .filter_map(|(id, answer)| self.said(id, answer))
                    .collect();
                return Ok((said, newest.or(cursor.map(str::to_owned))));
            };
            from = next;
        }
        Err(too_many())
    }

    /// What one listed event says, or `None` (logged) when it cannot be read.
    fn said(&self, id: &str, answer: &Answer) -> Option<Queried> {
        let notification = self
            .adapter
            .event_notification(&self.channel, &answer.body)
            .and_then(crate::notify::held_to_the_rules);
        match notification {
            Ok(notification) => Some(Queried::Said {
                notification,
                evidence: answer.evidence(EVIDENCE_HEADERS),
            }),
            Err(rejection) => {
                log::warn!(
                    channel = self.channel.as_str(), event = id;
                    "undelivered Stripe event left out: {rejection}"
                );
                None
            }
        }
    }

    /// One page of `GET /v1/events`.
    async fn page(
        &self,
        types: &[&str],
        since: DateTime<Utc>,
        undelivered: bool,
        from: &From,
    ) -> Result<Page, AskError> {
        let mut url = url::Url::parse(&format!("{}/v1/events", self.api_base))
            .map_err(|_| AskError::Unreachable("api_base does not make a URL".to_owned()))?;
        {
            let mut query = url.query_pairs_mut();
            for kind in types {
                query.append_pair("types[]", kind);
            }
            query.append_pair("created[gte]", &since.timestamp().to_string());
            query.append_pair("limit", &self.page_size.to_string());
            if undelivered {
                query.append_pair("delivery_success", "false");
            }
            match from {
                From::Newest => {}
                From::After(id) => {
                    query.append_pair("starting_after", id);
                }
                From::Before(id) => {
                    query.append_pair("ending_before", id);
                }
            }
        }
        let request = self.http.get(url).bearer_auth(self.api_key.expose());
        let answer = send(request, "Stripe GET /v1/events").await?;
        if answer.status == 401 || answer.status == 403 {
            let reason = format!(
                "Stripe refused the API key ({}): check api_key; a restricted key needs read \
                 access to Events",
                answer.status
            );
            return Err(answer.invalid(EVIDENCE_HEADERS, reason));
        }
        if answer.status != 200 {
            let reason = format!("Stripe answered {} {}", answer.status, error_code(&answer));
            return Err(answer.invalid(EVIDENCE_HEADERS, reason));
        }
        let (events, has_more) = read_page(&answer.body).map_err(|why| {
            answer.invalid(EVIDENCE_HEADERS, format!("Stripe GET /v1/events: {why}"))
        })?;
        Ok(Page {
            answer,
            events,
            has_more,
        })
    }
}

impl Page {
    /// The page's answer with only `event`'s bytes as its body: an event's evidence.
    fn one(&self, event: &Event) -> Answer {
        Answer {
            status: self.answer.status,
            headers: self.answer.headers.clone(),
            body: event.bytes.clone(),
        }
    }
}

/// A list page's events, each with its bytes exactly as they appear in the page.
fn read_page(body: &[u8]) -> Result<(Vec<Event>, bool), String> {
    #[derive(Deserialize)]
    struct List<'a> {
        #[serde(borrow)]
        data: Vec<&'a RawValue>,
        has_more: bool,
    }
    #[derive(Deserialize)]
    struct Head {
        id: String,
    }
    let list: List<'_> =
        serde_json::from_slice(body).map_err(|_| "the answer is not a list of events")?;
    let events = list
        .data
        .into_iter()
        .map(|raw| {
            let head: Head = serde_json::from_str(raw.get())
                .map_err(|_| "an event in the list has no id".to_owned())?;
            Ok(Event {
                id: head.id,
                bytes: raw.get().as_bytes().to_vec(),
            })
        })
        .collect::<Result<_, String>>()?;
    Ok((events, list.has_more))
}

/// Whether an event's text names the order number as a JSON string.
fn names(event: &[u8], order: &Order) -> bool {
    let needle = format!("\"{}\"", order.order_no);
    event
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// Stripe's `error.type` and `error.code`; its message may quote the key, so it is left out.
fn error_code(answer: &Answer) -> String {
    #[derive(Deserialize)]
    struct Body {
        error: Error,
    }
    #[derive(Deserialize)]
    struct Error {
        #[serde(rename = "type")]
        kind: Option<String>,
        code: Option<String>,
    }
    match serde_json::from_slice::<Body>(&answer.body) {
        Ok(Body { error }) => {
            let text = [error.kind, error.code].into_iter().flatten();
            text.map(|t| crate::notify::shown(&t))
                .collect::<Vec<_>>()
                .join(" ")
        }
        Err(_) => "without an error object".to_owned(),
    }
}

fn too_many() -> AskError {
    AskError::Unreachable(format!(
        "Stripe lists more than {} events for the question; it is asked again later",
        MAX_PAGES * PAGE_SIZE as usize
    ))
}
