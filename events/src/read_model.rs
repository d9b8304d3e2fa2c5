//! The read models (`keys`, `orgs` with their `alert_recipients`,
//! `usage_rollups`): how events are applied to them and how the API and
//! CLI query them.
//!
//! `apply` is the one projection function. Commands call it inside their
//! append transaction (so a command's answer, the key list and verification
//! see the change at once: a regenerated-away secret fails immediately), and
//! the projector calls it again while tailing the log (which is what rebuilds
//! the tables from nothing). Each row keeps the version of the last event
//! applied, so applying an event twice changes nothing.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::{PgConnection, PgExecutor};

use crate::domain::{
    key::{KeyEvent, LeakedSecret},
    org::{AlertSettings, OrgEvent},
    AllowedIps, EmailAddress, KeyHash, KeyStatus, ListedAddress,
};
use crate::log::{DecodeError, StoredEvent};

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("unknown event type '{0}'")]
    UnknownType(String),
    #[error("malformed stream id '{0}'")]
    StreamId(String),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The type of the event appended with each alert raised (stream `alert-<id>`).
pub const ALERT_RAISED: &str = "alert.raised";

/// Applies one stored event to the read models (idempotent).
pub async fn apply(db: &mut PgConnection, event: &StoredEvent) -> Result<(), ProjectionError> {
    let (kind, id) = event
        .stream_id
        .split_once('-')
        .ok_or_else(|| ProjectionError::StreamId(event.stream_id.clone()))?;
    match kind {
        "key" if event.event_type.starts_with("key.") => apply_key(db, id, event, event.decode()?).await,
        "org" if event.event_type.starts_with("org.") => apply_org(db, id, event, event.decode()?).await,
        // The record that an alert was raised (`alert.raised`, for webhooks
        // and Kafka consumers): the alert itself is a row of the mailer's
        // outbox, not a read model.
        "alert" if event.event_type == ALERT_RAISED => Ok(()),
        _ => Err(ProjectionError::UnknownType(event.event_type.clone())),
    }
}

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
    /// [`create_usage_staging`]), for [`roll_up_usage_staging`] to add to
    /// `usage_rollups` in one statement at the end. A rebuild writes each
    /// rollup row once this way, instead of updating it batch after batch.
    Staged(&'a str),
}

/// Creates `table` (unlogged, no index) for [`UsageSink::Staged`].
pub async fn create_usage_staging(db: &mut PgConnection, table: &str) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "create unlogged table {table} (key_id text not null, org_id text not null, minute timestamptz not null,
             requests bigint not null, successful bigint not null, failed bigint not null, rate_limited bigint not null)"
    ))
    .execute(&mut *db)
    .await?;
    Ok(())
}

