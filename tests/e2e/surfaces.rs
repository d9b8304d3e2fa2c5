//! Who may call what: the internal listener (`/v1/verify`, `/v1/auth`,
//! `/metrics` off the public one), the guessing guard of `/v1/verify` for a
//! named end client, and IPv6 clients counted by their /64.

use awc::http::Method;
use keyledger_api::forward_auth::ForwardAuthStyle;
use keyledger_events::domain::{KeyType, PlainKey};
use serde_json::json;

use crate::support::{call, spawn_app, spawn_app_with, Answer};

fn guess(i: u8) -> String {
    PlainKey::encode(KeyType::Secret, &[i; 32]).expose().to_owned()
}

#[track_caller]
fn unknown_endpoint(answer: &Answer) {
    answer.expect_error(404, "not_found");
    assert!(
        answer.body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("There is no such endpoint"),
        "{:#}",
        answer.body
    );
}

#[actix_web::test]
async fn the_internal_endpoints_are_served_only_on_the_internal_listener() {
    let app = spawn_app_with(keyledger_api::ApiSettings::default(), true).await;
    assert_ne!(app.address, app.internal);
    let key = app.create_key(json!({"name": "k", "type": "secret"})).await;
    let secret = key["key"].as_str().unwrap();
    let original = [("X-Original-Method", "GET"), ("X-Original-URI", "/api/experiences")];

    // The public listener: the management API, and nothing internal.
    let public = &app.address;
    let verify = call(
        public,
        Method::POST,
        "/v1/verify",
        None,
        Some(json!({"key": secret})),
        &[],
    )
    .await;
    unknown_endpoint(&verify);
    unknown_endpoint(&call(public, Method::GET, "/v1/auth", Some(secret), None, &original).await);
    unknown_endpoint(&call(public, Method::GET, "/v1/auth/api/experiences", Some(secret), None, &[]).await);
    unknown_endpoint(&call(public, Method::GET, "/metrics", None, None, &[]).await);
    app.get("/v1/keys").await.expect(200);
    call(public, Method::GET, "/openapi.json", None, None, &[])
        .await
        .expect(200);
    call(public, Method::GET, "/healthz", None, None, &[]).await.expect(200);

    // The internal listener: verification, forward-auth, metrics, health.
    let internal = &app.internal;
    let verdict = call(
        internal,
        Method::POST,
        "/v1/verify",
        None,
        Some(json!({"key": secret})),
        &[],
    )
    .await;
    assert_eq!(verdict.expect(200)["code"], "VALID");
    let allowed = call(internal, Method::GET, "/v1/auth", Some(secret), None, &original).await;
    assert_eq!(allowed.status.as_u16(), 204, "{:?}", allowed.body);
    let metrics = call(internal, Method::GET, "/metrics", None, None, &[]).await;
    assert!(metrics
        .expect(200)
        .as_str()
        .unwrap()
        .contains("keyledger_key_cache_hits_total"));
    call(internal, Method::GET, "/readyz", None, None, &[])
        .await
        .expect(200);
    unknown_endpoint(&call(internal, Method::GET, "/v1/keys", Some(&app.admin_key), None, &[]).await);
    unknown_endpoint(&call(internal, Method::GET, "/v1/org", Some(&app.admin_key), None, &[]).await);
}

