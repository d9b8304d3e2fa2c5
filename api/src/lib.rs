//! keyledger-api: the actix-web application — management commands, key
//! verification, health checks, the customer portal — and the error format
//! of docs/api.md. The endpoints form two surfaces ([`Surface`]): the public
//! one, for the platform's customers, and the internal one, for the
//! platform's own servers and proxies; a deployment serves them on one
//! listener or two.

pub mod access;
pub mod auth;
pub mod body;
pub mod clock;
pub mod db_health;
pub mod error;
pub mod forward_auth;
pub mod group_commit;
pub mod health;
pub mod idempotency;
pub mod key_cache;
pub mod keys;
pub mod leaks;
pub mod manage;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod ops;
pub mod org;
pub mod portal;
pub mod rate_limit;
pub mod recipients;
pub mod request_id;
pub mod route_table;
pub mod striped;
pub mod usage;
pub mod verify;
pub mod verify_body;
pub mod webhook_endpoints;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::Method;
use actix_web::{guard, web, App, HttpServer};
use keyledger_events::domain::{confirmation::CONFIRM_PATH, Environment, HashKey, IpRange, KeyId};
use keyledger_events::run_loop::{from_fn, run_loop, NoWake, Progress, Schedule};
use keyledger_events::shutdown::Shutdown;
use sqlx::PgPool;

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
    /// Reverse proxies whose `X-Real-IP` / `X-Forwarded-For` name the client
    /// (none by default: anyone can send those headers).
    pub trusted_proxies: Vec<IpRange>,
    /// Where `/v1/auth` reads the original request.
    pub forward_auth: forward_auth::ForwardAuthStyle,
    /// How long into a database outage cached keys keep their answers
    /// (zero: fail closed at once).
    pub outage_grace: Duration,
    /// The base of every link keyledger sends (no trailing slash).
    pub public_url: String,
    /// How long a portal sign-in link works after it is minted.
    pub portal_link_lifetime: Duration,
    /// Keys (not deleted) one organization may have.
    pub max_keys_per_org: u64,
    /// The public keys leak reports must be signed with; `None`:
    /// `POST /v1/leaks` answers 503 until the operator configures them.
    pub leak_report_keys: Option<Arc<leaks::LeakReportKeys>>,
    /// Webhook endpoints one organization may have.
    pub max_webhooks_per_org: u64,
    /// Whether webhook endpoints may be plain `http` and point at loopback,
    /// private or link-local addresses (`KEYLEDGER_WEBHOOK_ALLOW_PRIVATE`).
    pub webhook_allow_private: bool,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            cache_ttl: Duration::from_secs(10),
            cache_capacity: 100_000,
            failed_attempts_per_minute: 20,
            usage_flush: Duration::from_secs(5),
            trusted_proxies: vec![],
            forward_auth: forward_auth::ForwardAuthStyle::default(),
            outage_grace: Duration::from_secs(60),
            public_url: "http://127.0.0.1:8080".into(),
            portal_link_lifetime: Duration::from_secs(300),
            max_keys_per_org: 10_000,
            leak_report_keys: None,
            max_webhooks_per_org: 20,
            webhook_allow_private: false,
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
    pub routes: Arc<route_table::RouteTable>,
    pub settings: ApiSettings,
    pub cache: Arc<key_cache::KeyCache>,
    /// Per-key plan limits.
    pub limiter: Arc<rate_limit::RateLimiter<KeyId>>,
    /// Invalid keys per client address (management API, `/v1/auth`).
    pub failures: Arc<rate_limit::RateLimiter<access::GuardSubject>>,
    /// Invalid keys per end client named in `/v1/verify`'s `ip`.
    pub end_client_failures: Arc<rate_limit::RateLimiter<access::GuardSubject>>,
    pub usage: Arc<usage::UsageAccumulator>,
    /// Whether PostgreSQL is known to be down (and since when).
    pub database: Arc<db_health::DatabaseHealth>,
    /// Requests by route and status, and their durations.
    pub http: Arc<metrics::HttpMetrics>,
    /// Key checks by result code.
    pub verifications: Arc<metrics::Verifications>,
    /// Metrics rendered by other parts of the process (`dev`: the workers').
    pub extra_metrics: Vec<ops::MetricsSource>,
    /// The time every request reads once (`clock::now`); tests move it.
    pub clock: clock::Clock,
    /// The organizations' key counts the quota check last took.
    pub key_counts: Arc<manage::KeyCounts>,
    /// Creations waiting to be committed together.
    pub creations: Arc<group_commit::CreationQueue>,
    /// Leak reports received: signed ones and refused (forged) ones.
    pub leak_reports: Arc<leaks::LeakReportCounts>,
    /// Tells the workers of new keys once they are committed.
    pub announcer: Arc<keyledger_events::log::Announcer>,
}

impl AppState {
    pub fn new(pool: PgPool, hash_key: HashKey, environment: Environment, settings: ApiSettings) -> AppState {
        let database = Arc::new(db_health::DatabaseHealth::default());
        AppState {
            pool,
            hash_key,
            environment,
            kafka: None,
            routes: Arc::default(),
            cache: Arc::new(key_cache::KeyCache::new(
                settings.cache_ttl,
                settings.cache_capacity,
                settings.outage_grace,
                database.clone(),
            )),
            limiter: Arc::new(rate_limit::RateLimiter::new(settings.cache_capacity)),
            failures: Arc::new(rate_limit::RateLimiter::new(settings.cache_capacity)),
            end_client_failures: Arc::new(rate_limit::RateLimiter::new(settings.cache_capacity)),
            usage: Arc::default(),
            database,
            http: Arc::default(),
            verifications: Arc::default(),
            extra_metrics: Vec::new(),
            clock: clock::Clock::system(),
            leak_reports: Arc::default(),
            key_counts: Arc::default(),
            creations: Arc::default(),
            announcer: Arc::default(),
            settings,
        }
    }

