//! `Idempotency-Key` on create and regenerate: a retry answers the first
//! outcome (without the secret), another body is a 422, another
//! organization is another scope, records expire after 24 hours (chosen
//! times, no sleeping), malformed keys are refused before anything runs.

use awc::http::Method;
use chrono::{Duration, Utc};
use keyledger_api::idempotency::{self, Claim, IdempotencyKey, Idempotent};
use serde_json::{json, Value};

use crate::support::{call, spawn_app, Answer, TestApp};

async fn post_with_key(app: &TestApp, admin: &str, path: &str, key: &str, body: Value) -> Answer {
    call(
        &app.address,
        Method::POST,
        path,
        Some(admin),
        Some(body),
        &[("Idempotency-Key", key)],
    )
    .await
}

async fn keys_named(app: &TestApp, name: &str) -> i64 {
    sqlx::query_scalar("select count(*) from keys where name = $1")
        .bind(name)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[actix_web::test]
async fn a_retried_create_answers_the_first_outcome_without_the_secret_and_creates_nothing() {
    let app = spawn_app().await;
    let body = json!({"name": "retried", "type": "secret", "scopes": ["read:experiences"]});
    let first = post_with_key(&app, &app.admin_key, "/v1/keys", "create-1", body.clone()).await;
    let created = first.expect(201).clone();
    let secret = created["key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("sk_live_"));
    let events = app.event_count().await;

    // The same fields in another order are the same body.
    let reordered = json!({"scopes": ["read:experiences"], "type": "secret", "name": "retried"});
    let again = post_with_key(&app, &app.admin_key, "/v1/keys", "create-1", reordered).await;
    let replayed = again.expect(201);
    assert_eq!(replayed["id"], created["id"]);
    assert_eq!(replayed["key"], Value::Null, "the secret is never stored");
    assert_eq!(replayed["secret_unavailable"], true);
    assert_eq!(replayed["name"], "retried");
    assert_eq!(replayed["last_four"], created["last_four"]);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.header("location"), first.header("location"));
    assert_eq!(again.header("cache-control"), Some("no-store"));
    assert_eq!(app.event_count().await, events, "a replay appends nothing");
    assert_eq!(keys_named(&app, "retried").await, 1);
    // The key the first answer showed works.
    let verified = app.verify(json!({"key": secret})).await;
    assert_eq!(verified["code"], "VALID");
    // No secret at rest in the record either.
    let stored: String = sqlx::query_scalar("select response::text from idempotency_keys")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(!stored.contains(&secret[8..51]));
}

/// Under a quota smaller than PostgreSQL's `max_connections`, a creation
/// that finds itself crowded in the shared count stores nothing and runs
/// again alone: its `Idempotency-Key` is claimed again there, and recorded
/// once. At the quota, a retry of a creation that succeeded still answers
/// its first outcome (not the quota's 403), and a new one is refused.
#[actix_web::test]
async fn creations_near_the_quota_keep_their_idempotency_and_retries_replay_at_the_quota() {
    let quota = 3;
    let app = crate::support::spawn_app_with_key_quota(quota).await;
    // The admin key is the first of the quota.
    let mut created = vec![];
    for n in 1..quota {
        let body = json!({"name": format!("near {n}"), "type": "secret"});
        let first = post_with_key(&app, &app.admin_key, "/v1/keys", &format!("near-{n}"), body).await;
        created.push(first.expect(201).clone());
    }
    let events = app.event_count().await;
    let over = post_with_key(
        &app,
        &app.admin_key,
        "/v1/keys",
        "near-over",
        json!({"name": "over", "type": "secret"}),
    )
    .await;
    over.expect_error(403, "quota_exceeded");
    for (n, first) in (1..quota).zip(&created) {
        let body = json!({"name": format!("near {n}"), "type": "secret"});
        let again = post_with_key(&app, &app.admin_key, "/v1/keys", &format!("near-{n}"), body).await;
        let replayed = again.expect(201);
        assert_eq!(replayed["id"], first["id"]);
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
    }
    assert_eq!(
        app.event_count().await,
        events,
        "the refusal and the replays append nothing"
    );
    let recorded: i64 = sqlx::query_scalar("select count(*) from idempotency_keys")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        recorded,
        quota as i64 - 1,
        "one record per creation, none for the refusal"
    );
}