#[actix_web::test]
async fn verify_guards_the_end_client_it_names_and_never_the_platform_itself() {
    let app = spawn_app_with(keyledger_api::ApiSettings::default(), true).await;
    let key = app.create_key(json!({"name": "k", "type": "secret"})).await;
    let secret = key["key"].as_str().unwrap();
    let verify = |body: serde_json::Value| {
        let address = app.internal.clone();
        async move { call(&address, Method::POST, "/v1/verify", None, Some(body), &[]).await }
    };

    // Malformed addresses are refused with details.
    for ip in [json!("203.0.113"), json!("example.com"), json!("10.0.0.0/8"), json!(7)] {
        let answer = verify(json!({"key": secret, "ip": ip})).await;
        answer.expect_error(422, "validation_error");
        assert!(
            answer.body["error"]["details"]["ip"].is_array(),
            "{ip}: {:#}",
            answer.body
        );
    }

    // The platform's own server (no ip) is never locked out.
    for i in 0..25 {
        assert_eq!(app.verify(json!({"key": guess(i)})).await["code"], "NOT_FOUND");
    }
    assert_eq!(app.verify(json!({"key": secret})).await["code"], "VALID");

    // An end client's unknown keys count against its address.
    for i in 0..20 {
        let answer = verify(json!({"key": guess(i), "ip": "203.0.113.9"})).await;
        assert_eq!(answer.expect(200)["code"], "NOT_FOUND");
    }
    let guarded = verify(json!({"key": secret, "ip": "203.0.113.9"})).await;
    guarded.expect_error(429, "too_many_failed_attempts");
    assert!(guarded.header("retry-after").is_some());
    // …and nobody else's.
    let other = verify(json!({"key": secret, "ip": "198.51.100.7"})).await;
    assert_eq!(other.expect(200)["code"], "VALID");
    assert_eq!(app.verify(json!({"key": secret})).await["code"], "VALID");
    // The same address written as IPv4-mapped IPv6 is the same client.
    verify(json!({"key": secret, "ip": "::ffff:203.0.113.9"}))
        .await
        .expect_error(429, "too_many_failed_attempts");

    // IPv6 clients are counted by their /64: rotating addresses within it
    // does not reset the count; the next /64 is someone else.
    for i in 0..20u8 {
        let ip = format!("2001:db8:7:1:{:x}::{i}", u16::from(i) * 977);
        let answer = verify(json!({"key": guess(100 + i), "ip": ip})).await;
        assert_eq!(answer.expect(200)["code"], "NOT_FOUND");
    }
    verify(json!({"key": secret, "ip": "2001:db8:7:1:ffff:ffff:ffff:ffff"}))
        .await
        .expect_error(429, "too_many_failed_attempts");
    let neighbour = verify(json!({"key": secret, "ip": "2001:db8:7:2::1"})).await;
    assert_eq!(neighbour.expect(200)["code"], "VALID");
}

#[actix_web::test]
async fn ipv6_clients_behind_a_trusted_proxy_are_counted_by_their_64() {
    let settings = keyledger_api::ApiSettings {
        trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()],
        ..keyledger_api::ApiSettings::default()
    };
    let app = spawn_app_with(settings, false).await;
    let key = app.create_key(json!({"name": "k", "type": "secret"})).await;
    let secret = key["key"].as_str().unwrap();
    let auth = |key: String, client: String| {
        let address = app.address.clone();
        async move {
            let headers = [
                ("X-Original-Method", "GET"),
                ("X-Original-URI", "/api/experiences"),
                ("X-Real-IP", client.as_str()),
            ];
            call(&address, Method::GET, "/v1/auth", Some(&key), None, &headers).await
        }
    };
    for i in 0..20u8 {
        auth(guess(i), format!("2001:db8:aa:bb:{i:x}::{:x}", u16::from(i) * 3_001))
            .await
            .expect_error(401, "invalid_api_key");
    }
    auth(secret.into(), "2001:db8:aa:bb:1234::1".into())
        .await
        .expect_error(429, "too_many_failed_attempts");
    let elsewhere = auth(secret.into(), "2001:db8:aa:bc::1".into()).await;
    assert_eq!(elsewhere.status.as_u16(), 204);
    // The management API uses the same guard.
    let management = call(
        &app.address,
        Method::GET,
        "/v1/keys",
        Some(&app.admin_key),
        None,
        &[("X-Real-IP", "2001:db8:aa:bb:ffff::9")],
    )
    .await;
    management.expect_error(429, "too_many_failed_attempts");
}

/// 20 unknown keys "from" `ip` through `/v1/verify` at `base`.
async fn verify_guesses_naming(base: &str, ip: &str) {
    for _ in 0..20 {
        let body = json!({"key": "sk_live_x", "ip": ip});
        let answer = call(base, Method::POST, "/v1/verify", None, Some(body), &[]).await;
        assert_eq!(answer.expect(200)["code"], "NOT_FOUND");
    }
}

