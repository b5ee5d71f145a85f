//! `/api/*`: the merchant backend's side. Orders are created here before they can be paid, with
//! the order number as idempotency key and the version as the guard against stale updates;
//! balances are spent here, with the debit number as idempotency key.
//!
//! Every route needs `Authorization: Bearer <admin_token>`; with no token configured, all of
//! `/api` answers 401. Errors are `{"error": "..."}` naming the field or state at fault; database
//! failures are 503 and logged, never shown.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, ETag, EntityTag, Header, IfMatch};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use super::state::AppState;
use super::views::{AccountView, DebitView, NotificationView, OrderView};
use crate::books::accounts;
use crate::books::debits::{self, DebitRequest, Debited, NewDebit};
use crate::books::inbox;
use crate::books::orders::{self, Created, Order, OrderRequest};
use crate::db::{self, DbError};
use crate::domain::ids::{DebitNo, OrderNo, UserId};
use crate::domain::money::format_signed;
use crate::telemetry;

pub(super) fn scope() -> actix_web::Scope<
    impl actix_web::dev::ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<EitherBody<impl MessageBody>>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    web::scope("/api")
        .wrap(from_fn(require_admin))
        .route("/order-numbers", web::post().to(new_order_number))
        .route("/orders", web::post().to(create_order))
        .route("/orders/{order_no}", web::get().to(get_order))
        .route("/orders/{order_no}/close", web::post().to(close_order))
        .route("/orders/{order_no}/sync", web::post().to(sync_order))
        .route("/accounts/{user_id}", web::get().to(get_account))
        .route("/accounts/{user_id}/debits", web::post().to(create_debit))
        .route("/debits/{debit_no}", web::get().to(get_debit))
        .route("/notifications", web::get().to(list_notifications))
}

fn error(status: actix_web::http::StatusCode, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": message.into() }))
}

fn unavailable(e: impl std::fmt::Display) -> HttpResponse {
    log::error!("api: {e}");
    error(
        actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
        "database unavailable; try again",
    )
}

/// Runs database work on the blocking pool; a database failure becomes a logged 503.
async fn with_db<T, F>(state: &web::Data<AppState>, f: F) -> Result<T, HttpResponse>
where
    T: Send + 'static,
    F: FnOnce(&mut db::DbConnection) -> Result<T, DbError> + Send + 'static,
{
    let pool = state.pool.clone();
    match web::block(move || f(&mut *pool.get()?)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(unavailable(e)),
        Err(e) => Err(unavailable(e)),
    }
}

