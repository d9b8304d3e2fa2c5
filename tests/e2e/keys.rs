//! Every row of the management table (docs/api.md) (usage aside), through HTTP.

use std::time::Duration;

use awc::http::Method;
use serde_json::json;

use crate::support::{call, eventually, spawn_app};

#[actix_web::test]
async fn create_answers_the_key_once_with_its_secret_and_stores_an_event() {
    let app = spawn_app().await;
    let answer = app
        .post(
            "/v1/keys",
            json!({"name": "Checkout backend", "type": "secret", "scopes": ["read:experiences", "write:consumers"]}),
        )
        .await;
    let key = answer.expect(201);
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    assert!(answer.header("x-request-id").is_some());
    let secret = key["key"].as_str().unwrap();
    assert!(secret.starts_with("sk_live_") && secret.len() == 57, "{secret}");
    assert_eq!(key["object"], "api_key");
    assert_eq!(key["name"], "Checkout backend");
    assert_eq!(key["type"], "secret");
    assert_eq!(key["environment"], "live");
    assert_eq!(key["scopes"], json!(["read:experiences", "write:consumers"]));
    assert_eq!(key["status"], "active");
    assert_eq!(key["prefix"], "sk_live_");
    assert_eq!(key["last_four"], &secret[53..]);
    assert_eq!(key["org_id"], app.org_id.as_str());
    assert!(key["last_used_at"].is_null() && key["expires_at"].is_null());
    assert!(key["rotation_due_at"].is_string());
    let id = key["id"].as_str().unwrap();
    assert_eq!(answer.header("location"), Some(format!("/v1/keys/{id}").as_str()));
    assert_eq!(app.stream_types(id).await, ["key.created"]);

    // Reading it back never shows the secret again.
    let read = app.get(&format!("/v1/keys/{id}")).await;
    assert!(read.expect(200).get("key").is_none());
    assert_eq!(read.header("cache-control"), None);
    assert_eq!(read.body["name"], "Checkout backend");
}

/// A new key is told to the workers (and other API processes) once it is
/// committed, by the process's announcer: the creation's own transaction
/// sends no notification, so creations commit alongside each other. Usage
/// flushes announce their records the same way.
#[actix_web::test]
async fn a_created_key_and_its_usage_are_announced_after_their_commits() {
    let app = spawn_app().await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&app.pool).await.unwrap();
    listener.listen(keyledger_events::log::NOTIFY_CHANNEL).await.unwrap();
    let answer = app
        .post("/v1/keys", json!({"name": "Announced", "type": "secret"}))
        .await;
    let key = answer.expect(201);
    let stream = format!("key-{}", key["id"].as_str().unwrap());
    let heard = hear(&mut listener, &format!("{stream} key.created")).await;
    assert_eq!(heard.channel(), "keyledger_events");
    // Usage records too, once the flush (every 500 ms here) has appended them.
    assert_eq!(app.verify(json!({"key": key["key"]})).await["code"], "VALID");
    hear(&mut listener, &format!("{stream} key.used")).await;
}

