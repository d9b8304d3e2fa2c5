//! `POST /v1/leaks`: leaked-key reports from secret scanners, in GitHub's
//! secret scanning partner format.
//!
//! A report is a JSON array of matches (`{"token", "type", "url",
//! "source"}`), signed with ECDSA P-256 over the raw body with SHA-256 (the
//! base64 DER signature in `Github-Public-Key-Signature`) by one of the
//! public keys the operator accepts (`KEYLEDGER_LEAK_REPORT_KEYS`: a file in
//! the format of GitHub's secret scanning public keys document), named in
//! `Github-Public-Key-Identifier`. The signature is checked on the raw body
//! before anything parses it: an unsigned or forged report is a 401 and
//! changes nothing; each one counts against its sender's address in the
//! guessing guard (20 a minute, then 429) and in its own metric, apart from
//! the reports whose signature checked.
//!
//! Each token that is a secret of a key of ours — well-formed, its checksum
//! right, its keyed hash that of a key not deleted (its current secret, or a
//! regenerated-away one still in its grace period, as the key's stream says
//! when the leak is appended) — is a `true_positive`: the key gets
//! `key.leaked` (recorded once per secret); a leaked current secret gets the
//! organization's leak action (`deactivate` in the same append, or
//! `notify`), a leaked previous one ends its grace; and an alert email to
//! its confirmed recipients is queued in the same transaction, with its
//! `alert.raised` event, and the mailer woken. Anything else — a retired
//! secret included — is a `false_positive` and changes nothing.
//!
//! The answer is GitHub's feedback format: one `{"token_hash", "token_type",
//! "label"}` per match, the token as its SHA-256 (hex) — never the token
//! itself.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use futures_util::StreamExt;
use keyledger_events::alert_outbox;
use keyledger_events::domain::key::{self, KeyLeaked, ReportLeak};
use keyledger_events::domain::{
    ApiKey, DomainError, KeyCommand, KeyEvent, KeyHash, KeyId, PlainKey, ValidationDetails,
};
use keyledger_events::handler::{self, HandlerError};
use keyledger_events::log::EventMeta;
use keyledger_events::read_model::{self, KeyRow};
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde::Deserialize;
use serde_json::json;
use sha2::Digest;

use crate::access::{self, guard_subject};
use crate::clock;
use crate::{error::ApiError, request_id, AppState};

/// Largest report accepted: GitHub batches many matches in one request.
pub const LEAK_BODY_LIMIT: usize = 1024 * 1024;
/// Most matches one report may hold.
pub const MAX_MATCHES: usize = 1_000;
/// The actor of the events a report causes.
pub const ACTOR: &str = "leak-report";
/// Attempts at recording one key's leak when other writers (usage flushes,
/// admins) append to its stream at the same time.
const ATTEMPTS: usize = 5;

/// Reports received, for `/metrics`: those whose signature checked and
/// those refused for their signature, each counted once — a forged report
/// never reaches the genuine reports' count, nor anything after the check.
#[derive(Debug, Default)]
pub struct LeakReportCounts {
    pub signed: AtomicU64,
    pub refused: AtomicU64,
}

/// The public keys whose signatures this deployment accepts, by identifier.
#[derive(Debug, Clone, Default)]
pub struct LeakReportKeys {
    keys: Vec<(String, VerifyingKey)>,
}

#[derive(Deserialize)]
struct KeysDocument {
    public_keys: Vec<PublicKeyEntry>,
}

#[derive(Deserialize)]
struct PublicKeyEntry {
    key_identifier: String,
    key: String,
}

impl LeakReportKeys {
    /// The keys of a file in the format of GitHub's secret scanning public
    /// keys document (`{"public_keys": [{"key_identifier", "key": "-----BEGIN
    /// PUBLIC KEY-----…", "is_current"}]}`).
    pub fn load(path: &Path) -> Result<LeakReportKeys, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        LeakReportKeys::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The keys of such a document. Every key must be an ECDSA P-256 public
    /// key in PEM; `is_current` is informational (a report signed by any
    /// listed key is accepted, as GitHub's rotation needs).
    pub fn parse(text: &str) -> Result<LeakReportKeys, String> {
        let document: KeysDocument = serde_json::from_str(text).map_err(|e| {
            format!(
                "not a public keys document ({e}); expected {{\"public_keys\": [{{\"key_identifier\": \"…\", \"key\": \
                 \"-----BEGIN PUBLIC KEY-----…\", \"is_current\": true}}]}}"
            )
        })?;
        if document.public_keys.is_empty() {
            return Err("the document lists no public key".into());
        }
        let mut keys = Vec::with_capacity(document.public_keys.len());
        for entry in document.public_keys {
            let key = VerifyingKey::from_public_key_pem(entry.key.trim()).map_err(|e| {
                format!(
                    "the key '{}' is not an ECDSA P-256 public key in PEM: {e}",
                    entry.key_identifier
                )
            })?;
            keys.push((entry.key_identifier, key));
        }
        Ok(LeakReportKeys { keys })
    }

