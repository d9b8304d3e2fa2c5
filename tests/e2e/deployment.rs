//! The real binary configured as a deployment would be: the forward-auth
//! style, trusted proxies (none by default), the internal listener — and
//! what its help, its errors and its access log print.

use awc::http::Method;
use keyledger_events::domain::{KeyType, PlainKey};
use serde_json::json;

use crate::binary::{create_org, keyledger, run, temp_dir, Server, HASH_KEY};
use crate::support::{call, fresh_database_url};

fn guess(i: u8) -> String {
    PlainKey::encode(KeyType::Secret, &[i; 32]).expose().to_owned()
}

#[actix_web::test]
async fn help_and_errors_never_print_the_database_password() {
    let dir = temp_dir();
    // Nothing listens on port 1: every command fails, naming the server (or
    // the parameter at fault), never a password.
    for (url, names) in [
        (
            "postgres://keyledger:hunter2@127.0.0.1:1/keyledger?sslmode=disable&password=hunter3",
            "127.0.0.1:1",
        ),
        // A parameter the driver does not know (it would log its value).
        (
            "postgres://keyledger@127.0.0.1:1/keyledger?sslpassword=hunter9",
            "sslpassword",
        ),
        // A password with a '?' in it (it should have been escaped).
        ("postgres://keyledger:hunter?8@127.0.0.1:1/keyledger", "DATABASE_URL"),
        // A libpq keyword/value string, which is not a URL.
        (
            "host=127.0.0.1 port=1 user=keyledger password=hunter7 dbname=keyledger",
            "DATABASE_URL",
        ),
    ] {
        for args in [&["--help"][..], &["serve", "--help"], &["migrate", "--help"]] {
            let output = run(keyledger(url, &dir).args(args));
            assert!(output.status.success());
            let help = String::from_utf8_lossy(&output.stdout);
            assert!(help.contains("DATABASE_URL"), "{help}");
            assert!(!help.contains("hunter"), "{args:?} printed the password: {help}");
            // The help stands on its own: no document outside the binary.
            assert!(!help.contains("API.md"), "{args:?}: {help}");
        }
        let output = run(keyledger(url, &dir).arg("migrate"));
        assert!(!output.status.success());
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(printed.contains(names), "{url}: {printed}");
        assert!(!printed.contains("hunter"), "a password was printed: {printed}");
    }
}

/// The options every long-running command has, and no other command lists.
const SERVER_OPTIONS: [&str; 7] = [
    "--listen",
    "--internal-listen",
    "--work-listen",
    "--smtp-url",
    "--mail-from",
    "--schedule-expiry",
    "--schedule-unused-keys",
];

