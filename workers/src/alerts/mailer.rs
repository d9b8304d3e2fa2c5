//! The mailer: delivers pending alerts (see `alerts`) as emails — over SMTP
//! with lettre, or, without an SMTP server configured, as `.eml` files in the
//! data folder that any mail program opens.
//!
//! Delivery is at-least-once per claim and exactly once in practice: a worker
//! claims one row by pushing its `next_attempt_at` ten minutes ahead (a
//! lease, so no other worker picks it up meanwhile, without holding a
//! transaction open during SMTP), sends each email within a minute, and
//! records it — only while its claim still holds. A failed attempt is retried
//! with exponential backoff; the row becomes `failed` after the last attempt
//! or at once when the server refuses the message permanently. Each email
//! carries the alert's id as its `Message-ID`, so even a resend after a crash
//! between sending and marking is recognisable as the same message. Each
//! recipient gets an email of their own, and each delivery is recorded as it
//! happens: a retry mails only those not reached yet, and an address the
//! server refuses for good is given up on without holding back the others.
//! An address removed from the organization's alert recipients (or no
//! longer confirmed) before its email went out is withdrawn: never mailed;
//! so is one that is not a plain address (`EmailAddress::parse`).
//!
//! A confirmation request (`keyledger_events::alert_outbox`) is queued
//! without its email: the mailer writes it when it sends it, with the link
//! built from the row (organization, address, time of the request), the
//! hash key and `KEYLEDGER_PUBLIC_URL` ([`Links`]). The token exists only in
//! memory and in the email itself.
//!
//! User-typed text in headers (key names in a `Subject`) reaches a mail
//! program literally: lettre RFC 2047-encodes words that are not ASCII, and
//! a subject holding `=?` (which a mail program would decode as an encoded
//! word) is encoded whole here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use email_encoding::headers::{rfc2047, writer::EmailWriter};
use keyledger_events::alert_outbox::{ALERTS_CHANNEL, CONFIRMATION_KIND};
use keyledger_events::clock::StepClock;
use keyledger_events::domain::{confirmation::Confirmation, EmailAddress, HashKey, OrgId};
use keyledger_events::run_loop::{self, run_loop, Schedule, Task};
use keyledger_events::shutdown::Shutdown;
use lettre::message::{header, Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sqlx::PgPool;

use super::email::Email;

/// Alerts one step sends at most.
const BATCH: usize = 20;
/// The longest one email may take to send (SMTP commands time out after 20 s each).
const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a claimed alert is left alone by other workers: well beyond
/// `SEND_TIMEOUT`, so a claim never lapses while its email may be in flight.
const LEASE: Duration = Duration::from_secs(600);
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3_600);
/// How often the loop looks for pending alerts when nothing wakes it.
const POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum MailerError {
    #[error("SMTP_URL is not usable: {0} (e.g. smtp://mail.example.com:25, smtp://user:pass@host:587?tls=required, smtps://host:465)")]
    SmtpUrl(String),
    #[error("'{0}' is not a sender address (e.g. keyledger <alerts@example.com>)")]
    From(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Where emails go.
#[derive(Clone)]
pub enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// `.eml` files in this folder.
    Files(PathBuf),
}

impl Transport {
    /// SMTP when a URL is given, else files in `data_dir/mail`.
    pub fn new(smtp_url: Option<&str>, data_dir: &Path) -> Result<Transport, MailerError> {
        match smtp_url.map(str::trim).filter(|u| !u.is_empty()) {
            // The URL may hold a password: errors name the problem, never the URL.
            Some(url) => AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                .map(|b| Transport::Smtp(b.timeout(Some(Duration::from_secs(20))).build()))
                .map_err(|e| MailerError::SmtpUrl(e.to_string())),
            None => Ok(Transport::Files(data_dir.join("mail"))),
        }
    }

    /// For logs: where emails go, without credentials.
    pub fn describe(&self) -> String {
        match self {
            Transport::Smtp(_) => "SMTP".into(),
            Transport::Files(dir) => format!(".eml files in {}", dir.display()),
        }
    }

    async fn deliver(&self, message: Message, file_stem: &str) -> Result<(), Failure> {
        match self {
            Transport::Smtp(smtp) => smtp.send(message).await.map(drop).map_err(|e| Failure {
                kind: if e.is_permanent() {
                    FailureKind::Refused
                } else if e.is_transient() {
                    FailureKind::Deferred
                } else {
                    FailureKind::Unreachable
                },
                reason: e.to_string(),
            }),
            Transport::Files(dir) => write_eml(dir, file_stem, &message.formatted())
                .await
                .map_err(|e| Failure {
                    kind: FailureKind::Unreachable,
                    reason: format!("writing to {}: {e}", dir.display()),
                }),
        }
    }
}

/// Written under a temporary name and renamed, so a reader never sees half a file.
async fn write_eml(dir: &Path, stem: &str, bytes: &[u8]) -> std::io::Result<()> {
    tokio::fs::create_dir_all(dir).await?;
    let partial = dir.join(format!(".{stem}.partial"));
    tokio::fs::write(&partial, bytes).await?;
    tokio::fs::rename(&partial, dir.join(format!("{stem}.eml"))).await
}

struct Failure {
    kind: FailureKind,
    reason: String,
}

enum FailureKind {
    /// The server refused this recipient for good (5xx): never retried.
    Refused,
    /// The server put this recipient off (4xx, e.g. greylisting): the
    /// others are still tried now, this one at the next attempt.
    Deferred,
    /// No server, no answer in time, or the folder is not writable: nothing
    /// more is tried until the next attempt.
    Unreachable,
}

/// What one step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub sent: usize,
    /// Failed this time, to be tried again later.
    pub retrying: usize,
    /// Given up on.
    pub failed: usize,
}

