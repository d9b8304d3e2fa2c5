//! The `usage_rollups` read model: usage series per key.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use crate::domain::KeyId;

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
    key_id: KeyId,
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
