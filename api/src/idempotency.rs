//! `Idempotency-Key` on `POST /v1/keys` and `POST /v1/keys/{id}/regenerate`:
//! a client that did not get an answer retries with the same header and
//! body and gets the first outcome instead of a second key or a second new
//! secret.
//!
//! A record is scoped to the organization, the operation and its path (the
//! key id of a regenerate), and is written in the same transaction as the
//! command's events: it exists exactly when the command committed. It keeps
//! the answer without the secret (which is never stored), so a replayed
//! success says `"key": null, "secret_unavailable": true`; the caller
//! regenerates if it never saw the secret.
//!
//! - The transaction claims the record before deciding: a retry that
//!   arrives while the first request runs waits on that row (up to
//!   [`WAIT`]), then answers the first outcome; still running after that:
//!   `409 conflict` with `Retry-After: 1`.
//! - Only successes are recorded. A refusal (4xx) rolls the transaction
//!   back, record included: it changed nothing, so a retry is decided anew.
//! - The same header with another body within [`RETENTION_HOURS`] is a 422.
//! - Records older than that count as absent; each claim deletes a bounded
//!   number of its organization's expired records.

use actix_web::HttpRequest;
use chrono::{DateTime, Duration, Utc};
use keyledger_events::domain::OrgId;
use serde_json::{json, Map, Value};
use sqlx::PgConnection;

use crate::error::ApiError;

pub const HEADER: &str = "idempotency-key";
/// How long a record answers retries.
pub const RETENTION_HOURS: i64 = 24;
/// How long a retry waits for a running request with the same key.
pub const WAIT: &str = "2s";
/// Longest key accepted.
pub const MAX_LEN: usize = 255;
/// Expired records one claim deletes at most.
const PURGE_BATCH: i64 = 100;

/// A well-formed `Idempotency-Key`: 1–255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(text: &str) -> Result<IdempotencyKey, String> {
        if text.is_empty() || text.len() > MAX_LEN {
            return Err(format!("must be 1 to {MAX_LEN} characters long"));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("may hold only visible ASCII characters (no spaces or control characters)".into());
        }
        Ok(IdempotencyKey(text.to_owned()))
    }

    /// The request's key, if it sent one. A malformed or repeated header is
    /// a `400 bad_request`: the request is refused before anything runs.
    pub fn from_request(req: &HttpRequest) -> Result<Option<IdempotencyKey>, ApiError> {
        let mut values = req.headers().get_all(HEADER);
        let Some(value) = values.next() else {
            return Ok(None);
        };
        let bad = |problem: &str| ApiError::BadRequest(format!("The Idempotency-Key header {problem}."));
        if values.next().is_some() {
            return Err(bad("must be sent once"));
        }
        let text = value
            .to_str()
            .map_err(|_| bad("may hold only visible ASCII characters"))?;
        IdempotencyKey::parse(text).map(Some).map_err(|problem| bad(&problem))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The operation a record is scoped to: the request's method and path
/// (`POST /v1/keys`, `POST /portal/keys/key_01…/regenerate`).
pub fn operation(req: &HttpRequest) -> String {
    format!("{} {}", req.method(), req.path())
}

/// One request made with an `Idempotency-Key`.
#[derive(Debug, Clone)]
pub struct Idempotent {
    org_id: OrgId,
    /// Method and path, e.g. `POST /v1/keys/key_01…/regenerate`.
    operation: String,
    key: IdempotencyKey,
    /// blake3 of the body as canonical JSON (keys sorted, no whitespace):
    /// the same fields in another order or layout are the same body.
    fingerprint: [u8; 32],
}

impl Idempotent {
    pub fn new(org_id: OrgId, operation: String, key: IdempotencyKey, body: &Map<String, Value>) -> Idempotent {
        Idempotent {
            org_id,
            operation,
            key,
            fingerprint: fingerprint(body),
        }
    }
}

/// The body's fingerprint. `serde_json`'s map keeps keys sorted, so the
/// serialization is canonical.
pub fn fingerprint(body: &Map<String, Value>) -> [u8; 32] {
    let canonical = serde_json::to_vec(body).expect("JSON serializes");
    *blake3::hash(&canonical).as_bytes()
}

/// The answer a request with this key got the first time.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub status: u16,
    /// The answer's body, without the secret.
    pub body: Value,
}

impl Recorded {
    /// The body of a replay: the first answer, saying the secret is gone.
    pub fn replay_body(&self) -> Value {
        let mut body = self.body.clone();
        if let Some(object) = body.as_object_mut() {
            object.insert("key".into(), Value::Null);
            object.insert("secret_unavailable".into(), json!(true));
        }
        body
    }
}

/// What a claim found.
#[derive(Debug)]
pub enum Claim {
    /// No live record: this request runs, and its record commits with it.
    Fresh,
    /// The same request succeeded before: answer this.
    Replay(Recorded),
    /// The key was used with another body.
    Mismatch,
}

