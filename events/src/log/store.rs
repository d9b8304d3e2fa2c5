//! Appending to and reading from the `events` table.

use chrono::SubsecRound;
use sqlx::{PgConnection, PgExecutor};

use super::envelope::{EventMeta, LogPosition, NewEvent, StoredEvent};

/// Every append notifies this channel when it commits — payload: the stream
/// id, a space, the event types separated by commas — so projectors wake up
/// and API nodes evict cached keys.
pub const NOTIFY_CHANNEL: &str = "keyledger_events";

const COLUMNS: &str =
    "position, tx_id, event_id, stream_id, version, type, schema_version, occurred_at, actor, request_id, data";

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another writer appended to the stream since it was read.
    #[error("stream {stream_id} changed concurrently (expected version {expected})")]
    Conflict { stream_id: String, expected: i64 },
    /// Another writer appended to one of the streams of
    /// [`append_many_unannounced`] since it was read: nothing was stored.
    #[error("one of {streams} streams changed concurrently")]
    BatchConflict { streams: usize },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Appends `events` to `stream_id` as versions `expected_version + 1 …`,
/// inside the caller's transaction (so read models can be updated in it).
/// A writer that raced us gets [`AppendError::Conflict`], never a lost update:
/// the version check below catches a writer that committed before us (a new
/// stream needs none: its version 1 is refused if the stream has any event),
/// the unique `(stream_id, version)` index one that commits while we run.
/// The last insert also notifies [`NOTIFY_CHANNEL`] (delivered at commit).
pub async fn append(
    tx: &mut PgConnection,
    stream_id: &str,
    expected_version: i64,
    events: &[NewEvent],
    meta: &EventMeta,
) -> Result<Vec<StoredEvent>, AppendError> {
    Ok(insert(tx, stream_id, expected_version, events, meta, true).await?.0)
}

/// [`append`] without the notification: the caller announces the
/// [`Notice`] once the transaction has committed ([`super::announce`]).
///
/// A notification sent inside a transaction costs every other such
/// transaction its share of the disk: PostgreSQL lets one notifying
/// transaction commit at a time, holding its queue lock until the commit
/// is on disk. Appends whose notification only wakes the workers (a new
/// key's stream, which no cache can hold yet; usage records, which no cache
/// reads) use this and commit alongside each other; a lost announcement
/// delays the workers to their next poll, and nothing else.
pub async fn append_unannounced(
    tx: &mut PgConnection,
    stream_id: &str,
    expected_version: i64,
    events: &[NewEvent],
    meta: &EventMeta,
) -> Result<(Vec<StoredEvent>, Notice), AppendError> {
    insert(tx, stream_id, expected_version, events, meta, false).await
}

/// Events for one stream: its id, the version they follow (0 for a new
/// stream, whose first events are versions 1, 2, …), the events and who
/// appends them.
pub struct NewStream<'a> {
    pub stream_id: &'a str,
    pub expected_version: i64,
    pub events: &'a [NewEvent],
    pub meta: &'a EventMeta,
}

/// The events of several streams as columns, for one statement that
/// inserts them all: `insert into events (NEW_EVENT_COLUMNS) select … from
/// {unnest}` with [`NewEventColumns::unnest`] and [`NewEventColumns::bind`].
/// The statement is the caller's (it may insert only on a condition), so
/// what it must return — each row's `event_id, position, tx_id` — is turned
/// back into stored events by [`NewEventColumns::stored`].
pub struct NewEventColumns<'a> {
    streams: &'a [NewStream<'a>],
    event_ids: Vec<uuid::Uuid>,
    stream_ids: Vec<&'a str>,
    versions: Vec<i64>,
    types: Vec<&'a str>,
    schema_versions: Vec<i32>,
    times: Vec<chrono::DateTime<chrono::Utc>>,
    actors: Vec<&'a str>,
    request_ids: Vec<Option<&'a str>>,
    data: Vec<&'a serde_json::Value>,
}

/// The columns [`NewEventColumns::unnest`] yields, in order.
pub const NEW_EVENT_COLUMNS: &str =
    "event_id, stream_id, version, type, schema_version, occurred_at, actor, request_id, data";

