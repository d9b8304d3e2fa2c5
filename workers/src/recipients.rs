//! Alert recipients as the workers see them: the confirmation email the
//! mailer writes for a queued request (see `keyledger_events::alert_outbox`),
//! and who may still receive an email when the mailer gets to it.

use keyledger_events::alert_outbox::CONFIRMATION_KIND;
use keyledger_events::domain::org::CONFIRMATION_VALID_DAYS;
use keyledger_events::domain::EmailAddress;
use sqlx::PgExecutor;

use crate::alert_email::{compose, Block, Email};

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
