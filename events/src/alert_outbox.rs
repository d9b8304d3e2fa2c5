//! The rows of the `alerts` outbox (the mailer's queue, see
//! `keyledger-workers`) that the API writes too.
//!
//! **Leaked keys.** A signed leak report appends `key.leaked`; the alert for
//! the organization's confirmed recipients is written in the same
//! transaction, rendered like every alert, with its `alert.raised` event
//! (see [`record_raised`], the scheduled jobs' alerts use it too), and the
//! mailer is woken
//! (`NOTIFY` on [`ALERTS_CHANNEL`], delivered at commit) so the email goes
//! out at once rather than at its next poll.
//!
//! **Confirmation requests.** The request to send an
//! alert address its confirmation link. Written in the transaction that
//! appends `org.alert_recipient_confirmation_requested` — by `PATCH
//! /v1/org`, or by `keyledger work` for addresses set before confirmations
//! existed — so the email is queued exactly when the event is stored.
//!
//! The row holds only what the link is made of: the organization
//! (`org_id`), the address (the one recipient) and when the confirmation
//! was requested (`created_at`, to the microsecond, as the event has it).
//! No token, no link, no body: the mailer, which holds the hash key and
//! `KEYLEDGER_PUBLIC_URL`, builds the link and writes the email when it
//! sends it.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::alert_email::{compose, Block, Email, KeyLabel};
use crate::domain::key::{KeyLeaked, LeakedSecret};
use crate::domain::{EmailAddress, KeyStatus, OrgId};
use crate::log::{self, AppendError, EventMeta, NewEvent};
use crate::read_model::{self, KeyRow, OrgRow};
use crate::representation::rfc3339;

/// The channel on which the mailer is woken when an alert is queued that
/// should not wait for its next poll.
pub const ALERTS_CHANNEL: &str = "keyledger_alerts";

/// The `kind` of a leaked key's alert (stable, like every kind).
pub const LEAK_KIND: &str = "key_leaked";

/// Queues the email about the leak recorded by the event `event_id` to the
/// organization's confirmed alert recipients (none: the row is kept as
/// `unaddressed`, like any alert), and wakes the mailer. `key` is the key
/// as the leak left it, `deactivated` whether the report deactivated it;
/// `portal_url` the base of the link to its page.
pub async fn queue_leak(
    db: &mut PgConnection,
    org: &OrgRow,
    key: &KeyRow,
    leak: &KeyLeaked,
    deactivated: bool,
    event_id: uuid::Uuid,
    portal_url: &str,
) -> Result<(), sqlx::Error> {
    let recipients: Vec<String> = org
        .confirmed_alert_emails()
        .iter()
        .map(|e| e.as_str().to_owned())
        .collect();
    let email = leak_email(org, key, leak, deactivated, portal_url);
    let id = uuid::Uuid::now_v7();
    // The period of this alert (its dedupe key's last part): the leak event.
    let period = event_id.to_string();
    let inserted = sqlx::query(
        "insert into alerts (id, dedupe_key, kind, org_id, key_id, recipients, subject, body_text, body_html,
                             status, next_attempt_at, created_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9,
                 case when cardinality($6::text[]) = 0 then 'unaddressed' else 'pending' end, $10, $10)
         on conflict (dedupe_key) do nothing",
    )
    .bind(id)
    .bind(format!("{LEAK_KIND}:{}:{period}", key.id))
    .bind(LEAK_KIND)
    .bind(org.id)
    .bind(key.id)
    .bind(&recipients)
    .bind(&email.subject)
    .bind(&email.text)
    .bind(&email.html)
    .bind(leak.reported_at)
    .execute(&mut *db)
    .await?;
    if inserted.rows_affected() == 1 {
        let (org_id, key_id) = (org.id.to_string(), key.id.to_string());
        let raised = RaisedAlert {
            id,
            kind: LEAK_KIND,
            org_id: &org_id,
            key_id: Some(&key_id),
            period: &period,
            subject: &email.subject,
        };
        record_raised(db, &raised, leak.reported_at).await?;
    }
    sqlx::query("select pg_notify($1, '')")
        .bind(ALERTS_CHANNEL)
        .execute(&mut *db)
        .await?;
    Ok(())
}

/// What an `alert.raised` event says: what the alert is about, never its
/// recipients or body.
pub struct RaisedAlert<'a> {
    /// The alert's row (`alerts.id`) and stream (`alert-<id>`).
    pub id: uuid::Uuid,
    pub kind: &'a str,
    pub org_id: &'a str,
    pub key_id: Option<&'a str>,
    pub period: &'a str,
    pub subject: &'a str,
}

