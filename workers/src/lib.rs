//! keyledger-workers: the background side of keyledger — the projector that
//! tails the PostgreSQL log (embedded mode), the outbox relay and the Kafka
//! consumer (Kafka mode), and `replay`.

pub mod kafka_projector;
pub mod projector;
pub mod relay;
pub mod replay;
mod wake;

pub use kafka_projector::KafkaProjector;
pub use projector::Projector;
pub use relay::Relay;
