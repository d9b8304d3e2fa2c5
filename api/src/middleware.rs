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

use keyledger_events::domain::confirmation::CONFIRM_PATH;

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

/// The parameter named like a credential that a path takes by design, if
/// any: only the confirmation link's `token` (API.md), which is not an API
/// key (see `recipients.rs`).
fn allowed_parameter(path: &str) -> Option<&'static str> {
    (path == CONFIRM_PATH).then_some("token")
}

/// Whether `query` names a credential parameter (other than `allowed`) or
/// holds anything key-shaped — the allowed parameter's value included.
fn query_carries_key(query: &str, allowed: Option<&str>) -> bool {
    query.split('&').any(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (KEY_PARAMETERS.contains(&name.to_ascii_lowercase().as_str()) && allowed != Some(name))
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
            if query_carries_key(req.query_string(), allowed_parameter(req.path())) {
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
    use super::{allowed_parameter, query_carries_key};
    use keyledger_events::domain::confirmation::CONFIRM_PATH;

    #[test]
    fn keys_in_query_strings_are_recognised() {
        assert!(query_carries_key("api_key=abc", None));
        assert!(query_carries_key("limit=5&key=x", None));
        assert!(query_carries_key("q=sk_live_abc", None));
        assert!(query_carries_key("Token=1", None));
        assert!(!query_carries_key("limit=5&cursor=key_01ABC", None));
        assert!(!query_carries_key("", None));
    }

    #[test]
    fn only_the_confirmation_link_may_carry_a_token() {
        let link = "token=org_01ABC.1764320400000000.6f7073.00ff";
        let check = |path: &str, query: &str| query_carries_key(query, allowed_parameter(path));
        assert!(!check(CONFIRM_PATH, link));
        assert!(check("/v1/keys", link));
        assert!(check("/v1/org", link));
        assert!(check(CONFIRM_PATH, &format!("{link}&api_key=x")));
        assert!(check(CONFIRM_PATH, &format!("{link}&Token=x")));
        assert!(check(CONFIRM_PATH, "token=sk_live_abc"));
    }
}
