//! The seed's debugging tips, mounted only with `--debug-endpoints`.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;

const PAGE: usize = 1000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/debug/sessions", get(sessions))
        .route("/debug/clear", post(clear))
}

/// `{"total_sessions", "session_ids", "total_messages"}` over every session.
async fn sessions(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut ids = Vec::new();
    let mut total_messages = 0;
    let mut after: Option<String> = None;
    loop {
        let page = state.store.sessions(after.as_deref(), PAGE).await?;
        let full = page.len() == PAGE;
        for summary in page {
            total_messages += summary.total_messages;
            ids.push(summary.session_id);
        }
        if !full {
            break;
        }
        after = ids.last().cloned();
    }
    Ok(Json(json!({
        "total_sessions": ids.len(),
        "session_ids": ids,
        "total_messages": total_messages,
    })))
}

/// Erases every conversation.
async fn clear(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state.store.clear().await?;
    Ok(Json(json!({ "status": "cleared" })))
}
