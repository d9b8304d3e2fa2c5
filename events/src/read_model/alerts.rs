//! The alerts an organization was sent (the mailer's outbox, read).

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use crate::domain::{KeyId, OrgId};

/// An alert raised for an organization, as its alerts page lists it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AlertRow {
    pub id: uuid::Uuid,
    pub kind: String,
    pub key_id: Option<KeyId>,
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
    org_id: OrgId,
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
