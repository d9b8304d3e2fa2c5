//! keyledger-api: the actix-web application — management commands, key
//! verification, health checks — and the error format of `API.md`.

pub mod access;
pub mod auth;
pub mod body;
pub mod error;
pub mod forward_auth;
pub mod health;
pub mod key_cache;
pub mod keys;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod org;
pub mod rate_limit;
pub mod recipients;
pub mod routes;
pub mod usage;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpServer};
use keyledger_events::domain::{confirmation::CONFIRM_PATH, Environment, HashKey};
use sqlx::PgPool;
use tokio::sync::watch;

pub use error::ApiError;

/// Tunables of the API process.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// How long a cached key (or unknown key) is trusted without a notification.
    pub cache_ttl: Duration,
    pub cache_capacity: usize,
    /// Invalid keys one client address may send per minute.
    pub failed_attempts_per_minute: u32,
    /// How often usage counts are appended as `key.used` events.
    pub usage_flush: Duration,
    /// Reverse proxies whose `X-Real-IP` / `X-Forwarded-For` name the client.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Keys (not deleted) one organization may have.
    pub max_keys_per_org: u64,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            cache_ttl: Duration::from_secs(10),
            cache_capacity: 100_000,
            failed_attempts_per_minute: 20,
            usage_flush: Duration::from_secs(5),
            trusted_proxies: vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()],
            max_keys_per_org: 10_000,
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub hash_key: HashKey,
    /// The environment `/v1/auth` requires (the deployment's).
    pub environment: Environment,
    /// Kafka, when configured: `/readyz` reports whether it is reachable.
    pub kafka: Option<keyledger_events::bus::KafkaSettings>,
    pub routes: Arc<routes::RouteTable>,
    pub settings: ApiSettings,
    pub cache: Arc<key_cache::KeyCache>,
    /// Per-key plan limits.
    pub limiter: Arc<rate_limit::RateLimiter>,
    /// Invalid keys per client address.
    pub failures: Arc<rate_limit::RateLimiter>,
    pub usage: Arc<usage::UsageAccumulator>,
}

impl AppState {
    pub fn new(pool: PgPool, hash_key: HashKey, environment: Environment, settings: ApiSettings) -> AppState {
        AppState {
            pool,
            hash_key,
            environment,
            kafka: None,
            routes: Arc::default(),
            cache: Arc::new(key_cache::KeyCache::new(settings.cache_ttl, settings.cache_capacity)),
            limiter: Arc::new(rate_limit::RateLimiter::new(settings.cache_capacity)),
            failures: Arc::new(rate_limit::RateLimiter::new(settings.cache_capacity)),
            usage: Arc::default(),
            settings,
        }
    }

    /// The API's background work until `shutdown`: cache invalidation,
    /// usage flushes (and a last one), limiter sweeps.
    pub async fn run_background(self, shutdown: watch::Receiver<bool>) {
        let sweeper = {
            let (limiter, failures, mut shutdown) = (self.limiter.clone(), self.failures.clone(), shutdown.clone());
            async move {
                loop {
                    tokio::select! {
                        changed = shutdown.changed() => if changed.is_err() || *shutdown.borrow() { break },
                        _ = tokio::time::sleep(Duration::from_secs(30)) => {
                            let now = chrono::Utc::now().timestamp().max(0) as u64;
                            limiter.sweep(now);
                            failures.sweep(now);
                        }
                    }
                }
            }
        };
        tokio::join!(
            self.cache.clone().listen(self.pool.clone(), shutdown.clone()),
            self.usage
                .run(self.pool.clone(), self.settings.usage_flush, shutdown.clone()),
            sweeper,
        );
    }
}

/// Largest request body accepted (API.md: 64 KiB).
pub const BODY_LIMIT: usize = 64 * 1024;

/// Registers every route; used by the server and by in-process tests.
pub fn configure(cfg: &mut web::ServiceConfig) {
    // Before the `/v1` scope, which would otherwise take the path.
    cfg.route(CONFIRM_PATH, web::get().to(recipients::confirm));
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
            .route("/verify", web::post().to(verify::verify))
            .route("/auth", web::route().to(forward_auth::auth))
            .route("/auth/{tail:.*}", web::route().to(forward_auth::auth_path)),
    )
    .route("/healthz", web::get().to(health::healthz))
    .route("/metrics", web::get().to(metrics::metrics))
    .route("/readyz", web::get().to(health::readyz))
    .route("/openapi.json", web::get().to(openapi::openapi))
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
