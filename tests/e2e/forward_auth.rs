//! `/v1/auth` in each configured style (nginx, traefik, envoy): only that
//! style's original request is read, another style's headers are refused,
//! and only plain original paths are checked.

use awc::http::{header::HeaderValue, Method};
use keyledger_api::forward_auth::ForwardAuthStyle;
use serde_json::json;

use crate::support::{call, spawn_app_with, Answer, TestApp};

async fn app_in(style: ForwardAuthStyle) -> TestApp {
    let settings = keyledger_api::ApiSettings {
        forward_auth: style,
        ..keyledger_api::ApiSettings::default()
    };
    spawn_app_with(settings, false).await
}

/// A key that may only read experiences.
async fn reader(app: &TestApp) -> String {
    let key = app
        .create_key(json!({"name": "reader", "type": "secret", "scopes": ["read:experiences"]}))
        .await;
    key["key"].as_str().unwrap().to_owned()
}

async fn auth(app: &TestApp, key: Option<&str>, headers: &[(&str, &str)]) -> Answer {
    call(&app.address, Method::GET, "/v1/auth", key, None, headers).await
}

fn nginx(method: &'static str, uri: &'static str) -> [(&'static str, &'static str); 2] {
    [("X-Original-Method", method), ("X-Original-URI", uri)]
}

fn traefik(method: &'static str, uri: &'static str) -> [(&'static str, &'static str); 2] {
    [("X-Forwarded-Method", method), ("X-Forwarded-Uri", uri)]
}

#[track_caller]
fn refused_naming(answer: &Answer, style: &str) {
    answer.expect_error(400, "bad_request");
    let message = answer.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("KEYLEDGER_FORWARD_AUTH={style}")),
        "{message}"
    );
}

#[actix_web::test]
async fn nginx_style_reads_only_x_original_headers() {
    let app = app_in(ForwardAuthStyle::Nginx).await;
    let secret = reader(&app).await;
    let ok = auth(&app, Some(&secret), &nginx("GET", "/api/experiences/42?full=1")).await;
    assert_eq!(ok.status.as_u16(), 204, "{:?}", ok.body);
    assert_eq!(ok.header("x-keyledger-org-id"), Some(app.org_id.as_str()));
    assert_eq!(ok.header("x-keyledger-environment"), Some("live"));
    let write = auth(&app, Some(&secret), &nginx("POST", "/api/experiences/42")).await;
    write.expect_error(403, "insufficient_scope");
    assert!(write.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("write:experiences"));
    assert_eq!(write.header("x-keyledger-error"), Some("insufficient_scope"));
    auth(&app, Some(&secret), &nginx("GET", "/internal"))
        .await
        .expect_error(403, "insufficient_scope");
    auth(&app, None, &nginx("GET", "/api/experiences"))
        .await
        .expect_error(401, "missing_api_key");
    auth(&app, Some("sk_live_garbage"), &nginx("GET", "/api/experiences"))
        .await
        .expect_error(401, "invalid_api_key");
    let test_key = app.create_key(json!({"name": "test", "type": "test"})).await;
    auth(&app, test_key["key"].as_str(), &nginx("GET", "/api/experiences"))
        .await
        .expect_error(403, "environment_mismatch");

    // Traefik's headers are not nginx's word: refused, alone or alongside.
    refused_naming(
        &auth(&app, Some(&secret), &traefik("GET", "/api/experiences")).await,
        "nginx",
    );
    let mut both = nginx("DELETE", "/api/consumers/1").to_vec();
    both.push(("X-Forwarded-Uri", "/api/experiences"));
    refused_naming(&auth(&app, Some(&secret), &both).await, "nginx");
    // Envoy's path form is not read either.
    let envoy = call(
        &app.address,
        Method::GET,
        "/v1/auth/api/experiences/7",
        Some(&secret),
        None,
        &[],
    )
    .await;
    refused_naming(&envoy, "nginx");
    // Without the original method nothing is assumed (GET would fail open).
    refused_naming(
        &auth(&app, Some(&secret), &[("X-Original-URI", "/api/experiences")]).await,
        "nginx",
    );
    refused_naming(&auth(&app, Some(&secret), &[]).await, "nginx");
    refused_naming(
        &auth(&app, Some(&secret), &nginx("GET /api/x HTTP/1.1", "/api/experiences")).await,
        "nginx",
    );
}

