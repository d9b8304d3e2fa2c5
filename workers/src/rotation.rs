//! The rotation job: the 90-day (organization setting) rotation policy for
//! live keys. A key is reminded 14 days before its `rotation_due_at`, on the
//! due date, and every week after it until it is regenerated — which moves
//! the date, so the next reminder waits for the new one. Each reminder is an
//! alert and a `key.rotation_due` event, stored in one transaction: one
//! without the other never happens.

use chrono::{DateTime, Utc};
use keyledger_events::domain::key::{self, RotationReminder, ROTATION_NOTICE_DAYS};
use keyledger_events::domain::{ApiKey, DomainError, KeyCommand, KeyId};
use keyledger_events::handler::{self, HandlerError};
use keyledger_events::read_model::OrgRow;
use sqlx::PgPool;

use crate::alert_email::{compose, time_left, Block, Email, KeyLabel};
use crate::alerts::{self, AlertKind, NewAlert};
use crate::scheduler::{job_meta, Job, JobError, Orgs, Report};

const BATCH: i64 = 1_000;

#[derive(sqlx::FromRow)]
struct Due {
    #[sqlx(flatten)]
    label: KeyLabel,
    org_id: String,
    created_at: DateTime<Utc>,
    rotation_due_at: DateTime<Utc>,
}

pub async fn run_once(pool: &PgPool, now: DateTime<Utc>) -> Result<Report, JobError> {
    // Active live keys whose first reminder is due (the organization's policy
    // must still be on); keys past their expiry are left to the expiry job.
    let due: Vec<Due> = sqlx::query_as(
        "select k.id, k.name, k.prefix, k.last_four, k.org_id, k.created_at, k.rotation_due_at
         from keys k join orgs o on o.id = k.org_id
         where k.deleted_at is null and k.status = 'active' and k.environment = 'live'
           and o.rotation_days > 0
           and k.rotation_due_at <= $1 + make_interval(days => $2)
           and (k.expires_at is null or k.expires_at > $1)
         order by k.rotation_due_at limit $3",
    )
    .bind(now)
    .bind(ROTATION_NOTICE_DAYS as i32)
    .bind(BATCH)
    .fetch_all(pool)
    .await?;
    let mut orgs = Orgs::default();
    let mut report = Report::default();
    for key in due {
        let Some(reminder) = RotationReminder::at(key.rotation_due_at, now) else {
            continue;
        };
        let Some(org) = orgs.get(pool, &key.org_id).await? else {
            continue;
        };
        let Ok(key_id) = key.label.id.parse::<KeyId>() else {
            continue;
        };
        let decided = match handler::decide::<ApiKey>(
            pool,
            &key::stream_id(key_id),
            KeyCommand::RemindRotation,
            &job_meta(Job::Rotation, now),
            |_| Ok(()),
        )
        .await
        {
            Ok(decided) => decided,
            // Regenerated, deactivated or deleted since the query: no reminder.
            Err(HandlerError::Domain(DomainError::NotFound | DomainError::Conflict(_))) => continue,
            Err(e) => return Err(e.into()),
        };
        let period = format!("{}:{}", key.rotation_due_at.to_rfc3339(), reminder.period());
        let alert = NewAlert::to_org(
            AlertKind::RotationDue,
            org,
            Some(&key.label.id),
            period,
            rotation_email(&key, org, reminder, now),
        );
        let mut tx = pool.begin().await?;
        if !alerts::raise(&mut tx, &alert, now).await? {
            continue; // already reminded for this period
        }
        match decided.append(&mut tx).await {
            Ok(outcome) => {
                tx.commit().await?;
                report.alerts += 1;
                report.events += outcome.events.len();
            }
            // The key changed between the decision and the append: the
            // alert rolls back with it and the next run decides again.
            Err(HandlerError::Concurrency) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(report)
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
    let age = (now - key.created_at).num_days();
    compose(
        subject,
        &[
            Block::Paragraph(format!(
                "{opening} Your organization rotates live keys every {} days, counted from a key's creation \
                 or its last regeneration; this key was created {age} days ago.",
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
