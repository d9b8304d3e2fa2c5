//! Per-request context: the request id (echoed or generated, on every
//! answer and in every error body), refusal of keys in query strings, and
//! the access log — which records method, path, status and timing, never a
//! query string or a header (either could carry a key).

use std::time::Instant;

use actix_web::{
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::header::{HeaderName, HeaderValue},
    middleware::Next,
    Error, HttpMessage, ResponseError,
};

use crate::error::ApiError;
use crate::rate_limit::Decision;

/// `X-RateLimit-*` for an answer to a request made with a known key.
pub fn rate_limit_headers(decision: &Decision) -> [(&'static str, u64); 3] {
    [
        ("x-ratelimit-limit", u64::from(decision.limit)),
        ("x-ratelimit-remaining", u64::from(decision.remaining)),
        ("x-ratelimit-reset", decision.reset),
    ]
}

pub const REQUEST_ID_HEADER: &str = "x-request-id";

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being handled ("" outside a request).
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

/// A caller's id is echoed if it is short, visible ASCII; otherwise ours.
fn request_id_of(req: &ServiceRequest) -> String {
    req.headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("req_{}", uuid::Uuid::now_v7().simple()))
}

/// Query parameters that would carry a credential.
const KEY_PARAMETERS: [&str; 5] = ["key", "api_key", "apikey", "access_token", "token"];
const KEY_PREFIXES: [&str; 3] = ["pk_live_", "sk_live_", "sk_test_"];

/// The one link that carries `token=` by design (API.md): an alert
/// recipient's confirmation token, which is not an API key (see
/// `recipients.rs`). Only that parameter of only that path is let through;
/// its value is still checked for key prefixes like any other.
const CONFIRMATION_PATH: &str = "/v1/alert-recipients/confirm";

fn query_to_check<'q>(path: &str, query: &'q str) -> std::borrow::Cow<'q, str> {
    if path != CONFIRMATION_PATH {
        return query.into();
    }
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.strip_prefix("token=") {
            Some(value) => format!("confirmation_token={value}"),
            None => pair.to_owned(),
        })
        .collect();
    pairs.join("&").into()
}

fn query_carries_key(query: &str) -> bool {
    query.split('&').any(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        KEY_PARAMETERS.contains(&name.to_ascii_lowercase().as_str())
            || KEY_PREFIXES.iter().any(|p| value.contains(p) || name.contains(p))
    })
}

pub async fn request_context(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = Instant::now();
    let request_id = request_id_of(&req);
    let method = req.method().clone();
    let path = req.path().to_owned();
    let result = REQUEST_ID
        .scope(request_id.clone(), async move {
            if query_carries_key(&query_to_check(req.path(), req.query_string())) {
                let refusal = ApiError::BadRequest(
                    "API keys are not accepted in query strings (they end up in logs and browser history): \
                     send 'Authorization: Bearer <key>' instead."
                        .into(),
                );
                let response = refusal.error_response();
                return Ok(req.into_response(response).map_into_right_body());
            }
            next.call(req).await.map(ServiceResponse::map_into_left_body)
        })
        .await;
    let mut response = result?;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID_HEADER), value);
    }
    let decision = response.request().extensions().get::<Decision>().copied();
    if let Some(decision) = decision {
        let headers = response.headers_mut();
        for (name, value) in rate_limit_headers(&decision) {
            headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
        }
    }
    tracing::info!(
        request_id = %request_id,
        method = %method,
        path = %path,
        status = response.status().as_u16(),
        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::query_carries_key;

    #[test]
    fn keys_in_query_strings_are_recognised() {
        assert!(query_carries_key("api_key=abc"));
        assert!(query_carries_key("limit=5&key=x"));
        assert!(query_carries_key("q=sk_live_abc"));
        assert!(query_carries_key("Token=1"));
        assert!(!query_carries_key("limit=5&cursor=key_01ABC"));
        assert!(!query_carries_key(""));
    }

    #[test]
    fn only_the_confirmation_link_may_carry_a_token() {
        use super::{query_to_check, CONFIRMATION_PATH};
        let link = "token=org_01ABC.1764320400000000.6f7073.00ff";
        assert!(!query_carries_key(&query_to_check(CONFIRMATION_PATH, link)));
        assert!(query_carries_key(&query_to_check("/v1/keys", link)));
        assert!(query_carries_key(&query_to_check(
            CONFIRMATION_PATH,
            &format!("{link}&api_key=x")
        )));
        assert!(query_carries_key(&query_to_check(
            CONFIRMATION_PATH,
            "token=sk_live_abc"
        )));
    }
}
