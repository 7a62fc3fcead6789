//! Prometheus metrics: the recorder, `GET /metrics`, and the layer that
//! counts every request by method, matched route (never the raw path) and
//! status, with its duration.
//!
//! What the domain records itself: `chatbot_replies_total{source,rule}`
//! (`domain::replies`), `chatbot_group_commit_exchanges` and
//! `chatbot_group_commit_duration_seconds` (the durable stores' writers).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::AppState;
use crate::http::docs::{ConversationErrors, DetailBody};

/// Bucket bounds for durations: 100 µs to 10 s.
const SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Bucket bounds for exchanges per group commit.
const GROUP_SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// The process's recorder, installed on first use (`None` if another
/// recorder was installed first).
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("chatbot_group_commit_exchanges".into()),
                        GROUP_SIZES,
                    )
                })
                .and_then(|b| b.install_recorder())
                .map_err(|err| tracing::warn!(error = %err, "no metrics recorder"))
                .ok()
        })
        .as_ref()
}

/// The request counter and duration histogram of one method, route and
/// status.
type Handles = (&'static str, u16, Counter, Histogram);

thread_local! {
    /// Handles already registered, by route: finding them again costs a
    /// hash of the route and a short scan, no allocation and no lookup in
    /// the recorder's registry (which builds a key from owned labels).
    static HANDLES: RefCell<HashMap<Box<str>, Vec<Handles>>> = RefCell::new(HashMap::new());
}

/// Counts the request (`http_requests_total`) and times it
/// (`http_request_duration_seconds`) by method, matched route and status.
pub async fn track(request: Request, next: Next) -> Response {
    let method = method_label(request.method());
    let route = request.extensions().get::<MatchedPath>().cloned();
    let started = Instant::now();
    let response = next.run(request).await;
    let elapsed = started.elapsed().as_secs_f64();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let status = response.status().as_u16();
    let (requests, duration) = handles(route, method, status);
    requests.increment(1);
    duration.record(elapsed);
    response
}

/// The method as a label; any method but the usual ones is `OTHER`, so a
/// client cannot grow the number of series.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

fn handles(route: &str, method: &'static str, status: u16) -> (Counter, Histogram) {
    HANDLES.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(found) = cache
            .get(route)
            .and_then(|list| list.iter().find(|h| h.0 == method && h.1 == status))
        {
            return (found.2.clone(), found.3.clone());
        }
        let labels = [
            ("method", method.to_owned()),
            ("route", route.to_owned()),
            ("status", status.to_string()),
        ];
        let counter = metrics::counter!("http_requests_total", &labels);
        let histogram = metrics::histogram!("http_request_duration_seconds", &labels);
        cache.entry(route.into()).or_default().push((
            method,
            status,
            counter.clone(),
            histogram.clone(),
        ));
        (counter, histogram)
    })
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(scrape))
}

/// Every metric in Prometheus's text format.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "service", summary = "Prometheus metrics",
    description = "Requests by method, route and status (`http_requests_total`, `http_request_duration_seconds`), group commits (`chatbot_group_commit_exchanges`, `chatbot_group_commit_duration_seconds`), stored sessions and exchanges (`chatbot_sessions`, `chatbot_exchanges`), replies by source and rule (`chatbot_replies_total`; `source=\"fallback\"` are the messages no rule answered). Needs a key when the server has keys.",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain; version=0.0.4; charset=utf-8", body = String),
        (status = 503, description = "No metrics recorder in this process", body = DetailBody),
        ConversationErrors,
    ))]
async fn scrape(State(state): State<AppState>) -> Response {
    let Some(handle) = handle() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"detail": "Metrics unavailable"})),
        )
            .into_response();
    };
    match state.store.totals().await {
        Ok(totals) => {
            metrics::gauge!("chatbot_sessions").set(totals.sessions as f64);
            metrics::gauge!("chatbot_exchanges").set(totals.exchanges as f64);
        }
        Err(err) => tracing::warn!(error = %err, "store totals for metrics"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}
