//! Per-key IP allowlists on the three surfaces a key is used on: the
//! management API and `/v1/auth` (the client address as the trusted proxy
//! names it in `X-Real-IP`), and `/v1/verify` (the `ip` the platform sends).
//! Refusals spend no rate-limit budget, and the cache answers without
//! queries.

use std::sync::atomic::Ordering;

use awc::http::Method;
use serde_json::{json, Value};

use crate::support::{call, spawn_app_with, Answer, TestApp};

/// An app behind a trusted proxy on 127.0.0.1 (nginx style: `X-Real-IP`
/// names the client), the tests' requests coming from there.
async fn proxied_app() -> TestApp {
    let settings = keyledger_api::ApiSettings {
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        ..keyledger_api::ApiSettings::default()
    };
    spawn_app_with(settings, false).await
}

/// A management call made with `key` by the client at `client`.
async fn list_from(app: &TestApp, key: &str, client: &str) -> Answer {
    call(
        &app.address,
        Method::GET,
        "/v1/keys",
        Some(key),
        None,
        &[("X-Real-IP", client)],
    )
    .await
}

/// A forward-auth check of `GET /api/experiences` made with `key` by `client`.
async fn auth_from(app: &TestApp, key: &str, client: &str) -> Answer {
    call(
        &app.internal,
        Method::GET,
        "/v1/auth",
        Some(key),
        None,
        &[
            ("X-Original-Method", "GET"),
            ("X-Original-URI", "/api/experiences"),
            ("X-Real-IP", client),
        ],
    )
    .await
}

async fn verify_from(app: &TestApp, key: &str, client: Option<&str>) -> Value {
    let mut body = json!({"key": key, "scopes": ["read:experiences"]});
    if let Some(ip) = client {
        body["ip"] = json!(ip);
    }
    app.verify(body).await
}

/// An admin key (it may use every surface) limited to `allowed`.
async fn limited_key(app: &TestApp, allowed: &[&str]) -> (Value, String) {
    let created = app
        .create_key(json!({"name": "Office only", "type": "secret", "allowed_ips": allowed}))
        .await;
    let secret = created["key"].as_str().unwrap().to_owned();
    (created, secret)
}

#[actix_web::test]
async fn a_key_limited_to_a_range_is_refused_from_elsewhere_on_every_surface() {
    let app = proxied_app().await;
    let (created, key) = limited_key(&app, &["203.0.113.0/24"]).await;
    assert_eq!(created["allowed_ips"], json!(["203.0.113.0/24"]));
    let id = created["id"].as_str().unwrap();
    assert_eq!(
        app.get(&format!("/v1/keys/{id}")).await.expect(200)["allowed_ips"],
        json!(["203.0.113.0/24"])
    );

    // From 198.51.100.9: refused everywhere, saying why.
    let refused = list_from(&app, &key, "198.51.100.9").await;
    refused.expect_error(403, "ip_not_allowed");
    assert!(refused.body["error"]["message"].as_str().unwrap().contains("allowlist"));
    let refused = auth_from(&app, &key, "198.51.100.9").await;
    refused.expect_error(403, "ip_not_allowed");
    assert_eq!(refused.header("x-keyledger-error"), Some("ip_not_allowed"));
    let verdict = verify_from(&app, &key, Some("198.51.100.9")).await;
    assert_eq!(
        (verdict["valid"].as_bool(), verdict["code"].as_str()),
        (Some(false), Some("IP_NOT_ALLOWED"))
    );
    assert_eq!(verdict["key_id"], id);
    // Without an ip, no allowlist admits the request.
    assert_eq!(verify_from(&app, &key, None).await["code"], "IP_NOT_ALLOWED");

    // From 203.0.113.7 (also written as an IPv4-mapped IPv6 address): accepted.
    list_from(&app, &key, "203.0.113.7").await.expect(200);
    list_from(&app, &key, "::ffff:203.0.113.7").await.expect(200);
    assert_eq!(auth_from(&app, &key, "203.0.113.7").await.status.as_u16(), 204);
    assert_eq!(verify_from(&app, &key, Some("203.0.113.7")).await["code"], "VALID");
    assert_eq!(
        verify_from(&app, &key, Some("::ffff:203.0.113.7")).await["code"],
        "VALID"
    );

    // Keys without an allowlist are not affected.
    list_from(&app, &app.admin_key, "198.51.100.9").await.expect(200);
}

#[actix_web::test]
async fn ipv6_ranges_and_addresses_are_enforced_alike() {
    let app = proxied_app().await;
    let (created, key) = limited_key(&app, &["2001:db8:1::/48", "2001:db8:ffff::7"]).await;
    assert_eq!(created["allowed_ips"], json!(["2001:db8:1::/48", "2001:db8:ffff::7"]));
    for outside in ["2001:db8:2::1", "2001:db8:ffff::8", "198.51.100.9"] {
        list_from(&app, &key, outside).await.expect_error(403, "ip_not_allowed");
        auth_from(&app, &key, outside).await.expect_error(403, "ip_not_allowed");
        assert_eq!(
            verify_from(&app, &key, Some(outside)).await["code"],
            "IP_NOT_ALLOWED",
            "{outside}"
        );
    }
    for inside in ["2001:db8:1::7", "2001:db8:1:ffff::1", "2001:db8:ffff::7"] {
        list_from(&app, &key, inside).await.expect(200);
        assert_eq!(auth_from(&app, &key, inside).await.status.as_u16(), 204, "{inside}");
        assert_eq!(verify_from(&app, &key, Some(inside)).await["code"], "VALID", "{inside}");
    }
}

