//! Every row of the error table in `shared/API.md`, with exact bodies.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, StatusCode};
use chatbot_api::domain::store::MemoryStore;
use chatbot_api::http::validate::Limits;
use serde_json::json;

use crate::helpers::TestApp;

const PATTERN_MSG: &str = r#""msg":"String should match pattern '^[^/\\x00-\\x1f\\x7f]+$'""#;
const PATTERN_CTX: &str = r#""ctx":{"pattern":"^[^/\\x00-\\x1f\\x7f]+$"}"#;

#[tokio::test]
async fn unknown_routes_are_404_not_found() {
    let app = TestApp::new();
    for (method, uri) in [
        (Method::GET, "/nope"),
        (Method::POST, "/nope"),
        (Method::GET, "/chat/history"),
        (Method::GET, "/chat/history/"),
        (Method::GET, "/chat/history/a/b"),
        (Method::GET, "/chat/history/a%2Fb"),
        (Method::DELETE, "/nope/deeper"),
    ] {
        let response = app.request(method.clone(), uri, None, Body::empty()).await;
        assert_eq!(response.status, StatusCode::NOT_FOUND, "{method} {uri}");
        assert_eq!(response.header("content-type"), Some("application/json"));
        assert_eq!(
            response.text(),
            r#"{"detail":"Not Found"}"#,
            "{method} {uri}"
        );
    }
}

