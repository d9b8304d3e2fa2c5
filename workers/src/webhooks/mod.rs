//! Webhook deliveries (docs/api.md, "Webhooks"): the worker that turns the event
//! log into signed HTTP requests to the organizations' endpoints.
//!
//! Two steps, each called directly by tests with a chosen clock:
//!
//! - [`Webhooks::enqueue_once`] follows the log in commit-safe order (the
//!   projector's reader, `log::read_after`, with its own checkpoint
//!   `webhooks`) and writes one delivery row per matching (event, endpoint)
//!   in the transaction that moves the checkpoint — rows first, like alerts.
//!   An endpoint gets the events that occur after it was created and while
//!   it is enabled. A unique (endpoint, event) index makes a second reader
//!   (or a re-read) add nothing: each event reaches each endpoint once.
//! - [`Webhooks::send_once`] claims due deliveries the way the mailer claims
//!   alerts: one short statement counts the attempt and pushes the row's next
//!   attempt past a lease, so no other replica takes it and no transaction is
//!   open during the request. Only an endpoint's oldest pending delivery can
//!   be claimed: an endpoint's deliveries go one at a time, in log order, and
//!   a failing one holds back the later ones until it succeeds or fails for
//!   good. Different endpoints are served side by side.
//!
//! Each attempt builds the body from the log (the key as that event left it,
//! or the alert), signs it per Standard Webhooks with the endpoint's secret
//! (opened with a key derived from the hash key) and records the attempt. A
//! 2xx within 10 s succeeds; anything else is retried after
//! `first_backoff`, doubling up to an hour, until the next retry would fall
//! more than a day after the first attempt: then the delivery fails. An
//! endpoint whose attempts have all failed for 5 days is disabled, and its
//! organization's alert recipients are told by email (an alert, raised in
//! the same transaction).

use std::time::Duration;

use chrono::{DateTime, Utc};
use keyledger_events::clock::StepClock;
use keyledger_events::domain::webhook::{WebhookSecret, WebhookUrl, EVENT_TYPES};
use keyledger_events::domain::{key::KeyEvent, Aggregate, ApiKey, HashKey, OrgId};
use keyledger_events::log::{self, StoredEvent};
use keyledger_events::read_model::{self, KeyRow, ALERT_RAISED};
use keyledger_events::representation;
use keyledger_events::run_loop::{run_loop, NoWake, Progress, Schedule, Task};
use keyledger_events::shutdown::Shutdown;
use keyledger_events::webhook_outbox;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::alerts::email::{compose, Block};
use crate::alerts::{self, AlertKind, NewAlert};
use crate::wake;

pub mod client;

use self::client::{SendError, WebhookClient};

/// The reader's name in `projector_checkpoints`.
pub const CHECKPOINT: &str = "webhooks";
/// Events one enqueue step reads at most.
const EVENT_BATCH: i64 = 500;
/// Deliveries one send step attempts at most (side by side: each is the
/// head of another endpoint's queue).
const SEND_BATCH: usize = 16;
/// How long a claimed delivery is left alone by other workers: well beyond
/// the request's 10 s.
const LEASE: Duration = Duration::from_secs(120);
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3_600);
/// "About a day": no retry is scheduled later than this after the first attempt.
const RETRY_WINDOW: chrono::Duration = chrono::Duration::hours(24);
/// An endpoint failing this long without a success is disabled.
pub const DISABLE_AFTER: chrono::Duration = chrono::Duration::days(5);
/// How often the loops look when nothing wakes them.
const POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// What one send step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub succeeded: usize,
    /// Failed this time; tried again later.
    pub retrying: usize,
    /// Given up on.
    pub failed: usize,
    /// Endpoints disabled after 5 days of failures.
    pub disabled: usize,
}

impl Sent {
    fn attempts(&self) -> usize {
        self.succeeded + self.retrying + self.failed
    }
}

#[derive(Clone)]
pub struct Webhooks {
    pool: PgPool,
    hash_key: HashKey,
    client: WebhookClient,
    /// The wait after the first failed attempt; it doubles with each one.
    pub first_backoff: Duration,
}

