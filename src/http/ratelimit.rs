//! Requests per second per API key (or per client address without one),
//! with a burst allowance, by `tower_governor`; over the limit: 429 with
//! `Retry-After`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode, header};
use governor::middleware::NoOpMiddleware;
use serde_json::json;
use tower_governor::GovernorError;
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;

use crate::http::auth::{ApiKeys, presented_key};

/// Whose bucket a request drains: a known key's owner, else the peer address.
#[derive(Clone)]
pub struct ClientKey {
    keys: Arc<ApiKeys>,
}

impl KeyExtractor for ClientKey {
    type Key = String;

    fn extract<T>(&self, request: &Request<T>) -> Result<Self::Key, GovernorError> {
        if let Some(owner) =
            presented_key(request.headers()).and_then(|key| self.keys.owner_of(key))
        {
            return Ok(owner.prefix().to_owned());
        }
        // In-process tests have no peer address; they share one bucket.
        Ok(request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or_else(
                || "local".to_owned(),
                |ConnectInfo(addr)| addr.ip().to_string(),
            ))
    }
}

/// The layer for `per_second` requests per second with a burst of `burst`.
pub fn layer(
    per_second: u32,
    burst: u32,
    keys: Arc<ApiKeys>,
) -> GovernorLayer<ClientKey, NoOpMiddleware, Body> {
    let config = GovernorConfigBuilder::default()
        .period(Duration::from_secs_f64(1.0 / f64::from(per_second.max(1))))
        .burst_size(burst.max(1))
        .key_extractor(ClientKey { keys })
        .finish()
        .expect("period and burst are positive");
    GovernorLayer::new(Arc::new(config)).error_handler(too_many)
}

/// FastAPI-shaped 429 with `Retry-After` in whole seconds (at least 1).
fn too_many(error: GovernorError) -> Response<Body> {
    let wait = match &error {
        GovernorError::TooManyRequests { wait_time, .. } => (*wait_time).max(1),
        _ => 1,
    };
    let status = match error {
        GovernorError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let detail = if status == StatusCode::TOO_MANY_REQUESTS {
        "Rate limit exceeded"
    } else {
        "Internal Server Error"
    };
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::RETRY_AFTER, wait.to_string())
        .body(Body::from(json!({ "detail": detail }).to_string()))
        .unwrap_or_default()
}