#[actix_web::test]
async fn the_same_key_with_another_body_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    post_with_key(
        &app,
        &app.admin_key,
        "/v1/keys",
        "k",
        json!({"name": "a", "type": "secret"}),
    )
    .await
    .expect(201);
    let events = app.event_count().await;
    let other = post_with_key(
        &app,
        &app.admin_key,
        "/v1/keys",
        "k",
        json!({"name": "b", "type": "secret"}),
    )
    .await;
    other.expect_error(422, "validation_error");
    assert!(
        other.body["error"]["details"]["Idempotency-Key"].is_array(),
        "{}",
        other.body
    );
    assert_eq!(app.event_count().await, events);
    assert_eq!(keys_named(&app, "b").await, 0);
}

#[actix_web::test]
async fn another_organization_and_another_operation_are_other_scopes() {
    let app = spawn_app().await;
    let (_, other_admin) = app.other_org().await;
    let body = json!({"name": "shared header", "type": "secret"});
    let mine = post_with_key(&app, &app.admin_key, "/v1/keys", "same", body.clone()).await;
    let theirs = post_with_key(&app, &other_admin, "/v1/keys", "same", body).await;
    let (mine, theirs) = (mine.expect(201), theirs.expect(201));
    assert_ne!(mine["id"], theirs["id"]);
    assert!(theirs["key"].is_string(), "a new key, with its secret");
    assert_ne!(mine["org_id"], theirs["org_id"]);

    // The same header on a regenerate is a request of its own.
    let path = format!("/v1/keys/{}/regenerate", mine["id"].as_str().unwrap());
    let regenerated = post_with_key(&app, &app.admin_key, &path, "same", json!({})).await;
    assert!(regenerated.expect(200)["key"].is_string());
}

#[actix_web::test]
async fn a_retried_regenerate_regenerates_once() {
    let app = spawn_app().await;
    let key = app.create_key(json!({"name": "rotated", "type": "secret"})).await;
    let id = key["id"].as_str().unwrap();
    let path = format!("/v1/keys/{id}/regenerate");
    let first = post_with_key(
        &app,
        &app.admin_key,
        &path,
        "rotate-1",
        json!({"expire_old_in_seconds": 60}),
    )
    .await;
    let new_secret = first.expect(200)["key"].as_str().unwrap().to_owned();
    let again = post_with_key(
        &app,
        &app.admin_key,
        &path,
        "rotate-1",
        json!({"expire_old_in_seconds": 60}),
    )
    .await;
    let replayed = again.expect(200);
    assert_eq!(replayed["key"], Value::Null);
    assert_eq!(replayed["secret_unavailable"], true);
    assert_eq!(replayed["last_four"], first.body["last_four"]);
    let regenerations = app
        .stream_types(id)
        .await
        .iter()
        .filter(|t| *t == "key.regenerated")
        .count();
    assert_eq!(regenerations, 1);
    assert_eq!(app.verify(json!({"key": new_secret})).await["code"], "VALID");
    // Without the header, a regenerate is a new one each time.
    app.post(&path, json!({})).await.expect(200);
    assert_eq!(
        app.stream_types(id)
            .await
            .iter()
            .filter(|t| *t == "key.regenerated")
            .count(),
        2
    );
}

