//! The customer portal: the product's "API keys" settings page, served as
//! server-rendered HTML by keyledger itself (`/portal/…`).
//!
//! Every change is the same operation as over the JSON API (`manage.rs`),
//! recorded with the actor `portal:<user>`. Pages are askama templates
//! (checked at compile time, HTML-escaped by default); the stylesheet and the
//! small script are compiled into the binary. Every form works without
//! JavaScript; the script adds copying, menus and dialogs.
//!
//! Safety: sessions come only from single-use sign-in links
//! (`POST /v1/portal/sessions`); every POST carries the session's CSRF token
//! and must come from this origin; every answer carries a CSP without
//! inline scripts or styles and refuses framing; a new key's secret appears
//! only in the answer to the POST that made it, which is never stored.

pub mod assets;
pub mod chart;
pub mod form;
pub mod keys;
pub mod org;
pub mod session;
pub mod sign_in;
pub mod views;
pub mod webhooks;

use actix_web::{
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::{header, StatusCode},
    middleware::{from_fn, Next},
    web, HttpResponse, ResponseError,
};
use askama::Template;

use crate::error::ApiError;

pub use session::Session;

/// The policy every portal answer carries: scripts, styles and images only
/// from this origin (no inline script, no inline style), forms only to it,
/// never inside a frame; nothing else (the pages fetch nothing).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Registers the portal's routes under `/portal`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/portal")
            .wrap(from_fn(security_headers))
            .route("", web::get().to(sign_in::home))
            .route("/", web::get().to(sign_in::home))
            .route("/sign-in", web::get().to(sign_in::sign_in_page))
            .route("/session/{token}", web::get().to(sign_in::follow_link))
            .route("/sign-out", web::post().to(sign_in::sign_out))
            .route("/assets/{name}", web::get().to(assets::asset))
            .route("/keys", web::get().to(keys::list))
            .route("/keys", web::post().to(keys::create))
            .route("/keys/new", web::get().to(keys::new_form))
            .route("/keys/{id}", web::get().to(keys::detail))
            .route("/keys/{id}/actions", web::get().to(keys::actions))
            .route("/keys/{id}/edit", web::get().to(keys::edit_form))
            .route("/keys/{id}/edit", web::post().to(keys::edit))
            .route("/keys/{id}/regenerate", web::get().to(keys::regenerate_form))
            .route("/keys/{id}/regenerate", web::post().to(keys::regenerate))
            .route("/keys/{id}/deactivate", web::post().to(keys::deactivate))
            .route("/keys/{id}/activate", web::post().to(keys::activate))
            .route("/keys/{id}/delete", web::get().to(keys::delete_form))
            .route("/keys/{id}/delete", web::post().to(keys::delete))
            .route("/settings", web::get().to(org::settings))
            .route("/settings", web::post().to(org::save_settings))
            .route("/alerts", web::get().to(org::alerts))
            .route("/webhooks", web::get().to(webhooks::list))
            .route("/webhooks", web::post().to(webhooks::create))
            .route("/webhooks/new", web::get().to(webhooks::new_form))
            .route("/webhooks/{id}", web::get().to(webhooks::detail))
            .route("/webhooks/{id}/edit", web::get().to(webhooks::edit_form))
            .route("/webhooks/{id}/edit", web::post().to(webhooks::edit))
            .route("/webhooks/{id}/delete", web::get().to(webhooks::delete_form))
            .route("/webhooks/{id}/delete", web::post().to(webhooks::delete))
            .route("/webhooks/{id}/replay", web::post().to(webhooks::replay))
            .route("/webhooks/{id}/{action}", web::post().to(webhooks::toggle))
            .default_service(web::to(not_found)),
    );
}

async fn not_found() -> Result<HttpResponse, PortalError> {
    Err(PortalError::NotFound)
}

/// Headers of every portal answer: the CSP, no framing, no sniffing, no
/// referrer to other sites (paths name keys; `no-referrer` would also turn
/// the `Origin` of our own forms into `null`), and no caching of pages
/// (they are per session; the one-time key display above all).
async fn security_headers(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let is_asset = req.path().starts_with("/portal/assets/");
    let mut response = next.call(req).await?;
    let headers = response.headers_mut();
    let set = |headers: &mut header::HeaderMap, name: header::HeaderName, value: &'static str| {
        headers.insert(name, header::HeaderValue::from_static(value));
    };
    set(headers, header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY);
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "same-origin");
    set(headers, header::CROSS_ORIGIN_OPENER_POLICY, "same-origin");
    if !is_asset {
        set(headers, header::CACHE_CONTROL, "no-store");
    }
    Ok(response)
}

