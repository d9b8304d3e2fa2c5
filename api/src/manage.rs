//! The management operations on one organization's keys and settings, shared
//! by the JSON API (`keys.rs`, `org.rs`) and the customer portal. Each is the
//! same command (load → decide → append → project) or the same query
//! whichever surface a customer uses, so every rule is written once; the
//! surfaces only parse their input and render the answer.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use keyledger_events::alert_outbox;
use keyledger_events::domain::{
    key::{self, CreateKeyRequest, RegenerateKey, SecretSource, UpdateKeyRequest},
    org::{self, ChangeSettingsRequest},
    ApiKey, DomainError, KeyCommand, KeyId, Org, OrgCommand, OrgEvent, OrgId, PlainKey,
};
use keyledger_events::handler::{self, HandlerError};
use keyledger_events::log::{EventMeta, StoredEvent};
use keyledger_events::read_model::{self, KeyFilter, KeyRow, OrgRow, UsagePoint};
use keyledger_events::representation;

use crate::idempotency::{self, Claim, Idempotent};
use crate::{clock, error::ApiError, request_id, AppState};

/// Who runs an operation: an organization, and the actor its events record
/// (an admin key's id, or `portal:<user>`).
#[derive(Debug, Clone)]
pub struct Caller {
    org_id: OrgId,
    actor: String,
}

impl Caller {
    pub fn new(org_id: OrgId, actor: String) -> Caller {
        Caller { org_id, actor }
    }

    pub fn org_id(&self) -> OrgId {
        self.org_id
    }

    pub fn actor(&self) -> &str {
        &self.actor
    }

    pub(crate) fn meta(&self) -> EventMeta {
        EventMeta {
            actor: self.actor.clone(),
            request_id: Some(request_id::current()),
            occurred_at: clock::now(),
        }
    }
}

/// A key id from a path; a malformed one is simply not found.
pub fn key_id(text: &str) -> Result<KeyId, ApiError> {
    text.parse().map_err(|_| ApiError::NotFound)
}

/// 256 bits from the operating system's CSPRNG.
fn random_secret(state: &AppState) -> Result<SecretSource, ApiError> {
    let mut random = [0u8; 32];
    getrandom::getrandom(&mut random).map_err(|e| ApiError::internal(std::io::Error::other(e.to_string())))?;
    Ok(SecretSource {
        random,
        hash_key: state.hash_key.clone(),
    })
}

/// The organization's rotation policy in days, read in the command's own
/// transaction (a creation or a regeneration sets the new due date by it).
async fn rotation_days(tx: &mut sqlx::PgConnection, org_id: OrgId) -> Result<u32, ApiError> {
    let days: Option<i32> = sqlx::query_scalar("select rotation_days from orgs where id = $1")
        .bind(org_id)
        .fetch_optional(&mut *tx)
        .await?;
    Ok(days.ok_or(ApiError::NotFound)?.max(0) as u32)
}

/// The guard every key command runs behind: another organization's key is
/// not found, exactly like an unknown id.
fn own_key(caller: &Caller) -> impl Fn(Option<&ApiKey>) -> Result<(), DomainError> {
    let own = caller.org_id;
    move |current| match current {
        Some(k) if k.org_id != own => Err(DomainError::NotFound),
        _ => Ok(()),
    }
}

/// Runs a command on one of the caller's keys in a transaction of its own
/// (usage records appended meanwhile make it decide again, see
/// [`handler::decide_and_append_on`]). This process's cache forgets the key
/// before the answer (other processes, on the change notification), so a
/// verification sent here after the answer sees the change.
async fn execute(
    state: &AppState,
    caller: &Caller,
    id: KeyId,
    command: KeyCommand,
) -> Result<Vec<StoredEvent>, ApiError> {
    let stream = key::stream_id(id);
    let mut tx = state.database.read(state.pool.begin()).await?;
    let outcome =
        handler::decide_and_append_on::<ApiKey>(&mut tx, &stream, command, &caller.meta(), own_key(caller)).await?;
    tx.commit().await?;
    state.cache.evict_stream(&stream);
    Ok(outcome.events)
}

/// How a command ended for its caller.
pub enum Done<T> {
    /// The command ran: what its transaction decided.
    Ran(T),
    /// A retry with the same `Idempotency-Key` and body: the first answer.
    Replayed(idempotency::Recorded),
}

