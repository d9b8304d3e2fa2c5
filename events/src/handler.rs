//! Command handling, shared by the HTTP API and the CLI: load the aggregate
//! from its stream → decide → append with the expected version → apply the
//! new events to the read models in the same transaction → commit.

use chrono::SubsecRound;
use sqlx::{PgConnection, PgPool};

use crate::domain::{Aggregate, DomainError};
use crate::log::{self, AppendError, DecodeError, EventMeta, NewEvent, Notice, StoredEvent};
use crate::read_model::{self, ProjectionError};

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// Another writer changed the stream between our read and our append.
    #[error("concurrent modification")]
    Concurrency,
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Projection(ProjectionError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<AppendError> for HandlerError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Conflict { .. } | AppendError::BatchConflict { .. } => HandlerError::Concurrency,
            AppendError::Database(e) => HandlerError::Database(e),
        }
    }
}

impl From<ProjectionError> for HandlerError {
    fn from(e: ProjectionError) -> Self {
        match e {
            ProjectionError::Database(e) => HandlerError::Database(e),
            other => HandlerError::Projection(other),
        }
    }
}

pub use crate::log::USAGE_EVENT;

/// An aggregate as its stream has it.
pub struct Loaded<A> {
    pub state: Option<A>,
    pub version: i64,
}