#[tokio::test]
async fn wrong_method_is_405_with_allow() {
    let app = TestApp::new();
    for (method, uri, allow) in [
        (Method::GET, "/chat", "POST"),
        (Method::PUT, "/chat", "POST"),
        (Method::DELETE, "/chat", "POST"),
        (Method::POST, "/chat/history/x", "GET,HEAD,DELETE"),
        (Method::POST, "/chat/history/x/stats", "GET,HEAD"),
        (Method::POST, "/health", "GET,HEAD"),
        (Method::DELETE, "/", "GET,HEAD"),
    ] {
        let response = app.request(method.clone(), uri, None, Body::empty()).await;
        assert_eq!(
            response.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {uri}"
        );
        assert_eq!(response.header("allow"), Some(allow), "{method} {uri}");
        assert_eq!(response.header("content-type"), Some("application/json"));
        assert_eq!(response.text(), r#"{"detail":"Method Not Allowed"}"#);
    }
}

/// Each case: the raw body sent as JSON, and the exact 422 body expected.
#[tokio::test]
async fn validation_errors_have_pydantic_bodies() {
    let long = "x".repeat(4001);
    let cases: Vec<(String, String)> = vec![
        (
            r#"{"user_name": "A", "zzz": 1}"#.into(),
            r#"{"detail":[{"type":"missing","loc":["body","user_message"],"msg":"Field required","input":{"user_name":"A","zzz":1}}]}"#.into(),
        ),
        (
            r#"{"user_message": 5}"#.into(),
            r#"{"detail":[{"type":"string_type","loc":["body","user_message"],"msg":"Input should be a valid string","input":5}]}"#.into(),
        ),
        (
            r#"{"user_message": true}"#.into(),
            r#"{"detail":[{"type":"string_type","loc":["body","user_message"],"msg":"Input should be a valid string","input":true}]}"#.into(),
        ),
        (
            r#"{"user_message": null}"#.into(),
            r#"{"detail":[{"type":"string_type","loc":["body","user_message"],"msg":"Input should be a valid string","input":null}]}"#.into(),
        ),
        (
            r#"{"user_message": ["a"]}"#.into(),
            r#"{"detail":[{"type":"string_type","loc":["body","user_message"],"msg":"Input should be a valid string","input":["a"]}]}"#.into(),
        ),
        (
            r#"{"user_message": {"b": 1.5}}"#.into(),
            r#"{"detail":[{"type":"string_type","loc":["body","user_message"],"msg":"Input should be a valid string","input":{"b":1.5}}]}"#.into(),
        ),
        (
            r#"{"session_id": 1, "user_name": false}"#.into(),
            r#"{"detail":[{"type":"missing","loc":["body","user_message"],"msg":"Field required","input":{"session_id":1,"user_name":false}},{"type":"string_type","loc":["body","user_name"],"msg":"Input should be a valid string","input":false},{"type":"string_type","loc":["body","session_id"],"msg":"Input should be a valid string","input":1}]}"#.into(),
        ),
        (
            String::new(),
            r#"{"detail":[{"type":"missing","loc":["body"],"msg":"Field required","input":null}]}"#.into(),
        ),
        (
            "null".into(),
            r#"{"detail":[{"type":"model_attributes_type","loc":["body"],"msg":"Input should be a valid dictionary or object to extract fields from","input":null}]}"#.into(),
        ),
        (
            r#"{"user_message": }"#.into(),
            r#"{"detail":[{"type":"json_invalid","loc":["body",17],"msg":"JSON decode error","input":{},"ctx":{"error":"expected value"}}]}"#.into(),
        ),
        (
            "[1]".into(),
            r#"{"detail":[{"type":"model_attributes_type","loc":["body"],"msg":"Input should be a valid dictionary or object to extract fields from","input":[1]}]}"#.into(),
        ),
        (
            r#""x""#.into(),
            r#"{"detail":[{"type":"model_attributes_type","loc":["body"],"msg":"Input should be a valid dictionary or object to extract fields from","input":"x"}]}"#.into(),
        ),
        (
            r#"{"user_message": "hi", "session_id": ""}"#.into(),
            r#"{"detail":[{"type":"string_too_short","loc":["body","session_id"],"msg":"String should have at least 1 character","input":"","ctx":{"min_length":1}}]}"#.into(),
        ),
        (
            r#"{"user_message": ""}"#.into(),
            r#"{"detail":[{"type":"string_too_short","loc":["body","user_message"],"msg":"String should have at least 1 character","input":"","ctx":{"min_length":1}}]}"#.into(),
        ),
        (
            json!({"user_message": long}).to_string(),
            format!(
                r#"{{"detail":[{{"type":"string_too_long","loc":["body","user_message"],"msg":"String should have at most 4000 characters","input":"{long}","ctx":{{"max_length":4000}}}}]}}"#
            ),
        ),
        (
            json!({"user_message": "a", "user_name": "n".repeat(101)}).to_string(),
            format!(
                r#"{{"detail":[{{"type":"string_too_long","loc":["body","user_name"],"msg":"String should have at most 100 characters","input":"{}","ctx":{{"max_length":100}}}}]}}"#,
                "n".repeat(101)
            ),
        ),
        (
            json!({"user_message": "a", "session_id": "s".repeat(129)}).to_string(),
            format!(
                r#"{{"detail":[{{"type":"string_too_long","loc":["body","session_id"],"msg":"String should have at most 128 characters","input":"{}","ctx":{{"max_length":128}}}}]}}"#,
                "s".repeat(129)
            ),
        ),
        (
            r#"{"user_message": "hi", "session_id": "a/b"}"#.into(),
            format!(r#"{{"detail":[{{"type":"string_pattern_mismatch","loc":["body","session_id"],{PATTERN_MSG},"input":"a/b",{PATTERN_CTX}}}]}}"#),
        ),
        (
            r#"{"user_message": "hi", "session_id": "tab\there"}"#.into(),
            format!(r#"{{"detail":[{{"type":"string_pattern_mismatch","loc":["body","session_id"],{PATTERN_MSG},"input":"tab\there",{PATTERN_CTX}}}]}}"#),
        ),
        (
            r#"{"user_message": "hi", "session_id": "nul\u0000"}"#.into(),
            format!(r#"{{"detail":[{{"type":"string_pattern_mismatch","loc":["body","session_id"],{PATTERN_MSG},"input":"nul\u0000",{PATTERN_CTX}}}]}}"#),
        ),
    ];
    let app = TestApp::new();
    for (body, expected) in cases {
        let response = app.post_chat(body.clone()).await;
        assert_eq!(
            response.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "body {body:?}"
        );
        assert_eq!(response.header("content-type"), Some("application/json"));
        assert_eq!(response.text(), expected, "body {body:?}");
    }
    // None of them stored anything.
    for session in ["default", "", "a/b"] {
        let uri = format!("/chat/history/{session}");
        assert_ne!(app.get(&uri).await.status, StatusCode::OK, "{uri}");
    }
}

#[tokio::test]
async fn json_errors_carry_the_offset_and_the_parsers_message() {
    let app = TestApp::new();
    let response = app.post_chat("{\"user_message\": \"hi\",\n  oops}").await;
    assert_eq!(response.status, StatusCode::UNPROCESSABLE_ENTITY);
    let detail = &response.json()["detail"][0];
    assert_eq!(detail["type"], "json_invalid");
    assert_eq!(detail["loc"], json!(["body", 25]));
    assert_eq!(detail["input"], json!({}));
    assert_eq!(detail["ctx"]["error"], "key must be a string");
}

#[tokio::test]
async fn non_json_content_type_reports_the_raw_body() {
    let app = TestApp::new();
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ] {
        let body = r#"{"user_message": "Hello!"}"#;
        let response = app
            .request(Method::POST, "/chat", Some(content_type), body)
            .await;
        assert_eq!(
            response.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{content_type}"
        );
        assert_eq!(
            response.text(),
            r#"{"detail":[{"type":"model_attributes_type","loc":["body"],"msg":"Input should be a valid dictionary or object to extract fields from","input":"{\"user_message\": \"Hello!\"}"}]}"#
        );
    }
    // No content type at all is read as JSON, as FastAPI does.
    let response = app
        .request(Method::POST, "/chat", None, r#"{"user_message": "Hello!"}"#)
        .await;
    assert_eq!(response.status, StatusCode::OK);
    let response = app
        .request(
            Method::POST,
            "/chat",
            Some("application/json; charset=utf-8"),
            r#"{"user_message": "x"}"#,
        )
        .await;
    assert_eq!(response.status, StatusCode::OK);
}

#[tokio::test]
async fn singular_character_when_the_limit_is_one() {
    let limits = Limits {
        max_message_chars: 1,
        ..Limits::default()
    };
    let app = TestApp::with_store(Arc::new(MemoryStore::new()), limits);
    let response = app.post_chat(r#"{"user_message": "ab"}"#).await;
    assert_eq!(
        response.text(),
        r#"{"detail":[{"type":"string_too_long","loc":["body","user_message"],"msg":"String should have at most 1 character","input":"ab","ctx":{"max_length":1}}]}"#
    );
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_and_store_nothing() {
    let limits = Limits {
        max_body_bytes: 100,
        ..Limits::default()
    };
    let app = TestApp::with_store(Arc::new(MemoryStore::new()), limits);
    let body = json!({"user_message": "y".repeat(200)}).to_string();
    let response = app.post_chat(body).await;
    assert_eq!(response.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(
        response.text(),
        r#"{"detail":"Request body too large: the limit is 100 bytes"}"#
    );

    // Without a content-length (a stream), the limit still holds.
    let chunks: Vec<Result<String, std::io::Error>> = vec![
        Ok("{\"user_message\": \"".into()),
        Ok("z".repeat(200)),
        Ok("\"}".into()),
    ];
    let stream = Body::from_stream(futures_util::stream::iter(chunks));
    let response = app.post_chat(stream).await;
    assert_eq!(response.status, StatusCode::PAYLOAD_TOO_LARGE);

    assert_eq!(
        app.get("/chat/history/default").await.status,
        StatusCode::NOT_FOUND
    );
    // A body right at the limit is fine.
    let fits = json!({"user_message": "w".repeat(100 - 19)}).to_string();
    assert_eq!(fits.len(), 100);
    assert_eq!(app.post_chat(fits).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_rejected_request_leaves_stored_history_unchanged() {
    let app = TestApp::new();
    app.say("keep", "Ann", "Hello!").await;
    let before = app.get("/chat/history/keep").await.text().to_owned();
    for body in [
        r#"{"session_id": "keep"}"#,
        r#"{"session_id": "keep", "user_message": 3}"#,
        "{",
    ] {
        assert_eq!(
            app.post_chat(body).await.status,
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
    assert_eq!(app.get("/chat/history/keep").await.text(), before);
}