impl<'a> NewEventColumns<'a> {
    pub fn of(streams: &'a [NewStream<'a>]) -> NewEventColumns<'a> {
        let rows: usize = streams.iter().map(|s| s.events.len()).sum();
        let mut columns = NewEventColumns {
            streams,
            event_ids: Vec::with_capacity(rows),
            stream_ids: Vec::with_capacity(rows),
            versions: Vec::with_capacity(rows),
            types: Vec::with_capacity(rows),
            schema_versions: Vec::with_capacity(rows),
            times: Vec::with_capacity(rows),
            actors: Vec::with_capacity(rows),
            request_ids: Vec::with_capacity(rows),
            data: Vec::with_capacity(rows),
        };
        for stream in streams {
            for (version, event) in (stream.expected_version + 1..).zip(stream.events) {
                columns.event_ids.push(uuid::Uuid::now_v7());
                columns.stream_ids.push(stream.stream_id);
                columns.versions.push(version);
                columns.types.push(event.event_type.as_str());
                columns.schema_versions.push(event.schema_version);
                // PostgreSQL keeps microseconds.
                columns.times.push(stream.meta.occurred_at.trunc_subsecs(6));
                columns.actors.push(stream.meta.actor.as_str());
                columns.request_ids.push(stream.meta.request_id.as_deref());
                columns.data.push(&event.data);
            }
        }
        columns
    }

    /// The rows, as a `from` item named `alias` with the columns
    /// [`NEW_EVENT_COLUMNS`], reading parameters `$first` … `$first+8`.
    pub fn unnest(first: usize, alias: &str) -> String {
        let types = [
            "uuid",
            "text",
            "bigint",
            "text",
            "int",
            "timestamptz",
            "text",
            "text",
            "jsonb",
        ];
        let arrays: Vec<String> = (first..).zip(types).map(|(n, t)| format!("${n}::{t}[]")).collect();
        format!("unnest({}) as {alias}({NEW_EVENT_COLUMNS})", arrays.join(", "))
    }

    /// Binds the columns, in [`NewEventColumns::unnest`]'s order.
    pub fn bind<'q, Q: Binds<'q>>(&'q self, query: Q) -> Q {
        query
            .bind_param(&self.event_ids)
            .bind_param(&self.stream_ids)
            .bind_param(&self.versions)
            .bind_param(&self.types)
            .bind_param(&self.schema_versions)
            .bind_param(&self.times)
            .bind_param(&self.actors)
            .bind_param(&self.request_ids)
            .bind_param(&self.data)
    }

    /// Each stream's stored events and notice, in the order given, from what
    /// the statement returned for each row (`event_id`, `position`,
    /// `tx_id`); `None` unless it returned every row.
    pub fn stored(&self, returned: &[(uuid::Uuid, i64, i64)]) -> Option<Vec<(Vec<StoredEvent>, Notice)>> {
        let assigned: std::collections::HashMap<uuid::Uuid, (i64, i64)> = returned
            .iter()
            .map(|&(id, position, tx_id)| (id, (position, tx_id)))
            .collect();
        if assigned.len() != self.event_ids.len() {
            return None;
        }
        let mut row = 0;
        let mut appended = Vec::with_capacity(self.streams.len());
        for stream in self.streams {
            let mut stored = Vec::with_capacity(stream.events.len());
            for event in stream.events {
                let event_id = self.event_ids[row];
                let &(position, tx_id) = assigned.get(&event_id)?;
                stored.push(StoredEvent {
                    position,
                    tx_id,
                    event_id,
                    stream_id: stream.stream_id.to_owned(),
                    version: self.versions[row],
                    event_type: event.event_type.clone(),
                    schema_version: event.schema_version,
                    occurred_at: self.times[row],
                    actor: stream.meta.actor.clone(),
                    request_id: stream.meta.request_id.clone(),
                    data: event.data.clone(),
                });
                row += 1;
            }
            appended.push((stored, Notice::of(stream.stream_id, stream.events)));
        }
        Some(appended)
    }
}