/// Where an alert's delivery stands, as recorded in its row.
struct Progress {
    delivered: Vec<String>,
    refused: Vec<String>,
    /// "address: the server's answer", one per refused address.
    refusals: Vec<String>,
    /// No longer a recipient of the organization: never mailed.
    withdrawn: Vec<String>,
}

impl Progress {
    fn settled(&self, recipient: &String) -> bool {
        self.delivered.contains(recipient) || self.refused.contains(recipient) || self.withdrawn.contains(recipient)
    }
}

#[derive(sqlx::FromRow)]
struct Claimed {
    id: uuid::Uuid,
    kind: String,
    org_id: String,
    recipients: Vec<String>,
    delivered_to: Vec<String>,
    refused: Vec<String>,
    refusals: Vec<String>,
    withdrawn: Vec<String>,
    subject: String,
    body_text: String,
    body_html: String,
    attempts: i32,
    created_at: DateTime<Utc>,
}

/// What confirmation links are made of: the hash key (their MAC key is
/// derived from it) and the address users reach the deployment at
/// (`KEYLEDGER_PUBLIC_URL`, no trailing slash).
#[derive(Clone)]
pub struct Links {
    pub hash_key: HashKey,
    pub public_url: String,
}

#[derive(Clone)]
pub struct Mailer {
    pool: PgPool,
    transport: Transport,
    from: Mailbox,
    links: Links,
    /// The wait after the first failed attempt; it doubles with each one.
    pub first_backoff: Duration,
    /// Attempts before an alert is given up on.
    pub max_attempts: i32,
    /// How often the loop looks for pending alerts; an alert that must not
    /// wait (a leaked key's) wakes it at once (`alert_outbox::ALERTS_CHANNEL`).
    pub poll: Duration,
}

impl Mailer {
    pub fn new(pool: PgPool, transport: Transport, from: &str, links: Links) -> Result<Mailer, MailerError> {
        let from = from.parse().map_err(|_| MailerError::From(from.to_owned()))?;
        Ok(Mailer {
            pool,
            transport,
            from,
            links,
            first_backoff: Duration::from_secs(30),
            // With 30 s doubling up to an hour: about a day of outage.
            max_attempts: 30,
            poll: POLL,
        })
    }

