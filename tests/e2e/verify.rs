//! `POST /v1/verify`: every code of issue 2 (all but RATE_LIMITED).

use awc::http::Method;
use serde_json::json;

use crate::support::{call, spawn_app};

#[actix_web::test]
async fn verify_answers_each_code_with_the_key_fields() {
    let app = spawn_app().await;
    let secret = app
        .create_key(json!({"name": "reader", "type": "secret", "scopes": ["read:experiences"]}))
        .await;
    let key = secret["key"].as_str().unwrap();

    let valid = app
        .verify(json!({"key": key, "scopes": ["read:experiences"], "environment": "live"}))
        .await;
    assert_eq!((&valid["valid"], &valid["code"]), (&json!(true), &json!("VALID")));
    assert_eq!(valid["key_id"], secret["id"]);
    assert_eq!(valid["org_id"], app.org_id.as_str());
    assert_eq!(valid["type"], "secret");
    assert_eq!(valid["environment"], "live");
    assert_eq!(valid["scopes"], json!(["read:experiences"]));
    assert!(valid["expires_at"].is_null());
    assert_eq!(app.verify(json!({"key": key})).await["code"], "VALID");
    let answer = call(
        &app.internal,
        Method::POST,
        "/v1/verify",
        None,
        Some(json!({"key": key})),
        &[],
    )
    .await;
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(
        answer.expect(200)["ratelimit"]["limit"],
        json!(100),
        "the free plan's limit"
    );

    let scope = app.verify(json!({"key": key, "scopes": ["write:consumers"]})).await;
    assert_eq!(
        (&scope["valid"], &scope["code"]),
        (&json!(false), &json!("INSUFFICIENT_SCOPE"))
    );
    assert_eq!(scope["key_id"], secret["id"]);

    let env = app.verify(json!({"key": key, "environment": "test"})).await;
    assert_eq!(env["code"], "ENVIRONMENT_MISMATCH");
    let test_key = app.create_key(json!({"name": "test", "type": "test"})).await;
    let test_env = app.verify(json!({"key": test_key["key"], "environment": "live"})).await;
    assert_eq!(test_env["code"], "ENVIRONMENT_MISMATCH");
    assert_eq!(
        app.verify(json!({"key": test_key["key"], "environment": "test", "scopes": ["write:consumers"]}))
            .await["code"],
        "VALID"
    );

    let id = secret["id"].as_str().unwrap();
    app.post(&format!("/v1/keys/{id}/deactivate"), json!({}))
        .await
        .expect(200);
    let inactive = app.verify(json!({"key": key})).await;
    assert_eq!(
        (&inactive["valid"], &inactive["code"]),
        (&json!(false), &json!("INACTIVE"))
    );

    let expires_at = (chrono::Utc::now() + chrono::Duration::milliseconds(1_500)).to_rfc3339();
    let expiring = app
        .create_key(json!({"name": "brief", "type": "secret", "expires_at": expires_at}))
        .await;
    assert_eq!(app.verify(json!({"key": expiring["key"]})).await["code"], "VALID");
    // Past its expiry by the app's clock: no waiting.
    app.state.clock.advance(chrono::Duration::milliseconds(1_700));
    let expired = app.verify(json!({"key": expiring["key"]})).await;
    assert_eq!(expired["code"], "EXPIRED");
    assert!(expired["expires_at"].is_string());
}

#[actix_web::test]
async fn unknown_malformed_and_mistyped_keys_are_not_found_without_key_fields() {
    let app = spawn_app().await;
    let real = app.admin_key.clone();
    let mut typo = real.clone().into_bytes();
    typo[20] = if typo[20] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    let unknown = keyledger_events::domain::PlainKey::encode(keyledger_events::domain::KeyType::Secret, &[9; 32]);
    for key in [
        unknown.expose(),
        typo.as_str(),
        "sk_live_short",
        "hello",
        &real[..56],
        "",
    ] {
        let answer = app.verify(json!({"key": key})).await;
        assert_eq!(answer, json!({"valid": false, "code": "NOT_FOUND"}), "for {key:?}");
    }
}

