//! Logging: an `EnvFilter` from `RUST_LOG` and one access-log line per
//! request, written to stderr by a background thread so that requests never
//! wait for it.
//!
//! The access log is one event per finished request rather than
//! `tower_http`'s `TraceLayer`, whose span per request (with its fields
//! formatted and stored) cost a third of a small request (benches/README.md).
//! When stderr is not a terminal (a service under systemd or docker, a file),
//! the access line is written in `tracing_subscriber`'s own format straight
//! to the same writer, without the event machinery: formatting it through the
//! subscriber cost 0.17 of a 15 µs request (benches/README.md, "Session 6").

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Level;
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Where access-log lines are logged.
pub const ACCESS_TARGET: &str = "chatbot_api::access";

/// Logs to stderr, filtered by `RUST_LOG` (default: info for this crate and
/// requests). Lines are formatted on the request's thread and written by a
/// background one; none is dropped (past 4096 waiting hand-overs, a line or
/// a worker's batch each, 64 MiB at most, logging waits).
/// In colour on a terminal; otherwise access lines take the short way.
/// Keep the guard until exit: dropping it writes out what is left.
pub fn init() -> WorkerGuard {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("chatbot_api=info,tower_http=info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        // Counted in hand-overs, each up to HAND_OVER_AT bytes.
        .buffered_lines_limit(4096)
        .thread_name("log-writer")
        // Buffered: the writer thread drains every waiting line, then
        // flushes, so a burst of requests costs one write, not one each.
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    if !ansi {
        let _ = ACCESS_WRITER.set(writer.clone());
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .init();
    guard
}

/// Where access lines are written directly (set when lines are plain text).
static ACCESS_WRITER: OnceLock<NonBlocking> = OnceLock::new();

/// A thread's access lines not yet handed to the writer, and the start of
/// the last timestamp written (`2026-11-28T14:20:30`), which changes once a
/// second.
struct LineBuffer {
    lines: String,
    /// Set once the thread has parked: a runtime worker, which hands its
    /// lines over whenever it parks (idle) or stops. Any other thread hands
    /// each line over at once.
    worker: bool,
    writer: NonBlocking,
    second: u64,
    stamp: String,
}

/// A worker hands its lines over past this many bytes even while busy.
const HAND_OVER_AT: usize = 16 * 1024;

thread_local! {
    static LINES: RefCell<Option<LineBuffer>> = const { RefCell::new(None) };
}

/// Writes `chatbot_api::access` lines exactly as `tracing_subscriber`'s
/// default format does without colours:
/// `2026-11-28T14:20:30.123456Z  INFO chatbot_api::access: request method=GET uri=/ status=200 micros=35`.
/// A runtime worker gathers them and hands them to the writer thread when
/// it has nothing else to do ([`flush_access_lines`]) or past
/// [`HAND_OVER_AT`] bytes: one hand-over (and one wake-up of the writer)
/// for many lines, instead of one per request.
fn write_access_line(
    writer: &NonBlocking,
    method: &axum::http::Method,
    uri: &axum::http::Uri,
    status: u16,
    micros: u64,
) {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    LINES.with_borrow_mut(|buffer| {
        let buffer = buffer.get_or_insert_with(|| LineBuffer {
            lines: String::with_capacity(HAND_OVER_AT + 256),
            worker: false,
            writer: writer.clone(),
            second: u64::MAX,
            stamp: String::new(),
        });
        if buffer.second != now.as_secs() {
            buffer.second = now.as_secs();
            buffer.stamp.clear();
            let at = chrono::DateTime::from_timestamp(now.as_secs() as i64, 0).unwrap_or_default();
            let _ = write!(buffer.stamp, "{}", at.format("%Y-%m-%dT%H:%M:%S"));
        }
        format_access_line(
            &mut buffer.lines,
            &buffer.stamp,
            now.subsec_micros(),
            (method, uri, status, micros),
        );
        if !buffer.worker || buffer.lines.len() >= HAND_OVER_AT {
            buffer.hand_over();
        }
    });
}

impl LineBuffer {
    fn hand_over(&mut self) {
        if !self.lines.is_empty() {
            // The writer passes the lines to its thread; it fails only once
            // that thread is gone, at exit.
            let _ = self.writer.write_all(self.lines.as_bytes());
            self.lines.clear();
        }
    }
}

/// Hands this thread's access lines to the writer. For the runtime's
/// `on_thread_park` and `on_thread_stop`: a worker about to idle or stop
/// leaves nothing behind, and from its first park on it gathers lines.
pub fn flush_access_lines() {
    // A thread stopping after its locals are gone has nothing to hand over.
    let _ = LINES.try_with(|buffer| {
        if let Some(buffer) = buffer.borrow_mut().as_mut() {
            buffer.worker = true;
            buffer.hand_over();
        }
    });
}

/// One access line, appended to `line`: `stamp` is the timestamp to the
/// second. Pieces are copied and numbers written with `itoa`: through
/// `write!` a line took ~1,500 instructions (callgrind), this way ~400, of
/// a memory-mode `POST`'s ~40,000.
fn format_access_line(
    line: &mut String,
    stamp: &str,
    subsec_micros: u32,
    (method, uri, status, micros): (&axum::http::Method, &axum::http::Uri, u16, u64),
) {
    let mut number = itoa::Buffer::new();
    line.push_str(stamp);
    line.push('.');
    let fraction = number.format(subsec_micros.min(999_999));
    line.extend(std::iter::repeat_n('0', 6 - fraction.len()));
    line.push_str(fraction);
    line.push_str("Z  INFO ");
    line.push_str(ACCESS_TARGET);
    line.push_str(": request method=");
    line.push_str(method.as_str());
    line.push_str(" uri=");
    if uri.scheme().is_none() && uri.authority().is_none() {
        // What `Uri`'s `Display` writes for a path (with its query).
        line.push_str(uri.path());
        if let Some(query) = uri.query() {
            line.push('?');
            line.push_str(query);
        }
    } else {
        let _ = write!(line, "{uri}");
    }
    line.push_str(" status=");
    line.push_str(number.format(status));
    line.push_str(" micros=");
    line.push_str(number.format(micros));
    line.push('\n');
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
    let status = response.status().as_u16();
    let micros = started.elapsed().as_micros() as u64;
    match ACCESS_WRITER.get() {
        Some(writer) => write_access_line(writer, &method, &uri, status, micros),
        None => tracing::info!(target: ACCESS_TARGET, %method, %uri, status, micros, "request"),
    }
    response
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects what a subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The subscriber's line for one request.
    fn theirs(
        method: &axum::http::Method,
        uri: &axum::http::Uri,
        status: u16,
        micros: u64,
    ) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: ACCESS_TARGET, %method, %uri, status, micros, "request");
        });
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn the_direct_access_line_is_the_subscribers_line() {
        let method = axum::http::Method::PATCH;
        let uri: axum::http::Uri = "/chat/history/a%20b?limit=2&offset=1".parse().unwrap();
        let mut ours = String::new();
        format_access_line(
            &mut ours,
            "2026-11-28T14:20:30",
            7,
            (&method, &uri, 422, 1234),
        );
        assert_eq!(
            ours,
            "2026-11-28T14:20:30.000007Z  INFO chatbot_api::access: request method=PATCH \
             uri=/chat/history/a%20b?limit=2&offset=1 status=422 micros=1234\n"
        );
        let cases = [
            ("GET", "/", 200, 0, 0),
            ("POST", "/chat", 200, 35, 999_999),
            (
                "GET",
                "/chat/search?q=",
                422,
                18_446_744_073_709_551_615,
                123_456,
            ),
            (
                "DELETE",
                "http://example.com:8000/chat/history/x?y=1",
                204,
                9,
                10,
            ),
            ("PURGE", "*", 405, 12, 100_000),
            (
                "GET",
                "/chat/history/%E2%98%95?limit=1&offset=0",
                404,
                77,
                5,
            ),
        ];
        for (method, uri, status, micros, subsec) in cases {
            let method = axum::http::Method::from_bytes(method.as_bytes()).unwrap();
            let uri: axum::http::Uri = uri.parse().unwrap();
            let theirs = theirs(&method, &uri, status, micros);
            let mut ours = String::new();
            format_access_line(
                &mut ours,
                "2026-11-28T14:20:30",
                subsec,
                (&method, &uri, status, micros),
            );
            // The same after the timestamp, and a timestamp of the same shape.
            let (their_stamp, their_rest) = theirs.split_once(' ').unwrap();
            let (our_stamp, our_rest) = ours.split_once(' ').unwrap();
            assert_eq!(our_rest, their_rest);
            assert_eq!(our_stamp.len(), their_stamp.len(), "{their_stamp}");
            assert_eq!(their_stamp.as_bytes()[10], b'T');
            assert!(their_stamp.ends_with('Z'));
            assert_eq!(our_stamp, format!("2026-11-28T14:20:30.{subsec:06}Z"));
        }
    }
}