    /// Checks `signature` (base64 of a DER ECDSA signature) over `body` with
    /// the key named `identifier`; what is wrong otherwise.
    pub fn verify(&self, identifier: Option<&str>, signature: Option<&str>, body: &[u8]) -> Result<(), String> {
        let identifier = identifier.ok_or("Github-Public-Key-Identifier is missing")?;
        let signature = signature.ok_or("Github-Public-Key-Signature is missing")?;
        let (_, key) = self
            .keys
            .iter()
            .find(|(id, _)| id == identifier)
            .ok_or("Github-Public-Key-Identifier names no key this deployment accepts")?;
        let der = base64::engine::general_purpose::STANDARD
            .decode(signature.trim())
            .map_err(|_| "Github-Public-Key-Signature is not base64")?;
        let signature =
            Signature::from_der(&der).map_err(|_| "Github-Public-Key-Signature is not a DER ECDSA signature")?;
        key.verify(body, &signature)
            .map_err(|_| "the signature does not match the body".to_owned())
    }
}

/// One match of a report. Fields GitHub may add later are ignored.
#[derive(Deserialize)]
struct Match {
    token: String,
    #[serde(rename = "type", default)]
    token_type: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    source: String,
}

/// A header's single value, if it is sent once as visible text.
fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    let mut values = req.headers().get_all(name);
    match (values.next(), values.next()) {
        (Some(value), None) => value.to_str().ok(),
        _ => None,
    }
}

async fn read_body(req: &HttpRequest, mut payload: web::Payload) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError::ReportTooLarge(format!(
            "A report may be at most {} KiB; send larger ones in parts.",
            LEAK_BODY_LIMIT / 1024
        ))
    };
    let declared = header(req, "content-length").and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > LEAK_BODY_LIMIT) {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("the body could not be read: {e}")))?;
        if bytes.len() + chunk.len() > LEAK_BODY_LIMIT {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// What a token turned out to be.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Label {
    TruePositive,
    FalsePositive,
}

impl Label {
    fn as_str(self) -> &'static str {
        match self {
            Label::TruePositive => "true_positive",
            Label::FalsePositive => "false_positive",
        }
    }
}

