//! `/openapi.json` documents every route the router serves, and only those.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, StatusCode};
use chatbot_api::domain::store::MemoryStore;
use serde_json::Value;

use crate::helpers::TestApp;

fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            ops.push((method.to_uppercase(), path.clone()));
        }
    }
    ops.sort();
    ops
}

#[tokio::test]
async fn every_documented_operation_is_routed_and_answers() {
    let app = TestApp::new();
    let doc = app.get("/openapi.json").await.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let ops = operations(&doc);
    assert!(ops.len() >= 9, "{ops:?}");
    for (method, path) in ops {
        let uri = path.replace("{session_id}", "doc-probe");
        let response = app
            .request(
                Method::from_bytes(method.as_bytes()).unwrap(),
                &uri,
                None,
                Body::empty(),
            )
            .await;
        // Routed: never the generic fallback 404 or a 405.
        assert_ne!(
            response.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_ne!(
            response.text(),
            r#"{"detail":"Not Found"}"#,
            "{method} {path} is documented but not routed"
        );
        // Whatever it answered is a documented status.
        let statuses = &doc["paths"][&path][method.to_lowercase()]["responses"];
        assert!(
            statuses.get(response.status.as_str()).is_some(),
            "{method} {path} answered {} which is not documented",
            response.status
        );
    }
}

#[test]
fn routes_are_only_registered_through_utoipa() {
    // `routes!` refuses a handler without `#[utoipa::path]`, so a route added
    // any other way is the only way to serve something undocumented.
    let mut offenders = Vec::new();
    let mut stack = vec![std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src"
    ))];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for needle in [".route(", ".route_service(", ".nest(", ".nest_service("] {
                    if text.contains(needle) {
                        offenders.push(format!("{} uses {needle}", path.display()));
                    }
                }
            }
        }
    }
    assert!(offenders.is_empty(), "undocumented routes: {offenders:?}");
}

#[tokio::test]
async fn errors_and_examples_are_documented() {
    let doc = TestApp::new().get("/openapi.json").await.json();
    let chat = &doc["paths"]["/chat"]["post"];
    for status in ["200", "413", "422", "503"] {
        assert!(
            chat["responses"].get(status).is_some(),
            "POST /chat documents {status}"
        );
    }
    for status in ["200", "404", "422", "503"] {
        assert!(
            doc["paths"]["/chat/history/{session_id}"]["get"]["responses"]
                .get(status)
                .is_some()
        );
    }
    let schemas = &doc["components"]["schemas"];
    // The request example is the seed's own first request.
    assert_eq!(
        schemas["ChatRequestBody"]["example"],
        serde_json::json!({"user_message": "Hello!", "user_name": "Alice", "session_id": "alice_chat"})
    );
    assert_eq!(
        schemas["ChatRequestBody"]["required"],
        serde_json::json!(["user_message"])
    );
    assert_eq!(
        schemas["ChatRequestBody"]["properties"]["user_message"]["maxLength"],
        4000
    );
    assert!(schemas["ValidationBody"].is_object() && schemas["DetailBody"].is_object());
}

#[tokio::test]
async fn debug_endpoints_are_documented_only_when_mounted() {
    let off = TestApp::new().get("/openapi.json").await.json();
    assert!(off["paths"].get("/debug/clear").is_none());
    let state = chatbot_api::AppState::new(
        Arc::new(MemoryStore::new()),
        chatbot_api::domain::chatbot::Chatbot::seed(),
        Default::default(),
    )
    .with_debug_endpoints(true);
    let on = TestApp::from_state(state).get("/openapi.json").await.json();
    assert!(on["paths"]["/debug/clear"]["post"].is_object());
    assert!(on["paths"]["/debug/sessions"]["get"].is_object());
}

#[tokio::test]
async fn the_root_serves_a_page_to_browsers_and_an_index_to_clients() {
    let app = TestApp::new();
    let json = app.get("/").await;
    assert_eq!(json.header("content-type"), Some("application/json"));
    assert_eq!(json.json()["docs"], "/docs");
    let request = axum::http::Request::builder()
        .uri("/")
        .header("accept", "text/html,application/xhtml+xml")
        .body(Body::empty())
        .unwrap();
    let html = app.send(request).await;
    assert_eq!(
        html.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let page = html.text();
    assert!(page.contains("<form id=\"send\">"));
    // Nothing in the page points outside the server.
    for needle in ["http://", "https://", "//cdn", "@import", "fonts.g"] {
        assert!(!page.contains(needle), "the page references {needle}");
    }
    let docs = app.get("/docs/").await;
    assert_eq!(docs.status, StatusCode::OK);
    assert!(
        !docs.text().contains("https://"),
        "Swagger UI is served from the binary"
    );
}

#[tokio::test]
async fn with_keys_the_document_has_the_security_scheme() {
    let state = chatbot_api::AppState::new(
        Arc::new(MemoryStore::new()),
        chatbot_api::domain::chatbot::Chatbot::seed(),
        Default::default(),
    )
    .with_api_keys(chatbot_api::http::auth::ApiKeys::new(["k"]));
    let doc = TestApp::from_state(state).get("/openapi.json").await.json();
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["api_key"]["name"],
        "X-API-Key"
    );
    let security = &doc["paths"]["/chat"]["post"]["security"];
    assert!(
        security.as_array().is_some_and(|s| s.len() == 2),
        "{security}"
    );
    assert!(
        doc["paths"]["/health"]["get"].get("security").is_none(),
        "health stays open"
    );
    for (path, method) in [
        ("/chat", "post"),
        ("/chat/history/{session_id}", "get"),
        ("/chat/sessions", "get"),
        ("/chat/search", "get"),
    ] {
        for status in ["401", "429"] {
            assert!(
                doc["paths"][path][method]["responses"]
                    .get(status)
                    .is_some(),
                "{method} {path} documents {status}"
            );
        }
    }
    let open = TestApp::new().get("/openapi.json").await.json();
    assert!(
        open["components"].get("securitySchemes").is_none(),
        "no scheme without keys"
    );
}

