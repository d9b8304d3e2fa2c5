//! PostgreSQL outages, on a private cluster each test starts and stops:
//! answers are 503 with Retry-After (never 500), fast; a committed create
//! is never answered with an error and retries with its Idempotency-Key
//! leave one key each; confirmed keys keep verifying within the outage
//! grace; everything recovers without a restart.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use awc::http::Method;
use serde_json::{json, Value};

use crate::private_pg::PrivatePostgres;
use crate::support::{call, eventually, spawn_app_on, Answer, TestApp};

fn settings(outage_grace: Duration, cache_ttl: Duration) -> keyledger_api::ApiSettings {
    keyledger_api::ApiSettings {
        usage_flush: Duration::from_millis(500),
        cache_ttl,
        outage_grace,
        ..keyledger_api::ApiSettings::default()
    }
}

async fn verify(app: &TestApp, key: &str) -> Answer {
    call(
        &app.address,
        Method::POST,
        "/v1/verify",
        None,
        Some(json!({"key": key})),
        &[],
    )
    .await
}

async fn wait_for<F: std::future::Future<Output = bool>>(what: &str, seconds: u64, mut check: impl FnMut() -> F) {
    eventually(Duration::from_secs(seconds), || {
        let checked = check();
        async move {
            if checked.await {
                Ok(())
            } else {
                Err(format!("timed out waiting for {what}"))
            }
        }
    })
    .await
}

/// The `code` of a verification answer.
#[track_caller]
fn code(answer: &Answer) -> String {
    answer.expect(200)["code"].as_str().unwrap().to_owned()
}

#[track_caller]
fn assert_unavailable(answer: &Answer) {
    answer.expect_error(503, "unavailable");
    assert!(answer.header("retry-after").is_some(), "503 carries Retry-After");
}

#[actix_web::test]
async fn a_terminated_connection_57p01_is_503_unavailable_not_500() {
    use actix_web::ResponseError;
    let url = crate::support::fresh_database_url();
    let pool = keyledger::db::connect(&url).await.unwrap();
    let mut victim = pool.acquire().await.unwrap();
    let pid: i32 = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(&mut *victim)
        .await
        .unwrap();
    let sleeping = tokio::spawn(async move {
        sqlx::query("select pg_sleep(30)")
            .execute(&mut *victim)
            .await
            .map(|_| ())
    });
    let pool = &pool;
    wait_for("the query to run", 10, || async move {
        let active: Option<String> = sqlx::query_scalar("select state from pg_stat_activity where pid = $1")
            .bind(pid)
            .fetch_optional(pool)
            .await
            .unwrap();
        active.as_deref() == Some("active")
    })
    .await;
    sqlx::query("select pg_terminate_backend($1)")
        .bind(pid)
        .execute(pool)
        .await
        .unwrap();
    let error = sleeping.await.unwrap().expect_err("the session was terminated");
    let code = match &error {
        sqlx::Error::Database(e) => e.code().map(|c| c.into_owned()),
        _ => None,
    };
    assert_eq!(code.as_deref(), Some("57P01"), "{error}");
    let answer = keyledger_api::ApiError::from(error);
    assert_eq!(answer.status_code().as_u16(), 503);
    let response = answer.error_response();
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(answer.code(), "unavailable");
}

/// One create's fate, by its Idempotency-Key (also the key's name).
#[derive(Debug, Clone, PartialEq)]
enum Fate {
    Created,
    Unavailable,
    NoAnswer,
}

