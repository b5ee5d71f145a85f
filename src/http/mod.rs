//! The HTTP server: notify routes answered in each provider's protocol, health probes, the admin
//! API and the operator console ([`crate::console`]).
//!
//! The notify handler takes the body as raw bytes, lets the channel's adapter verify and parse
//! it on the worker, then hands the verified notification to the [`Committer`], whose writer
//! thread applies it in the next group commit. The answer follows [`crate::crediting`]'s policy: ack
//! only after a commit; anything that failed asks the provider to retry.

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};

use crate::config::Settings;
use crate::db::DbError;

mod api;
mod notify_route;
pub mod state;
pub mod views;

pub use state::{AppState, Channel, NotStored, RejectionStore};

/// A server bound to its address, not yet running.
pub struct Bound {
    pub addrs: Vec<SocketAddr>,
    pub server: actix_web::dev::Server,
}

/// Binds the server to `settings.bind` (port 0 picks a free port).
pub fn bind(settings: &Settings, state: AppState) -> std::io::Result<Bound> {
    crate::telemetry::prometheus();
    let state = web::Data::new(state);
    let body_limit = settings.http.body_limit_bytes;
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::PayloadConfig::new(body_limit))
            .route("/healthz", web::get().to(healthz))
            .service(api::scope())
            .configure(crate::console::configure)
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics))
            .service(
                web::resource("/notify/{channel}")
                    .route(web::post().to(notify_route::notify))
                    .default_service(web::to(method_not_allowed)),
            )
    })
    .client_request_timeout(Duration::from_secs(settings.http.request_timeout_secs))
    .shutdown_timeout(settings.http.shutdown_timeout_secs);
    if settings.http.workers > 0 {
        server = server.workers(settings.http.workers);
    }
    let server = server.bind(&settings.bind)?;
    let addrs = server.addrs();
    Ok(Bound {
        addrs,
        server: server.run(),
    })
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok")
}

const READYZ_TIMEOUT: Duration = Duration::from_millis(500);

/// 200 when a pooled connection answers, 503 when not.
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let pool = state.pool.clone();
    let ready = web::block(move || -> Result<(), DbError> {
        use diesel::r2d2::R2D2Connection;
        // Shorter than a request's checkout wait: a probe should say "not now" promptly.
        let mut conn = pool.get_timeout(READYZ_TIMEOUT)?;
        conn.ping()?;
        Ok(())
    })
    .await;
    match ready {
        Ok(Ok(())) => HttpResponse::Ok().content_type("text/plain").body("ready"),
        Ok(Err(e)) => {
            log::warn!("readyz: {e}");
            HttpResponse::ServiceUnavailable()
                .content_type("text/plain")
                .body("database unavailable")
        }
        Err(e) => {
            log::error!("readyz: {e}");
            HttpResponse::ServiceUnavailable().finish()
        }
    }
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(crate::telemetry::render(&state.pool))
}

async fn method_not_allowed() -> HttpResponse {
    HttpResponse::MethodNotAllowed()
        .insert_header(("Allow", "POST"))
        .finish()
}
