//! Posted portal forms: the body (urlencoded, at most 64 KiB), and the
//! checks that it was sent by this session from this site — the CSRF token,
//! and `Origin` / `Sec-Fetch-Site` when the browser sends them.

use actix_web::{http::header, web, HttpRequest};
use futures_util::StreamExt;

use super::{PortalError, Session};
use crate::{error::ApiError, AppState, BODY_LIMIT};

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
