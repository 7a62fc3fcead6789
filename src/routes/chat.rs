//! `POST /chat`: answer a message and store the exchange.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::models::{ChatRequest, ChatResponse, now};
use crate::store::NewExchange;

pub fn router() -> Router<AppState> {
    Router::new().route("/chat", post(chat))
}

/// Answers a message and stores the exchange; the reply is computed by the
/// store's append, from the session's history at that moment.
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
