//! The portal's sign-in: `POST /v1/portal/sessions`, the CLI's links, and
//! how long links and sessions last — with the portal's clock moved by the
//! test, not by waiting. (The pages themselves are tested in a real browser:
//! `tests/browser`.)

use awc::http::{header, Method, StatusCode};
use chrono::Duration;
use serde_json::json;

use crate::binary::{create_org, keyledger, run, temp_dir, HASH_KEY};
use crate::support::{call, fresh_database_url, spawn_app, TestApp};

/// Follows a sign-in link; its status and the session cookie it set.
async fn follow(url: &str) -> (StatusCode, Option<String>) {
    follow_with(url, None).await
}

/// Follows a sign-in link from a browser that holds `cookie`.
async fn follow_with(url: &str, cookie: Option<&str>) -> (StatusCode, Option<String>) {
    let client = awc::Client::builder().disable_redirects().finish();
    let mut request = client.get(url);
    if let Some(cookie) = cookie {
        request = request.insert_header((header::COOKIE, cookie));
    }
    let response = request.send().await.expect("request sent");
    let cookie = response
        .headers()
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").to_owned());
    (response.status(), cookie)
}

/// `GET path` with a session cookie: its status and `Location`.
async fn page(app: &TestApp, path: &str, cookie: &str) -> (StatusCode, Option<String>) {
    let client = awc::Client::builder().disable_redirects().finish();
    let response = client
        .get(format!("{}{path}", app.address))
        .insert_header((header::COOKIE, cookie))
        .send()
        .await
        .expect("request sent");
    let location = response
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (response.status(), location)
}

async fn mint(app: &TestApp, body: serde_json::Value) -> String {
    let answer = app.post("/v1/portal/sessions", body).await;
    answer.expect(201)["url"].as_str().unwrap().to_owned()
}

#[actix_web::test]
async fn admin_keys_mint_single_use_links_that_are_stored_only_as_hashes() {
    let app = spawn_app().await;
    let answer = app
        .post("/v1/portal/sessions", json!({"user": "alice@acme.example"}))
        .await;
    let body = answer.expect(201);
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    let url = body["url"].as_str().unwrap();
    let token = url
        .strip_prefix(&format!("{}/portal/session/", app.address))
        .expect("the link is on the public base");
    let expires = chrono::DateTime::parse_from_rfc3339(body["expires_at"].as_str().unwrap()).unwrap();
    let lifetime = expires.with_timezone(&chrono::Utc) - chrono::Utc::now();
    assert!(
        lifetime > Duration::seconds(290) && lifetime <= Duration::seconds(300),
        "{lifetime}"
    );
    let stored: i64 = sqlx::query_scalar(
        "select count(*) from portal_links where encode(token_hash, 'hex') = $1 or encode(token_hash, 'escape') like '%' || $1 || '%'",
    )
    .bind(token)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(stored, 0, "the token itself is not stored");

    let (status, cookie) = follow(url).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let cookie = cookie.expect("a session cookie");
    assert_eq!(page(&app, "/portal/keys", &cookie).await.0, StatusCode::OK);
    assert_eq!(follow(url).await.0, StatusCode::GONE, "a link works once");

    // Bad input is refused and mints nothing; only admin keys mint.
    app.post("/v1/portal/sessions", json!({"user": "not an address"}))
        .await
        .expect_error(422, "validation_error");
    app.post("/v1/portal/sessions", json!({"usr": "a@b.example"}))
        .await
        .expect_error(422, "validation_error");
    let none = call(
        &app.address,
        Method::POST,
        "/v1/portal/sessions",
        None,
        Some(json!({})),
        &[],
    )
    .await;
    none.expect_error(401, "missing_api_key");
    let reader = app
        .create_key(json!({"name": "Reader", "type": "secret", "scopes": ["read:experiences"]}))
        .await;
    let refused = call(
        &app.address,
        Method::POST,
        "/v1/portal/sessions",
        reader["key"].as_str(),
        Some(json!({})),
        &[],
    )
    .await;
    refused.expect_error(403, "insufficient_scope");
    let links: i64 = sqlx::query_scalar("select count(*) from portal_links")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(links, 1);
}