/// [`append_unannounced`] for many streams in one statement (its own
/// transaction, or the caller's): each stream's events as the versions
/// after its `expected_version`, in the order given, and one notice per
/// stream for the caller to announce once committed. A writer that raced
/// any of the streams fails the whole statement with
/// [`AppendError::BatchConflict`], by the unique `(stream_id, version)`
/// index as in [`append`] (versions have no gaps: whoever appended since
/// the read took the version after it), and nothing is stored.
pub async fn append_many_unannounced(
    tx: &mut PgConnection,
    streams: &[NewStream<'_>],
) -> Result<Vec<(Vec<StoredEvent>, Notice)>, AppendError> {
    let columns = NewEventColumns::of(streams);
    let sql = format!(
        "insert into events ({NEW_EVENT_COLUMNS}) select e.* from {} returning event_id, position, tx_id",
        NewEventColumns::unnest(1, "e")
    );
    let returned: Vec<(uuid::Uuid, i64, i64)> = match columns.bind(sqlx::query_as(&sql)).fetch_all(&mut *tx).await {
        Ok(returned) => returned,
        Err(sqlx::Error::Database(e)) if e.constraint() == Some("events_stream_version") => {
            return Err(AppendError::BatchConflict { streams: streams.len() })
        }
        Err(e) => return Err(e.into()),
    };
    columns.stored(&returned).ok_or_else(|| {
        AppendError::Database(sqlx::Error::Protocol(
            "an insert returned fewer rows than it was given".into(),
        ))
    })
}

/// A query that takes one more parameter: `sqlx`'s `Query` and `QueryAs`.
pub trait Binds<'q>: Sized {
    fn bind_param<T>(self, value: T) -> Self
    where
        T: 'q + sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>;
}

impl<'q> Binds<'q> for sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    fn bind_param<T>(self, value: T) -> Self
    where
        T: 'q + sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    {
        self.bind(value)
    }
}

impl<'q, O> Binds<'q> for sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    fn bind_param<T>(self, value: T) -> Self
    where
        T: 'q + sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    {
        self.bind(value)
    }
}

async fn insert(
    tx: &mut PgConnection,
    stream_id: &str,
    expected_version: i64,
    events: &[NewEvent],
    meta: &EventMeta,
    notify: bool,
) -> Result<(Vec<StoredEvent>, Notice), AppendError> {
    let conflict = || AppendError::Conflict {
        stream_id: stream_id.to_owned(),
        expected: expected_version,
    };
    // A new stream needs no look: its first event is version 1, which the
    // unique (stream, version) index refuses if the stream has any event.
    if expected_version > 0 {
        let current: i64 = sqlx::query_scalar("select coalesce(max(version), 0) from events where stream_id = $1")
            .bind(stream_id)
            .fetch_one(&mut *tx)
            .await?;
        if current != expected_version {
            return Err(conflict());
        }
    }
    let mut stored = Vec::with_capacity(events.len());
    let notice = Notice::of(stream_id, events);
    for (version, event) in (expected_version + 1..).zip(events) {
        // The last insert also notifies (delivered when the transaction
        // commits): one round trip less per command.
        let last = notify && version == expected_version + events.len() as i64;
        let notify = if last {
            ", pg_notify($10, $11)::text as notified"
        } else {
            ""
        };
        // Only what the database assigns comes back: the rest is what was
        // sent (times as stored, to the microsecond), not parsed again.
        let sql = format!(
            "insert into events (event_id, stream_id, version, type, schema_version, occurred_at, actor, request_id, data)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9) returning position, tx_id{notify}"
        );
        let event_id = uuid::Uuid::now_v7();
        let occurred_at = meta.occurred_at.trunc_subsecs(6);
        let row = sqlx::query_as::<_, (i64, i64)>(&sql)
            .bind(event_id)
            .bind(stream_id)
            .bind(version)
            .bind(&event.event_type)
            .bind(event.schema_version)
            .bind(occurred_at)
            .bind(&meta.actor)
            .bind(&meta.request_id)
            .bind(&event.data);
        let row = if last {
            row.bind(NOTIFY_CHANNEL).bind(&notice.0)
        } else {
            row
        };
        match row.fetch_one(&mut *tx).await {
            Ok((position, tx_id)) => stored.push(StoredEvent {
                position,
                tx_id,
                event_id,
                stream_id: stream_id.to_owned(),
                version,
                event_type: event.event_type.clone(),
                schema_version: event.schema_version,
                occurred_at,
                actor: meta.actor.clone(),
                request_id: meta.request_id.clone(),
                data: event.data.clone(),
            }),
            Err(sqlx::Error::Database(e)) if e.constraint() == Some("events_stream_version") => return Err(conflict()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok((stored, notice))
}

/// What an append tells [`NOTIFY_CHANNEL`]'s listeners: the stream id, a
/// space, the event types separated by commas (each once).
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "announce it once the transaction has committed"]
pub struct Notice(String);

impl Notice {
    fn of(stream_id: &str, events: &[NewEvent]) -> Notice {
        // Each type once: a usage flush may append many minutes of one key
        // at once, and a notification's payload is limited to 8,000 bytes.
        let mut types: Vec<&str> = Vec::new();
        for event in events {
            if !types.contains(&event.event_type.as_str()) {
                types.push(&event.event_type);
            }
        }
        Notice(format!("{stream_id} {}", types.join(",")))
    }
}

/// Sends `notices` to [`NOTIFY_CHANNEL`] in one statement, after the
/// appends they tell of have committed. The statement's own transaction
/// writes nothing to wait for, so it holds PostgreSQL's notification lock
/// only for a moment.
pub async fn announce<'c>(db: impl PgExecutor<'c>, notices: &[Notice]) -> Result<(), sqlx::Error> {
    if notices.is_empty() {
        return Ok(());
    }
    let payloads: Vec<&str> = notices.iter().map(|n| n.0.as_str()).collect();
    sqlx::query("select count(pg_notify($1, payload)) from unnest($2::text[]) as payload")
        .bind(NOTIFY_CHANNEL)
        .bind(&payloads)
        .execute(db)
        .await?;
    Ok(())
}

/// One stream in version order, optionally only the events that occurred at
/// or before `until`.
pub async fn read_stream<'c>(
    db: impl PgExecutor<'c>,
    stream_id: &str,
    until: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from events
         where stream_id = $1 and ($2::timestamptz is null or occurred_at <= $2)
         order by version"
    ))
    .bind(stream_id)
    .bind(until)
    .fetch_all(db)
    .await
}