/// Adds the counts staged in `table` to `usage_rollups` (minute, hour and
/// day rows), then drops `table`.
pub async fn roll_up_usage_staging(db: &mut PgConnection, table: &str) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "insert into usage_rollups (key_id, org_id, granularity, bucket, requests, successful, failed, rate_limited)
         select s.key_id, s.org_id, g.name, date_trunc(g.name, s.minute, 'UTC'),
                sum(s.requests), sum(s.successful), sum(s.failed), sum(s.rate_limited)
         from {table} s, (values ('minute'), ('hour'), ('day')) as g(name)
         group by 1, 2, 3, 4
         on conflict (key_id, granularity, bucket) do update set
             requests = usage_rollups.requests + excluded.requests,
             successful = usage_rollups.successful + excluded.successful,
             failed = usage_rollups.failed + excluded.failed,
             rate_limited = usage_rollups.rate_limited + excluded.rate_limited"
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
    use crate::domain::key::KeyEvent;
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
            // the run would be skipped by the version guard.
            if run.iter().all(|(version, _)| *version < event.version) {
                run.extend(next.iter().cloned());
            }
            continue;
        }
        steps.push(step);
    }
    let waves = streams.iter().map(Vec::len).max().unwrap_or(0);
    let mut streams: Vec<std::vec::IntoIter<Step>> = streams.into_iter().map(Vec::into_iter).collect();
    for _ in 0..waves {
        let (mut created, mut used, mut singles) = (Vec::new(), UsedColumns::default(), Vec::new());
        let mut first: Option<&StoredEvent> = None;
        for steps in &mut streams {
            match steps.next() {
                Some(Step::Created(event, id, e)) => {
                    first = first.or(Some(event));
                    created.push(json!({
                        "id": id,
                        "org_id": e.org_id.to_string(),
                        "name": e.name.as_str(),
                        "key_type": e.key_type.as_str(),
                        "environment": e.environment.as_str(),
                        "scopes": e.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                        "key_hash": hex::encode(e.key_hash.0),
                        "prefix": e.prefix,
                        "last_four": e.last_four,
                        "created_at": timestamp(e.created_at),
                        "expires_at": e.expires_at.map(timestamp),
                        "rotation_due_at": e.rotation_due_at.map(timestamp),
                        "version": event.version,
                        "allowed_ips": e.allowed_ips.to_strings(),
                    }));
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
            sqlx::query(
                "insert into keys (id, org_id, name, key_type, environment, scopes, status, key_hash, prefix,
                                   last_four, created_at, expires_at, rotation_due_at, version, allowed_ips)
                 select r.id, r.org_id, r.name, r.key_type, r.environment,
                        array(select s from jsonb_array_elements_text(r.scopes) with ordinality as t(s, n) order by n),
                        'active', decode(r.key_hash, 'hex'), r.prefix, r.last_four, r.created_at, r.expires_at,
                        r.rotation_due_at, r.version,
                        array(select s from jsonb_array_elements_text(r.allowed_ips) with ordinality as t(s, n) order by n)
                 from jsonb_to_recordset($1) as r(id text, org_id text, name text, key_type text, environment text,
                      scopes jsonb, key_hash text, prefix text, last_four text, created_at timestamptz,
                      expires_at timestamptz, rotation_due_at timestamptz, version bigint, allowed_ips jsonb)
                 on conflict (id) do nothing",
            )
            .bind(Value::Array(created))
            .execute(&mut *db)
            .await
            .map_err(set_based)?;
        }
        if !used.id.is_empty() {
            // The events the version guard admits, and the keys rows they move.
            const ADMITTED: &str = "with e as (
                     select r.*, k.org_id
                     from unnest($1::text[], $2::bigint[], $3::timestamptz[], $4::timestamptz[], $5::bigint[],
                                 $6::bigint[], $7::bigint[], $8::bigint[])
                          as r(id, version, last_used_at, minute, requests, successful, failed, rate_limited)
                     join keys k on k.id = r.id
                     where r.version > k.version),
                 claimed as (
                     update keys k set last_used_at = greatest(k.last_used_at, c.last_used_at), version = c.version
                     from (select id, max(last_used_at) as last_used_at, max(version) as version from e group by id) c
                     where k.id = c.id)";
            let sql = match usage {
                UsageSink::Rollups => format!(
                    "{ADMITTED}
                     insert into usage_rollups (key_id, org_id, granularity, bucket, requests, successful, failed, rate_limited)
                     select e.id, e.org_id, g.name, date_trunc(g.name, e.minute, 'UTC'),
                            sum(e.requests), sum(e.successful), sum(e.failed), sum(e.rate_limited)
                     from e, (values ('minute'), ('hour'), ('day')) as g(name)
                     group by 1, 2, 3, 4
                     on conflict (key_id, granularity, bucket) do update set
                         requests = usage_rollups.requests + excluded.requests,
                         successful = usage_rollups.successful + excluded.successful,
                         failed = usage_rollups.failed + excluded.failed,
                         rate_limited = usage_rollups.rate_limited + excluded.rate_limited"
                ),
                UsageSink::Staged(table) => format!(
                    "{ADMITTED}
                     insert into {table} (key_id, org_id, minute, requests, successful, failed, rate_limited)
                     select e.id, e.org_id, date_trunc('minute', e.minute, 'UTC'),
                            sum(e.requests), sum(e.successful), sum(e.failed), sum(e.rate_limited)
                     from e
                     group by 1, 2, 3"
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

/// A time as PostgreSQL reads it, to the microsecond it keeps (truncated,
/// as a bound parameter is).
fn timestamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

async fn apply_key(
    db: &mut PgConnection,
    id: &str,
    stored: &StoredEvent,
    event: KeyEvent,
) -> Result<(), ProjectionError> {
    let version = stored.version;
    // Every change but creation is guarded by the row's version.
    let update = |set: &str| format!("update keys set {set}, version = $2 where id = $1 and version < $2");
    match &event {
        KeyEvent::Created(e) => {
            sqlx::query(
                "insert into keys (id, org_id, name, key_type, environment, scopes, status, key_hash, prefix,
                                   last_four, created_at, expires_at, rotation_due_at, version, allowed_ips)
                 values ($1, $2, $3, $4, $5, $6, 'active', $7, $8, $9, $10, $11, $12, $13, $14)
                 on conflict (id) do nothing",
            )
            .bind(id)
            .bind(e.org_id.to_string())
            .bind(e.name.as_str())
            .bind(e.key_type.as_str())
            .bind(e.environment.as_str())
            .bind(e.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>())
            .bind(&e.key_hash.0[..])
            .bind(&e.prefix)
            .bind(&e.last_four)
            .bind(e.created_at)
            .bind(e.expires_at)
            .bind(e.rotation_due_at)
            .bind(version)
            .bind(e.allowed_ips.to_strings())
            .execute(&mut *db)
            .await?;
            return Ok(());
        }
        KeyEvent::Updated(e) => {
            let sql = update(
                "name = coalesce($3, name), scopes = coalesce($4, scopes),
                 expires_at = case when $5 then $6 else expires_at end,
                 allowed_ips = coalesce($7, allowed_ips)",
            );
            sqlx::query(&sql)
                .bind(id)
                .bind(version)
                .bind(e.name.as_ref().map(|n| n.as_str().to_owned()))
                .bind(
                    e.scopes
                        .as_ref()
                        .map(|s| s.iter().map(|s| s.as_str()).collect::<Vec<_>>()),
                )
                .bind(e.expires_at.is_some())
                .bind(e.expires_at.flatten())
                .bind(e.allowed_ips.as_ref().map(AllowedIps::to_strings))
                .execute(&mut *db)
                .await?
        }
        KeyEvent::Regenerated(e) => {
            // A leaked secret never gets a grace period (as the aggregate
            // has it), even where an event stored before that rule says so.
            // The right-hand sides read the row as it was before this update.
            let sql = update(
                "previous_key_hash = case when $3::timestamptz is null or leaked_at is not null then null
                                          else key_hash end,
                 previous_valid_until = case when leaked_at is not null then null else $3 end,
                 key_hash = $4, last_four = $5, rotation_due_at = $6, leaked_at = null",
            );
            sqlx::query(&sql)
                .bind(id)
                .bind(version)
                .bind(e.previous_valid_until)
                .bind(&e.key_hash.0[..])
                .bind(&e.last_four)
                .bind(e.rotation_due_at)
                .execute(&mut *db)
                .await?
        }
        KeyEvent::Deactivated(_) | KeyEvent::Activated(_) | KeyEvent::Expired(_) => {
            let status = match event {
                KeyEvent::Deactivated(_) => KeyStatus::Inactive,
                KeyEvent::Activated(_) => KeyStatus::Active,
                _ => KeyStatus::Expired,
            };
            sqlx::query(&update("status = $3"))
                .bind(id)
                .bind(version)
                .bind(status.as_str())
                .execute(&mut *db)
                .await?
        }
        KeyEvent::Used(e) => {
            // The keys row's version guard decides whether this event is new;
            // only then are its counts added.
            sqlx::query(
                "with claimed as (
                     update keys set last_used_at = greatest(last_used_at, $3), version = $2
                     where id = $1 and version < $2 returning id, org_id)
                 insert into usage_rollups (key_id, org_id, granularity, bucket, requests, successful, failed, rate_limited)
                 select claimed.id, claimed.org_id, g.name, date_trunc(g.name, $4::timestamptz, 'UTC'), $5, $6, $7, $8
                 from claimed, (values ('minute'), ('hour'), ('day')) as g(name)
                 on conflict (key_id, granularity, bucket) do update set
                     requests = usage_rollups.requests + excluded.requests,
                     successful = usage_rollups.successful + excluded.successful,
                     failed = usage_rollups.failed + excluded.failed,
                     rate_limited = usage_rollups.rate_limited + excluded.rate_limited",
            )
            .bind(id)
            .bind(version)
            .bind(e.last_used_at)
            .bind(e.minute)
            .bind(e.requests as i64)
            .bind(e.successful as i64)
            .bind(e.failed as i64)
            .bind(e.rate_limited as i64)
            .execute(&mut *db)
            .await?
        }
        KeyEvent::Leaked(e) => match e.secret {
            LeakedSecret::Current => {
                sqlx::query(&update("leaked_at = $3"))
                    .bind(id)
                    .bind(version)
                    .bind(e.reported_at)
                    .execute(&mut *db)
                    .await?
            }
            // A leaked regenerated-away secret stops working at once.
            LeakedSecret::Previous => {
                sqlx::query(&update("previous_key_hash = null, previous_valid_until = null"))
                    .bind(id)
                    .bind(version)
                    .execute(&mut *db)
                    .await?
            }
        },
        // A reminder changes no column of the key; only its version moves.
        KeyEvent::RotationDue(_) => {
            sqlx::query("update keys set version = $2 where id = $1 and version < $2")
                .bind(id)
                .bind(version)
                .execute(&mut *db)
                .await?
        }
        KeyEvent::Deleted(_) => {
            let sql = update("deleted_at = $3, key_hash = null, previous_key_hash = null, previous_valid_until = null");
            sqlx::query(&sql)
                .bind(id)
                .bind(version)
                .bind(stored.occurred_at)
                .execute(&mut *db)
                .await?
        }
    };
    Ok(())
}

async fn apply_org(
    db: &mut PgConnection,
    id: &str,
    stored: &StoredEvent,
    event: OrgEvent,
) -> Result<(), ProjectionError> {
    let version = stored.version;
    if let OrgEvent::Created(e) = &event {
        let inserted = sqlx::query(
            "insert into orgs (id, name, plan, rate_limit_per_minute, alert_emails, rotation_days,
                               alert_settings, created_at, version)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9) on conflict (id) do nothing",
        )
        .bind(id)
        .bind(e.name.as_str())
        .bind(e.plan.as_str())
        .bind(e.rate_limit_per_minute as i32)
        .bind(e.alert_emails.iter().map(|a| a.as_str()).collect::<Vec<_>>())
        .bind(e.rotation_days as i32)
        .bind(serde_json::to_value(e.alert_settings).expect("settings serialize"))
        .bind(e.created_at)
        .bind(version)
        .execute(&mut *db)
        .await?;
        if inserted.rows_affected() == 1 {
            // The operator's addresses count as confirmed (but one an older
            // version took that is not an address any more, never).
            sqlx::query(
                "insert into alert_recipients (org_id, email, position, confirmed_at)
                 select $1, e.email, e.position, case when e.usable then $4 end
                 from unnest($2::text[], $3::bool[]) with ordinality as e(email, usable, position)",
            )
            .bind(id)
            .bind(e.alert_emails.iter().map(|a| a.as_str()).collect::<Vec<_>>())
            .bind(e.alert_emails.iter().map(|a| a.valid().is_some()).collect::<Vec<_>>())
            .bind(e.created_at)
            .execute(&mut *db)
            .await?;
        }
        return Ok(());
    }
    // Every later event is applied once: the orgs row's version guard
    // decides, and the recipients follow only when it let the event in.
    let (plan, limit) = match &event {
        OrgEvent::PlanChanged(e) => (Some(e.plan.as_str()), Some(e.rate_limit_per_minute as i32)),
        _ => (None, None),
    };
    let settings = match &event {
        OrgEvent::SettingsChanged(e) => e.clone(),
        _ => Default::default(),
    };
    let emails = settings
        .alert_emails
        .as_ref()
        .map(|v| v.iter().map(|a| a.as_str().to_owned()).collect::<Vec<_>>());
    let applied = sqlx::query(
        "update orgs set plan = coalesce($3, plan), rate_limit_per_minute = coalesce($4, rate_limit_per_minute),
                alert_emails = coalesce($5, alert_emails), rotation_days = coalesce($6, rotation_days),
                alert_settings = coalesce($7, alert_settings), leak_action = coalesce($8, leak_action), version = $2
         where id = $1 and version < $2",
    )
    .bind(id)
    .bind(version)
    .bind(plan)
    .bind(limit)
    .bind(&emails)
    .bind(settings.rotation_days.map(|d| d as i32))
    .bind(
        settings
            .alert_settings
            .map(|s| serde_json::to_value(s).expect("settings serialize")),
    )
    .bind(settings.leak_action.map(|a| a.as_str()))
    .execute(&mut *db)
    .await?;
    if applied.rows_affected() == 0 {
        return Ok(());
    }
    match event {
        OrgEvent::SettingsChanged(_) => {
            if let Some(emails) = emails {
                // Removed addresses go (with their confirmation); new ones
                // arrive unconfirmed; every one takes its place in the list.
                sqlx::query("delete from alert_recipients where org_id = $1 and email <> all($2)")
                    .bind(id)
                    .bind(&emails)
                    .execute(&mut *db)
                    .await?;
                sqlx::query(
                    "insert into alert_recipients (org_id, email, position, confirmed_at)
                     select $1, e.email, e.position, null
                     from unnest($2::text[]) with ordinality as e(email, position)
                     on conflict (org_id, email) do update set position = excluded.position",
                )
                .bind(id)
                .bind(&emails)
                .execute(&mut *db)
                .await?;
            }
        }
        OrgEvent::AlertRecipientConfirmed(e) => {
            sqlx::query("update alert_recipients set confirmed_at = $3 where org_id = $1 and email = $2")
                .bind(id)
                .bind(e.email.as_str())
                .bind(e.confirmed_at)
                .execute(&mut *db)
                .await?;
        }
        // The request is the mailer's business (the alerts outbox).
        OrgEvent::AlertRecipientConfirmationRequested(_) | OrgEvent::PlanChanged(_) | OrgEvent::Created(_) => {}
    }
    Ok(())
}