#[actix_web::test]
async fn concurrent_requests_with_the_same_key_create_one_key() {
    let app = spawn_app().await;
    let body = json!({"name": "raced", "type": "secret"});
    let answers = futures_util::future::join_all(
        (0..6).map(|_| post_with_key(&app, &app.admin_key, "/v1/keys", "race", body.clone())),
    )
    .await;
    let ids: std::collections::HashSet<&str> = answers.iter().map(|a| a.expect(201)["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1, "one key for one Idempotency-Key");
    let with_secret = answers.iter().filter(|a| a.body["key"].is_string()).count();
    assert_eq!(with_secret, 1, "the secret is shown once");
    assert_eq!(keys_named(&app, "raced").await, 1);
}

#[actix_web::test]
async fn malformed_idempotency_keys_are_refused_before_anything_runs() {
    let app = spawn_app().await;
    let events = app.event_count().await;
    let long = "k".repeat(256);
    for bad in ["", long.as_str(), "with space", "tab\there"] {
        let answer = post_with_key(
            &app,
            &app.admin_key,
            "/v1/keys",
            bad,
            json!({"name": "x", "type": "secret"}),
        )
        .await;
        answer.expect_error(400, "bad_request");
        assert!(answer.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key"));
    }
    let longest = "k".repeat(255);
    post_with_key(
        &app,
        &app.admin_key,
        "/v1/keys",
        &longest,
        json!({"name": "x", "type": "secret"}),
    )
    .await
    .expect(201);
    assert_eq!(app.event_count().await, events + 1);
}

#[actix_web::test]
async fn a_refusal_is_not_recorded_so_a_corrected_retry_runs() {
    let app = spawn_app().await;
    let refused = post_with_key(
        &app,
        &app.admin_key,
        "/v1/keys",
        "fix-me",
        json!({"name": "", "type": "secret"}),
    )
    .await;
    refused.expect_error(422, "validation_error");
    let fixed = post_with_key(
        &app,
        &app.admin_key,
        "/v1/keys",
        "fix-me",
        json!({"name": "ok", "type": "secret"}),
    )
    .await;
    assert!(fixed.expect(201)["key"].is_string());
}

#[actix_web::test]
async fn records_answer_for_24_hours_then_expire_and_are_deleted() {
    let app = spawn_app().await;
    let body = json!({"name": "daily", "type": "secret"});
    let before = Utc::now();
    let first = post_with_key(&app, &app.admin_key, "/v1/keys", "day-1", body.clone()).await;
    let first_id = first.expect(201)["id"].as_str().unwrap().to_owned();
    let map = body.as_object().unwrap();
    let request = |key: &str| {
        Idempotent::new(
            app.org_id.parse().unwrap(),
            "POST /v1/keys".into(),
            IdempotencyKey::parse(key).unwrap(),
            map,
        )
    };
    // Asked at chosen times (each in a transaction that is rolled back).
    let claim_at = |key: &'static str, at: chrono::DateTime<Utc>| {
        let (pool, request) = (app.pool.clone(), request(key));
        async move {
            let mut tx = pool.begin().await.unwrap();
            let claim = idempotency::claim(&mut tx, &request, at).await.unwrap();
            tx.rollback().await.unwrap();
            claim
        }
    };
    assert!(matches!(
        claim_at("day-1", before + Duration::hours(23) + Duration::minutes(59)).await,
        Claim::Replay(recorded) if recorded.body["id"] == first_id.as_str()
    ));
    assert!(matches!(
        claim_at("day-1", Utc::now() + Duration::hours(24) + Duration::seconds(1)).await,
        Claim::Fresh
    ));
    // A claim 25 hours from now (another key of the organization) deletes
    // the expired record for good…
    let mut tx = app.pool.begin().await.unwrap();
    let later = idempotency::claim(&mut tx, &request("day-2"), Utc::now() + Duration::hours(25))
        .await
        .unwrap();
    assert!(matches!(later, Claim::Fresh));
    tx.commit().await.unwrap();
    let left: i64 = sqlx::query_scalar("select count(*) from idempotency_keys where idempotency_key = 'day-1'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "the expired record is deleted");
    // …so the same header now creates a new key.
    let again = post_with_key(&app, &app.admin_key, "/v1/keys", "day-1", body).await;
    let again = again.expect(201);
    assert_ne!(again["id"], first_id.as_str());
    assert!(again["key"].is_string());
}