    /// One step: sends the alerts due at `now`, claiming them one at a time
    /// (at most a batch).
    pub async fn run_once(&self, now: DateTime<Utc>) -> Result<Delivery, MailerError> {
        let clock = StepClock::starting_at(now);
        let mut delivery = Delivery::default();
        for _ in 0..BATCH {
            let Some(alert) = self.claim(clock.now()).await? else {
                break;
            };
            self.attempt(alert, &clock, &mut delivery).await?;
        }
        Ok(delivery)
    }

    /// Takes the next due alert for this worker: its attempt is counted and
    /// its next attempt pushed past the lease, in one short statement.
    async fn claim(&self, now: DateTime<Utc>) -> Result<Option<Claimed>, sqlx::Error> {
        sqlx::query_as(
            "update alerts set attempts = attempts + 1, next_attempt_at = $2
             where id = (select id from alerts where status = 'pending' and next_attempt_at <= $1
                         order by next_attempt_at limit 1 for update skip locked)
             returning id, kind, org_id, recipients, delivered_to, refused, refusals, withdrawn, subject, body_text,
                       body_html, attempts, created_at",
        )
        .bind(now)
        .bind(now + LEASE)
        .fetch_optional(&self.pool)
        .await
    }

    /// Sends the alert to each recipient it has not reached yet who is
    /// still one of the organization's, one email each, recording every
    /// outcome at once (which also renews the lease): a retry never mails
    /// anyone twice, and an address the server refuses or puts off does not
    /// hold back the others.
    async fn attempt(&self, alert: Claimed, clock: &StepClock, delivery: &mut Delivery) -> Result<(), sqlx::Error> {
        let mut progress = Progress {
            delivered: alert.delivered_to.clone(),
            refused: alert.refused.clone(),
            refusals: alert.refusals.clone(),
            withdrawn: alert.withdrawn.clone(),
        };
        let allowed = super::recipients::allowed(&self.pool, &alert.org_id, &alert.kind).await?;
        let mut deferred = None;
        for (n, recipient) in alert.recipients.iter().enumerate() {
            if progress.settled(recipient) {
                continue;
            }
            let address = EmailAddress::parse(recipient).ok().filter(|a| a.as_str() == recipient);
            let (Some(address), true) = (address, allowed.contains(recipient)) else {
                progress.withdrawn.push(recipient.clone());
                if !self.record(&alert, &progress, clock.now()).await? {
                    return Ok(());
                }
                continue;
            };
            let content = self.content(&alert, &address).await?;
            match self.send(&alert, &content, n, &address).await {
                Ok(()) => progress.delivered.push(recipient.clone()),
                Err(Failure {
                    kind: FailureKind::Refused,
                    reason,
                }) => {
                    progress.refused.push(recipient.clone());
                    progress.refusals.push(format!("{recipient}: {reason}"));
                }
                Err(Failure {
                    kind: FailureKind::Deferred,
                    reason,
                }) => deferred = Some(format!("{recipient}: {reason}")),
                Err(Failure {
                    kind: FailureKind::Unreachable,
                    reason,
                }) => {
                    deferred = Some(reason);
                    break;
                }
            }
            if !self.record(&alert, &progress, clock.now()).await? {
                return Ok(());
            }
        }
        let now = clock.now();
        let reached_all = alert.recipients.iter().all(|r| progress.settled(r));
        let (status, next_attempt_at, error) = match deferred {
            Some(reason) if !reached_all && alert.attempts < self.max_attempts => {
                let retry_at = now + self.backoff(alert.attempts);
                tracing::warn!(alert = %alert.id, attempts = alert.attempts, error = %reason, %retry_at, "alert not delivered to everyone; will retry");
                delivery.retrying += 1;
                ("pending", retry_at, Some(reason))
            }
            Some(reason) if !reached_all => {
                tracing::error!(alert = %alert.id, attempts = alert.attempts, error = %reason, "alert not delivered to everyone; giving up");
                delivery.failed += 1;
                ("failed", now, Some(reason))
            }
            _ if progress.delivered.is_empty() && progress.refused.is_empty() => {
                tracing::info!(alert = %alert.id, kind = %alert.kind, "alert withdrawn: none of its recipients receives alerts any more");
                (
                    "unaddressed",
                    now,
                    Some("no recipient left: every address was removed or is not confirmed".into()),
                )
            }
            _ if progress.delivered.is_empty() => {
                let reason = progress.refusals.join("; ");
                tracing::error!(alert = %alert.id, error = %reason, "every recipient was refused");
                delivery.failed += 1;
                ("failed", now, Some(reason))
            }
            _ => {
                tracing::info!(alert = %alert.id, kind = %alert.kind, recipients = progress.delivered.len(), "alert sent");
                delivery.sent += 1;
                ("sent", now, None)
            }
        };
        sqlx::query(
            "update alerts set status = $3, next_attempt_at = $4, last_error = $5,
                               sent_at = case when $3 = 'sent' then $4 end
             where id = $1 and status = 'pending' and attempts = $2",
        )
        .bind(alert.id)
        .bind(alert.attempts)
        .bind(status)
        .bind(next_attempt_at)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records who has the email and who refused it, and renews the lease,
    /// while this worker's claim holds; false if it lapsed and another
    /// worker took the alert over.
    async fn record(&self, alert: &Claimed, progress: &Progress, now: DateTime<Utc>) -> Result<bool, sqlx::Error> {
        let updated = sqlx::query(
            "update alerts set delivered_to = $3, refused = $4, refusals = $5, withdrawn = $6, next_attempt_at = $7
             where id = $1 and status = 'pending' and attempts = $2",
        )
        .bind(alert.id)
        .bind(alert.attempts)
        .bind(&progress.delivered)
        .bind(&progress.refused)
        .bind(&progress.refusals)
        .bind(&progress.withdrawn)
        .bind(now + LEASE)
        .execute(&self.pool)
        .await?;
        if updated.rows_affected() == 0 {
            tracing::warn!(alert = %alert.id, "the alert's claim lapsed; another worker holds it now");
        }
        Ok(updated.rows_affected() == 1)
    }

    /// What `recipient` is sent: the email rendered into the row, or for a
    /// confirmation request the email with its link, written now.
    async fn content(&self, alert: &Claimed, recipient: &EmailAddress) -> Result<Email, sqlx::Error> {
        if alert.kind != CONFIRMATION_KIND {
            return Ok(Email {
                subject: alert.subject.clone(),
                text: alert.body_text.clone(),
                html: alert.body_html.clone(),
            });
        }
        let name: Option<String> = sqlx::query_scalar("select name from orgs where id = $1")
            .bind(&alert.org_id)
            .fetch_optional(&self.pool)
            .await?;
        let org_id: OrgId = alert
            .org_id
            .parse()
            .map_err(|_| sqlx::Error::Decode(format!("alert {}: malformed org id", alert.id).into()))?;
        let link = Confirmation {
            org_id,
            email: recipient.clone(),
            requested_at: alert.created_at,
        }
        .link(&self.links.hash_key, &self.links.public_url);
        let name = name.unwrap_or_else(|| alert.org_id.clone());
        Ok(super::recipients::confirmation_email(&name, recipient, &link))
    }

    /// One email to one recipient, bounded well inside the lease so no
    /// other worker can take the alert over while this one may still send.
    async fn send(&self, alert: &Claimed, content: &Email, n: usize, recipient: &EmailAddress) -> Result<(), Failure> {
        let message = self.message(alert, content, n, recipient).map_err(|reason| Failure {
            kind: FailureKind::Refused,
            reason,
        })?;
        let stem = format!(
            "{}-{}-{}-{n}",
            alert.created_at.format("%Y%m%dT%H%M%SZ"),
            alert.kind,
            alert.id
        );
        tokio::time::timeout(SEND_TIMEOUT, self.transport.deliver(message, &stem))
            .await
            .unwrap_or_else(|_| {
                Err(Failure {
                    kind: FailureKind::Unreachable,
                    reason: format!("no answer within {} s", SEND_TIMEOUT.as_secs()),
                })
            })
    }

    /// The wait after the `attempts`-th failed attempt.
    fn backoff(&self, attempts: i32) -> chrono::Duration {
        let doublings = u32::try_from(attempts.saturating_sub(1)).unwrap_or(0).min(20);
        let wait = self.first_backoff.saturating_mul(1 << doublings).min(MAX_BACKOFF);
        chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::hours(1))
    }