#[actix_web::test]
async fn links_last_five_minutes_and_sessions_twelve_hours_by_the_portal_clock() {
    let app = spawn_app().await;
    let clock = &app.state.clock;
    let late = mint(&app, json!({})).await;
    let in_time = mint(&app, json!({})).await;
    clock.advance(Duration::seconds(299));
    let (status, cookie) = follow(&in_time).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    clock.advance(Duration::seconds(2));
    assert_eq!(
        follow(&late).await.0,
        StatusCode::GONE,
        "a link is refused after 5 minutes"
    );

    let cookie = cookie.unwrap();
    clock.advance(Duration::hours(12) - Duration::seconds(10));
    assert_eq!(page(&app, "/portal/settings", &cookie).await.0, StatusCode::OK);
    clock.advance(Duration::seconds(20));
    assert_eq!(
        page(&app, "/portal/settings", &cookie).await,
        (StatusCode::SEE_OTHER, Some("/portal/sign-in".into())),
        "a session ends 12 hours after sign-in"
    );
}

#[actix_web::test]
async fn the_cli_prints_sign_in_links_on_the_public_base() {
    let (url, dir) = (fresh_database_url(), temp_dir());
    let created = create_org(&url, &dir, "Acme", &["--public-url", "https://keys.example.com/"]);
    let portal_url = created["portal_url"].as_str().unwrap();
    assert!(
        portal_url.starts_with("https://keys.example.com/portal/session/"),
        "{portal_url}"
    );
    let org_id = created["org"]["id"].as_str().unwrap();
    let mut command = keyledger(&url, &dir);
    command
        .env("KEYLEDGER_HASH_KEY", HASH_KEY)
        .env("KEYLEDGER_LISTEN", "127.0.0.1:9999")
        .args(["portal", "link", org_id, "--user", "bob@acme.example"]);
    let output = run(&mut command);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let link = String::from_utf8(output.stdout).unwrap();
    assert!(
        link.trim().starts_with("http://127.0.0.1:9999/portal/session/"),
        "{link}"
    );
    assert_eq!(link.trim().len(), "http://127.0.0.1:9999/portal/session/".len() + 64);
    let mut command = keyledger(&url, &dir);
    command.args(["portal", "link", "org_0000000000000000000000000A"]);
    let output = run(&mut command);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no organization"));
}

async fn sessions(app: &TestApp) -> i64 {
    sqlx::query_scalar("select count(*) from portal_sessions")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[actix_web::test]
async fn a_new_sign_in_ends_the_session_the_browser_had() {
    let app = spawn_app().await;
    let (_, first) = follow(&mint(&app, json!({})).await).await;
    let first = first.expect("a session cookie");
    assert_eq!(page(&app, "/portal/keys", &first).await.0, StatusCode::OK);

    // The same browser follows another link: its cookie comes along.
    let (status, second) = follow_with(&mint(&app, json!({})).await, Some(&first)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let second = second.expect("a new session cookie");
    assert_ne!(first, second);
    assert_eq!(
        page(&app, "/portal/keys", &first).await,
        (StatusCode::SEE_OTHER, Some("/portal/sign-in".into())),
        "the previous session ended"
    );
    assert_eq!(page(&app, "/portal/keys", &second).await.0, StatusCode::OK);
    assert_eq!(sessions(&app).await, 1);

    // A refused link ends nothing.
    let (status, _) = follow_with(
        &format!("{}/portal/session/{}", app.address, "0".repeat(64)),
        Some(&second),
    )
    .await;
    assert_eq!(status, StatusCode::GONE);
    assert_eq!(page(&app, "/portal/keys", &second).await.0, StatusCode::OK);
}

#[actix_web::test]
async fn one_link_followed_many_times_at_once_starts_one_session() {
    let app = spawn_app().await;
    let url = mint(&app, json!({})).await;
    let answers = futures_util::future::join_all((0..8).map(|_| follow(&url))).await;
    let started: Vec<_> = answers
        .iter()
        .filter(|(status, cookie)| *status == StatusCode::SEE_OTHER && cookie.is_some())
        .collect();
    let refused = answers.iter().filter(|(status, _)| *status == StatusCode::GONE).count();
    assert_eq!((started.len(), refused), (1, 7), "{answers:?}");
    assert_eq!(sessions(&app).await, 1);
    let cookie = started[0].1.as_deref().unwrap();
    assert_eq!(page(&app, "/portal/keys", cookie).await.0, StatusCode::OK);
}
