//! Hardening: API keys and their isolation, rate limits, caps, expiry, CORS,
//! panics, and hostile input over real TCP.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use chatbot_api::AppState;
use chatbot_api::domain::chatbot::{History, Replier};
use chatbot_api::domain::store::{MemoryStore, Store, StoreKind};
use chatbot_api::http::auth::ApiKeys;
use serde_json::{Value, json};

use crate::helpers::{Server, TestApp, TestResponse};

fn keyed_app(store: Arc<dyn Store>) -> TestApp {
    let state = AppState::new(
        store,
        chatbot_api::domain::chatbot::Chatbot::seed(),
        Default::default(),
    )
    .with_api_keys(ApiKeys::new(["alpha-key", "beta-key"]))
    .with_debug_endpoints(true);
    TestApp::from_state(state)
}

async fn send(
    app: &TestApp,
    method: Method,
    uri: &str,
    auth: Option<(&str, &str)>,
    body: Option<Value>,
) -> TestResponse {
    app.call(method, uri, auth, body).await
}

const ALPHA: Option<(&str, &str)> = Some(("authorization", "Bearer alpha-key"));
const BETA: Option<(&str, &str)> = Some(("x-api-key", "beta-key"));

async fn say_as(app: &TestApp, who: Option<(&str, &str)>, session: &str, message: &str) -> Value {
    let response = send(
        app,
        Method::POST,
        "/chat",
        who,
        Some(json!({"user_message": message, "session_id": session})),
    )
    .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    response.json()
}

fn messages(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["user_message"].as_str().unwrap().to_owned())
        .collect()
}