#[actix_web::test]
async fn on_one_listener_a_verify_caller_cannot_lock_out_the_address_it_names() {
    let app = spawn_app().await;
    let key = app.create_key(json!({"name": "k", "type": "secret"})).await;
    let secret = key["key"].as_str().unwrap();
    // Anyone can call /v1/verify here: its `ip` is not their word to give.
    verify_guesses_naming(&app.address, "127.0.0.1").await;
    app.get("/v1/keys").await.expect(200);
    let original = [("X-Original-Method", "GET"), ("X-Original-URI", "/api/experiences")];
    let auth = call(&app.address, Method::GET, "/v1/auth", Some(secret), None, &original).await;
    assert_eq!(auth.status.as_u16(), 204, "{:?}", auth.body);
    let verdict = app.verify(json!({"key": secret, "ip": "127.0.0.1"})).await;
    assert_eq!(verdict["code"], "VALID");
    // It is still checked.
    let bad = call(
        &app.address,
        Method::POST,
        "/v1/verify",
        None,
        Some(json!({"key": secret, "ip": "localhost"})),
        &[],
    )
    .await;
    bad.expect_error(422, "validation_error");
}

#[actix_web::test]
async fn a_trusted_caller_on_one_listener_may_name_the_end_client() {
    let settings = keyledger_api::ApiSettings {
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        ..keyledger_api::ApiSettings::default()
    };
    let app = spawn_app_with(settings, false).await;
    let key = app.create_key(json!({"name": "k", "type": "secret"})).await;
    let secret = key["key"].as_str().unwrap();
    verify_guesses_naming(&app.address, "203.0.113.9").await;
    let body = json!({"key": secret, "ip": "203.0.113.9"});
    call(&app.address, Method::POST, "/v1/verify", None, Some(body), &[])
        .await
        .expect_error(429, "too_many_failed_attempts");
}

#[actix_web::test]
async fn the_end_clients_verify_names_are_guarded_apart_from_the_management_api() {
    let app = spawn_app_with(keyledger_api::ApiSettings::default(), true).await;
    let key = app.create_key(json!({"name": "k", "type": "secret"})).await;
    let secret = key["key"].as_str().unwrap();
    // On the internal listener the platform names its end client, and that
    // client is stopped…
    verify_guesses_naming(&app.internal, "127.0.0.1").await;
    let body = json!({"key": secret, "ip": "127.0.0.1"});
    call(&app.internal, Method::POST, "/v1/verify", None, Some(body), &[])
        .await
        .expect_error(429, "too_many_failed_attempts");
    // …but an address named by the platform is not locked out of what it
    // calls itself: the management API, forward-auth, verify without ip.
    app.get("/v1/keys").await.expect(200);
    let original = [("X-Original-Method", "GET"), ("X-Original-URI", "/api/experiences")];
    let auth = call(&app.internal, Method::GET, "/v1/auth", Some(secret), None, &original).await;
    assert_eq!(auth.status.as_u16(), 204, "{:?}", auth.body);
    assert_eq!(app.verify(json!({"key": secret})).await["code"], "VALID");
}

/// keyledger behind a trusted proxy (the test client, on loopback) of `style`.
async fn app_behind(style: ForwardAuthStyle) -> crate::support::TestApp {
    let settings = keyledger_api::ApiSettings {
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        forward_auth: style,
        ..keyledger_api::ApiSettings::default()
    };
    spawn_app_with(settings, false).await
}