    /// The API's background work until `shutdown`: the database probe,
    /// cache invalidation, announcements of new keys, usage flushes (and a
    /// last one), limiter sweeps.
    pub async fn run_background(self, shutdown: Shutdown) {
        let (keys, addresses, clock) = (
            self.limiter.clone(),
            [self.failures.clone(), self.end_client_failures.clone()],
            self.clock.clone(),
        );
        // The limiters' windows are in the app's time (tests move it).
        let sweep = from_fn(|| async {
            let now = clock.now().timestamp().max(0) as u64;
            keys.sweep(now);
            for limiter in &addresses {
                limiter.sweep(now);
            }
            Progress::Idle
        });
        let sweeper = run_loop(
            &shutdown,
            Schedule::every(Duration::from_secs(30)).waiting_first(),
            NoWake,
            sweep,
        );
        tokio::join!(
            self.database.run_probe(self.pool.clone(), shutdown.clone()),
            self.cache.clone().listen(self.pool.clone(), shutdown.clone()),
            self.announcer.run(self.pool.clone(), shutdown.clone()),
            self.usage.run(
                self.pool.clone(),
                &self.database,
                self.settings.usage_flush,
                shutdown.clone()
            ),
            sweeper,
        );
    }
}

/// Largest request body accepted (docs/api.md, "Conventions": 64 KiB).
pub const BODY_LIMIT: usize = 64 * 1024;

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// Everything (one listener: the default).
    All,
    /// What the platform's customers call: the management API, health
    /// checks, the OpenAPI document.
    Public,
    /// What the platform's own servers and proxies call: `/v1/verify`,
    /// `/v1/auth` and `/metrics` (plus health checks, for probes).
    Internal,
}

/// Registers every route; used by the server and by in-process tests.
pub fn configure(cfg: &mut web::ServiceConfig) {
    configure_surface(cfg, Surface::All);
}

/// Registers the routes of one surface; any other path answers 404 like an
/// unknown one.
pub fn configure_surface(cfg: &mut web::ServiceConfig, surface: Surface) {
    let (public, internal) = (surface != Surface::Internal, surface != Surface::Public);
    let mut v1 = web::scope("/v1");
    // The hot path first, outside the `/v1` scope: the router tries routes
    // in order, each management route with an `{id}` is a regex match it
    // would otherwise run for every verification (8% of `/v1/auth`'s time),
    // and a scope is one more routing step per request.
    // Each carries its own pattern as its metrics label, which the metrics
    // layer then reads without building a string (`metrics::Recorder`).
    // `/v1/verify` takes POST by a plain comparison: actix's method guard
    // also records the method in the request's extensions for a 405 answer
    // (two allocations per check), which this route does not give.
    if internal {
        let post = guard::fn_guard(|ctx| ctx.head().method == Method::POST);
        cfg.service(hot_route("/v1/verify").guard(post).to(verify::verify))
            .service(hot_route("/v1/auth").to(forward_auth::auth))
            .service(hot_route("/v1/auth/{tail:.*}").to(forward_auth::auth_path))
            .route("/metrics", web::get().to(metrics::metrics));
    }
    if public {
        // Before the `/v1` scope, which would otherwise take the path.
        cfg.route(CONFIRM_PATH, web::get().to(recipients::confirm));
        v1 = v1
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
            .route("/leaks", web::post().to(leaks::report))
            .route("/portal/sessions", web::post().to(portal::sign_in::mint))
            .route("/webhooks", web::post().to(webhooks::create))
            .route("/webhooks", web::get().to(webhooks::list))
            .route("/webhooks/{id}", web::get().to(webhooks::get))
            .route("/webhooks/{id}", web::patch().to(webhooks::update))
            .route("/webhooks/{id}", web::delete().to(webhooks::delete))
            .route("/webhooks/{id}/deliveries", web::get().to(webhooks::deliveries))
            .route("/webhooks/{id}/replay", web::post().to(webhooks::replay));
    }
    if public {
        cfg.route("/openapi.json", web::get().to(openapi::openapi))
            .configure(portal::configure);
    }
    cfg.service(v1)
        .route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .default_service(web::to(error::not_found));
}

/// A route of the hot path, with its pattern as its metrics label (every
/// other route's label is its pattern, built per request).
fn hot_route(pattern: &'static str) -> actix_web::Resource {
    web::resource(pattern).app_data(metrics::RouteLabel(pattern))
}

/// The HTTP server on an already-bound listener (port 0 in tests), serving
/// every endpoint.
pub fn server(listener: std::net::TcpListener, state: AppState) -> std::io::Result<actix_web::dev::Server> {
    server_of(listener, state, Surface::All)
}

/// The HTTP server of one surface on an already-bound listener.
pub fn server_of(
    listener: std::net::TcpListener,
    state: AppState,
    surface: Surface,
) -> std::io::Result<actix_web::dev::Server> {
    let http = state.http.clone();
    let data = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(surface)
            .wrap(actix_web::middleware::from_fn(middleware::request_context))
            // Outermost: every answer is counted.
            .wrap(metrics::HttpLayer(http.clone()))
            .configure(|cfg| configure_surface(cfg, surface))
    })
    .listen(listener)?
    .shutdown_timeout(10)
    .disable_signals()
    .run();
    Ok(server)
}
