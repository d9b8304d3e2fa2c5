//! A real nginx (Debian's) in front of a small upstream, authenticating
//! through keyledger's `/v1/auth` with `deploy/nginx.conf.template` — the
//! configuration the README shows.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use awc::http::Method;
use serde_json::json;

use crate::support::{call, spawn_app_with, Answer, TestApp};

struct Nginx {
    child: Child,
    address: String,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers (SIGKILL would orphan them).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn nginx(keyledger: &str) -> Nginx {
    let dir = std::env::temp_dir().join(format!("keyledger-nginx-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (listen, upstream) = (format!("127.0.0.1:{}", port()), format!("127.0.0.1:{}", port()));
    let template = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx.conf.template")).unwrap();
    let config = template
        .replace("{{KEYLEDGER}}", keyledger.trim_start_matches("http://"))
        .replace("{{UPSTREAM}}", &upstream)
        .replace("{{LISTEN}}", &listen)
        .replace("{{DIR}}", dir.to_str().unwrap());
    std::fs::write(dir.join("nginx.conf"), config).unwrap();
    let binary = std::env::var("NGINX_BIN").unwrap_or_else(|_| "/usr/sbin/nginx".into());
    let child = Command::new(binary)
        .args([
            "-p",
            dir.to_str().unwrap(),
            "-c",
            dir.join("nginx.conf").to_str().unwrap(),
        ])
        .spawn()
        .expect("nginx is installed (apt-get install nginx)");
    let nginx = Nginx {
        child,
        address: format!("http://{listen}"),
        dir,
    };
    crate::support::eventually(Duration::from_secs(20), || async {
        std::net::TcpStream::connect(&listen).map(drop).map_err(|_| {
            let log = std::fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default();
            format!("nginx did not start: {log}")
        })
    })
    .await;
    nginx
}

async fn through(nginx: &Nginx, method: Method, path: &str, key: Option<&str>) -> Answer {
    call(&nginx.address, method, path, key, None, &[]).await
}

/// keyledger as the template expects it: its internal listener behind
/// nginx, and nginx (on loopback) trusted to name the client.
async fn app_behind_nginx() -> TestApp {
    let settings = keyledger_api::ApiSettings {
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        ..keyledger_api::ApiSettings::default()
    };
    spawn_app_with(settings, true).await
}

/// A GET through nginx from a chosen loopback address (all of 127/8 is local).
async fn from(nginx: &Nginx, client: [u8; 4], key: &str, headers: &[(&str, &str)]) -> u16 {
    let connector = awc::Connector::new().local_address(std::net::IpAddr::from(client));
    let mut request = awc::Client::builder()
        .connector(connector)
        .finish()
        .get(format!("{}/api/experiences/1", nginx.address))
        .insert_header(("Authorization", format!("Bearer {key}")));
    for &header in headers {
        request = request.insert_header(header);
    }
    request.send().await.unwrap().status().as_u16()
}

#[actix_web::test]
async fn nginx_auth_request_lets_valid_keys_through_and_refuses_the_rest() {
    let app = app_behind_nginx().await;
    let nginx = nginx(&app.internal).await;
    let reader = app
        .create_key(json!({"name": "reader", "type": "secret", "scopes": ["read:experiences"]}))
        .await;
    let secret = reader["key"].as_str().unwrap();

    let ok = through(&nginx, Method::GET, "/api/experiences/1", Some(secret)).await;
    assert_eq!(ok.status.as_u16(), 200, "{:?}", ok.body);
    let body = ok.body.as_str().unwrap();
    assert!(
        body.contains(&format!("key={}", reader["id"].as_str().unwrap())),
        "{body}"
    );
    assert!(body.contains(&format!("org={}", app.org_id)), "{body}");
    assert!(body.contains("auth=[]"), "the upstream never sees the key: {body}");
    assert_eq!(ok.header("x-ratelimit-limit"), Some("100"));
    assert_eq!(ok.header("x-ratelimit-remaining"), Some("99"));
    assert!(ok.header("x-ratelimit-reset").is_some());

    let missing = through(&nginx, Method::GET, "/api/experiences/1", None).await;
    assert_eq!((missing.status.as_u16(), missing.code()), (401, "missing_api_key"));
    let bad = through(&nginx, Method::GET, "/api/experiences/1", Some("sk_live_0000")).await;
    assert_eq!((bad.status.as_u16(), bad.code()), (401, "invalid_api_key"));
    let write = through(&nginx, Method::POST, "/api/experiences/1", Some(secret)).await;
    assert_eq!((write.status.as_u16(), write.code()), (403, "insufficient_scope"));
    assert_eq!(write.header("x-ratelimit-remaining"), Some("98"));
    let test_key = app.create_key(json!({"name": "test", "type": "test"})).await;
    let wrong_env = through(&nginx, Method::GET, "/api/experiences/1", test_key["key"].as_str()).await;
    assert_eq!(
        (wrong_env.status.as_u16(), wrong_env.code()),
        (403, "environment_mismatch")
    );

    // Over the free plan's 100 a minute: 429 with Retry-After.
    let mut accepted = 2; // the two requests above counted
    loop {
        let answer = through(&nginx, Method::GET, "/api/experiences/1", Some(secret)).await;
        match answer.status.as_u16() {
            200 => accepted += 1,
            429 => {
                assert_eq!(answer.code(), "rate_limited");
                let retry: u64 = answer.header("retry-after").unwrap().parse().unwrap();
                assert!((1..=60).contains(&retry));
                assert_eq!(answer.header("x-ratelimit-remaining"), Some("0"));
                break;
            }
            other => panic!("unexpected {other}: {:?}", answer.body),
        }
        assert!(accepted <= 100, "more than the plan allows got through");
    }
    assert_eq!(accepted, 100);
}

#[actix_web::test]
async fn the_guessing_guard_counts_the_client_nginx_names_not_nginx_itself() {
    let app = app_behind_nginx().await;
    let nginx = nginx(&app.internal).await;
    let key = app
        .create_key(json!({"name": "reader", "type": "secret", "scopes": ["read:experiences"]}))
        .await;
    let secret = key["key"].as_str().unwrap();
    let (guesser, honest) = ([127, 0, 0, 2], [127, 0, 0, 3]);
    for i in 0..20 {
        let guess = keyledger_events::domain::PlainKey::encode(keyledger_events::domain::KeyType::Secret, &[i; 32]);
        // A header the client sends cannot move the blame: nginx replaces it.
        let spoofed = [("X-Real-IP", "198.51.100.1"), ("X-Forwarded-For", "198.51.100.2")];
        assert_eq!(from(&nginx, guesser, guess.expose(), &spoofed).await, 401);
    }
    assert_eq!(from(&nginx, guesser, secret, &[]).await, 429, "the guesser is stopped");
    assert_eq!(from(&nginx, honest, secret, &[]).await, 200, "everyone else is not");
    let spoofing = [("X-Real-IP", "127.0.0.3")];
    assert_eq!(
        from(&nginx, guesser, secret, &spoofing).await,
        429,
        "nor by naming another"
    );
}

#[actix_web::test]
async fn a_client_cannot_override_the_method_or_path_the_upstream_acts_on() {
    let app = app_behind_nginx().await;
    let nginx = nginx(&app.internal).await;
    let reader = app
        .create_key(json!({"name": "reader", "type": "secret", "scopes": ["read:experiences"]}))
        .await;
    let secret = reader["key"].as_str().unwrap();
    // keyledger checked a GET of /api/experiences/1: headers that make some
    // frameworks act on another method or path never reach the upstream.
    let overrides = [
        ("X-HTTP-Method-Override", "DELETE"),
        ("X-HTTP-Method", "DELETE"),
        ("X-Method-Override", "DELETE"),
        ("X-Original-URL", "/api/consumers/1"),
        ("X-Rewrite-URL", "/api/consumers/1"),
    ];
    let answer = call(
        &nginx.address,
        Method::GET,
        "/api/experiences/1",
        Some(secret),
        None,
        &overrides,
    )
    .await;
    assert_eq!(answer.status.as_u16(), 200, "{:?}", answer.body);
    let body = answer.body.as_str().unwrap();
    assert!(
        body.contains("overrides=[]"),
        "an override header reached the upstream: {body}"
    );
    // Traefik's original-request headers sent by a client do not reach the
    // check either (keyledger would refuse them as another style's).
    let traefik = [
        ("X-Forwarded-Method", "DELETE"),
        ("X-Forwarded-Uri", "/api/consumers/1"),
    ];
    let answer = call(
        &nginx.address,
        Method::GET,
        "/api/experiences/1",
        Some(secret),
        None,
        &traefik,
    )
    .await;
    assert_eq!(answer.status.as_u16(), 200, "{:?}", answer.body);
}
