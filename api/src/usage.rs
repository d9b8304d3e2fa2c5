//! Usage accounting: every request made with a known key is counted in
//! memory, per key and minute, and appended as `key.used` events every
//! flush interval and on shutdown. Counting costs no database access on the
//! request path; a failed flush keeps its counts for the next one. While
//! the database is down nothing is attempted (counts accumulate, requests
//! answered from the cache included) and everything is flushed as soon as
//! it is back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};
use keyledger_events::domain::DomainError;
use keyledger_events::domain::{key, key::KeyUsed, ApiKey, KeyCommand, KeyId};
use keyledger_events::handler::{self, HandlerError, ManyOutcome};
use keyledger_events::log::{self, EventMeta, Notice};
use keyledger_events::run_loop::{from_fn, run_loop, Progress, Schedule};
use keyledger_events::shutdown::Shutdown;
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgExecutor, PgPool, Postgres};

use crate::db_health::{is_unavailable, DatabaseHealth, PROBE_TIMEOUT};
use crate::striped::Striped;

/// How long the flush at shutdown may take in all: a database that is
/// really down (or frozen) does not hold the process up for longer.
pub const SHUTDOWN_FLUSH_DEADLINE: Duration = Duration::from_secs(3);

/// How a request with a known key ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The key was accepted.
    Succeeded,
    /// The key was refused (inactive, expired, wrong environment or scope).
    Failed,
    /// Refused for its rate limit (also counted as failed).
    RateLimited,
}

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    requests: u64,
    successful: u64,
    failed: u64,
    rate_limited: u64,
    last_used_at: Option<DateTime<Utc>>,
}

impl Counts {
    fn merge(&mut self, other: Counts) {
        self.requests += other.requests;
        self.successful += other.successful;
        self.failed += other.failed;
        self.rate_limited += other.rate_limited;
        self.last_used_at = self.last_used_at.max(other.last_used_at);
    }
}

/// Counts by key id and minute: one flat table (a table per key would cost
/// a few hundred bytes more for each key seen between two flushes), hashed
/// with foldhash like the rate limiter's (every request is counted here).
type Pending = HashMap<(KeyId, DateTime<Utc>), Counts, foldhash::fast::RandomState>;

#[derive(Default)]
pub struct UsageAccumulator {
    /// Each server thread's table ([`Striped`]: every request with a known
    /// key writes one); a flush takes them all.
    pending: Striped<Mutex<Pending>>,
    /// Flushes run (`keyledger_usage_flushes_total`).
    pub flushes: AtomicU64,
    /// `key.used` events appended by all of them.
    pub flushed_events: AtomicU64,
    /// How many the latest flush appended.
    pub last_flush_size: AtomicU64,
    /// Events a flush could not append (their counts are kept).
    pub flush_failures: AtomicU64,
}

impl UsageAccumulator {
    pub fn record(&self, key_id: KeyId, outcome: Outcome, at: DateTime<Utc>) {
        let minute = at.duration_trunc(chrono::Duration::minutes(1)).unwrap_or(at);
        let mut pending = self.pending.mine().lock().expect("usage lock");
        let counts = pending.entry((key_id, minute)).or_default();
        counts.requests += 1;
        match outcome {
            Outcome::Succeeded => counts.successful += 1,
            Outcome::Failed => counts.failed += 1,
            Outcome::RateLimited => {
                counts.failed += 1;
                counts.rate_limited += 1;
            }
        }
        counts.last_used_at = counts.last_used_at.max(Some(at));
    }

    /// Whether no count awaits a flush.
    pub fn is_empty(&self) -> bool {
        self.pending_len() == 0
    }

    /// How many keys' minutes await a flush (a key counted by several
    /// threads in one minute is one per thread until then).
    fn pending_len(&self) -> usize {
        self.pending
            .all()
            .map(|pending| pending.lock().expect("usage lock").len())
            .sum()
    }

