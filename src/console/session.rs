//! Logging in: the admin token, entered once, buys a session.
//!
//! - The session id is 256 random bits, sent only in the `payhook_session` cookie (HttpOnly,
//!   SameSite=Strict, Path=/console, Secure when the request came over HTTPS, directly or through
//!   a proxy's `X-Forwarded-Proto`), for [`LIFETIME`]. No token is ever put in a URL.
//! - Sessions live in the database (`console_sessions`), stored by the SHA-256 of their id: every
//!   instance behind a balancer knows them without sticky sessions, a restart logs no one out,
//!   and a copy of the table logs no one in.
//! - Each session has its own random CSRF token, which every form that changes something carries
//!   as `csrf_token`; a POST without the session's token is refused with 403.
//! - With no admin token configured, the console refuses every login.

use actix_web::cookie::{time, Cookie, SameSite};
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::NaiveDateTime;
use diesel::prelude::*;
use subtle::ConstantTimeEq;

use super::respond::{html, with_db, Failed};
use super::views::{Login, Message};
use crate::db::schema::console_sessions;
use crate::db::DbError;
use crate::http::state::AppState;

/// The session cookie's name.
pub const COOKIE: &str = "payhook_session";

/// How long a session lasts from login.
pub const LIFETIME_HOURS: i64 = 8;

/// The longest operator name kept, in characters.
const NAME_MAX_CHARS: usize = 64;

/// A logged-in operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The name given at login, or `operator`.
    pub operator: String,
    pub csrf_token: String,
    /// The start of the stored digest of the session id: names the session in records without
    /// revealing it.
    pub short_id: String,
}

impl Session {
    /// Who did something, as a resolution records it.
    pub fn who(&self) -> String {
        format!("{} (session {})", self.operator, self.short_id)
    }
}

/// 256 random bits, hex-encoded.
fn random_token() -> Result<String, aws_lc_rs::error::Unspecified> {
    use aws_lc_rs::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::SystemRandom::new().fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// What a session is stored under.
fn digest(id: &str) -> String {
    hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        id.as_bytes(),
    ))
}

/// The session the request's cookie names, if it exists and has not expired.
pub async fn current(
    req: &HttpRequest,
    state: &web::Data<AppState>,
) -> Result<Option<Session>, Failed> {
    let Some(id) = req.cookie(COOKIE).map(|c| c.value().to_owned()) else {
        return Ok(None);
    };
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let hash = digest(&id);
    let now = state.clock.now().naive_utc();
    with_db(state, move |conn| {
        let row = console_sessions::table
            .find(&hash)
            .filter(console_sessions::expires_at.gt(now))
            .select((console_sessions::operator, console_sessions::csrf_token))
            .first::<(String, String)>(conn)
            .optional()?;
        Ok(row.map(|(operator, csrf_token)| Session {
            operator,
            csrf_token,
            short_id: hash[..8].to_owned(),
        }))
    })
    .await
}

/// A form's fields, as sent (`application/x-www-form-urlencoded`).
pub struct Fields(Vec<(String, String)>);

impl Fields {
    pub fn parse(body: &[u8]) -> Fields {
        Fields(form_urlencoded::parse(body).into_owned().collect())
    }

