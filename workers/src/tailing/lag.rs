//! Projection lag: how many committed events each projector has not applied
//! yet and how old the oldest of them is (`keyledger_projection_lag_events`
//! and `keyledger_projection_lag_seconds`, label `projector`), and how many
//! the relay has not published (`keyledger_relay_lag_events`) and when it
//! last published (`keyledger_relay_last_publish_timestamp_seconds`) — sampled from
//! the database every [`SAMPLE_EVERY`], so a stall is visible whichever
//! process stalls. A projector that makes no progress while events wait for
//! it is logged as a warning.
//!
//! Projectors: `read_models` (embedded mode: tails the log from its
//! checkpoint) and `kafka` (Kafka mode: applies what the relay published;
//! its lag includes events not published yet, since they wait for it too).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use keyledger_events::log::LogPosition;
use keyledger_events::run_loop::{from_fn, run_loop, NoWake, Progress, Schedule};
use keyledger_events::shutdown::Shutdown;
use sqlx::PgPool;

/// The embedded projector (and its checkpoint's name).
pub const READ_MODELS: &str = "read_models";
/// The consuming projector of Kafka mode.
pub const KAFKA: &str = "kafka";
/// How often lag is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Lagging this long without progress is a stall worth a warning.
pub const STALL_WARNING: Duration = Duration::from_secs(20);

/// One projector's lag at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lag {
    /// Committed events the projector has not applied.
    pub events: i64,
    /// When the oldest of them occurred.
    pub oldest: Option<DateTime<Utc>>,
    /// Its log position: progress moves it.
    pub head: Option<i64>,
    /// Of `events`, those already published to Kafka (Kafka projector only).
    pub published: i64,
    /// When the checkpoint last moved (checkpointed readers only): for the
    /// relay, its last publish.
    pub checkpoint_at: Option<DateTime<Utc>>,
}

/// Pending events, when the oldest occurred, its position, when the checkpoint moved.
type CheckpointRow = (i64, Option<DateTime<Utc>>, Option<i64>, Option<DateTime<Utc>>);

/// The events after the reader `name`'s checkpoint.
pub async fn checkpoint_lag(pool: &PgPool, name: &str) -> Result<Lag, sqlx::Error> {
    let (events, oldest, head, checkpoint_at): CheckpointRow = sqlx::query_as(
        "with c as (select coalesce(max(tx_id), 0) as tx_id, coalesce(max(position), 0) as position
                        from projector_checkpoints where name = $1)
             select count(*), min(e.occurred_at), min(e.position),
                    (select updated_at from projector_checkpoints where name = $1)
             from events e, c where (e.tx_id, e.position) > (c.tx_id, c.position)",
    )
    .bind(name)
    .fetch_one(pool)
    .await?;
    Ok(Lag {
        events,
        oldest,
        head,
        published: 0,
        checkpoint_at,
    })
}

/// The Kafka projector's lag: events whose stream version it has not
/// recorded in `kafka_projection`. Only the log after a watermark is read;
/// the watermark moves past events it has applied, in the log's
/// commit-safe order (never past a transaction still running).
#[derive(Debug, Default)]
pub struct KafkaLag {
    watermark: LogPosition,
}

impl KafkaLag {
    pub async fn sample(&mut self, pool: &PgPool) -> Result<Lag, sqlx::Error> {
        let (events, oldest, head, published): (i64, Option<DateTime<Utc>>, Option<i64>, i64) = sqlx::query_as(
            "with relay as (select coalesce(max(tx_id), 0) as tx_id, coalesce(max(position), 0) as position
                            from projector_checkpoints where name = 'relay'),
                  pending as (
                     select e.tx_id, e.position, e.occurred_at from events e
                     left join kafka_projection k using (stream_id)
                     where (e.tx_id, e.position) > ($1, $2) and e.version > coalesce(k.version, 0))
             select count(*), min(pending.occurred_at), min(pending.position),
                    count(*) filter (where (pending.tx_id, pending.position) <= (relay.tx_id, relay.position))
             from pending, relay",
        )
        .bind(self.watermark.tx_id)
        .bind(self.watermark.position)
        .fetch_one(pool)
        .await?;
        // Everything before the first pending event (and settled) is applied.
        let first_pending: Option<(i64, i64)> = sqlx::query_as(
            "select e.tx_id, e.position from events e left join kafka_projection k using (stream_id)
             where (e.tx_id, e.position) > ($1, $2) and e.version > coalesce(k.version, 0)
             order by e.tx_id, e.position limit 1",
        )
        .bind(self.watermark.tx_id)
        .bind(self.watermark.position)
        .fetch_optional(pool)
        .await?;
        let (limit_tx, limit_position) = first_pending.unwrap_or((i64::MAX, i64::MAX));
        let applied: Option<(i64, i64)> = sqlx::query_as(
            "select tx_id, position from events
             where (tx_id, position) > ($1, $2) and (tx_id, position) < ($3, $4)
               and tx_id < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
             order by tx_id desc, position desc limit 1",
        )
        .bind(self.watermark.tx_id)
        .bind(self.watermark.position)
        .bind(limit_tx)
        .bind(limit_position)
        .fetch_optional(pool)
        .await?;
        if let Some((tx_id, position)) = applied {
            self.watermark = LogPosition { tx_id, position };
        }
        Ok(Lag {
            events,
            oldest,
            head,
            published,
            checkpoint_at: None,
        })
    }
}

enum Source {
    Checkpoint(&'static str),
    Relay,
    Kafka(tokio::sync::Mutex<KafkaLag>),
}

impl Source {
    fn name(&self) -> &'static str {
        match self {
            Source::Checkpoint(name) => name,
            Source::Relay => "relay",
            Source::Kafka(_) => KAFKA,
        }
    }