const KEY_COLUMNS: &str = "id, org_id, name, key_type, environment, scopes, status, prefix, last_four,
     created_at, last_used_at, expires_at, rotation_due_at, version, allowed_ips, leaked_at";

/// A key as the API shows it (never its hash or secret).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyRow {
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub key_type: String,
    pub environment: String,
    pub scopes: Vec<String>,
    pub status: String,
    pub prefix: String,
    pub last_four: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub rotation_due_at: Option<DateTime<Utc>>,
    pub version: i64,
    /// Where requests made with the key may come from (empty: anywhere).
    #[sqlx(try_from = "Vec<String>")]
    pub allowed_ips: AllowedIps,
    /// When the current secret was reported leaked (until it is regenerated).
    pub leaked_at: Option<DateTime<Utc>>,
}

impl KeyRow {
    /// The row the projection would hold for this aggregate state (without
    /// usage): how `audit` shows a key as of a past moment, from events alone.
    pub fn from_aggregate(key: &crate::domain::ApiKey, version: i64) -> KeyRow {
        KeyRow {
            id: key.id.to_string(),
            org_id: key.org_id.to_string(),
            name: key.name.as_str().to_owned(),
            key_type: key.key_type.as_str().to_owned(),
            environment: key.key_type.environment().as_str().to_owned(),
            scopes: key.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
            status: key.status.as_str().to_owned(),
            prefix: key.key_type.prefix().to_owned(),
            last_four: key.last_four.clone(),
            created_at: key.created_at,
            last_used_at: None,
            expires_at: key.expires_at,
            rotation_due_at: key.rotation_due_at,
            version,
            allowed_ips: key.allowed_ips.clone(),
            leaked_at: key.leaked_at,
        }
    }

