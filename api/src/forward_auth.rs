//! `GET /v1/auth`: forward authentication for reverse proxies. The key comes
//! from `Authorization`; the original request in exactly one way, chosen by
//! configuration (`KEYLEDGER_FORWARD_AUTH`), because a proxy forwards the
//! client's own headers along with its own and only the configured ones are
//! the proxy's word:
//!
//! - `nginx` (`auth_request`): `X-Original-Method` / `X-Original-URI`;
//! - `traefik` (ForwardAuth): `X-Forwarded-Method` / `X-Forwarded-Uri`;
//! - `envoy` (ext_authz HTTP service, `path_prefix: /v1/auth`): the check
//!   request's own method and its path after `/v1/auth`.
//!
//! A request that also carries another style's original-request headers, or
//! reaches `/v1/auth/<path>` outside the envoy style (or `/v1/auth` itself in
//! it), is a 400 naming the configured style: the proxy is not the one
//! configured, or a client is trying to choose what gets checked. The
//! original path must be plain ([`route_table::plain_path`]).
//!
//! 204 with the key's id, organization and environment and the rate-limit
//! headers when the key may make that request; otherwise the API's 401,
//! 403 or 429 (with `X-Keyledger-Error` naming the code, for proxies that
//! pass headers but not bodies).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use actix_web::http::header::HeaderName;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::{access, auth, error::ApiError, route_table, AppState};

/// How the proxy in front tells keyledger what the original request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardAuthStyle {
    #[default]
    Nginx,
    Traefik,
    Envoy,
}

/// A header the original request is read from: its name as the proxies
/// write it (in messages), and the name it is matched by (made once, not
/// parsed per request).
#[derive(Clone)]
struct OriginalHeader {
    shown: &'static str,
    name: HeaderName,
}

impl OriginalHeader {
    const fn new(shown: &'static str, name: &'static str) -> OriginalHeader {
        OriginalHeader {
            shown,
            name: HeaderName::from_static(name),
        }
    }
}

const X_ORIGINAL_METHOD: OriginalHeader = OriginalHeader::new("X-Original-Method", "x-original-method");
const X_ORIGINAL_URI: OriginalHeader = OriginalHeader::new("X-Original-URI", "x-original-uri");
const X_FORWARDED_METHOD: OriginalHeader = OriginalHeader::new("X-Forwarded-Method", "x-forwarded-method");
const X_FORWARDED_URI: OriginalHeader = OriginalHeader::new("X-Forwarded-Uri", "x-forwarded-uri");

/// Every header some style uses to carry the original request.
const ORIGINAL_REQUEST_HEADERS: [OriginalHeader; 4] =
    [X_ORIGINAL_METHOD, X_ORIGINAL_URI, X_FORWARDED_METHOD, X_FORWARDED_URI];

impl ForwardAuthStyle {
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardAuthStyle::Nginx => "nginx",
            ForwardAuthStyle::Traefik => "traefik",
            ForwardAuthStyle::Envoy => "envoy",
        }
    }

    /// The (method, URI) headers of this style; envoy has none.
    fn headers(self) -> Option<(OriginalHeader, OriginalHeader)> {
        match self {
            ForwardAuthStyle::Nginx => Some((X_ORIGINAL_METHOD, X_ORIGINAL_URI)),
            ForwardAuthStyle::Traefik => Some((X_FORWARDED_METHOD, X_FORWARDED_URI)),
            ForwardAuthStyle::Envoy => None,
        }
    }

    /// Whether this proxy sets `X-Real-IP` to the client (nginx, as the
    /// template does); Traefik and Envoy append the client to
    /// `X-Forwarded-For` and pass a client's `X-Real-IP` through.
    pub fn reads_x_real_ip(self) -> bool {
        self == ForwardAuthStyle::Nginx
    }

    /// Where this style reads the original request, in words.
    fn describe(self) -> String {
        match self.headers() {
            Some((method, uri)) => format!(
                "the original request comes to /v1/auth in {} and {}",
                method.shown, uri.shown
            ),
            None => "the original request is the check request itself: its method, and its path after /v1/auth".into(),
        }
    }

    fn refuse(self, problem: impl fmt::Display) -> ApiError {
        ApiError::BadRequest(format!(
            "{problem}. This keyledger is configured for {self} forward-auth (KEYLEDGER_FORWARD_AUTH={self}): {}.",
            self.describe()
        ))
    }
}

impl fmt::Display for ForwardAuthStyle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ForwardAuthStyle {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "nginx" => Ok(ForwardAuthStyle::Nginx),
            "traefik" => Ok(ForwardAuthStyle::Traefik),
            "envoy" => Ok(ForwardAuthStyle::Envoy),
            _ => Err(format!(
                "unknown forward-auth style '{text}': use nginx, traefik or envoy"
            )),
        }
    }
}

