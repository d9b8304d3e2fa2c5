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
//!
//! A group stuck with nobody consuming: when a worker is killed and
//! restarted at once, the new member joins while the dead one still leads
//! the group (its session has not expired). A broker can then complete the
//! rebalance with the new member's empty proposal — the group looks formed,
//! heartbeats succeed, and no partition is assigned to anyone (Tansu 0.6
//! does this when the dead leader's session expires between the new
//! member's JoinGroup and SyncGroup). The run loop watches for it: holding no
//! partition for [`STUCK_AFTER`] while published events wait and nothing is
//! applied, it leaves the group and joins as a new member, which is then
//! the only one and takes every partition.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyledger_events::bus::{self, KafkaSettings};
use keyledger_events::log::StoredEvent;
use keyledger_events::read_model::{self, ProjectionError};
use keyledger_events::run_loop::{run_loop, NoWake, Progress, Schedule, Task};
use keyledger_events::shutdown::Shutdown;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;

use super::lag::{LagMonitor, KAFKA};

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

/// Holding no partition this long, while published events wait and none is
/// applied, means the group is stuck (longer than a normal rebalance after
/// a dead member's session expires).
pub const STUCK_AFTER: Duration = Duration::from_secs(15);
/// Whether the consumer group is stuck and must be rejoined: no partition
/// held for `unassigned_for`, while events published to the topic wait
/// (`published_waiting`) and none has been applied for `stalled_for`
/// (`None`: the projection is not behind). Both must have lasted
/// [`STUCK_AFTER`]: a normal rebalance after a dead member's session
/// expires holds no partition for a few seconds, and an idle group holds
/// none with nothing to do — neither is stuck.
pub fn is_stuck(unassigned_for: Duration, published_waiting: bool, stalled_for: Option<Duration>) -> bool {
    unassigned_for >= STUCK_AFTER && published_waiting && stalled_for.is_some_and(|d| d >= STUCK_AFTER)
}

/// How often the run loop looks at its assignment while no message comes.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// How long leaving the group (and the final offset commit) may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

pub struct KafkaProjector {
    pool: PgPool,
    consumer: Arc<StreamConsumer>,
    dead_letters: FutureProducer,
    settings: KafkaSettings,
}