/// A command's result: the key as its transaction left it, and the events
/// it appended.
pub(crate) struct Ran {
    pub(crate) row: KeyRow,
    pub(crate) events: Vec<StoredEvent>,
}

/// Runs a command on one of the caller's keys in one transaction — claim of
/// the `Idempotency-Key` (if any), decide, append, project, record — and
/// answers with the key built from what that transaction decided. Once the
/// commit succeeds nothing is read again, so nothing can turn a committed
/// command (and a secret shown once) into an error. `status` is what a
/// success answers (recorded for replays). A creation that finds itself
/// near the quota in a shared count stores nothing and runs again, in a
/// second transaction, counting alone.
pub(crate) async fn run(
    state: &AppState,
    caller: &Caller,
    id: KeyId,
    command: KeyCommand,
    status: u16,
    idempotent: Option<&Idempotent>,
) -> Result<Done<Ran>, ApiError> {
    // Known to be near the quota (by this process's last count): alone at once.
    let near = matches!(command, KeyCommand::Create(_))
        && state.key_counts.near(caller.org_id(), state.settings.max_keys_per_org);
    let first = if near { QuotaLock::Exclusive } else { QuotaLock::Shared };
    // Only a creation can find itself crowded and run again, counted alone.
    let again = matches!(command, KeyCommand::Create(_)).then(|| command.clone());
    if let Some(done) = attempt(state, caller, id, command, status, idempotent, first).await? {
        return Ok(done);
    }
    let crowded = || ApiError::internal(std::io::Error::other("only a shared quota count is crowded"));
    attempt(
        state,
        caller,
        id,
        again.ok_or_else(crowded)?,
        status,
        idempotent,
        QuotaLock::Exclusive,
    )
    .await?
    .ok_or_else(crowded)
}

/// One transaction of [`run`]; `None` when a creation found itself too near
/// the quota to count alongside others (nothing was stored).
async fn attempt(
    state: &AppState,
    caller: &Caller,
    id: KeyId,
    command: KeyCommand,
    status: u16,
    idempotent: Option<&Idempotent>,
    quota: QuotaLock,
) -> Result<Option<Done<Ran>>, ApiError> {
    let meta = caller.meta();
    // Waiting for a connection ends at once when the database is found down;
    // once the transaction has begun, the command runs to its end.
    let mut tx = state.database.read(state.pool.begin()).await?;
    if let Some(request) = idempotent {
        match idempotency::claim(&mut tx, request, meta.occurred_at).await? {
            Claim::Fresh => {}
            Claim::Replay(recorded) => return Ok(Some(Done::Replayed(recorded))),
            Claim::Mismatch => return Err(idempotency::mismatch()),
        }
    }
    let mut command = command;
    // A creation holds the organization's quota lock from the start, and
    // reads the rotation policy with it: one statement.
    let held = match &mut command {
        KeyCommand::Create(c) => {
            let held = take_key_quota_lock(&mut tx, caller.org_id(), quota).await?;
            c.rotation_days = held.rotation_days;
            state.key_counts.note_rotation_days(caller.org_id(), held.rotation_days);
            Some(held)
        }
        KeyCommand::Regenerate(r) => {
            r.rotation_days = rotation_days(&mut tx, caller.org_id()).await?;
            None
        }
        _ => None,
    };
    let created = held.is_some();
    let stream = key::stream_id(id);
    let (outcome, notice) = match held {
        // A new key's id was just generated: its stream has nothing to read,
        // and no cache can hold the key yet, so the workers are told after
        // the commit (creations then commit alongside each other).
        Some(held) => {
            let decided = handler::decide_new::<ApiKey>(&stream, command, &meta)?;
            let (outcome, notice) = decided.append_unannounced(&mut tx).await?;
            let position = outcome.events.last().map_or(0, |e| e.position);
            if !within_key_quota(
                &mut tx,
                &state.key_counts,
                caller.org_id(),
                state.settings.max_keys_per_org,
                held,
                position,
            )
            .await?
            {
                return Ok(None);
            }
            (outcome, notice)
        }
        // Usage records appended meanwhile make it decide again; another
        // command's change is a conflict.
        None => (
            handler::decide_and_append_on::<ApiKey>(&mut tx, &stream, command, &meta, own_key(caller)).await?,
            None,
        ),
    };
    let key = outcome.state.filter(|k| !k.deleted).ok_or(ApiError::NotFound)?;
    let mut row = KeyRow::from_aggregate(&key, outcome.version);
    // Usage is the read model's alone; a new key has none.
    if !created {
        row.last_used_at = read_model::last_used_at(&mut *tx, row.id).await?;
    }
    if let Some(request) = idempotent {
        idempotency::record(
            &mut tx,
            request,
            status,
            &representation::key_object(&row, meta.occurred_at),
        )
        .await?;
    }
    tx.commit().await?;
    if created {
        state.creations.single.fetch_add(1, Ordering::Relaxed);
    }
    state.cache.evict_stream(&stream);
    if let Some(notice) = notice {
        state.announcer.announce(notice);
    }
    Ok(Some(Done::Ran(Ran {
        row,
        events: outcome.events,
    })))
}

