//! The real `keyledger` binary: embedded mode, the CLI, the hash-key rule,
//! and the promise that no secret is ever at rest or in the logs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use awc::http::Method;
use serde_json::{json, Value};

use crate::support::{call, fresh_database_url};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_keyledger");
pub(crate) const HASH_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

pub(crate) fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keyledger-e2e-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub(crate) fn keyledger(database_url: &str, data_dir: &Path) -> Command {
    let mut command = Command::new(BIN);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", database_url)
        .env("KEYLEDGER_DATA_DIR", data_dir)
        // Usage is flushed at shutdown only (unless a test says otherwise), so
        // the log holds still while tests count events.
        .env("KEYLEDGER_USAGE_FLUSH_SECONDS", "3600")
        .current_dir(data_dir);
    command
}

/// A long-running `keyledger` process whose output goes to a file.
pub(crate) struct Server {
    child: Child,
    pub(crate) address: String,
    log: PathBuf,
}

impl Server {
    /// Listens on port 0: the process binds a free port itself and logs it
    /// (choosing one here and passing it on would race other tests for it).
    fn spawn(command: &mut Command, log: PathBuf) -> Server {
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .env("KEYLEDGER_LISTEN", "127.0.0.1:0")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Server {
            child,
            address: String::new(),
            log,
        }
    }