/// Claims the key inside the command's transaction (`now` is the request's
/// time). Waits up to [`WAIT`] for a running request with the same key.
pub async fn claim(tx: &mut PgConnection, request: &Idempotent, now: DateTime<Utc>) -> Result<Claim, ApiError> {
    let expired_before = now - Duration::hours(RETENTION_HOURS);
    sqlx::query(
        "delete from idempotency_keys where ctid in (
             select ctid from idempotency_keys where org_id = $1 and created_at <= $2
             limit $3 for update skip locked)",
    )
    .bind(request.org_id)
    .bind(expired_before)
    .bind(PURGE_BATCH)
    .execute(&mut *tx)
    .await?;
    sqlx::query(&format!("set local lock_timeout = '{WAIT}'"))
        .execute(&mut *tx)
        .await?;
    // A new row, or an expired one taken over; a live one is left alone.
    // Either way the row stays locked until this transaction ends, so a
    // concurrent request with the same key waits here for its outcome.
    let claimed = sqlx::query_scalar::<_, i32>(
        "insert into idempotency_keys (org_id, operation, idempotency_key, request_hash, status, response, created_at)
         values ($1, $2, $3, $4, 0, 'null', $5)
         on conflict (org_id, operation, idempotency_key) do update
             set request_hash = excluded.request_hash, status = 0, response = 'null', created_at = excluded.created_at
             where idempotency_keys.created_at <= $6
         returning 1",
    )
    .bind(request.org_id)
    .bind(&request.operation)
    .bind(request.key.as_str())
    .bind(&request.fingerprint[..])
    .bind(now)
    .bind(expired_before)
    .fetch_optional(&mut *tx)
    .await;
    let claimed = match claimed {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => return Err(ApiError::InProgress),
        other => other?,
    };
    sqlx::query("set local lock_timeout to default")
        .execute(&mut *tx)
        .await?;
    if claimed.is_some() {
        return Ok(Claim::Fresh);
    }
    let (hash, status, body): (Vec<u8>, i16, Value) = sqlx::query_as(
        "select request_hash, status, response from idempotency_keys
         where org_id = $1 and operation = $2 and idempotency_key = $3",
    )
    .bind(request.org_id)
    .bind(&request.operation)
    .bind(request.key.as_str())
    .fetch_one(&mut *tx)
    .await?;
    if hash != request.fingerprint {
        return Ok(Claim::Mismatch);
    }
    Ok(Claim::Replay(Recorded {
        status: status as u16,
        body,
    }))
}

/// Records the answer (without its secret) of a claimed request, in its
/// transaction, before it commits.
pub async fn record(tx: &mut PgConnection, request: &Idempotent, status: u16, body: &Value) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update idempotency_keys set status = $4, response = $5
         where org_id = $1 and operation = $2 and idempotency_key = $3",
    )
    .bind(request.org_id)
    .bind(&request.operation)
    .bind(request.key.as_str())
    .bind(status as i16)
    .bind(body)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The field [`mismatch`] names.
const MISMATCH_FIELD: &str = "Idempotency-Key";

/// The answer to a request whose key was used with another body.
pub fn mismatch() -> ApiError {
    ApiError::invalid(
        MISMATCH_FIELD,
        "was already used with a different request body in the last 24 hours: use a new key for a new request",
    )
}

/// Whether `error` is [`mismatch`]'s answer.
pub fn is_mismatch(error: &ApiError) -> bool {
    matches!(error, ApiError::Validation(details) if details.0.contains_key(MISMATCH_FIELD))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_one_to_255_visible_characters() {
        assert!(IdempotencyKey::parse("a").is_ok());
        assert!(IdempotencyKey::parse("0d4b1a2c-retry:1/x").is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
        assert!(IdempotencyKey::parse("two words").is_err());
        assert!(IdempotencyKey::parse("tab\there").is_err());
        assert!(IdempotencyKey::parse("clé").is_err());
    }

    #[test]
    fn the_same_fields_in_another_order_are_the_same_body() {
        let a: Map<String, Value> = serde_json::from_str(r#"{"name": "n", "type": "secret"}"#).unwrap();
        let b: Map<String, Value> = serde_json::from_str(r#"{"type":"secret","name":"n"}"#).unwrap();
        let c: Map<String, Value> = serde_json::from_str(r#"{"type":"secret","name":"m"}"#).unwrap();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&c));
    }

    #[test]
    fn a_replay_says_the_secret_is_unavailable() {
        let recorded = Recorded {
            status: 201,
            body: json!({"id": "key_1", "object": "api_key"}),
        };
        let body = recorded.replay_body();
        assert_eq!(body["id"], "key_1");
        assert_eq!(body["key"], Value::Null);
        assert_eq!(body["secret_unavailable"], true);
    }
}
