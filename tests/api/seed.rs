//! The seed document's six manual tests, replayed in-process.

use axum::http::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, field_names, without_timestamps};

const HELLO: &str = "Hi there! How can I help you today?";
const NAME: &str = "I'm FastAPI Bot, your friendly assistant built with FastAPI!";
const FASTAPI: &str =
    "FastAPI is a modern, fast Python web framework for building APIs. It's awesome!";

#[tokio::test]
async fn seed_tests_one_to_six() {
    let app = TestApp::new();

    // Test 1: first message, echoed with session id and timestamp, fields in the seed's order.
    let first = app
        .post_chat(
            r#"{"user_message": "Hello!", "user_name": "Alice", "session_id": "alice_chat"}"#,
        )
        .await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header("content-type"), Some("application/json"));
    let body = first.json();
    let keys = field_names(&body);
    assert_eq!(
        keys,
        [
            "bot_reply",
            "user_message",
            "user_name",
            "session_id",
            "timestamp"
        ]
    );
    let ts = body["timestamp"].as_str().unwrap().to_owned();
    assert_eq!(
        first.text(),
        format!(
            r#"{{"bot_reply":"{HELLO}","user_message":"Hello!","user_name":"Alice","session_id":"alice_chat","timestamp":"{ts}"}}"#
        )
    );

    // Test 2: a second message in the same session.
    let second = app.say("alice_chat", "Alice", "What's your name?").await;
    assert_eq!(second["bot_reply"], NAME);

    // Test 3: the history holds both, oldest first, in the seed's field order.
    let history = app.get("/chat/history/alice_chat").await;
    assert_eq!(history.status, StatusCode::OK);
    let entries = history.json();
    let keys = field_names(&entries[0]);
    assert_eq!(
        keys,
        ["user_message", "bot_reply", "user_name", "timestamp"]
    );
    assert_eq!(
        without_timestamps(entries),
        json!([
            {"user_message": "Hello!", "bot_reply": HELLO, "user_name": "Alice", "timestamp": "TS"},
            {"user_message": "What's your name?", "bot_reply": NAME, "user_name": "Alice", "timestamp": "TS"},
        ])
    );

    // Test 4: another session.
    let bob = app.say("bob_chat", "Bob", "Tell me about FastAPI").await;
    assert_eq!(bob["bot_reply"], FASTAPI);
    assert_eq!(bob["session_id"], "bob_chat");

    // Test 5: the sessions are separate.
    assert_eq!(
        app.get("/chat/history/alice_chat")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        without_timestamps(app.get("/chat/history/bob_chat").await.json()),
        json!([{"user_message": "Tell me about FastAPI", "bot_reply": FASTAPI, "user_name": "Bob", "timestamp": "TS"}])
    );

    // Test 6: an unknown session is a 404 with the seed's message.
    let missing = app.get("/chat/history/nonexistent_session").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        missing.text(),
        r#"{"detail":"No conversation history found for session 'nonexistent_session'"}"#
    );
}

#[tokio::test]
async fn defaults_apply_when_fields_are_omitted() {
    let app = TestApp::new();
    let body = app
        .post_chat(r#"{"user_message": "anything"}"#)
        .await
        .json();
    assert_eq!(
        without_timestamps(body),
        json!({"bot_reply": "Interesting! I'm still learning...", "user_message": "anything",
               "user_name": "User", "session_id": "default", "timestamp": "TS"})
    );
    assert_eq!(
        app.get("/chat/history/default")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn unknown_fields_are_ignored_and_the_last_duplicate_wins() {
    let app = TestApp::new();
    let response = app
        .post_chat(
            r#"{"user_message": "first", "extra": [1, {"x": null}], "user_message": "Hello!"}"#,
        )
        .await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.json()["user_message"], "Hello!");
    assert_eq!(response.json()["bot_reply"], HELLO);
}

#[tokio::test]
async fn unicode_survives_in_messages_names_and_session_ids() {
    let app = TestApp::new();
    let reply = app.say("会话 ☕", "Zoë 🚀", "Ça va? 你好 🙂").await;
    assert_eq!(reply["session_id"], "会话 ☕");
    // Non-ASCII is written raw, as FastAPI does (ensure_ascii=False).
    let history = app
        .get("/chat/history/%E4%BC%9A%E8%AF%9D%20%E2%98%95")
        .await;
    assert_eq!(history.status, StatusCode::OK);
    assert!(
        history
            .text()
            .contains("\"user_message\":\"Ça va? 你好 🙂\""),
        "{}",
        history.text()
    );
    assert!(history.text().contains("\"user_name\":\"Zoë 🚀\""));
}

#[tokio::test]
async fn percent_encoded_space_in_the_path_is_decoded() {
    let app = TestApp::new();
    app.say("my session", "User", "hi").await;
    let history = app.get("/chat/history/my%20session").await;
    assert_eq!(history.status, StatusCode::OK);
    assert_eq!(history.json()[0]["user_message"], "hi");
    let missing = app.get("/chat/history/other%20one").await;
    assert_eq!(
        missing.text(),
        r#"{"detail":"No conversation history found for session 'other one'"}"#
    );
}

#[tokio::test]
async fn the_same_user_name_is_shared_between_exchanges() {
    // Sharing is invisible on the wire; this checks it stays correct when names change.
    let app = TestApp::new();
    app.say("s", "Ann", "one").await;
    app.say("s", "Ann", "two").await;
    app.say("s", "Bea", "three").await;
    let names: Vec<String> = app
        .get("/chat/history/s")
        .await
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["user_name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["Ann", "Ann", "Bea"]);
}

#[tokio::test]
async fn health_is_ok() {
    let app = TestApp::new();
    let response = app.get("/health").await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.text(), r#"{"status":"ok"}"#);
}