#[derive(sqlx::FromRow)]
struct Claimed {
    id: String,
    endpoint_id: String,
    org_id: OrgId,
    event_id: uuid::Uuid,
    attempts: i32,
    first_attempt_at: DateTime<Utc>,
    url: String,
    description: String,
    secret_nonce: Vec<u8>,
    secret_sealed: Vec<u8>,
}

/// How an attempt ended.
enum Outcome {
    Succeeded(u16),
    Failed { status: Option<u16>, error: String },
}

impl Webhooks {
    pub fn new(pool: PgPool, hash_key: HashKey, client: WebhookClient) -> Webhooks {
        Webhooks {
            pool,
            hash_key,
            client,
            first_backoff: Duration::from_secs(5),
        }
    }

    /// One enqueue step: reads the next committed events and writes the
    /// deliveries they make, moving the checkpoint in the same transaction;
    /// returns how many events it read (0: caught up).
    pub async fn enqueue_once(&self) -> Result<usize, WebhookError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("select pg_advisory_xact_lock(hashtext('projector:' || $1))")
            .bind(CHECKPOINT)
            .execute(&mut *tx)
            .await?;
        let after = log::checkpoint(&mut *tx, CHECKPOINT).await?;
        let events = log::read_after(&mut *tx, after, EVENT_BATCH).await?;
        let Some(last) = events.last().map(StoredEvent::log_position) else {
            return Ok(0);
        };
        let deliverable: Vec<&StoredEvent> = events
            .iter()
            .filter(|e| EVENT_TYPES.contains(&e.event_type.as_str()))
            .collect();
        if !deliverable.is_empty() {
            let orgs = webhook_outbox::event_orgs(&mut tx, &deliverable).await?;
            webhook_outbox::insert_deliveries(&mut tx, &deliverable, &orgs, None).await?;
        }
        log::save_checkpoint(&mut *tx, CHECKPOINT, last).await?;
        tx.commit().await?;
        Ok(events.len())
    }

    /// One send step: attempts the deliveries due at `now` (at most one per
    /// endpoint: its oldest pending one), side by side.
    pub async fn send_once(&self, now: DateTime<Utc>) -> Result<Sent, WebhookError> {
        let clock = StepClock::starting_at(now);
        let mut claimed = Vec::new();
        while claimed.len() < SEND_BATCH {
            match self.claim(clock.now()).await? {
                Some(delivery) => claimed.push(delivery),
                None => break,
            }
        }
        let attempts = claimed.into_iter().map(|d| self.attempt(d, &clock));
        let mut sent = Sent::default();
        for result in futures_util::future::join_all(attempts).await {
            let one = result?;
            sent.succeeded += one.succeeded;
            sent.retrying += one.retrying;
            sent.failed += one.failed;
            sent.disabled += one.disabled;
        }
        Ok(sent)
    }

    /// Takes the next due delivery that heads its endpoint's queue.
    async fn claim(&self, now: DateTime<Utc>) -> Result<Option<Claimed>, sqlx::Error> {
        sqlx::query_as(
            "update webhook_deliveries d
             set attempts = d.attempts + 1, next_attempt_at = $2,
                 first_attempt_at = coalesce(d.first_attempt_at, $1), last_attempt_at = $1
             from webhook_endpoints w
             where w.id = d.endpoint_id and d.id = (
                 select p.id from webhook_deliveries p join webhook_endpoints e on e.id = p.endpoint_id
                 where p.status = 'pending' and p.next_attempt_at <= $1 and not e.disabled
                   and not exists (select 1 from webhook_deliveries q
                                   where q.endpoint_id = p.endpoint_id and q.status = 'pending' and q.seq < p.seq)
                 order by p.next_attempt_at, p.seq limit 1
                 for update of p skip locked)
             returning d.id, d.endpoint_id, w.org_id, d.event_id, d.attempts, d.first_attempt_at, w.url,
                       w.description, w.secret_nonce, w.secret_sealed",
        )
        .bind(now)
        .bind(now + LEASE)
        .fetch_optional(&self.pool)
        .await
    }

    async fn attempt(&self, delivery: Claimed, clock: &StepClock) -> Result<Sent, WebhookError> {
        let started = std::time::Instant::now();
        let attempted_at = clock.now();
        let outcome = self.deliver(&delivery, attempted_at).await?;
        let duration_ms = i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);
        self.record(&delivery, attempted_at, outcome, duration_ms, clock.now())
            .await
    }

    /// Builds, signs and sends the delivery's request.
    async fn deliver(&self, delivery: &Claimed, now: DateTime<Utc>) -> Result<Outcome, sqlx::Error> {
        let failed = |error: String| Outcome::Failed { status: None, error };
        let Some(body) = payload(&self.pool, delivery.event_id).await? else {
            return Ok(failed("the event is no longer in the log".into()));
        };
        let Some(secret) = WebhookSecret::open(
            &self.hash_key,
            &delivery.endpoint_id,
            &delivery.secret_nonce,
            &delivery.secret_sealed,
        ) else {
            return Ok(failed(
                "the endpoint's signing secret cannot be opened (was KEYLEDGER_HASH_KEY changed?)".into(),
            ));
        };
        let url = match WebhookUrl::parse(&delivery.url, self.client.allows_private()) {
            Ok(url) => url,
            Err(problem) => return Ok(failed(format!("refused: the URL {problem}"))),
        };
        let id = delivery.event_id.to_string();
        let timestamp = now.timestamp();
        let headers = [
            ("webhook-id", id.clone()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", secret.sign(&id, timestamp, &body)),
        ];
        Ok(match self.client.post(&url, &headers, &body).await {
            Ok(status) if (200..300).contains(&status) => Outcome::Succeeded(status),
            Ok(status) if (300..400).contains(&status) => Outcome::Failed {
                status: Some(status),
                error: format!("answered {status}: redirects are not followed"),
            },
            Ok(status) => Outcome::Failed {
                status: Some(status),
                error: format!("answered {status}"),
            },
            Err(SendError::Forbidden(reason)) => failed(format!("refused: {reason}")),
            Err(SendError::Failed(reason)) => failed(reason),
        })
    }

    /// Records the attempt and where the delivery and its endpoint stand,
    /// in one transaction — while this worker's claim holds.
    async fn record(
        &self,
        delivery: &Claimed,
        attempted_at: DateTime<Utc>,
        outcome: Outcome,
        duration_ms: i32,
        now: DateTime<Utc>,
    ) -> Result<Sent, WebhookError> {
        let mut sent = Sent::default();
        let (status_code, error) = match &outcome {
            Outcome::Succeeded(code) => (Some(*code), None),
            Outcome::Failed { status, error } => (*status, Some(error.clone())),
        };
        let (state, next_attempt_at) = match &outcome {
            Outcome::Succeeded(_) => {
                sent.succeeded = 1;
                ("succeeded", now)
            }
            Outcome::Failed { .. } => {
                let retry_at = now + self.backoff(delivery.attempts);
                if retry_at - delivery.first_attempt_at > RETRY_WINDOW {
                    sent.failed = 1;
                    ("failed", now)
                } else {
                    sent.retrying = 1;
                    ("pending", retry_at)
                }
            }
        };
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "update webhook_deliveries set status = $3, next_attempt_at = $4, last_status_code = $5, last_error = $6
             where id = $1 and attempts = $2 and status = 'pending'",
        )
        .bind(&delivery.id)
        .bind(delivery.attempts)
        .bind(state)
        .bind(next_attempt_at)
        .bind(status_code.map(i32::from))
        .bind(&error)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            tracing::warn!(delivery = %delivery.id, "the delivery's claim lapsed; another worker holds it now");
            return Ok(Sent::default());
        }
        sqlx::query(
            "insert into webhook_attempts (delivery_id, attempt, attempted_at, status_code, error, duration_ms)
             values ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&delivery.id)
        .bind(delivery.attempts)
        .bind(attempted_at)
        .bind(status_code.map(i32::from))
        .bind(&error)
        .bind(duration_ms)
        .execute(&mut *tx)
        .await?;
        match &outcome {
            Outcome::Succeeded(status) => {
                sqlx::query("update webhook_endpoints set failing_since = null where id = $1")
                    .bind(&delivery.endpoint_id)
                    .execute(&mut *tx)
                    .await?;
                tracing::info!(delivery = %delivery.id, endpoint = %delivery.endpoint_id, status, "webhook delivered");
            }
            Outcome::Failed { error, .. } => {
                let failing_since: DateTime<Utc> = sqlx::query_scalar(
                    "update webhook_endpoints set failing_since = coalesce(failing_since, $2)
                     where id = $1 returning failing_since",
                )
                .bind(&delivery.endpoint_id)
                .bind(attempted_at)
                .fetch_one(&mut *tx)
                .await?;
                tracing::warn!(delivery = %delivery.id, endpoint = %delivery.endpoint_id,
                               attempts = delivery.attempts, %error, outcome = state, "webhook attempt failed");
                if now - failing_since >= DISABLE_AFTER
                    && self.disable(&mut tx, delivery, failing_since, error, now).await?
                {
                    sent.disabled = 1;
                }
            }
        }
        tx.commit().await?;
        Ok(sent)
    }

    /// Disables the endpoint (unless it is already) and raises the alert
    /// that tells the organization; true when it was enabled.
    async fn disable(
        &self,
        tx: &mut sqlx::PgConnection,
        delivery: &Claimed,
        failing_since: DateTime<Utc>,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, sqlx::Error> {
        let disabled = sqlx::query(
            "update webhook_endpoints set disabled = true, disabled_reason = 'failing', updated_at = $2,
                    updated_by = 'system:webhooks'
             where id = $1 and not disabled",
        )
        .bind(&delivery.endpoint_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if disabled.rows_affected() == 0 {
            return Ok(false);
        }
        tracing::warn!(endpoint = %delivery.endpoint_id, %failing_since, "webhook endpoint disabled after 5 days of failures");
        let Some(org) = read_model::org_by_id(&mut *tx, delivery.org_id).await? else {
            return Ok(true);
        };
        let mut blocks = vec![
            Block::Paragraph(format!(
                "keyledger stopped sending events to the webhook endpoint {} ({}): every delivery to it has \
                 failed since {}.",
                delivery.url,
                delivery.endpoint_id,
                representation::rfc3339(failing_since)
            )),
            Block::Paragraph(format!("The last attempt: {error}.")),
        ];
        if !delivery.description.is_empty() {
            blocks.insert(
                1,
                Block::Paragraph(format!("Its description: {}", delivery.description)),
            );
        }
        blocks.push(Block::Paragraph(
            "Once the endpoint answers again, enable it (PATCH /v1/webhooks/{id} with \"disabled\": false, or \
             on the portal's Webhooks page): events held back are then delivered in order, and a replay \
             (POST /v1/webhooks/{id}/replay) sends again those whose deliveries failed."
                .into(),
        ));
        let email = compose(
            "A webhook endpoint was disabled after 5 days of failed deliveries",
            &blocks,
        );
        let period = format!("{}:{}", delivery.endpoint_id, now.timestamp());
        let alert = NewAlert::to_org(AlertKind::WebhookDisabled, &org, None, period, email);
        alerts::raise(tx, &alert, now).await?;
        Ok(true)
    }

    /// The wait after the `attempts`-th failed attempt.
    fn backoff(&self, attempts: i32) -> chrono::Duration {
        let doublings = u32::try_from(attempts.saturating_sub(1)).unwrap_or(0).min(20);
        let wait = self.first_backoff.saturating_mul(1 << doublings).min(MAX_BACKOFF);
        chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::hours(1))
    }

    /// Enqueues and sends until shutdown: enqueueing on each append's
    /// notification (and every second), sending every second; each at once
    /// while there is more, and backing off (up to 32 s) after failures.
    pub async fn run(self, shutdown: Shutdown) {
        tracing::info!(
            allow_private = self.client.allows_private(),
            "webhook deliveries started"
        );
        let schedule = Schedule::every(POLL).doubling_up_to(5);
        let enqueue = async {
            let listener = wake::listen(&self.pool).await;
            run_loop(&shutdown, schedule, listener, Enqueueing(&self)).await
        };
        tokio::join!(enqueue, run_loop(&shutdown, schedule, NoWake, Sending(&self)));
    }
}

