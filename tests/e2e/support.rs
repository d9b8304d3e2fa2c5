//! `spawn_app()`: a fresh database, migrated, the real HTTP server on port 0
//! with the projector running beside it, and an organization with its first
//! admin key. Plus a small HTTP client that returns what a user sees.

use std::net::TcpListener;
use std::sync::LazyLock;

use awc::http::{header::HeaderMap, Method, StatusCode};
use keyledger_api::{AppState, Surface};
use keyledger_events::domain::{Environment, HashKey};
use keyledger_events::shutdown::ShutdownSignal;
use serde_json::Value;
use sqlx::{Connection, PgPool};

/// The projectors run here, on a runtime that outlives every test's own
/// (a test's actix runtime is torn down when it ends).
static WORKERS: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
});

/// Runs `work` on the workers' runtime (it outlives the test's own), e.g.
/// a mailer loop that stops when its shutdown sender is dropped.
pub fn spawn_worker(work: impl std::future::Future<Output = ()> + Send + 'static) -> tokio::task::JoinHandle<()> {
    WORKERS.spawn(work)
}

/// A database of its own for one test, on the server `DATABASE_URL` names
/// (its database name aside), else on `postgres://postgres@127.0.0.1:5432`.
pub fn fresh_database_url() -> String {
    on_test_server(&format!("kl_e2e_{}", uuid::Uuid::new_v4().simple()))
}

/// The tests' PostgreSQL server's own `postgres` database (for reading
/// server settings before a test's database exists).
pub fn server_database_url() -> String {
    on_test_server("postgres")
}

/// `database` on the tests' PostgreSQL server.
fn on_test_server(database: &str) -> String {
    let server = std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/keyledger".into());
    let mut url = url::Url::parse(&server).expect("DATABASE_URL is a postgres:// URL");
    url.set_path(&format!("/{database}"));
    url.to_string()
}

/// The databases of dropped harnesses, dropped when the test process exits.
/// Not earlier: `DROP DATABASE` keeps its transaction open while it waits
/// for a checkpoint (seconds on a busy server), and the log readers of every
/// database on the server — the other tests' projectors — wait for the
/// oldest open transaction.
static LEFT_BEHIND: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
static AT_EXIT: std::sync::Once = std::sync::Once::new();

extern "C" {
    fn atexit(callback: extern "C" fn()) -> std::ffi::c_int;
}

/// Leaves `database_url` to be dropped when the test process exits.
fn drop_at_exit(database_url: String) {
    AT_EXIT.call_once(|| {
        // SAFETY: registers a function that takes no arguments and never
        // unwinds (it catches every panic).
        unsafe { atexit(drop_left_behind) };
    });
    LEFT_BEHIND
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(database_url);
}

/// Drops every database left behind.
/// Cleaning up never fails the run: errors are ignored.
extern "C" fn drop_left_behind() {
    let urls = std::mem::take(&mut *LEFT_BEHIND.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    if urls.is_empty() {
        return;
    }
    let _ = std::panic::catch_unwind(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        // A few at a time: concurrent drops share checkpoints, and the
        // server's connection limit is shared with whatever else runs.
        use futures_util::StreamExt;
        runtime.block_on(futures_util::stream::iter(urls).for_each_concurrent(8, drop_database));
    });
}

