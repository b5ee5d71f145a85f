//! `POST /notify/{channel}`: verify, apply, answer in the provider's protocol.

use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use super::state::AppState;
use crate::books::inbox::Source;
use crate::crediting::{Answer, Applied};
use crate::domain::ids::ChannelName;
use crate::domain::notification::Notification;
use crate::notify::{self, Provider, RawRequest, Rejection, RetryReason};
use crate::telemetry;

fn reply(answer: notify::Reply) -> HttpResponse {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    HttpResponse::build(status)
        .content_type(answer.content_type)
        .body(answer.body)
}

/// The request id to log and return: nginx's `$request_id` when it set one, else a new one.
fn request_id(req: &HttpRequest) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string())
}

/// The headers to keep with the body: the content type and the provider's signature headers.
fn kept_headers(
    provider: &dyn Provider,
    headers: &[(String, String)],
) -> Vec<(&'static str, String)> {
    let request = RawRequest { headers, body: &[] };
    std::iter::once(&"content-type")
        .chain(provider.signed_headers())
        .filter_map(|name| request.header(name).map(|v| (*name, v.to_owned())))
        .collect()
}

/// The kept headers as the JSON object stored with a verified notification.
fn evidence_headers(kept: &[(&'static str, String)]) -> String {
    let object: serde_json::Map<String, serde_json::Value> = kept
        .iter()
        .map(|(name, value)| ((*name).to_owned(), value.as_str().into()))
        .collect();
    serde_json::Value::Object(object).to_string()
}

pub(super) async fn notify(
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let started = Instant::now();
    let request_id = request_id(&req);
    let Some((channel, provider)) = ChannelName::parse(&path).ok().and_then(|name| {
        state
            .channels
            .get(&name)
            .map(|c| (name, c.provider.clone()))
    }) else {
        return HttpResponse::NotFound()
            .content_type("text/plain")
            .body("unknown channel");
    };
    let body = match read_body(payload, state.body_limit, state.body_timeout).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let now = state.clock.now();
    let request = RawRequest {
        headers: &headers,
        body: &body,
    };
    let verified = notify::verify(provider.as_ref(), &channel, &request, now);
    let kept = kept_headers(provider.as_ref(), &headers);

    let mut response = match verified {
        Ok(notification) => {
            let headers_json = evidence_headers(&kept);
            let started_apply = Instant::now();
            let result = state
                .committer
                .submit(
                    notification.clone(),
                    headers_json,
                    body,
                    Source::Notify,
                    now.naive_utc(),
                )
                .await
                .map_err(|e| e.to_string());
            telemetry::record_apply_seconds(started_apply.elapsed().as_secs_f64());
            let line = LogLine {
                request_id: &request_id,
                channel: &channel,
                notification: Some(&notification),
                started,
            };
            match result {
                Ok(applied) => {
                    let answer = applied.outcome.answer();
                    line.applied(&applied);
                    match answer {
                        Answer::Ack => reply(provider.ack()),
                        Answer::Retry => {
                            reply(provider.retry(RetryReason::Unavailable, "order not found yet"))
                        }
                    }
                }
                Err(error) => {
                    line.failed("error", &error);
                    reply(provider.retry(RetryReason::Unavailable, "temporarily unavailable"))
                }
            }
        }
        Err(rejection) => {
            let reason = rejection.to_string();
            let stored = match state
                .rejections
                .record(channel.clone(), reason.clone(), kept, body, now.naive_utc())
                .await
            {
                Ok(id) => format!("stored as notification {id}"),
                Err(e) => format!("not stored: {e}"),
            };
            let line = LogLine {
                request_id: &request_id,
                channel: &channel,
                notification: None,
                started,
            };
            line.failed("rejected", &format!("{reason} ({stored})"));
            let why = match rejection {
                Rejection::Signature(_) => RetryReason::Unverified,
                Rejection::Format(_) => RetryReason::BadRequest,
            };
            reply(provider.retry(why, "rejected"))
        }
    };
    if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(
            actix_web::http::header::HeaderName::from_static("x-request-id"),
            value,
        );
    }
    response
}

/// Reads the whole body, refusing one that is too large (413) or too slow to arrive (408), so a
/// slow or endless client cannot hold the request open.
async fn read_body(
    payload: web::Payload,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<web::Bytes, HttpResponse> {
    // `to_bytes_limited` answers `Err(BodyLimitExceeded)` outside, a read error inside.
    match actix_web::rt::time::timeout(timeout, payload.to_bytes_limited(limit)).await {
        Ok(Ok(Ok(body))) => Ok(body),
        Ok(Err(_too_large)) => Err(HttpResponse::PayloadTooLarge()
            .content_type("text/plain")
            .body("body too large")),
        Ok(Ok(Err(e))) => Err(HttpResponse::BadRequest()
            .content_type("text/plain")
            .body(format!("cannot read body: {e}"))),
        Err(_elapsed) => Err(HttpResponse::RequestTimeout()
            .content_type("text/plain")
            .body("body not received in time")),
    }
}

/// The one log line (and the metrics) of one notification.
struct LogLine<'a> {
    request_id: &'a str,
    channel: &'a ChannelName,
    notification: Option<&'a Notification>,
    started: Instant,
}

impl LogLine<'_> {
    fn applied(&self, applied: &Applied) {
        let answer = answer_word(applied.outcome.answer());
        let outcome = applied.outcome.as_str();
        telemetry::record_notification(self.channel.as_str(), outcome, answer);
        if let Some(kind) = self
            .notification
            .and_then(|n| telemetry::money_back_kind(&n.kind))
        {
            telemetry::record_money_back(self.channel.as_str(), kind, outcome);
        }
        let level = if applied.anomaly {
            telemetry::record_anomaly(self.channel.as_str());
            log::Level::Error
        } else if applied.outcome.answer() == Answer::Retry {
            log::Level::Warn
        } else {
            log::Level::Info
        };
        let n = self.notification;
        log::log!(
            target: "payhook::notify",
            level,
            request_id = self.request_id,
            channel = self.channel.as_str(),
            notification_id = n.map_or("-", |n| n.notification_id.as_str()),
            order_no = n.and_then(|n| n.order_no.as_ref()).map_or("-", |o| o.as_str()),
            kind = n.map_or("-", |n| n.kind.as_str()),
            amount = n.and_then(|n| n.amount).map_or(-1, |a| a.get()),
            outcome = outcome,
            answer = answer,
            anomaly = applied.anomaly,
            deliveries = applied.delivery_count,
            detail = applied.detail.as_deref().unwrap_or(""),
            duration_ms = self.started.elapsed().as_millis() as u64;
            "notification"
        );
    }

    fn failed(&self, outcome: &'static str, error: &str) {
        telemetry::record_notification(self.channel.as_str(), outcome, "retry");
        let n = self.notification;
        log::warn!(
            target: "payhook::notify",
            request_id = self.request_id,
            channel = self.channel.as_str(),
            notification_id = n.map_or("-", |n| n.notification_id.as_str()),
            order_no = n.and_then(|n| n.order_no.as_ref()).map_or("-", |o| o.as_str()),
            outcome = outcome,
            answer = "retry",
            error = error,
            duration_ms = self.started.elapsed().as_millis() as u64;
            "notification"
        );
    }
}

fn answer_word(answer: Answer) -> &'static str {
    match answer {
        Answer::Ack => "ack",
        Answer::Retry => "retry",
    }
}
