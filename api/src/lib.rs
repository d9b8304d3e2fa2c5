//! keyledger-api: the actix-web application — management commands, key
//! verification, health checks — and the error format of `API.md`.

pub mod auth;
pub mod body;
pub mod error;
pub mod health;
pub mod keys;
pub mod middleware;
pub mod org;
pub mod verify;

use actix_web::{web, App, HttpServer};
use keyledger_events::domain::{Environment, HashKey};
use sqlx::PgPool;

pub use error::ApiError;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub hash_key: HashKey,
    /// The environment `/v1/auth` requires (the deployment's).
    pub environment: Environment,
    /// Kafka, when configured: `/readyz` reports whether it is reachable.
    pub kafka: Option<keyledger_events::bus::KafkaSettings>,
}

/// Largest request body accepted (API.md: 64 KiB).
pub const BODY_LIMIT: usize = 64 * 1024;

/// Registers every route; used by the server and by in-process tests.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/v1")
            .route("/keys", web::post().to(keys::create))
            .route("/keys", web::get().to(keys::list))
            .route("/keys/{id}", web::get().to(keys::get))
            .route("/keys/{id}", web::patch().to(keys::update))
            .route("/keys/{id}", web::delete().to(keys::delete))
            .route("/keys/{id}/regenerate", web::post().to(keys::regenerate))
            .route("/keys/{id}/deactivate", web::post().to(keys::deactivate))
            .route("/keys/{id}/activate", web::post().to(keys::activate))
            .route("/keys/{id}/usage", web::get().to(keys::usage))
            .route("/keys/{id}/events", web::get().to(keys::events))
            .route("/org", web::get().to(org::get))
            .route("/org", web::patch().to(org::update))
            .route("/verify", web::post().to(verify::verify)),
    )
    .route("/healthz", web::get().to(health::healthz))
    .route("/readyz", web::get().to(health::readyz))
    .default_service(web::to(error::not_found));
}

/// The HTTP server on an already-bound listener (port 0 in tests).
pub fn server(listener: std::net::TcpListener, state: AppState) -> std::io::Result<actix_web::dev::Server> {
    let data = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .wrap(actix_web::middleware::from_fn(middleware::request_context))
            .configure(configure)
    })
    .listen(listener)?
    .shutdown_timeout(10)
    .disable_signals()
    .run();
    Ok(server)
}
