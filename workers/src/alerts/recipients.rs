//! Alert recipients as the workers see them: the confirmation email the
//! mailer writes for a queued request (see `keyledger_events::alert_outbox`),
//! who may still receive an email when the mailer gets to it, and the listed
//! addresses an earlier version stored that are not addresses. (The job that
//! asks addresses set before confirmations existed to confirm is
//! `crate::jobs::recipient_confirmations`.)

use std::collections::BTreeMap;

use keyledger_events::alert_outbox::CONFIRMATION_KIND;
use keyledger_events::domain::org::CONFIRMATION_VALID_DAYS;
use keyledger_events::domain::{EmailAddress, ListedAddress};
use sqlx::{PgExecutor, PgPool};

use super::email::{compose, Block, Email};

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
