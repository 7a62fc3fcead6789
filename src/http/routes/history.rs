//! One session's history: read (whole or in pages), stats, delete, export.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::domain::export::{ExportFormat, export};
use crate::domain::models::SessionStats;
use crate::domain::store::Page;
use crate::http::AppState;
use crate::http::auth::Owner;
use crate::http::docs::{ConversationErrors, DetailBody, HistoryEntry, StatsBody, ValidationBody};
use crate::http::error::ApiError;
use crate::http::extract::{QueryParams, SessionPath};
use crate::http::json::JsonBody;

/// The most exchanges one page may ask for.
pub const MAX_PAGE: i64 = 10_000;

/// Characters escaped in a path segment we write into a `Link` header.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'\\')
    .add(b'^')
    .add(b'|');

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(history, delete))
        .routes(routes!(stats))
        .routes(routes!(download))
}

/// The session's exchanges, oldest first; `offset`/`limit` page through them.
#[utoipa::path(get, path = "/chat/history/{session_id}", operation_id = "get_history", tag = "chat", summary = "Read a conversation",
    description = "Without parameters: the whole history, as the seed server answers.",
    params(
        ("session_id" = String, Path, description = "The conversation (percent-decoded)"),
        ("offset" = Option<u64>, Query, minimum = 0, maximum = 9_223_372_036_854_775_807_u64, description = "Exchanges to skip"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 10000, description = "Page size"),
    ),
    responses(
        (status = 200, description = "Exchanges, oldest first", body = Vec<HistoryEntry>,
            headers(
                ("x-total-count" = u64, description = "The session's size"),
                ("link" = String, description = "`<…>; rel=\"next\"` while more remain"),
            )),
        (status = 404, description = "No history for this session", body = DetailBody),
        (status = 422, description = "Invalid query parameters", body = ValidationBody),
        ConversationErrors,
    ))]
async fn history(
    State(state): State<AppState>,
    owner: Owner,
    SessionPath(session): SessionPath,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    let offset = query.int("offset", 0, i64::MAX);
    let limit = query.int("limit", 1, MAX_PAGE);
    query.finish()?;
    let page = Page {
        offset: offset.unwrap_or(0) as usize,
        limit: limit.map(|l| l as usize),
    };
    let found = state
        .store
        .history_json(&owner.scope(&session), page)
        .await?;
    let Some(found) = found.filter(|f| f.total > 0) else {
        return Err(ApiError::NoHistory(session));
    };
    let mut headers = HeaderMap::new();
    headers.insert("x-total-count", HeaderValue::from(found.total));
    let next = page.offset.saturating_add(found.count);
    if let Some(limit) = page.limit
        && next < found.total
    {
        let path = utf8_percent_encode(&session, SEGMENT);
        let link = format!("</chat/history/{path}?offset={next}&limit={limit}>; rel=\"next\"");
        if let Ok(value) = HeaderValue::from_str(&link) {
            headers.insert(header::LINK, value);
        }
    }
    Ok((headers, JsonBody(found.body)).into_response())
}

/// `{"total_messages", "first_message_time", "last_message_time"}`.
#[utoipa::path(get, path = "/chat/history/{session_id}/stats", operation_id = "get_conversation_stats", tag = "chat", summary = "Conversation stats",
    params(("session_id" = String, Path, description = "The conversation")),
    responses(
        (status = 200, description = "The conversation's size and time span", body = StatsBody),
        (status = 404, description = "No history for this session", body = DetailBody),
        ConversationErrors,
    ))]
async fn stats(
    State(state): State<AppState>,
    owner: Owner,
    SessionPath(session): SessionPath,
) -> Result<Json<SessionStats>, ApiError> {
    match state.store.summary(&owner.scope(&session)).await? {
        Some(summary) => Ok(Json(SessionStats(summary))),
        None => Err(ApiError::NoHistory(session)),
    }
}

/// Removes the whole conversation; the id is free for a new one at once.
#[utoipa::path(delete, path = "/chat/history/{session_id}", operation_id = "delete_conversation", tag = "chat", summary = "Delete a conversation",
    params(("session_id" = String, Path, description = "The conversation")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No history for this session", body = DetailBody),
        ConversationErrors,
    ))]
async fn delete(
    State(state): State<AppState>,
    owner: Owner,
    SessionPath(session): SessionPath,
) -> Result<StatusCode, ApiError> {
    if state.store.delete(&owner.scope(&session)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NoHistory(session))
    }
}

/// The whole conversation as a download: JSON lines, CSV or Markdown.
#[utoipa::path(get, path = "/chat/history/{session_id}/export", operation_id = "export_conversation", tag = "chat", summary = "Download a conversation",
    params(
        ("session_id" = String, Path, description = "The conversation"),
        ("format" = Option<ExportFormat>, Query, description = "`jsonl` (default), `csv` or `markdown`"),
    ),
    responses(
        (status = 200, description = "An attachment",
            content(
                (String = "application/x-ndjson"),
                (String = "text/csv; charset=utf-8"),
                (String = "text/markdown; charset=utf-8"),
            ),
            headers(("content-disposition" = String, description = "attachment; filename=…"))),
        (status = 404, description = "No history for this session", body = DetailBody),
        (status = 422, description = "Invalid query parameters", body = ValidationBody),
        ConversationErrors,
    ))]
async fn download(
    State(state): State<AppState>,
    owner: Owner,
    SessionPath(session): SessionPath,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    let format = query.choice("format", ExportFormat::NAMES, "jsonl");
    query.finish()?;
    let format = ExportFormat::from_name(format).unwrap_or(ExportFormat::Jsonl);
    let Some(found) = state
        .store
        .history(&owner.scope(&session), Page::default())
        .await?
    else {
        return Err(ApiError::NoHistory(session));
    };
    let body = export(format, &session, &found.entries);
    let filename = utf8_percent_encode(&session, percent_encoding::NON_ALPHANUMERIC);
    let disposition = format!(
        "attachment; filename=\"conversation.{ext}\"; filename*=UTF-8''{filename}.{ext}",
        ext = format.extension()
    );
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok((headers, body).into_response())
}
