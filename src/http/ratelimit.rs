//! Requests per second per API key (or per client address without one),
//! with a burst allowance, by `tower_governor`; over the limit: 429 with
//! `Retry-After`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use governor::middleware::NoOpMiddleware;
use serde_json::json;
use tower_governor::GovernorError;
use tower_governor::GovernorLayer;
use tower_governor::governor::{GovernorConfig, GovernorConfigBuilder};
use tower_governor::key_extractor::KeyExtractor;

use crate::http::auth::Auth;
use crate::http::v1::error::OpenAiError;

/// Whose bucket a request drains: a known key's or valid token's owner,
/// else the peer address (so floods of bad keys and tokens are limited too).
#[derive(Clone)]
pub struct ClientKey {
    auth: Arc<Auth>,
}

impl KeyExtractor for ClientKey {
    type Key = String;

    fn extract<T>(&self, request: &Request<T>) -> Result<Self::Key, GovernorError> {
        if let Some(owner) = self.auth.owner_cached(request.headers()) {
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

/// One set of buckets: shared by every layer made from it, so a client's
/// requests to the seed API and to `/v1` drain the same bucket.
pub type Limiter = Arc<GovernorConfig<ClientKey, NoOpMiddleware>>;

/// Buckets for `per_second` requests per second with a burst of `burst`.
pub fn limiter(per_second: u32, burst: u32, auth: Arc<Auth>) -> Limiter {
    Arc::new(
        GovernorConfigBuilder::default()
            .period(Duration::from_secs_f64(1.0 / f64::from(per_second.max(1))))
            .burst_size(burst.max(1))
            .key_extractor(ClientKey { auth })
            .finish()
            .expect("period and burst are positive"),
    )
}

/// The layer for the seed API: FastAPI-shaped 429s.
pub fn layer(limiter: &Limiter) -> GovernorLayer<ClientKey, NoOpMiddleware, Body> {
    GovernorLayer::new(limiter.clone()).error_handler(too_many)
}

/// The layer for `/v1`: the same buckets, OpenAI-shaped 429s.
pub fn openai_layer(limiter: &Limiter) -> GovernorLayer<ClientKey, NoOpMiddleware, Body> {
    GovernorLayer::new(limiter.clone()).error_handler(too_many_openai)
}

/// How long to wait, and whether the error is a refusal at all.
fn refusal(error: &GovernorError) -> (u64, bool) {
    match error {
        GovernorError::TooManyRequests { wait_time, .. } => ((*wait_time).max(1), true),
        _ => (1, false),
    }
}

/// FastAPI-shaped 429 with `Retry-After` in whole seconds (at least 1).
fn too_many(error: GovernorError) -> Response<Body> {
    let (wait, refused) = refusal(&error);
    let (status, detail) = if refused {
        (StatusCode::TOO_MANY_REQUESTS, "Rate limit exceeded")
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
    };
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::RETRY_AFTER, wait.to_string())
        .body(Body::from(json!({ "detail": detail }).to_string()))
        .unwrap_or_default()
}

/// The same refusal in OpenAI's shape.
fn too_many_openai(error: GovernorError) -> Response<Body> {
    let (wait, refused) = refusal(&error);
    let error = if refused {
        OpenAiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!("Rate limit exceeded: retry in {wait} s."),
            kind: "requests",
            param: None,
            code: Some("rate_limit_exceeded"),
        }
    } else {
        OpenAiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "The server had an error while processing your request.".into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    };
    let mut response = error.into_response();
    if let Ok(value) = header::HeaderValue::from_str(&wait.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}
