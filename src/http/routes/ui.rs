//! `/`: the chat page for a browser, a small JSON index for everyone else;
//! `/dashboard`: charts of what the bot did and a conversations browser;
//! `/ui/…`: their scripts and style sheets.
//!
//! The pages carry nothing inline (no `<script>` or `<style>` blocks, no
//! `style=` or `on…=` attributes, no `javascript:` URLs), so they are served
//! under a strict Content-Security-Policy: a script that found its way into
//! a page would not run.

use axum::Json;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::AppState;

/// The chat page, built into the binary like everything under `/ui/`: it
/// loads nothing from anywhere else.
const PAGE: &str = include_str!("../ui/index.html");
/// The dashboard; its charts are SVG it draws itself.
const DASHBOARD: &str = include_str!("../ui/dashboard.html");
/// Sign-in, sign-up and sign-out, shared by both pages.
const SESSION_JS: &str = include_str!("../ui/session.js");
const CHAT_JS: &str = include_str!("../ui/chat.js");
const CHAT_CSS: &str = include_str!("../ui/chat.css");
const DASHBOARD_JS: &str = include_str!("../ui/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("../ui/dashboard.css");

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The pages' policy: scripts, styles and requests from this server only,
/// no inline script or style, never framed.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
    base-uri 'none'; form-action 'self'; object-src 'none'";

/// What every page gets besides its Content-Security-Policy.
pub const SECURITY_HEADERS: [(&str, &str); 4] = [
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-opener-policy", "same-origin"),
];

/// Sets `csp` as the Content-Security-Policy and [`SECURITY_HEADERS`].
pub fn add_security_headers(headers: &mut HeaderMap, csp: &'static str) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    for (name, value) in SECURITY_HEADERS {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
}

/// An HTML page under [`CONTENT_SECURITY_POLICY`] and [`SECURITY_HEADERS`].
pub fn secure_page(html: &'static str) -> Response {
    let mut response = html.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    add_security_headers(headers, CONTENT_SECURITY_POLICY);
    response
}

/// A script or style sheet of the pages: checked again on each load (they
/// change with the binary), never sniffed as anything else.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(index))
        .routes(routes!(dashboard))
        .routes(routes!(asset_file))
}

/// One of the pages' scripts or style sheets.
#[utoipa::path(get, path = "/ui/{file}", operation_id = "ui_asset", tag = "service", summary = "A page's script or style sheet",
    params(("file" = String, Path, description = "`session.js`, `chat.js`, `chat.css`, `dashboard.js` or `dashboard.css`")),
    responses(
        (status = 200, description = "The file", content((String = "text/javascript; charset=utf-8"), (String = "text/css; charset=utf-8"))),
        (status = 404, description = "No such file", body = crate::http::docs::DetailBody),
    ))]
async fn asset_file(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    match file.as_str() {
        "session.js" => asset(JAVASCRIPT, SESSION_JS),
        "chat.js" => asset(JAVASCRIPT, CHAT_JS),
        "chat.css" => asset(CSS, CHAT_CSS),
        "dashboard.js" => asset(JAVASCRIPT, DASHBOARD_JS),
        "dashboard.css" => asset(CSS, DASHBOARD_CSS),
        _ => (
            axum::http::StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "detail": "No such file" })),
        )
            .into_response(),
    }
}

/// The dashboard page. It takes an API key like the chat page, or a
/// sign-in when the server has accounts; the data it shows comes from
/// `/chat/analytics`, `/chat/sessions`, `/chat/search` and
/// `/chat/history/…`, within that caller's scope.
#[utoipa::path(get, path = "/dashboard", operation_id = "dashboard", tag = "service", summary = "Dashboard page",
    responses((status = 200, description = "The dashboard, HTML", content_type = "text/html; charset=utf-8", body = String)))]
async fn dashboard() -> Response {
    secure_page(DASHBOARD)
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
        return secure_page(PAGE);
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
            "POST /auth/token",
            "POST /auth/register",
            "GET /auth/me",
            "GET /admin/users",
            "GET /health",
            "GET /metrics",
            "GET /dashboard",
            "/v1: the OpenAI API (conversations, items, responses, chat/completions, models)",
        ],
    })
    .into_response()
}