    /// The status at `now`: past its expiry a key is expired at once, even
    /// before the expiry job records it.
    pub fn status_at(&self, now: DateTime<Utc>) -> &str {
        match self.expires_at {
            Some(at) if at <= now && self.status != "expired" => "expired",
            _ => &self.status,
        }
    }

    /// The key object (docs/api.md, "The key object").
    pub fn to_json(&self, now: DateTime<Utc>) -> Value {
        json!({
            "id": self.id,
            "object": "api_key",
            "name": self.name,
            "type": self.key_type,
            "environment": self.environment,
            "scopes": self.scopes,
            "status": self.status_at(now),
            "prefix": self.prefix,
            "last_four": self.last_four,
            "created_at": rfc3339(self.created_at),
            "last_used_at": self.last_used_at.map(rfc3339),
            "expires_at": self.expires_at.map(rfc3339),
            "rotation_due_at": self.rotation_due_at.map(rfc3339),
            "org_id": self.org_id,
            // null: no allowlist, any address may use the key.
            "allowed_ips": (!self.allowed_ips.is_empty()).then(|| self.allowed_ips.to_strings()),
        })
    }
}

/// RFC 3339 in UTC with a `Z`, to the second (or finer when there is more).
pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// When the key was last used, as its usage records say (only the read
/// model has it: commands do not read usage).
pub async fn last_used_at<'c>(db: impl PgExecutor<'c>, key_id: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let found: Option<Option<DateTime<Utc>>> = sqlx::query_scalar("select last_used_at from keys where id = $1")
        .bind(key_id)
        .fetch_optional(db)
        .await?;
    Ok(found.flatten())
}

