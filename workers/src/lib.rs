//! keyledger-workers: the background side of keyledger — the projector that
//! tails the PostgreSQL log (embedded mode), the outbox relay and the Kafka
//! consumer (Kafka mode), their lag, `replay`, and the scheduled jobs
//! (expiry, rotation, usage alerts) with the mailer that emails their alerts
//! (and the confirmation links of alert recipients), the webhook
//! deliveries, and the metrics of all this.

pub mod alert_email;
pub mod alerts;
pub mod expiry;
pub mod kafka_projector;
pub mod lag;
pub mod mailer;
pub mod metrics;
pub mod projector;
pub mod recipients;
pub mod relay;
pub mod replay;
pub mod rotation;
pub mod scheduler;
pub mod session_lock;
pub mod usage_alerts;
mod wake;
pub mod webhook_client;
pub mod webhooks;

pub use kafka_projector::KafkaProjector;
pub use mailer::Mailer;
pub use projector::Projector;
pub use relay::Relay;
pub use webhooks::Webhooks;
