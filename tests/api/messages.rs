//! One exchange by position through the seed-style API, on every backend:
//! `GET/PATCH/DELETE /chat/history/{session_id}/messages/{n}`.

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, field_names, said};

async fn one_exchange_is_read_corrected_and_removed(app: TestApp) {
    for message in ["Hello!", "tell me about fastapi", "bye"] {
        app.say("s", "Ann", message).await;
    }
    let read = app.get("/chat/history/s/messages/1").await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.text());
    let history = app.get("/chat/history/s").await.json();
    assert_eq!(read.json(), history[1], "the same exchange, the same bytes");
    assert_eq!(
        field_names(&read.json()),
        ["user_message", "bot_reply", "user_name", "timestamp"]
    );

    let patched = app
        .call(
            Method::PATCH,
            "/chat/history/s/messages/1",
            None,
            Some(json!({"user_message": "tell me about FastAPI"})),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text());
    let patched = patched.json();
    assert_eq!(patched["user_message"], "tell me about FastAPI");
    assert_eq!(
        patched["bot_reply"], history[1]["bot_reply"],
        "no new reply is made"
    );
    assert_eq!(
        (&patched["user_name"], &patched["timestamp"]),
        (&history[1]["user_name"], &history[1]["timestamp"])
    );
    let both = app
        .call(
            Method::PATCH,
            "/chat/history/s/messages/2",
            None,
            Some(json!({"bot_reply": "Goodbye!", "user_message": "bye now"})),
        )
        .await
        .json();
    assert_eq!(
        (&both["user_message"], &both["bot_reply"]),
        (&json!("bye now"), &json!("Goodbye!"))
    );
    let searched = app.get("/chat/search?q=goodbye").await.json();
    assert_eq!(
        searched.as_array().unwrap().len(),
        1,
        "search sees the edit: {searched}"
    );

    let removed = app
        .call(Method::DELETE, "/chat/history/s/messages/0", None, None)
        .await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT);
    let history = app.get("/chat/history/s").await;
    assert_eq!(history.header("x-total-count"), Some("2"));
    assert_eq!(said(&history.json()), ["tell me about FastAPI", "bye now"]);
    assert_eq!(
        app.get("/chat/history/s/stats").await.json()["total_messages"],
        2
    );
    // The reply engine reads what is left.
    let reply = app.say("s", "Ann", "what did I just say?").await;
    assert_eq!(reply["bot_reply"], "You said: \"bye now\"");
    // Removing every exchange removes the session.
    for _ in 0..3 {
        let gone = app
            .call(Method::DELETE, "/chat/history/s/messages/0", None, None)
            .await;
        assert_eq!(gone.status, StatusCode::NO_CONTENT);
    }
    let history = app.get("/chat/history/s").await;
    assert_eq!(history.status, StatusCode::NOT_FOUND);
    assert_eq!(app.get("/chat/sessions").await.text(), "[]");
}

async fn bad_positions_and_bodies_get_the_contracts_errors(app: TestApp) {
    app.say("s", "Ann", "Hello!").await;
    let before = app.get("/chat/history/s").await.text().to_owned();
    let no_history = json!({"detail": "No conversation history found for session 'nobody'"});
    let no_message = json!({"detail": "No message 1 in the history of session 's'"});
    let cases: Vec<(Method, &str, Option<Value>, StatusCode, Value)> = vec![
        (
            Method::GET,
            "/chat/history/nobody/messages/0",
            None,
            StatusCode::NOT_FOUND,
            no_history.clone(),
        ),
        (
            Method::PATCH,
            "/chat/history/nobody/messages/0",
            Some(json!({"user_message": "x"})),
            StatusCode::NOT_FOUND,
            no_history.clone(),
        ),
        (
            Method::DELETE,
            "/chat/history/nobody/messages/0",
            None,
            StatusCode::NOT_FOUND,
            no_history,
        ),
        (
            Method::GET,
            "/chat/history/s/messages/1",
            None,
            StatusCode::NOT_FOUND,
            no_message.clone(),
        ),
        (
            Method::PATCH,
            "/chat/history/s/messages/1",
            Some(json!({"user_message": "x"})),
            StatusCode::NOT_FOUND,
            no_message.clone(),
        ),
        (
            Method::DELETE,
            "/chat/history/s/messages/1",
            None,
            StatusCode::NOT_FOUND,
            no_message,
        ),
        (
            Method::GET,
            "/chat/history/s/messages/x",
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"detail": [{"type": "int_parsing", "loc": ["path", "n"], "msg": "Input should be a valid integer, unable to parse string as an integer", "input": "x"}]}),
        ),
        (
            Method::DELETE,
            "/chat/history/s/messages/-1",
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"detail": [{"type": "greater_than_equal", "loc": ["path", "n"], "msg": "Input should be greater than or equal to 0", "input": "-1", "ctx": {"ge": 0}}]}),
        ),
        (
            Method::PATCH,
            "/chat/history/s/messages/0",
            Some(json!({"user_message": ""})),
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"detail": [{"type": "string_too_short", "loc": ["body", "user_message"], "msg": "String should have at least 1 character", "input": "", "ctx": {"min_length": 1}}]}),
        ),
        (
            Method::PATCH,
            "/chat/history/s/messages/0",
            Some(json!({"bot_reply": 5})),
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"detail": [{"type": "string_type", "loc": ["body", "bot_reply"], "msg": "Input should be a valid string", "input": 5}]}),
        ),
        (
            Method::PATCH,
            "/chat/history/s/messages/0",
            Some(json!([1])),
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"detail": [{"type": "model_attributes_type", "loc": ["body"], "msg": "Input should be a valid dictionary or object to extract fields from", "input": [1]}]}),
        ),
    ];
    for (method, uri, body, status, expected) in cases {
        let response = app.call(method.clone(), uri, None, body.clone()).await;
        assert_eq!(
            response.status,
            status,
            "{method} {uri} {body:?}: {}",
            response.text()
        );
        assert_eq!(response.json(), expected, "{method} {uri} {body:?}");
    }
    let empty = app
        .request(
            Method::PATCH,
            "/chat/history/s/messages/0",
            Some("application/json"),
            "",
        )
        .await;
    assert_eq!(empty.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        app.get("/chat/history/s").await.text(),
        before,
        "nothing changed"
    );
}

http_suite!(
    one_exchange_is_read_corrected_and_removed,
    bad_positions_and_bodies_get_the_contracts_errors,
);