/// Drops a test's database once nothing is connected to it any more,
/// waiting at most 10 s; a database that cannot be dropped is left.
async fn drop_database(database_url: String) {
    let Some(name) = url::Url::parse(&database_url)
        .ok()
        .map(|url| url.path().trim_start_matches('/').to_owned())
        .filter(|name| name.starts_with("kl_e2e_") && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    else {
        return;
    };
    let Ok(mut admin) = sqlx::PgConnection::connect(&on_test_server("postgres")).await else {
        return;
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let connected: Result<i64, _> = sqlx::query_scalar("select count(*) from pg_stat_activity where datname = $1")
            .bind(&name)
            .fetch_one(&mut admin)
            .await;
        match connected {
            Ok(0) => break,
            Ok(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await
            }
            _ => return,
        }
    }
    let _ = sqlx::query(&format!("drop database if exists {name}"))
        .execute(&mut admin)
        .await;
    let _ = admin.close().await;
}

pub struct TestApp {
    pub address: String,
    /// Where `/v1/verify`, `/v1/auth` and `/metrics` are served: `address`,
    /// unless the app was spawned with an internal listener.
    pub internal: String,
    pub state: AppState,
    pub pool: PgPool,
    pub hash_key: HashKey,
    pub org_id: String,
    /// The organization's first admin key (sk_live_, scope admin).
    pub admin_key: String,
    pub admin_key_id: String,
    stop: ShutdownSignal,
    background: Vec<tokio::task::JoinHandle<()>>,
    database_url: String,
    /// The database this harness created, dropped when it is dropped.
    own_database: Option<String>,
}

impl Drop for TestApp {
    /// Stops the background work; the database the harness created is
    /// dropped when the test process exits.
    fn drop(&mut self) {
        self.stop.fire();
        if let Some(url) = self.own_database.take() {
            drop_at_exit(url);
        }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(keyledger_api::ApiSettings::default(), false).await
}

/// [`spawn_app`] whose organization was created by the operator with these
/// alert addresses (`org create --alert-email`, so they count as confirmed).
pub async fn spawn_app_with_alert_emails(alert_emails: &[&str]) -> TestApp {
    let settings = keyledger_api::ApiSettings {
        usage_flush: std::time::Duration::from_millis(500),
        ..keyledger_api::ApiSettings::default()
    };
    spawn(fresh_database_url(), settings, None, false, alert_emails)
        .await
        .owning_its_database()
}

/// [`spawn_app_with_alert_emails`] with these settings (`usage_flush` is
/// the tests' own).
pub async fn spawn_app_with_settings_and_alert_emails(
    settings: keyledger_api::ApiSettings,
    alert_emails: &[&str],
) -> TestApp {
    let settings = keyledger_api::ApiSettings {
        usage_flush: std::time::Duration::from_millis(500),
        ..settings
    };
    spawn(fresh_database_url(), settings, None, false, alert_emails)
        .await
        .owning_its_database()
}

/// [`spawn_app`] with these settings (`usage_flush` is the tests' own),
/// and with `internal_listener`, the internal endpoints on a second port.
pub async fn spawn_app_with(settings: keyledger_api::ApiSettings, internal_listener: bool) -> TestApp {
    let settings = keyledger_api::ApiSettings {
        usage_flush: std::time::Duration::from_millis(500),
        ..settings
    };
    spawn(fresh_database_url(), settings, None, internal_listener, &[])
        .await
        .owning_its_database()
}

/// [`spawn_app_with`] the default settings but a quota of `quota` keys per
/// organization.
pub async fn spawn_app_with_key_quota(quota: u64) -> TestApp {
    let settings = keyledger_api::ApiSettings {
        max_keys_per_org: quota,
        ..keyledger_api::ApiSettings::default()
    };
    spawn_app_with(settings, false).await
}

/// A pool like the binary's (short acquire timeout) for the background work.
async fn background_pool(url: &str) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(keyledger::db::ACQUIRE_TIMEOUT)
        .connect(url)
        .await
        .expect("background pool")
}

/// [`spawn_app`] on a chosen database (e.g. on a private cluster) with
/// chosen settings, and the hash key of another app on the same database
/// (a second API process of one deployment) or a new one.
pub async fn spawn_app_on(
    database_url: String,
    settings: keyledger_api::ApiSettings,
    hash_key: Option<HashKey>,
) -> TestApp {
    spawn(database_url, settings, hash_key, false, &[]).await
}

async fn spawn(
    database_url: String,
    settings: keyledger_api::ApiSettings,
    hash_key: Option<HashKey>,
    internal_listener: bool,
    alert_emails: &[&str],
) -> TestApp {
    let pool = keyledger::db::connect(&database_url).await.expect("database");
    let hash_key = hash_key.unwrap_or_else(|| {
        let mut bytes = [0u8; 32];
        bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        HashKey::from_bytes(bytes)
    });
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    // Links point at this server unless the test chose another base.
    let settings = if settings.public_url == keyledger_api::ApiSettings::default().public_url {
        keyledger_api::ApiSettings {
            public_url: address.clone(),
            ..settings
        }
    } else {
        settings
    };
    let state = AppState::new(pool.clone(), hash_key.clone(), Environment::Live, settings);
    let stop = ShutdownSignal::new();
    let stopped = stop.subscribe();
    let (background, url) = (state.clone(), database_url.clone());
    let background_stop = stopped.clone();
    let background = WORKERS.spawn(async move {
        let pool = background_pool(&url).await;
        AppState { pool, ..background }.run_background(background_stop).await;
    });
    let internal = if internal_listener {
        let second = TcpListener::bind("127.0.0.1:0").unwrap();
        let internal = format!("http://{}", second.local_addr().unwrap());
        actix_web::rt::spawn(keyledger_api::server_of(second, state.clone(), Surface::Internal).unwrap());
        actix_web::rt::spawn(keyledger_api::server_of(listener, state.clone(), Surface::Public).unwrap());
        internal
    } else {
        actix_web::rt::spawn(keyledger_api::server(listener, state.clone()).unwrap());
        address.clone()
    };
    let url = database_url.clone();
    let projector = WORKERS.spawn(async move {
        let pool = background_pool(&url).await;
        keyledger_workers::Projector::read_models(pool).run(stopped).await;
    });
    let alert_emails = alert_emails.iter().map(|e| e.to_string()).collect();
    let created = keyledger::cli::create_org(
        &pool,
        hash_key.clone(),
        "Acme".into(),
        "free".into(),
        None,
        alert_emails,
    )
    .await
    .expect("org");
    TestApp {
        address,
        internal,
        state,
        pool,
        hash_key,
        org_id: created["org"]["id"].as_str().unwrap().to_owned(),
        admin_key: created["key"]["key"].as_str().unwrap().to_owned(),
        admin_key_id: created["key"]["id"].as_str().unwrap().to_owned(),
        stop,
        background: vec![projector, background],
        database_url,
        own_database: None,
    }
}

/// What a user sees of an answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `error.code` of an error answer.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    #[track_caller]
    pub fn expect(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "unexpected answer: {:#}", self.body);
        &self.body
    }

    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status.as_u16(), self.code()),
            (status, code),
            "unexpected answer: {:#}",
            self.body
        );
        assert!(self.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(self.body["error"]["request_id"].as_str().is_some_and(|m| !m.is_empty()));
    }
}