#[actix_web::test]
async fn a_database_restart_under_concurrent_creates_answers_no_error_for_a_committed_key() {
    let mut cluster = PrivatePostgres::start().await;
    let app = spawn_app_on(
        cluster.url("keyledger"),
        settings(Duration::from_secs(60), Duration::from_secs(10)),
        None,
    )
    .await;
    // Hundreds of requests with one admin key: no plan limit in the way.
    crate::hot_path::set_plan(&app, "enterprise", Some(1_000_000)).await;
    let fates: std::cell::RefCell<HashMap<String, Fate>> = Default::default();
    let statuses: std::cell::RefCell<Vec<u16>> = Default::default();
    let created = std::cell::Cell::new(0usize);
    let restarted = std::cell::Cell::new(false);
    let client = |c: usize| {
        let (app, fates, statuses, created, restarted) = (&app, &fates, &statuses, &created, &restarted);
        async move {
            let mut i = 0;
            // Until the restart is over, and a few more after it.
            let mut after = 0;
            while after < 5 && i < 400 {
                let name = format!("c{c}-{i}");
                i += 1;
                let answer = awc::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .finish()
                    .post(format!("{}/v1/keys", app.address))
                    .insert_header(("Authorization", format!("Bearer {}", app.admin_key)))
                    .insert_header(("Idempotency-Key", name.as_str()))
                    .send_json(&json!({"name": name, "type": "secret"}))
                    .await;
                let fate = match answer {
                    Ok(response) => {
                        statuses.borrow_mut().push(response.status().as_u16());
                        match response.status().as_u16() {
                            201 => {
                                created.set(created.get() + 1);
                                Fate::Created
                            }
                            503 => {
                                assert!(response.headers().contains_key("retry-after"));
                                Fate::Unavailable
                            }
                            other => panic!("create answered {other}"),
                        }
                    }
                    Err(_) => Fate::NoAnswer,
                };
                fates.borrow_mut().insert(name, fate);
                if restarted.get() {
                    after += 1;
                }
            }
        }
    };
    let restart = async {
        wait_for("some keys before the restart", 60, async || created.get() >= 20).await;
        cluster.stop();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        cluster.start_again().await;
        restarted.set(true);
    };
    let clients = futures_util::future::join_all((0..6).map(client));
    tokio::join!(clients, restart);

    let statuses = statuses.into_inner();
    assert!(!statuses.contains(&500), "no 500: {statuses:?}");
    assert!(statuses.contains(&503), "the restart was seen by some request");
    let fates = fates.into_inner();
    // Nothing answered with an error was committed.
    let pool = &app.pool;
    wait_for("the database to answer", 30, || async move {
        sqlx::query("select 1").execute(pool).await.is_ok()
    })
    .await;
    let names: HashSet<String> = sqlx::query_scalar("select name from keys")
        .fetch_all(&app.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    for (name, fate) in &fates {
        if *fate == Fate::Unavailable {
            assert!(!names.contains(name), "{name} was answered 503 but its key exists");
        }
        if *fate == Fate::Created {
            assert!(names.contains(name), "{name} was answered 201 but its key is missing");
        }
    }
    // Retrying every create that got no 201 with its Idempotency-Key leaves
    // exactly one key per Idempotency-Key.
    for (name, fate) in &fates {
        if *fate == Fate::Created {
            continue;
        }
        eventually(Duration::from_secs(30), || async {
            let answer = call(
                &app.address,
                Method::POST,
                "/v1/keys",
                Some(&app.admin_key),
                Some(json!({"name": name, "type": "secret"})),
                &[("Idempotency-Key", name)],
            )
            .await;
            if answer.status.as_u16() == 201 {
                return Ok(());
            }
            assert_unavailable(&answer);
            Err(format!("{name}: no 201 after the restart"))
        })
        .await;
    }
    let counts: Vec<(String, i64)> =
        sqlx::query_as("select name, count(*) from keys where name like 'c%' group by name")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(counts.len(), fates.len(), "one key per Idempotency-Key");
    assert!(counts.iter().all(|(_, n)| *n == 1), "{counts:?}");
}

#[actix_web::test]
async fn while_the_database_is_stopped_confirmed_keys_keep_their_answers_and_the_rest_is_503_fast() {
    let mut cluster = PrivatePostgres::start().await;
    // A short TTL: answers during the outage come from the grace, not the
    // TTL. Not shorter than the database's stop can take on a loaded machine
    // (the outage begins when a request finds it stopped, and the keys must
    // have been confirmed within a TTL of that): with 2 s, one CI run saw
    // the valid key answer 503.
    let ttl = Duration::from_secs(4);
    // The keys are made (and one deactivated) through an API process that
    // fails closed (grace 0); the process under test starts after, so no
    // change notification is still on its way to its cache.
    let strict = spawn_app_on(cluster.url("keyledger"), settings(Duration::ZERO, ttl), None).await;
    let valid = strict.create_key(json!({"name": "valid", "type": "secret"})).await;
    let inactive = strict.create_key(json!({"name": "inactive", "type": "secret"})).await;
    let unseen = strict.create_key(json!({"name": "unseen", "type": "secret"})).await;
    strict
        .post(
            &format!("/v1/keys/{}/deactivate", inactive["id"].as_str().unwrap()),
            json!({}),
        )
        .await
        .expect(200);
    let app = spawn_app_on(
        cluster.url("keyledger"),
        settings(Duration::from_secs(60), ttl),
        Some(strict.hash_key.clone()),
    )
    .await;
    let (valid_key, inactive_key, unseen_key) = (
        valid["key"].as_str().unwrap(),
        inactive["key"].as_str().unwrap(),
        unseen["key"].as_str().unwrap(),
    );
    let strict_key = valid_key;
    assert_eq!(code(&verify(&strict, strict_key).await), "VALID");

    // Verified just before the outage (within a TTL of its start).
    assert_eq!(code(&verify(&app, valid_key).await), "VALID");
    assert_eq!(code(&verify(&app, inactive_key).await), "INACTIVE");
    cluster.stop();
    let stopped = Instant::now();
    // Requests that need the database answer 503 within a second, each.
    for _ in 0..5 {
        let started = Instant::now();
        assert_unavailable(&app.get("/v1/keys").await);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "took {:?}",
            started.elapsed()
        );
    }
    let ready = call(&app.address, Method::GET, "/readyz", None, None, &[]).await;
    assert_unavailable(&ready);
    assert_eq!(ready.body["error"]["details"]["postgres"], json!(["unreachable"]));
    // Confirmed keys keep their answers, past their TTL; unknown keys fail closed.
    let mut during = 0;
    while stopped.elapsed() < ttl * 5 / 2 {
        let started = Instant::now();
        assert_eq!(code(&verify(&app, valid_key).await), "VALID");
        assert_eq!(code(&verify(&app, inactive_key).await), "INACTIVE");
        assert!(started.elapsed() < Duration::from_secs(1));
        during += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    assert_unavailable(&verify(&app, unseen_key).await);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_unavailable(&verify(&strict, strict_key).await);
    let metrics = call(&app.address, Method::GET, "/metrics", None, None, &[]).await;
    assert!(metrics.body.as_str().unwrap().contains("keyledger_database_down 1"));

    // Back: everything recovers without a restart.
    cluster.start_again().await;
    let (app, strict) = (&app, &strict);
    for process in [app, strict] {
        wait_for("/readyz to recover", 30, || async move {
            call(&process.address, Method::GET, "/readyz", None, None, &[])
                .await
                .status
                .as_u16()
                == 200
        })
        .await;
    }
    app.get("/v1/keys").await.expect(200);
    assert_eq!(code(&verify(app, unseen_key).await), "VALID");
    assert_eq!(code(&verify(strict, strict_key).await), "VALID");
    // Cached keys are confirmed again: a deactivation through the other
    // process is seen.
    strict
        .post(
            &format!("/v1/keys/{}/deactivate", valid["id"].as_str().unwrap()),
            json!({}),
        )
        .await
        .expect(200);
    wait_for("the deactivation to be seen", 5, || async move {
        code(&verify(app, valid_key).await) == "INACTIVE"
    })
    .await;
    // Usage counted during the outage is flushed now that it is back.
    let usage_path = &format!("/v1/keys/{}/usage", valid["id"].as_str().unwrap());
    wait_for("the outage's usage to be flushed", 30, || async move {
        let usage = strict.get(usage_path).await;
        usage.status.as_u16() == 200 && usage.body["total_requests"].as_i64().unwrap_or(0) > during
    })
    .await;
    let created: Value = app.create_key(json!({"name": "after", "type": "secret"})).await;
    assert!(created["key"].is_string());
}

/// The flush at shutdown is attempted even if the database was marked down
/// (the probe has stopped by then, so the mark may be stale): the counts
/// reach the key's usage.
#[actix_web::test]
async fn usage_is_flushed_on_shutdown_when_the_database_was_marked_down_but_is_up() {
    use keyledger_api::db_health::DatabaseHealth;
    use keyledger_api::usage::{Outcome, UsageAccumulator};

    let app = spawn_app_on(
        crate::support::fresh_database_url(),
        settings(Duration::from_secs(60), Duration::from_secs(60)),
        None,
    )
    .await;
    let key = app.create_key(json!({"name": "counted", "type": "secret"})).await;
    let id: keyledger_events::domain::KeyId = key["id"].as_str().unwrap().parse().unwrap();
    let usage = UsageAccumulator::default();
    let now = chrono::Utc::now();
    usage.record(id, Outcome::Succeeded, now);
    usage.record(id, Outcome::Succeeded, now);
    usage.record(id, Outcome::Failed, now);
    let database = DatabaseHealth::default();
    database.mark_down();
    let stop = keyledger_events::shutdown::ShutdownSignal::new();
    let stopped = stop.subscribe();
    stop.fire();
    let started = Instant::now();
    usage
        .run(app.pool.clone(), &database, Duration::from_secs(3600), stopped)
        .await;
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert!(usage.is_empty(), "the counts were kept instead of flushed");
    assert!(!database.is_down(), "the database answered: it is up");
    let (app, path) = (&app, &format!("/v1/keys/{id}/usage"));
    wait_for("the usage to be projected", 10, || async move {
        let usage = app.get(path).await;
        usage.status.as_u16() == 200 && usage.body["total_requests"] == json!(3)
    })
    .await;
    let usage = app.get(path).await;
    assert_eq!(
        (&usage.body["successful"], &usage.body["failed"]),
        (&json!(2), &json!(1))
    );
}

/// When the database really is unreachable, the flush at shutdown gives
/// up at once (the counts are lost with the process, as documented).
#[actix_web::test]
async fn usage_flush_on_shutdown_gives_up_at_once_when_the_database_is_unreachable() {
    use keyledger_api::db_health::DatabaseHealth;
    use keyledger_api::usage::{Outcome, UsageAccumulator};

    // Nothing listens on port 1: every connection is refused.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(1))
        .connect_lazy("postgres://postgres@127.0.0.1:1/keyledger")
        .unwrap();
    let usage = UsageAccumulator::default();
    usage.record(
        keyledger_events::domain::KeyId::new(),
        Outcome::Succeeded,
        chrono::Utc::now(),
    );
    for marked_down in [true, false] {
        let database = DatabaseHealth::default();
        if marked_down {
            database.mark_down();
        }
        let stop = keyledger_events::shutdown::ShutdownSignal::new();
        let stopped = stop.subscribe();
        stop.fire();
        let started = Instant::now();
        usage
            .run(pool.clone(), &database, Duration::from_secs(3600), stopped)
            .await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "marked down: {marked_down}, {:?}",
            started.elapsed()
        );
        assert!(!usage.is_empty(), "the counts were dropped");
        assert!(database.is_down());
    }
}

