//! The one error type of the API: every case maps to a status and a code of
//! docs/api.md ("Errors"), with a message that says what to do. Internal errors become an
//! opaque 500 and are logged with their cause chain.

use actix_web::{http::header, http::StatusCode, HttpResponse, ResponseError};
use keyledger_events::domain::{DomainError, Scope, ValidationDetails};
use keyledger_events::handler::HandlerError;
use serde_json::json;

use crate::request_id;

/// Seconds a client is asked to wait after `503 unavailable`.
pub const UNAVAILABLE_RETRY_AFTER: &str = "2";

/// Carries the error code on every error answer (see the nginx example).
pub const ERROR_CODE_HEADER: &str = "x-keyledger-error";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing API key")]
    MissingApiKey,
    #[error("invalid API key")]
    InvalidApiKey,
    #[error("key expired")]
    KeyExpired,
    #[error("key inactive")]
    KeyInactive,
    #[error("insufficient scope: {0}")]
    InsufficientScope(Scope),
    #[error("environment mismatch")]
    EnvironmentMismatch { required: &'static str },
    /// The key has an IP allowlist and the client address is not on it.
    #[error("IP address not allowed")]
    IpNotAllowed,
    /// A leak report without a valid signature of a configured reporter key.
    #[error("invalid signature")]
    InvalidSignature(String),
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("payload too large")]
    PayloadTooLarge,
    /// A leak report over its own (larger) limit; the message says which.
    #[error("{0}")]
    ReportTooLarge(String),
    /// `POST /v1/leaks` on a deployment without accepted reporter keys.
    #[error("leak reports not configured")]
    LeakReportsNotConfigured,
    #[error("validation failed")]
    Validation(ValidationDetails),
    /// The organization is at a quota; the message names it.
    #[error("{0}")]
    QuotaExceeded(String),
    #[error("rate limited")]
    RateLimited { retry_after: u64 },
    #[error("too many failed attempts")]
    TooManyFailedAttempts { retry_after: u64 },
    /// A path no endpoint answers (as opposed to an id nobody owns).
    #[error("no such endpoint")]
    NoSuchEndpoint,
    /// An earlier request with the same `Idempotency-Key` is still running.
    #[error("idempotent request in progress")]
    InProgress,
    #[error("a dependency is unavailable")]
    Unavailable,
    #[error("internal error: {0:#}")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn internal(e: impl std::error::Error + Send + Sync + 'static) -> ApiError {
        ApiError::Internal(Box::new(e))
    }

    pub fn invalid(field: &str, problem: impl Into<String>) -> ApiError {
        ApiError::Validation(match DomainError::invalid(field, problem) {
            DomainError::Validation(details) => details,
            _ => unreachable!("invalid() builds a validation error"),
        })
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::MissingApiKey => "missing_api_key",
            ApiError::InvalidApiKey => "invalid_api_key",
            ApiError::KeyExpired => "key_expired",
            ApiError::KeyInactive => "key_inactive",
            ApiError::InsufficientScope(_) => "insufficient_scope",
            ApiError::EnvironmentMismatch { .. } => "environment_mismatch",
            ApiError::IpNotAllowed => "ip_not_allowed",
            ApiError::InvalidSignature(_) => "invalid_signature",
            ApiError::NotFound => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge | ApiError::ReportTooLarge(_) => "payload_too_large",
            ApiError::LeakReportsNotConfigured => "unavailable",
            ApiError::Validation(_) => "validation_error",
            ApiError::QuotaExceeded(_) => "quota_exceeded",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::TooManyFailedAttempts { .. } => "too_many_failed_attempts",
            ApiError::NoSuchEndpoint => "not_found",
            ApiError::InProgress => "conflict",
            ApiError::Unavailable => "unavailable",
            ApiError::Internal(_) => "internal_error",
        }
    }

    fn message(&self) -> String {
        match self {
            ApiError::BadRequest(m) | ApiError::Conflict(m) | ApiError::QuotaExceeded(m) | ApiError::ReportTooLarge(m) => {
                m.clone()
            }
            ApiError::LeakReportsNotConfigured => "This deployment does not accept leak reports yet: its operator has \
             not configured the public keys reports are signed with (KEYLEDGER_LEAK_REPORT_KEYS). Retry later."
                .into(),
            ApiError::MissingApiKey => {
                "No API key: send it in the header 'Authorization: Bearer <key>'.".into()
            }
            ApiError::InvalidApiKey => "The API key is not valid. Check that it was copied completely and \
                 correctly, that it was not regenerated or deleted, and that it belongs to this service."
                .into(),
            ApiError::KeyExpired => {
                "The API key has expired. Create a new key, or use another active key.".into()
            }
            ApiError::KeyInactive => {
                "The API key is deactivated. Re-activate it in the key list, or use an active key.".into()
            }
            ApiError::InsufficientScope(scope) => format!(
                "The API key lacks the scope '{scope}' this operation needs. Use a key that has it, or add it to this key."
            ),
            ApiError::EnvironmentMismatch { required } => format!(
                "This operation needs a {required} key; the key given is for the other environment. \
                 Use a {required} key (live keys start with pk_live_ or sk_live_, test keys with sk_test_)."
            ),
            ApiError::IpNotAllowed => "This API key may only be used from the IP addresses on its allowlist, and this \
                 request comes from another address. Send it from an allowed address, or add this address to the \
                 key's allowed_ips."
                .into(),
            ApiError::InvalidSignature(why) => format!(
                "The report's signature does not check: {why}. Reports must be signed (ECDSA P-256, SHA-256, \
                 base64 DER in Github-Public-Key-Signature) by a key this deployment accepts, named in \
                 Github-Public-Key-Identifier."
            ),
            ApiError::NotFound => "No such resource in your organization.".into(),
            ApiError::PayloadTooLarge => "The request body is larger than 64 KiB.".into(),
            ApiError::Validation(_) => "The request is invalid: see details.".into(),
            ApiError::RateLimited { retry_after } => format!(
                "This key is over its plan's rate limit. Retry in {retry_after} s, spread requests over the minute, \
                 or upgrade the plan."
            ),
            ApiError::TooManyFailedAttempts { retry_after } => format!(
                "Too many invalid API keys came from your address. Retry in {retry_after} s with a valid key."
            ),
            ApiError::NoSuchEndpoint => {
                "There is no such endpoint; every endpoint is described at GET /openapi.json.".into()
            }
            ApiError::InProgress => "A request with this Idempotency-Key is still being processed; retry shortly \
                 with the same key and body to get its outcome."
                .into(),
            ApiError::Unavailable => "A dependency is unavailable; retry shortly (with the same Idempotency-Key, if you \
                 sent one)."
                .into(),
            ApiError::Internal(_) => "Something went wrong on our side; retry, and report the request id if it persists.".into(),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::MissingApiKey
            | ApiError::InvalidApiKey
            | ApiError::KeyExpired
            | ApiError::KeyInactive
            | ApiError::InvalidSignature(_) => StatusCode::UNAUTHORIZED,
            ApiError::InsufficientScope(_)
            | ApiError::EnvironmentMismatch { .. }
            | ApiError::QuotaExceeded(_)
            | ApiError::IpNotAllowed => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) | ApiError::InProgress => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge | ApiError::ReportTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited { .. } | ApiError::TooManyFailedAttempts { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NoSuchEndpoint => StatusCode::NOT_FOUND,
            ApiError::Unavailable | ApiError::LeakReportsNotConfigured => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let request_id = request_id::current();
        if let ApiError::Internal(cause) = self {
            tracing::error!(request_id = %request_id, error = %error_chain(cause.as_ref()), "request failed");
        }
        let mut error = json!({"code": self.code(), "message": self.message(), "request_id": request_id});
        if let ApiError::Validation(details) = self {
            error["details"] = json!(details);
        }
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::MissingApiKey | ApiError::InvalidApiKey | ApiError::KeyExpired | ApiError::KeyInactive => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"keyledger\""));
            }
            ApiError::Unavailable => {
                response.insert_header((header::RETRY_AFTER, UNAVAILABLE_RETRY_AFTER));
            }
            // Until an operator configures it: an hour.
            ApiError::LeakReportsNotConfigured => {
                response.insert_header((header::RETRY_AFTER, "3600"));
            }
            ApiError::InProgress => {
                response.insert_header((header::RETRY_AFTER, "1"));
            }
            ApiError::RateLimited { retry_after } | ApiError::TooManyFailedAttempts { retry_after } => {
                response.insert_header((header::RETRY_AFTER, retry_after.to_string()));
            }
            _ => {}
        }
        // For reverse proxies, which pass on headers but not bodies.
        response.insert_header((ERROR_CODE_HEADER, self.code()));
        response.json(json!({"error": error}))
    }
}

pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl From<HandlerError> for ApiError {
    fn from(e: HandlerError) -> Self {
        match e {
            HandlerError::Domain(DomainError::Validation(details)) => ApiError::Validation(details),
            HandlerError::Domain(DomainError::NotFound) => ApiError::NotFound,
            HandlerError::Domain(DomainError::Conflict(message)) => ApiError::Conflict(message),
            HandlerError::Domain(DomainError::QuotaExceeded(message)) => ApiError::QuotaExceeded(message),
            HandlerError::Concurrency => ApiError::Conflict(
                "The key was changed by another request at the same time; read it again and retry.".into(),
            ),
            HandlerError::Database(e) => e.into(),
            other => ApiError::internal(other),
        }
    }
}

/// Input refused at the edge, before any command ran.
impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        HandlerError::Domain(e).into()
    }
}

/// A database that cannot be reached is `503 unavailable` (the client
/// retries); any other database error is an internal one.
impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if crate::db_health::is_unavailable(&e) {
            tracing::warn!(request_id = %request_id::current(), error = %e, "database unavailable");
            return ApiError::Unavailable;
        }
        ApiError::internal(e)
    }
}

/// Unknown paths answer in the same format.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NoSuchEndpoint)
}
