//! Bad input gets the documented status and code and appends no event.

use awc::http::Method;
use serde_json::json;

use crate::support::{call, call_raw, spawn_app, Answer, TestApp};

async fn create_with(app: &TestApp, auth: Option<&str>, headers: &[(&str, &str)]) -> Answer {
    let body = json!({"name": "x", "type": "secret"});
    call(&app.address, Method::POST, "/v1/keys", auth, Some(body), headers).await
}

#[actix_web::test]
async fn invalid_key_requests_get_422_with_details_and_append_nothing() {
    let app = spawn_app().await;
    let before = app.event_count().await;
    let in_the_past = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    for (body, field) in [
        (json!({"name": "x", "type": "master"}), "type"),
        (
            json!({"name": "x", "type": "secret", "scopes": ["write:everything"]}),
            "scopes",
        ),
        (
            json!({"name": "x", "type": "public", "scopes": ["write:consumers"]}),
            "scopes",
        ),
        (
            json!({"name": "x", "type": "secret", "expires_at": in_the_past}),
            "expires_at",
        ),
        (
            json!({"name": "x", "type": "secret", "expires_at": "tomorrow"}),
            "expires_at",
        ),
        (json!({"name": "x".repeat(101), "type": "secret"}), "name"),
        (json!({"name": "line\nbreak", "type": "secret"}), "name"),
        (json!({"name": "tab\there", "type": "secret"}), "name"),
        (json!({"name": "", "type": "secret"}), "name"),
        (json!({"type": "secret"}), "name"),
        (json!({"name": "x"}), "type"),
        (json!({"name": 7, "type": "secret"}), "name"),
        (json!({"name": "x", "type": "secret", "color": "red"}), "color"),
    ] {
        let answer = app.post("/v1/keys", body.clone()).await;
        answer.expect_error(422, "validation_error");
        assert!(
            answer.body["error"]["details"][field].is_array(),
            "{body} → {:#}",
            answer.body
        );
    }
    // A 100-character name is fine.
    assert_eq!(app.event_count().await, before);
    app.create_key(json!({"name": "y".repeat(100), "type": "secret"})).await;
    assert_eq!(app.event_count().await, before + 1);
}

#[actix_web::test]
async fn malformed_bodies_get_400_413_and_append_nothing() {
    let app = spawn_app().await;
    let before = app.event_count().await;
    let post = |content_type: &'static str, body: Vec<u8>| {
        let (address, key) = (app.address.clone(), app.admin_key.clone());
        async move { call_raw(&address, Method::POST, "/v1/keys", &key, content_type, body).await }
    };
    post("application/json", b"{\"name\": ".to_vec())
        .await
        .expect_error(400, "bad_request");
    post("text/plain", br#"{"name":"x","type":"secret"}"#.to_vec())
        .await
        .expect_error(400, "bad_request");
    post("application/x-www-form-urlencoded", b"name=x&type=secret".to_vec())
        .await
        .expect_error(400, "bad_request");
    let mut huge = br#"{"name":"x","type":"secret","pad":""#.to_vec();
    huge.extend(std::iter::repeat_n(b'a', 70 * 1024));
    huge.extend(br#""}"#);
    post("application/json", huge)
        .await
        .expect_error(413, "payload_too_large");
    let key_id = app.admin_key_id.clone();
    let answer = call_raw(
        &app.address,
        Method::PATCH,
        &format!("/v1/keys/{key_id}"),
        &app.admin_key,
        "application/json",
        b"[1,2]".to_vec(),
    )
    .await;
    answer.expect_error(422, "validation_error");
    assert_eq!(app.event_count().await, before);
}

#[actix_web::test]
async fn missing_or_bad_credentials_are_refused_before_anything_happens() {
    let app = spawn_app().await;
    let before = app.event_count().await;
    let body = json!({"name": "x", "type": "secret"});
    let missing = create_with(&app, None, &[]).await;
    missing.expect_error(401, "missing_api_key");
    assert!(missing.header("www-authenticate").is_some());
    create_with(&app, None, &[("Authorization", "Basic dXNlcjpwYXNz")])
        .await
        .expect_error(401, "missing_api_key");
    create_with(&app, None, &[("Authorization", "Bearer")])
        .await
        .expect_error(401, "missing_api_key");
    create_with(&app, Some("sk_live_not-a-key"), &[])
        .await
        .expect_error(401, "invalid_api_key");
    let mut typo = app.admin_key.clone().into_bytes();
    typo[30] = if typo[30] == b'Z' { b'Y' } else { b'Z' };
    create_with(&app, Some(&String::from_utf8(typo).unwrap()), &[])
        .await
        .expect_error(401, "invalid_api_key");
    let unknown = keyledger_events::domain::PlainKey::encode(keyledger_events::domain::KeyType::Secret, &[3; 32]);
    create_with(&app, Some(unknown.expose()), &[])
        .await
        .expect_error(401, "invalid_api_key");

    let test_key = app.create_key(json!({"name": "test admin", "type": "test"})).await;
    let public = app.create_key(json!({"name": "browser", "type": "public"})).await;
    let reader = app
        .create_key(json!({"name": "reader", "type": "secret", "scopes": ["read:analytics"]}))
        .await;
    let before = before + 3;
    create_with(&app, test_key["key"].as_str(), &[])
        .await
        .expect_error(403, "environment_mismatch");
    let scope = create_with(&app, public["key"].as_str(), &[]).await;
    scope.expect_error(403, "insufficient_scope");
    assert!(scope.body["error"]["message"].as_str().unwrap().contains("admin"));
    create_with(&app, reader["key"].as_str(), &[])
        .await
        .expect_error(403, "insufficient_scope");

    // Keys in query strings are refused even with a valid header.
    let query = call(
        &app.address,
        Method::POST,
        &format!("/v1/keys?api_key={}", app.admin_key),
        Some(&app.admin_key),
        Some(body.clone()),
        &[],
    )
    .await;
    query.expect_error(400, "bad_request");
    let anywhere = call(
        &app.address,
        Method::GET,
        &format!("/v1/keys?q={}", app.admin_key),
        Some(&app.admin_key),
        None,
        &[],
    )
    .await;
    anywhere.expect_error(400, "bad_request");
    assert_eq!(app.event_count().await, before);
}