/// Advisory-lock namespace of the per-organization key quota (the two-key
/// form: apart from every single-key lock): `(KEY_QUOTA_LOCK,
/// hashtext(org_id))`.
pub const KEY_QUOTA_LOCK: i32 = 0x6b6c_7100;

/// How a creation holds its organization's quota lock while it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QuotaLock {
    /// Far below the quota: alongside other creations, which then commit
    /// together instead of one after the other.
    Shared,
    /// Near the quota: alone, so the count is exact.
    Exclusive,
}

/// What this process last counted of each organization's keys, and the
/// log position the count was taken at: a creation far below the quota
/// bounds the count from these instead of counting again (see
/// [`within_key_quota`]).
#[derive(Debug, Default)]
pub struct KeyCounts(Mutex<HashMap<OrgId, KeyCount>>);

#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyCount {
    pub(crate) keys: u64,
    /// The log's newest position when they were counted.
    pub(crate) position: i64,
    /// PostgreSQL's `max_connections` then.
    pub(crate) connections: u64,
    /// The organization's rotation policy in days, as a creation last read it.
    pub(crate) rotation_days: u32,
}

impl KeyCounts {
    pub(crate) fn get(&self, org_id: OrgId) -> Option<KeyCount> {
        self.0.lock().expect("key counts lock").get(&org_id).copied()
    }

    fn set(&self, org_id: OrgId, count: KeyCount) {
        self.0.lock().expect("key counts lock").insert(org_id, count);
    }

    /// Notes the rotation policy a creation just read with the quota lock.
    fn note_rotation_days(&self, org_id: OrgId, days: u32) {
        if let Some(count) = self.0.lock().expect("key counts lock").get_mut(&org_id) {
            count.rotation_days = days;
        }
    }

    /// Whether the last count found the organization too near its quota for
    /// a shared check (a creation then counts alone from the start).
    fn near(&self, org_id: OrgId, max: u64) -> bool {
        self.get(org_id).is_some_and(|c| c.keys + c.connections > max)
    }
}

/// The quota lock a creation holds (to the end of its transaction), and
/// what was read with it.
#[derive(Debug, Clone, Copy)]
struct HeldQuotaLock {
    lock: QuotaLock,
    /// The organization's rotation policy in days.
    rotation_days: u32,
    /// PostgreSQL's `max_connections`.
    connections: u64,
}

/// Takes the organization's quota lock, first thing in a creation's
/// transaction, and reads its rotation policy and PostgreSQL's
/// `max_connections` with it.
async fn take_key_quota_lock(
    tx: &mut sqlx::PgConnection,
    org_id: OrgId,
    lock: QuotaLock,
) -> Result<HeldQuotaLock, ApiError> {
    let take = match lock {
        QuotaLock::Shared => "pg_advisory_xact_lock_shared",
        QuotaLock::Exclusive => "pg_advisory_xact_lock",
    };
    let held: Option<(i32, i64)> = sqlx::query_as(&format!(
        "select rotation_days, current_setting('max_connections')::bigint
         from orgs, {take}($1, hashtext($2))
         where id = $2"
    ))
    .bind(KEY_QUOTA_LOCK)
    .bind(org_id)
    .fetch_optional(&mut *tx)
    .await?;
    let (days, connections) = held.ok_or(ApiError::NotFound)?;
    Ok(HeldQuotaLock {
        lock,
        rotation_days: days.max(0) as u32,
        connections: connections.max(0) as u64,
    })
}