/// Why a portal request did not get its page; each case renders as HTML.
#[derive(Debug, thiserror::Error)]
pub enum PortalError {
    /// No running session: go to the page that says how to sign in.
    #[error("not signed in")]
    SignIn,
    /// A form without this session's CSRF token, or from another site.
    #[error("form refused")]
    Forged,
    #[error("not found")]
    NotFound,
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl From<sqlx::Error> for PortalError {
    fn from(e: sqlx::Error) -> Self {
        PortalError::Api(e.into())
    }
}

impl ResponseError for PortalError {
    fn status_code(&self) -> StatusCode {
        match self {
            PortalError::SignIn => StatusCode::SEE_OTHER,
            PortalError::Forged => StatusCode::FORBIDDEN,
            PortalError::NotFound | PortalError::Api(ApiError::NotFound) => StatusCode::NOT_FOUND,
            PortalError::Api(e) => e.status_code(),
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let PortalError::SignIn = self {
            return HttpResponse::SeeOther()
                .insert_header((header::LOCATION, "/portal/sign-in"))
                .finish();
        }
        if let PortalError::Api(ApiError::Internal(cause)) = self {
            tracing::error!(
                request_id = %crate::request_id::current(),
                error = %crate::error::error_chain(cause.as_ref()),
                "portal request failed"
            );
        }
        let (title, message) = match self {
            PortalError::Forged => (
                "This form could not be accepted",
                "The form did not come from this page or your session changed. Go back, reload the page and \
                 try again.",
            ),
            PortalError::NotFound | PortalError::Api(ApiError::NotFound) => (
                "Page not found",
                "There is no such page or key in your organization. It may have been deleted.",
            ),
            PortalError::Api(ApiError::Conflict(_)) => (
                "That change could not be made",
                "The key changed in the meantime or cannot take this action in its state. Go back, reload and \
                 try again.",
            ),
            PortalError::Api(ApiError::Unavailable) => (
                "Temporarily unavailable",
                "A service keyledger depends on is not answering. Try again in a few seconds.",
            ),
            PortalError::Api(ApiError::PayloadTooLarge) => (
                "That form is too large",
                "A form can hold at most 64 KiB. Go back, shorten what you entered and try again.",
            ),
            PortalError::SignIn | PortalError::Api(ApiError::Internal(_)) => (
                "Something went wrong",
                "Something went wrong on our side. Try again; if it persists, tell your platform's support.",
            ),
            PortalError::Api(_) => (
                "That request could not be accepted",
                "The form could not be read as sent. Go back, reload the page and try again.",
            ),
        };
        let page = views::MessagePage {
            title,
            message,
            request_id: crate::request_id::current(),
            signed_in: !matches!(self, PortalError::Forged),
        };
        let mut response = html(self.status_code(), &page);
        if let PortalError::Api(ApiError::Unavailable) = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        }
        response
    }
}

/// A rendered page with `status`.
pub fn html(status: StatusCode, page: &impl Template) -> HttpResponse {
    match page.render() {
        Ok(body) => HttpResponse::build(status)
            .content_type("text/html; charset=utf-8")
            .body(body),
        Err(e) => {
            tracing::error!(
                request_id = %crate::request_id::current(),
                error = %e,
                "a portal page could not be rendered"
            );
            HttpResponse::InternalServerError()
                .content_type("text/html; charset=utf-8")
                .body(RENDER_FAILED)
        }
    }
}

/// The page of last resort, when a page's template fails to render.
const RENDER_FAILED: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
    <title>Something went wrong · keyledger</title></head><body><main><h1>Something went wrong</h1>\
    <p>This page could not be shown. Try again; if it persists, tell your platform's support.</p>\
    </main></body></html>";

/// A rendered page (200).
pub fn page(page: &impl Template) -> Result<HttpResponse, PortalError> {
    Ok(html(StatusCode::OK, page))
}

/// `303 See Other` to a portal path (after a successful form).
pub fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .finish()
}