    /// The first value of `name`, or "".
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// The session of a POST whose form carries the session's CSRF token; otherwise the 403 to
/// answer with.
pub async fn checked(
    req: &HttpRequest,
    state: &web::Data<AppState>,
    fields: &Fields,
) -> Result<Session, HttpResponse> {
    let session = current(req, state).await.map_err(HttpResponse::from)?;
    let given = fields.get("csrf_token");
    match session {
        Some(session)
            if !given.is_empty()
                && bool::from(session.csrf_token.as_bytes().ct_eq(given.as_bytes())) =>
        {
            Ok(session)
        }
        Some(_) => Err(forbidden(
            "This form's CSRF token is missing or wrong. Reload the page and try again.",
        )),
        None => Err(forbidden(
            "You are not logged in, or your session has expired. Log in again.",
        )),
    }
}

fn forbidden(text: &str) -> HttpResponse {
    let page = Message {
        title: "Refused",
        text: text.to_owned(),
        nav: None,
    };
    html(StatusCode::FORBIDDEN, &page)
}

/// The login page, with `status` and why it is shown again.
pub fn login_page(status: StatusCode, error: Option<&str>) -> HttpResponse {
    let page = Login {
        error: error.map(str::to_owned),
        nav: None,
    };
    html(status, &page)
}

/// `POST /console/login`: the admin token (field `token`) and, optionally, the operator's name
/// (field `name`), recorded with what they resolve.
pub async fn login(req: HttpRequest, state: web::Data<AppState>, body: web::Bytes) -> HttpResponse {
    let fields = Fields::parse(&body);
    let Some(expected) = state.admin_token.clone() else {
        return login_page(
            StatusCode::FORBIDDEN,
            Some("No admin token is configured, so the console admits no one."),
        );
    };
    let given = fields.get("token").trim();
    // Digests of equal length are compared, so that not even the token's length shows in the time
    // a refusal takes.
    let sha256 =
        |text: &str| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    let same = sha256(expected.expose())
        .as_ref()
        .ct_eq(sha256(given).as_ref());
    if given.is_empty() || !bool::from(same) {
        log::warn!(target: "payhook::console", "console login refused: wrong token");
        return login_page(StatusCode::UNAUTHORIZED, Some("Wrong token."));
    }
    let operator = operator_name(fields.get("name"));
    let (Ok(id), Ok(csrf_token)) = (random_token(), random_token()) else {
        log::error!(target: "payhook::console", "no randomness for a session id");
        return HttpResponse::InternalServerError().finish();
    };
    let now = state.clock.now().naive_utc();
    let expires_at = now + chrono::Duration::hours(LIFETIME_HOURS);
    let hash = digest(&id);
    let stored_operator = operator.clone();
    let stored = with_db(&state, move |conn| {
        store(conn, &hash, &csrf_token, &stored_operator, now, expires_at)
    })
    .await;
    if let Err(failed) = stored {
        return failed.into();
    }
    log::info!(target: "payhook::console", operator = operator.as_str(); "console login");
    let secure = req.connection_info().scheme() == "https";
    let cookie = Cookie::build(COOKIE, id)
        .path("/console")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .max_age(time::Duration::hours(LIFETIME_HOURS))
        .finish();
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/console"))
        .cookie(cookie)
        .finish()
}

/// Keeps a new session, and forgets the expired ones.
fn store(
    conn: &mut crate::db::DbConnection,
    hash: &str,
    csrf_token: &str,
    operator: &str,
    now: NaiveDateTime,
    expires_at: NaiveDateTime,
) -> Result<(), DbError> {
    diesel::delete(console_sessions::table.filter(console_sessions::expires_at.le(now)))
        .execute(conn)?;
    diesel::insert_into(console_sessions::table)
        .values((
            console_sessions::id_hash.eq(hash),
            console_sessions::csrf_token.eq(csrf_token),
            console_sessions::operator.eq(operator),
            console_sessions::created_at.eq(now),
            console_sessions::expires_at.eq(expires_at),
        ))
        .execute(conn)?;
    Ok(())
}

/// The name an operator gave, cleaned of control characters and cut short, or `operator`.
fn operator_name(given: &str) -> String {
    let name: String = given
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(NAME_MAX_CHARS)
        .collect();
    if name.trim().is_empty() {
        "operator".to_owned()
    } else {
        name.trim().to_owned()
    }
}

/// `POST /console/logout` (with the CSRF token): ends the session and clears the cookie.
pub async fn logout(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let fields = Fields::parse(&body);
    if let Err(refused) = checked(&req, &state, &fields).await {
        return refused;
    }
    if let Some(id) = req.cookie(COOKIE).map(|c| c.value().to_owned()) {
        let hash = digest(&id);
        let ended = with_db(&state, move |conn| {
            diesel::delete(console_sessions::table.find(hash)).execute(conn)?;
            Ok(())
        })
        .await;
        if let Err(failed) = ended {
            return failed.into();
        }
    }
    let mut gone = Cookie::build(COOKIE, "")
        .path("/console")
        .http_only(true)
        .same_site(SameSite::Strict)
        .finish();
    gone.make_removal();
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/console"))
        .cookie(gone)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_256_random_bits_and_stored_only_as_digests() {
        let a = random_token().unwrap();
        let b = random_token().unwrap();
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_eq!(digest(&a).len(), 64);
        assert_ne!(digest(&a), a);
    }

    #[test]
    fn operator_names_lose_control_characters_and_length() {
        assert_eq!(operator_name("  ana\n\u{7}  "), "ana");
        assert_eq!(operator_name(""), "operator");
        assert_eq!(operator_name(&"x".repeat(100)).len(), NAME_MAX_CHARS);
    }
}
