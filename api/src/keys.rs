//! The key management endpoints (`/v1/keys…`): JSON in, JSON out. The
//! operations themselves (commands and queries, shared with the portal) are
//! in `manage.rs`; this module parses requests and renders answers.

use std::collections::HashMap;

use actix_web::{http::header, web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use keyledger_events::domain::{key::UpdateKeyRequest, KeyId, KeyStatus, KeyType, PlainKey};
use keyledger_events::log::StoredEvent;
use keyledger_events::read_model::{KeyFilter, KeyRow};
use keyledger_events::representation;
use serde_json::{json, Value};

use crate::idempotency::{self, IdempotencyKey, Idempotent};
use crate::manage::{self, key_id, Done, Granularity, NewKey};
use crate::{auth::Admin, body, clock, error::ApiError, AppState};

pub use crate::manage::KEY_QUOTA_LOCK;

type Query = web::Query<HashMap<String, String>>;

/// The caller's `Idempotency-Key` for this operation, if it sent one.
fn idempotent(req: &HttpRequest, caller: &Admin, fields: &body::Fields) -> Result<Option<Idempotent>, ApiError> {
    let Some(key) = IdempotencyKey::from_request(req)? else {
        return Ok(None);
    };
    Ok(Some(Idempotent::new(
        caller.org_id(),
        idempotency::operation(req),
        key,
        fields.as_map(),
    )))
}

/// The first answer again, for a retry with the same `Idempotency-Key`.
fn replayed(recorded: &idempotency::Recorded) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(recorded.status).unwrap_or(actix_web::http::StatusCode::OK);
    let mut response = HttpResponse::build(status);
    response
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("idempotent-replayed", "true"));
    if status == actix_web::http::StatusCode::CREATED {
        if let Some(id) = recorded.body["id"].as_str() {
            response.insert_header((header::LOCATION, format!("/v1/keys/{id}")));
        }
    }
    response.json(recorded.replay_body())
}

/// An answer that shows a secret: never cached anywhere.
fn with_secret(status: actix_web::http::StatusCode, row: &KeyRow, secret: &PlainKey) -> HttpResponse {
    let mut object = representation::key_object(row, clock::now());
    object["key"] = json!(secret.expose());
    HttpResponse::build(status)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"))
        .json(object)
}

