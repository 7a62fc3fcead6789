//! `GET /health`: a liveness probe that touches no storage.

use axum::Json;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::AppState;
use crate::http::docs::StatusBody;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(health))
}

/// Always `{"status":"ok"}` while the process serves.
#[utoipa::path(get, path = "/health", operation_id = "health", tag = "service", summary = "Liveness",
    responses((status = 200, description = "Serving", body = StatusBody)))]
async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}
