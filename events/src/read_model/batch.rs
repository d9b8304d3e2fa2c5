//! [`apply_batch`]: many events at once, set-based, with the result of
//! [`apply`](super::apply) on each in turn.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::{apply, ProjectionError, ALERT_RAISED};
use crate::domain::key::KeyEvent;
use crate::log::{Binds, StoredEvent};

/// An event of a batch that failed to apply, and why.
#[derive(Debug)]
pub struct BatchFailure {
    /// The position of the event (for a set-based statement: of the first
    /// event it applied).
    pub position: i64,
    pub error: ProjectionError,
}

/// One step of a stream within a batch: what [`apply_batch`] applies.
enum Step<'a> {
    Created(&'a StoredEvent, &'a str, Box<crate::domain::key::KeyCreated>),
    /// Consecutive `key.used` events of one key, those an earlier one of
    /// the run does not outrank (the version guard would skip them).
    Used(&'a StoredEvent, &'a str, Vec<(i64, crate::domain::key::KeyUsed)>),
    /// Anything else, applied on its own with [`apply`].
    Single(&'a StoredEvent),
}

/// Applies `events` (in log order) to the read models with the same result
/// as [`apply`] on each in turn, in a few set-based statements instead of
/// one per event (what makes `replay` fast).
///
/// Why it is the same: events of different streams touch different rows
/// (a key's row and its usage rows, an organization's row and its
/// recipients), so only the order within a stream matters. The batch is
/// applied in waves — the first step of every stream, then the second… —
/// and each wave's creations are one multi-row insert, its usage records
/// one statement. A run of consecutive `key.used` events of one key is one
/// step: the version guard admits those newer than the row, and their counts
/// add up.
pub async fn apply_batch(db: &mut PgConnection, events: &[StoredEvent]) -> Result<(), BatchFailure> {
    apply_batch_into(db, events, UsageSink::Rollups).await
}

/// Where [`apply_batch_into`] adds the counts of the `key.used` events the
/// version guard admits.
#[derive(Debug, Clone, Copy)]
pub enum UsageSink<'a> {
    /// Added to `usage_rollups` at once (its minute, hour and day rows).
    Rollups,
    /// Appended, summed per key and minute, to this table (made by
    /// [`create_usage_staging`]), for [`roll_up_usage_staging`] to move the
    /// keys rows (last use, version) and write the `usage_rollups` rows at
    /// the end. A rebuild moves each key's row for its usage, and writes
    /// each rollup row, once this way, instead of batch after batch. The
    /// records are staged without their keys' rows; the roll-up joins them
    /// once, for the organization, with the same rows as a join per batch:
    /// a key's creation precedes its usage in log order, keys rows are never
    /// removed and their organization never changes. Records of a key
    /// without a row are dropped there, as [`apply`] drops them.
    ///
    /// Only for a rebuild, which applies each event once, in log order; not
    /// idempotent (the keys rows do not move, so an event applied twice
    /// would count twice). Meanwhile a keys row's version may lag behind the
    /// usage staged for it, which changes no outcome because in log order
    /// no event of a key follows one of its usage records with a lower
    /// version: a usage flush takes its transaction id when it appends,
    /// after reading the stream's version, when every lower version has
    /// committed. So a staged record never holds back a later one, and every
    /// other event's guard (`version < $2`) decides as it would on the
    /// moved row. A batched usage flush must keep that order.
    ///
    /// The other way round does happen: a command whose transaction took
    /// its id before a usage flush appended (an idempotent command, with
    /// its claim) appends the next version under the older id, so its
    /// event precedes the lower-versioned usage record in log order. The
    /// live tables counted that record when it committed; the version
    /// guard would skip it. Applying each event once, a rebuild needs no
    /// guard for usage, and counts every record.
    Staged(&'a str),
    /// As [`UsageSink::Rollups`], but every usage record counts, without the
    /// version guard: for events the caller applies exactly once, as
    /// `replay` does with those committed after its rebuild's snapshot.
    Once,
}

impl UsageSink<'_> {
    /// Whether every usage record counts, without the version guard.
    fn counts_every_record(self) -> bool {
        matches!(self, UsageSink::Staged(_) | UsageSink::Once)
    }
}

/// Creates `table` (unlogged, no index) for [`UsageSink::Staged`].
pub async fn create_usage_staging(db: &mut PgConnection, table: &str) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "create unlogged table {table} (key_id text not null, minute timestamptz not null,
             requests bigint not null, successful bigint not null, failed bigint not null, rate_limited bigint not null,
             last_used_at timestamptz not null, version bigint not null)"
    ))
    .execute(&mut *db)
    .await?;
    Ok(())
}

