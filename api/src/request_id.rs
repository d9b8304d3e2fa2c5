//! The id of the request being handled: set once per request by the
//! request-context middleware (`crate::middleware`), echoed in the
//! `X-Request-Id` header, written in every error body (`crate::error`) and
//! every event's envelope. Its own module so that the error type and the
//! middleware both read it without importing each other.

use std::future::Future;

use actix_web::http::header::HeaderName;

/// The header a caller may send its own id in, and that every answer
/// carries (made once, not parsed per request).
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being handled ("" outside a request).
pub fn current() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

/// Runs `handling` with `id` as the [`current`] request id.
pub fn scope<F: Future>(id: String, handling: F) -> impl Future<Output = F::Output> {
    // The task-local's own future, not an `async fn` around it: one move
    // of the request's whole future less per request.
    REQUEST_ID.scope(id, handling)
}
