//! `/healthz` (the process answers) and `/readyz` (its dependencies do),
//! for the API and for `keyledger work`'s listener alike.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use keyledger_events::bus::KafkaSettings;
use serde_json::json;
use sqlx::PgPool;

use crate::db_health::DatabaseHealth;
use crate::error::UNAVAILABLE_RETRY_AFTER;
use crate::{error::ApiError, AppState};

/// How long `/readyz` waits for a dependency.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    readiness(&state.pool, state.kafka.as_ref(), &state.database).await
}

/// 200 when PostgreSQL (and Kafka, when configured) answer; 503 otherwise,
/// with each dependency's state in `checks`. A database known to be down
/// is reported at once, with the time the outage began.
pub async fn readiness(pool: &PgPool, kafka: Option<&KafkaSettings>, database: &DatabaseHealth) -> HttpResponse {
    let mut checks = json!({});
    let mut message = "A dependency is unreachable; retry shortly.".to_owned();
    let postgres = match database.down_since() {
        Some((_, since)) => {
            message = format!(
                "PostgreSQL has been unreachable since {}; retry shortly.",
                keyledger_events::representation::rfc3339(since)
            );
            checks["postgres_down_since"] = json!(keyledger_events::representation::rfc3339(since));
            false
        }
        None => {
            let ping = sqlx::query_scalar::<_, i32>("select 1").fetch_one(pool);
            matches!(tokio::time::timeout(CHECK_TIMEOUT, ping).await, Ok(Ok(_)))
        }
    };
    checks["postgres"] = json!(if postgres { "ok" } else { "unreachable" });
    let mut ready = postgres;
    if let Some(kafka) = kafka {
        let reachable = kafka.reachable(2 * CHECK_TIMEOUT).await;
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
        .filter(|(name, state)| *state == "unreachable" && !name.ends_with("_since"))
        .map(|(name, state)| (name.clone(), json!([state])))
        .collect();
    HttpResponse::ServiceUnavailable()
        .insert_header((actix_web::http::header::RETRY_AFTER, UNAVAILABLE_RETRY_AFTER))
        .json(json!({
            "error": {
                "code": ApiError::Unavailable.code(),
                "message": message,
                "request_id": crate::request_id::current(),
                "details": details,
            },
            "checks": checks,
        }))
}
