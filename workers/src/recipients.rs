//! Alert recipients as the outbox sees them: the email that asks an address
//! to confirm it wants an organization's alerts (raised by the API when the
//! address is set, sent by the mailer like any alert), and who may still
//! receive an email when the mailer gets to it.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use crate::alert_email::{compose, Block};
use crate::alerts::{AlertKind, NewAlert};

/// The confirmation email for `email`, with its `link` (see
/// `keyledger_events::domain::confirmation`), as an alert to that address
/// alone; one per request.
pub fn confirmation_alert(
    org_id: &str,
    org_name: &str,
    email: &str,
    requested_at: DateTime<Utc>,
    link: &str,
    valid_days: i64,
) -> NewAlert {
    let message = compose(
        format!("Confirm that {email} should receive the API key alerts of {org_name}"),
        &[
            Block::Paragraph(format!(
                "An administrator of {org_name} asked keyledger to send the organization's API key alerts to \
                 {email}: keys near their rate limit, unusual activity, high error rates, unused keys, keys \
                 about to expire or due for rotation."
            )),
            Block::Paragraph(format!(
                "If you want them, confirm with this link within {valid_days} days (it works once):"
            )),
            Block::Link(link.to_owned()),
            Block::Paragraph(
                "If you did not expect this email, ignore it: unless the link is followed, this address gets \
                 nothing more from keyledger."
                    .into(),
            ),
        ],
    );
    NewAlert {
        kind: AlertKind::RecipientConfirmation,
        period: format!("{email}:{}", requested_at.timestamp_micros()),
        org_id: org_id.to_owned(),
        key_id: None,
        recipients: vec![email.to_owned()],
        email: message,
        quiet: None,
    }
}

/// Who may receive an email of `kind` for the organization now: its
/// confirmed alert addresses — or, for a confirmation email, any address it
/// still lists. Anyone else was removed after the alert was raised.
pub async fn allowed<'c>(db: impl PgExecutor<'c>, org_id: &str, kind: &str) -> Result<Vec<String>, sqlx::Error> {
    let any_listed = kind == AlertKind::RecipientConfirmation.as_str();
    sqlx::query_scalar("select email from alert_recipients where org_id = $1 and (confirmed_at is not null or $2)")
        .bind(org_id)
        .bind(any_listed)
        .fetch_all(db)
        .await
}
