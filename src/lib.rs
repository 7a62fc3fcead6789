//! chatbot-api: a conversation-history chat server that speaks the FastAPI
//! tutorial server's wire format byte for byte.
//!
//! [`app`] builds the whole router from an [`AppState`], so tests can drive it
//! in-process; [`serve`] runs it on a listener until a shutdown signal.

pub mod chatbot;
pub mod config;
pub mod docs;
pub mod error;
pub mod export;
pub mod extract;
pub mod models;
pub mod routes;
pub mod store;
pub mod telemetry;

use std::any::Any;
use std::future::Future;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::FromRef;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::chatbot::Chatbot;
use crate::models::Limits;
use crate::store::Store;

/// What every handler shares: the store, the reply engine and the limits.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub chatbot: Arc<Chatbot>,
    pub limits: Limits,
    /// Mount the seed's `/debug/*` endpoints (which can erase everything).
    pub debug_endpoints: bool,
}

impl AppState {
    pub fn new(store: Arc<dyn Store>, chatbot: Chatbot, limits: Limits) -> Self {
        Self {
            store,
            chatbot: Arc::new(chatbot),
            limits,
            debug_endpoints: false,
        }
    }

    /// The same state with the debug endpoints on or off.
    pub fn with_debug_endpoints(mut self, on: bool) -> Self {
        self.debug_endpoints = on;
        self
    }
}

impl FromRef<AppState> for Limits {
    fn from_ref(state: &AppState) -> Self {
        state.limits
    }
}

/// The whole HTTP application: the documented routes, `/openapi.json`,
/// Swagger UI at `/docs`, and FastAPI's 404/405 bodies for everything else.
pub fn app(state: AppState) -> Router {
    let (router, api) = api_router(&state).split_for_parts();
    router
        .merge(SwaggerUi::new("/docs").url("/openapi.json", api))
        // Applies to the routes above, so it comes after them.
        .method_not_allowed_fallback(error::method_not_allowed)
        .fallback(error::not_found)
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(telemetry::trace_layer())
        .with_state(state)
}

/// Every route with its OpenAPI operation: registering a route through
/// `utoipa_axum::routes!` is what documents it.
pub fn api_router(state: &AppState) -> OpenApiRouter<AppState> {
    let mut router = OpenApiRouter::with_openapi(docs::ApiDoc::openapi())
        .merge(routes::chat::router())
        .merge(routes::history::router())
        .merge(routes::sessions::router())
        .merge(routes::health::router())
        .merge(routes::ui::router());
    if state.debug_endpoints {
        router = router.merge(routes::debug::router());
    }
    router
}

/// The OpenAPI document served at `/openapi.json`.
pub fn openapi(state: &AppState) -> utoipa::openapi::OpenApi {
    api_router(state).into_openapi()
}

/// A panic in a handler becomes a bare 500: logged here, never shown.
fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!(panic = message, "handler panicked");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({ "detail": "Internal Server Error" })),
    )
        .into_response()
}

/// Serves `state` on `listener` until `shutdown` completes; requests already
/// in flight are allowed to finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}