pub async fn key_by_id<'c>(db: impl PgExecutor<'c>, org_id: &str, key_id: &str) -> Result<Option<KeyRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {KEY_COLUMNS} from keys where id = $1 and org_id = $2 and deleted_at is null"
    ))
    .bind(key_id)
    .bind(org_id)
    .fetch_optional(db)
    .await
}

/// The live key whose current secret — or regenerated-away secret still in
/// its grace period — hashes to `hash`.
pub async fn key_by_hash<'c>(
    db: impl PgExecutor<'c>,
    hash: &KeyHash,
    now: DateTime<Utc>,
) -> Result<Option<KeyRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {KEY_COLUMNS} from keys
         where deleted_at is null
           and (key_hash = $1 or (previous_key_hash = $1 and previous_valid_until > $2))"
    ))
    .bind(&hash.0[..])
    .bind(now)
    .fetch_optional(db)
    .await
}

#[derive(sqlx::FromRow)]
struct VerificationRow {
    #[sqlx(flatten)]
    row: KeyRow,
    rate_limit_per_minute: i32,
    grace_until: Option<DateTime<Utc>>,
}

/// What verification needs about the key whose secret hashes to `hash`: the
/// key, its organization's per-minute limit, and — when `hash` is a
/// regenerated-away secret — until when it still works.
pub async fn key_for_verification<'c>(
    db: impl PgExecutor<'c>,
    hash: &KeyHash,
    now: DateTime<Utc>,
) -> Result<Option<(KeyRow, i32, Option<DateTime<Utc>>)>, sqlx::Error> {
    let columns: Vec<String> = KEY_COLUMNS.split(',').map(|c| format!("k.{}", c.trim())).collect();
    let found: Option<VerificationRow> = sqlx::query_as(&format!(
        "select {}, o.rate_limit_per_minute,
                case when k.key_hash = $1 then null else k.previous_valid_until end as grace_until
         from keys k join orgs o on o.id = k.org_id
         where k.deleted_at is null
           and (k.key_hash = $1 or (k.previous_key_hash = $1 and k.previous_valid_until > $2))",
        columns.join(", ")
    ))
    .bind(&hash.0[..])
    .bind(now)
    .fetch_optional(db)
    .await?;
    Ok(found.map(|v| (v.row, v.rate_limit_per_minute, v.grace_until)))
}