    /// Appends one `key.used` event per key and minute counted since the last
    /// flush, [`FLUSH_BATCH`] of them at a time, each batch in a few round
    /// trips and one transaction; returns how many were appended. The
    /// database being down (or found down on the way) keeps the rest for
    /// the next flush at once, rather than trying it batch after batch.
    pub async fn flush(&self, pool: &PgPool, database: &DatabaseHealth) -> usize {
        if database.is_down() {
            return 0;
        }
        // Each table taken whole, so its memory goes with it (a drained
        // table keeps its size); a key and minute counted by several threads
        // is one event.
        let mut taken = Pending::default();
        for pending in self.pending.all() {
            let part = std::mem::take(&mut *pending.lock().expect("usage lock"));
            if taken.is_empty() {
                taken = part;
            } else {
                for (key_minute, counts) in part {
                    taken.entry(key_minute).or_default().merge(counts);
                }
            }
        }
        let mut flushed = Flushed::default();
        // One connection for every batch, its buffers shrunk after: a
        // batch's messages grow them to about a megabyte, which a
        // connection keeps, and the pool would hand the batches (and the
        // flushes) each of its connections in turn.
        let mut conn: Option<PoolConnection<Postgres>> = None;
        let mut taken = taken.into_iter();
        loop {
            let batch: Vec<_> = taken.by_ref().take(FLUSH_BATCH).collect();
            if batch.is_empty() {
                break;
            }
            if flushed.unavailable {
                self.keep(batch);
                continue;
            }
            let acquired = match conn.take() {
                Some(held) => Ok(held),
                None => pool.acquire().await,
            };
            let appended = match acquired {
                Ok(mut held) => {
                    let appended = append_batch(&mut held, &batch).await;
                    // On the same connection: the shutdown's flush has a
                    // pool of one.
                    if let Ok(outcome) = &appended {
                        flushed.announce(&mut *held, &outcome.notices).await;
                    }
                    // Kept for the next batch unless something failed on it
                    // (the pool checks a connection before handing it out;
                    // the queued rollback of a failed batch goes out when it
                    // is returned).
                    if appended.is_ok() && !flushed.unannounced {
                        conn = Some(held);
                    }
                    appended
                }
                Err(e) => Err(e.into()),
            };
            match appended {
                Ok(outcome) => {
                    for ((key_minute, counts), decision) in batch.into_iter().zip(outcome.decisions) {
                        match decision {
                            Ok(()) => flushed.appended += 1,
                            // A deleted key's last counts go with it.
                            Err(DomainError::NotFound) => {}
                            Err(e) => {
                                tracing::warn!(key_id = %key_minute.0, error = %e, "usage flush refused; keeping the counts");
                                flushed.failures += 1;
                                self.keep([(key_minute, counts)]);
                            }
                        }
                    }
                }
                Err(e) if matches!(&e, HandlerError::Database(d) if is_unavailable(d)) => {
                    flushed.failed(database, &e, batch.len());
                    self.keep(batch);
                }
                // Another writer appended to one of the keys since the batch
                // read them (or one key could not be loaded): one by one,
                // each tried again as a command is, so that no key holds
                // up the others.
                Err(e) => {
                    if !matches!(e, HandlerError::Concurrency) {
                        tracing::warn!(error = %e, "usage flush: a batch failed; appending its keys' minutes one by one");
                    }
                    // (The batch's connection is back in the pool, which
                    // they take from: the shutdown's flush has a pool of one.)
                    for (key_minute, counts) in batch {
                        self.flush_one(pool, database, key_minute, counts, &mut flushed).await;
                    }
                }
            }
        }
        if let Some(mut held) = conn {
            sqlx::Connection::shrink_buffers(&mut *held);
        }
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.flushed_events
            .fetch_add(flushed.appended as u64, Ordering::Relaxed);
        self.last_flush_size.store(flushed.appended as u64, Ordering::Relaxed);
        self.flush_failures.fetch_add(flushed.failures, Ordering::Relaxed);
        flushed.appended
    }

    /// One key's minute on its own (a transaction of its own, tried again
    /// when a command appends to the key at the same moment).
    async fn flush_one(
        &self,
        pool: &PgPool,
        database: &DatabaseHealth,
        key_minute: (KeyId, DateTime<Utc>),
        counts: Counts,
        flushed: &mut Flushed,
    ) {
        if !flushed.unavailable {
            match append(pool, key_minute.0, key_minute.1, counts).await {
                Ok(Some(notice)) => {
                    flushed.appended += 1;
                    flushed.announce(pool, &[notice]).await;
                    return;
                }
                // A deleted key's last counts go with it.
                Ok(None) => return,
                Err(e) => flushed.failed(database, &e, 1),
            }
        }
        self.keep([(key_minute, counts)]);
    }

    /// Puts counts back, for the next flush.
    fn keep(&self, counted: impl IntoIterator<Item = ((KeyId, DateTime<Utc>), Counts)>) {
        let mut pending = self.pending.mine().lock().expect("usage lock");
        for (key_minute, counts) in counted {
            pending.entry(key_minute).or_default().merge(counts);
        }
    }

    /// Flushes every `interval`, and as soon as the database is back after
    /// an outage, until `shutdown`; then once more.
    pub async fn run(&self, pool: PgPool, database: &DatabaseHealth, interval: Duration, shutdown: Shutdown) {
        let flush = from_fn(|| async {
            self.flush(&pool, database).await;
            Progress::Idle
        });
        let schedule = Schedule::every(interval).waiting_first();
        run_loop(&shutdown, schedule, database.recoveries(), flush).await;
        self.flush_on_shutdown(&pool, database).await;
    }

