//! The webhook endpoints' JSON API (`/v1/webhooks…`): parses requests and
//! renders answers; the operations are in `webhook_endpoints.rs`, shared with
//! the portal.

use std::collections::HashMap;

use actix_web::{http::header, web, HttpRequest, HttpResponse};
use keyledger_events::domain::{DeliveryId, ValidationDetails};
use keyledger_events::representation::rfc3339;
use serde_json::{json, Value};

use crate::webhook_endpoints::{self as ops, endpoint_id, EndpointChange, NewEndpoint};
use crate::{auth::Admin, body, error::ApiError, AppState};

type Query = web::Query<HashMap<String, String>>;

pub async fn create(
    state: web::Data<AppState>,
    caller: Admin,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let mut fields = body::read_object(&req, payload).await?;
    let url = fields.string("url");
    let events = fields.string_list("events");
    let description = fields.optional_string("description");
    fields.finish()?;
    let new = NewEndpoint {
        url: url.unwrap_or_default(),
        events,
        description,
    };
    let (endpoint, secret) = ops::create(&state, &caller.caller(), new).await?;
    let mut object = endpoint.to_json();
    object["secret"] = json!(secret);
    // The secret is shown here only: never cached anywhere.
    let mut response = HttpResponse::Created();
    response
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"));
    if let Ok(location) = header::HeaderValue::from_str(&format!("/v1/webhooks/{}", endpoint.id)) {
        response.insert_header((header::LOCATION, location));
    }
    Ok(response.json(object))
}

pub async fn list(state: web::Data<AppState>, caller: Admin, query: Query) -> Result<HttpResponse, ApiError> {
    if let Some(name) = query.keys().next() {
        return Err(ApiError::invalid(name, "unknown parameter"));
    }
    let endpoints = ops::list(&state, &caller.caller()).await?;
    let data: Vec<Value> = endpoints.iter().map(ops::Endpoint::to_json).collect();
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": data, "next_cursor": null})))
}

pub async fn get(state: web::Data<AppState>, caller: Admin, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let endpoint = ops::get(&state, &caller.caller(), endpoint_id(&path)?).await?;
    Ok(HttpResponse::Ok().json(endpoint.to_json()))
}

pub async fn update(
    state: web::Data<AppState>,
    caller: Admin,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let id = endpoint_id(&path)?;
    let mut fields = body::read_object(&req, payload).await?;
    let change = EndpointChange {
        url: fields.optional_string("url"),
        events: fields.string_list("events"),
        description: fields.optional_string("description"),
        disabled: fields.boolean("disabled"),
    };
    fields.finish()?;
    let endpoint = ops::update(&state, &caller.caller(), id, change).await?;
    Ok(HttpResponse::Ok().json(endpoint.to_json()))
}

pub async fn delete(
    state: web::Data<AppState>,
    caller: Admin,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    ops::delete(&state, &caller.caller(), endpoint_id(&path)?).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The delivery log: newest first, `limit` (1–100, default 20) a page.
pub async fn deliveries(
    state: web::Data<AppState>,
    caller: Admin,
    path: web::Path<String>,
    query: Query,
) -> Result<HttpResponse, ApiError> {
    let id = endpoint_id(&path)?;
    let mut details = ValidationDetails::default();
    let (mut limit, mut cursor) = (20i64, None);
    for (name, value) in query.iter() {
        match name.as_str() {
            "limit" => match value.parse::<i64>() {
                Ok(l) if (1..=100).contains(&l) => limit = l,
                _ => details.add("limit", "must be a whole number from 1 to 100"),
            },
            "cursor" => match value.parse::<DeliveryId>() {
                Ok(c) => cursor = Some(c),
                Err(_) => details.add("cursor", "is not a cursor this API returned"),
            },
            other => details.add(other, "unknown parameter"),
        }
    }
    if !details.is_empty() {
        return Err(ApiError::Validation(details));
    }
    let (page, next_cursor) = ops::deliveries(&state, &caller.caller(), id, limit, cursor).await?;
    let data: Vec<Value> = page.iter().map(ops::Delivery::to_json).collect();
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": data, "next_cursor": next_cursor})))
}

/// `{"since": time}` → 202: every matching event since then is delivered again.
pub async fn replay(
    state: web::Data<AppState>,
    caller: Admin,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let id = endpoint_id(&path)?;
    let mut fields = body::read_object(&req, payload).await?;
    let since = fields.nullable_time("since");
    fields.finish()?;
    let Some(Some(since)) = since else {
        return Err(ApiError::invalid(
            "since",
            "is required: an RFC 3339 time, e.g. 2026-11-26T10:00:00Z",
        ));
    };
    let made = ops::replay(&state, &caller.caller(), id, since).await?;
    Ok(HttpResponse::Accepted().json(json!({
        "object": "webhook_replay",
        "endpoint_id": path.as_str(),
        "since": rfc3339(since),
        "deliveries": made,
    })))
}
