//! One exchange of a history by its position: read it, correct its text,
//! or remove it (the seed's "can't edit messages").

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::domain::models::{ConversationEntry, SessionId};
use crate::domain::store::{At, Edit, Edited};
use crate::http::AppState;
use crate::http::auth::Owner;
use crate::http::docs::{
    ConversationErrors, DetailBody, HistoryEntry, MessagePatch, ValidationBody,
};
use crate::http::error::ApiError;
use crate::http::extract::{EditBody, PositionPath, SessionPath};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(read, patch, remove))
}

/// The 404 for a missing exchange: no session at all, or none at `n`.
async fn missing(state: &AppState, key: &str, session: String, position: usize) -> ApiError {
    match state.store.summary(key).await {
        Ok(Some(_)) => ApiError::NoMessage { session, position },
        Ok(None) => ApiError::NoHistory(session),
        Err(err) => err.into(),
    }
}

#[utoipa::path(get, path = "/chat/history/{session_id}/messages/{n}", operation_id = "get_message", tag = "chat",
    summary = "Read one exchange",
    params(
        ("session_id" = String, Path, description = "The conversation"),
        ("n" = u64, Path, minimum = 0, description = "The exchange's position, 0 for the oldest"),
    ),
    responses(
        (status = 200, description = "The exchange", body = HistoryEntry),
        (status = 404, description = "No history for this session, or no exchange at n", body = DetailBody),
        (status = 422, description = "n is not an integer from 0", body = ValidationBody),
        ConversationErrors,
    ))]
async fn read(
    State(state): State<AppState>,
    owner: Owner,
    SessionPath(session): SessionPath,
    PositionPath(n): PositionPath,
) -> Result<Json<ConversationEntry>, ApiError> {
    let key = owner.scope(&session);
    let page = crate::domain::store::Page {
        offset: n,
        limit: Some(1),
    };
    let found = state.store.history(&key, page).await?;
    match found.and_then(|mut page| page.entries.pop()) {
        Some(entry) => Ok(Json(entry)),
        None => Err(missing(&state, &key, session, n).await),
    }
}

#[utoipa::path(patch, path = "/chat/history/{session_id}/messages/{n}", operation_id = "edit_message", tag = "chat",
    summary = "Correct one exchange",
    description = "Replaces the text of the user's message, the bot's reply, or both; the rest of the exchange (name, time, position) stays. No new reply is made.",
    params(
        ("session_id" = String, Path, description = "The conversation"),
        ("n" = u64, Path, minimum = 0, description = "The exchange's position, 0 for the oldest"),
    ),
    request_body = MessagePatch,
    responses(
        (status = 200, description = "The exchange as now stored", body = HistoryEntry),
        (status = 404, description = "No history for this session, or no exchange at n", body = DetailBody),
        (status = 413, description = "Body larger than the limit", body = DetailBody),
        (status = 408, description = "The body arrived too slowly", body = DetailBody),
        (status = 422, description = "Invalid body, or n is not an integer from 0", body = ValidationBody),
        ConversationErrors,
    ))]
async fn patch(
    State(state): State<AppState>,
    owner: Owner,
    SessionPath(session): SessionPath,
    PositionPath(n): PositionPath,
    EditBody(edit): EditBody,
) -> Result<Json<ConversationEntry>, ApiError> {
    let key = SessionId::from_store_key(owner.scope(&session));
    let edit = Edit {
        user_message: edit.user_message.map(Arc::from),
        bot_reply: edit.bot_reply.map(Arc::from),
    };
    match state.store.edit(&key, At::Position(n), edit).await? {
        Some(Edited::Kept(exchange)) => Ok(Json(exchange.entry)),
        // Both texts are at least one character: an edit never empties one.
        Some(Edited::Removed(_)) | None => Err(missing(&state, key.as_str(), session, n).await),
    }
}

#[utoipa::path(delete, path = "/chat/history/{session_id}/messages/{n}", operation_id = "delete_message", tag = "chat",
    summary = "Remove one exchange",
    description = "For good: later exchanges move up one position. A session left without exchanges is gone (404 afterwards).",
    params(
        ("session_id" = String, Path, description = "The conversation"),
        ("n" = u64, Path, minimum = 0, description = "The exchange's position, 0 for the oldest"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No history for this session, or no exchange at n", body = DetailBody),
        (status = 422, description = "n is not an integer from 0", body = ValidationBody),
        ConversationErrors,
    ))]
async fn remove(
    State(state): State<AppState>,
    owner: Owner,
    SessionPath(session): SessionPath,
    PositionPath(n): PositionPath,
) -> Result<StatusCode, ApiError> {
    let key = SessionId::from_store_key(owner.scope(&session));
    match state
        .store
        .edit(&key, At::Position(n), Edit::remove())
        .await?
    {
        Some(_) => Ok(StatusCode::NO_CONTENT),
        None => Err(missing(&state, key.as_str(), session, n).await),
    }
}
