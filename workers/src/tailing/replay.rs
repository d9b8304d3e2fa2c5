//! `keyledger replay`: rebuild every read model from the event log into fresh
//! tables and swap them in; `--check` rebuilds and compares instead.
//!
//! The rebuild runs in one repeatable-read transaction, so the log it reads
//! and the live tables it may compare with are the same snapshot (commands
//! write their events and their read-model rows in one transaction). It
//! only applies events to tables: it appends nothing and sends nothing.

use keyledger_events::log::{self, LogPosition, StoredEvent};
use keyledger_events::read_model::{self, ProjectionError, UsageSink};
use sqlx::{PgConnection, PgPool};

use crate::session_lock::{keys, SessionLock};

/// Every read model `read_model::apply` writes.
pub const READ_MODELS: [&str; 4] = ["keys", "orgs", "alert_recipients", "usage_rollups"];
const SCHEMA: &str = "keyledger_rebuild";
/// Events read (and applied, set-based) at a time: memory stays flat as the
/// log grows. Since usage moves each key's row once, at the end, rather
/// than once per batch, the size hardly changes the speed: on the bench's
/// log (200k events, about 9,500 keys; measured in the fourth sitting, before
/// the last replay changes) 20,000 a batch replayed in
/// 2.71–2.97 s at a 110–114 MB peak, 50,000 in 2.73–2.83 s at 148–160 MB,
/// 100,000 in 2.54–3.15 s at 220–230 MB.
pub const BATCH: i64 = 20_000;
/// Where the rebuild stages usage counts (per key and minute) until the
/// end, when they become the `usage_rollups` rows in one statement (and
/// move the keys rows' last use and version in another).
const USAGE_STAGING: &str = "keyledger_rebuild.usage_staging";
/// The read model a rebuild writes only at its end, when the usage roll-up
/// inserts each of its rows once: its copy has no index until then (a
/// replay builds them after; a check, which only compares rows, never).
const ROLLED_UP_AT_END: &str = "usage_rollups";
/// PostgreSQL's `work_mem` for a rebuild's transaction (per sort or hash of
/// one statement, on the database server).
const REBUILD_WORK_MEM: &str = "64MB";

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("event at position {position} cannot be replayed: {source}")]
    Event { position: i64, source: ProjectionError },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A live index the rebuild cannot build on its copy of the table.
    #[error("cannot copy an index or the constraint it backs: {0}")]
    Index(String),
}

/// Rows that differ between the live read models and a rebuild.
#[derive(Debug, Default)]
pub struct Differences {
    /// (table, row as text) present live but not in the rebuild.
    pub only_live: Vec<(String, String)>,
    /// (table, row as text) present in the rebuild but not live.
    pub only_rebuilt: Vec<(String, String)>,
}

impl Differences {
    pub fn is_empty(&self) -> bool {
        self.only_live.is_empty() && self.only_rebuilt.is_empty()
    }
}

/// Creates empty copies of the read models in the rebuild schema and
/// applies every event visible to this transaction to them.
async fn rebuild_into_schema(tx: &mut PgConnection) -> Result<usize, ReplayError> {
    sqlx::query(&format!("drop schema if exists {SCHEMA} cascade"))
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("create schema {SCHEMA}"))
        .execute(&mut *tx)
        .await?;
    // The usage statements group a batch's records (and at the end all of
    // them) by key and minute: with the default 4 MB, PostgreSQL sorts them
    // on disk instead of hashing them in memory. (Per sort or hash node: the
    // server may use a few times this for the last statement.)
    sqlx::query(&format!("set local work_mem = '{REBUILD_WORK_MEM}'"))
        .execute(&mut *tx)
        .await?;
    for table in READ_MODELS {
        sqlx::query(&format!(
            "create table {SCHEMA}.{table} (like public.{table} including all excluding indexes)"
        ))
        .execute(&mut *tx)
        .await?;
        if table != ROLLED_UP_AT_END {
            build_indexes_like_live(tx, table).await?;
        }
    }
    // `apply` names its tables unqualified: they now resolve to the copies.
    sqlx::query(&format!("set local search_path to {SCHEMA}, public"))
        .execute(&mut *tx)
        .await?;
    // Usage counts are staged per key and minute, batch after batch, and
    // rolled up once at the end: each rollup row is written once, and each
    // key's row moved once for its usage, instead of by every batch that
    // counts toward it. The staging table holds at most a row per key and
    // minute per statement that counts usage (a batch's wave), on disk.
    read_model::create_usage_staging(&mut *tx, USAGE_STAGING).await?;
    let mut after = LogPosition::default();
    let mut applied = 0;
    loop {
        let events = log::read_visible_after(&mut *tx, after, BATCH).await?;
        let Some(last) = events.last() else { break };
        after = last.log_position();
        apply_all(tx, &events, UsageSink::Staged(USAGE_STAGING)).await?;
        applied += events.len();
    }
    read_model::roll_up_usage_staging(&mut *tx, USAGE_STAGING).await?;
    sqlx::query("set local search_path to public").execute(&mut *tx).await?;
    Ok(applied)
}