async fn require_admin(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let expected = req
        .app_data::<web::Data<AppState>>()
        .and_then(|s| s.admin_token.clone());
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let authorized = match (expected, given) {
        (Some(expected), Some(given)) => {
            bool::from(expected.expose().as_bytes().ct_eq(given.trim().as_bytes()))
        }
        _ => false,
    };
    if !authorized {
        let response = HttpResponse::Unauthorized()
            .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
            .json(json!({ "error": "missing or wrong bearer token" }));
        return Ok(req.into_response(response).map_into_right_body());
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

async fn new_order_number() -> HttpResponse {
    HttpResponse::Created().json(json!({ "order_no": orders::new_order_no() }))
}

/// The order's version as its entity tag, which `If-Match` gives back on close.
fn etag(order: &Order) -> ETag {
    ETag(EntityTag::new_strong(order.version.to_string()))
}

fn with_etag(mut response: actix_web::HttpResponseBuilder, order: &Order) -> HttpResponse {
    response
        .insert_header(etag(order))
        .json(OrderView::from(order))
}

async fn create_order(state: web::Data<AppState>, body: web::Bytes) -> HttpResponse {
    use actix_web::http::StatusCode;
    let parsed: OrderRequest = match serde_json::from_slice(&body) {
        Ok(parsed) => parsed,
        Err(e) if e.is_data() => return error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
    };
    let new = match parsed.validate(|c| state.channels.get(c).map(|c| c.terms.clone())) {
        Ok(new) => new,
        Err(message) => return error(StatusCode::UNPROCESSABLE_ENTITY, message),
    };
    let now = state.clock.now().naive_utc();
    match with_db(&state, move |conn| orders::create(conn, &new, now)).await {
        Ok(Created::New(order)) => with_etag(HttpResponse::Created(), &order),
        Ok(Created::Existing(order)) => with_etag(HttpResponse::Ok(), &order),
        Ok(Created::Conflict(order, fields)) => HttpResponse::Conflict().json(json!({
            "error": format!(
                "order {} exists with a different {}",
                order.order_no,
                fields.join(", ")
            ),
            "fields": fields,
        })),
        Err(response) => response,
    }
}

fn no_such_order(raw: &str) -> HttpResponse {
    error(
        actix_web::http::StatusCode::NOT_FOUND,
        format!("no order {raw:?}"),
    )
}

async fn get_order(state: web::Data<AppState>, path: web::Path<String>) -> HttpResponse {
    let Ok(order_no) = OrderNo::parse(&path) else {
        return no_such_order(&path);
    };
    let lookup = order_no.clone();
    match with_db(&state, move |conn| Ok(orders::find(conn, &lookup)?)).await {
        Ok(Some(order)) => with_etag(HttpResponse::Ok(), &order),
        Ok(None) => no_such_order(order_no.as_str()),
        Err(response) => response,
    }
}

/// The one version that `If-Match: "3"` (or `W/"3"`) names; `*`, a list or anything else names
/// none, since a close must say which version it saw.
fn if_match_version(req: &HttpRequest) -> Option<Result<i64, ()>> {
    if !req.headers().contains_key(header::IF_MATCH) {
        return None;
    }
    Some(match IfMatch::parse(req) {
        Ok(IfMatch::Items(tags)) => match tags.as_slice() {
            [tag] => tag.tag().parse().map_err(|_| ()),
            _ => Err(()),
        },
        Ok(IfMatch::Any) | Err(_) => Err(()),
    })
}

/// `POST /api/orders/{order_no}/sync`: asks the provider about the order now and applies its
/// answer through the crediting transaction; answers with the order as it is afterwards.
async fn sync_order(state: web::Data<AppState>, path: web::Path<String>) -> HttpResponse {
    use crate::recovery::RecoveryError;
    let Ok(order_no) = OrderNo::parse(&path) else {
        return no_such_order(&path);
    };
    let lookup = order_no.clone();
    let order = match with_db(&state, move |conn| Ok(orders::find(conn, &lookup)?)).await {
        Ok(Some(order)) => order,
        Ok(None) => return no_such_order(&path),
        Err(response) => return response,
    };
    match state.recovery.sync(&order).await {
        Ok(_) => {}
        Err(RecoveryError::CannotAsk(channel)) => {
            return HttpResponse::UnprocessableEntity().json(json!({
                "error": "channel_cannot_be_asked",
                "detail": format!("channel {channel} has no keys to ask its provider"),
            }))
        }
        Err(RecoveryError::Unreachable(why)) => {
            return HttpResponse::BadGateway()
                .json(json!({ "error": "provider_unreachable", "detail": why }))
        }
        Err(RecoveryError::Invalid(why)) => {
            return HttpResponse::BadGateway()
                .json(json!({ "error": "provider_answer_invalid", "detail": why }))
        }
        Err(e) => return unavailable(e),
    }
    match with_db(&state, move |conn| Ok(orders::find(conn, &order_no)?)).await {
        Ok(Some(order)) => with_etag(HttpResponse::Ok(), &order),
        Ok(None) => no_such_order(&path),
        Err(response) => response,
    }
}

async fn close_order(
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
) -> HttpResponse {
    use actix_web::http::StatusCode;
    let Ok(order_no) = OrderNo::parse(&path) else {
        return no_such_order(&path);
    };
    let expected = match if_match_version(&req) {
        None => {
            return error(
                StatusCode::PRECONDITION_REQUIRED,
                "If-Match with the order's ETag is required",
            )
        }
        Some(Err(())) => {
            return error(
                StatusCode::PRECONDITION_FAILED,
                "If-Match does not name a version",
            )
        }
        Some(Ok(version)) => version,
    };
    let now = state.clock.now().naive_utc();
    let closed = with_db(&state, move |conn| {
        orders::close(conn, &order_no, expected, now)
    })
    .await;
    match closed {
        Ok(orders::Closing::Closed(order)) => with_etag(HttpResponse::Ok(), &order),
        Ok(orders::Closing::NotFound) => no_such_order(&path),
        Ok(orders::Closing::NotPending(order)) => HttpResponse::Conflict()
            .insert_header(etag(&order))
            .json(json!({
                "error": format!("order is {}, not pending", order.status.as_str()),
                "status": order.status.as_str(),
            })),
        Ok(orders::Closing::VersionMismatch(order)) => HttpResponse::PreconditionFailed()
            .insert_header(etag(&order))
            .json(json!({
                "error": format!("order is at version {}, not {expected}", order.version),
            })),
        Err(response) => response,
    }
}

#[derive(Debug, Deserialize)]
struct Page {
    limit: Option<i64>,
    before: Option<i64>,
}

async fn get_account(
    state: web::Data<AppState>,
    path: web::Path<String>,
    page: web::Query<Page>,
) -> HttpResponse {
    use actix_web::http::StatusCode;
    let Ok(user) = UserId::parse(&path) else {
        return error(StatusCode::NOT_FOUND, "no such account");
    };
    let limit = page.limit.unwrap_or(50).clamp(1, 500);
    let before = page.before;
    match with_db(&state, move |conn| {
        Ok(accounts::statement(conn, &user, limit, before)?)
    })
    .await
    {
        Ok(statement) if statement.balances.is_empty() => {
            error(StatusCode::NOT_FOUND, "no such account")
        }
        Ok(statement) => HttpResponse::Ok().json(AccountView::from(statement)),
        Err(response) => response,
    }
}

async fn create_debit(
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    use actix_web::http::StatusCode;
    let invalid = |status: StatusCode, message: String| {
        telemetry::record_debit("invalid");
        error(status, message)
    };
    let parsed: DebitRequest = match serde_json::from_slice(&body) {
        Ok(parsed) => parsed,
        Err(e) if e.is_data() => return invalid(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        Err(e) => return invalid(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
    };
    let new = match parsed.validate(&path) {
        Ok(new) => new,
        Err(message) => return invalid(StatusCode::UNPROCESSABLE_ENTITY, message),
    };
    let now = state.clock.now().naive_utc();
    let request = new.clone();
    let debited = match with_db(&state, move |conn| debits::debit(conn, &request, now)).await {
        Ok(debited) => debited,
        Err(response) => return response,
    };
    log_debit(&new, &debited);
    telemetry::record_debit(debited.as_str());
    match debited {
        Debited::New(debit) => HttpResponse::Created().json(DebitView::from(&debit)),
        Debited::Repeat(debit) => HttpResponse::Ok().json(DebitView::from(&debit)),
        Debited::Conflict(debit, fields) => HttpResponse::Conflict().json(json!({
            "error": format!(
                "debit {} exists with a different {}",
                debit.debit_no,
                fields.join(", ")
            ),
            "fields": fields,
        })),
        Debited::Insufficient { balance } => HttpResponse::UnprocessableEntity().json(json!({
            "error": "insufficient_balance",
            "balance": format_signed(balance, new.currency),
            "balance_minor": balance,
            "currency": new.currency,
        })),
    }
}

/// One line per debit request that reached the books; the memo is the caller's text and stays
/// out of the log.
fn log_debit(new: &NewDebit, debited: &Debited) {
    let balance_after = match debited {
        Debited::New(debit) | Debited::Repeat(debit) => Some(debit.balance_after),
        Debited::Conflict(..) | Debited::Insufficient { .. } => None,
    };
    log::info!(
        target: "payhook::debits",
        debit_no = new.debit_no.as_str(),
        user_id = new.user_id.as_str(),
        amount = new.amount.get(),
        currency = new.currency.code(),
        outcome = debited.as_str(),
        balance_after = balance_after.map_or("-".to_owned(), |b| b.to_string());
        "debit"
    );
}

async fn get_debit(state: web::Data<AppState>, path: web::Path<String>) -> HttpResponse {
    let no_such_debit = || {
        error(
            actix_web::http::StatusCode::NOT_FOUND,
            format!("no debit {:?}", path.as_str()),
        )
    };
    let Ok(debit_no) = DebitNo::parse(&path) else {
        return no_such_debit();
    };
    match with_db(&state, move |conn| Ok(debits::find(conn, &debit_no)?)).await {
        Ok(Some(debit)) => HttpResponse::Ok().json(DebitView::from(&debit)),
        Ok(None) => no_such_debit(),
        Err(response) => response,
    }
}

#[derive(Debug, Deserialize)]
struct NotificationQuery {
    order_no: String,
    #[serde(default)]
    raw: Option<String>,
}

async fn list_notifications(
    state: web::Data<AppState>,
    query: web::Query<NotificationQuery>,
) -> HttpResponse {
    let query = query.into_inner();
    let with_raw = matches!(query.raw.as_deref(), Some("1" | "true"));
    let order_no = query.order_no;
    match with_db(&state, move |conn| {
        Ok(inbox::list_for_order(conn, &order_no, with_raw)?)
    })
    .await
    {
        Ok(list) => HttpResponse::Ok().json(
            list.into_iter()
                .map(NotificationView::from)
                .collect::<Vec<_>>(),
        ),
        Err(response) => response,
    }
}