/// Rebuilds an aggregate from its stream (optionally as of a moment).
pub async fn load<A: Aggregate>(
    pool: &PgPool,
    stream_id: &str,
    until: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<Loaded<A>, HandlerError> {
    let mut conn = pool.acquire().await?;
    load_on(&mut conn, stream_id, until).await
}

/// [`load`] on a connection the caller holds (possibly inside its transaction).
pub async fn load_on<A: Aggregate>(
    conn: &mut PgConnection,
    stream_id: &str,
    until: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<Loaded<A>, HandlerError> {
    // The version is read first and the events up to it after, so a command
    // that commits in between cannot slip under the expected version: the
    // state decided on is exactly the state at that version.
    let version = match until {
        None => Some(log::stream_version(&mut *conn, stream_id).await?),
        Some(_) => None,
    };
    // Usage records change no state and are by far the most numerous
    // events of a busy key: they are not read, but they count for the version.
    let events = log::read_stream_without_usage(&mut *conn, stream_id, until).await?;
    loaded(&events, version)
}

/// The aggregate from its events (without usage records) read after its
/// stream's `version`, when that was read: those past it are left out.
fn loaded<A: Aggregate>(events: &[StoredEvent], version: Option<i64>) -> Result<Loaded<A>, HandlerError> {
    let upto = events.partition_point(|e| version.is_none_or(|v| e.version <= v));
    let events = &events[..upto];
    let version = version.unwrap_or_else(|| events.last().map_or(0, |e| e.version));
    let decoded = events
        .iter()
        .map(StoredEvent::decode)
        .collect::<Result<Vec<A::Event>, _>>()?;
    Ok(Loaded {
        state: A::replay(&decoded),
        version,
    })
}

/// [`load_on`] (to the present) of several streams, in the order given: the
/// versions in one query, then the events in another.
async fn load_many<A: Aggregate>(conn: &mut PgConnection, stream_ids: &[&str]) -> Result<Vec<Loaded<A>>, HandlerError> {
    let versions = log::stream_versions(&mut *conn, stream_ids).await?;
    let events = log::read_streams_without_usage(&mut *conn, stream_ids).await?;
    // Each stream's events are one run (in the database's collation, which
    // need not be Rust's order of strings: looked up, not searched).
    let runs: std::collections::HashMap<&str, &[StoredEvent]> = events
        .chunk_by(|a, b| a.stream_id == b.stream_id)
        .map(|run| (run[0].stream_id.as_str(), run))
        .collect();
    stream_ids
        .iter()
        .zip(versions)
        .map(|(id, version)| loaded(runs.get(id).copied().unwrap_or_default(), Some(version)))
        .collect()
}

/// What a handled command left behind: what the transaction decided, from
/// which an answer is built without reading anything back.
pub struct Outcome<A> {
    /// The state after the command (`None` only if the aggregate never existed).
    pub state: Option<A>,
    /// The stream's version after the command (usage records included, as
    /// in the read models' `version` columns).
    pub version: i64,
    /// The events appended; empty when the command changed nothing.
    pub events: Vec<StoredEvent>,
}

/// A command decided on the stream's current state, not yet stored.
pub struct Decided<A: Aggregate> {
    stream_id: String,
    version: i64,
    state: Option<A>,
    events: Vec<A::Event>,
    meta: EventMeta,
}

impl<A: Aggregate> Decided<A> {
    /// True when the command changes nothing (appending would store nothing).
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The stream the events go to.
    pub fn stream_id(&self) -> &str {
        &self.stream_id
    }

    /// The events decided, not yet stored.
    pub fn events(&self) -> &[A::Event] {
        &self.events
    }

    /// Who appends them, and when (to the microsecond).
    pub fn meta(&self) -> &EventMeta {
        &self.meta
    }

    /// The outcome once a statement of the caller's stored the events as
    /// `stored` (for a new stream, with [`log::NewEventColumns`]), and
    /// projected them in the same transaction.
    pub fn stored(self, stored: Vec<StoredEvent>) -> Outcome<A> {
        let version = stored.last().map_or(self.version, |e| e.version);
        let state = self.events.iter().fold(self.state, A::evolve);
        Outcome {
            state,
            version,
            events: stored,
        }
    }

    /// Appends the events with the expected version and applies them to the
    /// read models, inside the caller's transaction: whatever else that
    /// transaction writes commits with them or not at all. Listeners are
    /// notified when it commits.
    pub async fn append(self, tx: &mut PgConnection) -> Result<Outcome<A>, HandlerError> {
        Ok(self.store(tx, true).await?.0)
    }

    /// [`Decided::append`] for a command whose notification only wakes the
    /// workers (see [`log::append_unannounced`]): the caller announces the
    /// notice once its transaction has committed.
    pub async fn append_unannounced(self, tx: &mut PgConnection) -> Result<(Outcome<A>, Option<Notice>), HandlerError> {
        self.store(tx, false).await
    }

    async fn store(self, tx: &mut PgConnection, notify: bool) -> Result<(Outcome<A>, Option<Notice>), HandlerError> {
        if self.events.is_empty() {
            let outcome = Outcome {
                state: self.state,
                version: self.version,
                events: vec![],
            };
            return Ok((outcome, None));
        }
        let encoded: Vec<NewEvent> = self.events.iter().map(NewEvent::from_domain).collect();
        let (stored, notice) = if notify {
            let stored = log::append(&mut *tx, &self.stream_id, self.version, &encoded, &self.meta).await?;
            (stored, None)
        } else {
            let (stored, notice) =
                log::append_unannounced(&mut *tx, &self.stream_id, self.version, &encoded, &self.meta).await?;
            (stored, Some(notice))
        };
        for event in &stored {
            read_model::apply(&mut *tx, event).await?;
        }
        Ok((self.stored(stored), notice))
    }
}

/// Loads the aggregate and decides `command` on it. `guard` sees the current
/// state first and may refuse (the API uses it to answer not-found for
/// another organization's key).
pub async fn decide<A: Aggregate>(
    pool: &PgPool,
    stream_id: &str,
    command: A::Command,
    meta: &EventMeta,
    guard: impl FnOnce(Option<&A>) -> Result<(), DomainError>,
) -> Result<Decided<A>, HandlerError> {
    let mut conn = pool.acquire().await?;
    decide_on(&mut conn, stream_id, command, meta, guard).await
}

/// [`decide`] on a connection the caller holds — inside its transaction, so
/// that what else the transaction writes (an idempotency record) and the
/// events commit together, and the command needs no second connection.
pub async fn decide_on<A: Aggregate>(
    conn: &mut PgConnection,
    stream_id: &str,
    command: A::Command,
    meta: &EventMeta,
    guard: impl FnOnce(Option<&A>) -> Result<(), DomainError>,
) -> Result<Decided<A>, HandlerError> {
    let Loaded { state, version } = load_on::<A>(conn, stream_id, None).await?;
    guard(state.as_ref())?;
    // PostgreSQL keeps microseconds: the events' times and the read models'
    // columns must say the same instant.
    let meta = EventMeta {
        occurred_at: meta.occurred_at.trunc_subsecs(6),
        ..meta.clone()
    };
    let events = A::decide(state.as_ref(), command, meta.occurred_at)?;
    Ok(Decided {
        stream_id: stream_id.to_owned(),
        version,
        state,
        events,
        meta,
    })
}

/// [`decide_on`] for a stream that cannot have events yet — one named by an
/// id just generated (a key being created) — without reading it: the append
/// still refuses, as a concurrency conflict, a stream that does have some.
pub fn decide_new<A: Aggregate>(
    stream_id: &str,
    command: A::Command,
    meta: &EventMeta,
) -> Result<Decided<A>, HandlerError> {
    let meta = EventMeta {
        occurred_at: meta.occurred_at.trunc_subsecs(6),
        ..meta.clone()
    };
    let events = A::decide(None, command, meta.occurred_at)?;
    Ok(Decided {
        stream_id: stream_id.to_owned(),
        version: 0,
        state: None,
        events,
        meta,
    })
}

/// How many times a command is decided at most when only usage records
/// were appended to its stream between its read and its append.
pub const ATTEMPTS: usize = 3;

/// [`decide_on`] then [`Decided::append`], inside the caller's transaction.
/// When the append finds the stream changed only by usage records since the
/// read (a usage flush appends them at any moment), the command is read and
/// decided again, up to [`ATTEMPTS`] times in all; each attempt runs in a
/// savepoint, so what the transaction did before (an idempotency claim, a
/// lock) stays. Any other change in between is
/// [`HandlerError::Concurrency`], as before.
pub async fn decide_and_append_on<A: Aggregate>(
    tx: &mut PgConnection,
    stream_id: &str,
    command: A::Command,
    meta: &EventMeta,
    guard: impl Fn(Option<&A>) -> Result<(), DomainError>,
) -> Result<Outcome<A>, HandlerError>
where
    A::Command: Clone,
{
    let mut attempt = 1;
    loop {
        let mut savepoint = sqlx::Connection::begin(&mut *tx).await?;
        let decided = match decide_on::<A>(&mut savepoint, stream_id, command.clone(), meta, &guard).await {
            Ok(decided) => decided,
            Err(e) => {
                savepoint.rollback().await?;
                return Err(e);
            }
        };
        let read = decided.version;
        match decided.append(&mut savepoint).await {
            Ok(outcome) => {
                savepoint.commit().await?;
                return Ok(outcome);
            }
            Err(HandlerError::Concurrency) if attempt < ATTEMPTS => {
                savepoint.rollback().await?;
                if !log::only_usage_after(&mut *tx, stream_id, read).await? {
                    return Err(HandlerError::Concurrency);
                }
                attempt += 1;
            }
            Err(e) => {
                savepoint.rollback().await?;
                return Err(e);
            }
        }
    }
}

/// Handles one command in a transaction of its own.
pub async fn execute<A: Aggregate>(
    pool: &PgPool,
    stream_id: &str,
    command: A::Command,
    meta: &EventMeta,
    guard: impl FnOnce(Option<&A>) -> Result<(), DomainError>,
) -> Result<Outcome<A>, HandlerError> {
    Ok(run(pool, stream_id, command, meta, guard, true).await?.0)
}

/// [`execute`] for a command whose notification only wakes the workers
/// (see [`log::append_unannounced`]): the caller announces the notice, if
/// any, once this has returned.
pub async fn execute_unannounced<A: Aggregate>(
    pool: &PgPool,
    stream_id: &str,
    command: A::Command,
    meta: &EventMeta,
    guard: impl FnOnce(Option<&A>) -> Result<(), DomainError>,
) -> Result<(Outcome<A>, Option<Notice>), HandlerError> {
    run(pool, stream_id, command, meta, guard, false).await
}

/// What [`execute_many_unannounced`] did.
pub struct ManyOutcome {
    /// Each command's decision, in the order given: a refused one appended
    /// nothing.
    pub decisions: Vec<Result<(), DomainError>>,
    /// One per stream appended to, for the caller to announce.
    pub notices: Vec<Notice>,
}

/// [`execute_unannounced`] for many commands at once, in a few round trips
/// instead of a transaction each: the streams' versions in one query and
/// their events in another; each command decided on its stream's state
/// after the commands given before it for the same stream; everything
/// decided appended in one statement and projected set-based
/// ([`read_model::apply_batch`]), in one transaction on `conn`. A refused command
/// appends nothing and refuses no other. Another writer appending to any
/// of the streams meanwhile fails the whole ([`HandlerError::Concurrency`]):
/// nothing is stored, and the caller may run the commands one by one.
pub async fn execute_many_unannounced<A: Aggregate>(
    conn: &mut PgConnection,
    commands: Vec<(String, A::Command)>,
    meta: &EventMeta,
) -> Result<ManyOutcome, HandlerError> {
    let meta = EventMeta {
        occurred_at: meta.occurred_at.trunc_subsecs(6),
        ..meta.clone()
    };
    let (ids, commands): (Vec<String>, Vec<A::Command>) = commands.into_iter().unzip();
    let mut stream_ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    stream_ids.sort_unstable();
    stream_ids.dedup();
    // Each stream's version as read, and its state and the events decided.
    let (versions, mut streams): (Vec<i64>, Vec<_>) = load_many::<A>(&mut *conn, &stream_ids)
        .await?
        .into_iter()
        .map(|loaded| (loaded.version, (loaded.state, Vec::new())))
        .unzip();
    let mut decisions = Vec::with_capacity(ids.len());
    for (id, command) in ids.iter().zip(commands) {
        let at = stream_ids
            .binary_search(&id.as_str())
            .expect("every command's stream was loaded");
        let (state, events) = &mut streams[at];
        decisions.push(A::decide(state.as_ref(), command, meta.occurred_at).map(|decided| {
            for event in &decided {
                *state = A::evolve(state.take(), event);
            }
            events.extend(decided);
        }));
    }
    let encoded: Vec<Vec<NewEvent>> = streams
        .iter()
        .map(|(_, events)| events.iter().map(NewEvent::from_domain).collect())
        .collect();
    let new: Vec<log::NewStream> = stream_ids
        .iter()
        .zip(&versions)
        .zip(&encoded)
        .filter(|(_, events)| !events.is_empty())
        .map(|((&stream_id, &expected_version), events)| log::NewStream {
            stream_id,
            expected_version,
            events,
            meta: &meta,
        })
        .collect();
    if new.is_empty() {
        return Ok(ManyOutcome {
            decisions,
            notices: Vec::new(),
        });
    }
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let appended = async {
        let (stored, notices): (Vec<Vec<StoredEvent>>, Vec<Notice>) =
            log::append_many_unannounced(&mut tx, &new).await?.into_iter().unzip();
        let mut stored: Vec<StoredEvent> = stored.into_iter().flatten().collect();
        stored.sort_unstable_by_key(|e| e.position);
        read_model::apply_batch(&mut tx, &stored)
            .await
            .map_err(|f| HandlerError::from(f.error))?;
        Ok::<_, HandlerError>(notices)
    }
    .await;
    match appended {
        Ok(notices) => {
            tx.commit().await?;
            Ok(ManyOutcome { decisions, notices })
        }
        // Rolled back now: the caller may go on using the connection, and a
        // dropped transaction's rollback waits for the connection's next use
        // (its inserted versions and locked rows with it).
        Err(e) => {
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

async fn run<A: Aggregate>(
    pool: &PgPool,
    stream_id: &str,
    command: A::Command,
    meta: &EventMeta,
    guard: impl FnOnce(Option<&A>) -> Result<(), DomainError>,
    notify: bool,
) -> Result<(Outcome<A>, Option<Notice>), HandlerError> {
    let decided = decide::<A>(pool, stream_id, command, meta, guard).await?;
    if decided.is_empty() {
        let outcome = Outcome {
            state: decided.state,
            version: decided.version,
            events: vec![],
        };
        return Ok((outcome, None));
    }
    let mut tx = pool.begin().await?;
    let stored = decided.store(&mut tx, notify).await?;
    tx.commit().await?;
    Ok(stored)
}
