//! The `keys` read model: what the API, verification and the CLI read.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use crate::domain::{AllowedIps, ApiKey, Environment, KeyHash, KeyId, KeyStatus, KeyType, OrgId, Scope};

const KEY_COLUMNS: &str = "id, org_id, name, key_type, scopes, status, last_four,
     created_at, last_used_at, expires_at, rotation_due_at, version, allowed_ips, leaked_at";

/// A key as the API shows it (never its hash or secret), its values typed
/// as the domain has them (read back by [`super::columns`]).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyRow {
    pub id: KeyId,
    pub org_id: OrgId,
    pub name: String,
    pub key_type: KeyType,
    pub scopes: Vec<Scope>,
    /// The recorded status; see [`KeyRow::status_at`] for the effective one.
    pub status: KeyStatus,
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
    pub fn from_aggregate(key: &ApiKey, version: i64) -> KeyRow {
        KeyRow {
            id: key.id,
            org_id: key.org_id,
            name: key.name.as_str().to_owned(),
            key_type: key.key_type,
            scopes: key.scopes.clone(),
            status: key.status,
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

    /// The status at `now` (the domain's one rule, [`KeyStatus::at`]).
    pub fn status_at(&self, now: DateTime<Utc>) -> KeyStatus {
        self.status.at(self.expires_at, now)
    }

    /// `live` or `test`: given by the type.
    pub fn environment(&self) -> Environment {
        self.key_type.environment()
    }

    /// The key's public prefix (`sk_live_`…): given by the type.
    pub fn prefix(&self) -> &'static str {
        self.key_type.prefix()
    }
}

/// When the key was last used, as its usage records say (only the read
/// model has it: commands do not read usage).
pub async fn last_used_at<'c>(db: impl PgExecutor<'c>, key_id: KeyId) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let found: Option<Option<DateTime<Utc>>> = sqlx::query_scalar("select last_used_at from keys where id = $1")
        .bind(key_id)
        .fetch_optional(db)
        .await?;
    Ok(found.flatten())
}

pub async fn key_by_id<'c>(
    db: impl PgExecutor<'c>,
    org_id: OrgId,
    key_id: KeyId,
) -> Result<Option<KeyRow>, sqlx::Error> {
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
    pub key_type: Option<KeyType>,
    /// Only keys older than this id (the cursor: ids sort by creation).
    pub before_id: Option<KeyId>,
    pub limit: i64,
}

/// One organization's keys, newest first; deleted keys never appear.
pub async fn list_keys<'c>(
    db: impl PgExecutor<'c>,
    org_id: OrgId,
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
    .bind(filter.key_type)
    .bind(filter.before_id)
    .bind(now)
    .bind(filter.limit)
    .fetch_all(db)
    .await
}

/// The names of those of `key_ids` that are keys of `org_id` (deleted keys
/// included: an audit trail still names who acted), by id.
pub async fn key_names<'c>(
    db: impl PgExecutor<'c>,
    org_id: OrgId,
    key_ids: &[KeyId],
) -> Result<Vec<(KeyId, String)>, sqlx::Error> {
    sqlx::query_as("select id, name from keys where org_id = $1 and id = any($2)")
        .bind(org_id)
        .bind(key_ids)
        .fetch_all(db)
        .await
}
