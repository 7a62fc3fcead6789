//! Shared test plumbing: build the app in-process and send it requests.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use chatbot_api::domain::chatbot::Chatbot;
use chatbot_api::domain::store::{MemoryStore, Store};
use chatbot_api::http::validate::Limits;
use chatbot_api::{AppState, app};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tower::ServiceExt;

/// The router over a store, and the state it was built from.
pub struct TestApp {
    pub state: AppState,
    pub router: chatbot_api::App,
}

/// What came back: status, headers and the raw body.
#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl TestResponse {
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("utf-8 body")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header"))
    }
}

impl TestApp {
    pub fn new() -> Self {
        Self::with_store(Arc::new(MemoryStore::new()), Limits::default())
    }

    pub fn with_store(store: Arc<dyn Store>, limits: Limits) -> Self {
        Self::from_state(AppState::new(store, Chatbot::seed(), limits))
    }

    pub fn from_state(state: AppState) -> Self {
        Self {
            router: app(state.clone()),
            state,
        }
    }

    pub async fn send(&self, request: Request<Body>) -> TestResponse {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes().to_vec();
        TestResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// `POST /chat` with a JSON content type and `body` as given, byte for byte.
    pub async fn post_chat(&self, body: impl Into<Body>) -> TestResponse {
        self.request(Method::POST, "/chat", Some("application/json"), body)
            .await
    }

    pub async fn request(
        &self,
        method: Method,
        uri: &str,
        content_type: Option<&str>,
        body: impl Into<Body>,
    ) -> TestResponse {
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(content_type) = content_type {
            builder = builder.header("content-type", content_type);
        }
        self.send(builder.body(body.into()).expect("request")).await
    }

    pub async fn get(&self, uri: &str) -> TestResponse {
        self.request(Method::GET, uri, None, Body::empty()).await
    }

    /// A request with an optional header (an API key) and an optional JSON body.
    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        header: Option<(&str, &str)>,
        body: Option<Value>,
    ) -> TestResponse {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some((name, value)) = header {
            request = request.header(name, value);
        }
        let body = match body {
            Some(body) => {
                request = request.header("content-type", "application/json");
                Body::from(body.to_string())
            }
            None => Body::empty(),
        };
        self.send(request.body(body).expect("request")).await
    }

    /// Posts a message and asserts it was accepted.
    pub async fn say(&self, session: &str, user: &str, message: &str) -> Value {
        let body =
            serde_json::json!({"user_message": message, "user_name": user, "session_id": session});
        let response = self.post_chat(body.to_string()).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        response.json()
    }
}

/// The user messages of a history, in order.
pub fn said(history: &Value) -> Vec<&str> {
    history
        .as_array()
        .expect("a history is an array")
        .iter()
        .map(|e| e["user_message"].as_str().expect("a message"))
        .collect()
}

/// A history's exchanges as (user message, bot reply) pairs, in order.
pub fn exchanges(history: &Value) -> Vec<(String, String)> {
    history
        .as_array()
        .expect("a history is an array")
        .iter()
        .map(|e| {
            let text = |field: &str| e[field].as_str().expect("a text").to_owned();
            (text("user_message"), text("bot_reply"))
        })
        .collect()
}

