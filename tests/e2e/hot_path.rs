//! The verification hot path: key cache, plan rate limits, usage counts,
//! and the per-address guard.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use awc::http::Method;
use keyledger_events::domain::{org, Org, OrgCommand, OrgId};
use keyledger_events::handler;
use keyledger_events::log::EventMeta;
use serde_json::{json, Value};

use crate::support::{call, spawn_app, spawn_app_with, Answer, TestApp};

async fn auth(app: &TestApp, key: Option<&str>, method: &str, uri: &str, extra: &[(&str, &str)]) -> Answer {
    let mut headers = vec![("X-Original-Method", method), ("X-Original-URI", uri)];
    headers.extend_from_slice(extra);
    call(&app.address, Method::GET, "/v1/auth", key, None, &headers).await
}

pub(crate) async fn set_plan(app: &TestApp, plan: &str, rate_limit: Option<u32>) {
    let id: OrgId = app.org_id.parse().unwrap();
    let meta = EventMeta {
        actor: "cli".into(),
        request_id: None,
        occurred_at: chrono::Utc::now(),
    };
    let command = OrgCommand::ChangePlan(
        keyledger_events::domain::org::ChangePlanRequest {
            plan: plan.into(),
            rate_limit,
        }
        .parse(),
    );
    handler::execute::<Org>(&app.pool, &org::stream_id(id), command, &meta, |_| Ok(()))
        .await
        .unwrap();
}

/// An app whose cache entries outlive any test: what a test sees of the
/// cache is then its doing, never a TTL running out on a slow machine.
async fn app_with_a_long_cache_ttl() -> TestApp {
    let settings = keyledger_api::ApiSettings {
        cache_ttl: Duration::from_secs(3600),
        ..keyledger_api::ApiSettings::default()
    };
    spawn_app_with(settings, false).await
}

fn header_u64(answer: &Answer, name: &str) -> u64 {
    answer
        .header(name)
        .unwrap_or_else(|| panic!("{name} missing: {:?}", answer.headers))
        .parse()
        .unwrap()
}

#[actix_web::test]
async fn a_cache_hit_verification_makes_no_database_query() {
    let mut app = app_with_a_long_cache_ttl().await;
    let key = app.create_key(json!({"name": "hot", "type": "secret"})).await;
    // No notification may arrive while the test counts (a late one for the
    // key's creation would evict it, or keep a racing read from caching it).
    app.stop_background().await;
    let cache = &app.state.cache;
    assert_eq!(app.verify(json!({"key": key["key"]})).await["code"], "VALID");
    let lookups = cache.database_lookups.load(Ordering::Relaxed);
    let hits = cache.hits.sum();
    for _ in 0..40 {
        assert_eq!(app.verify(json!({"key": key["key"]})).await["code"], "VALID");
        let answer = auth(&app, key["key"].as_str(), "GET", "/api/experiences", &[]).await;
        assert_eq!(answer.status.as_u16(), 204);
    }
    assert_eq!(
        cache.database_lookups.load(Ordering::Relaxed),
        lookups,
        "no query on a cache hit"
    );
    assert_eq!(cache.hits.sum(), hits + 80);
    // An unknown (well-formed) key costs one query per TTL, not one per request.
    let unknown = keyledger_events::domain::PlainKey::encode(keyledger_events::domain::KeyType::Secret, &[5; 32]);
    for _ in 0..20 {
        assert_eq!(app.verify(json!({"key": unknown.expose()})).await["code"], "NOT_FOUND");
    }
    assert_eq!(cache.database_lookups.load(Ordering::Relaxed), lookups + 1);
    let metrics = call(&app.address, Method::GET, "/metrics", None, None, &[]).await;
    assert!(metrics
        .body
        .as_str()
        .unwrap()
        .contains(&format!("keyledger_key_cache_database_lookups_total {}", lookups + 1)));
}

