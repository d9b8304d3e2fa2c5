//! The operations listener of `keyledger work`, a process without the API:
//! `/healthz`, `/readyz` and `/metrics`, answered as the API answers them.
//! Also the hook through which other parts of a process (the workers'
//! projection lag) add to `/metrics`.

use std::sync::Arc;

use actix_web::{web, App, HttpResponse, HttpServer};
use keyledger_events::bus::KafkaSettings;
use sqlx::PgPool;

use crate::db_health::DatabaseHealth;
use crate::health;

/// Appends Prometheus text (`# HELP`, `# TYPE` and samples) to `/metrics`.
pub type MetricsSource = Arc<dyn Fn(&mut String) + Send + Sync>;

#[derive(Clone)]
pub struct OpsState {
    pub pool: PgPool,
    pub kafka: Option<KafkaSettings>,
    pub database: Arc<DatabaseHealth>,
    pub metrics: Vec<MetricsSource>,
}

async fn readyz(state: web::Data<OpsState>) -> HttpResponse {
    health::readiness(&state.pool, state.kafka.as_ref(), &state.database).await
}

async fn metrics(state: web::Data<OpsState>) -> HttpResponse {
    let mut text = String::new();
    for source in &state.metrics {
        source(&mut text);
    }
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(text)
}

/// The listener's server, on an already-bound listener.
pub fn server(listener: std::net::TcpListener, state: OpsState) -> std::io::Result<actix_web::dev::Server> {
    let data = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .wrap(actix_web::middleware::from_fn(crate::middleware::request_context))
            .route("/healthz", web::get().to(health::healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics))
            .default_service(web::to(crate::error::not_found))
    })
    .workers(1)
    .listen(listener)?
    .shutdown_timeout(1)
    .disable_signals()
    .run();
    Ok(server)
}