/// (user message, bot reply) pairs to compare with [`exchanges`].
pub fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// The `delta.content` pieces of a streamed chat completion, empty ones
/// (the role chunk's) left out.
pub fn completion_pieces(events: &str) -> Vec<String> {
    events
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| {
            serde_json::from_str::<Value>(e).expect("a chunk")["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .filter(|piece| !piece.is_empty())
        .collect()
}

/// An object's field names, in the order they were written.
pub fn field_names(value: &Value) -> Vec<&str> {
    value
        .as_object()
        .expect("a JSON object")
        .keys()
        .map(String::as_str)
        .collect()
}

/// Asserts a timestamp has the seed's `%Y-%m-%d %H:%M:%S` shape and is recent.
pub fn assert_recent_timestamp(value: &Value) {
    let text = value.as_str().expect("timestamp is a string");
    let parsed = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S")
        .unwrap_or_else(|e| panic!("bad timestamp {text:?}: {e}"));
    let now = chrono::Local::now().naive_local();
    let age = now.signed_duration_since(parsed).num_seconds();
    assert!(
        (-2..=60).contains(&age),
        "timestamp {text} is {age}s from now"
    );
}

/// Replaces every `timestamp` field so that bodies compare exactly.
pub fn without_timestamps(mut value: Value) -> Value {
    match &mut value {
        Value::Object(map) => {
            if let Some(ts) = map.get_mut("timestamp") {
                assert_recent_timestamp(ts);
                *ts = Value::String("TS".into());
            }
        }
        Value::Array(items) => {
            for item in items.iter_mut() {
                *item = without_timestamps(item.take());
            }
        }
        _ => {}
    }
    value
}

/// A store under test plus whatever must live as long as it (a temp dir, a schema).
pub struct Backend {
    pub store: Arc<dyn Store>,
    pub _guard: Box<dyn std::any::Any + Send>,
}

pub fn memory() -> Backend {
    Backend {
        store: Arc::new(MemoryStore::new()),
        _guard: Box::new(()),
    }
}

/// A SQLite store on a fresh file; returns the dir so a test can reopen it.
pub async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open_sqlite(dir.path()).await;
    Backend {
        store,
        _guard: Box::new(dir),
    }
}

pub async fn open_sqlite(dir: &std::path::Path) -> Arc<dyn Store> {
    let path = dir.join("chat.db");
    chatbot_api::domain::store::StoreKind::Sqlite(path.display().to_string())
        .open(4)
        .await
        .expect("open sqlite")
}

/// A URL to a fresh, empty PostgreSQL schema, or `None` (with a notice) when no
/// server answers and `CHATBOT_REQUIRE_POSTGRES` is not `1`.
pub async fn postgres_schema() -> Option<PgSchema> {
    use sqlx::{Connection, Executor};
    let base = std::env::var("CHATBOT_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let mut conn = match sqlx::PgConnection::connect(&base).await {
        Ok(conn) => conn,
        Err(err) => {
            if std::env::var("CHATBOT_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("PostgreSQL required (CHATBOT_REQUIRE_POSTGRES=1) but {base} failed: {err}");
            }
            eprintln!("NOTICE: skipping a PostgreSQL test: {base} is not reachable ({err})");
            return None;
        }
    };
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "chatbot_test_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        chrono::Utc::now().timestamp_micros()
    );
    conn.execute(format!("CREATE SCHEMA {name}").as_str())
        .await
        .expect("create schema");
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{separator}options=-c%20search_path%3D{name}");
    Some(PgSchema { base, name, url })
}

/// A throwaway schema, dropped when the test ends.
pub struct PgSchema {
    base: String,
    name: String,
    pub url: String,
}

impl PgSchema {
    /// The same schema reached through another host and port (a proxy).
    pub fn url_via(&self, addr: std::net::SocketAddr) -> String {
        let mut url = url::Url::parse(&self.url).expect("url");
        url.set_host(Some(&addr.ip().to_string())).expect("host");
        url.set_port(Some(addr.port())).expect("port");
        url.to_string()
    }

    pub async fn open(&self, pool_size: u32) -> Arc<dyn Store> {
        chatbot_api::domain::store::StoreKind::Postgres(self.url.clone())
            .open(pool_size)
            .await
            .expect("open postgres")
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let (base, name) = (self.base.clone(), self.name.clone());
        // Drop runs outside any runtime guarantee, so use a thread with its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                use sqlx::{Connection, Executor};
                let mut conn = sqlx::PgConnection::connect(&base).await.ok()?;
                conn.execute(format!("DROP SCHEMA IF EXISTS {name} CASCADE").as_str())
                    .await
                    .ok()
            })
        })
        .join();
    }
}

pub async fn postgres() -> Option<Backend> {
    let schema = postgres_schema().await?;
    let store = schema.open(4).await;
    Some(Backend {
        store,
        _guard: Box::new(schema),
    })
}

/// The compiled binary, killed when dropped.
pub struct Server {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
}