pub async fn create(
    state: web::Data<AppState>,
    caller: Admin,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let mut fields = body::read_object(&req, payload).await?;
    let idempotent = idempotent(&req, &caller, &fields)?;
    let name = fields.string("name");
    let key_type = fields.string("type");
    let scopes = fields.string_list("scopes");
    let expires_at = fields.nullable_time("expires_at").flatten();
    let allowed_ips = fields.string_list("allowed_ips");
    fields.finish()?;
    let new = NewKey {
        name: name.unwrap_or_default(),
        key_type: key_type.unwrap_or_default(),
        scopes,
        expires_at,
        allowed_ips,
    };
    let (row, plain) = match manage::create_key(&state, &caller.caller(), new, idempotent.as_ref()).await? {
        Done::Ran(created) => created,
        Done::Replayed(recorded) => return Ok(replayed(&recorded)),
    };
    let mut response = with_secret(actix_web::http::StatusCode::CREATED, &row, &plain);
    if let Ok(location) = header::HeaderValue::from_str(&format!("/v1/keys/{}", row.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

pub async fn list(state: web::Data<AppState>, caller: Admin, query: Query) -> Result<HttpResponse, ApiError> {
    let mut details = keyledger_events::domain::ValidationDetails::default();
    let mut filter = KeyFilter {
        limit: 20,
        ..KeyFilter::default()
    };
    for (name, value) in query.iter() {
        match name.as_str() {
            "status" => match KeyStatus::parse(value) {
                Some(status) => filter.status = Some(status),
                None => details.add("status", "must be active, inactive or expired"),
            },
            "type" => match KeyType::parse(value) {
                Some(t) => filter.key_type = Some(t),
                None => details.add("type", "must be public, secret or test"),
            },
            "limit" => match value.parse::<i64>() {
                Ok(limit) if (1..=100).contains(&limit) => filter.limit = limit,
                _ => details.add("limit", "must be a whole number from 1 to 100"),
            },
            "cursor" => match value.parse::<KeyId>() {
                Ok(id) => filter.before_id = Some(id),
                Err(_) => details.add("cursor", "is not a cursor this API returned"),
            },
            other => details.add(other, "unknown parameter"),
        }
    }
    if !details.is_empty() {
        return Err(ApiError::Validation(details));
    }
    let now = clock::now();
    let (rows, next_cursor) = manage::list_keys(&state, &caller.caller(), filter, now).await?;
    let data: Vec<Value> = rows.iter().map(|r| representation::key_object(r, now)).collect();
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": data, "next_cursor": next_cursor})))
}

pub async fn get(state: web::Data<AppState>, caller: Admin, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let row = manage::get_key(&state, &caller.caller(), key_id(&path)?).await?;
    Ok(HttpResponse::Ok().json(representation::key_object(&row, clock::now())))
}

pub async fn update(
    state: web::Data<AppState>,
    caller: Admin,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let id = key_id(&path)?;
    let mut fields = body::read_object(&req, payload).await?;
    let update = UpdateKeyRequest {
        name: fields.optional_string("name"),
        scopes: fields.string_list("scopes"),
        expires_at: fields.nullable_time("expires_at"),
        // null clears the allowlist, like [].
        allowed_ips: fields
            .nullable_string_list("allowed_ips")
            .map(Option::unwrap_or_default),
    };
    fields.finish()?;
    let row = manage::update_key(&state, &caller.caller(), id, update).await?;
    Ok(HttpResponse::Ok().json(representation::key_object(&row, clock::now())))
}

pub async fn regenerate(
    state: web::Data<AppState>,
    caller: Admin,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let id = key_id(&path)?;
    let mut fields = body::read_object(&req, payload).await?;
    let idempotent = idempotent(&req, &caller, &fields)?;
    let grace = fields.integer("expire_old_in_seconds").unwrap_or(0);
    fields.finish()?;
    let regenerated = match manage::regenerate_key(&state, &caller.caller(), id, grace, idempotent.as_ref()).await? {
        Done::Ran(regenerated) => regenerated,
        Done::Replayed(recorded) => return Ok(replayed(&recorded)),
    };
    Ok(with_secret(
        actix_web::http::StatusCode::OK,
        &regenerated.key,
        &regenerated.secret,
    ))
}

pub async fn deactivate(
    state: web::Data<AppState>,
    caller: Admin,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let row = manage::deactivate_key(&state, &caller.caller(), key_id(&path)?).await?;
    Ok(HttpResponse::Ok().json(representation::key_object(&row, clock::now())))
}

pub async fn activate(
    state: web::Data<AppState>,
    caller: Admin,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let row = manage::activate_key(&state, &caller.caller(), key_id(&path)?).await?;
    Ok(HttpResponse::Ok().json(representation::key_object(&row, clock::now())))
}

pub async fn delete(
    state: web::Data<AppState>,
    caller: Admin,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    manage::delete_key(&state, &caller.caller(), key_id(&path)?).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Points a usage series may have at most.
const MAX_SERIES_POINTS: i64 = 10_000;

/// The key's usage between `from` and `to` (default: the last 24 h) in
/// buckets of a minute, an hour (default) or a day, aligned to UTC.
pub async fn usage(
    state: web::Data<AppState>,
    caller: Admin,
    path: web::Path<String>,
    query: Query,
) -> Result<HttpResponse, ApiError> {
    let id = key_id(&path)?;
    let now = clock::now();
    let mut details = keyledger_events::domain::ValidationDetails::default();
    let (mut from, mut to, mut granularity) = (now - chrono::Duration::hours(24), now, Granularity::Hour);
    let time = |value: &str| DateTime::parse_from_rfc3339(value).map(|t| t.with_timezone(&Utc));
    for (name, value) in query.iter() {
        match name.as_str() {
            "from" => match time(value) {
                Ok(t) => from = t,
                Err(_) => details.add("from", "must be an RFC 3339 timestamp"),
            },
            "to" => match time(value) {
                Ok(t) => to = t,
                Err(_) => details.add("to", "must be an RFC 3339 timestamp"),
            },
            "granularity" => match Granularity::parse(value) {
                Some(g) => granularity = g,
                None => details.add("granularity", "must be minute, hour or day"),
            },
            other => details.add(other, "unknown parameter"),
        }
    }
    if from >= to {
        details.add("from", "must be before to");
    }
    if (to - from).num_seconds() / granularity.seconds() > MAX_SERIES_POINTS {
        details.add(
            "granularity",
            format!("at most {MAX_SERIES_POINTS} points: use a coarser granularity"),
        );
    }
    if !details.is_empty() {
        return Err(ApiError::Validation(details));
    }
    let usage = manage::key_usage(&state, &caller.caller(), id, from, to, granularity).await?;
    Ok(HttpResponse::Ok().json(json!({
        "object": "usage",
        "key_id": usage.key.id,
        "from": representation::rfc3339(from),
        "to": representation::rfc3339(to),
        "granularity": granularity.as_str(),
        "total_requests": usage.total_requests,
        "successful": usage.successful,
        "failed": usage.failed,
        "rate_limited": usage.rate_limited,
        "success_rate": usage.success_rate,
        "error_rate": usage.error_rate,
        "last_used_at": usage.key.last_used_at.map(representation::rfc3339),
        "series": usage.series.iter().map(|p| json!({
            "start": representation::rfc3339(p.start),
            "requests": p.requests,
            "successful": p.successful,
            "failed": p.failed,
            "rate_limited": p.rate_limited,
        })).collect::<Vec<_>>(),
    })))
}

/// The key's audit trail, oldest first; deleted keys keep theirs.
pub async fn events(
    state: web::Data<AppState>,
    caller: Admin,
    path: web::Path<String>,
    query: Query,
) -> Result<HttpResponse, ApiError> {
    let id = key_id(&path)?;
    let mut details = keyledger_events::domain::ValidationDetails::default();
    let mut limit = 50i64;
    let mut after_version = 0i64;
    for (name, value) in query.iter() {
        match name.as_str() {
            "limit" => match value.parse::<i64>() {
                Ok(l) if (1..=100).contains(&l) => limit = l,
                _ => details.add("limit", "must be a whole number from 1 to 100"),
            },
            "cursor" => match value.parse::<i64>() {
                Ok(v) if v >= 0 => after_version = v,
                _ => details.add("cursor", "is not a cursor this API returned"),
            },
            other => details.add(other, "unknown parameter"),
        }
    }
    if !details.is_empty() {
        return Err(ApiError::Validation(details));
    }
    let (page, next_cursor) =
        manage::key_audit_trail(&state, &caller.caller(), id, after_version, limit as usize).await?;
    let data: Vec<Value> = page.iter().map(StoredEvent::public_json).collect();
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": data, "next_cursor": next_cursor})))
}
