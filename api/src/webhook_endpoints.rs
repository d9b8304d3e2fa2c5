//! The operations on an organization's webhook endpoints, shared by the JSON
//! API (`webhooks.rs`) and the portal: create (the signing secret is made
//! here, sealed for storage and shown once), list, read, change, delete, the
//! delivery log and replay. Every rule is in the domain
//! (`keyledger_events::domain::webhook`) or here, so both surfaces obey the
//! same ones.
//!
//! Endpoints are rows, not an event-sourced aggregate: the signing secret
//! must never enter the event log (kept forever and published to Kafka),
//! and an endpoint configures delivery rather than governing keys. Each row
//! records who created it and who changed it last; the delivery log records
//! what was sent.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use keyledger_events::domain::webhook::{self, EventFilter, WebhookSecret, WebhookUrl};
use keyledger_events::domain::{DeliveryId, ValidationDetails, WebhookId};
use keyledger_events::representation::rfc3339;
use keyledger_events::webhook_outbox;
use serde_json::{json, Value};

use crate::clock;
use crate::manage::Caller;
use crate::{error::ApiError, AppState};

/// Advisory-lock namespace of the per-organization endpoint quota (the
/// two-key form): `(WEBHOOK_QUOTA_LOCK, hashtext(org_id))`.
pub const WEBHOOK_QUOTA_LOCK: i32 = 0x6b6c_7768;
/// How far back a replay may reach.
pub const MAX_REPLAY_AGE: chrono::Duration = chrono::Duration::days(30);
/// How long a create or change waits for the URL's host to resolve.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

const COLUMNS: &str = "id, org_id, url, events, description, disabled, disabled_reason, failing_since, created_at,
     updated_at, created_by, updated_by";

/// An endpoint as the API shows it (never its secret).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Endpoint {
    pub id: String,
    pub org_id: String,
    pub url: String,
    pub events: Vec<String>,
    pub description: String,
    pub disabled: bool,
    /// `user` or `failing` while disabled.
    pub disabled_reason: Option<String>,
    /// Since when every attempt has failed (null: the last one succeeded).
    pub failing_since: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_by: String,
}

impl Endpoint {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "webhook_endpoint",
            "url": self.url,
            "events": self.events,
            "description": self.description,
            "disabled": self.disabled,
            "disabled_reason": self.disabled_reason,
            "failing_since": self.failing_since.map(rfc3339),
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
            "org_id": self.org_id,
        })
    }
}

/// An endpoint to create, as the user gave it.
pub struct NewEndpoint {
    pub url: String,
    /// Absent: every type (`["*"]`).
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
}

/// A change to an endpoint: only what is given changes.
#[derive(Default)]
pub struct EndpointChange {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
    pub disabled: Option<bool>,
}

/// An endpoint id from a path; a malformed one is simply not found.
pub fn endpoint_id(text: &str) -> Result<WebhookId, ApiError> {
    text.parse().map_err(|_| ApiError::NotFound)
}

/// The URL, checked as its owner typed it: the domain's rules, then the
/// addresses its host resolves to now (a name that resolves to a forbidden
/// address is refused; one that does not resolve yet is accepted — the
/// sender checks again at every connection, which is what protects).
async fn checked_url(state: &AppState, text: &str, details: &mut ValidationDetails) -> Option<WebhookUrl> {
    let allow_private = state.settings.webhook_allow_private;
    let url = match WebhookUrl::parse(text, allow_private) {
        Ok(url) => url,
        Err(problem) => {
            details.add("url", problem);
            return None;
        }
    };
    if allow_private || url.host_ip().is_some() {
        return Some(url);
    }
    let lookup = tokio::net::lookup_host((url.host(), url.port()));
    if let Ok(Ok(addresses)) = tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
        let ips: Vec<IpAddr> = addresses.map(|a| a.ip()).collect();
        if let Some((ip, reason)) = ips.iter().find_map(|ip| webhook::forbidden(*ip).map(|r| (ip, r))) {
            details.add(
                "url",
                format!("resolves to {ip}, a {reason} address; set KEYLEDGER_WEBHOOK_ALLOW_PRIVATE=true to allow it"),
            );
            return None;
        }
    }
    Some(url)
}

fn checked_events(events: &[String], details: &mut ValidationDetails) -> Option<EventFilter> {
    EventFilter::parse(events).map_err(|p| details.add("events", p)).ok()
}

fn checked_description(text: &str, details: &mut ValidationDetails) -> Option<String> {
    webhook::parse_description(text)
        .map_err(|p| details.add("description", p))
        .ok()
}

fn random<const N: usize>() -> Result<[u8; N], ApiError> {
    let mut bytes = [0u8; N];
    getrandom::getrandom(&mut bytes).map_err(|e| ApiError::internal(std::io::Error::other(e.to_string())))?;
    Ok(bytes)
}