#[actix_web::test]
async fn a_change_to_a_cached_key_is_seen_at_once() {
    let app = spawn_app().await;
    let key = app.create_key(json!({"name": "cached", "type": "secret"})).await;
    let (id, secret) = (key["id"].as_str().unwrap(), key["key"].as_str().unwrap());
    assert_eq!(app.verify(json!({"key": secret})).await["code"], "VALID");
    app.post(&format!("/v1/keys/{id}/deactivate"), json!({}))
        .await
        .expect(200);
    let started = Instant::now();
    while app.verify(json!({"key": secret})).await["code"] != "INACTIVE" {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the revocation took over 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[actix_web::test]
async fn a_change_made_through_this_server_is_seen_by_its_next_verification() {
    let mut app = app_with_a_long_cache_ttl().await;
    let key = app.create_key(json!({"name": "cached", "type": "secret"})).await;
    let (id, secret) = (key["id"].as_str().unwrap(), key["key"].as_str().unwrap());
    // No notification listener: the answer itself must leave nothing stale.
    app.stop_background().await;
    assert_eq!(app.verify(json!({"key": secret})).await["code"], "VALID");
    assert_eq!(app.verify(json!({"key": secret})).await["code"], "VALID");
    app.post(&format!("/v1/keys/{id}/deactivate"), json!({}))
        .await
        .expect(200);
    assert_eq!(app.verify(json!({"key": secret})).await["code"], "INACTIVE");
    app.patch(&format!("/v1/keys/{id}"), json!({"scopes": ["read:analytics"]}))
        .await
        .expect(200);
    app.post(&format!("/v1/keys/{id}/activate"), json!({}))
        .await
        .expect(200);
    let verdict = app.verify(json!({"key": secret, "scopes": ["admin"]})).await;
    assert_eq!(verdict["code"], "INSUFFICIENT_SCOPE");
    app.delete(&format!("/v1/keys/{id}")).await.expect(204);
    assert_eq!(app.verify(json!({"key": secret})).await["code"], "NOT_FOUND");
}

#[actix_web::test]
async fn a_free_plan_key_gets_exactly_100_requests_a_minute_then_429_and_an_upgrade_applies_within_a_second() {
    let app = spawn_app().await;
    let key = app
        .create_key(json!({"name": "metered", "type": "secret", "scopes": ["read:experiences"]}))
        .await;
    let secret = key["key"].as_str().unwrap();
    let mut reset = None;
    for i in 0..100u64 {
        let answer = auth(&app, Some(secret), "GET", "/api/experiences/1", &[]).await;
        assert_eq!(answer.status.as_u16(), 204, "request {i}: {:?}", answer.body);
        assert_eq!(header_u64(&answer, "x-ratelimit-limit"), 100);
        assert_eq!(header_u64(&answer, "x-ratelimit-remaining"), 99 - i);
        let this_reset = header_u64(&answer, "x-ratelimit-reset");
        assert!(
            *reset.get_or_insert(this_reset) == this_reset,
            "the reset stays put while the window fills"
        );
    }
    let now = chrono::Utc::now().timestamp() as u64;
    assert!(
        (now + 58..=now + 61).contains(&reset.unwrap()),
        "reset {reset:?} is a minute ahead of {now}"
    );
    let refused = auth(&app, Some(secret), "GET", "/api/experiences/1", &[]).await;
    refused.expect_error(429, "rate_limited");
    let retry_after = header_u64(&refused, "retry-after");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(header_u64(&refused, "x-ratelimit-remaining"), 0);
    let verdict = app.verify(json!({"key": secret})).await;
    assert_eq!(
        (&verdict["valid"], &verdict["code"]),
        (&json!(false), &json!("RATE_LIMITED"))
    );
    assert_eq!(verdict["ratelimit"]["limit"], 100);
    assert_eq!(verdict["ratelimit"]["remaining"], 0);
    // Other keys of the organization have budgets of their own.
    let other = app.create_key(json!({"name": "other", "type": "secret"})).await;
    assert_eq!(app.verify(json!({"key": other["key"]})).await["code"], "VALID");

    set_plan(&app, "basic", None).await;
    let started = Instant::now();
    loop {
        let answer = auth(&app, Some(secret), "GET", "/api/experiences/1", &[]).await;
        if answer.status.as_u16() == 204 {
            assert_eq!(header_u64(&answer, "x-ratelimit-limit"), 1_000);
            // The refused requests took no budget: 100 used + this one.
            assert_eq!(header_u64(&answer, "x-ratelimit-remaining"), 1_000 - 101);
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(1), "the upgrade took over 1 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[actix_web::test]
async fn management_answers_carry_the_rate_limit_headers() {
    let app = spawn_app().await;
    let listed = app.get("/v1/keys").await;
    listed.expect(200);
    assert_eq!(header_u64(&listed, "x-ratelimit-limit"), 100);
    let before = header_u64(&listed, "x-ratelimit-remaining");
    let missing = app.get("/v1/keys/key_01JD0000000000000000000000").await;
    missing.expect_error(404, "not_found");
    assert_eq!(header_u64(&missing, "x-ratelimit-remaining"), before - 1);
    let anonymous = call(&app.address, Method::GET, "/v1/keys", None, None, &[]).await;
    assert!(anonymous.header("x-ratelimit-limit").is_none(), "no key, no budget");
}

#[actix_web::test]
async fn usage_counts_accepted_and_refused_requests_and_sets_last_used() {
    let app = spawn_app().await;
    let key = app
        .create_key(json!({"name": "counted", "type": "secret", "scopes": ["read:consumers"]}))
        .await;
    let (id, secret) = (key["id"].as_str().unwrap(), key["key"].as_str().unwrap());
    let (accepted, refused) = (7, 4);
    for _ in 0..accepted {
        assert_eq!(
            app.verify(json!({"key": secret, "scopes": ["read:consumers"]})).await["code"],
            "VALID"
        );
    }
    for _ in 0..refused {
        assert_eq!(
            app.verify(json!({"key": secret, "scopes": ["write:consumers"]})).await["code"],
            "INSUFFICIENT_SCOPE"
        );
    }
    // Unknown keys are nobody's usage.
    app.verify(json!({"key": "sk_live_nope"})).await;
    let started = Instant::now();
    let usage = loop {
        let usage = app.get(&format!("/v1/keys/{id}/usage")).await;
        let body = usage.expect(200).clone();
        if body["total_requests"] == accepted + refused {
            break body;
        }
        // A flush's interval and a few of its own: the flush shares two
        // threads with every other test's background work.
        assert!(
            started.elapsed() < Duration::from_millis(500 + 3_000),
            "usage not visible within flush + 3 s: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (&usage["successful"], &usage["failed"], &usage["rate_limited"]),
        (&json!(accepted), &json!(refused), &json!(0))
    );
    let rate = |v: &Value| v.as_f64().unwrap();
    assert!((rate(&usage["success_rate"]) - 7.0 / 11.0).abs() < 1e-9);
    assert!((rate(&usage["error_rate"]) - 4.0 / 11.0).abs() < 1e-9);
    assert!(usage["last_used_at"].is_string());
    let series = usage["series"].as_array().unwrap();
    assert!(
        (24..=25).contains(&series.len()),
        "hourly buckets over the last 24 h, both ends partial"
    );
    assert_eq!(series.iter().map(|p| p["requests"].as_i64().unwrap()).sum::<i64>(), 11);
    let minutes = app
        .get(&format!(
            "/v1/keys/{id}/usage?granularity=minute&from={}",
            (chrono::Utc::now() - chrono::Duration::minutes(5))
                .to_rfc3339()
                .replace('+', "%2B")
        ))
        .await;
    assert_eq!(minutes.expect(200)["total_requests"], 11);
    let listed = app.get("/v1/keys").await;
    let row = listed.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .unwrap()
        .clone();
    assert_eq!(row["last_used_at"], usage["last_used_at"]);
    app.get(&format!("/v1/keys/{id}/usage?granularity=week"))
        .await
        .expect_error(422, "validation_error");
    app.get(&format!(
        "/v1/keys/{id}/usage?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z"
    ))
    .await
    .expect_error(422, "validation_error");
    // Usage records are statistics, not the audit trail.
    let trail = app.get(&format!("/v1/keys/{id}/events")).await;
    assert!(trail.expect(200)["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["type"] != "key.used"));
}

#[actix_web::test]
async fn one_address_guessing_keys_is_stopped_without_blocking_anyone_else() {
    // The test client plays a trusted proxy naming the client in X-Real-IP.
    let settings = keyledger_api::ApiSettings {
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        ..keyledger_api::ApiSettings::default()
    };
    let app = spawn_app_with(settings, false).await;
    let key = app.create_key(json!({"name": "victim", "type": "secret"})).await;
    let attacker = [("X-Real-IP", "203.0.113.9")];
    let honest = [("X-Real-IP", "198.51.100.7")];
    for i in 0..20 {
        let guess = keyledger_events::domain::PlainKey::encode(keyledger_events::domain::KeyType::Secret, &[i; 32]);
        auth(&app, Some(guess.expose()), "GET", "/api/x", &attacker)
            .await
            .expect_error(401, "invalid_api_key");
    }
    let blocked = auth(&app, key["key"].as_str(), "GET", "/api/x", &attacker).await;
    blocked.expect_error(429, "too_many_failed_attempts");
    assert!(blocked.header("retry-after").is_some());
    let fine = auth(&app, key["key"].as_str(), "GET", "/api/x", &honest).await;
    assert_eq!(fine.status.as_u16(), 204);
}

#[actix_web::test]
async fn a_lookup_that_read_the_key_before_a_deactivation_does_not_cache_it() {
    let mut app = app_with_a_long_cache_ttl().await;
    let key = app.create_key(json!({"name": "raced", "type": "secret"})).await;
    let (id, secret) = (key["id"].as_str().unwrap().to_owned(), key["key"].as_str().unwrap());
    // Notifications are applied by hand below, exactly where the race puts them.
    app.stop_background().await;
    let (plain, _) = keyledger_events::domain::PlainKey::parse(secret).unwrap();
    let hash = app.hash_key.hash(&plain);
    let cache = app.state.cache.clone();
    // A verification misses the cache and reads the key (active) from the
    // database; before it stores what it read, the key is deactivated and
    // the notification evicts it.
    let raced = cache
        .lookup_with(&app.pool, &hash, || async {
            app.post(&format!("/v1/keys/{id}/deactivate"), json!({}))
                .await
                .expect(200);
            cache.evict_stream(&format!("key-{id}"));
        })
        .await
        .unwrap()
        .expect("the key exists");
    assert_eq!(
        raced.row.status,
        keyledger_events::domain::KeyStatus::Active,
        "the racing lookup read the old state"
    );
    // The next verification must not be answered from what the race read.
    assert_eq!(app.verify(json!({"key": secret})).await["code"], "INACTIVE");
}

#[actix_web::test]
async fn concurrent_lookups_of_a_key_the_cache_lacks_make_one_database_query() {
    let mut app = app_with_a_long_cache_ttl().await;
    let key = app.create_key(json!({"name": "busy", "type": "secret"})).await;
    // No notification may evict the key while the lookups run.
    app.stop_background().await;
    let (plain, _) = keyledger_events::domain::PlainKey::parse(key["key"].as_str().unwrap()).unwrap();
    let hash = app.hash_key.hash(&plain);
    let cache = app.state.cache.clone();
    cache.clear();
    let lookups = cache.database_lookups.load(Ordering::Relaxed);
    // The first lookup reads the key and holds its answer until ten more
    // lookups of the same key have arrived (as at a busy key's expiry).
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let first = cache.lookup_with(&app.pool, &hash, || async {
        let _ = released.await;
    });
    let others = futures_util::future::join_all((0..10).map(|_| cache.lookup(&app.pool, &hash)));
    let arrived = async {
        let all_waiting = async {
            while cache.single_flight_waits.load(Ordering::Relaxed) < 10 {
                tokio::task::yield_now().await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), all_waiting).await;
        let _ = release.send(());
    };
    let (first, others, ()) = tokio::join!(first, others, arrived);
    let id = key["id"].as_str().unwrap();
    assert_eq!(first.unwrap().expect("the key exists").row.id.to_string(), id);
    for other in others {
        assert_eq!(other.unwrap().expect("the key exists").row.id.to_string(), id);
    }
    assert_eq!(
        cache.database_lookups.load(Ordering::Relaxed),
        lookups + 1,
        "one query for eleven concurrent lookups"
    );
}

#[actix_web::test]
async fn a_busy_key_in_the_last_tenth_of_its_ttl_is_read_ahead_while_its_other_lookups_answer_at_once() {
    let mut app = app_with_a_long_cache_ttl().await;
    let key = app.create_key(json!({"name": "busy", "type": "secret"})).await;
    let id = key["id"].as_str().unwrap().to_owned();
    // No notification may evict the key while the lookups run.
    app.stop_background().await;
    let (plain, _) = keyledger_events::domain::PlainKey::parse(key["key"].as_str().unwrap()).unwrap();
    let hash = app.hash_key.hash(&plain);
    let cache = app.state.cache.clone();
    cache.clear();
    cache.lookup(&app.pool, &hash).await.unwrap().expect("the key exists");
    // 57 of the TTL's 60 minutes gone: fresh, and due.
    cache.age(Duration::from_secs(57 * 60));
    let counts = || {
        (
            cache.database_lookups.load(Ordering::Relaxed),
            cache.hits.sum(),
            cache.single_flight_waits.load(Ordering::Relaxed),
        )
    };
    let (lookups, hits, waits) = counts();
    // The first lookup reads ahead and holds its answer until the ten
    // others have answered: they must not wait for it.
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let first = cache.lookup_with(&app.pool, &hash, || async {
        let _ = released.await;
    });
    let others = async {
        let answers = tokio::time::timeout(
            Duration::from_secs(10),
            futures_util::future::join_all((0..10).map(|_| cache.lookup(&app.pool, &hash))),
        )
        .await;
        let _ = release.send(());
        answers.expect("the other lookups answered while the read ahead was held")
    };
    let (first, others) = tokio::join!(first, others);
    assert_eq!(first.unwrap().expect("the key exists").row.id.to_string(), id);
    for other in others {
        assert_eq!(other.unwrap().expect("the key exists").row.id.to_string(), id);
    }
    assert_eq!(counts(), (lookups + 1, hits + 10, waits), "one read, ten hits, no wait");
    // Read again: a whole TTL ahead, not due.
    cache.lookup(&app.pool, &hash).await.unwrap().expect("the key exists");
    assert_eq!(counts(), (lookups + 1, hits + 11, waits));
}

/// Each server thread counts usage in a table of its own; a flush takes
/// them all, and a key's minute counted by several threads is one
/// `key.used` event with the sum of their counts.
#[actix_web::test]
async fn usage_counted_by_several_threads_is_one_event_per_key_and_minute() {
    use keyledger_api::db_health::DatabaseHealth;
    use keyledger_api::usage::{Outcome, UsageAccumulator};

    let app = spawn_app().await;
    let key = app.create_key(json!({"name": "threads", "type": "secret"})).await;
    let id: keyledger_events::domain::KeyId = key["id"].as_str().unwrap().parse().unwrap();
    let usage = UsageAccumulator::default();
    let minute = chrono::DurationRound::duration_trunc(chrono::Utc::now(), chrono::Duration::minutes(1)).unwrap();
    std::thread::scope(|scope| {
        for thread in 0..4u32 {
            let usage = &usage;
            scope.spawn(move || {
                for n in 0..=thread {
                    let outcome = if n == 0 { Outcome::Failed } else { Outcome::Succeeded };
                    usage.record(id, outcome, minute + chrono::Duration::milliseconds(i64::from(n)));
                }
            });
        }
    });
    assert_eq!(usage.flush(&app.pool, &DatabaseHealth::default()).await, 1, "one event");
    assert!(usage.is_empty(), "every thread's counts were taken");
    let recorded: Vec<Value> = sqlx::query_scalar("select data from events where stream_id = $1 and type = 'key.used'")
        .bind(format!("key-{id}"))
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let used = &recorded[0];
    assert_eq!(
        (&used["requests"], &used["successful"], &used["failed"]),
        (&json!(10), &json!(6), &json!(4)),
        "{used}"
    );
}

/// A flush's batches share one connection: a batch's messages grow the
/// buffers of the connection it runs on (about a megabyte), and a pool
/// hands out its idle connections in turn, so batches taking each from the
/// pool would grow every one of them (the flush shrinks its own after).
#[actix_web::test]
async fn a_usage_flush_runs_all_its_batches_on_one_connection() {
    use keyledger_api::db_health::DatabaseHealth;
    use keyledger_api::usage::{Outcome, UsageAccumulator, FLUSH_BATCH};

    let app = spawn_app().await;
    let key = app.create_key(json!({"name": "busy", "type": "secret"})).await;
    let id = key["id"].as_str().unwrap().parse().unwrap();
    let usage = UsageAccumulator::default();
    let minutes = 2 * FLUSH_BATCH as i64 + 1; // three batches
    let start = chrono::DurationRound::duration_trunc(chrono::Utc::now(), chrono::Duration::minutes(1)).unwrap()
        - chrono::Duration::minutes(minutes + 10);
    for minute in 0..minutes {
        usage.record(id, Outcome::Succeeded, start + chrono::Duration::minutes(minute));
    }
    // A pool with five idle connections, named for PostgreSQL to tell apart.
    let options = app
        .pool
        .connect_options()
        .as_ref()
        .clone()
        .application_name("flush-under-test");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(5)
        .connect_with(options)
        .await
        .unwrap();
    let opened = futures_util::future::join_all((0..5).map(|_| pool.acquire())).await;
    assert!(opened.iter().all(Result::is_ok));
    drop(opened);

    assert_eq!(usage.flush(&pool, &DatabaseHealth::default()).await, minutes as usize);
    // The pool's check of an idle connection sends no query: only the
    // connections the flush used have run one.
    let used: i64 = sqlx::query_scalar(
        "select count(*) from pg_stat_activity
         where application_name = 'flush-under-test' and query <> ''",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(used, 1, "the three batches ran on one connection");

    // On a pool of one connection, as the shutdown's flush has, each batch
    // is announced on the connection the flush holds (the pool has no
    // other to give).
    let options = app.pool.connect_options().as_ref().clone();
    let one = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .unwrap();
    let mut listener = sqlx::postgres::PgListener::connect_with(&app.pool).await.unwrap();
    listener.listen(keyledger_events::log::NOTIFY_CHANNEL).await.unwrap();
    let later = start + chrono::Duration::minutes(minutes);
    for minute in 0..FLUSH_BATCH as i64 + 1 {
        usage.record(id, Outcome::Succeeded, later + chrono::Duration::minutes(minute));
    }
    assert_eq!(usage.flush(&one, &DatabaseHealth::default()).await, FLUSH_BATCH + 1);
    let announced = format!("key-{} key.used", key["id"].as_str().unwrap());
    let mut heard = 0;
    tokio::time::timeout(Duration::from_secs(10), async {
        while heard < 2 {
            if listener.recv().await.unwrap().payload() == announced {
                heard += 1;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{heard} of the two batches announced"));
}

/// A flush appends its keys' minutes a batch at a time, each batch one
/// transaction, with the counts and read models one event at a time gave;
/// a deleted key's counts are dropped without holding up the others.
#[actix_web::test]
async fn a_usage_flush_appends_a_batch_of_keys_minutes_in_one_transaction() {
    use keyledger_api::db_health::DatabaseHealth;
    use keyledger_api::usage::{Outcome, UsageAccumulator, FLUSH_BATCH};
    use keyledger_events::domain::KeyId;

    let app = spawn_app().await;
    let mut ids = Vec::new();
    for name in ["busy", "once", "deleted"] {
        let key = app.create_key(json!({"name": name, "type": "secret"})).await;
        ids.push(key["id"].as_str().unwrap().to_owned());
    }
    app.delete(&format!("/v1/keys/{}", ids[2])).await.expect(204);
    let key = |n: usize| -> KeyId { ids[n].parse().unwrap() };
    let usage = UsageAccumulator::default();
    let start = chrono::DurationRound::duration_trunc(chrono::Utc::now(), chrono::Duration::minutes(1)).unwrap()
        - chrono::Duration::minutes(FLUSH_BATCH as i64 + 10);
    // One more minute of "busy" than a batch holds: two batches.
    for minute in 0..=FLUSH_BATCH as i64 {
        let at = start + chrono::Duration::minutes(minute);
        usage.record(key(0), Outcome::Succeeded, at);
        usage.record(key(0), Outcome::RateLimited, at + chrono::Duration::seconds(30));
    }
    usage.record(key(1), Outcome::Failed, start);
    usage.record(key(2), Outcome::Succeeded, start);

    assert_eq!(
        usage.flush(&app.pool, &DatabaseHealth::default()).await,
        FLUSH_BATCH + 2,
        "every minute of the two live keys"
    );
    assert!(usage.is_empty(), "nothing kept: the deleted key's counts are dropped");
    let (events, transactions, versions_in_order): (i64, i64, bool) = sqlx::query_as(
        "select count(*), count(distinct tx_id),
                bool_and(version = 1 + (select count(*) from events p where p.stream_id = e.stream_id and p.position < e.position))
         from events e where type = 'key.used' and stream_id = any($1)",
    )
    .bind(ids.iter().map(|id| format!("key-{id}")).collect::<Vec<_>>())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(events, FLUSH_BATCH as i64 + 2);
    assert_eq!(transactions, 2, "one transaction a batch, not one a key and minute");
    assert!(versions_in_order, "each key's versions follow on, in log order");
    assert_eq!(app.stream_types(&ids[2]).await, ["key.created", "key.deleted"]);

    // The read models as one event at a time made them (the app's own
    // flushes count only its admin key).
    let rows: Vec<(String, String, i64, i64, i64, i64)> = sqlx::query_as(
        "select key_id, granularity, sum(requests)::bigint, sum(successful)::bigint, sum(failed)::bigint, sum(rate_limited)::bigint
         from usage_rollups where key_id = any($1) group by key_id, granularity order by key_id, granularity",
    )
    .bind(&ids)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let minutes = FLUSH_BATCH as i64 + 1;
    let mut expected = vec![
        (ids[0].clone(), "day".to_owned(), 2 * minutes, minutes, minutes, minutes),
        (
            ids[0].clone(),
            "hour".to_owned(),
            2 * minutes,
            minutes,
            minutes,
            minutes,
        ),
        (
            ids[0].clone(),
            "minute".to_owned(),
            2 * minutes,
            minutes,
            minutes,
            minutes,
        ),
        (ids[1].clone(), "day".to_owned(), 1, 0, 1, 0),
        (ids[1].clone(), "hour".to_owned(), 1, 0, 1, 0),
        (ids[1].clone(), "minute".to_owned(), 1, 0, 1, 0),
    ];
    expected.sort();
    assert_eq!(rows, expected);
    let minute_rows: i64 =
        sqlx::query_scalar("select count(*) from usage_rollups where key_id = $1 and granularity = 'minute'")
            .bind(&ids[0])
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(minute_rows, minutes);
    let last = start + chrono::Duration::minutes(FLUSH_BATCH as i64) + chrono::Duration::seconds(30);
    let (last_used_at, version): (Option<chrono::DateTime<chrono::Utc>>, i64) =
        sqlx::query_as("select last_used_at, version from keys where id = $1")
            .bind(&ids[0])
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((last_used_at, version), (Some(last), 1 + minutes));
}