/// Creations sent at the same time are committed together (group commit):
/// fewer transactions than keys, and yet each caller gets what it would get
/// alone — its own key, whose secret verifies, and an event that records its
/// own request. A change of the rotation policy between two rounds is what
/// the second round's keys are due by.
#[actix_web::test]
async fn concurrent_creations_are_committed_together_each_as_if_alone() {
    let app = spawn_app().await;
    for (round, days) in [(0, 90), (1, 30)] {
        if days != 90 {
            app.patch("/v1/org", json!({"rotation_days": days})).await.expect(200);
        }
        let mut listener = sqlx::postgres::PgListener::connect_with(&app.pool).await.unwrap();
        listener.listen(keyledger_events::log::NOTIFY_CHANNEL).await.unwrap();
        let answers = futures_util::future::join_all((0..16).map(|n| {
            app.post(
                "/v1/keys",
                json!({"name": format!("round {round} key {n}"), "type": "secret"}),
            )
        }))
        .await;
        let mut ids = std::collections::HashSet::new();
        for (n, answer) in answers.iter().enumerate() {
            let key = answer.expect(201);
            assert_eq!(key["name"], format!("round {round} key {n}"));
            let id = key["id"].as_str().unwrap();
            assert!(ids.insert(id.to_owned()), "{id} answered twice");
            let created = chrono::DateTime::parse_from_rfc3339(key["created_at"].as_str().unwrap()).unwrap();
            let due = chrono::DateTime::parse_from_rfc3339(key["rotation_due_at"].as_str().unwrap()).unwrap();
            assert_eq!(due - created, chrono::Duration::days(days), "{key:#}");
            let verified = app.verify(json!({"key": key["key"]})).await;
            assert_eq!((&verified["valid"], &verified["key_id"]), (&json!(true), &key["id"]));
            let (actor, request_id): (String, Option<String>) =
                sqlx::query_as("select actor, request_id from events where stream_id = $1 and type = 'key.created'")
                    .bind(format!("key-{id}"))
                    .fetch_one(&app.pool)
                    .await
                    .unwrap();
            assert_eq!(actor, app.admin_key_id);
            assert_eq!(request_id.as_deref(), answer.header("x-request-id"));
            let row = app.get(&format!("/v1/keys/{id}")).await;
            assert_eq!(row.expect(200)["name"], key["name"]);
        }
        let ids: Vec<String> = ids.into_iter().map(|id| format!("key-{id}")).collect();
        // Every key's notice is heard (a group hands its notices to the
        // announcer together, after its commit).
        hear_all(
            &mut listener,
            ids.iter().map(|stream| format!("{stream} key.created")).collect(),
        )
        .await;
        let transactions: i64 = sqlx::query_scalar(
            "select count(distinct tx_id) from events where stream_id = any($1) and type = 'key.created'",
        )
        .bind(&ids)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert!(transactions < 16, "16 creations in {transactions} transactions");
    }
}

/// A group never waits for the quota lock: while another session holds it
/// (shared, as a single creation does), every creation runs alone — each in
/// a transaction of its own, all answered — and groups resume once it is
/// released.
#[actix_web::test]
async fn creations_run_alone_while_another_session_holds_the_quota_lock() {
    let app = spawn_app().await;
    let mut holder = app.pool.acquire().await.unwrap();
    quota_lock(&mut holder, &app.org_id, "pg_advisory_lock_shared").await;
    assert_eq!(create_together(&app, "held").await, 12, "none committed together");
    quota_lock(&mut holder, &app.org_id, "pg_advisory_unlock_shared").await;
    let together = create_together(&app, "released").await;
    assert!(together < 12, "12 creations in {together} transactions");
}

/// Calls `function` (an advisory lock function) on the organization's
/// quota lock.
async fn quota_lock(conn: &mut sqlx::PgConnection, org_id: &str, function: &str) {
    sqlx::query(&format!("select {function}($1, hashtext($2))"))
        .bind(keyledger_api::keys::KEY_QUOTA_LOCK)
        .bind(org_id)
        .execute(conn)
        .await
        .unwrap();
}

/// An organization's first creation in a process counts its keys, holding
/// the process's one turn to commit creations. While another session holds
/// that organization's quota lock alone, the count gives up quickly (the
/// creation then waits for the lock in its own request), so other
/// organizations' creations go on meanwhile.
#[actix_web::test]
async fn a_quota_lock_held_elsewhere_stops_no_other_organization_s_creations() {
    let app = spawn_app().await;
    let (other_id, other_key) = app.other_org().await;
    let mut holder = app.pool.acquire().await.unwrap();
    quota_lock(&mut holder, &other_id, "pg_advisory_lock").await;
    let held = call(
        &app.address,
        Method::POST,
        "/v1/keys",
        Some(&other_key),
        Some(json!({"name": "waits", "type": "secret"})),
        &[],
    );
    let meanwhile = async {
        eventually(Duration::from_secs(10), || async {
            let waiting: i64 =
                sqlx::query_scalar("select count(*) from pg_locks where locktype = 'advisory' and not granted")
                    .fetch_one(&app.pool)
                    .await
                    .unwrap();
            (waiting > 0)
                .then_some(())
                .ok_or("no creation waits for the lock yet".to_owned())
        })
        .await;
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            app.post("/v1/keys", json!({"name": "goes on", "type": "secret"})),
        )
        .await
        .expect("another organization's creation waited for the held lock");
        answer.expect(201);
        quota_lock(&mut holder, &other_id, "pg_advisory_unlock").await;
    };
    let (held, ()) = tokio::join!(held, meanwhile);
    assert_eq!(held.expect(201)["name"], "waits");
}

