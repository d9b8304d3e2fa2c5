//! keyledger-events: the domain (keys and organizations, as pure decide/evolve
//! aggregates) and the event log that is the system's source of truth.
//!
//! `domain` does no I/O. The Postgres adapters sit beside it: `log` (the event
//! store and its readers), `read_model` (the tables the events are projected
//! into), `bus` (Kafka, behind the `kafka` feature), `handler` (load → decide → append → project, shared by the API
//! and the CLI), `alert_email` (how alerts read), `alert_outbox` (the alerts
//! the API queues for the mailer: confirmation emails, leaked keys) and
//! `webhook_outbox` (webhook deliveries, written by the worker that follows
//! the log and by replays). What the API's and the workers' background
//! tasks share lives here too: `shutdown` (how they are told to stop) and
//! `run_loop` (the step-and-wait loop with its backoff).

pub mod alert_email;
pub mod alert_outbox;
#[cfg(feature = "kafka")]
pub mod bus;
pub mod clock;
pub mod domain;
pub mod figures;
pub mod handler;
pub mod log;
pub mod read_model;
pub mod representation;
pub mod run_loop;
pub mod shutdown;
pub mod webhook_outbox;

/// The migrations of the whole system (one folder at the workspace root).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");