/// Refuses a new key — already in this transaction's read model, its event
/// at log position `position` — when that makes more than `max` keys of the
/// organization that are not deleted; the quota is never passed, across
/// any number of API processes.
///
/// Every creation takes the organization's quota lock before it appends
/// and holds it to the end of its transaction ([`take_key_quota_lock`]), so
/// no key is committed without it. Several creations committed together
/// (`group_commit`) hold it alone, so a transaction that holds it alongside
/// others creates one key. Alone ([`QuotaLock::Exclusive`]) a
/// creation counts the keys: no other can commit meanwhile, and the count's
/// snapshot, taken after the lock was granted, holds every key committed
/// before — exact. Shared, fewer than PostgreSQL's `max_connections` (`m`;
/// each holds a connection) creations hold the lock together; if every
/// shared creation knows that, when its lock was granted, fewer than
/// `max - m` keys were committed, then whichever was granted last saw all
/// but the at most `m` holding the lock with it: the quota is not passed,
/// whatever order they commit in. A shared creation that cannot tell
/// answers `false`: it stored nothing and runs again exclusively.
///
/// Counting an organization's keys costs a look at each of them, so a
/// shared creation bounds what was committed when its lock was granted from
/// this process's last count instead: `n` keys at log position `p` (one
/// statement, one snapshot). Every key committed since was then either in a
/// transaction still running (at most `m`) or appended an event after `p`
/// and before this creation's own (its position was taken after the grant,
/// and positions only grow): at most `position - p - 1`. While that bound
/// plus `m`, this creation and `m` more stays within the quota, nothing is
/// counted; deleted keys only make it more careful.
///
/// What this rests on: transactions run at PostgreSQL's default `read
/// committed` (each statement's snapshot is taken when it starts), and
/// `events.position` comes from an identity sequence that hands out
/// increasing values (nothing inserts events with positions of its own).
async fn within_key_quota(
    tx: &mut sqlx::PgConnection,
    counts: &KeyCounts,
    org_id: OrgId,
    max: u64,
    held: HeldQuotaLock,
    position: i64,
) -> Result<bool, ApiError> {
    let connections = held.connections;
    if let (QuotaLock::Shared, Some(last)) = (held.lock, counts.get(org_id)) {
        let since = position.saturating_sub(last.position).max(0) as u64;
        // What the bound says, plus this creation and the others holding the lock.
        if last.keys + since + 2 * connections < max {
            return Ok(true);
        }
    }
    let keys = count_keys(tx, counts, org_id, held).await?;
    if held.lock == QuotaLock::Shared && keys + connections > max {
        return Ok(false);
    }
    if keys > max {
        return Err(ApiError::QuotaExceeded(format!(
            "This organization is at its quota of {max} keys (quota: keys per organization, \
             KEYLEDGER_MAX_KEYS_PER_ORG). Delete keys it no longer uses, or ask the operator to raise the quota."
        )));
    }
    Ok(true)
}

/// Counts the organization's keys and notes the count, with the log's newest
/// position, in `counts` (one statement, one snapshot: taken after `held`
/// was granted).
async fn count_keys(
    tx: &mut sqlx::PgConnection,
    counts: &KeyCounts,
    org_id: OrgId,
    held: HeldQuotaLock,
) -> Result<u64, ApiError> {
    let (keys, position): (i64, i64) = sqlx::query_as(
        "select (select count(*) from keys where org_id = $1 and deleted_at is null),
                (select coalesce(max(position), 0) from events)",
    )
    .bind(org_id)
    .fetch_one(&mut *tx)
    .await?;
    let keys = keys.max(0) as u64;
    counts.set(
        org_id,
        KeyCount {
            keys,
            position,
            connections: held.connections,
            rotation_days: held.rotation_days,
        },
    );
    Ok(keys)
}

