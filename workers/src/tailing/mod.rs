//! Following the event log: the [`projector`] that tails PostgreSQL into the
//! read models (embedded mode), the outbox [`relay`] to Kafka and the
//! [`kafka_projector`] that consumes it (Kafka mode), their [`lag`], and
//! [`replay`] (check or rebuild the read models from the log).

pub mod kafka_projector;
pub mod lag;
pub mod projector;
pub mod relay;
pub mod replay;