/// At shutdown the shared pool may hand out a connection opened by an HTTP
/// worker whose runtime has stopped with the server: a query on it fails
/// like an unreachable database. The flush at shutdown does not use it.
#[actix_web::test]
async fn usage_is_flushed_on_shutdown_when_the_pooled_connection_belongs_to_a_stopped_runtime() {
    use keyledger_api::db_health::DatabaseHealth;
    use keyledger_api::usage::{Outcome, UsageAccumulator};

    let url = crate::support::fresh_database_url();
    let app = spawn_app_on(
        url.clone(),
        settings(Duration::from_secs(60), Duration::from_secs(60)),
        None,
    )
    .await;
    let key = app.create_key(json!({"name": "counted", "type": "secret"})).await;
    let id = key["id"].as_str().unwrap();
    // One pooled connection, opened on a runtime that then stops (as an
    // HTTP worker's does).
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect_lazy(&url)
        .unwrap();
    let worker_pool = pool.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            sqlx::query("select 1").execute(&worker_pool).await.unwrap();
            while worker_pool.num_idle() == 0 {
                tokio::task::yield_now().await;
            }
        });
    })
    .join()
    .unwrap();
    assert_eq!(pool.num_idle(), 1);

    let usage = UsageAccumulator::default();
    usage.record(id.parse().unwrap(), Outcome::RateLimited, chrono::Utc::now());
    let database = DatabaseHealth::default();
    let stop = keyledger_events::shutdown::ShutdownSignal::new();
    let stopped = stop.subscribe();
    stop.fire();
    usage.run(pool, &database, Duration::from_secs(3600), stopped).await;
    assert!(usage.is_empty(), "the counts were kept instead of flushed");
    let (app, path) = (&app, &format!("/v1/keys/{id}/usage"));
    wait_for("the usage to be projected", 10, || async move {
        let usage = app.get(path).await;
        usage.status.as_u16() == 200 && usage.body["total_requests"] == json!(1)
    })
    .await;
    assert_eq!(app.get(path).await.body["failed"], json!(1));
}