/// Counts the organization's keys anew (holding its quota lock, shared), for
/// creations that bound the count from the last one (`group_commit`). It
/// runs holding the process's turn to commit creations, so it waits for the
/// lock [`RECOUNT_LOCK_TIMEOUT`] at most: a transaction elsewhere holding it
/// alone must not stop every other organization's creations (the count's
/// creations then run alone, each waiting in its own request).
pub(crate) async fn recount_keys(state: &AppState, org_id: OrgId) -> Result<(), ApiError> {
    let mut tx = state.database.read(state.pool.begin()).await?;
    sqlx::query(RECOUNT_LOCK_TIMEOUT).execute(&mut *tx).await?;
    let held = take_key_quota_lock(&mut tx, org_id, QuotaLock::Shared).await?;
    count_keys(&mut tx, &state.key_counts, org_id, held).await?;
    tx.commit().await?;
    Ok(())
}

/// How long [`recount_keys`] waits for the quota lock.
const RECOUNT_LOCK_TIMEOUT: &str = "set local lock_timeout = '100ms'";

/// [`run`] for a command without an `Idempotency-Key`: the key it left.
async fn run_once(state: &AppState, caller: &Caller, id: KeyId, command: KeyCommand) -> Result<KeyRow, ApiError> {
    Ok(run_alone(state, caller, id, command, 200).await?.row)
}

/// [`run`] for a command without an `Idempotency-Key`, answering `status`
/// on success.
pub(crate) async fn run_alone(
    state: &AppState,
    caller: &Caller,
    id: KeyId,
    command: KeyCommand,
    status: u16,
) -> Result<Ran, ApiError> {
    match run(state, caller, id, command, status, None).await? {
        Done::Ran(ran) => Ok(ran),
        // Only a request with an Idempotency-Key can be a replay.
        Done::Replayed(_) => Err(ApiError::internal(std::io::Error::other(
            "replay without an Idempotency-Key",
        ))),
    }
}

/// A key to create, as the user gave it (the command validates every field).
pub struct NewKey {
    pub name: String,
    pub key_type: String,
    pub scopes: Option<Vec<String>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Addresses and CIDR ranges the key may be used from (absent or empty: any).
    pub allowed_ips: Option<Vec<String>>,
}

/// Creates a key; answers it with its secret, which exists nowhere else (or,
/// for a retry with the same `Idempotency-Key`, the first answer without it).
pub async fn create_key(
    state: &AppState,
    caller: &Caller,
    new: NewKey,
    idempotent: Option<&Idempotent>,
) -> Result<Done<(KeyRow, PlainKey)>, ApiError> {
    let secret = random_secret(state)?;
    let id = KeyId::new();
    // Parsed here, at the edge every surface shares: every problem at once.
    let request = CreateKeyRequest {
        key_id: id,
        org_id: caller.org_id,
        name: new.name,
        key_type: new.key_type,
        scopes: new.scopes,
        expires_at: new.expires_at,
        // Read in the command's transaction.
        rotation_days: 0,
        allowed_ips: new.allowed_ips,
        secret: secret.clone(),
    };
    let command = KeyCommand::Create(Box::new(request.parse(clock::now())?));
    // Without an Idempotency-Key, and far enough from the quota for a whole
    // group: committed with the creations sent meanwhile.
    let max = state.settings.max_keys_per_org;
    let group_margin = crate::group_commit::MAX_GROUP as u64;
    if idempotent.is_none() && !state.key_counts.near(caller.org_id(), max.saturating_sub(group_margin)) {
        let ran = state.creations.create(state, caller, id, command).await?;
        let secret = issued(&ran.row, secret);
        return Ok(Done::Ran((ran.row, secret)));
    }
    Ok(match run(state, caller, id, command, 201, idempotent).await? {
        Done::Ran(ran) => {
            let secret = issued(&ran.row, secret);
            Done::Ran((ran.row, secret))
        }
        Done::Replayed(recorded) => Done::Replayed(recorded),
    })
}

/// The secret `source` makes for the key `row` (of the type it was created with).
fn issued(row: &KeyRow, source: SecretSource) -> PlainKey {
    source.issue(row.key_type).0
}

pub async fn update_key(
    state: &AppState,
    caller: &Caller,
    id: KeyId,
    update: UpdateKeyRequest,
) -> Result<KeyRow, ApiError> {
    // Parsed here; its problems are reported by the command, after the key's own refusals.
    run_once(state, caller, id, KeyCommand::Update(update.parse())).await
}

/// A regenerated key: its new secret (shown once) and until when the
/// previous one works (`None`: it stopped at once).
pub struct Regenerated {
    pub key: KeyRow,
    pub secret: PlainKey,
    pub previous_valid_until: Option<DateTime<Utc>>,
}