/// The type of usage records: one per key and minute it was used, by far
/// the most numerous events of a busy key, and never needed to load one.
pub const USAGE_EVENT: &str = "key.used";

/// The condition that leaves usage records out, written into the query's
/// text rather than bound: only then does it match the predicate of the
/// partial index `events_stream_without_usage` (on `(stream_id, version)`
/// of every other event), in generic plans too. Without it, PostgreSQL
/// fetched every usage record of the stream from the table to drop it —
/// 20–39 ms to load a key with 100,000 of them.
const NOT_USAGE: &str = "type <> 'key.used'";

/// [`read_stream`] without usage records.
pub async fn read_stream_without_usage<'c>(
    db: impl PgExecutor<'c>,
    stream_id: &str,
    until: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from events
         where stream_id = $1 and ($2::timestamptz is null or occurred_at <= $2) and {NOT_USAGE}
         order by version"
    ))
    .bind(stream_id)
    .bind(until)
    .fetch_all(db)
    .await
}

/// [`read_stream_without_usage`] of several streams (to the present), in
/// one query: ordered by stream, then version.
pub async fn read_streams_without_usage<'c>(
    db: impl PgExecutor<'c>,
    stream_ids: &[&str],
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from events
         where stream_id = any($1) and {NOT_USAGE}
         order by stream_id, version"
    ))
    .bind(stream_ids)
    .fetch_all(db)
    .await
}

/// The newest `limit` events of one stream, newest first, without usage
/// records.
pub async fn read_stream_newest_without_usage<'c>(
    db: impl PgExecutor<'c>,
    stream_id: &str,
    limit: i64,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from events
         where stream_id = $1 and {NOT_USAGE}
         order by version desc limit $2"
    ))
    .bind(stream_id)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Whether every event appended to `stream_id` after `version` is a usage
/// record: they change no state (loading skips them), so a command decided
/// before them would decide the same after them (the handler decides again
/// rather than refusing).
pub async fn only_usage_after<'c>(db: impl PgExecutor<'c>, stream_id: &str, version: i64) -> Result<bool, sqlx::Error> {
    let others: i64 = sqlx::query_scalar(&format!(
        "select count(*) from events where stream_id = $1 and version > $2 and {NOT_USAGE}"
    ))
    .bind(stream_id)
    .bind(version)
    .fetch_one(db)
    .await?;
    Ok(others == 0)
}

