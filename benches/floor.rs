//! "floor": the obvious port of the seed, the design card's
//! `Arc<RwLock<HashMap<String, Vec<Entry>>>>` storing `String`s, cloning the
//! `Vec` and serializing it on every GET. Not a test: a server for
//! `benches/run.sh` (port from `BENCH_PORT`, default 18082).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

mod common;
use common::ChatRequest;

#[derive(Clone, Serialize)]
struct Entry {
    user_message: String,
    bot_reply: String,
    user_name: String,
    timestamp: String,
}

#[derive(Serialize)]
struct ChatResponse {
    bot_reply: String,
    user_message: String,
    user_name: String,
    session_id: String,
    timestamp: String,
}

type Store = Arc<RwLock<HashMap<String, Vec<Entry>>>>;

fn reply(message: &str) -> &'static str {
    let lowered = message.to_lowercase();
    if lowered.contains("hello") {
        "Hi there! How can I help you today?"
    } else if lowered.contains("your name") {
        "I'm FastAPI Bot, your friendly assistant built with FastAPI!"
    } else if lowered.contains("fastapi") {
        "FastAPI is a modern, fast Python web framework for building APIs. It's awesome!"
    } else {
        "Interesting! I'm still learning..."
    }
}

async fn chat(State(store): State<Store>, Json(request): Json<ChatRequest>) -> Json<ChatResponse> {
    let bot_reply = reply(&request.user_message).to_owned();
    let timestamp = chrono::Local::now().format("%Y-%m-%d %H:%M:%S").to_string();
    let entry = Entry {
        user_message: request.user_message.clone(),
        bot_reply: bot_reply.clone(),
        user_name: request.user_name.clone(),
        timestamp: timestamp.clone(),
    };
    store
        .write()
        .unwrap()
        .entry(request.session_id.clone())
        .or_default()
        .push(entry);
    Json(ChatResponse {
        bot_reply,
        user_message: request.user_message,
        user_name: request.user_name,
        session_id: request.session_id,
        timestamp,
    })
}

async fn history(
    State(store): State<Store>,
    Path(id): Path<String>,
) -> Result<Json<Vec<Entry>>, StatusCode> {
    let entries = store.read().unwrap().get(&id).cloned();
    entries.map(Json).ok_or(StatusCode::NOT_FOUND)
}

#[tokio::main]
async fn main() {
    let store: Store = Arc::default();
    let app = Router::new()
        .route("/chat", post(chat))
        .route("/chat/history/{session_id}", get(history))
        .with_state(store);
    common::serve(app, 18082).await;
}