/// Filters of the key list.
#[derive(Debug, Clone, Default)]
pub struct KeyFilter {
    pub status: Option<KeyStatus>,
    pub key_type: Option<String>,
    /// Only keys older than this id (the cursor: ids sort by creation).
    pub before_id: Option<String>,
    pub limit: i64,
}

/// One organization's keys, newest first; deleted keys never appear.
pub async fn list_keys<'c>(
    db: impl PgExecutor<'c>,
    org_id: &str,
    filter: &KeyFilter,
    now: DateTime<Utc>,
) -> Result<Vec<KeyRow>, sqlx::Error> {
    // The status filter follows the clock, like the status shown.
    let status_clause = match filter.status {
        None => "true",
        Some(KeyStatus::Expired) => "(status = 'expired' or expires_at <= $5)",
        Some(_) => "(status = $2 and (expires_at is null or expires_at > $5))",
    };
    sqlx::query_as(&format!(
        "select {KEY_COLUMNS} from keys
         where org_id = $1 and deleted_at is null and {status_clause}
           and ($3::text is null or key_type = $3) and ($4::text is null or id < $4)
         order by id desc limit $6"
    ))
    .bind(org_id)
    .bind(filter.status.map(|s| s.as_str()))
    .bind(&filter.key_type)
    .bind(&filter.before_id)
    .bind(now)
    .bind(filter.limit)
    .fetch_all(db)
    .await
}