/// A forward-auth check of `GET /api/experiences` in `style`, with `extra` headers.
async fn check(app: &crate::support::TestApp, style: ForwardAuthStyle, key: &str, extra: &[(&str, &str)]) -> Answer {
    let (path, mut headers) = match style {
        ForwardAuthStyle::Nginx => (
            "/v1/auth",
            vec![("X-Original-Method", "GET"), ("X-Original-URI", "/api/experiences")],
        ),
        ForwardAuthStyle::Traefik => (
            "/v1/auth",
            vec![("X-Forwarded-Method", "GET"), ("X-Forwarded-Uri", "/api/experiences")],
        ),
        ForwardAuthStyle::Envoy => ("/v1/auth/api/experiences", vec![]),
    };
    headers.extend_from_slice(extra);
    call(&app.address, Method::GET, path, Some(key), None, &headers).await
}

#[actix_web::test]
async fn traefik_and_envoy_name_the_client_in_x_forwarded_for_only() {
    for style in [ForwardAuthStyle::Traefik, ForwardAuthStyle::Envoy] {
        let app = app_behind(style).await;
        let key = app.create_key(json!({"name": "k", "type": "secret"})).await;
        let secret = key["key"].as_str().unwrap();
        // These proxies pass a client's X-Real-IP through untouched: a new
        // one each time must not make the guesser someone new.
        for i in 0..20 {
            let real_ip = format!("198.51.100.{i}");
            let headers = [("X-Real-IP", real_ip.as_str()), ("X-Forwarded-For", "203.0.113.9")];
            check(&app, style, &guess(i), &headers)
                .await
                .expect_error(401, "invalid_api_key");
        }
        let headers = [("X-Real-IP", "198.51.100.200"), ("X-Forwarded-For", "203.0.113.9")];
        check(&app, style, secret, &headers)
            .await
            .expect_error(429, "too_many_failed_attempts");
        let other = check(&app, style, secret, &[("X-Forwarded-For", "203.0.113.10")]).await;
        assert_eq!(other.status.as_u16(), 204, "{style}: {:?}", other.body);
    }
}

#[actix_web::test]
async fn a_forwarded_address_with_a_port_is_the_client_and_garbage_blames_nobody() {
    let style = ForwardAuthStyle::Nginx;
    let app = app_behind(style).await;
    let key = app.create_key(json!({"name": "k", "type": "secret"})).await;
    let secret = key["key"].as_str().unwrap();
    // ip:port and [v6]:port name the client (whatever the port).
    for i in 0..20u8 {
        let real_ip = format!("203.0.113.9:{}", 40_000 + u16::from(i));
        check(&app, style, &guess(i), &[("X-Real-IP", real_ip.as_str())])
            .await
            .expect_error(401, "invalid_api_key");
    }
    check(&app, style, secret, &[("X-Real-IP", "203.0.113.9")])
        .await
        .expect_error(429, "too_many_failed_attempts");
    for i in 0..20u8 {
        let forwarded = format!("[2001:db8:5::{i}]:443");
        check(&app, style, &guess(i), &[("X-Forwarded-For", forwarded.as_str())])
            .await
            .expect_error(401, "invalid_api_key");
    }
    check(&app, style, secret, &[("X-Forwarded-For", "2001:db8:5::77")])
        .await
        .expect_error(429, "too_many_failed_attempts");
    // Something else is refused, and not blamed on the proxy: the proxy's
    // own requests (and everyone behind it) still get through.
    for bad in [
        "unknown",
        "_hidden",
        "203.0.113",
        "203.0.113.9:http",
        "[2001:db8::1]:x",
        "",
    ] {
        for _ in 0..2 {
            let answer = check(&app, style, &guess(1), &[("X-Real-IP", bad)]).await;
            assert_eq!(answer.code(), "bad_request", "{bad:?}: {:#}", answer.body);
            assert!(
                answer.body["error"]["message"].as_str().unwrap().contains("X-Real-IP"),
                "{:#}",
                answer.body
            );
        }
    }
    for _ in 0..20 {
        check(&app, style, &guess(2), &[("X-Forwarded-For", "203.0.113.20, unknown")])
            .await
            .expect_error(400, "bad_request");
    }
    let proxy_itself = check(&app, style, secret, &[]).await;
    assert_eq!(proxy_itself.status.as_u16(), 204, "{:?}", proxy_itself.body);
}