/// Moves each key's row to the last use and the highest version staged for
/// it in `table` (if greater), writes the counts to `usage_rollups` (minute,
/// hour and day rows), then drops `table`.
///
/// `usage_rollups` must be empty (a rebuild's copy): each row is inserted
/// once, plainly, so the table needs no index meanwhile, and a replay
/// builds them after (a check never), one sorted build each instead of a
/// lookup and two index entries per row.
pub async fn roll_up_usage_staging(db: &mut PgConnection, table: &str) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "update keys k set last_used_at = greatest(k.last_used_at, s.last_used_at), version = greatest(k.version, s.version)
         from (select key_id, max(last_used_at) as last_used_at, max(version) as version from {table} group by key_id) s
         where k.id = s.key_id"
    ))
    .execute(&mut *db)
    .await?;
    sqlx::query(&format!(
        // The minutes (the table holds a key's minute once per statement
        // that counted it: a batch's wave), and the hours and days summed
        // from them.
        "insert into usage_rollups (key_id, org_id, granularity, bucket, requests, successful, failed, rate_limited)
         with m as (
             select s.key_id, k.org_id, s.minute, sum(s.requests)::bigint as requests,
                    sum(s.successful)::bigint as successful, sum(s.failed)::bigint as failed,
                    sum(s.rate_limited)::bigint as rate_limited
             from {table} s join keys k on k.id = s.key_id group by 1, 2, 3)
         select key_id, org_id, 'minute', minute, requests, successful, failed, rate_limited from m
         union all
         select m.key_id, m.org_id, g.name, date_trunc(g.name, m.minute, 'UTC'),
                sum(m.requests), sum(m.successful), sum(m.failed), sum(m.rate_limited)
         from m, (values ('hour'), ('day')) as g(name)
         group by 1, 2, 3, 4"
    ))
    .execute(&mut *db)
    .await?;
    sqlx::query(&format!("drop table {table}")).execute(&mut *db).await?;
    Ok(())
}