/// An alert address of an organization and when it confirmed (if it did).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct RecipientRow {
    pub email: ListedAddress,
    pub confirmed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrgRow {
    pub id: String,
    pub name: String,
    pub plan: String,
    pub rate_limit_per_minute: i32,
    /// Every alert address, confirmed or not.
    pub alert_emails: Vec<String>,
    /// The same addresses with their confirmation, in list order.
    #[sqlx(json)]
    pub alert_recipients: Vec<RecipientRow>,
    pub rotation_days: i32,
    pub alert_settings: Value,
    /// `deactivate` or `notify`: what a reported leak of a key does.
    pub leak_action: String,
    pub created_at: DateTime<Utc>,
    pub version: i64,
}

impl OrgRow {
    /// The row the projection holds for this aggregate state at `version`.
    pub fn from_aggregate(org: &crate::domain::Org, version: i64) -> OrgRow {
        OrgRow {
            id: org.id.to_string(),
            name: org.name.as_str().to_owned(),
            plan: org.plan.as_str().to_owned(),
            rate_limit_per_minute: org.rate_limit_per_minute as i32,
            alert_emails: org.alert_emails.iter().map(|a| a.as_str().to_owned()).collect(),
            alert_recipients: org
                .alert_emails
                .iter()
                .map(|listed| RecipientRow {
                    confirmed_at: listed.valid().and_then(|e| org.confirmed.get(e).copied()),
                    email: listed.clone(),
                })
                .collect(),
            rotation_days: org.rotation_days as i32,
            alert_settings: serde_json::to_value(org.alert_settings).expect("settings serialize"),
            leak_action: org.leak_action.as_str().to_owned(),
            created_at: org.created_at,
            version,
        }
    }

    /// The organization object (docs/api.md, "Organization").
    pub fn to_json(&self) -> Value {
        let recipients: Vec<Value> = self
            .alert_recipients
            .iter()
            .map(|r| json!({"email": r.email, "confirmed_at": r.confirmed_at.map(rfc3339)}))
            .collect();
        json!({
            "id": self.id,
            "object": "organization",
            "name": self.name,
            "plan": self.plan,
            "rate_limit_per_minute": self.rate_limit_per_minute,
            "alert_emails": self.alert_emails,
            "alert_recipients": recipients,
            "rotation_days": self.rotation_days,
            "alert_settings": self.alert_settings,
            "leak_action": self.leak_action,
            "created_at": rfc3339(self.created_at),
        })
    }

