//! The seed's debugging tips, mounted only with `--debug-endpoints`.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::AppState;
use crate::http::docs::{ConversationErrors, DebugSessions, StatusBody};
use crate::http::error::ApiError;

const PAGE: usize = 1000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(sessions))
        .routes(routes!(clear))
}

/// `{"total_sessions", "session_ids", "total_messages"}` over every session.
#[utoipa::path(get, path = "/debug/sessions", operation_id = "debug_list_sessions", tag = "service", summary = "Every session (debug)",
    description = "Only with `--debug-endpoints`.",
    responses((status = 200, description = "Every session id and the message count", body = DebugSessions), ConversationErrors))]
async fn sessions(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut ids = Vec::new();
    let mut total_messages = 0;
    let mut after: Option<String> = None;
    loop {
        let page = state.store.sessions("", after.as_deref(), PAGE).await?;
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
#[utoipa::path(post, path = "/debug/clear", operation_id = "debug_clear", tag = "service", summary = "Erase everything (debug)",
    description = "Only with `--debug-endpoints`. Erases every conversation.",
    responses((status = 200, description = "Everything erased", body = StatusBody, example = json!({"status": "cleared"})), ConversationErrors))]
async fn clear(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state.store.clear().await?;
    Ok(Json(json!({ "status": "cleared" })))
}
