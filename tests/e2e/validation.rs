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

#[actix_web::test]
async fn names_that_spoof_and_expiries_rfc_3339_cannot_write_are_refused_on_create_and_edit() {
    let app = spawn_app().await;
    let key = app.create_key(json!({"name": "plain", "type": "secret"})).await;
    let path = format!("/v1/keys/{}", key["id"].as_str().unwrap());
    let before = app.event_count().await;
    let refused = [
        // Trojan Source: displayed as "adminexe.txt", stored as something else.
        (json!({"name": "admin\u{202E}txt.exe"}), "name", "bidirectional"),
        (json!({"name": "\u{2066}billing\u{2069}"}), "name", "bidirectional"),
        (json!({"name": "key\u{200F}"}), "name", "bidirectional"),
        (json!({"name": "\u{061C}x"}), "name", "bidirectional"),
        (json!({"name": "\u{200B}"}), "name", "visible"),
        (json!({"name": "\u{200B}\u{200D}\u{FEFF}\u{2060}"}), "name", "visible"),
        (json!({"name": "\u{1BCA0}"}), "name", "visible"),
        (json!({"name": "\u{FFF9}"}), "name", "visible"),
        (json!({"name": "\u{0301}\u{0301}"}), "name", "visible"),
        (
            json!({"name": "billing\u{E0069}\u{E0067}\u{E006E}"}),
            "name",
            "tag characters",
        ),
        // Later than the last second RFC 3339 can write (it would print as +10000-…).
        (
            json!({"expires_at": "9999-12-31T23:59:59-01:00"}),
            "expires_at",
            "9999-12-31T23:59:59Z",
        ),
        (
            json!({"expires_at": "9999-12-31T23:59:59.5Z"}),
            "expires_at",
            "9999-12-31T23:59:59Z",
        ),
    ];
    for (change, field, says) in refused {
        let mut create = json!({"name": "x", "type": "secret"});
        for (name, value) in change.as_object().unwrap() {
            create[name] = value.clone();
        }
        for answer in [
            app.post("/v1/keys", create).await,
            app.patch(&path, change.clone()).await,
        ] {
            answer.expect_error(422, "validation_error");
            let problems = answer.body["error"]["details"][field].to_string();
            assert!(problems.contains(says), "{change} → {:#}", answer.body);
        }
    }
    assert_eq!(app.event_count().await, before, "nothing was appended");
    let latest = app
        .create_key(json!({"name": "forever", "type": "secret", "expires_at": "9999-12-31T23:59:59Z"}))
        .await;
    assert_eq!(latest["expires_at"], "9999-12-31T23:59:59Z");
}

#[actix_web::test]
async fn keys_in_query_strings_are_found_after_percent_decoding() {
    let app = spawn_app().await;
    let secret = app.admin_key.clone();
    let (prefix, body) = secret.split_at(8);
    let encoded_prefix = prefix.replace('_', "%5F");
    for query in [
        format!("q={encoded_prefix}{body}"),
        format!("q=%73%6B%5F%6C%69%76%65%5F{body}"),
        format!("q={}{body}", prefix.replace('_', "%255F")),
        "%6bey=anything".to_owned(),
        "API%5FKEY=anything".to_owned(),
        "access%5ftoken=anything".to_owned(),
        format!("{encoded_prefix}{body}"),
        format!("note=see+{encoded_prefix}{body}"),
    ] {
        let answer = app.get(&format!("/v1/keys?{query}")).await;
        answer.expect_error(400, "bad_request");
        assert!(
            answer.body["error"]["message"].as_str().unwrap().contains("query"),
            "{query}"
        );
    }
    app.get("/v1/keys?limit=5&status=active").await.expect(200);
    app.get("/v1/keys?cursor=key_01JD0000000000000000000000")
        .await
        .expect(200);
}