/// The one value of a header the style relies on; absent, repeated or not
/// visible ASCII is refused.
fn single_header<'a>(
    req: &'a HttpRequest,
    style: ForwardAuthStyle,
    header: &OriginalHeader,
) -> Result<&'a str, ApiError> {
    let name = header.shown;
    let mut values = req.headers().get_all(&header.name);
    match (values.next(), values.next()) {
        (Some(value), None) => value
            .to_str()
            .map_err(|_| style.refuse(format_args!("{name} is not visible ASCII"))),
        (None, _) => Err(style.refuse(format_args!("{name} is missing"))),
        (Some(_), Some(_)) => Err(style.refuse(format_args!("{name} is sent more than once"))),
    }
}

/// The original method and plain path, read the configured way.
fn original(req: &HttpRequest, style: ForwardAuthStyle, below_auth: bool) -> Result<(&str, Cow<'_, str>), ApiError> {
    let own = style.headers();
    let foreign = |header: &OriginalHeader| {
        own.as_ref()
            .is_none_or(|(method, uri)| header.name != method.name && header.name != uri.name)
            && req.headers().contains_key(&header.name)
    };
    if ORIGINAL_REQUEST_HEADERS.iter().any(foreign) {
        let foreign: Vec<&str> = ORIGINAL_REQUEST_HEADERS
            .iter()
            .filter(|header| foreign(header))
            .map(|header| header.shown)
            .collect();
        return Err(style.refuse(format_args!(
            "The request carries {}, which {style} does not send: the client or another proxy added it, and it \
             is refused rather than trusted",
            foreign.join(" and ")
        )));
    }
    let (method, target) = match (style.headers(), below_auth) {
        (Some((method, uri)), false) => (single_header(req, style, &method)?, single_header(req, style, &uri)?),
        (None, true) => {
            // The router matches the decoded path, so `/v1/%61uth/x` lands
            // here too: only the literal prefix is cut, anything else is
            // refused rather than checked whole.
            let path = req
                .uri()
                .path()
                .strip_prefix("/v1/auth")
                .filter(|rest| rest.starts_with('/'))
                .ok_or_else(|| {
                    style.refuse("The check request's path must start with /v1/auth/ as written (no %-escapes)")
                })?;
            (req.method().as_str(), path)
        }
        (Some(_), true) => return Err(style.refuse("The original path after /v1/auth is read only in envoy style")),
        (None, false) => return Err(style.refuse("No original path follows /v1/auth")),
    };
    // Guessing the method would fail open (GET needs the weakest scopes).
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-') {
        return Err(style.refuse(format_args!("The original method '{method}' is not an HTTP method")));
    }
    let path = route_table::plain_path(target).map_err(|problem| {
        ApiError::BadRequest(format!(
            "The original path is not plain: {problem}. keyledger checks only normalized paths (no dot or empty \
             segments, no ';' parameters, %-escapes only of letters, digits, '-', '.', '_' and '~', ASCII only); \
             anything else could reach another route upstream than the one it is checked as."
        ))
    })?;
    Ok((method, path))
}

async fn authorize(state: &AppState, req: &HttpRequest, below_auth: bool) -> Result<HttpResponse, ApiError> {
    let (method, path) = original(req, state.settings.forward_auth, below_auth)?;
    let needed = state.routes.required_scope(method, &path);
    let text = auth::bearer_key(req)?;
    let client = access::client_address(req, &state.settings)?;
    let guard = client.map_or(access::Guard::Nobody, access::Guard::Caller);
    let checked = access::check(state, req, text, guard, client, Some(state.environment), &[needed])
        .await?
        .ok_or(ApiError::InvalidApiKey)?;
    let key = checked.into_result()?;
    // Names made once, not parsed per answer.
    const KEY_ID: HeaderName = HeaderName::from_static("x-keyledger-key-id");
    const ORG_ID: HeaderName = HeaderName::from_static("x-keyledger-org-id");
    const ENVIRONMENT: HeaderName = HeaderName::from_static("x-keyledger-environment");
    Ok(HttpResponse::NoContent()
        .insert_header((KEY_ID, key.id_header.clone()))
        .insert_header((ORG_ID, key.org_header.clone()))
        .insert_header((ENVIRONMENT, key.row.environment().as_str()))
        .finish())
}

/// `/v1/auth`: nginx and traefik styles.
pub async fn auth(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req, false).await
}

/// `/v1/auth/<original path>`: envoy style, with the original method.
pub async fn auth_path(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req, true).await
}
