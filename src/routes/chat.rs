//! `POST /chat` and `GET /chat/history/{session_id}`: the seed's two routes.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{JsonBody, SessionPath};
use crate::models::{ChatRequest, ChatResponse, ConversationEntry, now};
use crate::store::NewExchange;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/chat", post(chat))
        .route("/chat/history/{session_id}", get(history))
}

/// Answers a message and stores the exchange.
async fn chat(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Json<ChatResponse>, ApiError> {
    let request = ChatRequest::parse(body, &state.limits).map_err(ApiError::Validation)?;
    let exchange = NewExchange {
        user_message: request.user_message.into(),
        user_name: request.user_name.into(),
        timestamp: now(),
    };
    let entry = state
        .store
        .append(&request.session_id, exchange, state.chatbot.clone())
        .await?;
    Ok(Json(ChatResponse {
        session_id: request.session_id,
        entry,
    }))
}

/// The session's exchanges, oldest first.
async fn history(
    State(state): State<AppState>,
    SessionPath(session): SessionPath,
) -> Result<Json<Vec<ConversationEntry>>, ApiError> {
    match state.store.history(&session).await? {
        Some(entries) if !entries.is_empty() => Ok(Json(entries)),
        _ => Err(ApiError::NoHistory(session)),
    }
}