#[actix_web::test]
async fn traefik_style_refuses_nginx_headers_a_client_smuggles_in() {
    let app = app_in(ForwardAuthStyle::Traefik).await;
    let secret = reader(&app).await;
    let ok = auth(&app, Some(&secret), &traefik("GET", "/api/experiences/1")).await;
    assert_eq!(ok.status.as_u16(), 204, "{:?}", ok.body);
    auth(&app, Some(&secret), &traefik("DELETE", "/api/consumers/1"))
        .await
        .expect_error(403, "insufficient_scope");
    // The attack: Traefik forwards the client's own headers to the auth
    // call; the client adds nginx's to make a DELETE look like a read.
    let mut smuggled = traefik("DELETE", "/api/consumers/1").to_vec();
    smuggled.extend(nginx("GET", "/api/experiences"));
    let answer = auth(&app, Some(&secret), &smuggled).await;
    assert_ne!(answer.status.as_u16(), 204, "a read-only key may not delete");
    refused_naming(&answer, "traefik");
    assert!(answer.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("X-Original-Method"));
    // One smuggled header is enough to be refused.
    let mut one = traefik("DELETE", "/api/consumers/1").to_vec();
    one.push(("X-Original-URI", "/api/experiences"));
    refused_naming(&auth(&app, Some(&secret), &one).await, "traefik");
    // nginx's headers alone are not Traefik's word either.
    refused_naming(
        &auth(&app, Some(&secret), &nginx("GET", "/api/experiences")).await,
        "traefik",
    );
    let envoy = call(
        &app.address,
        Method::GET,
        "/v1/auth/api/experiences",
        Some(&secret),
        None,
        &[],
    )
    .await;
    refused_naming(&envoy, "traefik");
}

#[actix_web::test]
async fn envoy_style_reads_the_check_requests_own_method_and_path() {
    let app = app_in(ForwardAuthStyle::Envoy).await;
    let secret = reader(&app).await;
    let envoy = |method: Method, path: &'static str, headers: &'static [(&'static str, &'static str)]| {
        let (address, secret) = (app.address.clone(), secret.clone());
        async move { call(&address, method, path, Some(&secret), None, headers).await }
    };
    let ok = envoy(Method::GET, "/v1/auth/api/experiences/7?x=../../admin", &[]).await;
    assert_eq!(ok.status.as_u16(), 204, "{:?}", ok.body);
    assert_eq!(
        envoy(Method::HEAD, "/v1/auth/api/experiences", &[])
            .await
            .status
            .as_u16(),
        204
    );
    envoy(Method::DELETE, "/v1/auth/api/experiences/7", &[])
        .await
        .expect_error(403, "insufficient_scope");
    envoy(Method::GET, "/v1/auth/admin", &[])
        .await
        .expect_error(403, "insufficient_scope");
    // Headers of the other styles do not override the path, they are refused.
    refused_naming(
        &envoy(
            Method::DELETE,
            "/v1/auth/api/consumers/1",
            &[("X-Original-Method", "GET")],
        )
        .await,
        "envoy",
    );
    refused_naming(
        &envoy(
            Method::DELETE,
            "/v1/auth/api/consumers/1",
            &[("X-Forwarded-Uri", "/api/experiences")],
        )
        .await,
        "envoy",
    );
    // /v1/auth itself names no original path.
    refused_naming(&auth(&app, Some(&secret), &[]).await, "envoy");
    // The path is checked as sent, before any decoding.
    for sneaky in [
        "/v1/auth/api/experiences/..;/consumers/1",
        "/v1/auth/api/experiences/%2e%2e/consumers/1",
        "/v1/auth/api/experiences/%252e%252e/consumers/1",
        "/v1/auth/api/experiences/%00",
        "/v1/auth/api/experiences;jsessionid=ABC",
        "/v1/auth/api//consumers",
    ] {
        let answer = call(&app.address, Method::DELETE, sneaky, Some(&secret), None, &[]).await;
        answer.expect_error(400, "bad_request");
        assert!(
            answer.body["error"]["message"].as_str().unwrap().contains("not plain"),
            "{sneaky}"
        );
    }
}

