//! The outbox relay: publishes committed events, in the log's commit-safe
//! order, to the Kafka topic. An event counts as published only once the
//! broker has acknowledged it (`acks=all`, idempotent producer); then the
//! relay's checkpoint moves past it. A crash in between publishes it again,
//! with the same `ce_id`, and consumers skip the duplicate.
//!
//! One relay publishes at a time across all worker replicas: the leader
//! holds a session-level Postgres advisory lock on a dedicated connection,
//! which the server releases the moment that process or connection dies.

use std::time::Duration;

use futures_util::future::join_all;
use keyledger_events::bus::{self, KafkaSettings};
use keyledger_events::log::{self, LogPosition};
use keyledger_events::run_loop::{run_loop, Progress, Schedule, Task};
use keyledger_events::shutdown::Shutdown;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use sqlx::{Connection, PgConnection, PgPool};

use crate::wake;

/// The relay's name in `projector_checkpoints`.
pub const RELAY: &str = "relay";
/// Key of the advisory lock that makes one relay the leader.
const LEADER_LOCK: i64 = 0x6b65_796c_6564_6701;
const BATCH: i64 = 500;
const POLL: Duration = Duration::from_millis(500);
/// `POLL` when caught up, doubling per failure up to 16 × `POLL`. A batch
/// the broker does not acknowledge can wait for minutes: shutdown does not.
/// Nothing is marked then; the next relay publishes the batch again
/// (consumers skip duplicates).
const SCHEDULE: Schedule = Schedule::every(POLL).doubling_up_to(4).interrupted_by_shutdown();

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("the broker did not acknowledge event {position}: {source}")]
    Delivery { position: i64, source: KafkaError },
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

pub struct Relay {
    pool: PgPool,
    producer: FutureProducer,
    topic: String,
}

impl Relay {
    pub fn new(pool: PgPool, settings: &KafkaSettings) -> Result<Relay, KafkaError> {
        Ok(Relay {
            pool,
            producer: settings.producer()?,
            topic: settings.topic.clone(),
        })
    }

    /// Sends the next batch after the checkpoint and waits until the broker
    /// has acknowledged every message. Returns the position to mark, or
    /// `None` when there is nothing to publish. Marks nothing itself.
    pub async fn publish_next(&self) -> Result<Option<(LogPosition, usize)>, RelayError> {
        let after = log::checkpoint(&self.pool, RELAY).await?;
        let events = log::read_after(&self.pool, after, BATCH).await?;
        let Some(last) = events.last().map(|e| e.log_position()) else {
            return Ok(None);
        };
        let mut deliveries = Vec::with_capacity(events.len());
        for event in &events {
            let payload = bus::payload(event);
            let mut record = FutureRecord::to(&self.topic)
                .key(&event.stream_id)
                .payload(&payload)
                .headers(bus::headers(event));
            // Queued in order; the idempotent producer keeps that order per
            // partition through retries.
            let delivery = loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => break delivery,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                        record = returned;
                        tokio::time::sleep(Duration::from_millis(10)).await
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            };
            deliveries.push((event.position, delivery));
        }
        let results = join_all(
            deliveries
                .into_iter()
                .map(|(position, d)| async move { (position, d.await) }),
        )
        .await;
        for (position, result) in results {
            match result {
                Ok(Ok(_)) => {}
                Ok(Err((source, _))) => return Err(RelayError::Delivery { position, source }),
                Err(_) => {
                    return Err(RelayError::Delivery {
                        position,
                        source: KafkaError::Canceled,
                    })
                }
            }
        }
        Ok(Some((last, events.len())))
    }

    /// Records that everything up to `at` is on the broker.
    pub async fn mark_published(&self, at: LogPosition) -> Result<(), sqlx::Error> {
        log::save_checkpoint(&self.pool, RELAY, at).await
    }

    /// One step: publish the next batch and mark it; returns how many.
    pub async fn run_once(&self) -> Result<usize, RelayError> {
        match self.publish_next().await? {
            Some((at, count)) => {
                self.mark_published(at).await?;
                Ok(count)
            }
            None => Ok(0),
        }
    }

    /// Waits to become the leader, then relays until `shutdown` (or until
    /// the lock's connection is lost, and then waits to lead again).
    pub async fn run(self, shutdown: Shutdown) {
        let mut listener = wake::listen(&self.pool).await;
        while !shutdown.is_shutdown() {
            let Some(mut lock) = self.lead(&shutdown).await else {
                break;
            };
            tracing::info!("relay: leading");
            let leading = Leading {
                relay: &self,
                lock: &mut lock,
            };
            run_loop(&shutdown, SCHEDULE, &mut listener, leading).await;
            let _ = lock.close().await;
        }
        let _ = self.producer_flush().await;
        tracing::info!("relay: stopped");
    }

    /// Waits (at most 2 s) for what the producer still holds.
    async fn producer_flush(&self) -> Result<(), KafkaError> {
        use rdkafka::producer::Producer;
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(Timeout::After(Duration::from_secs(2))))
            .await
            .unwrap_or(Ok(()))
    }

    /// A connection holding the leader lock, or `None` on shutdown.
    async fn lead(&self, shutdown: &Shutdown) -> Option<PgConnection> {
        loop {
            if shutdown.is_shutdown() {
                return None;
            }
            if let Ok(mut conn) = PgConnection::connect_with(&self.pool.connect_options()).await {
                let locked: Result<bool, _> = sqlx::query_scalar("select pg_try_advisory_lock($1)")
                    .bind(LEADER_LOCK)
                    .fetch_one(&mut conn)
                    .await;
                if let Ok(true) = locked {
                    return Some(conn);
                }
                let _ = conn.close().await;
            }
            tokio::select! {
                _ = shutdown.recv() => return None,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// The relay while it holds the leader lock: a step checks the lock's
/// connection (and ends the loop when it is lost), then publishes a batch.
struct Leading<'a> {
    relay: &'a Relay,
    lock: &'a mut PgConnection,
}

impl Task for Leading<'_> {
    type Error = RelayError;

    async fn step(&mut self) -> Result<Progress, RelayError> {
        if sqlx::query("select 1").execute(&mut *self.lock).await.is_err() {
            tracing::warn!("relay: lost the leader lock's connection");
            return Ok(Progress::Finished);
        }
        Ok(match self.relay.run_once().await? {
            0 => Progress::Idle,
            _ => Progress::Worked,
        })
    }

    fn failed(&mut self, error: RelayError, _: u32) {
        tracing::warn!(error = %error, "relay: publishing failed; retrying");
    }
}
