//! The job `recipient_confirmations`: alert addresses set before
//! confirmations existed are asked to confirm, once.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use keyledger_events::alert_outbox;
use keyledger_events::domain::org;
use keyledger_events::domain::{EmailAddress, ListedAddress, Org, OrgCommand, OrgEvent, OrgId};
use keyledger_events::handler::{self, HandlerError};
use sqlx::PgPool;

use super::job::{job_meta, Job, JobError, Report};

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
        // An address that no longer parses is never asked (see `crate::alerts::recipients::unusable`).
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
