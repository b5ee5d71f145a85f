//! `POST /notify/{channel}`: verify, apply, answer in the provider's protocol.

use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use super::AppState;
use crate::apply::{self, Answer};
use crate::ids::ChannelName;
use crate::inbox::{self, Evidence};
use crate::notify::{self, Provider, RawRequest, Rejection, RetryReason};

fn reply(answer: notify::Answer) -> HttpResponse {
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

/// The headers to keep with the body: the provider's signature headers and the content type.
fn evidence_headers(provider: &dyn Provider, headers: &[(String, String)]) -> String {
    let request = RawRequest { headers, body: &[] };
    let kept: serde_json::Map<String, serde_json::Value> = provider
        .signed_headers()
        .iter()
        .chain(std::iter::once(&"content-type"))
        .filter_map(|name| {
            request
                .header(name)
                .map(|v| ((*name).to_owned(), serde_json::Value::from(v)))
        })
        .collect();
    serde_json::Value::Object(kept).to_string()
}

pub(super) async fn notify(
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
    body: web::Bytes,
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
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let now = state.clock.now();
    let verified = provider.verify(
        &channel,
        &RawRequest {
            headers: &headers,
            body: &body,
        },
        now,
    );
    let headers_json = evidence_headers(provider.as_ref(), &headers);
    let pool = state.pool.clone();

    let mut response = match verified {
        Ok(notification) => {
            let n = notification.clone();
            let result = web::block(move || {
                let mut conn = pool.get()?;
                let evidence = Evidence {
                    headers_json: &headers_json,
                    body: &body,
                };
                apply::apply(&mut conn, &n, evidence, now.naive_utc())
            })
            .await;
            let elapsed = started.elapsed().as_millis();
            let order_no = notification.order_no.as_ref().map_or("-", |o| o.as_str());
            match result {
                Ok(Ok(applied)) => {
                    let answer = applied.outcome.answer();
                    let line = format!(
                        "request_id={request_id} channel={channel} notification_id={} order_no={order_no} kind={} amount={} outcome={} answer={} deliveries={} duration_ms={elapsed}",
                        notification.notification_id,
                        notification.kind.as_str(),
                        notification.amount.map_or(-1, |a| a.get()),
                        applied.outcome.as_str(),
                        answer_word(answer),
                        applied.delivery_count,
                    );
                    if applied.outcome.is_anomaly() {
                        log::error!("{line} detail={:?}", applied.detail.unwrap_or_default());
                    } else if answer == Answer::Retry {
                        log::warn!("{line}");
                    } else {
                        log::info!("{line}");
                    }
                    match answer {
                        Answer::Ack => reply(provider.ack()),
                        Answer::Retry => {
                            reply(provider.retry(RetryReason::Unavailable, "order not found yet"))
                        }
                    }
                }
                Ok(Err(e)) => {
                    log::warn!("request_id={request_id} channel={channel} notification_id={} order_no={order_no} outcome=error answer=retry duration_ms={elapsed} error={e}", notification.notification_id);
                    reply(provider.retry(RetryReason::Unavailable, "temporarily unavailable"))
                }
                Err(e) => {
                    log::error!("request_id={request_id} channel={channel} outcome=error answer=retry error={e}");
                    reply(provider.retry(RetryReason::Unavailable, "temporarily unavailable"))
                }
            }
        }
        Err(rejection) => {
            let reason = rejection.to_string();
            let stored_reason = reason.clone();
            let recorded = web::block(move || {
                let mut conn = pool.get()?;
                let evidence = Evidence {
                    headers_json: &headers_json,
                    body: &body,
                };
                inbox::record_rejection(
                    &mut conn,
                    &channel,
                    &stored_reason,
                    evidence,
                    now.naive_utc(),
                )
            })
            .await;
            let stored = match recorded {
                Ok(Ok(id)) => format!("inbox_id={id}"),
                Ok(Err(e)) => format!("not stored: {e}"),
                Err(e) => format!("not stored: {e}"),
            };
            log::warn!(
                "request_id={request_id} channel={} outcome=rejected answer=retry reason={reason:?} {stored} duration_ms={}",
                path.as_str(),
                started.elapsed().as_millis()
            );
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

fn answer_word(answer: Answer) -> &'static str {
    match answer {
        Answer::Ack => "ack",
        Answer::Retry => "retry",
    }
}