#[actix_web::test]
async fn only_plain_original_paths_are_checked() {
    let app = app_in(ForwardAuthStyle::Nginx).await;
    let secret = reader(&app).await;
    for sneaky in [
        "/api/experiences/..;/consumers/1",
        "/api/experiences/../consumers/1",
        "/api/experiences/./1",
        "/api/experiences/%2e%2e/consumers/1",
        "/api/experiences/%252e%252e/consumers/1",
        "/api/experiences/%00/../../consumers/1",
        "/api/experiences/%c0%ae%c0%ae/consumers/1",
        "/api/experiences;jsessionid=0123456789ABCDEF",
        "/api/experiences/1;jsessionid=0123456789ABCDEF",
        "/api/experiences%2Fconsumers",
        "/api/experiences\\..\\consumers",
        "/api//consumers",
        "api/experiences",
    ] {
        let answer = auth(&app, Some(&secret), &nginx("DELETE", sneaky)).await;
        answer.expect_error(400, "bad_request");
        assert!(
            answer.body["error"]["message"].as_str().unwrap().contains("not plain"),
            "{sneaky}: {:#}",
            answer.body
        );
    }
    // Non-ASCII bytes in the header (what a raw UTF-8 path looks like).
    let client = awc::Client::default();
    let answer = client
        .get(format!("{}/v1/auth", app.address))
        .insert_header(("Authorization", format!("Bearer {secret}")))
        .insert_header(("X-Original-Method", "GET"))
        .insert_header((
            "X-Original-URI",
            HeaderValue::from_bytes("/api/experiences/\u{202e}".as_bytes()).unwrap(),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 400);
    // The query string is not the path: it never changes the match.
    for (method, uri, status) in [
        ("GET", "/api/experiences/1?next=../../consumers/1", 204),
        ("GET", "/api/experiences?/../../consumers", 204),
        ("DELETE", "/api/consumers/1?/../../experiences", 403),
        ("GET", "/api/experiences/1?q=%00;..%2f", 204),
        // Escapes of unreserved characters are the characters themselves.
        ("GET", "/api/%65xperiences/1", 204),
        ("DELETE", "/api/%63onsumers/1", 403),
        ("GET", "/api/experiences/", 204),
    ] {
        let answer = auth(&app, Some(&secret), &nginx(method, uri)).await;
        assert_eq!(answer.status.as_u16(), status, "{method} {uri}: {:#}", answer.body);
    }
}

#[actix_web::test]
async fn envoy_style_leaves_the_original_query_alone_and_needs_a_literal_prefix() {
    let app = app_in(ForwardAuthStyle::Envoy).await;
    let secret = reader(&app).await;
    // The query belongs to the original request (keyledger neither logs nor
    // matches it): a parameter named like a credential is the upstream's.
    for path in [
        "/v1/auth/api/experiences?token=page2",
        "/v1/auth/api/experiences/7?api_key=public-widget&q=sk_live_",
    ] {
        let answer = call(&app.address, Method::GET, path, Some(&secret), None, &[]).await;
        assert_eq!(answer.status.as_u16(), 204, "{path}: {:?}", answer.body);
    }
    // Outside /v1/auth/ the rule stands.
    app.get("/v1/keys?token=page2").await.expect_error(400, "bad_request");
    // An escaped prefix is not /v1/auth: never checked as a path of its own.
    for path in [
        "/v1/%61uth/api/experiences",
        "/v1/auth%2Fapi/experiences",
        "/%761/auth/api/experiences",
    ] {
        let answer = call(&app.address, Method::GET, path, Some(&secret), None, &[]).await;
        assert!(
            matches!(answer.status.as_u16(), 400 | 404),
            "{path}: {} {:?}",
            answer.status,
            answer.body
        );
    }
}

#[actix_web::test]
async fn methods_are_case_sensitive() {
    let app = app_in(ForwardAuthStyle::Nginx).await;
    let secret = reader(&app).await;
    // "get" is not GET (RFC 9110: methods are case-sensitive): it needs the
    // write scope, like any method the table does not name.
    auth(&app, Some(&secret), &nginx("get", "/api/experiences"))
        .await
        .expect_error(403, "insufficient_scope");
    let ok = auth(&app, Some(&secret), &nginx("GET", "/api/experiences")).await;
    assert_eq!(ok.status.as_u16(), 204);
    let envoy = app_in(ForwardAuthStyle::Envoy).await;
    let secret = reader(&envoy).await;
    let lower = Method::from_bytes(b"get").unwrap();
    call(
        &envoy.address,
        lower,
        "/v1/auth/api/experiences",
        Some(&secret),
        None,
        &[],
    )
    .await
    .expect_error(403, "insufficient_scope");
}