#[actix_web::test]
async fn a_refused_address_spends_no_budget_and_the_cache_answers_without_queries() {
    let settings = keyledger_api::ApiSettings {
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        cache_ttl: std::time::Duration::from_secs(3600),
        ..keyledger_api::ApiSettings::default()
    };
    let mut app = spawn_app_with(settings, false).await;
    let (_, key) = limited_key(&app, &["203.0.113.0/24"]).await;
    // No notification may arrive while the test counts (as in hot_path.rs).
    app.stop_background().await;
    let first = verify_from(&app, &key, Some("203.0.113.7")).await;
    assert_eq!(first["code"], "VALID");
    let remaining = first["ratelimit"]["remaining"].as_u64().unwrap();
    let lookups = app.state.cache.database_lookups.load(Ordering::SeqCst);
    for _ in 0..5 {
        let refused = verify_from(&app, &key, Some("198.51.100.9")).await;
        assert_eq!(refused["code"], "IP_NOT_ALLOWED");
        assert_eq!(
            refused["ratelimit"]["remaining"].as_u64(),
            Some(remaining),
            "a refusal spends nothing"
        );
        let refused = auth_from(&app, &key, "198.51.100.9").await;
        refused.expect_error(403, "ip_not_allowed");
        assert_eq!(
            refused.header("x-ratelimit-remaining"),
            Some(remaining.to_string().as_str())
        );
    }
    for _ in 0..5 {
        assert_eq!(auth_from(&app, &key, "203.0.113.8").await.status.as_u16(), 204);
    }
    assert_eq!(
        app.state.cache.database_lookups.load(Ordering::SeqCst),
        lookups,
        "allowlists are enforced from the cache"
    );
    let next = verify_from(&app, &key, Some("203.0.113.9")).await;
    assert_eq!(
        next["ratelimit"]["remaining"].as_u64(),
        Some(remaining - 6),
        "only admitted requests count"
    );
}

#[actix_web::test]
async fn an_allowlist_is_changed_and_cleared_with_patch_and_seen_at_once() {
    let app = proxied_app().await;
    let (created, key) = limited_key(&app, &["203.0.113.0/24"]).await;
    let path = format!("/v1/keys/{}", created["id"].as_str().unwrap());
    assert_eq!(
        verify_from(&app, &key, Some("198.51.100.9")).await["code"],
        "IP_NOT_ALLOWED"
    );
    let changed = app
        .patch(&path, json!({"allowed_ips": ["198.51.100.0/24", "::1"]}))
        .await;
    assert_eq!(changed.expect(200)["allowed_ips"], json!(["198.51.100.0/24", "::1"]));
    assert_eq!(verify_from(&app, &key, Some("198.51.100.9")).await["code"], "VALID");
    assert_eq!(
        verify_from(&app, &key, Some("203.0.113.7")).await["code"],
        "IP_NOT_ALLOWED"
    );
    // Other fields leave it alone; null and [] clear it.
    let renamed = app.patch(&path, json!({"name": "Renamed"})).await;
    assert_eq!(renamed.expect(200)["allowed_ips"], json!(["198.51.100.0/24", "::1"]));
    let cleared = app.patch(&path, json!({"allowed_ips": null})).await;
    assert_eq!(cleared.expect(200)["allowed_ips"], Value::Null);
    assert_eq!(verify_from(&app, &key, Some("203.0.113.7")).await["code"], "VALID");
    assert_eq!(verify_from(&app, &key, None).await["code"], "VALID");
    app.patch(&path, json!({"allowed_ips": ["203.0.113.7"]}))
        .await
        .expect(200);
    let cleared = app.patch(&path, json!({"allowed_ips": []})).await;
    assert_eq!(cleared.expect(200)["allowed_ips"], Value::Null);
    let types = app.stream_types(created["id"].as_str().unwrap()).await;
    assert_eq!(types.iter().filter(|t| *t == "key.updated").count(), 5);
}

#[actix_web::test]
async fn bad_allowlists_are_refused_with_details_and_change_nothing() {
    let app = proxied_app().await;
    let before = app.event_count().await;
    let many: Vec<String> = (0..101).map(|n| format!("10.{n}.0.0/16")).collect();
    let cases = [
        (json!(["10.0.0.0/33"]), "is not an IP address or CIDR range"),
        (json!(["203.0.113.7/24"]), "host bits"),
        (json!(["2001:db8::1/32"]), "host bits"),
        (json!(["203.0.113.7", "::ffff:203.0.113.7"]), "listed twice"),
        (json!(["localhost"]), "is not an IP address"),
        (json!(["10.0.0.0/8/8"]), "is not an IP address"),
        (json!(many), "at most 100"),
        (json!([7]), "must be a list of strings"),
        (json!("203.0.113.0/24"), "must be a list of strings"),
    ];
    for (allowed_ips, problem) in &cases {
        let answer = app
            .post(
                "/v1/keys",
                json!({"name": "Bad", "type": "secret", "allowed_ips": allowed_ips}),
            )
            .await;
        answer.expect_error(422, "validation_error");
        let details = answer.body["error"]["details"]["allowed_ips"].to_string();
        assert!(details.contains(problem), "{allowed_ips} → {details}");
    }
    let (created, _) = limited_key(&app, &["203.0.113.0/24"]).await;
    let path = format!("/v1/keys/{}", created["id"].as_str().unwrap());
    let after_create = app.event_count().await;
    assert_eq!(after_create, before + 1, "refused creations appended nothing");
    for (allowed_ips, _) in &cases {
        app.patch(&path, json!({"allowed_ips": allowed_ips}))
            .await
            .expect_error(422, "validation_error");
    }
    assert_eq!(app.event_count().await, after_create, "refused edits appended nothing");
    assert_eq!(
        app.get(&path).await.expect(200)["allowed_ips"],
        json!(["203.0.113.0/24"])
    );
}
