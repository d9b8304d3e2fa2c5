//! The envelope of a stored event (docs/architecture.md, "The event log") and the
//! mapping between domain events and their stored `type` + `data`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::domain::DomainEvent;

/// An event about to be appended. Its `data` must read back from `jsonb`
/// as it was written — no floating-point numbers, nesting well under
/// serde_json's limit — because an append returns it as sent instead of
/// reading it back (every event type today holds strings, integers, booleans
/// and lists of them).
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_type: String,
    pub schema_version: i32,
    pub data: Value,
}

impl NewEvent {
    pub fn from_domain<E: DomainEvent>(event: &E) -> NewEvent {
        let mut tagged = serde_json::to_value(event).expect("domain events serialize");
        NewEvent {
            event_type: event.event_type().to_owned(),
            schema_version: E::SCHEMA_VERSION,
            data: tagged.get_mut("data").map(Value::take).unwrap_or(Value::Null),
        }
    }
}

/// Who appends, on behalf of which request, and when.
#[derive(Debug, Clone)]
pub struct EventMeta {
    /// A key id, `system:<job>` or `cli`.
    pub actor: String,
    pub request_id: Option<String>,
    pub occurred_at: DateTime<Utc>,
}

/// Where a reader of the whole log stands: the last (transaction, position)
/// it has handled. Ordering by transaction first is what makes the order
/// commit-safe (see the migration's comment on `tx_id`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct LogPosition {
    pub tx_id: i64,
    pub position: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct StoredEvent {
    pub position: i64,
    pub tx_id: i64,
    pub event_id: Uuid,
    pub stream_id: String,
    pub version: i64,
    #[sqlx(rename = "type")]
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_version: i32,
    pub occurred_at: DateTime<Utc>,
    pub actor: String,
    pub request_id: Option<String>,
    pub data: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("event {event_id} has schema version {found}, newer than this build reads ({supported})")]
    FutureSchema { event_id: Uuid, found: i32, supported: i32 },
    #[error("event {event_id} of type {event_type} cannot be decoded: {source}")]
    Invalid {
        event_id: Uuid,
        event_type: String,
        source: serde_json::Error,
    },
}

impl StoredEvent {
    pub fn log_position(&self) -> LogPosition {
        LogPosition {
            tx_id: self.tx_id,
            position: self.position,
        }
    }

    /// The event as audit trails show it: hashes are for lookups, not for
    /// people, and never leave the service.
    pub fn public_json(&self) -> Value {
        let mut data = self.data.clone();
        if let Some(map) = data.as_object_mut() {
            map.retain(|name, _| !name.contains("hash"));
        }
        serde_json::json!({
            "event_id": self.event_id,
            "type": self.event_type,
            "version": self.version,
            "occurred_at": self.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            "actor": self.actor,
            "request_id": self.request_id,
            "data": data,
        })
    }

    pub fn decode<E: DomainEvent>(&self) -> Result<E, DecodeError> {
        if self.schema_version > E::SCHEMA_VERSION {
            return Err(DecodeError::FutureSchema {
                event_id: self.event_id,
                found: self.schema_version,
                supported: E::SCHEMA_VERSION,
            });
        }
        let tagged = serde_json::json!({"type": self.event_type, "data": self.data});
        serde_json::from_value(tagged).map_err(|source| DecodeError::Invalid {
            event_id: self.event_id,
            event_type: self.event_type.clone(),
            source,
        })
    }
}
