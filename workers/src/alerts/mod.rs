//! Alerts as rows: what the scheduled jobs decided to tell an organization,
//! recorded before any email is attempted (the mailer's outbox). Each alert
//! has a dedupe key — type, subject (key or organization), period — so the
//! same condition found again in the same period adds nothing, whichever
//! worker replica finds it.
//!
//! Beside it: [`email`] (how an alert email is composed), [`recipients`] (who
//! may receive one) and the [`mailer`] that sends them.

use chrono::{DateTime, Datelike, Utc};
use keyledger_events::alert_outbox::{self, RaisedAlert};
use keyledger_events::read_model::OrgRow;
use sqlx::{PgConnection, PgExecutor, PgPool};

use self::email::Email;

pub mod email;
pub mod mailer;
pub mod recipients;

/// What an alert is about; the stored names are stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertKind {
    ApproachingRateLimit,
    ErrorRate,
    UnusualActivity,
    UnusedKeys,
    RotationDue,
    KeyExpiring,
    /// A webhook endpoint was disabled after 5 days of failed deliveries.
    WebhookDisabled,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::ApproachingRateLimit => "approaching_rate_limit",
            AlertKind::ErrorRate => "error_rate",
            AlertKind::UnusualActivity => "unusual_activity",
            AlertKind::UnusedKeys => "unused_keys",
            AlertKind::RotationDue => "rotation_due",
            AlertKind::KeyExpiring => "key_expiring",
            AlertKind::WebhookDisabled => "webhook_disabled",
        }
    }
}

/// An alert about to be raised.
pub struct NewAlert {
    pub kind: AlertKind,
    /// The period the alert covers, e.g. the hour `2026-11-26T10`; one alert
    /// per kind, subject and period.
    pub period: String,
    pub org_id: String,
    pub key_id: Option<String>,
    pub recipients: Vec<String>,
    pub email: Email,
    /// The least time between two alerts of this kind about the same key or
    /// organization, whatever their periods ("at most once an hour"): a
    /// condition lasting across 10:59 → 11:00 is one alert, not two.
    pub quiet: Option<chrono::Duration>,
}

impl NewAlert {
    /// An alert for `org`'s confirmed alert addresses.
    pub fn to_org(kind: AlertKind, org: &OrgRow, key_id: Option<&str>, period: String, email: Email) -> NewAlert {
        NewAlert {
            kind,
            period,
            org_id: org.id.to_string(),
            key_id: key_id.map(str::to_owned),
            recipients: org
                .confirmed_alert_emails()
                .iter()
                .map(|e| e.as_str().to_owned())
                .collect(),
            email,
            quiet: None,
        }
    }

    /// This alert, unless one of its kind about the same subject was raised
    /// less than `quiet` before.
    pub fn at_most_every(self, quiet: chrono::Duration) -> NewAlert {
        NewAlert {
            quiet: Some(quiet),
            ..self
        }
    }

    /// The key (or, for a digest, the organization) the alert is about.
    pub fn about(&self) -> &str {
        self.key_id.as_deref().unwrap_or(&self.org_id)
    }

    pub fn dedupe_key(&self) -> String {
        format!("{}:{}:{}", self.kind.as_str(), self.about(), self.period)
    }
}

/// The hour `at` falls in, as a period name (`2026-11-26T10`).
pub fn hour_period(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H").to_string()
}

/// The ISO week `at` falls in (`2026-W48`): weekly digests use it.
pub fn week_period(at: DateTime<Utc>) -> String {
    let week = at.iso_week();
    format!("{}-W{:02}", week.year(), week.week())
}

/// Records the alert unless one with the same dedupe key exists (or one of
/// its kind about the same subject within its quiet time); true when it is
/// new. A new alert also appends its `alert.raised` event (call it inside
/// a transaction: both are stored, or neither). A concurrent raise of the same alert waits for this one's
/// transaction and then finds it. An organization without confirmed alert
/// addresses still gets the row (the record that the condition was seen),
/// marked `unaddressed`, which the mailer skips.
pub async fn raise(db: &mut PgConnection, alert: &NewAlert, now: DateTime<Utc>) -> Result<bool, sqlx::Error> {
    let id = uuid::Uuid::now_v7();
    let inserted = sqlx::query(
        "insert into alerts (id, dedupe_key, kind, org_id, key_id, recipients, subject, body_text, body_html,
                             status, next_attempt_at, created_at)
         select $1, $2, $3, $4, $5, $6, $7, $8, $9,
                case when cardinality($6::text[]) = 0 then 'unaddressed' else 'pending' end, $10, $10
         where $11::bigint is null or not exists (
             select 1 from alerts where kind = $3 and coalesce(key_id, org_id) = coalesce($5, $4)
               and created_at > $10 - make_interval(secs => $11::double precision) and created_at <= $10)
         on conflict (dedupe_key) do nothing",
    )
    .bind(id)
    .bind(alert.dedupe_key())
    .bind(alert.kind.as_str())
    .bind(&alert.org_id)
    .bind(&alert.key_id)
    .bind(&alert.recipients)
    .bind(&alert.email.subject)
    .bind(&alert.email.text)
    .bind(&alert.email.html)
    .bind(now)
    .bind(alert.quiet.map(|q| q.num_seconds()))
    .execute(&mut *db)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(false);
    }
    record_raised(db, id, alert, now).await?;
    Ok(true)
}

/// Appends `alert.raised` for the alert (see
/// [`alert_outbox::record_raised`], which leak reports use too).
async fn record_raised(
    db: &mut PgConnection,
    id: uuid::Uuid,
    alert: &NewAlert,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let raised = RaisedAlert {
        id,
        kind: alert.kind.as_str(),
        org_id: &alert.org_id,
        key_id: alert.key_id.as_deref(),
        period: &alert.period,
        subject: &alert.email.subject,
    };
    alert_outbox::record_raised(db, &raised, now).await
}

/// [`raise`] in a transaction of its own.
pub async fn raise_alone(pool: &PgPool, alert: &NewAlert, now: DateTime<Utc>) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let raised = raise(&mut tx, alert, now).await?;
    tx.commit().await?;
    Ok(raised)
}

/// Whether an alert with this dedupe key was raised.
pub async fn exists<'c>(db: impl PgExecutor<'c>, dedupe_key: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("select exists (select 1 from alerts where dedupe_key = $1)")
        .bind(dedupe_key)
        .fetch_one(db)
        .await
}
