//! Requests per second per API key or token subject (or per client address
//! without one), with a burst allowance; over the limit: 429 with
//! `Retry-After`, in each API's shape.
//!
//! With `--redis-url` the buckets are the fleet's, in Redis
//! ([`FleetLimit`]), so an owner gets the same limit however many instances
//! serve it. Each instance also keeps its own buckets (`governor`), which
//! decide alone while Redis is unreachable: then the limit is per instance
//! (each request so decided counts in `chatbot_rate_limit_local_total`),
//! and shared again as soon as Redis answers.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Response, StatusCode, header};
use axum::middleware::Next;
use axum::response::IntoResponse;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::json;

use crate::domain::redis::Redis;
use crate::domain::redis::limit::FleetLimit;
use crate::http::auth::Auth;
use crate::http::v1::error::OpenAiError;

/// The buckets, shared by the seed API and `/v1`: a client's requests to
/// both drain the same one.
pub struct Limiter {
    auth: Arc<Auth>,
    local: DefaultKeyedRateLimiter<String>,
    fleet: Option<FleetLimit>,
}

/// How the limiter is shared between the routers.
pub type SharedLimiter = Arc<Limiter>;

/// Buckets for `per_second` requests per second with a burst of `burst`,
/// the fleet's in `redis` if given.
pub fn limiter(
    per_second: u32,
    burst: u32,
    auth: Arc<Auth>,
    redis: Option<Arc<Redis>>,
) -> SharedLimiter {
    let period = Duration::from_secs_f64(1.0 / f64::from(per_second.max(1)));
    let quota = Quota::with_period(period)
        .expect("the period is positive")
        .allow_burst(NonZeroU32::new(burst.max(1)).expect("at least 1"));
    Arc::new(Limiter {
        auth,
        local: RateLimiter::keyed(quota),
        fleet: redis.map(|redis| FleetLimit::new(redis, per_second, burst)),
    })
}

impl Limiter {
    /// Whose bucket a request drains: a known key's or valid token's owner,
    /// else the peer address (so floods of bad keys and tokens are limited
    /// too).
    fn bucket(&self, request: &Request) -> String {
        if let Some(owner) = self.auth.owner_cached(request.headers()) {
            return owner.prefix().to_owned();
        }
        // In-process tests have no peer address; they share one bucket.
        request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or_else(
                || "local".to_owned(),
                |ConnectInfo(addr)| addr.ip().to_string(),
            )
    }

    /// `None` if a request from `bucket` may go, else how long until it
    /// may: from the fleet's bucket while Redis answers, else from this instance's.
    async fn wait(&self, bucket: String) -> Option<Duration> {
        if let Some(fleet) = &self.fleet {
            if let Ok(wait) = fleet.check(&bucket).await {
                return wait;
            }
            metrics::counter!("chatbot_rate_limit_local_total").increment(1);
        }
        self.local
            .check_key(&bucket)
            .err()
            .map(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// The limit for the seed API: FastAPI-shaped 429s.
pub async fn limit(
    State(limiter): State<SharedLimiter>,
    request: Request,
    next: Next,
) -> Response<Body> {
    let bucket = limiter.bucket(&request);
    match limiter.wait(bucket).await {
        None => next.run(request).await,
        Some(wait) => too_many(seconds(wait)),
    }
}

/// The same buckets for `/v1`: OpenAI-shaped 429s.
pub async fn limit_openai(
    State(limiter): State<SharedLimiter>,
    request: Request,
    next: Next,
) -> Response<Body> {
    let bucket = limiter.bucket(&request);
    match limiter.wait(bucket).await {
        None => next.run(request).await,
        Some(wait) => too_many_openai(seconds(wait)),
    }
}

/// Whole seconds to wait, rounded up, at least 1.
fn seconds(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

/// FastAPI-shaped 429 with `Retry-After` in whole seconds.
fn too_many(wait: u64) -> Response<Body> {
    Response::builder()
        .status(StatusCode::TOO_MANY_REQUESTS)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::RETRY_AFTER, wait)
        .body(Body::from(
            json!({ "detail": "Rate limit exceeded" }).to_string(),
        ))
        .unwrap_or_default()
}

/// The same refusal in OpenAI's shape.
fn too_many_openai(wait: u64) -> Response<Body> {
    let error = OpenAiError {
        status: StatusCode::TOO_MANY_REQUESTS,
        message: format!("Rate limit exceeded: retry in {wait} s."),
        kind: "requests",
        param: None,
        code: Some("rate_limit_exceeded"),
    };
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(wait));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_round_up_to_whole_seconds() {
        assert_eq!(seconds(Duration::from_millis(1)), 1);
        assert_eq!(seconds(Duration::from_millis(1000)), 1);
        assert_eq!(seconds(Duration::from_millis(1001)), 2);
        assert_eq!(seconds(Duration::ZERO), 1);
    }
}
