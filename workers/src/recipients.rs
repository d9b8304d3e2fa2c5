//! Alert recipients as the workers see them: the confirmation email the
//! mailer writes for a queued request (see `keyledger_events::alert_outbox`),
//! who may still receive an email when the mailer gets to it, and the job
//! that asks addresses set before confirmations existed to confirm.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use keyledger_events::alert_outbox::{self, CONFIRMATION_KIND};
use keyledger_events::domain::org::{self, CONFIRMATION_VALID_DAYS};
use keyledger_events::domain::{EmailAddress, ListedAddress, Org, OrgCommand, OrgEvent, OrgId};
use keyledger_events::handler::{self, HandlerError};
use sqlx::{PgExecutor, PgPool};

use crate::alert_email::{compose, Block, Email};
use crate::scheduler::{job_meta, Job, JobError, Report};

/// The email asking `email` to confirm it wants `org_name`'s alerts, with
/// its `link`.
pub fn confirmation_email(org_name: &str, email: &EmailAddress, link: &str) -> Email {
    compose(
        format!("Confirm that {email} should receive the API key alerts of {org_name}"),
        &[
            Block::Paragraph(format!(
                "An administrator of {org_name} asked keyledger to send the organization's API key alerts to \
                 {email}: keys near their rate limit, unusual activity, high error rates, unused keys, keys \
                 about to expire or due for rotation."
            )),
            Block::Paragraph(format!(
                "If you want them, confirm with this link within {CONFIRMATION_VALID_DAYS} days (it works once):"
            )),
            Block::Link(link.to_owned()),
            Block::Paragraph(
                "If you did not expect this email, ignore it: unless the link is followed, this address gets \
                 nothing more from keyledger."
                    .into(),
            ),
        ],
    )
}

/// Who may receive an email of `kind` for the organization now: its
/// confirmed alert addresses — or, for a confirmation email, the listed
/// addresses not confirmed yet. Anyone else was removed (or confirmed)
/// after the email was queued.
pub async fn allowed<'c>(db: impl PgExecutor<'c>, org_id: &str, kind: &str) -> Result<Vec<String>, sqlx::Error> {
    let confirmation = kind == CONFIRMATION_KIND;
    sqlx::query_scalar("select email from alert_recipients where org_id = $1 and (confirmed_at is null) = $2")
        .bind(org_id)
        .bind(confirmation)
        .fetch_all(db)
        .await
}

/// The job `recipient_confirmations`: every listed address that is not
/// confirmed and was never asked to confirm — one set over the API before
/// confirmations existed (the migration that added them lists it
/// unconfirmed) — is asked now, through the org aggregate (so within its
/// daily cap: the rest on a later run) and the same outbox as `PATCH
/// /v1/org`. Asked once: the request is an event, so later runs skip it.
pub async fn request_missing(pool: &PgPool, now: DateTime<Utc>) -> Result<Report, JobError> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "select r.org_id, r.email from alert_recipients r
         where r.confirmed_at is null
           and not exists (select 1 from events e
                           where e.stream_id = 'org-' || r.org_id
                             and e.type = 'org.alert_recipient_confirmation_requested'
                             and e.data ->> 'email' = r.email)
         order by r.org_id, r.position",
    )
    .fetch_all(pool)
    .await?;
    let mut never_asked: BTreeMap<String, Vec<EmailAddress>> = BTreeMap::new();
    for (org_id, email) in rows {
        // An address that no longer parses is never asked (see `unusable`).
        if let ListedAddress::Valid(email) = ListedAddress::read(&email) {
            never_asked.entry(org_id).or_default().push(email);
        }
    }
    let mut report = Report::default();
    for (org_id, emails) in never_asked {
        let Ok(id) = org_id.parse::<OrgId>() else {
            continue;
        };
        let meta = job_meta(Job::RecipientConfirmations, now);
        let command = OrgCommand::RequestConfirmations { emails };
        let decided = handler::decide::<Org>(pool, &org::stream_id(id), command, &meta, |_| Ok(())).await?;
        if decided.is_empty() {
            continue;
        }
        let mut tx = pool.begin().await?;
        let outcome = match decided.append(&mut tx).await {
            Ok(outcome) => outcome,
            // The organization changed meanwhile: the next run decides again.
            Err(HandlerError::Concurrency) => continue,
            Err(e) => return Err(e.into()),
        };
        for stored in &outcome.events {
            if let OrgEvent::AlertRecipientConfirmationRequested(request) =
                stored.decode().map_err(HandlerError::from)?
            {
                alert_outbox::request_confirmation(&mut tx, id, &request.email, request.requested_at).await?;
                report.alerts += 1;
            }
        }
        tx.commit().await?;
        report.events += outcome.events.len();
        tracing::info!(org = %org_id, asked = outcome.events.len(), "asked alert addresses set before confirmations existed to confirm");
    }
    Ok(report)
}

/// The listed addresses, per organization, that an earlier version stored
/// and that are not plain addresses: they are never confirmed or mailed.
pub async fn unusable(pool: &PgPool) -> Result<BTreeMap<String, Vec<String>>, sqlx::Error> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("select org_id, email from alert_recipients order by org_id, position")
            .fetch_all(pool)
            .await?;
    let mut unusable: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (org_id, email) in rows {
        if ListedAddress::read(&email).valid().is_none() {
            unusable.entry(org_id).or_default().push(email);
        }
    }
    Ok(unusable)
}

/// Logs, at start-up, each organization that lists an address that is not
/// one (see [`unusable`]), so an operator can tell its admins.
pub async fn warn_unusable(pool: &PgPool) -> Result<(), sqlx::Error> {
    for (org_id, addresses) in unusable(pool).await? {
        tracing::warn!(
            org = %org_id,
            addresses = ?addresses,
            "this organization lists alert addresses that are not plain addresses (stored by an earlier \
             version): they never receive anything; its admin should save the list without them (PATCH /v1/org)"
        );
    }
    Ok(())
}
