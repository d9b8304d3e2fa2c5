//! `POST /v1/verify`: is this key valid for these scopes and this
//! environment? Every well-formed request gets 200 with a `code`; the key in
//! the body is the credential, so no management scope is needed.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use keyledger_events::domain::{scope::grants, Environment, Scope};
use keyledger_events::read_model::{rfc3339, KeyRow};
use serde_json::json;

use crate::{auth, body, error::ApiError, AppState};

/// The verdict on a known key, checked in the order a user would fix things:
/// state first, then environment, then scopes.
pub fn verdict(key: &KeyRow, environment: Option<Environment>, needed: &[Scope]) -> &'static str {
    match key.status_at(Utc::now()) {
        "inactive" => return "INACTIVE",
        "expired" => return "EXPIRED",
        _ => {}
    }
    if environment.is_some_and(|env| env.as_str() != key.environment) {
        return "ENVIRONMENT_MISMATCH";
    }
    let held: Vec<Scope> = key.scopes.iter().filter_map(|s| s.parse().ok()).collect();
    if !needed.iter().all(|&s| grants(&held, s)) {
        return "INSUFFICIENT_SCOPE";
    }
    "VALID"
}

pub async fn verify(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let mut fields = body::read_object(&req, payload).await?;
    let key = fields.string("key");
    let scopes = fields.string_list("scopes").unwrap_or_default();
    let environment = fields.optional_string("environment");
    fields.finish()?;
    let mut details = keyledger_events::domain::ValidationDetails::default();
    let needed: Vec<Scope> = scopes
        .iter()
        .filter_map(|s| {
            s.parse()
                .map_err(|e: keyledger_events::domain::scope::UnknownScope| details.add("scopes", e.to_string()))
                .ok()
        })
        .collect();
    let environment = environment.and_then(|e| {
        Environment::parse(&e).or_else(|| {
            details.add("environment", "must be live or test");
            None
        })
    });
    if !details.is_empty() {
        return Err(ApiError::Validation(details));
    }
    let Some(row) = auth::lookup(&state, &key.unwrap_or_default()).await? else {
        return Ok(HttpResponse::Ok().json(json!({"valid": false, "code": "NOT_FOUND"})));
    };
    let code = verdict(&row, environment, &needed);
    Ok(HttpResponse::Ok().json(json!({
        "valid": code == "VALID",
        "code": code,
        "key_id": row.id,
        "org_id": row.org_id,
        "type": row.key_type,
        "environment": row.environment,
        "scopes": row.scopes,
        "expires_at": row.expires_at.map(rfc3339),
    })))
}