    /// The last flush, when the process stops: bounded by
    /// [`SHUTDOWN_FLUSH_DEADLINE`], on connections of its own, and
    /// attempted even if the database was marked down (the probe has
    /// stopped by now, so the mark may be stale): a probe before each
    /// attempt decides, and a failed one ends it.
    async fn flush_on_shutdown(&self, pool: &PgPool, database: &DatabaseHealth) {
        if self.is_empty() {
            tracing::info!(flushed = 0, left = 0, "usage flushed on shutdown");
            return;
        }
        // Not the shared pool: its connections may belong to an HTTP
        // worker's runtime, which stops with the server, and a query on one
        // fails as if the database were unreachable (marking it down for
        // every attempt after). These are opened on this task's runtime.
        let options = pool.connect_options().as_ref().clone();
        let own = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(PROBE_TIMEOUT)
            .connect_lazy_with(options.clone());
        let mut flushed = 0;
        let attempts = async {
            for _ in 0..3 {
                // The mark is not trusted, and a pool would keep trying to
                // connect until its timeout: one probe decides at once.
                if !database.check(&options).await {
                    tracing::warn!("usage flush on shutdown: the database is unreachable");
                    break;
                }
                flushed += self.flush(&own, database).await;
                if self.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_FLUSH_DEADLINE, attempts).await.is_err() {
            tracing::warn!(
                seconds = SHUTDOWN_FLUSH_DEADLINE.as_secs(),
                "usage flush on shutdown did not finish in time; the rest of the counts are lost"
            );
        }
        own.close().await;
        tracing::info!(flushed, left = self.pending_len(), "usage flushed on shutdown");
    }
}

/// How many keys' minutes a flush appends in one statement.
pub const FLUSH_BATCH: usize = 1_000;

/// What a flush has done so far.
#[derive(Default)]
struct Flushed {
    appended: usize,
    failures: u64,
    /// The database was found unavailable: nothing more is tried.
    unavailable: bool,
    /// An announcement failed: no more are tried.
    unannounced: bool,
}

impl Flushed {
    /// `events` could not be appended, for `error`.
    fn failed(&mut self, database: &DatabaseHealth, error: &HandlerError, events: usize) {
        self.failures += events as u64;
        match error {
            HandlerError::Database(e) if is_unavailable(e) => {
                tracing::warn!(error = %e, "usage flush: the database is unavailable; keeping the counts");
                database.observe(e);
                self.unavailable = true;
            }
            e => tracing::warn!(events, error = %e, "usage flush failed; keeping the counts"),
        }
    }

    /// Wakes the workers for what was appended. Best effort: a lost
    /// announcement only leaves them to their poll.
    async fn announce<'c>(&mut self, db: impl PgExecutor<'c>, notices: &[Notice]) {
        if self.unannounced || self.unavailable || notices.is_empty() {
            return;
        }
        if let Err(e) = log::announce(db, notices).await {
            tracing::warn!(error = %e, "usage flush: cannot announce the appended usage");
            self.unannounced = true;
        }
    }
}

/// The `key.used` event of one key's counts of one minute.
fn used(minute: DateTime<Utc>, counts: Counts) -> KeyUsed {
    KeyUsed {
        minute,
        requests: counts.requests,
        successful: counts.successful,
        failed: counts.failed,
        rate_limited: counts.rate_limited,
        last_used_at: counts.last_used_at.unwrap_or(minute),
    }
}

fn usage_meta() -> EventMeta {
    EventMeta {
        actor: "system:usage".into(),
        request_id: None,
        occurred_at: Utc::now(),
    }
}

/// Appends a batch of keys' minutes at once
/// ([`handler::execute_many_unannounced`]): usage records only wake the
/// workers (no cache reads them), so their notices are announced after.
async fn append_batch(
    conn: &mut PgConnection,
    batch: &[((KeyId, DateTime<Utc>), Counts)],
) -> Result<ManyOutcome, HandlerError> {
    let commands = batch
        .iter()
        .map(|&((id, minute), counts)| (key::stream_id(id), KeyCommand::RecordUsage(used(minute, counts))))
        .collect();
    handler::execute_many_unannounced::<ApiKey>(conn, commands, &usage_meta()).await
}

/// Appends one key's counts of one minute; the notice to announce.
async fn append(
    pool: &PgPool,
    id: KeyId,
    minute: DateTime<Utc>,
    counts: Counts,
) -> Result<Option<Notice>, HandlerError> {
    let used = used(minute, counts);
    let meta = usage_meta();
    // A command on the key may append at the same moment: try again.
    let mut attempts = 0;
    loop {
        let command = KeyCommand::RecordUsage(used.clone());
        match handler::execute_unannounced::<ApiKey>(pool, &key::stream_id(id), command, &meta, |_| Ok(())).await {
            Err(HandlerError::Concurrency) if attempts < 5 => attempts += 1,
            Err(HandlerError::Domain(DomainError::NotFound)) => return Ok(None),
            other => return other.map(|(_, notice)| notice),
        }
    }
}