pub async fn report(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let Some(keys) = state.settings.leak_report_keys.clone() else {
        return Err(ApiError::LeakReportsNotConfigured);
    };
    // Forged reports count as failed attempts of their sender's address.
    let client = access::client_address(&req, &state.settings)?;
    let guard = client.map(guard_subject);
    let (limit, now) = (
        state.settings.failed_attempts_per_minute,
        clock::now().timestamp().max(0) as u64,
    );
    if let Some(address) = &guard {
        if state.failures.used(address, now) >= limit {
            let retry_after = state.failures.check(address, limit, now).retry_after;
            return Err(ApiError::TooManyFailedAttempts { retry_after });
        }
    }
    let body = read_body(&req, payload).await?;
    let identifier = header(&req, "github-public-key-identifier");
    // The signature first: nothing of an unsigned or forged body is parsed
    // or counted as a report.
    if let Err(why) = keys.verify(identifier, header(&req, "github-public-key-signature"), &body) {
        state.leak_reports.refused.fetch_add(1, Ordering::Relaxed);
        if let Some(address) = &guard {
            state.failures.check(address, limit, now);
        }
        return Err(ApiError::InvalidSignature(why));
    }
    state.leak_reports.signed.fetch_add(1, Ordering::Relaxed);
    let identifier = identifier.unwrap_or_default().to_owned();
    let matches: Vec<Match> = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Array(items)) => {
            serde_json::from_value(serde_json::Value::Array(items)).map_err(|e| {
                ApiError::invalid(
                    "body",
                    format!("each match must be {{\"token\", \"type\", \"url\", \"source\"}} with string values: {e}"),
                )
            })?
        }
        Ok(_) => return Err(ApiError::invalid("body", "must be a JSON array of matches")),
        Err(e) => return Err(ApiError::BadRequest(format!("The body is not valid JSON: {e}."))),
    };
    if matches.len() > MAX_MATCHES {
        let mut details = ValidationDetails::default();
        details.add(
            "body",
            format!(
                "at most {MAX_MATCHES} matches per report; this one has {}: send the rest in another",
                matches.len()
            ),
        );
        return Err(ApiError::Validation(details));
    }
    if state.database.is_down() {
        return Err(ApiError::Unavailable);
    }
    // Each distinct token once: the same token twice in a report is one leak.
    let mut labels: HashMap<&str, Label> = HashMap::new();
    for found in &matches {
        if labels.contains_key(found.token.as_str()) {
            continue;
        }
        let label = judge(&state, found, &identifier).await?;
        labels.insert(&found.token, label);
    }
    let answer: Vec<serde_json::Value> = matches
        .iter()
        .map(|found| {
            json!({
                "token_hash": hex_sha256(&found.token),
                "token_type": found.token_type,
                "label": labels.get(found.token.as_str()).copied().unwrap_or(Label::FalsePositive).as_str(),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(answer))
}

fn hex_sha256(text: &str) -> String {
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `found` is a secret of one of our keys, recording the leak if so.
async fn judge(state: &AppState, found: &Match, reporter: &str) -> Result<Label, ApiError> {
    let Ok((plain, _)) = PlainKey::parse(found.token.trim()) else {
        return Ok(Label::FalsePositive);
    };
    let hash = state.hash_key.hash(&plain);
    drop(plain);
    let now = clock::now();
    // The read model finds the key; which of its secrets this is (if still
    // one) the aggregate decides from the hash, on the stream as it is when
    // the leak is appended.
    let Some((row, _, _)) = state
        .database
        .read(read_model::key_for_verification(&state.pool, &hash, now))
        .await?
    else {
        return Ok(Label::FalsePositive);
    };
    let id = row.id;
    for attempt in 1..=ATTEMPTS {
        match record(state, id, &row, found, reporter, hash).await {
            Ok(recorded) => return Ok(recorded),
            Err(HandlerError::Concurrency) if attempt < ATTEMPTS => continue,
            Err(e) => return Err(e.into()),
        }
    }
    unreachable!("the last attempt returns")
}

/// Appends the leak (and the leak action) to the key's stream and queues
/// its alert, in one transaction; the cache forgets the key at once.
async fn record(
    state: &AppState,
    id: KeyId,
    row: &KeyRow,
    found: &Match,
    reporter: &str,
    key_hash: KeyHash,
) -> Result<Label, HandlerError> {
    let org = read_model::org_by_id(&state.pool, row.org_id)
        .await?
        .ok_or_else(|| HandlerError::Domain(DomainError::NotFound))?;
    let action = org.leak_action;
    let meta = EventMeta {
        actor: ACTOR.into(),
        request_id: Some(request_id::current()),
        occurred_at: clock::now(),
    };
    let command = KeyCommand::ReportLeak(Box::new(ReportLeak {
        url: found.url.clone(),
        source: found.source.clone(),
        token_type: found.token_type.clone(),
        reporter_key_id: reporter.to_owned(),
        key_hash,
        action,
    }));
    let stream = key::stream_id(id);
    let mut tx = state.pool.begin().await?;
    let decided = match handler::decide_on::<ApiKey>(&mut tx, &stream, command, &meta, |_| Ok(())).await {
        Ok(decided) => decided,
        // Deleted, regenerated away or the old secret's grace ended since it
        // was found: not a secret of ours any more.
        Err(HandlerError::Domain(DomainError::NotFound | DomainError::Conflict(_))) => return Ok(Label::FalsePositive),
        Err(e) => return Err(e),
    };
    let outcome = decided.append(&mut tx).await?;
    let leaked = outcome.events.iter().find(|e| e.event_type == "key.leaked");
    if let (Some(stored), Some(key)) = (leaked, outcome.state.as_ref()) {
        let leak: KeyLeaked = match stored.decode::<KeyEvent>()? {
            KeyEvent::Leaked(leak) => leak,
            _ => unreachable!("a key.leaked event decodes as one"),
        };
        let deactivated = outcome.events.iter().any(|e| e.event_type == "key.deactivated");
        let mut shown = KeyRow::from_aggregate(key, outcome.version);
        shown.last_used_at = row.last_used_at;
        alert_outbox::queue_leak(
            &mut tx,
            &org,
            &shown,
            &leak,
            deactivated,
            stored.event_id,
            &state.settings.public_url,
        )
        .await?;
        tracing::warn!(key = %row.id, org = %row.org_id, action = action.as_str(), deactivated, "a key's secret was reported leaked");
    }
    tx.commit().await?;
    state.cache.evict_stream(&stream);
    Ok(Label::TruePositive)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keys_document_must_hold_p256_public_keys() {
        assert!(LeakReportKeys::parse("{}")
            .unwrap_err()
            .contains("not a public keys document"));
        assert!(LeakReportKeys::parse(r#"{"public_keys": []}"#)
            .unwrap_err()
            .contains("no public key"));
        let bad = r#"{"public_keys": [{"key_identifier": "k1", "key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", "is_current": true}]}"#;
        assert!(LeakReportKeys::parse(bad)
            .unwrap_err()
            .contains("'k1' is not an ECDSA P-256 public key"));
    }

    #[test]
    fn tokens_are_answered_by_their_sha256_in_hex() {
        assert_eq!(
            hex_sha256(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex_sha256("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