/// [`apply_batch`], adding usage counts to `usage`.
pub async fn apply_batch_into(
    db: &mut PgConnection,
    events: &[StoredEvent],
    usage: UsageSink<'_>,
) -> Result<(), BatchFailure> {
    let fail = |event: &StoredEvent, error: ProjectionError| BatchFailure {
        position: event.position,
        error,
    };
    let mut streams: Vec<Vec<Step>> = Vec::new();
    let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for event in events {
        let (kind, id) = event
            .stream_id
            .split_once('-')
            .ok_or_else(|| fail(event, ProjectionError::StreamId(event.stream_id.clone())))?;
        let step = match kind {
            "key" if event.event_type.starts_with("key.") => {
                match event.decode::<KeyEvent>().map_err(|e| fail(event, e.into()))? {
                    KeyEvent::Created(created) => Step::Created(event, id, Box::new(created)),
                    KeyEvent::Used(used) => Step::Used(event, id, vec![(event.version, used)]),
                    _ => Step::Single(event),
                }
            }
            "alert" if event.event_type == ALERT_RAISED => continue,
            "org" if event.event_type.starts_with("org.") => Step::Single(event),
            _ => return Err(fail(event, ProjectionError::UnknownType(event.event_type.clone()))),
        };
        let at = *index.entry(event.stream_id.as_str()).or_insert_with(|| {
            streams.push(Vec::new());
            streams.len() - 1
        });
        let steps = &mut streams[at];
        if let (Some(Step::Used(_, _, run)), Step::Used(_, _, next)) = (steps.last_mut(), &step) {
            // Applied one by one, a record no newer than one before it in
            // the run would be skipped by the version guard; a rebuild
            // counts every record (see `UsageSink::Staged`).
            if usage.counts_every_record() || run.iter().all(|(version, _)| *version < event.version) {
                run.extend(next.iter().cloned());
            }
            continue;
        }
        steps.push(step);
    }
    let waves = streams.iter().map(Vec::len).max().unwrap_or(0);
    let mut streams: Vec<std::vec::IntoIter<Step>> = streams.into_iter().map(Vec::into_iter).collect();
    for _ in 0..waves {
        let (mut created, mut used, mut singles) = (CreatedKeyColumns::default(), UsedColumns::default(), Vec::new());
        let mut first: Option<&StoredEvent> = None;
        for steps in &mut streams {
            match steps.next() {
                Some(Step::Created(event, id, e)) => {
                    first = first.or(Some(event));
                    created.push(id, &e, event.version);
                }
                Some(Step::Used(event, id, run)) => {
                    first = first.or(Some(event));
                    for (version, e) in run {
                        used.push(id, version, &e);
                    }
                }
                Some(Step::Single(event)) => singles.push(event),
                None => {}
            }
        }
        let set_based = |error: sqlx::Error| BatchFailure {
            position: first.map_or(0, |e| e.position),
            error: error.into(),
        };
        if !created.is_empty() {
            created
                .bind(sqlx::query(&insert_created_keys(1, "true")))
                .execute(&mut *db)
                .await
                .map_err(set_based)?;
        }
        if !used.id.is_empty() {
            let records = "unnest($1::text[], $2::bigint[], $3::timestamptz[], $4::timestamptz[], $5::bigint[],
                                  $6::bigint[], $7::bigint[], $8::bigint[])
                           as r(id, version, last_used_at, minute, requests, successful, failed, rate_limited)";
            let sql = match usage {
                UsageSink::Rollups | UsageSink::Once => format!(
                    // The events the version guard admits (`Once`: all).
                    "with e as (
                         select r.*, k.org_id from {records} join keys k on k.id = r.id
                         where {}),
                     claimed as (
                         update keys k set last_used_at = greatest(k.last_used_at, c.last_used_at),
                                           version = greatest(k.version, c.version)
                         from (select id, max(last_used_at) as last_used_at, max(version) as version from e group by id) c
                         where k.id = c.id)
                     insert into usage_rollups (key_id, org_id, granularity, bucket, requests, successful, failed, rate_limited)
                     select e.id, e.org_id, g.name, date_trunc(g.name, e.minute, 'UTC'),
                            sum(e.requests), sum(e.successful), sum(e.failed), sum(e.rate_limited)
                     from e, (values ('minute'), ('hour'), ('day')) as g(name)
                     group by 1, 2, 3, 4
                     on conflict (key_id, granularity, bucket) do update set
                         requests = usage_rollups.requests + excluded.requests,
                         successful = usage_rollups.successful + excluded.successful,
                         failed = usage_rollups.failed + excluded.failed,
                         rate_limited = usage_rollups.rate_limited + excluded.rate_limited",
                    if matches!(usage, UsageSink::Once) {
                        "true"
                    } else {
                        "r.version > k.version"
                    }
                ),
                // Every record, without its key's row: the roll-up joins
                // the keys (for their organization) once, at the end.
                UsageSink::Staged(table) => format!(
                    "insert into {table} (key_id, minute, requests, successful, failed, rate_limited, last_used_at, version)
                     select r.id, date_trunc('minute', r.minute, 'UTC'),
                            sum(r.requests), sum(r.successful), sum(r.failed), sum(r.rate_limited),
                            max(r.last_used_at), max(r.version)
                     from {records}
                     group by 1, 2"
                ),
            };
            sqlx::query(&sql)
                .bind(used.id)
                .bind(used.version)
                .bind(used.last_used_at)
                .bind(used.minute)
                .bind(used.requests)
                .bind(used.successful)
                .bind(used.failed)
                .bind(used.rate_limited)
                .execute(&mut *db)
                .await
                .map_err(set_based)?;
        }
        for event in singles {
            apply(&mut *db, event).await.map_err(|e| fail(event, e))?;
        }
    }
    Ok(())
}

/// The keys rows of `key.created` events, a column each: bound as arrays
/// (cheaper to make, and for PostgreSQL to read, than a JSON document of
/// records), what [`insert_created_keys`] reads.
#[derive(Default)]
pub struct CreatedKeyColumns {
    id: Vec<String>,
    org_id: Vec<String>,
    name: Vec<String>,
    key_type: Vec<&'static str>,
    environment: Vec<&'static str>,
    /// Separated by spaces, which no scope's name holds.
    scopes: Vec<String>,
    key_hash: Vec<Vec<u8>>,
    prefix: Vec<String>,
    last_four: Vec<String>,
    created_at: Vec<DateTime<Utc>>,
    expires_at: Vec<Option<DateTime<Utc>>>,
    rotation_due_at: Vec<Option<DateTime<Utc>>>,
    version: Vec<i64>,
    /// Separated by spaces, which no address or range holds.
    allowed_ips: Vec<String>,
}