/// A new secret for the key; the old one stops at once, or after
/// `grace_seconds`.
pub async fn regenerate_key(
    state: &AppState,
    caller: &Caller,
    id: KeyId,
    grace_seconds: i64,
    idempotent: Option<&Idempotent>,
) -> Result<Done<Regenerated>, ApiError> {
    let secret = random_secret(state)?;
    let command = KeyCommand::Regenerate(Box::new(RegenerateKey {
        expire_old_in_seconds: grace_seconds,
        // Read in the command's transaction.
        rotation_days: 0,
        secret: secret.clone(),
    }));
    let ran = match run(state, caller, id, command, 200, idempotent).await? {
        Done::Ran(ran) => ran,
        Done::Replayed(recorded) => return Ok(Done::Replayed(recorded)),
    };
    let previous_valid_until = ran
        .events
        .iter()
        .find(|e| e.event_type == "key.regenerated")
        .and_then(|e| e.data.get("previous_valid_until"))
        .and_then(|at| serde_json::from_value(at.clone()).ok())
        .flatten();
    Ok(Done::Ran(Regenerated {
        secret: issued(&ran.row, secret),
        key: ran.row,
        previous_valid_until,
    }))
}

pub async fn deactivate_key(state: &AppState, caller: &Caller, id: KeyId) -> Result<KeyRow, ApiError> {
    run_once(state, caller, id, KeyCommand::Deactivate).await
}

pub async fn activate_key(state: &AppState, caller: &Caller, id: KeyId) -> Result<KeyRow, ApiError> {
    run_once(state, caller, id, KeyCommand::Activate).await
}

pub async fn delete_key(state: &AppState, caller: &Caller, id: KeyId) -> Result<(), ApiError> {
    execute(state, caller, id, KeyCommand::Delete).await?;
    Ok(())
}

pub async fn get_key(state: &AppState, caller: &Caller, id: KeyId) -> Result<KeyRow, ApiError> {
    state
        .database
        .read(read_model::key_by_id(&state.pool, caller.org_id(), id))
        .await?
        .ok_or(ApiError::NotFound)
}

/// One page of the caller's keys, newest first (`filter.limit` per page),
/// and the cursor of the next page.
pub async fn list_keys(
    state: &AppState,
    caller: &Caller,
    mut filter: KeyFilter,
    now: DateTime<Utc>,
) -> Result<(Vec<KeyRow>, Option<KeyId>), ApiError> {
    let page_size = filter.limit.max(1) as usize;
    filter.limit = page_size as i64 + 1;
    let mut rows = state
        .database
        .read(read_model::list_keys(&state.pool, caller.org_id(), &filter, now))
        .await?;
    let next_cursor = (rows.len() > page_size).then(|| rows[page_size - 1].id);
    rows.truncate(page_size);
    Ok((rows, next_cursor))
}

/// Bucket size of a usage series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    Minute,
    Hour,
    Day,
}

