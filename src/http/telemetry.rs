//! Logging: an `EnvFilter` from `RUST_LOG` and one access-log line per
//! request, written to stderr by a background thread so that requests never
//! wait for it.
//!
//! The access log is one event per finished request rather than
//! `tower_http`'s `TraceLayer`, whose span per request (with its fields
//! formatted and stored) cost a third of a small request (benches/README.md).

use std::time::Instant;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Level;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Where access-log lines are logged.
pub const ACCESS_TARGET: &str = "chatbot_api::access";

/// Logs to stderr, filtered by `RUST_LOG` (default: info for this crate and
/// requests). Lines are formatted on the request's thread and written by a
/// background one; none is dropped (past 128k waiting lines, logging waits).
/// Keep the guard until exit: dropping it writes out what is left.
pub fn init() -> WorkerGuard {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("chatbot_api=info,tower_http=info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("log-writer")
        // Buffered: the writer thread drains every waiting line, then
        // flushes, so a burst of requests costs one write, not one each.
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    guard
}

/// Whether the filter lets access-log lines through; checked once, when the
/// app is built, so a server that does not log requests pays nothing.
pub fn access_log_enabled() -> bool {
    tracing::enabled!(target: ACCESS_TARGET, Level::INFO)
}

/// One `INFO` line per finished request: method, path and query, status and
/// microseconds taken.
pub async fn access_log(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let uri = request.uri().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    tracing::info!(
        target: ACCESS_TARGET,
        %method,
        %uri,
        status = response.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "request"
    );
    response
}