/// The enqueueing half of [`Webhooks::run`].
struct Enqueueing<'a>(&'a Webhooks);

impl Task for Enqueueing<'_> {
    type Error = WebhookError;

    async fn step(&mut self) -> Result<Progress, WebhookError> {
        Ok(match self.0.enqueue_once().await? {
            0 => Progress::Idle,
            _ => Progress::Worked,
        })
    }

    fn failed(&mut self, error: WebhookError, _: u32) {
        tracing::error!(error = %error, "webhook enqueue step failed; retrying");
    }
}

/// The sending half of [`Webhooks::run`].
struct Sending<'a>(&'a Webhooks);

impl Task for Sending<'_> {
    type Error = WebhookError;

    async fn step(&mut self) -> Result<Progress, WebhookError> {
        Ok(match self.0.send_once(Utc::now()).await?.attempts() {
            0 => Progress::Idle,
            _ => Progress::Worked,
        })
    }

    fn failed(&mut self, error: WebhookError, failures: u32) {
        tracing::error!(error = %error, failures, "webhook send step failed");
    }
}

/// The body of a delivery of `event_id`: `{"type", "timestamp", "data"}` —
/// the key as that event left it (the key object, never a hash or a
/// secret), or the alert. `None` if the event is not in the log.
pub async fn payload(pool: &PgPool, event_id: uuid::Uuid) -> Result<Option<Vec<u8>>, sqlx::Error> {
    let Some(event) = log::read_event(pool, event_id).await? else {
        return Ok(None);
    };
    let data = match event.stream_id.strip_prefix("key-") {
        Some(key_id) => key_as_of(pool, key_id, &event).await?,
        None if event.event_type == ALERT_RAISED => alert_object(&event),
        None => Value::Null,
    };
    let body = json!({
        "type": event.event_type,
        "timestamp": representation::rfc3339(event.occurred_at),
        "data": data,
    });
    Ok(Some(serde_json::to_vec(&body).expect("JSON serializes")))
}

