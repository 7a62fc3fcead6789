//! Across sessions: list them in pages, search their exchanges.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::QueryParams;
use crate::models::Found;
use crate::store::Search;

/// Page size bounds of the session list and of search results.
const MAX_LIMIT: i64 = 1000;
const DEFAULT_LIMIT: i64 = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/chat/sessions", get(list))
        .route("/chat/search", get(search))
}

/// Sessions sorted by id, `limit` at a time; `after` is the last id of the
/// previous page, so paging sees every session once even while new ones appear.
async fn list(State(state): State<AppState>, mut query: QueryParams) -> Result<Response, ApiError> {
    let limit = query.int("limit", 1, MAX_LIMIT).unwrap_or(DEFAULT_LIMIT) as usize;
    let after = query.raw("after").map(str::to_owned);
    query.finish()?;
    // One extra row tells whether another page follows.
    let mut sessions = state.store.sessions(after.as_deref(), limit + 1).await?;
    let more = sessions.len() > limit;
    sessions.truncate(limit);
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
async fn search(
    State(state): State<AppState>,
    mut query: QueryParams,
) -> Result<Json<Vec<Found>>, ApiError> {
    let text = query.text("q", true);
    let session_id = query.raw("session_id").map(str::to_owned);
    let limit = query.int("limit", 1, MAX_LIMIT).unwrap_or(DEFAULT_LIMIT) as usize;
    query.finish()?;
    let search = Search {
        text: text.unwrap_or_default().to_lowercase(),
        session_id,
        limit,
    };
    Ok(Json(state.store.search(&search).await?))
}