#[tokio::test]
async fn the_documented_body_rules_match_the_validation() {
    let doc = TestApp::new().get("/openapi.json").await.json();
    let properties = &doc["components"]["schemas"]["ChatRequestBody"]["properties"];
    assert_eq!(
        properties["user_message"]["pattern"],
        chatbot_api::domain::models::TEXT_PATTERN
    );
    assert_eq!(
        properties["user_name"]["pattern"],
        chatbot_api::domain::models::TEXT_PATTERN
    );
    assert_eq!(
        properties["session_id"]["pattern"],
        chatbot_api::domain::models::SESSION_ID_PATTERN
    );
}

/// What generated clients name their functions after, and what every
/// Response object must have to be valid OpenAPI (3.0 and 3.1 alike).
#[tokio::test]
async fn every_operation_has_a_readable_id_and_every_response_a_description() {
    let state = chatbot_api::AppState::new(
        Arc::new(MemoryStore::new()),
        chatbot_api::domain::chatbot::Chatbot::seed(),
        Default::default(),
    )
    .with_debug_endpoints(true);
    let doc = TestApp::from_state(state).get("/openapi.json").await.json();
    let mut ids = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            ids.push((
                method.to_uppercase(),
                path.as_str(),
                operation["operationId"].as_str().unwrap_or("(none)"),
            ));
            for (status, response) in operation["responses"].as_object().unwrap() {
                assert!(
                    response["description"]
                        .as_str()
                        .is_some_and(|d| !d.is_empty()),
                    "{method} {path} {status} has no description"
                );
            }
        }
    }
    ids.sort();
    let expected = [
        (
            "DELETE",
            "/chat/history/{session_id}",
            "delete_conversation",
        ),
        (
            "DELETE",
            "/chat/history/{session_id}/messages/{n}",
            "delete_message",
        ),
        (
            "DELETE",
            "/v1/conversations/{conversation_id}",
            "delete_conversation_v1",
        ),
        (
            "DELETE",
            "/v1/conversations/{conversation_id}/items/{item_id}",
            "delete_item",
        ),
        ("GET", "/", "index"),
        ("GET", "/auth/config", "auth_config"),
        ("GET", "/chat/analytics", "get_analytics"),
        ("GET", "/chat/history/{session_id}", "get_history"),
        (
            "GET",
            "/chat/history/{session_id}/export",
            "export_conversation",
        ),
        (
            "GET",
            "/chat/history/{session_id}/messages/{n}",
            "get_message",
        ),
        (
            "GET",
            "/chat/history/{session_id}/stats",
            "get_conversation_stats",
        ),
        ("GET", "/chat/search", "search_messages"),
        ("GET", "/chat/sessions", "list_sessions"),
        ("GET", "/dashboard", "dashboard"),
        ("GET", "/debug/sessions", "debug_list_sessions"),
        ("GET", "/health", "health"),
        ("GET", "/metrics", "metrics"),
        ("GET", "/ui/{file}", "ui_asset"),
        (
            "GET",
            "/v1/conversations/{conversation_id}",
            "retrieve_conversation",
        ),
        (
            "GET",
            "/v1/conversations/{conversation_id}/items",
            "list_items",
        ),
        (
            "GET",
            "/v1/conversations/{conversation_id}/items/{item_id}",
            "retrieve_item",
        ),
        ("GET", "/v1/models", "list_models"),
        ("GET", "/v1/models/{model}", "retrieve_model"),
        (
            "PATCH",
            "/chat/history/{session_id}/messages/{n}",
            "edit_message",
        ),
        ("POST", "/chat", "send_message"),
        ("POST", "/debug/clear", "debug_clear"),
        ("POST", "/v1/chat/completions", "create_chat_completion"),
        ("POST", "/v1/conversations", "create_conversation"),
        (
            "POST",
            "/v1/conversations/{conversation_id}",
            "update_conversation",
        ),
        (
            "POST",
            "/v1/conversations/{conversation_id}/items",
            "create_items",
        ),
        ("POST", "/v1/responses", "create_response"),
    ];
    let expected: Vec<_> = expected
        .iter()
        .map(|(m, p, id)| (m.to_string(), *p, *id))
        .collect();
    assert_eq!(ids, expected);
}