/// The key object as of `event` (its stream replayed up to the event's
/// version); `last_used_at` is the newest the read model knows.
async fn key_as_of(pool: &PgPool, key_id: &str, event: &StoredEvent) -> Result<Value, sqlx::Error> {
    let stream = log::read_stream_without_usage(pool, &event.stream_id, None).await?;
    let mut decoded = Vec::new();
    for stored in stream.iter().filter(|e| e.version <= event.version) {
        match stored.decode::<KeyEvent>() {
            Ok(e) => decoded.push(e),
            // An event this build cannot read changes nothing it knows of.
            Err(e) => tracing::warn!(event = %stored.event_id, error = %e, "skipped in a webhook's key object"),
        }
    }
    let Some(key) = ApiKey::replay(&decoded) else {
        return Ok(json!({"id": key_id, "object": "api_key"}));
    };
    let mut row = KeyRow::from_aggregate(&key, event.version);
    row.last_used_at = read_model::last_used_at(pool, key.id).await?;
    let mut object = representation::key_object(&row, event.occurred_at);
    if key.deleted {
        object["status"] = json!("deleted");
    }
    Ok(object)
}

/// An alert as a webhook shows it.
fn alert_object(event: &StoredEvent) -> Value {
    let field = |name: &str| event.data.get(name).cloned().unwrap_or(Value::Null);
    json!({
        "id": field("alert_id"),
        "object": "alert",
        "kind": field("kind"),
        "org_id": field("org_id"),
        "key_id": field("key_id"),
        "period": field("period"),
        "subject": field("subject"),
        "raised_at": field("raised_at"),
    })
}