impl KafkaProjector {
    /// Joins the consumer group and subscribes to the events topic.
    pub fn new(pool: PgPool, settings: &KafkaSettings) -> Result<KafkaProjector, KafkaError> {
        let consumer = settings.consumer()?;
        consumer.subscribe(&[&settings.topic])?;
        Ok(KafkaProjector {
            pool,
            consumer: Arc::new(consumer),
            dead_letters: settings.producer()?,
            settings: settings.clone(),
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
        self.process(&message).await
    }

    /// Handles a received message (retrying through database outages),
    /// then acknowledges it.
    async fn process(&self, message: &BorrowedMessage<'_>) -> Result<Outcome, ConsumeError> {
        let mut backoff = Duration::from_millis(200);
        let outcome = loop {
            match self.handle(message).await {
                Ok(outcome) => break outcome,
                Err(e) => {
                    tracing::error!(error = %e, "projection failed; retrying the same message");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        };
        self.acknowledge(message)?;
        Ok(outcome)
    }

    /// How many partitions the group has assigned to this consumer.
    pub fn assigned_partitions(&self) -> usize {
        self.consumer.assignment().map(|a| a.count()).unwrap_or(0)
    }

    /// Commits the stored offsets now (on shutdown).
    pub fn commit(&self) -> Result<(), KafkaError> {
        commit(&self.consumer)
    }

    /// Consumes until `shutdown`. `lag` (the process's lag monitor) lets the
    /// loop recognise a stuck group and rejoin it. Stopping takes at most a
    /// few seconds whatever the broker does: the final commit and the
    /// group leave are bounded.
    pub async fn run(mut self, shutdown: Shutdown, lag: Option<Arc<LagMonitor>>) {
        let consuming = Consuming {
            projector: &mut self,
            shutdown: &shutdown,
            lag,
            unassigned_since: None,
        };
        // Every step waits by itself (for a message, at most WATCH_EVERY)
        // and is followed by the next at once.
        run_loop(&shutdown, Schedule::every(WATCH_EVERY), NoWake, consuming).await;
        close(self.consumer, true).await;
        tracing::info!("kafka projector: stopped");
    }

    /// Leaves the group (bounded) and joins again as a new member (see
    /// [`is_stuck`] for when).
    async fn rejoin(&mut self) -> Result<(), KafkaError> {
        let fresh = Arc::new(self.settings.consumer()?);
        let old = std::mem::replace(&mut self.consumer, fresh);
        close(old, true).await;
        self.consumer.subscribe(&[&self.settings.topic])
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
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.settings.dlq_topic).headers(headers);
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

/// [`KafkaProjector::run`]'s step: the next message (waiting for it at most
/// [`WATCH_EVERY`]; a message being handled is given up at shutdown, its
/// offset not stored), then a look at the group's assignment.
struct Consuming<'a> {
    projector: &'a mut KafkaProjector,
    shutdown: &'a Shutdown,
    lag: Option<Arc<LagMonitor>>,
    unassigned_since: Option<Instant>,
}

impl Task for Consuming<'_> {
    type Error = std::convert::Infallible;

    async fn step(&mut self) -> Result<Progress, Self::Error> {
        let (projector, shutdown) = (&mut *self.projector, self.shutdown);
        tokio::select! {
            _ = shutdown.recv() => return Ok(Progress::Finished),
            received = projector.recv() => match received {
                Ok(message) => tokio::select! {
                    _ = shutdown.recv() => return Ok(Progress::Finished),
                    result = projector.process(&message) => if let Err(e) = result {
                        tracing::warn!(error = %e, "consumer error");
                    },
                },
                Err(e) => {
                    tracing::warn!(error = %e, "consumer error");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            },
            _ = tokio::time::sleep(WATCH_EVERY) => {}
        }
        if projector.assigned_partitions() > 0 {
            self.unassigned_since = None;
            return Ok(Progress::Worked);
        }
        let since = *self.unassigned_since.get_or_insert_with(Instant::now);
        let (published_waiting, stalled_for) = match &self.lag {
            Some(lag) => (lag.lag(KAFKA).is_some_and(|l| l.published > 0), lag.stalled_for(KAFKA)),
            None => (false, None),
        };
        if is_stuck(since.elapsed(), published_waiting, stalled_for) {
            tracing::warn!(
                unassigned_seconds = since.elapsed().as_secs(),
                "kafka projector: no partition assigned while published events wait; rejoining the group as a new member"
            );
            if let Err(e) = projector.rejoin().await {
                tracing::error!(error = %e, "kafka projector: cannot rejoin the group");
            }
            self.unassigned_since = None;
        }
        Ok(Progress::Worked)
    }

    fn failed(&mut self, error: Self::Error, _: u32) {
        match error {}
    }
}

fn commit(consumer: &StreamConsumer) -> Result<(), KafkaError> {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => Ok(()),
        other => other,
    }
}

/// Commits the stored offsets (when `commit`) and leaves the group, on a
/// blocking thread and for at most [`CLOSE_TIMEOUT`]: with the broker gone
/// either can block for minutes, and stopping must not wait for it.
async fn close(consumer: Arc<StreamConsumer>, commit_first: bool) {
    let closing = tokio::task::spawn_blocking(move || {
        if commit_first {
            if let Err(e) = commit(&consumer) {
                tracing::warn!(error = %e, "final offset commit failed");
            }
        }
        // The last reference: dropping it leaves the group.
        drop(consumer);
    });
    if tokio::time::timeout(CLOSE_TIMEOUT, closing).await.is_err() {
        tracing::warn!("kafka projector: the broker did not answer in time; leaving without it");
    }
}

#[cfg(test)]
mod stuck_tests {
    use super::*;

    const SHORT: Duration = Duration::from_secs(5);

    #[test]
    fn a_group_holding_nothing_while_published_events_wait_is_stuck_after_15_seconds() {
        assert!(is_stuck(STUCK_AFTER, true, Some(STUCK_AFTER)));
        assert!(is_stuck(Duration::from_secs(60), true, Some(Duration::from_secs(40))));
    }

    #[test]
    fn a_rebalance_shorter_than_the_threshold_is_not_stuck() {
        assert!(!is_stuck(SHORT, true, Some(Duration::from_secs(60))));
        assert!(!is_stuck(Duration::from_secs(60), true, Some(SHORT)));
    }

    #[test]
    fn an_idle_or_caught_up_group_is_not_stuck() {
        // Nothing published waits: holding no partition costs nothing.
        assert!(!is_stuck(Duration::from_secs(60), false, Some(Duration::from_secs(60))));
        // Not behind (or no lag monitor).
        assert!(!is_stuck(Duration::from_secs(60), true, None));
        assert!(!is_stuck(Duration::from_secs(60), false, None));
    }
}