impl Server {
    /// Starts the binary on a free port with `args` and waits until it listens.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(args, &[("RUST_LOG", "warn")], std::process::Stdio::null())
    }

    /// [`Server::start`] with environment variables and somewhere for its log.
    pub fn start_with(args: &[&str], env: &[(&str, &str)], log: std::process::Stdio) -> Self {
        use std::process::{Command, Stdio};
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_chatbot-api"))
            .args(["--port", &port.to_string()])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the binary");
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(std::time::Instant::now() < deadline, "server did not start");
            assert!(child.try_wait().unwrap().is_none(), "server exited early");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Self { child, addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends a signal by name (`TERM`, `KILL`) to the process.
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `within`.
    pub fn wait(&mut self, within: std::time::Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "server did not exit");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The session's whole history straight from a store, or `None`.
pub async fn all(
    store: &dyn Store,
    session: &str,
) -> Option<Vec<chatbot_api::domain::models::ConversationEntry>> {
    store
        .history(session, chatbot_api::domain::store::Page::default())
        .await
        .expect("history")
        .map(|page| page.entries)
}

/// Runs each behaviour (`async fn(TestApp)`) on every backend: memory,
/// SQLite and PostgreSQL (skipped with a notice when no server answers).
macro_rules! http_suite {
    ($($behaviour:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $behaviour() {
                    let backend = crate::helpers::memory();
                    super::$behaviour(crate::helpers::TestApp::with_store(backend.store.clone(), Default::default())).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() {
                    let backend = crate::helpers::sqlite().await;
                    super::$behaviour(crate::helpers::TestApp::with_store(backend.store.clone(), Default::default())).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() {
                    let Some(backend) = crate::helpers::postgres().await else { return };
                    super::$behaviour(crate::helpers::TestApp::with_store(backend.store.clone(), Default::default())).await;
                }
            )*
        }
    };
}

/// Runs each behaviour (`async fn(Arc<dyn Store>)`) on memory, SQLite and
/// PostgreSQL (skipped with a notice when no server answers).
macro_rules! on_every_store {
    ($($behaviour:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() {
                    super::$behaviour(crate::helpers::memory().store.clone()).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() {
                    let backend = crate::helpers::sqlite().await;
                    super::$behaviour(backend.store.clone()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() {
                    let Some(backend) = crate::helpers::postgres().await else { return };
                    super::$behaviour(backend.store.clone()).await;
                }
            )*
        }
    };
}

/// A TCP proxy that can be cut (every connection dropped, new ones refused) and restored.
pub struct Proxy {
    pub addr: SocketAddr,
    target: SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// While set, bytes are held back: the database seems to hang.
    frozen: Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Self {
            addr: listener.local_addr().unwrap(),
            target,
            tasks: Arc::default(),
            frozen: Arc::default(),
        };
        proxy.accept_on(listener);
        proxy
    }

    fn accept_on(&self, listener: TcpListener) {
        let (tasks, target, frozen) = (self.tasks.clone(), self.target, self.frozen.clone());
        let accept = tokio::spawn({
            let tasks = tasks.clone();
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    let frozen = frozen.clone();
                    let link = tokio::spawn(async move {
                        if let Ok(outbound) = TcpStream::connect(target).await {
                            let (from_client, to_client) = inbound.into_split();
                            let (from_server, to_server) = outbound.into_split();
                            tokio::join!(
                                Self::forward(from_client, to_server, frozen.clone()),
                                Self::forward(from_server, to_client, frozen),
                            );
                        }
                    });
                    tasks.lock().unwrap().push(link);
                }
            }
        });
        tasks.lock().unwrap().push(accept);
    }

    /// Copies one direction, holding bytes back while frozen.
    async fn forward(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        frozen: Arc<std::sync::atomic::AtomicBool>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            while frozen.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    pub fn freeze(&self, frozen: bool) {
        self.frozen
            .store(frozen, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    pub async fn restore(&self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("rebind the proxy port");
        self.accept_on(listener);
    }
}

/// The Redis tests use: `CHATBOT_TEST_REDIS_URL` (default
/// `redis://127.0.0.1:6379/`), or `None` (with a notice) when it does not
/// answer and `CHATBOT_REQUIRE_REDIS` is not `1`.
pub async fn redis_url() -> Option<String> {
    let url = std::env::var("CHATBOT_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned());
    if redis_answers(&url).await {
        return Some(url);
    }
    if std::env::var("CHATBOT_REQUIRE_REDIS").as_deref() == Ok("1") {
        panic!("Redis required (CHATBOT_REQUIRE_REDIS=1) but {url} does not answer");
    }
    eprintln!("NOTICE: skipping a Redis test: {url} does not answer");
    None
}

async fn redis_answers(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let connected = tokio::time::timeout(
        Duration::from_secs(1),
        client.get_multiplexed_async_connection(),
    )
    .await;
    let Ok(Ok(mut connection)) = connected else {
        return false;
    };
    redis::cmd("PING")
        .query_async::<String>(&mut connection)
        .await
        .is_ok()
}

/// A key prefix no other test uses.
pub fn redis_prefix() -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "chatbot-test:{}:{}:{}:",
        std::process::id(),
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        chrono::Utc::now().timestamp_micros()
    )
}

/// A raw connection, to look at or tamper with what the server keeps.
pub async fn redis_raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A `redis-server` of the test's own, on a port of its own, killed when
/// dropped; `None` as [`redis_url`] when there is no Redis to test with.
pub struct RedisServer {
    child: Option<std::process::Child>,
    pub port: u16,
}

impl RedisServer {
    pub async fn start() -> Option<Self> {
        redis_url().await?;
        let mut server = Self {
            child: None,
            port: free_port(),
        };
        server.restart().await;
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (everything it held is gone: it keeps nothing).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again, empty, on the same port, and waits until it answers.
    pub async fn restart(&mut self) {
        self.kill();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        self.child = Some(child);
        for _ in 0..200 {
            if redis_answers(&self.url()).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("redis-server on port {} did not start", self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` every 10 ms until it holds, for at most `within`;
/// returns how long it took, or `None` if it never held.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while started.elapsed() < within {
        if check().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}