/// One event by its id.
pub async fn read_event<'c>(db: impl PgExecutor<'c>, event_id: uuid::Uuid) -> Result<Option<StoredEvent>, sqlx::Error> {
    sqlx::query_as(&format!("select {COLUMNS} from events where event_id = $1"))
        .bind(event_id)
        .fetch_optional(db)
        .await
}

/// The stream's newest version (0 when it has no event).
/// The newest event of `event_type` in the stream, if it has one.
pub async fn newest_of_type<'c>(
    db: impl PgExecutor<'c>,
    stream_id: &str,
    event_type: &str,
) -> Result<Option<StoredEvent>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from events
         where stream_id = $1 and type = $2
         order by version desc limit 1"
    ))
    .bind(stream_id)
    .bind(event_type)
    .fetch_optional(db)
    .await
}

pub async fn stream_version<'c>(db: impl PgExecutor<'c>, stream_id: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("select coalesce(max(version), 0) from events where stream_id = $1")
        .bind(stream_id)
        .fetch_one(db)
        .await
}

/// [`stream_version`] of several streams in one query, in the order given
/// (each one look at the end of its stream in the `(stream_id, version)`
/// index).
pub async fn stream_versions<'c>(db: impl PgExecutor<'c>, stream_ids: &[&str]) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "select coalesce((select max(version) from events where stream_id = s.id), 0)
         from unnest($1::text[]) with ordinality as s(id, n) order by s.n",
    )
    .bind(stream_ids)
    .fetch_all(db)
    .await
}

/// Up to `limit` events after `after`, in (transaction, position) order.
///
/// Only rows of transactions older than the oldest transaction still running
/// are read: an append that has taken a position but not committed yet holds
/// the reader back until it commits (or aborts), instead of being skipped
/// when a later append commits first.
pub async fn read_after<'c>(
    db: impl PgExecutor<'c>,
    after: LogPosition,
    limit: i64,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from events
         where (tx_id, position) > ($1, $2)
           and tx_id < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
         order by tx_id, position
         limit $3"
    ))
    .bind(after.tx_id)
    .bind(after.position)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Up to `limit` events after `after` that this transaction's snapshot sees,
/// in (transaction, position) order, *without* holding back for running
/// transactions. Only for readers that work inside one snapshot and compare
/// with tables of that same snapshot (`replay`); a tailing reader must use
/// [`read_after`].
pub async fn read_visible_after<'c>(
    db: impl PgExecutor<'c>,
    after: LogPosition,
    limit: i64,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from events where (tx_id, position) > ($1, $2) order by tx_id, position limit $3"
    ))
    .bind(after.tx_id)
    .bind(after.position)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Where the reader `name` (a projector, the relay) stands.
pub async fn checkpoint<'c>(db: impl PgExecutor<'c>, name: &str) -> Result<LogPosition, sqlx::Error> {
    let row: Option<(i64, i64)> = sqlx::query_as("select tx_id, position from projector_checkpoints where name = $1")
        .bind(name)
        .fetch_optional(db)
        .await?;
    Ok(row.map_or(LogPosition::default(), |(tx_id, position)| LogPosition {
        tx_id,
        position,
    }))
}

/// Records that the reader `name` has handled everything up to `at`.
pub async fn save_checkpoint<'c>(db: impl PgExecutor<'c>, name: &str, at: LogPosition) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into projector_checkpoints (name, tx_id, position) values ($1, $2, $3)
         on conflict (name) do update set tx_id = $2, position = $3, updated_at = now()",
    )
    .bind(name)
    .bind(at.tx_id)
    .bind(at.position)
    .execute(db)
    .await?;
    Ok(())
}

/// Every event appended by transaction `tx_id` or a later one, in
/// (transaction, position) order (what a snapshot taken before may lack).
pub async fn read_since_transaction<'c>(db: impl PgExecutor<'c>, tx_id: i64) -> Result<Vec<StoredEvent>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from events where tx_id >= $1 order by tx_id, position"
    ))
    .bind(tx_id)
    .fetch_all(db)
    .await
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_condition_names_the_usage_type() {
        assert_eq!(super::NOT_USAGE, format!("type <> '{}'", super::USAGE_EVENT));
    }
}
