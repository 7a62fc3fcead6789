//! Across sessions: list them in pages, search their exchanges.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::domain::models::{Found, could_be_session_id};
use crate::domain::store::Search;
use crate::http::AppState;
use crate::http::auth::Owner;
use crate::http::docs::{ConversationErrors, SearchHit, SessionItem, ValidationBody};
use crate::http::error::ApiError;
use crate::http::extract::QueryParams;

/// Page size bounds of the session list and of search results.
const MAX_LIMIT: i64 = 1000;
const DEFAULT_LIMIT: i64 = 100;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(search))
}

/// Sessions sorted by id, `limit` at a time; `after` is the last id of the
/// previous page, so paging sees every session once even while new ones appear.
#[utoipa::path(get, path = "/chat/sessions", operation_id = "list_sessions", tag = "sessions", summary = "List sessions",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size (default 100)"),
        ("after" = Option<String>, Query, description = "The last session_id of the previous page"),
    ),
    responses(
        (status = 200, description = "Sessions sorted by id", body = Vec<SessionItem>,
            headers(("link" = String, description = "`<…>; rel=\"next\"` while more remain"))),
        (status = 422, description = "Invalid query parameters", body = ValidationBody),
        ConversationErrors,
    ))]
async fn list(
    State(state): State<AppState>,
    owner: Owner,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    let limit = query.int("limit", 1, MAX_LIMIT).unwrap_or(DEFAULT_LIMIT) as usize;
    let after = query.raw("after").map(str::to_owned);
    query.finish()?;
    // One extra row tells whether another page follows.
    // No id contains NUL, so "after a\0b" is "after a"; PostgreSQL could not take it.
    let after = after.map(|after| owner.scope(after.split('\0').next().unwrap_or_default()));
    let mut sessions = state
        .store
        .sessions(owner.prefix(), after.as_deref(), limit + 1)
        .await?;
    let more = sessions.len() > limit;
    sessions.truncate(limit);
    for summary in &mut sessions {
        summary.session_id = owner.unscope(std::mem::take(&mut summary.session_id));
    }
    let mut headers = HeaderMap::new();
    if more && let Some(last) = sessions.last() {
        let next: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("limit", &limit.to_string())
            .append_pair("after", &last.session_id)
            .finish();
        if let Ok(value) = HeaderValue::from_str(&format!("</chat/sessions?{next}>; rel=\"next\""))
        {
            headers.insert(header::LINK, value);
        }
    }
    Ok((headers, Json(sessions)).into_response())
}

/// Exchanges whose message or reply contains `q` (case-insensitive), newest first.
#[utoipa::path(get, path = "/chat/search", operation_id = "search_messages", tag = "sessions", summary = "Search exchanges",
    params(
        ("q" = String, Query, min_length = 1, description = "Text to find in messages and replies, case-insensitively"),
        ("session_id" = Option<String>, Query, description = "Search one session only"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Most hits (default 100)"),
    ),
    responses(
        (status = 200, description = "Hits, newest first", body = Vec<SearchHit>),
        (status = 422, description = "Invalid query parameters", body = ValidationBody),
        ConversationErrors,
    ))]
async fn search(
    State(state): State<AppState>,
    owner: Owner,
    mut query: QueryParams,
) -> Result<Json<Vec<Found>>, ApiError> {
    let text = query.text("q", true);
    let session_id = query.raw("session_id").map(str::to_owned);
    let limit = query.int("limit", 1, MAX_LIMIT).unwrap_or(DEFAULT_LIMIT) as usize;
    query.finish()?;
    let search = Search {
        prefix: owner.prefix().to_owned(),
        text: text.unwrap_or_default().to_lowercase(),
        session_id: session_id.map(|id| owner.scope(&id)),
        limit,
    };
    // Stored text never holds NUL, nor a session id a control character or '/':
    // such a search finds nothing, without asking the store.
    let impossible = search.text.contains('\0')
        || search
            .session_id
            .as_deref()
            .is_some_and(|id| !could_be_session_id(owner.unscope(id.to_owned()).as_str()));
    if impossible {
        return Ok(Json(Vec::new()));
    }
    let mut found = state.store.search(&search).await?;
    for hit in &mut found {
        hit.session_id = owner.unscope(std::mem::take(&mut hit.session_id));
    }
    Ok(Json(found))
}
