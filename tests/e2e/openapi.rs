//! `GET /openapi.json`: a valid OpenAPI 3.1 document whose every operation
//! is answered by a real route.

use awc::http::Method;
use keyledger_events::domain::{KeyId, WebhookId};
use serde_json::{json, Value};

use crate::support::{call, spawn_app};

const NO_SUCH_ENDPOINT: &str = "There is no such endpoint";

#[actix_web::test]
async fn the_openapi_document_lists_only_operations_the_server_answers() {
    let app = spawn_app().await;
    let answer = call(&app.address, Method::GET, "/openapi.json", None, None, &[]).await;
    let document = answer.expect(200).clone();
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(document["openapi"], "3.1.0");
    let paths = document["paths"].as_object().expect("paths");
    // An id nobody owns: every operation on it must reach its handler (404
    // "no such resource"), not the catch-all for unknown paths.
    let unknown_id = KeyId::new().to_string();
    let mut operations = 0;
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            if !["get", "post", "patch", "put", "delete"].contains(&method.as_str()) {
                continue; // path-level "parameters"
            }
            let method: Method = method.to_uppercase().parse().unwrap();
            assert!(operation["responses"].is_object(), "{method} {path} has responses");
            let concrete = path
                .replace("{id}", &unknown_id)
                .replace("{webhook_id}", &WebhookId::new().to_string())
                .replace("{path}", "api/experiences");
            let body = matches!(method, Method::POST | Method::PATCH).then(|| json!({}));
            let answer = call(&app.address, method.clone(), &concrete, Some(&app.admin_key), body, &[]).await;
            let message = answer.body["error"]["message"].as_str().unwrap_or_default();
            assert!(
                !message.starts_with(NO_SUCH_ENDPOINT),
                "{method} {path} is documented but not served"
            );
            operations += 1;
        }
    }
    assert!(operations >= 19, "only {operations} operations documented");
    // Every $ref points at something that exists.
    let text = document.to_string();
    for reference in text.split("\"$ref\":\"#/").skip(1) {
        let pointer = format!("/{}", &reference[..reference.find('"').unwrap()]);
        assert!(document.pointer(&pointer).is_some(), "dangling $ref {pointer}");
    }
}

#[actix_web::test]
async fn an_unknown_endpoint_says_where_the_endpoints_are_described() {
    let app = spawn_app().await;
    let answer = app.get("/v1/keyz").await;
    answer.expect_error(404, "not_found");
    let message: &Value = &answer.body["error"]["message"];
    assert!(
        message.as_str().unwrap().starts_with(NO_SUCH_ENDPOINT) && message.as_str().unwrap().contains("/openapi.json"),
        "{message}"
    );
    let missing = app.get(&format!("/v1/keys/{}", KeyId::new())).await;
    missing.expect_error(404, "not_found");
    assert!(!missing.body["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with(NO_SUCH_ENDPOINT));
}