/// Creates an endpoint; answers it with its signing secret (`whsec_…`),
/// which exists nowhere else in the clear.
pub async fn create(state: &AppState, caller: &Caller, new: NewEndpoint) -> Result<(Endpoint, String), ApiError> {
    let mut details = ValidationDetails::default();
    let url = checked_url(state, &new.url, &mut details).await;
    let events = checked_events(
        &new.events.unwrap_or_else(|| vec![webhook::ALL_EVENTS.into()]),
        &mut details,
    );
    let description = checked_description(new.description.as_deref().unwrap_or(""), &mut details);
    let (Some(url), Some(events), Some(description)) = (url, events, description) else {
        return Err(ApiError::Validation(details));
    };
    let id = WebhookId::new().to_string();
    let secret = WebhookSecret::from_bytes(random::<32>()?);
    let nonce = random::<12>()?;
    let sealed = secret.seal(&state.hash_key, &id, nonce);
    let now = clock::now();
    let mut tx = state.database.read(state.pool.begin()).await?;
    hold_quota(
        &mut tx,
        &caller.org_id().to_string(),
        state.settings.max_webhooks_per_org,
    )
    .await?;
    let endpoint: Endpoint = sqlx::query_as(&format!(
        "insert into webhook_endpoints (id, org_id, url, events, description, secret_nonce, secret_sealed,
                                        created_at, updated_at, created_by, updated_by)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $9) returning {COLUMNS}"
    ))
    .bind(&id)
    .bind(caller.org_id())
    .bind(url.as_str())
    .bind(events.as_list())
    .bind(&description)
    .bind(&nonce[..])
    .bind(&sealed)
    .bind(now)
    .bind(caller.actor())
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(endpoint = %endpoint.id, org = %endpoint.org_id, actor = %caller.actor(), "webhook endpoint created");
    Ok((endpoint, secret.expose()))
}

/// Refuses a new endpoint when the organization has `max` already;
/// concurrent creations in one organization are counted one after the other.
async fn hold_quota(tx: &mut sqlx::PgConnection, org_id: &str, max: u64) -> Result<(), ApiError> {
    sqlx::query("select pg_advisory_xact_lock($1, hashtext($2))")
        .bind(WEBHOOK_QUOTA_LOCK)
        .bind(org_id)
        .execute(&mut *tx)
        .await?;
    let count: i64 = sqlx::query_scalar("select count(*) from webhook_endpoints where org_id = $1")
        .bind(org_id)
        .fetch_one(&mut *tx)
        .await?;
    if count as u64 >= max {
        return Err(ApiError::QuotaExceeded(format!(
            "This organization is at its quota of {max} webhook endpoints (quota: webhook endpoints per \
             organization, KEYLEDGER_MAX_WEBHOOKS_PER_ORG). Delete endpoints it no longer uses, or ask the \
             operator to raise the quota."
        )));
    }
    Ok(())
}

/// The organization's endpoints, newest first (all of them: at most the quota).
pub async fn list(state: &AppState, caller: &Caller) -> Result<Vec<Endpoint>, ApiError> {
    state
        .database
        .read(
            sqlx::query_as(&format!(
                "select {COLUMNS} from webhook_endpoints where org_id = $1 order by id desc"
            ))
            .bind(caller.org_id())
            .fetch_all(&state.pool),
        )
        .await
}

pub async fn get(state: &AppState, caller: &Caller, id: WebhookId) -> Result<Endpoint, ApiError> {
    state
        .database
        .read(
            sqlx::query_as(&format!(
                "select {COLUMNS} from webhook_endpoints where id = $1 and org_id = $2"
            ))
            .bind(id.to_string())
            .bind(caller.org_id())
            .fetch_optional(&state.pool),
        )
        .await?
        .ok_or(ApiError::NotFound)
}

/// Changes what is given. Enabling clears the failure streak (the endpoint
/// gets 5 more days); events that arrived while it was disabled are not
/// delivered (replay them).
pub async fn update(
    state: &AppState,
    caller: &Caller,
    id: WebhookId,
    change: EndpointChange,
) -> Result<Endpoint, ApiError> {
    let mut details = ValidationDetails::default();
    let url = match &change.url {
        Some(text) => checked_url(state, text, &mut details)
            .await
            .map(|u| Some(u.as_str().to_owned())),
        None => Some(None),
    };
    let events = match &change.events {
        Some(list) => checked_events(list, &mut details).map(|e| Some(e.as_list().to_vec())),
        None => Some(None),
    };
    let description = match &change.description {
        Some(text) => checked_description(text, &mut details).map(Some),
        None => Some(None),
    };
    let (Some(url), Some(events), Some(description)) = (url, events, description) else {
        return Err(ApiError::Validation(details));
    };
    state
        .database
        .read(
            sqlx::query_as(&format!(
                "update webhook_endpoints set url = coalesce($3, url), events = coalesce($4, events),
                        description = coalesce($5, description),
                        disabled = coalesce($6, disabled),
                        disabled_reason = case when $6 is null then disabled_reason when $6 then
                                              case when disabled then disabled_reason else 'user' end end,
                        failing_since = case when $6 = false then null else failing_since end,
                        updated_at = $7, updated_by = $8
                 where id = $1 and org_id = $2 returning {COLUMNS}"
            ))
            .bind(id.to_string())
            .bind(caller.org_id())
            .bind(url)
            .bind(events)
            .bind(description)
            .bind(change.disabled)
            .bind(clock::now())
            .bind(caller.actor())
            .fetch_optional(&state.pool),
        )
        .await?
        .ok_or(ApiError::NotFound)
}