    /// The addresses alerts go to: the confirmed ones.
    pub fn confirmed_alert_emails(&self) -> Vec<EmailAddress> {
        self.alert_recipients
            .iter()
            .filter(|r| r.confirmed_at.is_some())
            .filter_map(|r| r.email.valid().cloned())
            .collect()
    }

    pub fn alert_settings(&self) -> AlertSettings {
        serde_json::from_value(self.alert_settings.clone()).unwrap_or_default()
    }
}

pub async fn org_by_id<'c>(db: impl PgExecutor<'c>, org_id: &str) -> Result<Option<OrgRow>, sqlx::Error> {
    sqlx::query_as(
        "select id, name, plan, rate_limit_per_minute, alert_emails, rotation_days, alert_settings, leak_action,
                created_at, version,
                coalesce((select jsonb_agg(jsonb_build_object('email', r.email, 'confirmed_at', r.confirmed_at)
                                           order by r.position)
                          from alert_recipients r where r.org_id = o.id), '[]') as alert_recipients
         from orgs o where id = $1",
    )
    .bind(org_id)
    .fetch_optional(db)
    .await
}

/// The names of those of `key_ids` that are keys of `org_id` (deleted keys
/// included: an audit trail still names who acted), by id.
pub async fn key_names<'c>(
    db: impl PgExecutor<'c>,
    org_id: &str,
    key_ids: &[String],
) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as("select id, name from keys where org_id = $1 and id = any($2)")
        .bind(org_id)
        .bind(key_ids)
        .fetch_all(db)
        .await
}

/// An alert raised for an organization, as its alerts page lists it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AlertRow {
    pub id: uuid::Uuid,
    pub kind: String,
    pub key_id: Option<String>,
    /// The key's name (`None` for an organization-wide alert or a key gone
    /// from the read model).
    pub key_name: Option<String>,
    pub subject: String,
    /// `pending`, `sent`, `failed` or `unaddressed`.
    pub status: String,
    pub delivered_to: Vec<String>,
    pub created_at: DateTime<Utc>,
}

/// The organization's alerts, newest first: at most `limit`, older than the
/// alert `before` when given (ids are UUIDv7, so they sort by time).
pub async fn alerts_of_org<'c>(
    db: impl PgExecutor<'c>,
    org_id: &str,
    before: Option<uuid::Uuid>,
    limit: i64,
) -> Result<Vec<AlertRow>, sqlx::Error> {
    sqlx::query_as(
        "select a.id, a.kind, a.key_id, k.name as key_name, a.subject, a.status, a.delivered_to, a.created_at
         from alerts a left join keys k on k.id = a.key_id
         where a.org_id = $1 and ($2::uuid is null or a.id < $2)
         order by a.id desc limit $3",
    )
    .bind(org_id)
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// One bucket of a usage series.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UsagePoint {
    pub start: DateTime<Utc>,
    pub requests: i64,
    pub successful: i64,
    pub failed: i64,
    pub rate_limited: i64,
}

/// Every bucket (`minute`, `hour` or `day`, aligned to UTC) from the one
/// holding `from` to the last starting before `to`, zeros included.
pub async fn usage_series<'c>(
    db: impl PgExecutor<'c>,
    key_id: &str,
    granularity: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<UsagePoint>, sqlx::Error> {
    sqlx::query_as(
        "select b.start, coalesce(u.requests, 0)::bigint as requests, coalesce(u.successful, 0)::bigint as successful,
                coalesce(u.failed, 0)::bigint as failed, coalesce(u.rate_limited, 0)::bigint as rate_limited
         from generate_series(date_trunc($2, $3::timestamptz, 'UTC'), $4::timestamptz - interval '1 microsecond',
                              ('1 ' || $2)::interval) as b(start)
         left join usage_rollups u on u.key_id = $1 and u.granularity = $2 and u.bucket = b.start
         order by b.start",
    )
    .bind(key_id)
    .bind(granularity)
    .bind(from)
    .bind(to)
    .fetch_all(db)
    .await
}