impl CreatedKeyColumns {
    /// The row a `key.created` event (of the key `id`, at `version`) makes.
    pub fn push(&mut self, id: &str, e: &crate::domain::key::KeyCreated, version: i64) {
        self.id.push(id.to_owned());
        self.org_id.push(e.org_id.to_string());
        self.name.push(e.name.as_str().to_owned());
        self.key_type.push(e.key_type.as_str());
        self.environment.push(e.environment.as_str());
        self.scopes.push(spaced(e.scopes.iter().map(|s| s.as_str())));
        self.key_hash.push(e.key_hash.0.to_vec());
        self.prefix.push(e.prefix.clone());
        self.last_four.push(e.last_four.clone());
        self.created_at.push(e.created_at);
        self.expires_at.push(e.expires_at);
        self.rotation_due_at.push(e.rotation_due_at);
        self.version.push(version);
        self.allowed_ips.push(spaced(e.allowed_ips.ranges().iter()));
    }

    pub fn is_empty(&self) -> bool {
        self.id.is_empty()
    }

    /// Binds the columns, in the order [`insert_created_keys`] reads them.
    pub fn bind<'q, Q: Binds<'q>>(&'q self, query: Q) -> Q {
        query
            .bind_param(&self.id)
            .bind_param(&self.org_id)
            .bind_param(&self.name)
            .bind_param(&self.key_type)
            .bind_param(&self.environment)
            .bind_param(&self.scopes)
            .bind_param(&self.key_hash)
            .bind_param(&self.prefix)
            .bind_param(&self.last_four)
            .bind_param(&self.created_at)
            .bind_param(&self.expires_at)
            .bind_param(&self.rotation_due_at)
            .bind_param(&self.version)
            .bind_param(&self.allowed_ips)
    }
}

/// `items`, separated by spaces.
fn spaced<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    use std::fmt::Write;
    let mut text = String::new();
    for (n, item) in items.enumerate() {
        let _ = write!(text, "{}{item}", if n == 0 { "" } else { " " });
    }
    text
}

/// The statement that inserts the keys rows of `key.created` events, read
/// from the [`CreatedKeyColumns`] bound as parameters `$first` …
/// `$first+13`, where `condition` holds (such as `true`); what [`apply`]
/// does for each, and nothing for a key that has its row already.
pub fn insert_created_keys(first: usize, condition: &str) -> String {
    let types = [
        "text",
        "text",
        "text",
        "text",
        "text",
        "text",
        "bytea",
        "text",
        "text",
        "timestamptz",
        "timestamptz",
        "timestamptz",
        "bigint",
        "text",
    ];
    let arrays: Vec<String> = (first..).zip(types).map(|(n, t)| format!("${n}::{t}[]")).collect();
    format!(
        "insert into keys (id, org_id, name, key_type, environment, scopes, status, key_hash, prefix,
                           last_four, created_at, expires_at, rotation_due_at, version, allowed_ips)
         select r.id, r.org_id, r.name, r.key_type, r.environment, string_to_array(r.scopes, ' '), 'active',
                r.key_hash, r.prefix, r.last_four, r.created_at, r.expires_at, r.rotation_due_at, r.version,
                string_to_array(r.allowed_ips, ' ')
         from unnest({arrays}) as r(id, org_id, name, key_type, environment, scopes, key_hash, prefix,
              last_four, created_at, expires_at, rotation_due_at, version, allowed_ips)
         where {condition}
         on conflict (id) do nothing",
        arrays = arrays.join(", "),
    )
}

/// The `key.used` events of a wave, a column each: bound as arrays (cheaper
/// for PostgreSQL to read than a JSON document of records).
#[derive(Default)]
struct UsedColumns<'a> {
    id: Vec<&'a str>,
    version: Vec<i64>,
    last_used_at: Vec<DateTime<Utc>>,
    minute: Vec<DateTime<Utc>>,
    requests: Vec<i64>,
    successful: Vec<i64>,
    failed: Vec<i64>,
    rate_limited: Vec<i64>,
}

impl<'a> UsedColumns<'a> {
    fn push(&mut self, id: &'a str, version: i64, e: &crate::domain::key::KeyUsed) {
        self.id.push(id);
        self.version.push(version);
        self.last_used_at.push(e.last_used_at);
        self.minute.push(e.minute);
        self.requests.push(e.requests as i64);
        self.successful.push(e.successful as i64);
        self.failed.push(e.failed as i64);
        self.rate_limited.push(e.rate_limited as i64);
    }
}
