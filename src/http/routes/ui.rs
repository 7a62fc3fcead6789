//! `/`: the chat page for a browser, a small JSON index for everyone else;
//! `/dashboard`: charts of what the bot did and a conversations browser.

use axum::Json;
use axum::http::{HeaderMap, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::AppState;

/// The page, HTML, CSS and script in one file, built into the binary: it
/// loads nothing from anywhere else.
const PAGE: &str = include_str!("../ui/index.html");
/// The dashboard, likewise one file; its charts are SVG it draws itself.
const DASHBOARD: &str = include_str!("../ui/dashboard.html");

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(index))
        .routes(routes!(dashboard))
}

/// The dashboard page. It takes an API key like the chat page; the data
/// it shows comes from `/chat/analytics`, `/chat/sessions`, `/chat/search`
/// and `/chat/history/…`, within that key's scope.
#[utoipa::path(get, path = "/dashboard", operation_id = "dashboard", tag = "service", summary = "Dashboard page",
    responses((status = 200, description = "The dashboard, HTML", content_type = "text/html; charset=utf-8", body = String)))]
async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD)
}

/// What `/` answers a client that does not ask for HTML.
#[derive(Serialize, ToSchema)]
pub struct Index {
    pub name: &'static str,
    pub version: &'static str,
    pub docs: &'static str,
    pub openapi: &'static str,
    pub endpoints: Vec<&'static str>,
}

/// A browser (`Accept: text/html`) gets the chat page; anyone else an index.
#[utoipa::path(get, path = "/", operation_id = "index", tag = "service", summary = "Chat page or index",
    responses((status = 200, description = "The chat page for `Accept: text/html`, else a JSON index",
        content((Index = "application/json"), (String = "text/html; charset=utf-8")))))]
async fn index(headers: HeaderMap) -> Response {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    if wants_html {
        return Html(PAGE).into_response();
    }
    Json(Index {
        name: "chatbot-api",
        version: env!("CARGO_PKG_VERSION"),
        docs: "/docs",
        openapi: "/openapi.json",
        endpoints: vec![
            "POST /chat",
            "GET /chat/history/{session_id}",
            "DELETE /chat/history/{session_id}",
            "GET /chat/history/{session_id}/stats",
            "GET /chat/history/{session_id}/export",
            "GET|PATCH|DELETE /chat/history/{session_id}/messages/{n}",
            "GET /chat/sessions",
            "GET /chat/search",
            "GET /chat/analytics",
            "GET /health",
            "GET /metrics",
            "GET /dashboard",
            "/v1: the OpenAI API (conversations, items, responses, chat/completions, models)",
        ],
    })
    .into_response()
}