async fn api_keys_isolate_every_endpoint(store: Arc<dyn Store>) {
    let app = keyed_app(store);
    let every_route = [
        (Method::POST, "/chat"),
        (Method::GET, "/chat/history/same"),
        (Method::DELETE, "/chat/history/same"),
        (Method::GET, "/chat/history/same/stats"),
        (Method::GET, "/chat/history/same/export"),
        (Method::GET, "/chat/sessions"),
        (Method::GET, "/chat/search?q=x"),
        (Method::GET, "/debug/sessions"),
        (Method::POST, "/debug/clear"),
    ];
    for auth in [
        None,
        Some(("authorization", "Bearer wrong")),
        Some(("x-api-key", "alpha-ke")),
        Some(("authorization", "Basic alpha-key")),
    ] {
        for (method, uri) in &every_route {
            let body = (*method == Method::POST).then(|| json!({"user_message": "hi"}));
            let response = send(&app, method.clone(), uri, auth, body).await;
            assert_eq!(
                response.status,
                StatusCode::UNAUTHORIZED,
                "{method} {uri} with {auth:?}"
            );
            assert_eq!(response.text(), r#"{"detail":"Not authenticated"}"#);
            assert_eq!(
                response.header("www-authenticate"),
                Some(r#"Bearer error="invalid_token""#)
            );
        }
    }
    // Open without a key: health, the index, the docs.
    for uri in ["/health", "/", "/openapi.json", "/docs/"] {
        assert_eq!(
            send(&app, Method::GET, uri, None, None).await.status,
            StatusCode::OK,
            "{uri}"
        );
    }

    // The same session id under two keys: two conversations.
    say_as(&app, ALPHA, "same", "alpha one").await;
    say_as(&app, ALPHA, "alpha-only", "alpha two").await;
    let first = say_as(&app, BETA, "same", "What did I just say?").await;
    assert_eq!(
        first["bot_reply"],
        "You haven't said anything yet in this conversation."
    );
    assert_eq!(first["session_id"], "same");

    let alpha_history = send(&app, Method::GET, "/chat/history/same", ALPHA, None)
        .await
        .json();
    assert_eq!(messages(&alpha_history), ["alpha one"]);
    let beta_history = send(&app, Method::GET, "/chat/history/same", BETA, None)
        .await
        .json();
    assert_eq!(messages(&beta_history), ["What did I just say?"]);
    assert_eq!(
        send(&app, Method::GET, "/chat/history/alpha-only", BETA, None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    let ids = |v: Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s["session_id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(send(&app, Method::GET, "/chat/sessions", ALPHA, None)
            .await
            .json()),
        ["alpha-only", "same"]
    );
    assert_eq!(
        ids(send(&app, Method::GET, "/chat/sessions", BETA, None)
            .await
            .json()),
        ["same"]
    );
    let page = send(&app, Method::GET, "/chat/sessions?limit=1", ALPHA, None).await;
    assert!(
        page.header("link").unwrap().contains("after=alpha-only"),
        "cursors carry plain ids"
    );

    let hits = send(&app, Method::GET, "/chat/search?q=alpha", BETA, None)
        .await
        .json();
    assert_eq!(hits, json!([]), "search never crosses keys");
    let hits = send(
        &app,
        Method::GET,
        "/chat/search?q=alpha&session_id=same",
        ALPHA,
        None,
    )
    .await
    .json();
    assert_eq!(messages(&hits), ["alpha one"]);
    assert_eq!(hits[0]["session_id"], "same");

    let stats = send(&app, Method::GET, "/chat/history/same/stats", BETA, None)
        .await
        .json();
    assert_eq!(stats["total_messages"], 1);
    let export = send(&app, Method::GET, "/chat/history/same/export", BETA, None).await;
    assert!(export.text().contains("What did I just say?") && !export.text().contains("alpha one"));

    assert_eq!(
        send(&app, Method::DELETE, "/chat/history/same", BETA, None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        send(&app, Method::GET, "/chat/history/same", BETA, None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        messages(
            &send(&app, Method::GET, "/chat/history/same", ALPHA, None)
                .await
                .json()
        ),
        ["alpha one"]
    );
}

async fn caps_refuse_with_507_and_store_nothing(store: Arc<dyn Store>) {
    let app = TestApp::with_store(store, Default::default());
    app.say("one", "U", "a").await;
    app.say("two", "U", "a").await;
    app.say("two", "U", "b").await;
    let new_session = app
        .post_chat(r#"{"user_message": "c", "session_id": "three"}"#)
        .await;
    assert_eq!(new_session.status, StatusCode::INSUFFICIENT_STORAGE);
    assert_eq!(
        new_session.text(),
        r#"{"detail":"Session limit reached: this server keeps at most 2 sessions"}"#
    );
    let full_session = app
        .post_chat(r#"{"user_message": "c", "session_id": "two"}"#)
        .await;
    assert_eq!(full_session.status, StatusCode::INSUFFICIENT_STORAGE);
    assert_eq!(
        full_session.text(),
        r#"{"detail":"Message limit reached: a session holds at most 2 messages"}"#
    );
    assert_eq!(
        app.get("/chat/history/three").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get("/chat/history/two").await.header("x-total-count"),
        Some("2")
    );
    // Room left in an existing session is still usable.
    app.say("one", "U", "b").await;
}

async fn expiry_removes_idle_sessions_only(store: Arc<dyn Store>) {
    let app = TestApp::with_store(store.clone(), Default::default());
    app.say("idle", "U", "old").await;
    app.say("busy", "U", "old").await;
    let now = chatbot_api::domain::models::now();
    // Nothing is older than an hour ago.
    assert_eq!(store.expire(now - 3600).await.unwrap(), 0);
    // A cutoff in the future takes every session, except one written after it.
    app.say("busy", "U", "new").await;
    let removed = store.expire(now + 1).await.unwrap();
    assert!(removed >= 1, "removed {removed}");
    assert_eq!(
        app.get("/chat/history/idle").await.status,
        StatusCode::NOT_FOUND
    );
}

macro_rules! backend_suite {
    ($($behaviour:ident => $caps:expr),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $behaviour() {
                    let store: std::sync::Arc<dyn chatbot_api::domain::store::Store> =
                        std::sync::Arc::new(chatbot_api::domain::store::MemoryStore::with_caps($caps));
                    super::$behaviour(store).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() {
                    let dir = tempfile::tempdir().unwrap();
                    let kind = chatbot_api::domain::store::StoreKind::Sqlite(dir.path().join("c.db").display().to_string());
                    super::$behaviour(kind.open_with(2, $caps).await.unwrap()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() {
                    let Some(schema) = crate::helpers::postgres_schema().await else { return };
                    let kind = chatbot_api::domain::store::StoreKind::Postgres(schema.url.clone());
                    super::$behaviour(kind.open_with(2, $caps).await.unwrap()).await;
                }
            )*
        }
    };
}

backend_suite!(
    api_keys_isolate_every_endpoint => chatbot_api::domain::store::Caps::default(),
    caps_refuse_with_507_and_store_nothing => chatbot_api::domain::store::Caps { max_sessions: Some(2), max_messages_per_session: Some(2) },
    expiry_removes_idle_sessions_only => chatbot_api::domain::store::Caps::default(),
);

#[tokio::test]
async fn the_expiry_task_slides_with_each_write() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let app = TestApp::with_store(store.clone(), Default::default());
    app.say("quiet", "U", "hello").await;
    let task = chatbot_api::domain::store::spawn_expiry(store, Duration::from_secs(2), None);
    // Keep one session busy while the other goes quiet.
    for _ in 0..8 {
        app.say("chatty", "U", "still here").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    task.abort();
    assert_eq!(
        app.get("/chat/history/quiet").await.status,
        StatusCode::NOT_FOUND,
        "idle session expired"
    );
    assert_eq!(
        app.get("/chat/history/chatty").await.status,
        StatusCode::OK,
        "active session kept"
    );
}

#[tokio::test]
async fn a_burst_over_the_rate_limit_gets_429_then_recovers() {
    let state = AppState::new(
        Arc::new(MemoryStore::new()),
        chatbot_api::domain::chatbot::Chatbot::seed(),
        Default::default(),
    )
    .with_api_keys(ApiKeys::new(["alpha-key", "beta-key"]))
    .with_rate_limit(2, 3);
    let app = TestApp::from_state(state);
    for i in 0..3 {
        say_as(&app, ALPHA, "r", &format!("burst {i}")).await;
    }
    let limited = send(
        &app,
        Method::POST,
        "/chat",
        ALPHA,
        Some(json!({"user_message": "one too many"})),
    )
    .await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.header("content-type"), Some("application/json"));
    assert_eq!(limited.text(), r#"{"detail":"Rate limit exceeded"}"#);
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    // Another key has its own bucket; health is never limited.
    say_as(&app, BETA, "r", "other key").await;
    assert_eq!(app.get("/health").await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    say_as(&app, ALPHA, "r", "after waiting").await;
    // Nothing refused was stored.
    let history = send(&app, Method::GET, "/chat/history/r", ALPHA, None).await;
    assert!(!history.text().contains("one too many"));
}

#[tokio::test]
async fn cors_allows_only_configured_origins() {
    let state = AppState::new(
        Arc::new(MemoryStore::new()),
        chatbot_api::domain::chatbot::Chatbot::seed(),
        Default::default(),
    )
    .with_cors_origins(vec!["https://app.example".parse().unwrap()]);
    let app = TestApp::from_state(state);
    let preflight = |origin: &str| {
        Request::builder()
            .method(Method::OPTIONS)
            .uri("/chat")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,authorization",
            )
            .body(Body::empty())
            .unwrap()
    };
    let allowed = app.send(preflight("https://app.example")).await;
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let refused = app.send(preflight("https://evil.example")).await;
    assert_eq!(refused.header("access-control-allow-origin"), None);
    assert_eq!(
        TestApp::new()
            .send(preflight("https://app.example"))
            .await
            .header("access-control-allow-origin"),
        None,
        "none by default"
    );
}

struct Panics;

impl Replier for Panics {
    fn reply(&self, _: &str, _: &dyn History) -> Arc<str> {
        panic!("secret internal detail")
    }
}

#[tokio::test]
async fn a_panic_becomes_a_bare_500_and_the_server_goes_on() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let good = TestApp::with_store(store.clone(), Default::default());
    good.say("s", "U", "before").await;
    let broken = TestApp::from_state(AppState::new(store, Panics, Default::default()));
    let response = broken
        .post_chat(r#"{"user_message": "x", "session_id": "s"}"#)
        .await;
    assert_eq!(response.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(
        response.text(),
        r#"{"detail":"Internal Server Error"}"#,
        "no internals"
    );
    // The store (its lock poisoned by the panic) still serves, and kept nothing half-written.
    good.say("s", "U", "after").await;
    assert_eq!(
        good.get("/chat/history/s").await.header("x-total-count"),
        Some("2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_reply_engine_does_not_stop_the_commit_task() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreKind::Sqlite(dir.path().join("p.db").display().to_string())
        .open(2)
        .await
        .unwrap();
    let s = chatbot_api::domain::models::SessionId::parse("s".into()).unwrap();
    let exchange = || chatbot_api::domain::store::NewExchange {
        user_message: "x".into(),
        user_name: "U".into(),
        timestamp: 0,
    };
    let failed = store.append(&s, exchange(), Arc::new(Panics)).await;
    assert!(failed.is_err());
    let ok = store
        .append(
            &s,
            exchange(),
            Arc::new(chatbot_api::domain::chatbot::Chatbot::seed()),
        )
        .await;
    assert!(ok.is_ok(), "{ok:?}");
    let app = TestApp::with_store(store, Default::default());
    assert_eq!(
        app.get("/chat/history/s").await.header("x-total-count"),
        Some("1"),
        "the failed one stored nothing"
    );
}

/// Sends raw bytes, returns what came back (status line first), within `wait`.
fn raw(server: &Server, bytes: &[u8], wait: Duration) -> String {
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    let _ = stream.write_all(bytes);
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn post(body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes()
}

#[test]
fn hostile_inputs_get_clear_4xx_and_change_nothing() {
    let server = Server::start(&["--store", "memory", "--request-timeout", "2"]);
    let canary = post(br#"{"user_message": "keep me", "session_id": "canary"}"#);
    assert!(raw(&server, &canary, Duration::from_secs(5)).starts_with("HTTP/1.1 200"));
    let before = raw(
        &server,
        &get("/chat/history/canary"),
        Duration::from_secs(5),
    );
    let body_of = |response: &str| response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();

    let nested = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let huge = format!("{{\"user_message\": \"{}\"}}", "x".repeat(10 * 1024 * 1024));
    let big_header = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "h".repeat(100 * 1024)
    );
    let long_path = get(&format!("/chat/history/{}", "s".repeat(100 * 1024)));
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        ("10,000 levels of nesting", post(nested.as_bytes()), "422", "json_invalid"),
        ("a 10 MB body", post(huge.as_bytes()), "413", "the limit is 65536 bytes"),
        ("invalid UTF-8", post(b"{\"user_message\": \"\xff\xfe\"}"), "422", "json_invalid"),
        ("NUL in the message", post(br#"{"user_message": "a\u0000b"}"#), "422", "string_pattern_mismatch"),
        ("NUL in the name", post(br#"{"user_message": "a", "user_name": "\u0000"}"#), "422", "string_pattern_mismatch"),
        ("a control character in the session", post(br#"{"user_message": "a", "session_id": "x\u001by"}"#), "422", "string_pattern_mismatch"),
        ("a content-length longer than the body", b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"user_message\": \"x\"}".to_vec(), "408", "did not arrive within 2 seconds"),
        ("a content-length shorter than the body", b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: 5\r\n\r\n{\"user_message\": \"x\"}".to_vec(), "422", "json_invalid"),
        ("NUL in the path", get("/chat/history/a%00b"), "404", "No conversation history found"),
        ("a control character in the path", get("/chat/history/a%1Bb"), "404", "No conversation history found"),
        ("`..` in the path", get("/chat/history/.."), "404", "No conversation history found for session '..'"),
        ("%2F in the path", get("/chat/history/a%2F..%2Fcanary"), "404", r#"{"detail":"Not Found"}"#),
        ("a 100 KB header", big_header.into_bytes(), "200", r#"{"status":"ok"}"#),
    ];
    for (what, request, status, needle) in cases {
        let response = raw(&server, &request, Duration::from_secs(10));
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status}")),
            "{what}: {}",
            &response[..response.len().min(300)]
        );
        assert!(
            response.contains(needle),
            "{what}: {}",
            &response[..response.len().min(600)]
        );
        if status != "200" {
            assert!(
                response
                    .to_ascii_lowercase()
                    .contains("content-type: application/json"),
                "{what} answers JSON"
            );
        }
        // The server answers a normal request right after, and nothing changed.
        let after = raw(
            &server,
            &get("/chat/history/canary"),
            Duration::from_secs(5),
        );
        assert_eq!(body_of(&after), body_of(&before), "after {what}");
    }

    // A 100 KB session id in the path is refused by the HTTP layer itself.
    let response = raw(&server, &long_path, Duration::from_secs(5));
    assert!(
        response.starts_with("HTTP/1.1 414") || response.starts_with("HTTP/1.1 404"),
        "{}",
        &response[..response.len().min(200)]
    );
    assert_eq!(
        body_of(&raw(
            &server,
            &get("/chat/history/canary"),
            Duration::from_secs(5)
        )),
        body_of(&before)
    );
}

#[test]
fn a_slow_body_gets_408_while_others_are_served() {
    let server = Server::start(&["--store", "memory", "--request-timeout", "1"]);
    let mut slow = TcpStream::connect(server.addr).unwrap();
    slow.write_all(b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{\"user").unwrap();
    // Meanwhile another client is served at once.
    let started = std::time::Instant::now();
    let other = raw(&server, &get("/health"), Duration::from_secs(5));
    assert!(other.starts_with("HTTP/1.1 200") && started.elapsed() < Duration::from_millis(800));
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut response = String::new();
    let _ = slow.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(
        response.contains(
            r#"{"detail":"Request timed out: the body did not arrive within 1 seconds"}"#
        ),
        "{response}"
    );
    assert!(
        response.to_ascii_lowercase().contains("connection: close"),
        "{response}"
    );

    // Slow headers and idle keep-alive connections are closed too.
    let mut idle = TcpStream::connect(server.addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    let waited = std::time::Instant::now();
    let n = idle.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the server closes an idle connection");
    assert!(waited.elapsed() < Duration::from_secs(4));
}

/// Writes the whole request before reading anything, as Python's
/// `http.client`, `requests` and most SDKs do, then reads one response.
fn write_all_then_read(server: &Server, head: &str, body: &[u8]) -> String {
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream
        .write_all(body)
        .expect("the server reads a refused body instead of resetting the connection");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // Up to the end of the JSON body; the connection may stay open.
    while !out.ends_with(b"}") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn an_oversized_body_written_whole_before_reading_gets_its_413() {
    let server = Server::start(&["--store", "memory"]);
    for size in [1 << 20, 10 << 20] {
        let body = format!("{{\"user_message\": \"{}\"}}", "x".repeat(size));
        // Declared too large by Content-Length: refused before reading.
        let head = format!(
            "POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let response = write_all_then_read(&server, &head, body.as_bytes());
        assert!(response.starts_with("HTTP/1.1 413"), "{size}: {response}");
        assert!(
            response.ends_with(r#"{"detail":"Request body too large: the limit is 65536 bytes"}"#),
            "{size}: {response}"
        );
        // Chunked, so the limit is found while reading.
        let mut chunked = Vec::new();
        for chunk in body.as_bytes().chunks(64 * 1024) {
            chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            chunked.extend_from_slice(chunk);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let head = "POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
        let response = write_all_then_read(&server, head, &chunked);
        assert!(
            response.starts_with("HTTP/1.1 413"),
            "chunked {size}: {response}"
        );
    }
    assert_eq!(
        raw(
            &server,
            &get("/chat/history/default"),
            Duration::from_secs(5)
        )
        .lines()
        .next(),
        Some("HTTP/1.1 404 Not Found"),
        "nothing was stored"
    );
}

/// 64 concurrent writers, 150 exchanges each, over real TCP, half to a shared
/// session: every acknowledged exchange is stored exactly once, in each
/// writer's order.
async fn load_keeps_every_acknowledged_exchange(store_arg: &str) {
    let server = Server::start(&["--store", store_arg]);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let writers: Vec<_> = (0..64)
        .map(|w| {
            let (client, url) = (client.clone(), server.url("/chat"));
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..150 {
                    let session = if i % 2 == 0 {
                        "load-shared".to_owned()
                    } else {
                        format!("load-{w}")
                    };
                    let message = format!("w{w}-{i}");
                    let body = json!({"user_message": message, "session_id": session});
                    let response = client.post(&url).json(&body).send().await.unwrap();
                    assert_eq!(response.status(), 200);
                    acked.push(message);
                }
                acked
            })
        })
        .collect();
    let mut acked = Vec::new();
    for writer in writers {
        acked.push(writer.await.unwrap());
    }
    let history = |id: String| {
        let client = client.clone();
        let url = server.url(&format!("/chat/history/{id}"));
        async move {
            messages(
                &client
                    .get(url)
                    .send()
                    .await
                    .unwrap()
                    .json::<Value>()
                    .await
                    .unwrap(),
            )
        }
    };
    let shared = history("load-shared".into()).await;
    assert_eq!(shared.len(), 64 * 75, "every shared exchange once");
    for (w, mine) in acked.iter().enumerate() {
        let own = history(format!("load-{w}")).await;
        let expected_own: Vec<String> = mine.iter().skip(1).step_by(2).cloned().collect();
        assert_eq!(own, expected_own, "writer {w}'s own session");
        let prefix = format!("w{w}-");
        let in_shared: Vec<String> = shared
            .iter()
            .filter(|m| m.starts_with(&prefix))
            .cloned()
            .collect();
        let expected_shared: Vec<String> = mine.iter().step_by(2).cloned().collect();
        assert_eq!(
            in_shared, expected_shared,
            "writer {w} in the shared session"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_on_memory() {
    load_keeps_every_acknowledged_exchange("memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    load_keeps_every_acknowledged_exchange(&format!(
        "sqlite:{}",
        dir.path().join("load.db").display()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_on_postgres() {
    let Some(schema) = crate::helpers::postgres_schema().await else {
        return;
    };
    load_keeps_every_acknowledged_exchange(&schema.url).await;
}
