//! How a console handler answers: a rendered page, or database work run on the blocking pool
//! whose failure becomes a plain 503.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use askama::Template;

use super::views;
use crate::db::{self, DbError};
use crate::http::state::AppState;

/// A rendered page with its status.
pub fn html(status: StatusCode, page: &impl Template) -> HttpResponse {
    match page.render() {
        Ok(body) => HttpResponse::build(status)
            .content_type("text/html; charset=utf-8")
            .body(body),
        Err(e) => {
            log::error!(target: "payhook::console", "cannot render a page: {e}");
            HttpResponse::InternalServerError()
                .content_type("text/plain; charset=utf-8")
                .body("the page could not be rendered")
        }
    }
}

/// Runs database work on the blocking pool.
pub async fn with_db<T, F>(state: &web::Data<AppState>, f: F) -> Result<T, Failed>
where
    T: Send + 'static,
    F: FnOnce(&mut db::DbConnection) -> Result<T, DbError> + Send + 'static,
{
    let pool = state.pool.clone();
    match web::block(move || f(&mut *pool.get()?)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Failed(e.to_string())),
        Err(e) => Err(Failed(e.to_string())),
    }
}

/// Database work that failed: logged whole, shown as a plain 503.
#[derive(Debug)]
pub struct Failed(String);

impl From<Failed> for HttpResponse {
    fn from(failed: Failed) -> HttpResponse {
        log::error!(target: "payhook::console", "database: {}", failed.0);
        let page = views::Message {
            title: "Database unavailable",
            text: "The database did not answer; try again.".to_owned(),
            nav: None,
        };
        html(StatusCode::SERVICE_UNAVAILABLE, &page)
    }
}
