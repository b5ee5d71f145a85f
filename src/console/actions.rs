//! What changes something. Every action is a POST whose form carries the session's CSRF token.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};

use super::respond::{html, with_db};
use super::session::{self, Fields, Session};
use super::views::{when, Message, Nav};
use crate::books::anomalies::{self, Decision, Resolution, Resolving, NOTE_MAX_CHARS};
use crate::http::state::AppState;
use crate::telemetry;

fn page(status: StatusCode, title: &'static str, text: String, session: &Session) -> HttpResponse {
    html(
        status,
        &Message {
            title,
            text,
            nav: Some(Nav {
                operator: session.operator.clone(),
                csrf_token: session.csrf_token.clone(),
            }),
        },
    )
}

/// A note as a resolution keeps it, or why it cannot be kept.
fn note_of(given: &str) -> Result<String, String> {
    let note = given.trim();
    if note.is_empty() {
        return Err("A resolution needs a note that says why.".to_owned());
    }
    if note.chars().count() > NOTE_MAX_CHARS {
        return Err(format!("A note holds at most {NOTE_MAX_CHARS} characters."));
    }
    if note
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err("A note may not hold control characters.".to_owned());
    }
    Ok(note.to_owned())
}

/// `POST /console/anomalies/{id}/resolve`: fields `action` (`dismiss`, `credit` or
/// `refunded_to_buyer`) and `note`. Answers 303 to the notification when recorded, 409 when
/// someone resolved it first.
pub async fn resolve(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let fields = Fields::parse(&body);
    let session = match session::checked(&req, &state, &fields).await {
        Ok(session) => session,
        Err(refused) => return refused,
    };
    let bad = |text: String| {
        page(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Not resolved",
            text,
            &session,
        )
    };
    let Ok(id) = path.parse::<i64>() else {
        return page(
            StatusCode::NOT_FOUND,
            "Not found",
            format!("No notification {:?}.", path.as_str()),
            &session,
        );
    };
    let resolution = match fields.get("action") {
        "dismiss" => Resolution::Dismissed,
        "credit" => Resolution::Credited,
        "refunded_to_buyer" => Resolution::RefundedToBuyer,
        other => return bad(format!("{other:?} is no way to resolve an anomaly.")),
    };
    let note = match note_of(fields.get("note")) {
        Ok(note) => note,
        Err(why) => return bad(why),
    };
    let who = session.who();
    let at = state.clock.now().naive_utc();
    let by = who.clone();
    let recorded = note.clone();
    let resolving = with_db(&state, move |conn| {
        let decision = Decision {
            resolution,
            by: &by,
            note: &recorded,
            at,
        };
        anomalies::resolve(conn, id, &decision)
    })
    .await;
    let resolving = match resolving {
        Ok(resolving) => resolving,
        Err(failed) => return failed.into(),
    };
    match resolving {
        Resolving::Done { balance_after } => {
            log::info!(
                target: "payhook::console",
                notification = id,
                resolution = resolution.as_str(),
                by = who.as_str(),
                balance_after = balance_after.map_or("-".to_owned(), |b| b.to_string());
                "anomaly resolved"
            );
            telemetry::record_resolution(resolution.as_str());
            HttpResponse::SeeOther()
                .insert_header((header::LOCATION, format!("/console/notifications/{id}")))
                .finish()
        }
        Resolving::AlreadyResolved(first) => page(
            StatusCode::CONFLICT,
            "Already resolved",
            format!(
                "Notification {id} was resolved first as {} by {} at {}; nothing was changed now.",
                first.resolution.unwrap_or_default(),
                first.resolved_by.unwrap_or_default(),
                first.resolved_at.as_ref().map(when).unwrap_or_default()
            ),
            &session,
        ),
        Resolving::NotFound => page(
            StatusCode::NOT_FOUND,
            "Not found",
            format!("No notification {id}."),
            &session,
        ),
        Resolving::NotAnAnomaly => page(
            StatusCode::CONFLICT,
            "Not an anomaly",
            format!("Notification {id} is not kept for a human; there is nothing to resolve."),
            &session,
        ),
        Resolving::CannotCredit(why) => {
            bad(format!("Notification {id} cannot be credited: {why}."))
        }
    }
}

/// `POST /console/notifications/{id}/reapply` (fields `csrf_token`, and `dry_run` to only show
/// what applying it now would do, in a transaction rolled back): verifies the stored request
/// again with the current keys and applies it through the crediting transaction.
pub async fn reapply(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    use crate::inspect::{self, InspectError, Reapplied};

    let fields = Fields::parse(&body);
    let session = match session::checked(&req, &state, &fields).await {
        Ok(session) => session,
        Err(refused) => return refused,
    };
    let Ok(id) = path.parse::<i64>() else {
        return page(
            StatusCode::NOT_FOUND,
            "Not found",
            format!("No notification {}.", path.as_str()),
            &session,
        );
    };
    let dry_run = !fields.get("dry_run").is_empty();
    let channels = state.channel_configs.clone();
    let now = state.clock.now().naive_utc();
    log::info!(
        target: "payhook::console",
        operator = session.who().as_str(),
        notification = id,
        dry_run = dry_run;
        "reapply"
    );
    let done = with_db(&state, move |conn| {
        Ok(inspect::reapply(conn, &channels, id, dry_run, now))
    })
    .await;
    match done {
        Ok(Ok(applied @ Reapplied::Applied(_))) => page(
            StatusCode::OK,
            if dry_run { "Dry run" } else { "Applied again" },
            applied.to_string(),
            &session,
        ),
        Ok(Ok(Reapplied::NotVerified(explanation))) => page(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Still does not verify",
            explanation.to_string(),
            &session,
        ),
        Ok(Err(InspectError::NotFound(_))) => page(
            StatusCode::NOT_FOUND,
            "Not found",
            format!("No notification {id}."),
            &session,
        ),
        Ok(Err(e @ InspectError::NotANotification { .. })) => page(
            StatusCode::CONFLICT,
            "Not a notification",
            e.to_string(),
            &session,
        ),
        Ok(Err(e)) => page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Not applied",
            format!("{e}; nothing was changed, try again."),
            &session,
        ),
        Err(failed) => failed.into(),
    }
}