/// One request; `auth` is the bearer key (None: no header).
pub async fn call(
    base: &str,
    method: Method,
    path: &str,
    auth: Option<&str>,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Answer {
    let client = awc::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .finish();
    let mut request = client.request(method, format!("{base}{path}"));
    if let Some(key) = auth {
        request = request.insert_header(("Authorization", format!("Bearer {key}")));
    }
    for &(name, value) in headers {
        request = request.insert_header((name, value));
    }
    let mut response = match body {
        Some(json) => request.send_json(&json).await,
        None => request.send().await,
    }
    .expect("request sent");
    let bytes = response.body().limit(1 << 20).await.expect("body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    Answer {
        status: response.status(),
        headers: response.headers().clone(),
        body,
    }
}

/// Raw bytes with a chosen content type (for malformed-input tests).
pub async fn call_raw(base: &str, method: Method, path: &str, auth: &str, content_type: &str, body: Vec<u8>) -> Answer {
    let client = awc::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .finish();
    let mut response = client
        .request(method, format!("{base}{path}"))
        .insert_header(("Authorization", format!("Bearer {auth}")))
        .insert_header(("Content-Type", content_type))
        .send_body(body)
        .await
        .expect("request sent");
    let bytes = response.body().limit(1 << 20).await.expect("body");
    Answer {
        status: response.status(),
        headers: response.headers().clone(),
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

impl TestApp {
    /// The harness created its database: it drops it when it is dropped.
    fn owning_its_database(mut self) -> TestApp {
        self.own_database = Some(self.database_url.clone());
        self
    }

    /// Stops the projector and the API's background work (which flushes
    /// the last usage counts) and waits until they have stopped.
    pub async fn stop_background(&mut self) {
        self.stop.fire();
        for task in self.background.drain(..) {
            task.await.unwrap();
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        call(&self.address, Method::GET, path, Some(&self.admin_key), None, &[]).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        call(
            &self.address,
            Method::POST,
            path,
            Some(&self.admin_key),
            Some(body),
            &[],
        )
        .await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Answer {
        call(
            &self.address,
            Method::PATCH,
            path,
            Some(&self.admin_key),
            Some(body),
            &[],
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        call(&self.address, Method::DELETE, path, Some(&self.admin_key), None, &[]).await
    }

    /// Creates a key and returns its object (with the `key` secret).
    pub async fn create_key(&self, body: Value) -> Value {
        self.post("/v1/keys", body).await.expect(201).clone()
    }

    pub async fn verify(&self, body: Value) -> Value {
        call(&self.internal, Method::POST, "/v1/verify", None, Some(body), &[])
            .await
            .expect(200)
            .clone()
    }

    /// How many events the log holds (to prove a refusal appended nothing),
    /// usage records left out: the app's flush appends those every 500 ms
    /// for whatever keys were used, and one may land between two counts.
    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("select count(*) from events where type <> 'key.used'")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// The event types of one key's stream, in order, usage records left
    /// out (the app's flush appends them every 500 ms once the key is used).
    pub async fn stream_types(&self, key_id: &str) -> Vec<String> {
        sqlx::query_scalar("select type from events where stream_id = $1 and type <> 'key.used' order by version")
            .bind(format!("key-{key_id}"))
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    /// A second organization with its admin key, in the same deployment.
    pub async fn other_org(&self) -> (String, String) {
        let created = keyledger::cli::create_org(
            &self.pool,
            self.hash_key.clone(),
            "Other".into(),
            "pro".into(),
            None,
            vec![],
        )
        .await
        .unwrap();
        (
            created["org"]["id"].as_str().unwrap().to_owned(),
            created["key"]["key"].as_str().unwrap().to_owned(),
        )
    }
}

/// Waits until every committed event is visible to the log's readers (a
/// transaction still open anywhere on the server holds them back; other
/// tests run in parallel), so that "caught up" means "published everything".
pub async fn settle(pool: &sqlx::PgPool) {
    eventually(std::time::Duration::from_secs(30), || async {
        let all: i64 = sqlx::query_scalar("select count(*) from events")
            .fetch_one(pool)
            .await
            .unwrap();
        let readable = keyledger_events::log::read_after(pool, Default::default(), 1_000_000)
            .await
            .unwrap();
        if readable.len() as i64 == all {
            return Ok(());
        }
        Err("events stayed invisible to readers".to_owned())
    })
    .await
}

/// Polls `attempt` until it answers `Ok`, and returns its value; when
/// `timeout` has passed, fails the test with the last `Err` (what was seen
/// instead). Polls soon at first (20 ms), then less often (up to every
/// 200 ms), so a quick condition is seen quickly and a slow one costs little.
/// For conditions other processes make true; time-based behaviour sets the
/// clock instead.
pub async fn eventually<T, F, Fut>(timeout: std::time::Duration, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = std::time::Instant::now() + timeout;
    let mut pause = std::time::Duration::from_millis(20);
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(seen) => assert!(std::time::Instant::now() < deadline, "not within {timeout:?}: {seen}"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(200));
    }
}
