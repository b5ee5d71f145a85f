//! `/console`: the operator console, HTML rendered on the server for the people who run payhook.
//!
//! - [`session`]: logging in with the admin token, the session cookie, CSRF tokens, logout.
//! - [`pages`]: the overview, the inbox search and one notification, an order's timeline, an
//!   account's ledger, the anomaly queue.
//! - [`actions`]: what changes something: resolving an anomaly; applying a stored notification
//!   again.
//! - [`views`] and [`chart`]: the templates' values, and the traffic chart drawn as SVG;
//!   [`respond`]: a page rendered, and database work run off the server's threads.
//!
//! The console shows bytes anyone on the internet can send (a rejected request is stored), so
//! every value goes through askama's HTML escaping, every response carries a Content-Security-
//! Policy that allows no inline script and no framing, and nothing is cached.

use actix_web::http::header;
use actix_web::middleware::DefaultHeaders;
use actix_web::{web, HttpResponse};

pub mod actions;
pub mod chart;
pub mod pages;
pub mod respond;
pub mod session;
pub mod views;

/// The console's Content-Security-Policy: scripts and styles only from payhook itself, never
/// inline; no framing; forms post only to payhook.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The headers every console response carries.
pub fn security_headers() -> DefaultHeaders {
    DefaultHeaders::new()
        .add((header::CONTENT_SECURITY_POLICY, CSP))
        .add((header::X_FRAME_OPTIONS, "DENY"))
        .add((header::REFERRER_POLICY, "no-referrer"))
        .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .add((header::CACHE_CONTROL, "no-store"))
}

/// Every console route, under `/console`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/console")
            .wrap(security_headers())
            .route("", web::get().to(pages::overview))
            .route("/", web::get().to(pages::overview))
            .route("/login", web::post().to(session::login))
            .route("/logout", web::post().to(session::logout))
            .route("/static/console.css", web::get().to(stylesheet))
            .route("/notifications", web::get().to(pages::notifications))
            .route("/notifications/{id}", web::get().to(pages::notification))
            .route(
                "/notifications/{id}/reapply",
                web::post().to(actions::reapply),
            )
            .route("/orders", web::get().to(pages::find_order))
            .route("/orders/{order_no}", web::get().to(pages::order))
            .route("/accounts", web::get().to(pages::find_account))
            .route("/accounts/{user_id}", web::get().to(pages::account))
            .route("/anomalies", web::get().to(pages::anomalies))
            .route("/anomalies/{id}/resolve", web::post().to(actions::resolve))
            .default_service(web::to(pages::not_found)),
    );
}

async fn stylesheet() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .body(include_str!("../../static/console.css"))
}
