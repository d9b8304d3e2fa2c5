//! The one kind of row of the `alerts` outbox (the mailer's queue, see
//! `keyledger-workers`) that the API writes too: the request to send an
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

use crate::domain::{EmailAddress, OrgId};

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