/// Sends 12 creations at once; all must succeed. Answers how many
/// transactions committed them.
async fn create_together(app: &crate::support::TestApp, round: &str) -> i64 {
    let answers = futures_util::future::join_all(
        (0..12).map(|n| app.post("/v1/keys", json!({"name": format!("{round} {n}"), "type": "secret"}))),
    )
    .await;
    let streams: Vec<String> = answers
        .iter()
        .map(|a| format!("key-{}", a.expect(201)["id"].as_str().unwrap()))
        .collect();
    sqlx::query_scalar("select count(distinct tx_id) from events where stream_id = any($1)")
        .bind(&streams)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// The first notification with this payload, within 10 s.
async fn hear(listener: &mut sqlx::postgres::PgListener, expected: &str) -> sqlx::postgres::PgNotification {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let notification = listener.recv().await.unwrap();
            if notification.payload() == expected {
                return notification;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no notification {expected:?}"))
}

/// Waits until every one of `expected` was heard, in any order.
async fn hear_all(listener: &mut sqlx::postgres::PgListener, mut expected: std::collections::HashSet<String>) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !expected.is_empty() {
            let notification = listener.recv().await.unwrap();
            expected.remove(notification.payload());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not heard: {expected:?}"))
}

#[actix_web::test]
async fn each_type_gets_its_prefix_environment_and_default_scopes() {
    let app = spawn_app().await;
    for (key_type, prefix, environment, scopes) in [
        ("public", "pk_live_", "live", json!(["read:experiences"])),
        ("secret", "sk_live_", "live", json!(["admin"])),
        ("test", "sk_test_", "test", json!(["admin"])),
    ] {
        let key = app.create_key(json!({"name": key_type, "type": key_type})).await;
        assert!(key["key"].as_str().unwrap().starts_with(prefix));
        assert_eq!((&key["environment"], &key["scopes"]), (&json!(environment), &scopes));
        // Test keys are not subject to the live rotation policy.
        assert_eq!(key["rotation_due_at"].is_null(), key_type == "test");
    }
}

#[actix_web::test]
async fn a_created_key_is_listed_at_once_newest_first_with_cursor_pagination() {
    let app = spawn_app().await;
    let mut ids = vec![app.admin_key_id.clone()];
    for i in 0..4 {
        let key = app
            .create_key(json!({"name": format!("key {i}"), "type": "test"}))
            .await;
        ids.push(key["id"].as_str().unwrap().to_owned());
    }
    let first = app.get("/v1/keys").await;
    let listed: Vec<&str> = first.expect(200)["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    let newest_first: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
    assert_eq!(listed, newest_first);
    assert!(first.body["next_cursor"].is_null());
    assert!(first.body["data"][0].get("key").is_none(), "lists never show secrets");

    let mut paged = vec![];
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/keys?limit=2&cursor={c}"),
            None => "/v1/keys?limit=2".to_owned(),
        };
        let page = app.get(&path).await;
        let body = page.expect(200);
        assert!(body["data"].as_array().unwrap().len() <= 2);
        paged.extend(
            body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["id"].as_str().unwrap().to_owned()),
        );
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(paged, newest_first);

    let tests = app.get("/v1/keys?type=test").await;
    assert_eq!(tests.expect(200)["data"].as_array().unwrap().len(), 4);
    app.get("/v1/keys?limit=0").await.expect_error(422, "validation_error");
    app.get("/v1/keys?limit=101")
        .await
        .expect_error(422, "validation_error");
    app.get("/v1/keys?status=gone")
        .await
        .expect_error(422, "validation_error");
    app.get("/v1/keys?cursor=nonsense")
        .await
        .expect_error(422, "validation_error");
}

#[actix_web::test]
async fn the_projector_keeps_the_list_in_step_with_the_log() {
    let app = spawn_app().await;
    let key = app.create_key(json!({"name": "projected", "type": "secret"})).await;
    let id = key["id"].as_str().unwrap();
    // The projector catches up: its checkpoint reaches the key's event. The
    // bound is generous: a transaction open anywhere on the server (other
    // tests create databases in parallel) holds the log's readers back, and
    // speed is the benchmark's business, not this test's.
    let position: i64 = sqlx::query_scalar("select max(position) from events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    eventually(Duration::from_secs(15), || async {
        let at: Option<i64> =
            sqlx::query_scalar("select position from projector_checkpoints where name = 'read_models'")
                .fetch_optional(&app.pool)
                .await
                .unwrap();
        if at.is_some_and(|p| p >= position) {
            return Ok(());
        }
        Err(format!(
            "projector did not catch up within 15 s (at {at:?}, log at {position})"
        ))
    })
    .await;
    let listed = app.get("/v1/keys").await;
    assert!(listed.body["data"].as_array().unwrap().iter().any(|k| k["id"] == id));
}

