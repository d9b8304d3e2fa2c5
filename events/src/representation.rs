//! How keyledger shows its objects as JSON: the key object and the
//! organization object of the HTTP API (docs/api.md), which the CLI prints
//! and webhook payloads carry too. One module, so the three surfaces cannot
//! drift apart; it lives beside the read models because the workers (webhook
//! payloads) show the same objects and depend on this crate only.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::read_model::{KeyRow, OrgRow};

/// RFC 3339 in UTC with a `Z`, to the second (or finer when there is more).
pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// The key object (docs/api.md, "The key object"), its status as of `now`.
pub fn key_object(key: &KeyRow, now: DateTime<Utc>) -> Value {
    json!({
        "id": key.id,
        "object": "api_key",
        "name": key.name,
        "type": key.key_type,
        "environment": key.environment(),
        "scopes": key.scopes,
        "status": key.status_at(now),
        "prefix": key.prefix(),
        "last_four": key.last_four,
        "created_at": rfc3339(key.created_at),
        "last_used_at": key.last_used_at.map(rfc3339),
        "expires_at": key.expires_at.map(rfc3339),
        "rotation_due_at": key.rotation_due_at.map(rfc3339),
        "org_id": key.org_id,
        // null: no allowlist, any address may use the key.
        "allowed_ips": (!key.allowed_ips.is_empty()).then(|| key.allowed_ips.to_strings()),
    })
}

/// The organization object (docs/api.md, "Organization").
pub fn org_object(org: &OrgRow) -> Value {
    let recipients: Vec<Value> = org
        .alert_recipients
        .iter()
        .map(|r| json!({"email": r.email, "confirmed_at": r.confirmed_at.map(rfc3339)}))
        .collect();
    json!({
        "id": org.id,
        "object": "organization",
        "name": org.name,
        "plan": org.plan,
        "rate_limit_per_minute": org.rate_limit_per_minute,
        "alert_emails": org.alert_emails,
        "alert_recipients": recipients,
        "rotation_days": org.rotation_days,
        "alert_settings": org.alert_settings,
        "leak_action": org.leak_action,
        "created_at": rfc3339(org.created_at),
    })
}