#[actix_web::test]
async fn ill_formed_verify_requests_are_refused() {
    let app = spawn_app().await;
    for body in [
        json!({}),
        json!({"key": 5}),
        json!({"key": app.admin_key, "scopes": ["write:everything"]}),
        json!({"key": app.admin_key, "environment": "staging"}),
        json!({"key": app.admin_key, "extra": true}),
        // The fields in order, but not as an object.
        json!([app.admin_key]),
        json!([app.admin_key, ["read:experiences"], "live", "10.0.0.1"]),
    ] {
        let answer = call(&app.address, Method::POST, "/v1/verify", None, Some(body), &[]).await;
        answer.expect_error(422, "validation_error");
    }
}

/// Bodies the one-pass reader does not take (escapes, a repeated or
/// unknown field, a field of the wrong type) get the same answers as
/// before it: the general parser reads them, and names every problem.
#[actix_web::test]
async fn verify_bodies_off_the_common_shape_get_the_general_parsers_answers() {
    let app = spawn_app().await;
    let key = app.admin_key.clone();
    let send = |raw: String| {
        let address = app.address.clone();
        async move {
            awc::Client::new()
                .post(format!("{address}/v1/verify"))
                .insert_header(("Content-Type", "application/json"))
                .send_body(raw)
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    // An escaped character in the key, nulls for the optional fields.
    let escaped = key.replacen('_', "\\u005f", 1);
    let answer = send(format!(
        r#"{{"key": "{escaped}", "scopes": null, "environment": null, "ip": null}}"#
    ))
    .await;
    assert_eq!(answer["code"], "VALID", "{answer}");
    // A repeated field: the last one counts, as it always has.
    let answer = send(format!(r#"{{"key": "sk_live_nope", "key": "{key}"}}"#)).await;
    assert_eq!(answer["code"], "VALID", "{answer}");
    // Every problem at once, whichever reader saw the body first.
    let answer = send(format!(
        r#"{{"key": "{key}", "scopes": [5], "environment": 7, "extra": true}}"#
    ))
    .await;
    assert_eq!(answer["error"]["code"], "validation_error", "{answer}");
    for field in ["scopes", "environment", "extra"] {
        assert!(answer["error"]["details"][field].is_array(), "{field} in {answer}");
    }
}

/// A body sent in pieces (chunked transfer encoding, each piece its own
/// chunk, one cut inside the key) is read whole: the same answer as in one
/// piece. And pieces that add up to more than the limit are refused.
#[actix_web::test]
async fn a_body_sent_in_chunks_is_read_whole() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = spawn_app().await;
    let key = app.create_key(json!({"name": "chunked", "type": "secret"})).await;
    let body = json!({"key": key["key"], "environment": "live"}).to_string();
    let exchange = |pieces: Vec<String>| {
        let address = app.internal.trim_start_matches("http://").to_owned();
        async move {
            let mut request = "POST /v1/verify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                               Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                .to_owned();
            for piece in pieces {
                request.push_str(&format!("{:x}\r\n{piece}\r\n", piece.len()));
            }
            request.push_str("0\r\n\r\n");
            let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await.unwrap();
            String::from_utf8_lossy(&answer).into_owned()
        }
    };
    let (head, rest) = body.split_at(20);
    let (middle, tail) = rest.split_at(rest.len() / 2);
    let answer = exchange(vec![head.into(), middle.into(), tail.into()]).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""code":"VALID""#), "{answer}");
    assert!(
        answer.contains(&format!(r#""key_id":"{}""#, key["id"].as_str().unwrap())),
        "{answer}"
    );

    let piece = " ".repeat(40_000);
    let answer = exchange(vec![body.clone(), piece.clone(), piece.clone(), piece]).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}