#[actix_web::test]
async fn get_unknown_or_malformed_ids_is_not_found() {
    let app = spawn_app().await;
    app.get("/v1/keys/key_01JD0000000000000000000000")
        .await
        .expect_error(404, "not_found");
    app.get("/v1/keys/nonsense").await.expect_error(404, "not_found");
    app.get("/v1/nothing-here").await.expect_error(404, "not_found");
}

#[actix_web::test]
async fn patch_edits_name_scopes_and_expiry_and_null_clears_the_expiry() {
    let app = spawn_app().await;
    let key = app.create_key(json!({"name": "before", "type": "public"})).await;
    let id = key["id"].as_str().unwrap();
    let path = format!("/v1/keys/{id}");
    let expiry = "2031-01-31T00:00:00Z";
    let edited = app
        .patch(
            &path,
            json!({"name": "after", "scopes": ["read:consumers", "read:experiences"], "expires_at": expiry}),
        )
        .await;
    let body = edited.expect(200);
    assert_eq!(body["name"], "after");
    assert_eq!(body["scopes"], json!(["read:experiences", "read:consumers"]));
    assert_eq!(body["expires_at"], expiry);
    let cleared = app.patch(&path, json!({"expires_at": null})).await;
    assert!(cleared.expect(200)["expires_at"].is_null());
    assert_eq!(cleared.body["name"], "after");
    // The same values again change nothing and append nothing.
    app.patch(&path, json!({"name": "after"})).await.expect(200);
    assert_eq!(
        app.stream_types(id).await,
        ["key.created", "key.updated", "key.updated"]
    );
    let data: serde_json::Value = sqlx::query_scalar("select data from events where stream_id = $1 and version = 3")
        .bind(format!("key-{id}"))
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(data, json!({"expires_at": null}));
}

#[actix_web::test]
async fn regenerate_invalidates_the_old_secret_at_once_and_the_new_one_works() {
    let app = spawn_app().await;
    let key = app.create_key(json!({"name": "rotating", "type": "secret"})).await;
    let (id, old) = (key["id"].as_str().unwrap(), key["key"].as_str().unwrap());
    let answer = app.post(&format!("/v1/keys/{id}/regenerate"), json!({})).await;
    let regenerated = answer.expect(200);
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    let new = regenerated["key"].as_str().unwrap();
    assert_ne!(new, old);
    assert_eq!(regenerated["id"], id);
    assert_eq!(regenerated["last_four"], &new[53..]);
    assert_eq!(app.verify(json!({"key": old})).await["code"], "NOT_FOUND");
    assert_eq!(app.verify(json!({"key": new})).await["code"], "VALID");
    call(&app.address, Method::GET, "/v1/keys", Some(old), None, &[])
        .await
        .expect_error(401, "invalid_api_key");
    call(&app.address, Method::GET, "/v1/keys", Some(new), None, &[])
        .await
        .expect(200);
    assert_eq!(app.stream_types(id).await, ["key.created", "key.regenerated"]);
}

#[actix_web::test]
async fn regenerate_with_a_grace_period_keeps_the_old_secret_until_it_ends() {
    let app = spawn_app().await;
    let key = app.create_key(json!({"name": "graceful", "type": "secret"})).await;
    let (id, old) = (key["id"].as_str().unwrap(), key["key"].as_str().unwrap());
    let regenerated = app
        .post(
            &format!("/v1/keys/{id}/regenerate"),
            json!({"expire_old_in_seconds": 2}),
        )
        .await;
    let new = regenerated.expect(200)["key"].as_str().unwrap();
    assert_eq!(app.verify(json!({"key": old})).await["code"], "VALID");
    assert_eq!(app.verify(json!({"key": new})).await["code"], "VALID");
    app.state.clock.advance(chrono::Duration::milliseconds(2_100));
    assert_eq!(app.verify(json!({"key": old})).await["code"], "NOT_FOUND");
    assert_eq!(app.verify(json!({"key": new})).await["code"], "VALID");
    for bad in [json!(-1), json!(604_801), json!("10")] {
        let answer = app
            .post(
                &format!("/v1/keys/{id}/regenerate"),
                json!({"expire_old_in_seconds": bad}),
            )
            .await;
        answer.expect_error(422, "validation_error");
        assert!(answer.body["error"]["details"]["expire_old_in_seconds"].is_array());
    }
}

