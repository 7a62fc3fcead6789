//! Shared test plumbing: build the app in-process and send it requests.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use chatbot_api::chatbot::Chatbot;
use chatbot_api::models::Limits;
use chatbot_api::store::{MemoryStore, Store};
use chatbot_api::{AppState, app};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

/// The router over a fresh in-memory store.
pub struct TestApp {
    pub router: Router,
}

/// What came back: status, headers and the raw body.
#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl TestResponse {
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("utf-8 body")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header"))
    }
}

impl TestApp {
    pub fn new() -> Self {
        Self::with_store(Arc::new(MemoryStore::new()), Limits::default())
    }

    pub fn with_store(store: Arc<dyn Store>, limits: Limits) -> Self {
        Self {
            router: app(AppState::new(store, Chatbot::seed(), limits)),
        }
    }

    pub async fn send(&self, request: Request<Body>) -> TestResponse {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes().to_vec();
        TestResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// `POST /chat` with a JSON content type and `body` as given, byte for byte.
    pub async fn post_chat(&self, body: impl Into<Body>) -> TestResponse {
        self.request(Method::POST, "/chat", Some("application/json"), body)
            .await
    }

    pub async fn request(
        &self,
        method: Method,
        uri: &str,
        content_type: Option<&str>,
        body: impl Into<Body>,
    ) -> TestResponse {
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(content_type) = content_type {
            builder = builder.header("content-type", content_type);
        }
        self.send(builder.body(body.into()).expect("request")).await
    }

    pub async fn get(&self, uri: &str) -> TestResponse {
        self.request(Method::GET, uri, None, Body::empty()).await
    }

    /// Posts a message and asserts it was accepted.
    pub async fn say(&self, session: &str, user: &str, message: &str) -> Value {
        let body =
            serde_json::json!({"user_message": message, "user_name": user, "session_id": session});
        let response = self.post_chat(body.to_string()).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        response.json()
    }
}

/// Asserts a timestamp has the seed's `%Y-%m-%d %H:%M:%S` shape and is recent.
pub fn assert_recent_timestamp(value: &Value) {
    let text = value.as_str().expect("timestamp is a string");
    let parsed = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S")
        .unwrap_or_else(|e| panic!("bad timestamp {text:?}: {e}"));
    let now = chrono::Local::now().naive_local();
    let age = now.signed_duration_since(parsed).num_seconds();
    assert!(
        (-2..=60).contains(&age),
        "timestamp {text} is {age}s from now"
    );
}

/// Replaces every `timestamp` field so that bodies compare exactly.
pub fn without_timestamps(mut value: Value) -> Value {
    match &mut value {
        Value::Object(map) => {
            if let Some(ts) = map.get_mut("timestamp") {
                assert_recent_timestamp(ts);
                *ts = Value::String("TS".into());
            }
        }
        Value::Array(items) => {
            for item in items.iter_mut() {
                *item = without_timestamps(item.take());
            }
        }
        _ => {}
    }
    value
}