/// Builds on the rebuild's copy of `table` every index of the live one, by
/// its definition and under its name, and adds the primary key or unique
/// constraints they back, under theirs: `like … including all` would name
/// them anew, a swap would leave, say, `keys_list` as `keys_org_id_id_idx`,
/// and a later migration naming it would fail. (Foreign keys, which `like`
/// does not copy either, and comments on indexes are not copied.)
async fn build_indexes_like_live(tx: &mut PgConnection, table: &str) -> Result<(), ReplayError> {
    let live = format!("public.{table}");
    // The constraints an index backs (a foreign key names the index it
    // refers to as well: not one of them), names quoted for the statements.
    let indexes: Vec<(String, String, Option<String>, Option<String>)> = sqlx::query_as(
        "select quote_ident(i.relname), pg_get_indexdef(x.indexrelid), quote_ident(c.conname),
                c.contype::text || case when c.condeferrable then ' deferrable' else '' end
         from pg_index x join pg_class i on i.oid = x.indexrelid
         left join pg_constraint c on c.conindid = x.indexrelid and c.conrelid = x.indrelid
                                   and c.contype in ('p', 'u', 'x')
         where x.indrelid = $1::regclass order by 1",
    )
    .bind(&live)
    .fetch_all(&mut *tx)
    .await?;
    for (index, definition, constraint, kind) in indexes {
        // `CREATE [UNIQUE] INDEX name ON public.table USING …`: the same
        // index on the copy (an index lives in its table's schema).
        let on_copy = definition
            .split_once(&format!(" ON {live} "))
            .map(|(create, rest)| format!("{create} ON {SCHEMA}.{table} {rest}"))
            .ok_or_else(|| ReplayError::Index(definition.clone()))?;
        sqlx::query(&on_copy).execute(&mut *tx).await?;
        let Some(constraint) = constraint else { continue };
        // An exclusion or deferrable constraint cannot be added this way:
        // the replay stops rather than swap in a table without it.
        let kind = match kind.as_deref() {
            Some("p") => "primary key",
            Some("u") => "unique",
            _ => return Err(ReplayError::Index(definition)),
        };
        sqlx::query(&format!(
            "alter table {SCHEMA}.{table} add constraint {constraint} {kind} using index {index}"
        ))
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Applies `events` in order to the read models `search_path` resolves to,
/// set-based ([`read_model::apply_batch_into`]), adding usage counts to `usage`.
async fn apply_all(db: &mut PgConnection, events: &[StoredEvent], usage: UsageSink<'_>) -> Result<(), ReplayError> {
    read_model::apply_batch_into(db, events, usage)
        .await
        .map_err(|failure| match failure.error {
            ProjectionError::Database(e) => ReplayError::Database(e),
            source => ReplayError::Event {
                position: failure.position,
                source,
            },
        })
}

/// Of `events`, those the rebuild's `snapshot` did not see. Applied once
/// each, their usage records count without the version guard, like the
/// rebuild's own (see `UsageSink::Once`).
async fn unseen(
    db: &mut PgConnection,
    events: Vec<StoredEvent>,
    snapshot: &str,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    let transactions: Vec<i64> = events.iter().map(|e| e.tx_id).collect();
    let seen: std::collections::HashSet<i64> = sqlx::query_scalar(
        "select distinct t from unnest($1::bigint[]) as t where pg_visible_in_snapshot(t::text::xid8, $2::pg_snapshot)",
    )
    .bind(&transactions)
    .bind(snapshot)
    .fetch_all(&mut *db)
    .await?
    .into_iter()
    .collect();
    Ok(events.into_iter().filter(|e| !seen.contains(&e.tx_id)).collect())
}

async fn begin_snapshot(pool: &PgPool) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("set transaction isolation level repeatable read")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Rebuilds and compares with the live read models; changes nothing.
pub async fn check(pool: &PgPool) -> Result<Differences, ReplayError> {
    let lock = SessionLock::acquire(pool, keys::REPLAY).await?;
    let result = compare(pool).await;
    lock.release().await;
    result
}

async fn compare(pool: &PgPool) -> Result<Differences, ReplayError> {
    let mut tx = begin_snapshot(pool).await?;
    rebuild_into_schema(&mut tx).await?;
    let mut differences = Differences::default();
    for table in READ_MODELS {
        // Each row's text once a side, and a text found on one side only is
        // a difference: what `except` both ways finds, in one pass.
        let rows: Vec<(bool, String)> = sqlx::query_as(&format!(
            "select bool_or(live), line from (
                 select true as live, r::text as line from public.{table} r
                 union all
                 select false, r::text from {SCHEMA}.{table} r) lines
             group by line having bool_and(live) = bool_or(live) order by line"
        ))
        .fetch_all(&mut *tx)
        .await?;
        for (live, text) in rows {
            let side = if live {
                &mut differences.only_live
            } else {
                &mut differences.only_rebuilt
            };
            side.push((table.to_owned(), text));
        }
    }
    tx.rollback().await?;
    Ok(differences)
}

/// Rebuilds every read model and swaps the rebuilt tables in; returns how
/// many events were applied.
pub async fn rebuild(pool: &PgPool) -> Result<usize, ReplayError> {
    rebuild_with(pool, || async {}).await
}

/// [`rebuild`], running `before_swap` between the rebuild's commit and the
/// swap — where commands committing meanwhile leave late events (tests
/// commit some there). A test hook, hidden from the documentation.
#[doc(hidden)]
pub async fn rebuild_with<F: std::future::Future<Output = ()>>(
    pool: &PgPool,
    before_swap: impl FnOnce() -> F,
) -> Result<usize, ReplayError> {
    let lock = SessionLock::acquire(pool, keys::REPLAY).await?;
    let result = rebuild_and_swap(pool, before_swap).await;
    lock.release().await;
    result
}

async fn rebuild_and_swap<F: std::future::Future<Output = ()>>(
    pool: &PgPool,
    before_swap: impl FnOnce() -> F,
) -> Result<usize, ReplayError> {
    let mut tx = begin_snapshot(pool).await?;
    // Every transaction older than the horizon was finished when the
    // snapshot was taken, so its events are in the rebuild; of the others,
    // the snapshot says which.
    let (horizon, snapshot): (i64, String) =
        sqlx::query_as("select pg_snapshot_xmin(pg_current_snapshot())::text::bigint, pg_current_snapshot()::text")
            .fetch_one(&mut *tx)
            .await?;
    let applied = rebuild_into_schema(&mut tx).await?;
    build_indexes_like_live(&mut tx, ROLLED_UP_AT_END).await?;
    tx.commit().await?;
    before_swap().await;

    // The swap: with the live tables locked (commands wait a moment), apply
    // what committed after the snapshot, each event once, then put the
    // rebuilt tables in their place.
    let mut tx = pool.begin().await?;
    let tables = READ_MODELS.map(|t| format!("public.{t}")).join(", ");
    sqlx::query(&format!("lock table {tables} in access exclusive mode"))
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("set local search_path to {SCHEMA}, public"))
        .execute(&mut *tx)
        .await?;
    let late = log::read_since_transaction(&mut *tx, horizon).await?;
    let late = unseen(&mut tx, late, &snapshot).await?;
    apply_all(&mut tx, &late, UsageSink::Once).await?;
    sqlx::query("set local search_path to public").execute(&mut *tx).await?;
    for table in READ_MODELS {
        sqlx::query(&format!("drop table public.{table}"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!("alter table {SCHEMA}.{table} set schema public"))
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(&format!("drop schema {SCHEMA}")).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(applied)
}
