//! keyledger-workers: the background side of keyledger. For now the
//! projector, which tails the event log into the read models; the outbox
//! relay, the scheduler and the mailer join it here.

pub mod projector;

pub use projector::Projector;