    /// A process without HTTP (`work`), ready once its log says `ready`.
    pub(crate) async fn start_worker(command: &mut Command, log: PathBuf, ready: &str) -> Server {
        let mut server = Server::spawn(command, log);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&server.log).unwrap_or_default();
            if text.contains(ready) {
                // `work` serves /healthz, /readyz and /metrics on the address it logs.
                server.address = format!("http://{}", server.logged_address("listening").await);
                return server;
            }
            assert!(server.child.try_wait().unwrap().is_none(), "worker exited: {text}");
            assert!(Instant::now() < deadline, "worker not ready: {text}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A process serving HTTP, once it answers `/healthz` on the address it
    /// logged.
    pub(crate) async fn start(command: &mut Command, log: PathBuf) -> Server {
        let mut server = Server::spawn(command, log);
        server.address = format!("http://{}", server.logged_address("keyledger API listening").await);
        crate::support::eventually(Duration::from_secs(30), || async {
            let client = awc::Client::default();
            if let Ok(response) = client.get(format!("{}/healthz", server.address)).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            Err(format!(
                "server did not start: {}",
                std::fs::read_to_string(&server.log).unwrap_or_default()
            ))
        })
        .await;
        server
    }

    /// The address the process logged on its line saying `what`
    /// (`… address=<address>`), once it has.
    pub(crate) async fn logged_address(&mut self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let logged = text
                .lines()
                .filter(|line| line.contains(what))
                .find_map(|line| line.split_once(" address=").map(|(_, rest)| rest));
            if let Some(rest) = logged {
                return rest.split_whitespace().next().unwrap().to_owned();
            }
            assert!(self.child.try_wait().unwrap().is_none(), "the process exited: {text}");
            assert!(Instant::now() < deadline, "no '{what}' address in the log: {text}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops with SIGTERM (a graceful shutdown) and returns the log.
    pub(crate) fn stop(self) -> String {
        self.stop_within(Duration::from_secs(15))
    }

    /// Stops with SIGTERM, asserting the process exits within `limit`;
    /// returns the log.
    pub(crate) fn stop_within(mut self, limit: Duration) -> String {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + limit;
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "did not exit within {limit:?} of SIGTERM: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::fs::read_to_string(&self.log).unwrap()
    }

    /// `kill -9`: no shutdown at all.
    pub(crate) fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn run(command: &mut Command) -> Output {
    command.output().unwrap()
}

/// `keyledger org create --name NAME [extra…]` with the test hash key; the
/// printed JSON (the org and its first admin key).
pub(crate) fn create_org(url: &str, dir: &Path, name: &str, extra: &[&str]) -> Value {
    let mut command = keyledger(url, dir);
    command
        .env("KEYLEDGER_HASH_KEY", HASH_KEY)
        .args(["org", "create", "--name", name])
        .args(extra);
    json_stdout(&run(&mut command))
}

pub(crate) fn json_stdout(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[actix_web::test]
async fn serve_and_work_refuse_to_start_without_a_hash_key() {
    let (url, dir) = (fresh_database_url(), temp_dir());
    for sub in ["serve", "work"] {
        let output = run(keyledger(&url, &dir).arg(sub));
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("KEYLEDGER_HASH_KEY") && stderr.contains("openssl rand -hex 32"),
            "{stderr}"
        );
    }
    let output = run(keyledger(&url, &dir)
        .arg("serve")
        .env("KEYLEDGER_HASH_KEY", "too-short"));
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("malformed"));
}

#[actix_web::test]
async fn dev_mode_creates_the_database_and_a_hash_key_and_serves_the_api() {
    let (url, dir) = (fresh_database_url(), temp_dir());
    let dev = Server::start(keyledger(&url, &dir).arg("dev"), dir.join("dev.log")).await;
    let hash_key = std::fs::read_to_string(dir.join("hash_key")).unwrap();
    assert_eq!(hash_key.trim().len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("hash_key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the hash key is private to its owner");
    }
    let created = json_stdout(&run(
        keyledger(&url, &dir).args(["org", "create", "--name", "Acme", "--plan", "pro"])
    ));
    assert_eq!(created["org"]["plan"], "pro");
    assert_eq!(created["org"]["rate_limit_per_minute"], 10_000);
    assert_eq!(created["key"]["scopes"], json!(["admin"]));
    let admin = created["key"]["key"].as_str().unwrap();
    assert!(admin.starts_with("sk_live_"));
    let key = call(
        &dev.address,
        Method::POST,
        "/v1/keys",
        Some(admin),
        Some(json!({"name": "k", "type": "secret"})),
        &[],
    )
    .await;
    let id = key.expect(201)["id"].as_str().unwrap().to_owned();
    let list = call(&dev.address, Method::GET, "/v1/keys", Some(admin), None, &[]).await;
    assert!(list.expect(200)["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["id"] == id.as_str()));

    let org_id = created["org"]["id"].as_str().unwrap();
    let upgraded = json_stdout(&run(keyledger(&url, &dir).args([
        "org",
        "set-plan",
        org_id,
        "enterprise",
        "--rate-limit",
        "50000",
    ])));
    assert_eq!(
        (&upgraded["plan"], &upgraded["rate_limit_per_minute"]),
        (&json!("enterprise"), &json!(50_000))
    );
    let refused = run(keyledger(&url, &dir).args(["org", "set-plan", org_id, "enterprise"]));
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("rate limit"));
    // `dev` runs the workers too: their projection lag is on the API's /metrics.
    crate::support::eventually(Duration::from_secs(30), || async {
        let metrics = call(&dev.address, Method::GET, "/metrics", None, None, &[]).await;
        let text = metrics.body.as_str().unwrap_or_default().to_owned();
        if text.contains("keyledger_projection_lag_events{projector=\"read_models\"}") {
            return Ok(());
        }
        Err(format!("no projection lag in /metrics: {text}"))
    })
    .await;
    dev.stop();
}

#[actix_web::test]
async fn audit_rebuilds_a_key_as_of_a_past_moment_from_events_alone() {
    let (url, dir) = (fresh_database_url(), temp_dir());
    let server = Server::start(
        keyledger(&url, &dir).arg("serve").env("KEYLEDGER_HASH_KEY", HASH_KEY),
        dir.join("serve.log"),
    )
    .await;
    let created = create_org(&url, &dir, "Audit", &[]);
    let admin = created["key"]["key"].as_str().unwrap();
    let key = call(
        &server.address,
        Method::POST,
        "/v1/keys",
        Some(admin),
        Some(json!({"name": "first name", "type": "secret"})),
        &[],
    )
    .await;
    let id = key.expect(201)["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/keys/{id}");
    call(
        &server.address,
        Method::PATCH,
        &path,
        Some(admin),
        Some(json!({"name": "second name"})),
        &[],
    )
    .await
    .expect(200);
    call(
        &server.address,
        Method::POST,
        &format!("{path}/deactivate"),
        Some(admin),
        None,
        &[],
    )
    .await
    .expect(200);
    // The read model is tampered with: audit must not care.
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query("update keys set name = 'tampered' where id = $1")
        .bind(&id)
        .execute(&pool)
        .await
        .unwrap();
    // A moment between the creation and the rename, by the times the
    // events recorded (no waiting for the clock to move).
    let times: Vec<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("select occurred_at from events where stream_id = $1 and version <= 2 order by version")
            .bind(format!("key-{id}"))
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(times[0] < times[1], "{times:?}");
    let between = times[0] + (times[1] - times[0]) / 2;

    let at = between.to_rfc3339();
    let past = json_stdout(&run(keyledger(&url, &dir).args(["audit", &id, "--at", &at])));
    assert_eq!(
        (&past["name"], &past["status"], &past["version"]),
        (&json!("first name"), &json!("active"), &json!(1))
    );
    let now = json_stdout(&run(keyledger(&url, &dir).args([
        "audit",
        &id,
        "--at",
        &chrono::Utc::now().to_rfc3339(),
    ])));
    assert_eq!(
        (&now["name"], &now["status"], &now["version"]),
        (&json!("second name"), &json!("inactive"), &json!(3))
    );
    let before = run(keyledger(&url, &dir).args(["audit", &id, "--at", "2000-01-01T00:00:00Z"]));
    assert_eq!(before.status.code(), Some(1));
    let history = json_stdout(&run(keyledger(&url, &dir).args(["audit", &id])));
    let types: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["key.created", "key.updated", "key.deactivated"]);
    server.stop();
}

#[actix_web::test]
async fn no_secret_is_stored_or_logged() {
    let (url, dir) = (fresh_database_url(), temp_dir());
    let mut command = keyledger(&url, &dir);
    command
        .arg("dev")
        .env("KEYLEDGER_HASH_KEY", HASH_KEY)
        .env("RUST_LOG", "trace");
    let server = Server::start(&mut command, dir.join("dev.log")).await;
    let org = run(keyledger(&url, &dir)
        .env("KEYLEDGER_HASH_KEY", HASH_KEY)
        .env("RUST_LOG", "trace")
        .args(["org", "create", "--name", "Secretive"]));
    let created = json_stdout(&org);
    let cli_log = String::from_utf8_lossy(&org.stderr).into_owned();
    let admin = created["key"]["key"].as_str().unwrap().to_owned();
    let mut secrets = vec![admin.clone()];
    for key_type in ["public", "secret", "test"] {
        let key = call(
            &server.address,
            Method::POST,
            "/v1/keys",
            Some(&admin),
            Some(json!({"name": key_type, "type": key_type})),
            &[],
        )
        .await;
        let body = key.expect(201).clone();
        secrets.push(body["key"].as_str().unwrap().to_owned());
        let path = format!("/v1/keys/{}/regenerate", body["id"].as_str().unwrap());
        let regenerated = call(
            &server.address,
            Method::POST,
            &path,
            Some(&admin),
            Some(json!({"expire_old_in_seconds": 60})),
            &[],
        )
        .await;
        secrets.push(regenerated.expect(200)["key"].as_str().unwrap().to_owned());
        call(
            &server.address,
            Method::POST,
            "/v1/verify",
            None,
            Some(json!({"key": secrets.last().unwrap()})),
            &[],
        )
        .await
        .expect(200);
    }
    // A refused key in a query string must not reach the log either.
    call(
        &server.address,
        Method::GET,
        &format!("/v1/keys?api_key={admin}"),
        None,
        None,
        &[],
    )
    .await
    .expect_error(400, "bad_request");
    let log = server.stop() + &cli_log;
    assert!(log.contains("request"), "the access log is there: {log}");

    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar("select tablename::text from pg_tables where schemaname = 'public'")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(tables.len() >= 4, "{tables:?}");
    let mut dump = String::new();
    for table in &tables {
        let rows: Vec<String> = sqlx::query_scalar(&format!("select t::text from \"{table}\" t"))
            .fetch_all(&pool)
            .await
            .unwrap();
        dump.push_str(&rows.join("\n"));
    }
    assert!(dump.contains("key.regenerated"), "the dump covers the event log");
    for secret in &secrets {
        let body = &secret[8..51];
        assert!(!dump.contains(body), "a secret is stored in the database");
        assert!(!log.contains(body), "a secret is in the logs");
    }
}

#[actix_web::test]
async fn replay_rebuilds_the_read_models_and_check_finds_tampering() {
    let (url, dir) = (fresh_database_url(), temp_dir());
    let server = Server::start(
        keyledger(&url, &dir).arg("dev").env("KEYLEDGER_HASH_KEY", HASH_KEY),
        dir.join("dev.log"),
    )
    .await;
    let created = create_org(&url, &dir, "Replayed", &[]);
    let admin = created["key"]["key"].as_str().unwrap();
    let mut ids = vec![];
    for i in 0..5 {
        let key = call(
            &server.address,
            Method::POST,
            "/v1/keys",
            Some(admin),
            Some(json!({"name": format!("k{i}"), "type": "secret"})),
            &[],
        )
        .await;
        ids.push(key.expect(201)["id"].as_str().unwrap().to_owned());
    }
    let path = format!("/v1/keys/{}", ids[0]);
    call(
        &server.address,
        Method::PATCH,
        &path,
        Some(admin),
        Some(json!({"name": "renamed"})),
        &[],
    )
    .await
    .expect(200);
    call(
        &server.address,
        Method::DELETE,
        &format!("/v1/keys/{}", ids[1]),
        Some(admin),
        None,
        &[],
    )
    .await;

    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let events_before: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&pool)
        .await
        .unwrap();
    let snapshot = || async {
        sqlx::query_scalar::<_, String>("select k::text from keys k order by id")
            .fetch_all(&pool)
            .await
            .unwrap()
    };
    let live = snapshot().await;

    let check = run(keyledger(&url, &dir).args(["replay", "--check"]));
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    // A row changed behind the log's back is found and named.
    sqlx::query("update keys set name = 'tampered' where id = $1")
        .bind(&ids[2])
        .execute(&pool)
        .await
        .unwrap();
    let check = run(keyledger(&url, &dir).args(["replay", "--check"]));
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("tampered") && stdout.contains("k2") && stdout.contains(&ids[2]),
        "{stdout}"
    );
    // Each side named as it is: the tampered row is live, the log's is not.
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("keys: live row differs from the log: ")
                && l.contains("tampered")
                && l.contains(&ids[2])),
        "{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("keys: the log says: ") && !l.contains("tampered") && l.contains(&ids[2])),
        "{stdout}"
    );
    assert_eq!(lines.len(), 2, "{stdout}");

    // Replay repairs it from the log, and the API serves the rebuilt tables.
    let replay = run(keyledger(&url, &dir).arg("replay"));
    assert!(replay.status.success(), "{}", String::from_utf8_lossy(&replay.stderr));
    assert_eq!(snapshot().await, live);
    assert_eq!(
        run(keyledger(&url, &dir).args(["replay", "--check"])).status.code(),
        Some(0)
    );
    let read = call(&server.address, Method::GET, &path, Some(admin), None, &[]).await;
    assert_eq!(read.expect(200)["name"], "renamed");
    let events_after: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(events_after, events_before, "replay appends nothing");
    server.stop();
}

