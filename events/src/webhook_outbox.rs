//! The webhook deliveries' outbox rows, written by the worker that follows
//! the log (`keyledger-workers`, webhooks) and by the API's replay: one row
//! per (event, endpoint), before anything is sent. Matching is written
//! once, here: an event reaches the endpoints of its organization that
//! subscribe to its type; a new event only those enabled and created no
//! later than it, a replay the one endpoint asked for.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;

use crate::domain::webhook::{EventFilter, EVENT_TYPES};
use crate::domain::DeliveryId;
use crate::log::StoredEvent;

/// Events one replay delivers again at most.
pub const MAX_REPLAY: i64 = 10_000;

/// The organization each event belongs to: a key's (from the keys read
/// model, which the command that appended the event wrote in its own
/// transaction), or the alert's.
pub async fn event_orgs(
    tx: &mut PgConnection,
    events: &[&StoredEvent],
) -> Result<HashMap<uuid::Uuid, String>, sqlx::Error> {
    let key_ids: Vec<&str> = events.iter().filter_map(|e| e.stream_id.strip_prefix("key-")).collect();
    let keys: Vec<(String, String)> = sqlx::query_as("select id, org_id from keys where id = any($1)")
        .bind(&key_ids)
        .fetch_all(&mut *tx)
        .await?;
    let keys: HashMap<String, String> = keys.into_iter().collect();
    Ok(events
        .iter()
        .filter_map(|e| {
            let org = match e.stream_id.strip_prefix("key-") {
                Some(key) => keys.get(key).cloned(),
                None => e.data.get("org_id").and_then(Value::as_str).map(str::to_owned),
            };
            org.map(|org| (e.event_id, org))
        })
        .collect())
}

/// Writes the deliveries `events` make to their organizations' matching
/// endpoints, in the events' order: endpoints enabled and created no later
/// than the event (for a replay: any time). Returns how many were written.
pub async fn insert_deliveries(
    tx: &mut PgConnection,
    events: &[&StoredEvent],
    orgs: &HashMap<uuid::Uuid, String>,
    replay_to: Option<&str>,
) -> Result<u64, sqlx::Error> {
    let (mut event_ids, mut types, mut org_ids, mut times) = (vec![], vec![], vec![], vec![]);
    for event in events {
        if let Some(org) = orgs.get(&event.event_id) {
            event_ids.push(event.event_id);
            types.push(event.event_type.clone());
            org_ids.push(org.clone());
            times.push(event.occurred_at);
        }
    }
    let pairs: Vec<(uuid::Uuid, String, String, Vec<String>)> = sqlx::query_as(
        "select e.event_id, e.type, w.id, w.events
         from unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[]) with ordinality as e(event_id, type, org_id, at, n)
         join webhook_endpoints w on w.org_id = e.org_id
              and ($5::text is null or w.id = $5)
              and ($5::text is not null or (not w.disabled and w.created_at <= e.at))
         order by e.n, w.id",
    )
    .bind(&event_ids)
    .bind(&types)
    .bind(&org_ids)
    .bind(&times)
    .bind(replay_to)
    .fetch_all(&mut *tx)
    .await?;
    let mut rows = (vec![], vec![], vec![], vec![]);
    for (event_id, event_type, endpoint_id, filter) in pairs {
        let matches = EventFilter::parse(&filter).is_ok_and(|f| f.matches(&event_type));
        if matches {
            rows.0.push(DeliveryId::new().to_string());
            rows.1.push(endpoint_id);
            rows.2.push(event_id);
            rows.3.push(event_type);
        }
    }
    if rows.0.is_empty() {
        return Ok(0);
    }
    let inserted = sqlx::query(
        "insert into webhook_deliveries (id, endpoint_id, event_id, event_type, replay, next_attempt_at, created_at)
         select d.id, d.endpoint_id, d.event_id, d.type, $5, now(), now()
         from unnest($1::text[], $2::text[], $3::uuid[], $4::text[]) with ordinality as d(id, endpoint_id, event_id, type, n)
         order by d.n
         on conflict (endpoint_id, event_id) where not replay do nothing",
    )
    .bind(&rows.0)
    .bind(&rows.1)
    .bind(&rows.2)
    .bind(&rows.3)
    .bind(replay_to.is_some())
    .execute(&mut *tx)
    .await?;
    Ok(inserted.rows_affected())
}

/// Makes new deliveries to `endpoint_id` (of `org_id`) of every event of
/// that organization which occurred at or after `since` and which the
/// endpoint subscribes to, in log order (at most [`MAX_REPLAY`]); returns
/// how many.
pub async fn replay(
    tx: &mut PgConnection,
    org_id: &str,
    endpoint_id: &str,
    since: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    // The types written out as the partial index `events_webhook_types`
    // lists them, so the planner can use it.
    let types = EVENT_TYPES.map(|t| format!("'{t}'")).join(", ");
    let events: Vec<StoredEvent> = sqlx::query_as(&format!(
        "select e.position, e.tx_id, e.event_id, e.stream_id, e.version, e.type, e.schema_version, e.occurred_at,
                e.actor, e.request_id, e.data
         from events e left join keys k on e.stream_id = 'key-' || k.id
         where e.occurred_at >= $2 and e.type in ({types})
           and (k.org_id = $1 or (e.stream_id like 'alert-%' and e.data ->> 'org_id' = $1))
         order by e.tx_id, e.position
         limit $3"
    ))
    .bind(org_id)
    .bind(since)
    .bind(MAX_REPLAY)
    .fetch_all(&mut *tx)
    .await?;
    let orgs = events.iter().map(|e| (e.event_id, org_id.to_owned())).collect();
    let refs: Vec<&StoredEvent> = events.iter().collect();
    insert_deliveries(tx, &refs, &orgs, Some(endpoint_id)).await
}
