//! The key management endpoints (`/v1/keys…`). Each command goes through the
//! shared handler (load → decide → append → project) and answers with the
//! key as the read model now has it. Creation also holds the organization
//! to its key quota.

use std::collections::HashMap;

use actix_web::{http::header, web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use keyledger_events::domain::{
    key::{self, CreateKey, RegenerateKey, SecretSource, UpdateKey},
    ApiKey, DomainError, KeyCommand, KeyId, KeyStatus, KeyType, OrgId, PlainKey,
};
use keyledger_events::handler;
use keyledger_events::log::{EventMeta, StoredEvent};
use keyledger_events::read_model::{self, KeyFilter, KeyRow};
use serde_json::{json, Value};

use crate::{auth::Admin, body, error::ApiError, middleware::current_request_id, AppState};

type Query = web::Query<HashMap<String, String>>;

/// 256 bits from the operating system's CSPRNG.
fn random_secret(state: &AppState) -> Result<SecretSource, ApiError> {
    let mut random = [0u8; 32];
    getrandom::getrandom(&mut random).map_err(|e| ApiError::internal(std::io::Error::other(e.to_string())))?;
    Ok(SecretSource {
        random,
        hash_key: state.hash_key.clone(),
    })
}

fn meta(caller: &Admin) -> EventMeta {
    EventMeta {
        actor: caller.actor(),
        request_id: Some(current_request_id()),
        occurred_at: Utc::now(),
    }
}

/// A key id from the path; a malformed one is simply not found.
fn key_id(path: &str) -> Result<KeyId, ApiError> {
    path.parse().map_err(|_| ApiError::NotFound)
}

fn org_id(caller: &Admin) -> Result<OrgId, ApiError> {
    caller
        .org_id()
        .parse()
        .map_err(|_| ApiError::internal(std::io::Error::other("stored org id is malformed")))
}

async fn rotation_days(state: &AppState, caller: &Admin) -> Result<u32, ApiError> {
    let org = read_model::org_by_id(&state.pool, caller.org_id())
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(org.rotation_days.max(0) as u32)
}

/// Runs a command on one of the caller's keys; another organization's key is
/// not found, exactly like an unknown id.
async fn execute(state: &AppState, caller: &Admin, id: KeyId, command: KeyCommand) -> Result<(), ApiError> {
    let own = org_id(caller)?;
    handler::execute::<ApiKey>(
        &state.pool,
        &key::stream_id(id),
        command,
        &meta(caller),
        |current| match current {
            Some(k) if k.org_id != own => Err(DomainError::NotFound),
            _ => Ok(()),
        },
    )
    .await?;
    Ok(())
}

/// [`execute`], answering with the key as the read model now has it.
async fn run(state: &AppState, caller: &Admin, id: KeyId, command: KeyCommand) -> Result<KeyRow, ApiError> {
    execute(state, caller, id, command).await?;
    read_model::key_by_id(&state.pool, caller.org_id(), &id.to_string())
        .await?
        .ok_or(ApiError::NotFound)
}

/// An answer that shows a secret: never cached anywhere.
fn with_secret(status: actix_web::http::StatusCode, row: &KeyRow, secret: &PlainKey) -> HttpResponse {
    let mut object = row.to_json(Utc::now());
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
    let name = fields.string("name");
    let key_type = fields.string("type");
    let scopes = fields.string_list("scopes");
    let expires_at = fields.nullable_time("expires_at").flatten();
    fields.finish()?;
    let (name, key_type) = (name.unwrap_or_default(), key_type.unwrap_or_default());
    let secret = random_secret(&state)?;
    let id = KeyId::new();
    let command = KeyCommand::Create(Box::new(CreateKey {
        key_id: id,
        org_id: org_id(&caller)?,
        name,
        key_type: key_type.clone(),
        scopes,
        expires_at,
        rotation_days: rotation_days(&state, &caller).await?,
        secret: secret.clone(),
    }));
    let decided =
        handler::decide::<ApiKey>(&state.pool, &key::stream_id(id), command, &meta(&caller), |_| Ok(())).await?;
    let mut tx = state.pool.begin().await?;
    hold_key_quota(&mut tx, caller.org_id(), state.settings.max_keys_per_org).await?;
    decided.append(&mut tx).await?;
    tx.commit().await?;
    let row = read_model::key_by_id(&state.pool, caller.org_id(), &id.to_string())
        .await?
        .ok_or(ApiError::NotFound)?;
    let key_type = KeyType::parse(&key_type).expect("validated by the command");
    let (plain, _) = secret.issue(key_type);
    let mut response = with_secret(actix_web::http::StatusCode::CREATED, &row, &plain);
    if let Ok(location) = header::HeaderValue::from_str(&format!("/v1/keys/{}", row.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Advisory-lock namespace of the per-organization key quota (the two-key
/// form: apart from every single-key lock): `(KEY_QUOTA_LOCK,
/// hashtext(org_id))`.
pub const KEY_QUOTA_LOCK: i32 = 0x6b6c_7100;

/// Refuses a new key when the organization already has `max` keys that are
/// not deleted. Creations in one organization take a transaction lock
/// first, so concurrent ones are counted one after the other (each sees the
/// keys committed before it) and the quota is never passed, across any
/// number of API processes; the lock ends with the transaction.
async fn hold_key_quota(tx: &mut sqlx::PgConnection, org_id: &str, max: u64) -> Result<(), ApiError> {
    sqlx::query("select pg_advisory_xact_lock($1, hashtext($2))")
        .bind(KEY_QUOTA_LOCK)
        .bind(org_id)
        .execute(&mut *tx)
        .await?;
    let keys: i64 = sqlx::query_scalar("select count(*) from keys where org_id = $1 and deleted_at is null")
        .bind(org_id)
        .fetch_one(&mut *tx)
        .await?;
    if keys as u64 >= max {
        return Err(ApiError::QuotaExceeded(format!(
            "This organization is at its quota of {max} keys (quota: keys per organization, \
             KEYLEDGER_MAX_KEYS_PER_ORG). Delete keys it no longer uses, or ask the operator to raise the quota."
        )));
    }
    Ok(())
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
                Some(t) => filter.key_type = Some(t.as_str().to_owned()),
                None => details.add("type", "must be public, secret or test"),
            },
            "limit" => match value.parse::<i64>() {
                Ok(limit) if (1..=100).contains(&limit) => filter.limit = limit,
                _ => details.add("limit", "must be a whole number from 1 to 100"),
            },
            "cursor" => match value.parse::<KeyId>() {
                Ok(id) => filter.before_id = Some(id.to_string()),
                Err(_) => details.add("cursor", "is not a cursor this API returned"),
            },
            other => details.add(other, "unknown parameter"),
        }
    }
    if !details.is_empty() {
        return Err(ApiError::Validation(details));
    }
    let page_size = filter.limit as usize;
    filter.limit += 1;
    let now = Utc::now();
    let mut rows = read_model::list_keys(&state.pool, caller.org_id(), &filter, now).await?;
    let next_cursor = (rows.len() > page_size).then(|| rows[page_size - 1].id.clone());
    rows.truncate(page_size);
    let data: Vec<Value> = rows.iter().map(|r| r.to_json(now)).collect();
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": data, "next_cursor": next_cursor})))
}

pub async fn get(state: web::Data<AppState>, caller: Admin, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = key_id(&path)?;
    let row = read_model::key_by_id(&state.pool, caller.org_id(), &id.to_string())
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(row.to_json(Utc::now())))
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
    let update = UpdateKey {
        name: fields.optional_string("name"),
        scopes: fields.string_list("scopes"),
        expires_at: fields.nullable_time("expires_at"),
    };
    fields.finish()?;
    let row = run(&state, &caller, id, KeyCommand::Update(update)).await?;
    Ok(HttpResponse::Ok().json(row.to_json(Utc::now())))
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
    let grace = fields.integer("expire_old_in_seconds").unwrap_or(0);
    fields.finish()?;
    let secret = random_secret(&state)?;
    let command = KeyCommand::Regenerate(Box::new(RegenerateKey {
        expire_old_in_seconds: grace,
        rotation_days: rotation_days(&state, &caller).await?,
        secret: secret.clone(),
    }));
    let row = run(&state, &caller, id, command).await?;
    let key_type =
        KeyType::parse(&row.key_type).ok_or_else(|| ApiError::internal(std::io::Error::other("bad key type")))?;
    let (plain, _) = secret.issue(key_type);
    Ok(with_secret(actix_web::http::StatusCode::OK, &row, &plain))
}

pub async fn deactivate(
    state: web::Data<AppState>,
    caller: Admin,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let row = run(&state, &caller, key_id(&path)?, KeyCommand::Deactivate).await?;
    Ok(HttpResponse::Ok().json(row.to_json(Utc::now())))
}

pub async fn activate(
    state: web::Data<AppState>,
    caller: Admin,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let row = run(&state, &caller, key_id(&path)?, KeyCommand::Activate).await?;
    Ok(HttpResponse::Ok().json(row.to_json(Utc::now())))
}

pub async fn delete(
    state: web::Data<AppState>,
    caller: Admin,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    execute(&state, &caller, key_id(&path)?, KeyCommand::Delete).await?;
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
    let now = Utc::now();
    let mut details = keyledger_events::domain::ValidationDetails::default();
    let (mut from, mut to, mut granularity) = (now - chrono::Duration::hours(24), now, "hour");
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
            "granularity" => match value.as_str() {
                "minute" => granularity = "minute",
                "hour" => granularity = "hour",
                "day" => granularity = "day",
                _ => details.add("granularity", "must be minute, hour or day"),
            },
            other => details.add(other, "unknown parameter"),
        }
    }
    if from >= to {
        details.add("from", "must be before to");
    }
    let bucket_seconds = match granularity {
        "minute" => 60,
        "hour" => 3_600,
        _ => 86_400,
    };
    if (to - from).num_seconds() / bucket_seconds > MAX_SERIES_POINTS {
        details.add(
            "granularity",
            format!("at most {MAX_SERIES_POINTS} points: use a coarser granularity"),
        );
    }
    if !details.is_empty() {
        return Err(ApiError::Validation(details));
    }
    let key = read_model::key_by_id(&state.pool, caller.org_id(), &id.to_string())
        .await?
        .ok_or(ApiError::NotFound)?;
    let series = read_model::usage_series(&state.pool, &key.id, granularity, from, to).await?;
    let total = |pick: fn(&read_model::UsagePoint) -> i64| series.iter().map(pick).sum::<i64>();
    let (requests, successful, failed, limited) = (
        total(|p| p.requests),
        total(|p| p.successful),
        total(|p| p.failed),
        total(|p| p.rate_limited),
    );
    let rate = |part: i64| (requests > 0).then(|| part as f64 / requests as f64);
    Ok(HttpResponse::Ok().json(json!({
        "object": "usage",
        "key_id": key.id,
        "from": read_model::rfc3339(from),
        "to": read_model::rfc3339(to),
        "granularity": granularity,
        "total_requests": requests,
        "successful": successful,
        "failed": failed,
        "rate_limited": limited,
        "success_rate": rate(successful),
        "error_rate": rate(failed),
        "last_used_at": key.last_used_at.map(read_model::rfc3339),
        "series": series.iter().map(|p| json!({
            "start": read_model::rfc3339(p.start),
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
    let owned: Option<String> = sqlx::query_scalar("select org_id from keys where id = $1")
        .bind(id.to_string())
        .fetch_optional(&state.pool)
        .await?;
    if owned.as_deref() != Some(caller.org_id()) {
        return Err(ApiError::NotFound);
    }
    // Usage records are statistics (see /usage), not the audit trail.
    let events =
        keyledger_events::log::read_stream_without(&state.pool, &key::stream_id(id), None, handler::USAGE_EVENT)
            .await?;
    let page: Vec<&StoredEvent> = events
        .iter()
        .filter(|e| e.version > after_version)
        .take(limit as usize + 1)
        .collect();
    let next_cursor = (page.len() > limit as usize).then(|| page[limit as usize - 1].version.to_string());
    let data: Vec<Value> = page.iter().take(limit as usize).map(|e| e.public_json()).collect();
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": data, "next_cursor": next_cursor})))
}