#[actix_web::test]
async fn a_key_deactivated_through_one_server_is_refused_by_another_within_a_second() {
    let (url, dir) = (fresh_database_url(), temp_dir());
    let serve = |name: &str| {
        let mut command = keyledger(&url, &dir);
        command.arg("serve").env("KEYLEDGER_HASH_KEY", HASH_KEY);
        (command, dir.join(name))
    };
    let (mut a, log_a) = serve("a.log");
    let a = Server::start(&mut a, log_a).await;
    let (mut b, log_b) = serve("b.log");
    let b = Server::start(&mut b, log_b).await;
    let created = create_org(&url, &dir, "Two", &[]);
    let admin = created["key"]["key"].as_str().unwrap();
    let key = call(
        &a.address,
        Method::POST,
        "/v1/keys",
        Some(admin),
        Some(json!({"name": "shared", "type": "secret"})),
        &[],
    )
    .await;
    let key = key.expect(201).clone();
    let verify = |server: &Server| {
        let (address, secret) = (server.address.clone(), key["key"].clone());
        async move {
            call(
                &address,
                Method::POST,
                "/v1/verify",
                None,
                Some(json!({"key": secret})),
                &[],
            )
            .await
            .body["code"]
                .clone()
        }
    };
    // B has the key in its cache.
    assert_eq!(verify(&b).await, "VALID");
    assert_eq!(verify(&b).await, "VALID");
    let path = format!("/v1/keys/{}/deactivate", key["id"].as_str().unwrap());
    call(&a.address, Method::POST, &path, Some(admin), None, &[])
        .await
        .expect(200);
    let started = Instant::now();
    while verify(&b).await != "INACTIVE" {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "B still accepted the key after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("revocation seen by the other server after {:?}", started.elapsed());
    a.stop();
    b.stop();
}

#[actix_web::test]
async fn usage_counted_before_a_restart_is_flushed_on_shutdown_and_kept() {
    let (url, dir) = (fresh_database_url(), temp_dir());
    let start = || {
        let mut command = keyledger(&url, &dir);
        // Only the shutdown flush can save the counts.
        command
            .arg("serve")
            .env("KEYLEDGER_HASH_KEY", HASH_KEY)
            .env("KEYLEDGER_USAGE_FLUSH_SECONDS", "3600");
        command
    };
    let server = Server::start(&mut start(), dir.join("first.log")).await;
    let created = create_org(&url, &dir, "Kept", &[]);
    let admin = created["key"]["key"].as_str().unwrap();
    let key = call(
        &server.address,
        Method::POST,
        "/v1/keys",
        Some(admin),
        Some(json!({"name": "k", "type": "secret", "scopes": ["read:analytics"]})),
        &[],
    )
    .await;
    let key = key.expect(201).clone();
    for scopes in [
        json!(["read:analytics"]),
        json!(["read:analytics"]),
        json!(["read:analytics"]),
        json!(["admin"]),
    ] {
        call(
            &server.address,
            Method::POST,
            "/v1/verify",
            None,
            Some(json!({"key": key["key"], "scopes": scopes})),
            &[],
        )
        .await
        .expect(200);
    }
    let log = server.stop();
    assert!(
        log.contains("usage flushed on shutdown") && log.contains("left=0"),
        "{log}"
    );

    let server = Server::start(&mut start(), dir.join("second.log")).await;
    let usage = call(
        &server.address,
        Method::GET,
        &format!("/v1/keys/{}/usage", key["id"].as_str().unwrap()),
        Some(admin),
        None,
        &[],
    )
    .await;
    let usage = usage.expect(200);
    assert_eq!(
        (&usage["total_requests"], &usage["successful"], &usage["failed"]),
        (&json!(4), &json!(3), &json!(1))
    );
    assert!(usage["last_used_at"].is_string());
    server.stop();
}
