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
pub async fn scope<F: Future>(now: DateTime<Utc>, handling: F) -> F::Output {
    NOW.scope(now, handling).await
}