/// Deletes the endpoint with its deliveries and their log.
pub async fn delete(state: &AppState, caller: &Caller, id: WebhookId) -> Result<(), ApiError> {
    let deleted = state
        .database
        .read(
            sqlx::query("delete from webhook_endpoints where id = $1 and org_id = $2")
                .bind(id.to_string())
                .bind(caller.org_id())
                .execute(&state.pool),
        )
        .await?;
    if deleted.rows_affected() == 0 {
        return Err(ApiError::NotFound);
    }
    tracing::info!(endpoint = %id, actor = %caller.actor(), "webhook endpoint deleted");
    Ok(())
}

/// One delivery with its attempts, as the delivery log shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Delivery {
    pub id: String,
    pub endpoint_id: String,
    pub event_id: uuid::Uuid,
    pub event_type: String,
    pub status: String,
    pub replay: bool,
    pub attempts: i32,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub next_attempt_at: DateTime<Utc>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    #[sqlx(skip)]
    pub attempt_log: Vec<Attempt>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Attempt {
    pub delivery_id: String,
    pub attempt: i32,
    pub attempted_at: DateTime<Utc>,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: i32,
}

impl Delivery {
    /// When the next attempt is due (only while pending and not claimed).
    pub fn next_retry_at(&self) -> Option<DateTime<Utc>> {
        (self.status == "pending").then_some(self.next_attempt_at)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "webhook_delivery",
            "endpoint_id": self.endpoint_id,
            "event_id": self.event_id,
            "type": self.event_type,
            "status": self.status,
            "replay": self.replay,
            "attempt_count": self.attempts,
            "status_code": self.last_status_code,
            "error": self.last_error,
            "created_at": rfc3339(self.created_at),
            "last_attempt_at": self.last_attempt_at.map(rfc3339),
            "next_retry_at": self.next_retry_at().map(rfc3339),
            "attempts": self.attempt_log.iter().map(|a| json!({
                "attempt": a.attempt,
                "attempted_at": rfc3339(a.attempted_at),
                "status_code": a.status_code,
                "error": a.error,
                "duration_ms": a.duration_ms,
            })).collect::<Vec<_>>(),
        })
    }
}

/// One page of the endpoint's delivery log, newest first (each delivery
/// with its attempts, oldest first), and the cursor of the next page.
pub async fn deliveries(
    state: &AppState,
    caller: &Caller,
    id: WebhookId,
    limit: i64,
    before: Option<DeliveryId>,
) -> Result<(Vec<Delivery>, Option<String>), ApiError> {
    let endpoint = get(state, caller, id).await?;
    let mut page: Vec<Delivery> = state
        .database
        .read(
            sqlx::query_as(
                "select id, endpoint_id, event_id, event_type, status, replay, attempts, last_status_code, last_error,
                        next_attempt_at, last_attempt_at, created_at
                 from webhook_deliveries where endpoint_id = $1 and ($2::text is null or id < $2)
                 order by id desc limit $3",
            )
            .bind(&endpoint.id)
            .bind(before.map(|b| b.to_string()))
            .bind(limit + 1)
            .fetch_all(&state.pool),
        )
        .await?;
    let next_cursor = (page.len() as i64 > limit).then(|| page[limit as usize - 1].id.clone());
    page.truncate(limit as usize);
    let ids: Vec<&str> = page.iter().map(|d| d.id.as_str()).collect();
    let attempts: Vec<Attempt> = sqlx::query_as(
        "select delivery_id, attempt, attempted_at, status_code, error, duration_ms
         from webhook_attempts where delivery_id = any($1) order by delivery_id, attempt",
    )
    .bind(&ids)
    .fetch_all(&state.pool)
    .await?;
    for attempt in attempts {
        if let Some(delivery) = page.iter_mut().find(|d| d.id == attempt.delivery_id) {
            delivery.attempt_log.push(attempt);
        }
    }
    Ok((page, next_cursor))
}

/// Delivers again every event since `since` the endpoint subscribes to (new
/// deliveries, after those already queued); returns how many.
pub async fn replay(state: &AppState, caller: &Caller, id: WebhookId, since: DateTime<Utc>) -> Result<u64, ApiError> {
    let now = clock::now();
    let mut details = ValidationDetails::default();
    if since > now {
        details.add("since", "must not be in the future");
    }
    if now - since > MAX_REPLAY_AGE {
        details.add(
            "since",
            format!("must be within the last {} days", MAX_REPLAY_AGE.num_days()),
        );
    }
    if !details.is_empty() {
        return Err(ApiError::Validation(details));
    }
    let endpoint = get(state, caller, id).await?;
    let mut tx = state.database.read(state.pool.begin()).await?;
    let made = webhook_outbox::replay(&mut tx, &caller.org_id().to_string(), &endpoint.id, since).await?;
    tx.commit().await?;
    tracing::info!(endpoint = %endpoint.id, deliveries = made, actor = %caller.actor(), "webhook replay queued");
    Ok(made)
}