/// A verification that read its key while a change of another key was
/// applied keeps what it read: the key answers from the cache, in an outage
/// too. (Only a change of its own key or organization discards the read.)
#[actix_web::test]
async fn a_key_read_while_another_keys_change_is_applied_keeps_its_answer_for_an_outage() {
    let mut app = spawn_app_on(
        crate::support::fresh_database_url(),
        settings(Duration::from_secs(60), Duration::from_secs(3600)),
        None,
    )
    .await;
    let key = app.create_key(json!({"name": "read", "type": "secret"})).await;
    let other = app.create_key(json!({"name": "changed", "type": "secret"})).await;
    // Notifications are applied by hand below, and the outage is declared by
    // hand (no probe to end it).
    app.stop_background().await;
    let (plain, _) = keyledger_events::domain::PlainKey::parse(key["key"].as_str().unwrap()).unwrap();
    let hash = app.hash_key.hash(&plain);
    let cache = app.state.cache.clone();
    let other_id = other["id"].as_str().unwrap();
    let read = cache
        .lookup_with(&app.pool, &hash, || async {
            app.post(&format!("/v1/keys/{other_id}/deactivate"), json!({}))
                .await
                .expect(200);
            cache.evict_stream(&format!("key-{other_id}"));
        })
        .await
        .unwrap()
        .expect("the key exists");
    assert_eq!(read.row.status, keyledger_events::domain::KeyStatus::Active);
    app.state.database.mark_down();
    assert_eq!(code(&verify(&app, key["key"].as_str().unwrap()).await), "VALID");
    assert_unavailable(&verify(&app, other["key"].as_str().unwrap()).await);
}