    fn message(&self, alert: &Claimed, content: &Email, n: usize, recipient: &EmailAddress) -> Result<Message, String> {
        let to: Mailbox = recipient
            .as_str()
            .parse()
            .map_err(|e| format!("'{recipient}' is not an address: {e}"))?;
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .header(Subject(content.subject.clone()))
            .message_id(Some(format!("<{}.{n}@keyledger>", alert.id)))
            .header(AlertKindHeader(alert.kind.clone()))
            .multipart(MultiPart::alternative_plain_html(
                content.text.clone(),
                content.html.clone(),
            ))
            .map_err(|e| e.to_string())
    }

    /// Sends pending alerts until shutdown, looking every second — or at
    /// once when an urgent alert is queued, or while a step sent a full batch.
    pub async fn run(self, shutdown: Shutdown) {
        tracing::info!(to = %self.transport.describe(), "mailer started");
        let listener = crate::wake::listen_on(&self.pool, ALERTS_CHANNEL).await;
        if !listener.is_listening() {
            tracing::warn!("mailer: cannot listen for urgent alerts; they wait for the next poll");
        }
        let schedule = Schedule::every(self.poll).doubling_up_to(5);
        run_loop(&shutdown, schedule, listener, &self).await;
    }
}

impl Task for &Mailer {
    type Error = MailerError;

