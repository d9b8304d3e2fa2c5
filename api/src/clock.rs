//! The time of the request being handled: read once from the app's
//! [`Clock`] by the request-context middleware (`crate::middleware`), so
//! everything one request decides — a key's status, a grace period, the
//! time its events record — uses the same instant. Tests move the app's
//! clock instead of sleeping until a key expires.

use std::future::Future;

use chrono::{DateTime, Utc};
pub use keyledger_events::clock::Clock;

tokio::task_local! {
    static NOW: DateTime<Utc>;
}

/// The time of the request being handled (outside a request, such as in a
/// background task: the system time).
pub fn now() -> DateTime<Utc> {
    NOW.try_with(|now| *now).unwrap_or_else(|_| Utc::now())
}

/// Runs `handling` with `now` as the request's time.
pub fn scope<F: Future>(now: DateTime<Utc>, handling: F) -> impl Future<Output = F::Output> {
    // The task-local's own future, not an `async fn` around it: one move
    // of the request's whole future less per request.
    NOW.scope(now, handling)
}
