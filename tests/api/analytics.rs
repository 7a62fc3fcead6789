//! `GET /chat/analytics` with exact numbers, on every backend, within the
//! caller's key scope.

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use chatbot_api::AppState;
use chatbot_api::domain::chatbot::Chatbot;
use chatbot_api::domain::models::SessionId;
use chatbot_api::domain::store::{NewExchange, Store};
use chatbot_api::http::auth::ApiKeys;
use serde_json::{Value, json};

use crate::helpers::TestApp;

/// 2026-01-01T00:00:00Z.
const DAY_ONE: i64 = 1_767_225_600;
const DAY: i64 = 86_400;
const ALPHA: Option<(&str, &str)> = Some(("authorization", "Bearer alpha"));

async fn store_at(store: &Arc<dyn Store>, key: &str, message: &str, at: i64) {
    let exchange = NewExchange {
        user_message: message.into(),
        user_name: "U".into(),
        timestamp: at,
    };
    let session = SessionId::from_store_key(key.to_owned());
    store
        .append(&session, exchange, Arc::new(Chatbot::seed()))
        .await
        .unwrap();
}

async fn analytics(app: &TestApp, query: &str) -> Value {
    let response = app
        .call(
            Method::GET,
            &format!("/chat/analytics?{query}"),
            ALPHA,
            None,
        )
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    response.json()
}

async fn analytics_count_exactly_within_the_key(store: Arc<dyn Store>) {
    let keys = ApiKeys::new(["alpha", "beta"]);
    let alpha = keys.owner_of("alpha").unwrap();
    let beta = keys.owner_of("beta").unwrap();
    let a = |id: &str| alpha.scope(id);
    store_at(&store, &a("a"), "hello", DAY_ONE + 100).await;
    store_at(&store, &a("a"), "xyz", DAY_ONE + 200).await;
    store_at(&store, &a("a"), "xyz", DAY_ONE + 3_700).await;
    store_at(&store, &a("c"), "hello", DAY_ONE - DAY).await;
    store_at(&store, &a("b"), "fastapi", DAY_ONE + DAY + 10).await;
    store_at(&store, &a("b"), "tell me a joke", DAY_ONE + DAY + 20).await;
    store_at(&store, &a("c"), "hello", DAY_ONE + DAY + 30).await;
    // Another key's traffic in the same range counts for that key only.
    store_at(&store, &beta.scope("a"), "xyz", DAY_ONE + 50).await;
    store_at(&store, &beta.scope("z"), "hello", DAY_ONE + DAY + 50).await;
    let app = TestApp::from_state(
        AppState::new(store, Chatbot::seed(), Default::default()).with_api_keys(keys),
    );

    let days = analytics(&app, "from=2026-01-01&to=2026-01-03").await;
    assert_eq!(
        days,
        json!({
            "from": "2026-01-01T00:00:00Z",
            "to": "2026-01-03T00:00:00Z",
            "bucket": "day",
            "buckets": [
                {"start": "2026-01-01T00:00:00Z", "exchanges": 3, "active_sessions": 1, "new_sessions": 1},
                {"start": "2026-01-02T00:00:00Z", "exchanges": 3, "active_sessions": 2, "new_sessions": 1},
            ],
            "exchanges": 6,
            "new_sessions": 2,
            "fallback_exchanges": 3,
            "fallback_share": 0.5,
            "rules": [
                {"rule": "hello", "reply": "Hi there! How can I help you today?", "exchanges": 2},
                {"rule": "fastapi", "reply": "FastAPI is a modern, fast Python web framework for building APIs. It's awesome!", "exchanges": 1},
                {"rule": "your name", "reply": "I'm FastAPI Bot, your friendly assistant built with FastAPI!", "exchanges": 0},
            ],
            "unanswered": [{"message": "xyz", "count": 2}, {"message": "tell me a joke", "count": 1}],
        })
    );
    let from = DAY_ONE;
    let to = DAY_ONE + 2 * 3_600;
    let hours = analytics(&app, &format!("from={from}&to={to}&bucket=hour&top=1")).await;
    assert_eq!(
        hours["buckets"],
        json!([
            {"start": "2026-01-01T00:00:00Z", "exchanges": 2, "active_sessions": 1, "new_sessions": 1},
            {"start": "2026-01-01T01:00:00Z", "exchanges": 1, "active_sessions": 1, "new_sessions": 0},
        ])
    );
    assert_eq!(hours["unanswered"], json!([{"message": "xyz", "count": 2}]));
    assert_eq!(hours["fallback_share"], 0.6667);
    let quiet = analytics(&app, "from=2025-06-01T00:00:00Z&to=2025-06-03T00:00:00Z").await;
    assert_eq!(
        (
            quiet["exchanges"].as_u64(),
            quiet["fallback_share"].as_f64()
        ),
        (Some(0), Some(0.0))
    );
    assert_eq!(quiet["buckets"].as_array().unwrap().len(), 2);
    assert!(quiet["unanswered"].as_array().unwrap().is_empty());
    // Defaults: the last 7 days by day, up to now.
    let recent = analytics(&app, "").await;
    assert_eq!(recent["bucket"], "day");
    assert!(recent["buckets"].as_array().unwrap().len() >= 7);
    // Without a key: 401.
    assert_eq!(
        app.get("/chat/analytics").await.status,
        StatusCode::UNAUTHORIZED
    );
}

async fn bad_parameters_are_fastapi_422s(store: Arc<dyn Store>) {
    let app = TestApp::with_store(store, Default::default());
    let cases = [
        (
            "from=yesterday",
            json!({"type": "datetime_parsing", "loc": ["query", "from"],
            "msg": "Input should be a valid datetime (RFC 3339), a date (YYYY-MM-DD) or Unix seconds", "input": "yesterday"}),
        ),
        (
            "from=2026-01-02&to=2026-01-01",
            json!({"type": "value_error", "loc": ["query", "from"],
            "msg": "Value error, from must be before to", "input": "2026-01-02"}),
        ),
        (
            "bucket=week",
            json!({"type": "enum", "loc": ["query", "bucket"],
            "msg": "Input should be 'day' or 'hour'", "input": "week", "ctx": {"expected": "'day' or 'hour'"}}),
        ),
        (
            "top=0",
            json!({"type": "greater_than_equal", "loc": ["query", "top"],
            "msg": "Input should be greater than or equal to 1", "input": "0", "ctx": {"ge": 1}}),
        ),
        (
            "from=0&to=999999999&bucket=hour",
            json!({"type": "value_error", "loc": ["query", "bucket"],
            "msg": "Value error, at most 2000 buckets per answer", "input": "hour"}),
        ),
    ];
    for (query, issue) in cases {
        let response = app.get(&format!("/chat/analytics?{query}")).await;
        assert_eq!(response.status, StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        assert_eq!(response.json(), json!({"detail": [issue]}), "{query}");
    }
}

on_every_store!(
    analytics_count_exactly_within_the_key,
    bad_parameters_are_fastapi_422s
);