    async fn sample(&self, pool: &PgPool) -> Result<Lag, sqlx::Error> {
        match self {
            Source::Checkpoint(name) => checkpoint_lag(pool, name).await,
            Source::Relay => checkpoint_lag(pool, super::relay::RELAY).await,
            Source::Kafka(lag) => lag.lock().await.sample(pool).await,
        }
    }
}

/// What is known of one projector.
#[derive(Debug, Clone, Copy, Default)]
struct Tracked {
    lag: Lag,
    sampled: Option<DateTime<Utc>>,
    /// Lagging without progress since then.
    stalled_since: Option<Instant>,
    warned: Option<Instant>,
}

/// Samples the lag of the projectors a process runs and keeps the latest.
pub struct LagMonitor {
    sources: Vec<Source>,
    tracked: Mutex<HashMap<&'static str, Tracked>>,
}

impl LagMonitor {
    /// Embedded mode: the projector tailing the log.
    pub fn embedded() -> LagMonitor {
        LagMonitor::with(vec![Source::Checkpoint(READ_MODELS)])
    }

    /// Kafka mode: the relay and the consuming projector.
    pub fn kafka() -> LagMonitor {
        LagMonitor::with(vec![Source::Relay, Source::Kafka(Default::default())])
    }

    fn with(sources: Vec<Source>) -> LagMonitor {
        LagMonitor {
            sources,
            tracked: Mutex::default(),
        }
    }

    /// Samples every source once.
    pub async fn sample(&self, pool: &PgPool) {
        for source in &self.sources {
            let lag = match source.sample(pool).await {
                Ok(lag) => lag,
                Err(e) => {
                    tracing::warn!(error = %e, source = source.name(), "projection lag: cannot sample");
                    continue;
                }
            };
            let mut tracked = self.tracked.lock().expect("lag lock");
            let entry = tracked.entry(source.name()).or_default();
            let before = entry.lag;
            let progress = lag.events == 0 || lag.events < before.events || lag.head != before.head;
            entry.stalled_since = match (progress, entry.stalled_since) {
                (true, _) => None,
                (false, since) => since.or(Some(Instant::now())),
            };
            if let Some(since) = entry.stalled_since {
                let quiet = entry.warned.is_some_and(|at| at.elapsed() < Duration::from_secs(60));
                if since.elapsed() >= STALL_WARNING && !quiet {
                    tracing::warn!(
                        projector = source.name(),
                        lag_events = lag.events,
                        stalled_seconds = since.elapsed().as_secs(),
                        oldest = ?lag.oldest,
                        "projector makes no progress while events wait for it"
                    );
                    entry.warned = Some(Instant::now());
                }
            }
            entry.lag = lag;
            entry.sampled = Some(Utc::now());
        }
    }

    /// Samples every [`SAMPLE_EVERY`] until `shutdown`.
    pub async fn run(&self, pool: PgPool, shutdown: Shutdown) {
        let sample = from_fn(|| async {
            self.sample(&pool).await;
            Progress::Idle
        });
        run_loop(&shutdown, Schedule::every(SAMPLE_EVERY), NoWake, sample).await;
    }

    /// The latest sample of `projector`.
    pub fn lag(&self, projector: &str) -> Option<Lag> {
        self.tracked.lock().expect("lag lock").get(projector).map(|t| t.lag)
    }

    /// How long `projector` has lagged without progress (`None`: it has not).
    pub fn stalled_for(&self, projector: &str) -> Option<Duration> {
        self.tracked
            .lock()
            .expect("lag lock")
            .get(projector)
            .and_then(|t| t.stalled_since)
            .map(|since| since.elapsed())
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let tracked = self.tracked.lock().expect("lag lock");
        let mut projectors: Vec<(&&str, &Tracked)> = tracked.iter().filter(|(name, _)| **name != "relay").collect();
        projectors.sort_by_key(|(name, _)| **name);
        out.push_str(
            "# HELP keyledger_projection_lag_events Events committed but not yet applied by the projector.\n\
             # TYPE keyledger_projection_lag_events gauge\n",
        );
        for (name, t) in &projectors {
            out.push_str(&format!(
                "keyledger_projection_lag_events{{projector=\"{name}\"}} {}\n",
                t.lag.events
            ));
        }
        out.push_str(
            "# HELP keyledger_projection_lag_seconds Age of the oldest event the projector has not applied (0: none).\n\
             # TYPE keyledger_projection_lag_seconds gauge\n",
        );
        for (name, t) in &projectors {
            let age = match (t.lag.oldest, t.sampled) {
                (Some(oldest), Some(_)) => (Utc::now() - oldest).num_milliseconds().max(0) as f64 / 1000.0,
                _ => 0.0,
            };
            out.push_str(&format!(
                "keyledger_projection_lag_seconds{{projector=\"{name}\"}} {age}\n"
            ));
        }
        if let Some(relay) = tracked.get("relay") {
            out.push_str(&format!(
                "# HELP keyledger_relay_lag_events Committed events not yet published to Kafka.\n\
                 # TYPE keyledger_relay_lag_events gauge\nkeyledger_relay_lag_events {}\n",
                relay.lag.events
            ));
            let last = relay
                .lag
                .checkpoint_at
                .map_or(0.0, |at| at.timestamp_millis() as f64 / 1000.0);
            out.push_str(&format!(
                "# HELP keyledger_relay_last_publish_timestamp_seconds When the relay (of any replica) last marked events published (Unix time; 0: never).\n\
                 # TYPE keyledger_relay_last_publish_timestamp_seconds gauge\n\
                 keyledger_relay_last_publish_timestamp_seconds {last}\n"
            ));
        }
    }
}