#[actix_web::test]
async fn deactivate_and_activate_are_idempotent_and_change_verification() {
    let app = spawn_app().await;
    let key = app.create_key(json!({"name": "toggled", "type": "secret"})).await;
    let (id, secret) = (key["id"].as_str().unwrap(), key["key"].as_str().unwrap());
    for _ in 0..2 {
        let off = app.post(&format!("/v1/keys/{id}/deactivate"), json!({})).await;
        assert_eq!(off.expect(200)["status"], "inactive");
    }
    assert_eq!(app.verify(json!({"key": secret})).await["code"], "INACTIVE");
    call(&app.address, Method::GET, "/v1/keys", Some(secret), None, &[])
        .await
        .expect_error(401, "key_inactive");
    let inactive = app.get("/v1/keys?status=inactive").await;
    assert_eq!(inactive.expect(200)["data"][0]["id"], id);
    for _ in 0..2 {
        let on = app.post(&format!("/v1/keys/{id}/activate"), json!({})).await;
        assert_eq!(on.expect(200)["status"], "active");
    }
    assert_eq!(app.verify(json!({"key": secret})).await["code"], "VALID");
    assert_eq!(
        app.stream_types(id).await,
        ["key.created", "key.deactivated", "key.activated"]
    );
}

#[actix_web::test]
async fn an_expired_key_shows_expired_and_cannot_be_activated() {
    let app = spawn_app().await;
    let expires_at = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let key = app
        .create_key(json!({"name": "short-lived", "type": "secret", "expires_at": expires_at}))
        .await;
    let (id, secret) = (key["id"].as_str().unwrap(), key["key"].as_str().unwrap());
    app.post(&format!("/v1/keys/{id}/deactivate"), json!({}))
        .await
        .expect(200);
    app.state.clock.advance(chrono::Duration::milliseconds(2_200));
    let read = app.get(&format!("/v1/keys/{id}")).await;
    assert_eq!(read.expect(200)["status"], "expired");
    let refused = app.post(&format!("/v1/keys/{id}/activate"), json!({})).await;
    refused.expect_error(409, "conflict");
    assert_eq!(app.verify(json!({"key": secret})).await["code"], "EXPIRED");
    call(&app.address, Method::GET, "/v1/keys", Some(secret), None, &[])
        .await
        .expect_error(401, "key_expired");
    let expired = app.get("/v1/keys?status=expired").await;
    assert_eq!(expired.expect(200)["data"].as_array().unwrap().len(), 1);
    assert_eq!(app.stream_types(id).await, ["key.created", "key.deactivated"]);
}

