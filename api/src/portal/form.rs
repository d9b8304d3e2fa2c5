//! Posted portal forms: the body (urlencoded, at most 64 KiB), and the
//! checks that it was sent by this session from this site — the CSRF token,
//! and `Origin` / `Sec-Fetch-Site` when the browser sends them.
//!
//! The forms that show a secret once (create a key, regenerate one) also
//! carry a nonce, new with each page: it is the operation's
//! `Idempotency-Key`, so the same form sent again (a double click, a reload
//! of the answer, a retry after a lost answer) gets the first outcome back
//! instead of a second key or a second new secret.

use actix_web::{http::header, web, HttpRequest};
use futures_util::StreamExt;
use keyledger_events::domain::OrgId;
use serde_json::{Map, Value};

use super::{PortalError, Session};
use crate::idempotency::{self, IdempotencyKey, Idempotent};
use crate::{error::ApiError, AppState, BODY_LIMIT};

/// The hidden field that holds a form's nonce.
pub const NONCE: &str = "nonce";

/// A new form's nonce: 256 bits from the OS CSPRNG, as 64 hex characters.
pub fn nonce() -> Result<String, PortalError> {
    Ok(super::session::new_token()?)
}

/// A posted form's fields, in order (a field may repeat: `scopes`).
#[derive(Debug, Default)]
pub struct Form {
    fields: Vec<(String, String)>,
}

impl Form {
    pub fn parse(body: &[u8]) -> Form {
        Form {
            fields: form_urlencoded::parse(body).into_owned().collect(),
        }
    }

    /// The first value of `name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The first value of `name`, or "".
    pub fn text(&self, name: &str) -> String {
        self.get(name).unwrap_or_default().to_owned()
    }

    /// The form as a request body for its `Idempotency-Key`: every field
    /// but the CSRF token and the nonce, each with all its values.
    fn body(&self) -> Map<String, Value> {
        let mut body = Map::new();
        for (name, value) in &self.fields {
            if name != "csrf" && name != NONCE {
                let values = body.entry(name.clone()).or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(values) = values {
                    values.push(Value::String(value.clone()));
                }
            }
        }
        body
    }

    /// The form's nonce as the `Idempotency-Key` of the operation `req`
    /// runs for the caller's organization, with the form's other fields as
    /// its body. A form without a well-formed nonce (a page from before
    /// nonces, or not from the portal at all) is refused: nothing runs.
    pub fn idempotent(&self, req: &HttpRequest, org_id: OrgId) -> Result<Idempotent, PortalError> {
        let key = self
            .get(NONCE)
            .and_then(|nonce| IdempotencyKey::parse(nonce).ok())
            .ok_or_else(|| ApiError::BadRequest("the form has no valid nonce: reload the page".into()))?;
        Ok(Idempotent::new(org_id, idempotency::operation(req), key, &self.body()))
    }

    /// Every value of `name`.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.fields
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// Whether the request's `Origin` (when sent) is this site: the origin of
/// the configured public base URL. (Never the request's own `Host` or
/// `X-Forwarded-Host`: whoever sends the request chooses those.)
fn same_origin(req: &HttpRequest, public_url: &str) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    origin.eq_ignore_ascii_case(origin_of(public_url))
}

/// `scheme://host[:port]` of a base URL (`https://keys.example.com/base` →
/// `https://keys.example.com`).
fn origin_of(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(path) => &url[..after_scheme + path],
        None => url,
    }
}

/// Reads a form posted by `session`: refused (changing nothing) unless it
/// carries the session's CSRF token and comes from this site.
pub async fn read(
    req: &HttpRequest,
    mut payload: web::Payload,
    state: &AppState,
    session: &Session,
) -> Result<Form, PortalError> {
    let fetch_site = req.headers().get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if fetch_site.is_some_and(|site| site != "same-origin") || !same_origin(req, &state.settings.public_url) {
        return Err(PortalError::Forged);
    }
    let mut bytes = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("the form could not be read: {e}")))?;
        if bytes.len() + chunk.len() > BODY_LIMIT {
            return Err(ApiError::PayloadTooLarge.into());
        }
        bytes.extend_from_slice(&chunk);
    }
    let form = Form::parse(&bytes);
    match form.get("csrf") {
        Some(token) if session.csrf_matches(token) => Ok(form),
        _ => Err(PortalError::Forged),
    }
}

/// A path inside the portal to return to after a form, or `fallback`: never
/// another site (`//host`, `https://…`).
pub fn return_path(form: &Form, fallback: &str) -> String {
    match form.get("return_to") {
        Some(path)
            if path.starts_with("/portal/")
                && !path.starts_with("//")
                && !path.contains(['\\', '\r', '\n'])
                && !path.contains("://") =>
        {
            path.to_owned()
        }
        _ => fallback.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_fields_and_encodings_are_read() {
        let form = Form::parse(b"name=%3Cscript%3E+x&scopes=read%3Aexperiences&scopes=admin&csrf=ab");
        assert_eq!(form.text("name"), "<script> x");
        assert_eq!(form.all("scopes"), ["read:experiences", "admin"]);
        assert_eq!(form.get("missing"), None);
    }

    #[test]
    fn the_idempotency_body_is_every_field_but_the_token_and_the_nonce() {
        let form = Form::parse(b"csrf=ab&nonce=n1&name=x&scopes=a&scopes=b");
        let body = form.body();
        assert_eq!(
            serde_json::Value::Object(body),
            serde_json::json!({"name": ["x"], "scopes": ["a", "b"]})
        );
        let again = Form::parse(b"nonce=n1&scopes=a&name=x&scopes=b&csrf=cd");
        assert_eq!(
            idempotency::fingerprint(&again.body()),
            idempotency::fingerprint(&form.body())
        );
    }

    #[test]
    fn the_origin_is_the_public_base_urls() {
        assert_eq!(origin_of("https://keys.example.com"), "https://keys.example.com");
        assert_eq!(origin_of("https://keys.example.com/base/"), "https://keys.example.com");
        assert_eq!(origin_of("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
    }

    #[test]
    fn return_paths_stay_in_the_portal() {
        let with = |p: &str| Form::parse(format!("return_to={}", p).as_bytes());
        assert_eq!(
            return_path(&with("/portal/keys/key_1"), "/portal/keys"),
            "/portal/keys/key_1"
        );
        for bad in [
            "//evil.example/portal/",
            "https://evil.example/portal/",
            "/elsewhere",
            "/portal/%0d%0a",
        ] {
            let form = with(bad);
            let path = return_path(&form, "/portal/keys");
            assert!(
                path == "/portal/keys" || path.starts_with("/portal/") && !path.contains('\n'),
                "{bad}"
            );
        }
    }
}
