//! "limit": what axum itself can do here, with no state. `POST /echo` parses
//! the seed's request and answers the seed's response shape; `GET /static`
//! hands out a prebuilt 100-exchange history body. Not a test: a server for
//! `benches/run.sh` (port from `BENCH_PORT`, default 18081).

use axum::body::Bytes;
use axum::http::header;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

mod common;
use common::ChatRequest;

#[derive(Serialize)]
struct ChatResponse {
    bot_reply: &'static str,
    user_message: String,
    user_name: String,
    session_id: String,
    timestamp: &'static str,
}

async fn echo(Json(request): Json<ChatRequest>) -> Json<ChatResponse> {
    Json(ChatResponse {
        bot_reply: "Hi there! How can I help you today?",
        user_message: request.user_message,
        user_name: request.user_name,
        session_id: request.session_id,
        timestamp: "2025-11-09 19:55:43",
    })
}

fn prebuilt_history() -> Bytes {
    let entry = r#"{"user_message":"Hello!","bot_reply":"Hi there! How can I help you today?","user_name":"Alice","timestamp":"2025-11-09 19:55:43"}"#;
    Bytes::from(format!("[{}]", vec![entry; 100].join(",")))
}

#[tokio::main]
async fn main() {
    let body = prebuilt_history();
    let app = Router::new().route("/echo", post(echo)).route(
        "/static",
        get(move || {
            let body = body.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], body) }
        }),
    );
    common::serve(app, 18081).await;
}