impl Granularity {
    pub fn parse(text: &str) -> Option<Granularity> {
        match text {
            "minute" => Some(Granularity::Minute),
            "hour" => Some(Granularity::Hour),
            "day" => Some(Granularity::Day),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }

    pub fn seconds(self) -> i64 {
        match self {
            Granularity::Minute => 60,
            Granularity::Hour => 3_600,
            Granularity::Day => 86_400,
        }
    }
}

/// A key's usage over a period: totals, rates (`None` without requests) and
/// the zero-filled series.
#[derive(Debug, Clone)]
pub struct Usage {
    pub key: KeyRow,
    pub total_requests: i64,
    pub successful: i64,
    pub failed: i64,
    pub rate_limited: i64,
    pub success_rate: Option<f64>,
    pub error_rate: Option<f64>,
    pub series: Vec<UsagePoint>,
}

pub async fn key_usage(
    state: &AppState,
    caller: &Caller,
    id: KeyId,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    granularity: Granularity,
) -> Result<Usage, ApiError> {
    let key = get_key(state, caller, id).await?;
    let series = state
        .database
        .read(read_model::usage_series(
            &state.pool,
            key.id,
            granularity.as_str(),
            from,
            to,
        ))
        .await?;
    let total = |pick: fn(&UsagePoint) -> i64| series.iter().map(pick).sum::<i64>();
    let (requests, successful, failed, rate_limited) = (
        total(|p| p.requests),
        total(|p| p.successful),
        total(|p| p.failed),
        total(|p| p.rate_limited),
    );
    let rate = |part: i64| (requests > 0).then(|| part as f64 / requests as f64);
    Ok(Usage {
        total_requests: requests,
        successful,
        failed,
        rate_limited,
        success_rate: rate(successful),
        error_rate: rate(failed),
        series,
        key,
    })
}

/// The key's audit trail, oldest first, after `after_version`: at most
/// `limit` events and the cursor of the next page. Deleted keys keep theirs.
pub async fn key_audit_trail(
    state: &AppState,
    caller: &Caller,
    id: KeyId,
    after_version: i64,
    limit: usize,
) -> Result<(Vec<StoredEvent>, Option<String>), ApiError> {
    ensure_own_key(state, caller, id).await?;
    // Usage records are statistics (see the usage query), not the audit trail.
    let events = state
        .database
        .read(keyledger_events::log::read_stream_without_usage(
            &state.pool,
            &key::stream_id(id),
            None,
        ))
        .await?;
    let mut page: Vec<StoredEvent> = events
        .into_iter()
        .filter(|e| e.version > after_version)
        .take(limit + 1)
        .collect();
    let next_cursor = (page.len() > limit).then(|| page[limit - 1].version.to_string());
    page.truncate(limit);
    Ok((page, next_cursor))
}

/// The newest `limit` events of the key's audit trail, newest first.
pub async fn recent_key_events(
    state: &AppState,
    caller: &Caller,
    id: KeyId,
    limit: i64,
) -> Result<Vec<StoredEvent>, ApiError> {
    ensure_own_key(state, caller, id).await?;
    Ok(keyledger_events::log::read_stream_newest_without_usage(&state.pool, &key::stream_id(id), limit).await?)
}

/// Not found unless the key (deleted or not) is the caller's.
async fn ensure_own_key(state: &AppState, caller: &Caller, id: KeyId) -> Result<(), ApiError> {
    let owned: Option<OrgId> = state
        .database
        .read(
            sqlx::query_scalar("select org_id from keys where id = $1")
                .bind(id)
                .fetch_optional(&state.pool),
        )
        .await?;
    if owned != Some(caller.org_id()) {
        return Err(ApiError::NotFound);
    }
    Ok(())
}

pub async fn org(state: &AppState, caller: &Caller) -> Result<OrgRow, ApiError> {
    state
        .database
        .read(read_model::org_by_id(&state.pool, caller.org_id()))
        .await?
        .ok_or(ApiError::NotFound)
}

/// Changes where alerts go, the rotation policy and the alert thresholds.
/// Setting `alert_emails` queues one confirmation email per address that
/// needs one (`keyledger_events::alert_outbox`), in the same transaction as
/// the events: both are stored, or neither.
pub async fn change_settings(
    state: &AppState,
    caller: &Caller,
    change: ChangeSettingsRequest,
) -> Result<OrgRow, ApiError> {
    let decided = handler::decide::<Org>(
        &state.pool,
        &org::stream_id(caller.org_id),
        // Parsed here; its problems are reported by the command, after its own refusals.
        OrgCommand::ChangeSettings(change.parse()),
        &caller.meta(),
        |_| Ok(()),
    )
    .await?;
    if !decided.is_empty() {
        let mut tx = state.database.read(state.pool.begin()).await?;
        let outcome = decided.append(&mut tx).await.map_err(org_error)?;
        for stored in &outcome.events {
            if let OrgEvent::AlertRecipientConfirmationRequested(request) =
                stored.decode().map_err(ApiError::internal)?
            {
                alert_outbox::request_confirmation(&mut tx, caller.org_id, &request.email, request.requested_at)
                    .await?;
            }
        }
        tx.commit().await?;
    }
    org(state, caller).await
}

/// A command's failure, with a concurrent change named as the
/// organization's (the shared mapping speaks of keys).
fn org_error(e: HandlerError) -> ApiError {
    match e {
        HandlerError::Concurrency => ApiError::Conflict(
            "The organization's settings were changed by another request at the same time; read them \
             again (GET /v1/org) and retry."
                .into(),
        ),
        other => other.into(),
    }
}