/// Appends `alert.raised` to the alert's own stream (`alert-<id>`, one
/// event), in the transaction that inserts the alert's row: the log then
/// carries alerts in commit order with key events, so webhooks deliver them
/// in order and a replay finds them, and Kafka consumers see them too. Every
/// alert raised — by a scheduled job or by a leak report — is recorded so.
pub async fn record_raised(
    db: &mut PgConnection,
    alert: &RaisedAlert<'_>,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let event = NewEvent {
        event_type: read_model::ALERT_RAISED.to_owned(),
        schema_version: 1,
        data: serde_json::json!({
            "alert_id": alert.id,
            "kind": alert.kind,
            "org_id": alert.org_id,
            "key_id": alert.key_id,
            "period": alert.period,
            "subject": alert.subject,
            "raised_at": rfc3339(now),
        }),
    };
    let meta = EventMeta {
        actor: format!("system:alert:{}", alert.kind),
        request_id: None,
        occurred_at: now,
    };
    match log::append(db, &format!("alert-{}", alert.id), 0, &[event], &meta).await {
        Ok(_) => Ok(()),
        Err(AppendError::Database(e)) => Err(e),
        // A fresh id's stream is empty.
        Err(AppendError::Conflict { .. } | AppendError::BatchConflict { .. }) => {
            Err(sqlx::Error::Protocol(format!("alert stream {} exists", alert.id)))
        }
    }
}

/// The email about a leaked key: which key, where it was found, what
/// keyledger did and what to do now. Never the secret.
pub fn leak_email(org: &OrgRow, key: &KeyRow, leak: &KeyLeaked, deactivated: bool, portal_url: &str) -> Email {
    let label = KeyLabel {
        id: key.id.to_string(),
        name: key.name.clone(),
        prefix: key.prefix().to_owned(),
        last_four: key.last_four.clone(),
    };
    let place = if leak.url.is_empty() {
        "an unnamed public place".to_owned()
    } else {
        leak.url.clone()
    };
    let mut blocks = vec![Block::Paragraph(format!(
        "A secret scanner reported that the {} secret of the API key {label} of {} was found in public, at {place}. \
         Anyone who saw it there can use it: treat it as compromised.",
        match leak.secret {
            LeakedSecret::Current => "current",
            LeakedSecret::Previous => "previous (regenerated-away)",
        },
        org.name,
    ))];
    blocks.push(Block::Heading("Where it was found".into()));
    blocks.push(Block::List(vec![
        format!("Place: {place}"),
        format!(
            "Source: {}",
            if leak.source.is_empty() {
                "unknown"
            } else {
                &leak.source
            }
        ),
        format!("Reported at: {}", rfc3339(leak.reported_at)),
    ]));
    let active = key.status_at(leak.reported_at) == KeyStatus::Active;
    let what = match (leak.secret, deactivated, active) {
        (LeakedSecret::Previous, ..) => {
            "The leaked secret is the one the key had before it was last regenerated: it stopped working at once. \
             The key's current secret is not affected; check where the old one was published and remove it."
        }
        (LeakedSecret::Current, true, _) => {
            "keyledger deactivated the key (this organization's leak action): every request made with it is now \
             refused. Regenerate the key, put the new secret where the services that use the key read it, then \
             activate the key again."
        }
        (LeakedSecret::Current, false, true) => {
            "The key is still active (this organization's leak action is notify): anyone who found it can use it. \
             Regenerate it now and put the new secret where the services that use the key read it."
        }
        (LeakedSecret::Current, false, false) => {
            "The key was not active when it was reported. Regenerate it before you activate it again, so the \
             leaked secret never works again."
        }
    };
    blocks.push(Block::Heading("What to do".into()));
    blocks.push(Block::Paragraph(what.into()));
    blocks.push(Block::Paragraph("The key, its audit trail and its usage:".into()));
    blocks.push(Block::Link(format!("{portal_url}/portal/keys/{}", key.id)));
    compose(format!("API key {label} was found in public"), &blocks)
}

/// The `kind` of these rows (stable: stored, and shown to mail filters in
/// `X-Keyledger-Alert`).
pub const CONFIRMATION_KIND: &str = "recipient_confirmation";

/// Queues the confirmation email of `email` for the organization, as
/// requested at `requested_at`; false if that very request was queued
/// already (its dedupe key: organization, address, time).
pub async fn request_confirmation(
    db: &mut PgConnection,
    org_id: OrgId,
    email: &EmailAddress,
    requested_at: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let org_id = org_id.to_string();
    let dedupe_key = format!(
        "{CONFIRMATION_KIND}:{org_id}:{email}:{}",
        requested_at.timestamp_micros()
    );
    let inserted = sqlx::query(
        "insert into alerts (id, dedupe_key, kind, org_id, recipients, subject, body_text, body_html,
                             status, next_attempt_at, created_at)
         values ($1, $2, $3, $4, $5, '', '', '', 'pending', $6, $6)
         on conflict (dedupe_key) do nothing",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(dedupe_key)
    .bind(CONFIRMATION_KIND)
    .bind(org_id)
    .bind(vec![email.as_str()])
    .bind(requested_at)
    .execute(db)
    .await?;
    Ok(inserted.rows_affected() == 1)
}