#[actix_web::test]
async fn delete_removes_the_key_from_lists_and_verification_for_good() {
    let app = spawn_app().await;
    let key = app.create_key(json!({"name": "doomed", "type": "secret"})).await;
    let (id, secret) = (key["id"].as_str().unwrap(), key["key"].as_str().unwrap());
    let deleted = app.delete(&format!("/v1/keys/{id}")).await;
    assert_eq!(deleted.status.as_u16(), 204);
    assert_eq!(app.verify(json!({"key": secret})).await["code"], "NOT_FOUND");
    call(&app.address, Method::GET, "/v1/keys", Some(secret), None, &[])
        .await
        .expect_error(401, "invalid_api_key");
    app.get(&format!("/v1/keys/{id}")).await.expect_error(404, "not_found");
    for status in [
        "",
        "?status=active",
        "?status=inactive",
        "?status=expired",
        "?type=secret",
    ] {
        let listed = app.get(&format!("/v1/keys{status}")).await;
        assert!(!listed.expect(200)["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["id"] == id));
    }
    app.delete(&format!("/v1/keys/{id}"))
        .await
        .expect_error(404, "not_found");
    app.post(&format!("/v1/keys/{id}/activate"), json!({}))
        .await
        .expect_error(404, "not_found");
    assert_eq!(app.stream_types(id).await, ["key.created", "key.deleted"]);
    // The audit trail survives the key.
    let trail = app.get(&format!("/v1/keys/{id}/events")).await;
    assert_eq!(trail.expect(200)["data"].as_array().unwrap().len(), 2);
}

#[actix_web::test]
async fn the_audit_trail_lists_events_without_hashes_or_secrets() {
    let app = spawn_app().await;
    let key = app.create_key(json!({"name": "audited", "type": "secret"})).await;
    let id = key["id"].as_str().unwrap();
    app.patch(&format!("/v1/keys/{id}"), json!({"name": "audited twice"}))
        .await
        .expect(200);
    let regenerated = app.post(&format!("/v1/keys/{id}/regenerate"), json!({})).await;
    let new_secret = regenerated.expect(200)["key"].as_str().unwrap().to_owned();
    app.post(&format!("/v1/keys/{id}/deactivate"), json!({}))
        .await
        .expect(200);
    let trail = app.get(&format!("/v1/keys/{id}/events?limit=3")).await;
    let body = trail.expect(200);
    let types: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["key.created", "key.updated", "key.regenerated"]);
    assert_eq!(body["data"][0]["actor"], app.admin_key_id.as_str());
    assert_eq!(body["data"][0]["version"], 1);
    assert!(body["data"][0]["event_id"].is_string() && body["data"][0]["occurred_at"].is_string());
    assert_eq!(body["data"][1]["data"], json!({"name": "audited twice"}));
    let text = body.to_string();
    assert!(!text.contains("hash") && !text.contains(&new_secret) && !text.contains(key["key"].as_str().unwrap()));
    let cursor = body["next_cursor"].as_str().unwrap();
    let rest = app.get(&format!("/v1/keys/{id}/events?cursor={cursor}")).await;
    let rest = rest.expect(200);
    assert_eq!(rest["data"].as_array().unwrap().len(), 1);
    assert_eq!(rest["data"][0]["type"], "key.deactivated");
    assert!(rest["next_cursor"].is_null());
}

#[actix_web::test]
async fn the_org_can_be_read_and_its_alert_settings_changed() {
    let app = spawn_app().await;
    let org = app.get("/v1/org").await;
    let body = org.expect(200);
    assert_eq!(body["id"], app.org_id.as_str());
    assert_eq!(
        (&body["plan"], &body["rate_limit_per_minute"]),
        (&json!("free"), &json!(100))
    );
    assert_eq!(body["rotation_days"], 90);
    assert_eq!(body["alert_settings"]["approaching_limit_percent"], 80);
    let changed = app
        .patch(
            "/v1/org",
            json!({"alert_emails": ["ops@example.com"], "rotation_days": 30, "alert_settings": {"error_rate_percent": 25}}),
        )
        .await;
    let body = changed.expect(200);
    assert_eq!(body["alert_emails"], json!(["ops@example.com"]));
    assert_eq!(body["rotation_days"], 30);
    assert_eq!(body["alert_settings"]["error_rate_percent"], 25);
    assert_eq!(body["alert_settings"]["approaching_limit_percent"], 80);
    let before = app.event_count().await;
    for bad in [
        json!({"alert_emails": ["not-an-address"]}),
        json!({"rotation_days": -1}),
        json!({"rotation_days": 100000}),
        json!({"alert_settings": {"error_rate_percent": 0}}),
        json!({"alert_settings": {"no_such_setting": 1}}),
        json!({"plan": "enterprise"}),
    ] {
        app.patch("/v1/org", bad).await.expect_error(422, "validation_error");
    }
    assert_eq!(app.event_count().await, before);
    // A new live key follows the new rotation policy.
    let key = app.create_key(json!({"name": "after policy", "type": "secret"})).await;
    let created = chrono::DateTime::parse_from_rfc3339(key["created_at"].as_str().unwrap()).unwrap();
    let due = chrono::DateTime::parse_from_rfc3339(key["rotation_due_at"].as_str().unwrap()).unwrap();
    assert_eq!((due - created).num_days(), 30);
}

#[actix_web::test]
async fn health_and_request_ids() {
    let app = spawn_app().await;
    let health = call(&app.address, Method::GET, "/healthz", None, None, &[]).await;
    assert_eq!(health.expect(200)["status"], "ok");
    let ready = call(&app.address, Method::GET, "/readyz", None, None, &[]).await;
    assert_eq!(ready.expect(200)["checks"]["postgres"], "ok");
    let echoed = call(
        &app.address,
        Method::GET,
        "/v1/keys",
        None,
        None,
        &[("X-Request-Id", "trace-123")],
    )
    .await;
    assert_eq!(echoed.header("x-request-id"), Some("trace-123"));
    assert_eq!(echoed.body["error"]["request_id"], "trace-123");
    let generated = app.get("/v1/keys").await;
    assert!(generated
        .header("x-request-id")
        .is_some_and(|id| id.starts_with("req_")));
}
