//! The projector in Kafka mode: consumes `keyledger.events` in a consumer
//! group and applies each event to the read models.
//!
//! At-least-once, made idempotent: a message's offset is stored only after
//! the database transaction that applied it commits, and that transaction
//! also records the stream's newest applied version (`kafka_projection`),
//! so a redelivered message is recognised and skipped.
//!
//! A message that cannot be handled (not an envelope, an unknown type, a
//! schema newer than this build) is retried, then copied to the dead-letter
//! topic with headers naming its origin; its offset is stored and the
//! partition keeps flowing. A database outage is not the message's fault: it
//! is retried until the database is back, and nothing is dead-lettered.

use std::time::Duration;

use keyledger_events::bus::{self, KafkaSettings};
use keyledger_events::log::StoredEvent;
use keyledger_events::read_model::{self, ProjectionError};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;
use tokio::sync::watch;

/// Attempts at a message before it is dead-lettered.
pub const ATTEMPTS: u32 = 3;

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied to the read models (the event's id).
    Applied(String),
    /// Already applied before (a redelivery or a duplicate publication).
    Skipped(String),
    /// Copied to the dead-letter topic, with the reason.
    DeadLettered(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

enum Failure {
    /// The message itself is at fault: retry, then dead-letter.
    Poison(String),
    /// A dependency is: retry until it is back.
    Database(sqlx::Error),
}

pub struct KafkaProjector {
    pool: PgPool,
    consumer: StreamConsumer,
    dead_letters: FutureProducer,
    dlq_topic: String,
}

impl KafkaProjector {
    /// Joins the consumer group and subscribes to the events topic.
    pub fn new(pool: PgPool, settings: &KafkaSettings) -> Result<KafkaProjector, KafkaError> {
        let consumer = settings.consumer()?;
        consumer.subscribe(&[&settings.topic])?;
        Ok(KafkaProjector {
            pool,
            consumer,
            dead_letters: settings.producer()?,
            dlq_topic: settings.dlq_topic.clone(),
        })
    }

    /// The next message (waits for one).
    pub async fn recv(&self) -> Result<BorrowedMessage<'_>, KafkaError> {
        self.consumer.recv().await
    }

    /// Applies (or skips, or dead-letters) one message; stores no offset.
    /// Errs only when the database stays unreachable — the caller retries.
    pub async fn handle(&self, message: &BorrowedMessage<'_>) -> Result<Outcome, ConsumeError> {
        let mut last_problem = String::new();
        for attempt in 1..=ATTEMPTS {
            match self.apply(message).await {
                Ok(outcome) => return Ok(outcome),
                Err(Failure::Database(e)) => return Err(e.into()),
                Err(Failure::Poison(problem)) => {
                    tracing::warn!(attempt, partition = message.partition(), offset = message.offset(), %problem, "cannot handle message");
                    last_problem = problem;
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
            }
        }
        self.dead_letter(message, &last_problem).await?;
        Ok(Outcome::DeadLettered(last_problem))
    }

    /// Marks the message as done: its offset is committed with the next
    /// automatic commit.
    pub fn acknowledge(&self, message: &BorrowedMessage<'_>) -> Result<(), KafkaError> {
        self.consumer.store_offset_from_message(message)
    }

    /// One step: receive, handle (retrying through database outages),
    /// acknowledge.
    pub async fn step(&self) -> Result<Outcome, ConsumeError> {
        let message = self.recv().await?;
        let mut backoff = Duration::from_millis(200);
        let outcome = loop {
            match self.handle(&message).await {
                Ok(outcome) => break outcome,
                Err(e) => {
                    tracing::error!(error = %e, "projection failed; retrying the same message");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        };
        self.acknowledge(&message)?;
        Ok(outcome)
    }

    /// How many partitions the group has assigned to this consumer.
    pub fn assigned_partitions(&self) -> usize {
        self.consumer.assignment().map(|a| a.count()).unwrap_or(0)
    }

    /// Commits the stored offsets now (on shutdown).
    pub fn commit(&self) -> Result<(), KafkaError> {
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => Ok(()),
            other => other,
        }
    }

    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                changed = shutdown.changed() => if changed.is_err() || *shutdown.borrow() { break },
                result = self.step() => if let Err(e) = result {
                    tracing::warn!(error = %e, "consumer error");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                },
            }
        }
        if let Err(e) = self.commit() {
            tracing::warn!(error = %e, "final offset commit failed");
        }
        tracing::info!("kafka projector: stopped");
    }

    async fn apply(&self, message: &BorrowedMessage<'_>) -> Result<Outcome, Failure> {
        let event: StoredEvent = bus::decode(message.payload()).map_err(Failure::Poison)?;
        let id = event.event_id.to_string();
        let mut tx = self.pool.begin().await.map_err(Failure::Database)?;
        // Claims the stream's version; no row back means it was applied before.
        let fresh: Option<i64> = sqlx::query_scalar(
            "insert into kafka_projection (stream_id, version, event_id) values ($1, $2, $3)
             on conflict (stream_id) do update set version = excluded.version, event_id = excluded.event_id,
                                                   applied_at = now()
               where kafka_projection.version < excluded.version
             returning version",
        )
        .bind(&event.stream_id)
        .bind(event.version)
        .bind(event.event_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(Failure::Database)?;
        if fresh.is_none() {
            return Ok(Outcome::Skipped(id));
        }
        match read_model::apply(&mut tx, &event).await {
            Ok(()) => {}
            Err(ProjectionError::Database(e)) => return Err(Failure::Database(e)),
            Err(other) => return Err(Failure::Poison(other.to_string())),
        }
        tx.commit().await.map_err(Failure::Database)?;
        Ok(Outcome::Applied(id))
    }

    async fn dead_letter(&self, message: &BorrowedMessage<'_>, problem: &str) -> Result<(), ConsumeError> {
        let (partition, offset) = (message.partition().to_string(), message.offset().to_string());
        let mut headers = OwnedHeaders::new();
        if let Some(original) = message.headers() {
            for header in original.iter() {
                headers = headers.insert(Header {
                    key: header.key,
                    value: header.value,
                });
            }
        }
        let headers = headers
            .insert(Header {
                key: "dlq_origin_topic",
                value: Some(message.topic()),
            })
            .insert(Header {
                key: "dlq_origin_partition",
                value: Some(&partition),
            })
            .insert(Header {
                key: "dlq_origin_offset",
                value: Some(&offset),
            })
            .insert(Header {
                key: "dlq_error",
                value: Some(problem),
            });
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.dlq_topic).headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        self.dead_letters
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| ConsumeError::Kafka(e))?;
        tracing::error!(partition = message.partition(), offset = message.offset(), %problem, "message dead-lettered");
        Ok(())
    }
}