#[actix_web::test]
async fn each_command_lists_only_the_options_it_uses() {
    let (url, dir) = (fresh_database_url(), temp_dir());
    let help = |args: &[&str]| {
        let output = run(keyledger(&url, &dir).args(args));
        assert!(output.status.success(), "{args:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    for args in [
        &["--help"][..],
        &["org", "--help"],
        &["org", "create", "--help"],
        &["org", "set-plan", "--help"],
        &["portal", "link", "--help"],
        &["audit", "--help"],
        &["replay", "--help"],
        &["migrate", "--help"],
    ] {
        let text = help(args);
        assert!(text.contains("--database-url"), "{args:?}: {text}");
        for option in SERVER_OPTIONS
            .iter()
            .chain(&["SMTP_URL", "KEYLEDGER_SCHEDULE", "--forward-auth"])
        {
            assert!(!text.contains(option), "{args:?} lists {option}: {text}");
        }
    }
    let create = help(&["org", "create", "--help"]);
    for option in ["--public-url", "--portal-link-seconds", "--data-dir", "--alert-email"] {
        assert!(create.contains(option), "org create does not list {option}: {create}");
    }
    for args in [&["serve", "--help"][..], &["dev", "--help"], &["work", "--help"]] {
        let text = help(args);
        for option in SERVER_OPTIONS {
            assert!(text.contains(option), "{args:?} does not list {option}: {text}");
        }
    }
    // The listen address still makes the default base of the links `org
    // create` prints, though it is none of that command's options.
    let created = {
        let mut command = keyledger(&url, &dir);
        command
            .env("KEYLEDGER_HASH_KEY", HASH_KEY)
            .env("KEYLEDGER_LISTEN", "127.0.0.1:9321")
            .args(["org", "create", "--name", "Listed"]);
        crate::binary::json_stdout(&run(&mut command))
    };
    let portal_url = created["portal_url"].as_str().unwrap();
    assert!(
        portal_url.starts_with("http://127.0.0.1:9321/portal/session/"),
        "{portal_url}"
    );
}

#[actix_web::test]
async fn the_access_log_cuts_a_key_in_a_path_to_its_prefix() {
    let (url, dir) = (fresh_database_url(), temp_dir());
    let mut command = keyledger(&url, &dir);
    command
        .arg("serve")
        .env("KEYLEDGER_HASH_KEY", HASH_KEY)
        .env("RUST_LOG", "info");
    let server = Server::start(&mut command, dir.join("serve.log")).await;
    let created = create_org(&url, &dir, "Logged", &[]);
    let admin = created["key"]["key"].as_str().unwrap();
    // A key sent where an id belongs, plain and percent-encoded (up to four
    // times), its prefix in capitals, or its body alone.
    let body = &admin[8..];
    for path in [
        format!("/v1/keys/{admin}"),
        format!("/v1/keys/{}/usage", admin.replace('_', "%5F")),
        format!("/v1/keys/sk%2525255Flive_{body}"),
        format!("/v1/keys/SK_LIVE_{body}"),
        format!("/v1/keys/{body}"),
        format!("/v1/keys/{body}/usage"),
    ] {
        call(&server.address, Method::GET, &path, Some(admin), None, &[])
            .await
            .expect_error(404, "not_found");
    }
    // …or as the request id, which is logged and echoed.
    let echoed = call(
        &server.address,
        Method::GET,
        "/v1/keys",
        Some(admin),
        None,
        &[("X-Request-Id", admin)],
    )
    .await;
    assert_ne!(echoed.header("x-request-id"), Some(admin));
    let log = server.stop();
    assert!(log.contains("path=/v1/keys/sk_live_…"), "{log}");
    assert!(log.contains("path=/v1/keys/sk_live_…/usage"), "{log}");
    assert!(!log.contains(&body[..20]), "the key is in the log: {log}");
    assert!(!log.contains(&body[body.len() - 20..]), "the key is in the log: {log}");
}

#[actix_web::test]
async fn serve_reads_the_forward_auth_style_the_internal_listener_and_trusts_no_proxy_by_default() {
    let (url, dir) = (fresh_database_url(), temp_dir());
    let mut command = keyledger(&url, &dir);
    command
        .arg("serve")
        .env("KEYLEDGER_HASH_KEY", HASH_KEY)
        .env("KEYLEDGER_FORWARD_AUTH", "traefik")
        .env("KEYLEDGER_INTERNAL_LISTEN", "127.0.0.1:0");
    let mut server = Server::start(&mut command, dir.join("serve.log")).await;
    let internal = format!(
        "http://{}",
        server.logged_address("keyledger internal API listening").await
    );
    let created = create_org(&url, &dir, "Deployed", &[]);
    let admin = created["key"]["key"].as_str().unwrap();
    let reader = call(
        &server.address,
        Method::POST,
        "/v1/keys",
        Some(admin),
        Some(json!({"name": "reader", "type": "secret", "scopes": ["read:experiences"]})),
        &[],
    )
    .await;
    let reader = reader.expect(201)["key"].as_str().unwrap().to_owned();

    // Verification, forward-auth and metrics are not on the public listener.
    for (method, path) in [
        (Method::POST, "/v1/verify"),
        (Method::GET, "/v1/auth"),
        (Method::GET, "/v1/auth/api/experiences"),
        (Method::GET, "/metrics"),
    ] {
        let body = (method == Method::POST).then(|| json!({"key": reader}));
        call(&server.address, method, path, None, body, &[])
            .await
            .expect_error(404, "not_found");
    }
    let verdict = call(
        &internal,
        Method::POST,
        "/v1/verify",
        None,
        Some(json!({"key": reader})),
        &[],
    )
    .await;
    assert_eq!(verdict.expect(200)["code"], "VALID");

    // Traefik style: its own headers are read, nginx's smuggled ones refused.
    let traefik = [("X-Forwarded-Method", "GET"), ("X-Forwarded-Uri", "/api/experiences/1")];
    let ok = call(&internal, Method::GET, "/v1/auth", Some(&reader), None, &traefik).await;
    assert_eq!(ok.status.as_u16(), 204, "{:?}", ok.body);
    let attack = [
        ("X-Forwarded-Method", "DELETE"),
        ("X-Forwarded-Uri", "/api/consumers/1"),
        ("X-Original-Method", "GET"),
        ("X-Original-URI", "/api/experiences"),
    ];
    let refused = call(&internal, Method::GET, "/v1/auth", Some(&reader), None, &attack).await;
    refused.expect_error(400, "bad_request");
    assert!(refused.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("KEYLEDGER_FORWARD_AUTH=traefik"));

    // No proxy is trusted: a client naming itself in X-Real-IP (a new
    // address each time) is still one client, and is stopped.
    for i in 0..20 {
        let spoofed = format!("198.51.100.{i}");
        let headers = [traefik[0], traefik[1], ("X-Real-IP", spoofed.as_str())];
        call(&internal, Method::GET, "/v1/auth", Some(&guess(i)), None, &headers)
            .await
            .expect_error(401, "invalid_api_key");
    }
    let headers = [traefik[0], traefik[1], ("X-Real-IP", "203.0.113.50")];
    call(&internal, Method::GET, "/v1/auth", Some(&reader), None, &headers)
        .await
        .expect_error(429, "too_many_failed_attempts");
    // The operator is told, once: a proxy nobody trusts shares one guard
    // among all its clients.
    let log = server.stop();
    let warnings: Vec<&str> = log.lines().filter(|line| line.contains("WARN")).collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("KEYLEDGER_INTERNAL_LISTEN") && w.contains("KEYLEDGER_TRUSTED_PROXIES")),
        "no start-up warning: {log}"
    );
    let forwarded: Vec<&&str> = warnings
        .iter()
        .filter(|w| w.contains("X-Real-IP") && w.contains("127.0.0.1") && w.contains("KEYLEDGER_TRUSTED_PROXIES"))
        .collect();
    assert_eq!(forwarded.len(), 1, "21 requests carried X-Real-IP: {log}");

    // Trusted (as a CIDR range), the proxy's X-Real-IP names the client.
    let mut command = keyledger(&url, &dir);
    command
        .arg("serve")
        .env("KEYLEDGER_HASH_KEY", HASH_KEY)
        .env("KEYLEDGER_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.0/8");
    let server = Server::start(&mut command, dir.join("trusting.log")).await;
    let nginx = |client: &'static str| {
        [
            ("X-Original-Method", "GET"),
            ("X-Original-URI", "/api/experiences"),
            ("X-Real-IP", client),
        ]
    };
    for i in 0..20 {
        call(
            &server.address,
            Method::GET,
            "/v1/auth",
            Some(&guess(i)),
            None,
            &nginx("203.0.113.9"),
        )
        .await
        .expect_error(401, "invalid_api_key");
    }
    call(
        &server.address,
        Method::GET,
        "/v1/auth",
        Some(&reader),
        None,
        &nginx("203.0.113.9"),
    )
    .await
    .expect_error(429, "too_many_failed_attempts");
    let honest = call(
        &server.address,
        Method::GET,
        "/v1/auth",
        Some(&reader),
        None,
        &nginx("198.51.100.7"),
    )
    .await;
    assert_eq!(honest.status.as_u16(), 204, "{:?}", honest.body);
    let log = server.stop();
    assert!(!log.contains("WARN"), "a trusted proxy is no cause for warnings: {log}");
}

#[actix_web::test]
async fn bad_forward_auth_and_proxy_settings_stop_the_start() {
    let (url, dir) = (fresh_database_url(), temp_dir());
    for (flag, value, says) in [
        ("--forward-auth", "haproxy", "nginx, traefik or envoy"),
        ("--trusted-proxies", "10.0.0.0/33", "CIDR"),
        ("--trusted-proxies", "proxy.internal", "CIDR"),
    ] {
        let output = run(keyledger(&url, &dir)
            .args(["serve", flag, value])
            .env("KEYLEDGER_HASH_KEY", HASH_KEY));
        assert!(!output.status.success(), "{flag} {value} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(says), "{flag} {value}: {stderr}");
    }
    // Set but empty: no proxy, one listener (as when unset).
    let output = run(keyledger(&url, &dir)
        .arg("migrate")
        .env("KEYLEDGER_TRUSTED_PROXIES", "")
        .env("KEYLEDGER_INTERNAL_LISTEN", ""));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}
