//! The rotation job: the 90-day (organization setting) rotation policy for
//! live keys. A key is reminded 14 days before its `rotation_due_at`, on the
//! due date, and every week after it until it is regenerated — which moves
//! the date, so the next reminder waits for the new one. Each reminder is an
//! alert and a `key.rotation_due` event, stored in one transaction: one
//! without the other never happens.

use chrono::{DateTime, Utc};
use keyledger_events::domain::key::{self, RotationReminder, ROTATION_NOTICE_DAYS};
use keyledger_events::domain::{ApiKey, DomainError, KeyCommand, KeyId, OrgId};
use keyledger_events::handler::{self, HandlerError};
use keyledger_events::read_model::OrgRow;
use sqlx::PgPool;

use super::job::{job_meta, Job, JobError, Orgs, Report};
use crate::alerts::email::{compose, time_left, Block, Email, KeyLabel};
use crate::alerts::{self, AlertKind, NewAlert};

/// Keys read per query.
const PAGE: i64 = 1_000;

#[derive(sqlx::FromRow)]
struct Due {
    #[sqlx(flatten)]
    label: KeyLabel,
    org_id: OrgId,
    rotation_due_at: DateTime<Utc>,
}

pub async fn run_once(pool: &PgPool, now: DateTime<Utc>) -> Result<Report, JobError> {
    let mut orgs = Orgs::default();
    let mut report = Report::default();
    let mut after: Option<(DateTime<Utc>, String)> = None;
    loop {
        let page = due_keys(pool, now, after.as_ref()).await?;
        let Some(last) = page.last() else { break };
        after = Some((last.rotation_due_at, last.label.id.clone()));
        for key in page {
            report += remind(pool, &mut orgs, key, now).await?;
        }
    }
    Ok(report)
}

/// Active live keys whose first reminder is due (the organization's policy
/// must still be on), a page at a time in (due date, id) order; keys past
/// their expiry are left to the expiry job.
async fn due_keys(
    pool: &PgPool,
    now: DateTime<Utc>,
    after: Option<&(DateTime<Utc>, String)>,
) -> Result<Vec<Due>, sqlx::Error> {
    sqlx::query_as(
        "select k.id, k.name, k.prefix, k.last_four, k.org_id, k.rotation_due_at
         from keys k join orgs o on o.id = k.org_id
         where k.deleted_at is null and k.status = 'active' and k.environment = 'live'
           and o.rotation_days > 0
           and k.rotation_due_at <= $1 + make_interval(days => $2)
           and (k.expires_at is null or k.expires_at > $1)
           and ($4::timestamptz is null or (k.rotation_due_at, k.id) > ($4, $5))
         order by k.rotation_due_at, k.id limit $3",
    )
    .bind(now)
    .bind(ROTATION_NOTICE_DAYS as i32)
    .bind(PAGE)
    .bind(after.map(|(at, _)| *at))
    .bind(after.map(|(_, id)| id.as_str()))
    .fetch_all(pool)
    .await
}

async fn remind(pool: &PgPool, orgs: &mut Orgs, key: Due, now: DateTime<Utc>) -> Result<Report, JobError> {
    let (Some(reminder), Ok(key_id)) = (
        RotationReminder::at(key.rotation_due_at, now),
        key.label.id.parse::<KeyId>(),
    ) else {
        return Ok(Report::default());
    };
    let Some(org) = orgs.get(pool, key.org_id).await? else {
        return Ok(Report::default());
    };
    let period = format!("{}:{}", key.rotation_due_at.to_rfc3339(), reminder.period());
    let alert = NewAlert::to_org(
        AlertKind::RotationDue,
        org,
        Some(&key.label.id),
        period,
        rotation_email(&key, org, reminder, now),
    );
    // Most keys on the list were reminded for this period already: that is
    // one indexed look-up, not a load of the key's stream.
    if alerts::exists(pool, &alert.dedupe_key()).await? {
        return Ok(Report::default());
    }
    let mut tx = pool.begin().await?;
    if !alerts::raise(&mut tx, &alert, now).await? {
        return Ok(Report::default()); // another worker reminded it just now
    }
    // Usage records a flush appends meanwhile make it decide again (a key
    // in use is flushed every few seconds).
    let meta = job_meta(Job::Rotation, now);
    let stream = key::stream_id(key_id);
    match handler::decide_and_append_on::<ApiKey>(&mut tx, &stream, KeyCommand::RemindRotation, &meta, |_| Ok(())).await
    {
        Ok(outcome) => {
            tx.commit().await?;
            Ok(Report {
                alerts: 1,
                events: outcome.events.len(),
            })
        }
        // Regenerated, deactivated or deleted since the query (no reminder),
        // or changed otherwise between the read and the append (the next run
        // decides again): the alert rolls back with it.
        Err(HandlerError::Concurrency | HandlerError::Domain(DomainError::NotFound | DomainError::Conflict(_))) => {
            Ok(Report::default())
        }
        Err(e) => Err(e.into()),
    }
}

fn rotation_email(key: &Due, org: &OrgRow, reminder: RotationReminder, now: DateTime<Utc>) -> Email {
    let label = &key.label;
    let due = key.rotation_due_at.format("%Y-%m-%d");
    let (subject, opening) = match reminder {
        RotationReminder::Upcoming => {
            let left = time_left(now, key.rotation_due_at);
            (
                format!("API key {label} is due for rotation in {left}"),
                format!("Your API key {label} is due for rotation on {due}, in {left}."),
            )
        }
        RotationReminder::Due => (
            format!("API key {label} is due for rotation"),
            format!("Your API key {label} reached its rotation date on {due}."),
        ),
        RotationReminder::Overdue(weeks) => (
            format!("API key {label} is overdue for rotation ({weeks} weeks)"),
            format!(
                "Your API key {label} was due for rotation on {due}, {} ago, and has not been regenerated.",
                if weeks == 1 {
                    "1 week".to_owned()
                } else {
                    format!("{weeks} weeks")
                }
            ),
        ),
    };
    compose(
        subject,
        &[
            Block::Paragraph(format!(
                "{opening} Your organization rotates live keys every {} days, counted from a key's creation \
                 or its last regeneration.",
                org.rotation_days
            )),
            Block::Heading("What to do".into()),
            Block::List(vec![
                format!(
                    "Regenerate the key: POST /v1/keys/{}/regenerate. The new secret is shown once; \
                     store it in your secret manager.",
                    label.id
                ),
                "To deploy without downtime, pass \"expire_old_in_seconds\" (up to a week) so the old \
                 secret keeps working while you roll out the new one."
                    .into(),
                "Regenerating resets the rotation clock; reminders stop until the new due date.".into(),
            ]),
        ],
    )
}
