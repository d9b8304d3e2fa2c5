//! Tenant isolation and concurrent commands on one key.

use awc::http::Method;
use serde_json::{json, Value};

use crate::support::{call, spawn_app};

#[actix_web::test]
async fn another_organization_sees_nothing_and_changes_nothing() {
    let app = spawn_app().await;
    let key = app.create_key(json!({"name": "A's key", "type": "secret"})).await;
    let id = key["id"].as_str().unwrap();
    let (_, other) = app.other_org().await;
    let before = app.event_count().await;
    let path = format!("/v1/keys/{id}");
    for (method, path, body) in [
        (Method::GET, path.clone(), None),
        (Method::PATCH, path.clone(), Some(json!({"name": "stolen"}))),
        (Method::POST, format!("{path}/regenerate"), Some(json!({}))),
        (Method::POST, format!("{path}/deactivate"), None),
        (Method::POST, format!("{path}/activate"), None),
        (Method::DELETE, path.clone(), None),
        (Method::GET, format!("{path}/events"), None),
    ] {
        let answer = call(&app.address, method.clone(), &path, Some(&other), body, &[]).await;
        answer.expect_error(404, "not_found");
    }
    assert_eq!(app.event_count().await, before);
    let listed = call(&app.address, Method::GET, "/v1/keys", Some(&other), None, &[]).await;
    let ids: Vec<&Value> = listed.expect(200)["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| &k["id"])
        .collect();
    assert_eq!(ids.len(), 1, "only B's own admin key");
    assert!(!ids.contains(&&json!(id)));
    // A's key is untouched.
    let read = app.get(&path).await;
    assert_eq!(
        (&read.expect(200)["name"], &read.body["status"]),
        (&json!("A's key"), &json!("active"))
    );
    assert_eq!(app.verify(json!({"key": key["key"]})).await["code"], "VALID");
}

/// Replays a key's stream with the domain and compares with the read model.
async fn assert_stream_contiguous_and_state_equals_replay(app: &crate::support::TestApp, id: &str) -> i64 {
    use keyledger_events::domain::{Aggregate, ApiKey};
    let events = keyledger_events::log::read_stream(&app.pool, &format!("key-{id}"), None)
        .await
        .unwrap();
    let versions: Vec<i64> = events.iter().map(|e| e.version).collect();
    assert_eq!(
        versions,
        (1..=events.len() as i64).collect::<Vec<_>>(),
        "versions are contiguous"
    );
    let decoded: Vec<_> = events.iter().map(|e| e.decode().unwrap()).collect();
    let replayed = ApiKey::replay(&decoded).unwrap();
    let expected = keyledger_events::read_model::KeyRow::from_aggregate(&replayed, events.len() as i64);
    let now = chrono::Utc::now();
    let row = app.get(&format!("/v1/keys/{id}")).await;
    assert_eq!(row.expect(200), &expected.to_json(now));
    let stored: Vec<u8> = sqlx::query_scalar("select key_hash from keys where id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        stored,
        replayed.key_hash.0.to_vec(),
        "the live hash is the replayed one"
    );
    events.len() as i64
}

#[actix_web::test]
async fn concurrent_regenerates_each_succeed_or_conflict_and_lose_nothing() {
    let app = spawn_app().await;
    let key = app.create_key(json!({"name": "hot", "type": "secret"})).await;
    let id = key["id"].as_str().unwrap().to_owned();
    let requests = (0..20).map(|_| {
        let (address, admin, id) = (app.address.clone(), app.admin_key.clone(), id.clone());
        async move {
            call(
                &address,
                Method::POST,
                &format!("/v1/keys/{id}/regenerate"),
                Some(&admin),
                Some(json!({})),
                &[],
            )
            .await
        }
    });
    let answers = futures_util::future::join_all(requests).await;
    let mut secrets = vec![];
    for answer in &answers {
        match answer.status.as_u16() {
            200 => secrets.push(answer.body["key"].as_str().unwrap().to_owned()),
            409 => answer.expect_error(409, "conflict"),
            other => panic!("unexpected {other}: {:#}", answer.body),
        }
    }
    assert!(!secrets.is_empty());
    let versions = assert_stream_contiguous_and_state_equals_replay(&app, &id).await;
    assert_eq!(versions, 1 + secrets.len() as i64, "one event per success");
    // Exactly one of the issued secrets works: the last one appended.
    let mut valid = 0;
    for secret in &secrets {
        if app.verify(json!({"key": secret})).await["code"] == "VALID" {
            valid += 1;
        }
    }
    assert_eq!(valid, 1);
}

#[actix_web::test]
async fn concurrent_updates_each_succeed_or_conflict_and_lose_nothing() {
    let app = spawn_app().await;
    let key = app.create_key(json!({"name": "edited", "type": "secret"})).await;
    let id = key["id"].as_str().unwrap().to_owned();
    let requests = (0..20).map(|i| {
        let (address, admin, id) = (app.address.clone(), app.admin_key.clone(), id.clone());
        async move {
            let body = json!({"name": format!("name {i}")});
            (
                i,
                call(
                    &address,
                    Method::PATCH,
                    &format!("/v1/keys/{id}"),
                    Some(&admin),
                    Some(body),
                    &[],
                )
                .await,
            )
        }
    });
    let answers = futures_util::future::join_all(requests).await;
    let succeeded = answers.iter().filter(|(_, a)| a.status.as_u16() == 200).count();
    for (_, answer) in &answers {
        assert!(matches!(answer.status.as_u16(), 200 | 409), "{:#}", answer.body);
    }
    let versions = assert_stream_contiguous_and_state_equals_replay(&app, &id).await;
    assert_eq!(versions, 1 + succeeded as i64);
}