    async fn step(&mut self) -> Result<run_loop::Progress, MailerError> {
        let delivery = self.run_once(Utc::now()).await?;
        Ok(match delivery.sent + delivery.retrying + delivery.failed {
            BATCH => run_loop::Progress::Worked,
            _ => run_loop::Progress::Idle,
        })
    }

    fn failed(&mut self, error: MailerError, failures: u32) {
        tracing::error!(error = %error, failures, "mailer step failed");
    }
}

/// `Subject`, shown literally by mail programs: encoded whole (RFC 2047)
/// when it holds `=?`, which they would otherwise decode.
#[derive(Clone)]
struct Subject(String);

impl header::Header for Subject {
    fn name() -> header::HeaderName {
        header::HeaderName::new_from_ascii_str("Subject")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Subject(s.to_owned()))
    }

    fn display(&self) -> header::HeaderValue {
        if !self.0.contains("=?") {
            // lettre encodes what is not ASCII and folds long lines.
            return header::HeaderValue::new(Self::name(), self.0.clone());
        }
        let mut encoded = String::new();
        {
            let mut writer = EmailWriter::new(&mut encoded, "Subject: ".len(), 0, false);
            rfc2047::encode(&self.0, &mut writer).expect("writing to a String");
        }
        // Only base64 encoded words, folded: nothing left to inject.
        header::HeaderValue::dangerous_new_pre_encoded(Self::name(), self.0.clone(), encoded)
    }
}

/// `X-Keyledger-Alert: <kind>`, for mail filters.
#[derive(Clone)]
struct AlertKindHeader(String);

impl header::Header for AlertKindHeader {
    fn name() -> header::HeaderName {
        header::HeaderName::new_from_ascii_str("X-Keyledger-Alert")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(AlertKindHeader(s.to_owned()))
    }

    fn display(&self) -> header::HeaderValue {
        header::HeaderValue::new(Self::name(), self.0.clone())
    }
}
