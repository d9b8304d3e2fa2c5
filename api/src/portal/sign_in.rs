//! Getting in and out: `POST /v1/portal/sessions` (an admin key mints a
//! sign-in link), following a link (`/portal/session/<token>`), the page
//! for visitors without a session, and Sign out.

use actix_web::{http::header, http::StatusCode, web, HttpRequest, HttpResponse};
use keyledger_events::domain::org::EmailAddress;
use serde_json::json;

use super::{form, html, session, views, PortalError, Session};
use crate::{auth::Admin, body, error::ApiError, AppState};

/// `POST /v1/portal/sessions`: a single-use sign-in link to the caller's
/// organization's portal, optionally for a named user.
pub async fn mint(
    state: web::Data<AppState>,
    caller: Admin,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let mut fields = body::read_object(&req, payload).await?;
    let user = fields.optional_string("user");
    fields.finish()?;
    let user = user
        .map(|u| EmailAddress::parse(&u))
        .transpose()
        .map_err(|problem| ApiError::invalid("user", problem))?;
    let link = session::mint_link(
        &state.pool,
        &state.settings.public_url,
        caller.org_id(),
        user.as_ref(),
        crate::clock::now(),
        state.settings.portal_link_lifetime,
    )
    .await?;
    Ok(HttpResponse::Created()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({"url": link.url, "expires_at": keyledger_events::representation::rfc3339(link.expires_at)})))
}

/// `/portal`: the key list.
pub async fn home() -> HttpResponse {
    super::see_other("/portal/keys")
}

/// A link lifetime in words: "5 minutes", "1 hour", "90 seconds".
fn lifetime_text(lifetime: std::time::Duration) -> String {
    let seconds = lifetime.as_secs();
    let (n, unit) = match seconds {
        s if s > 0 && s % 3600 == 0 => (s / 3600, "hour"),
        s if s > 0 && s % 60 == 0 => (s / 60, "minute"),
        s => (s, "second"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

fn sign_in_view(state: &AppState, signed_out: bool, refused: bool, retry_signed_in: bool) -> views::SignInPage {
    views::SignInPage {
        signed_out,
        refused,
        retry_signed_in,
        link_lifetime: lifetime_text(state.settings.portal_link_lifetime),
    }
}

/// Where visitors without a session land: how to get a sign-in link.
pub async fn sign_in_page(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<Vec<(String, String)>>,
) -> HttpResponse {
    let signed_out = query.iter().any(|(name, _)| name == "signed_out");
    // A link followed from another site: the session cookie (SameSite=Strict)
    // was not sent with the redirect that brought the browser here. One
    // reload from this page, a same-site navigation, carries it.
    let cross_site = req
        .headers()
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site");
    html(
        StatusCode::OK,
        &sign_in_view(&state, signed_out, false, cross_site && !signed_out),
    )
}

/// `/portal/session/<token>`: a valid link starts a session and lands on the
/// key list; an unknown, used or expired one is refused with a page saying so.
/// The session this browser had (when its cookie came along) ends: one
/// browser, one session.
pub async fn follow_link(
    state: web::Data<AppState>,
    token: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, PortalError> {
    let previous = session::cookie_token(&req);
    let started = if token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()) {
        session::start_session(&state.pool, &token, previous.as_deref(), crate::clock::now()).await?
    } else {
        None
    };
    let Some(session_token) = started else {
        return Ok(html(StatusCode::GONE, &sign_in_view(&state, false, true, false)));
    };
    let secure = state.settings.public_url.starts_with("https://");
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/portal/keys"))
        .insert_header((header::SET_COOKIE, session::cookie(Some(&session_token), secure)))
        .finish())
}

/// Sign out: the session ends now, in the database and in the browser.
pub async fn sign_out(
    state: web::Data<AppState>,
    session: Session,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, PortalError> {
    form::read(&req, payload, &state, &session).await?;
    session::end_session(&state.pool, session.token()).await?;
    let secure = state.settings.public_url.starts_with("https://");
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/portal/sign-in?signed_out=1"))
        .insert_header((header::SET_COOKIE, session::cookie(None, secure)))
        .finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn link_lifetimes_read_as_words() {
        assert_eq!(lifetime_text(Duration::from_secs(300)), "5 minutes");
        assert_eq!(lifetime_text(Duration::from_secs(3600)), "1 hour");
        assert_eq!(lifetime_text(Duration::from_secs(60)), "1 minute");
        assert_eq!(lifetime_text(Duration::from_secs(90)), "90 seconds");
        assert_eq!(lifetime_text(Duration::from_secs(0)), "0 seconds");
    }
}
