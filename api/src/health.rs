//! `/healthz` (the process answers) and `/readyz` (its dependencies do).

use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::{error::ApiError, AppState};

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// 200 when PostgreSQL (and Kafka, when configured) answer; 503 otherwise,
/// with each dependency's state in `checks`.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let ping = sqlx::query_scalar::<_, i32>("select 1").fetch_one(&state.pool);
    let postgres = matches!(tokio::time::timeout(Duration::from_secs(2), ping).await, Ok(Ok(_)));
    let mut checks = json!({"postgres": if postgres { "ok" } else { "unreachable" }});
    let mut ready = postgres;
    if let Some(kafka) = &state.kafka {
        let reachable = kafka.reachable(Duration::from_secs(2)).await;
        checks["kafka"] = json!(if reachable { "ok" } else { "unreachable" });
        ready &= reachable;
    }
    if ready {
        return HttpResponse::Ok().json(json!({"status": "ready", "checks": checks}));
    }
    let details: serde_json::Map<String, serde_json::Value> = checks
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, state)| *state != "ok")
        .map(|(name, state)| (name.clone(), json!([state])))
        .collect();
    HttpResponse::ServiceUnavailable()
        .insert_header((actix_web::http::header::RETRY_AFTER, "5"))
        .json(json!({"error": {
            "code": ApiError::Unavailable.code(),
            "message": "A dependency is unreachable; retry shortly.",
            "request_id": crate::middleware::current_request_id(),
            "details": details,
        }}))
}
