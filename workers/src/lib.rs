//! keyledger-workers: the background side of keyledger, in three subsystems
//! and what they share:
//!
//! - [`tailing`]: following the event log — the projector that tails the
//!   PostgreSQL log (embedded mode), the outbox relay and the Kafka consumer
//!   (Kafka mode), their lag, and `replay`;
//! - [`jobs`]: the scheduled jobs (expiry, rotation, usage alerts, recipient
//!   confirmations) and their scheduler;
//! - [`alerts`]: the alerts the jobs raise, their emails, who receives them
//!   and the mailer that sends them (and the confirmation links of alert
//!   recipients);
//! - [`webhooks`]: the webhook deliveries and their HTTP client;
//! - shared: [`metrics`] of all this, [`session_lock`] (advisory locks held
//!   by replay and the jobs) and `wake` (the PostgreSQL notification that
//!   ends a worker's idle wait early).
//!
//! Every long-running task here stops on a
//! [`Shutdown`](keyledger_events::shutdown::Shutdown), and those that step
//! and wait run in [`run_loop`](keyledger_events::run_loop::run_loop).

pub mod alerts;
pub mod jobs;
pub mod metrics;
pub mod session_lock;
pub mod tailing;
mod wake;
pub mod webhooks;

pub use alerts::mailer::Mailer;
pub use tailing::kafka_projector::KafkaProjector;
pub use tailing::projector::Projector;
pub use tailing::relay::Relay;
pub use webhooks::Webhooks;
