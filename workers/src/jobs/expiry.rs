//! The expiry job: records `key.expired` for every key past its
//! `expires_at` (verification already refuses such a key by the clock; the
//! event makes the status part of the history), and warns an organization 7
//! days before one of its keys expires.

use chrono::{DateTime, Duration, Utc};
use keyledger_events::domain::{key, ApiKey, DomainError, KeyCommand, KeyId, OrgId};
use keyledger_events::handler::{self, HandlerError};
use sqlx::PgPool;

use super::job::{job_meta, Job, JobError, Orgs, Report};
use crate::alerts::email::{compose, time_left, Block, KeyLabel};
use crate::alerts::{self, AlertKind, NewAlert};

/// How far ahead of the expiry the warning goes out.
pub const EXPIRING_NOTICE_DAYS: i64 = 7;
/// Keys read per query.
const PAGE: i64 = 1_000;

pub async fn run_once(pool: &PgPool, now: DateTime<Utc>) -> Result<Report, JobError> {
    let mut report = expire_due(pool, now).await?;
    report += warn_expiring(pool, now).await?;
    Ok(report)
}

async fn expire_due(pool: &PgPool, now: DateTime<Utc>) -> Result<Report, JobError> {
    let mut report = Report::default();
    let mut after: Option<(DateTime<Utc>, KeyId)> = None;
    loop {
        let page: Vec<(KeyId, DateTime<Utc>)> = sqlx::query_as(
            "select id, expires_at from keys where deleted_at is null and status <> 'expired' and expires_at <= $1
               and ($3::timestamptz is null or (expires_at, id) > ($3, $4))
             order by expires_at, id limit $2",
        )
        .bind(now)
        .bind(PAGE)
        .bind(after.as_ref().map(|(at, _)| *at))
        .bind(after.as_ref().map(|(_, id)| *id))
        .fetch_all(pool)
        .await?;
        let Some((id, at)) = page.last() else { break };
        after = Some((*at, *id));
        report += expire(pool, page.into_iter().map(|(id, _)| id), now).await?;
    }
    Ok(report)
}

async fn expire(pool: &PgPool, ids: impl Iterator<Item = KeyId>, now: DateTime<Utc>) -> Result<Report, JobError> {
    let mut report = Report::default();
    for key_id in ids {
        let meta = job_meta(Job::Expiry, now);
        // Usage records a flush appends meanwhile make it decide again
        // (a key in use is flushed every few seconds).
        let mut tx = pool.begin().await?;
        let stream = key::stream_id(key_id);
        match handler::decide_and_append_on::<ApiKey>(&mut tx, &stream, KeyCommand::Expire, &meta, |_| Ok(())).await {
            Ok(outcome) => {
                tx.commit().await?;
                report.events += outcome.events.len();
            }
            // Another worker recorded it first, or the key was deleted or
            // given a later expiry meanwhile: nothing to record.
            Err(HandlerError::Concurrency | HandlerError::Domain(DomainError::NotFound | DomainError::Conflict(_))) => {
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(report)
}

#[derive(sqlx::FromRow)]
struct Expiring {
    #[sqlx(flatten)]
    label: KeyLabel,
    org_id: OrgId,
    expires_at: DateTime<Utc>,
}

async fn warn_expiring(pool: &PgPool, now: DateTime<Utc>) -> Result<Report, JobError> {
    let mut orgs = Orgs::default();
    let mut report = Report::default();
    let mut after: Option<(DateTime<Utc>, String)> = None;
    loop {
        let page: Vec<Expiring> = sqlx::query_as(
            "select id, name, prefix, last_four, org_id, expires_at from keys
             where deleted_at is null and status = 'active' and expires_at > $1 and expires_at <= $2
               and ($4::timestamptz is null or (expires_at, id) > ($4, $5))
             order by expires_at, id limit $3",
        )
        .bind(now)
        .bind(now + Duration::days(EXPIRING_NOTICE_DAYS))
        .bind(PAGE)
        .bind(after.as_ref().map(|(at, _)| *at))
        .bind(after.as_ref().map(|(_, id)| id.clone()))
        .fetch_all(pool)
        .await?;
        let Some(last) = page.last() else { break };
        after = Some((last.expires_at, last.label.id.clone()));
        for key in page {
            report += warn(pool, &mut orgs, &key, now).await?;
        }
    }
    Ok(report)
}

async fn warn(pool: &PgPool, orgs: &mut Orgs, key: &Expiring, now: DateTime<Utc>) -> Result<Report, JobError> {
    let Some(org) = orgs.get(pool, key.org_id).await? else {
        return Ok(Report::default());
    };
    // One warning per key and expiry date: moving the expiry warns again.
    let period = key.expires_at.to_rfc3339();
    let email = expiring_email(key, now);
    let alert = NewAlert::to_org(AlertKind::KeyExpiring, org, Some(&key.label.id), period, email);
    Ok(Report::raised(alerts::raise_alone(pool, &alert, now).await?))
}

fn expiring_email(key: &Expiring, now: DateTime<Utc>) -> crate::alerts::email::Email {
    let label = &key.label;
    let at = key.expires_at.format("%Y-%m-%d %H:%M UTC");
    let left = time_left(now, key.expires_at);
    compose(
        format!("API key {label} expires in {left}"),
        &[
            Block::Paragraph(format!(
                "Your API key {label} expires on {at}, in {left}. From then on every request made with it \
                 is refused with 401 key_expired, and an expired key cannot be re-activated."
            )),
            Block::Heading("What to do".into()),
            Block::List(vec![
                format!(
                    "If the integration still needs access, create a new key (POST /v1/keys) and deploy it \
                     before {at}; then delete this one (DELETE /v1/keys/{}).",
                    label.id
                ),
                format!(
                    "Or move the expiry: PATCH /v1/keys/{} with a later \"expires_at\" (or null for none).",
                    label.id
                ),
                "If nothing uses this key any more, let it expire.".into(),
            ]),
        ],
    )
}
