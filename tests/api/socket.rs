//! Over real TCP: the library's `serve` on an ephemeral port, and the binary itself.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatbot_api::domain::chatbot::Chatbot;
use chatbot_api::domain::store::MemoryStore;
use chatbot_api::http::validate::Limits;
use chatbot_api::{AppState, serve};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::helpers::{Server, free_port};

async fn spawn_server() -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = AppState::new(
        Arc::new(MemoryStore::new()),
        Chatbot::seed(),
        Limits::default(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, state, async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

#[tokio::test]
async fn seed_conversation_over_tcp() {
    let (addr, _stop) = spawn_server().await;
    let client = reqwest::Client::new();
    let base = format!("http://{addr}");

    let response = client
        .post(format!("{base}/chat"))
        .json(&json!({"user_message": "Hello!", "user_name": "Alice", "session_id": "alice_chat"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["bot_reply"], "Hi there! How can I help you today?");

    let history: Value = client
        .get(format!("{base}/chat/history/alice_chat"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history[0]["user_message"], "Hello!");
    assert_eq!(history[0]["timestamp"], body["timestamp"]);

    let wrong = client.get(format!("{base}/chat")).send().await.unwrap();
    assert_eq!(wrong.status(), 405);
    assert_eq!(wrong.headers()["allow"], "POST");
    assert_eq!(
        wrong.text().await.unwrap(),
        r#"{"detail":"Method Not Allowed"}"#
    );
}

/// The binary on memory on `port`, with the default log (no `RUST_LOG`)
/// piped back.
fn with_default_log(port: u16) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_chatbot-api"))
        .args(["--store", "memory", "--port", &port.to_string()])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The default log (no `RUST_LOG`) has one line per request, written by a
/// background thread and flushed at exit.
#[test]
fn the_default_access_log_has_every_request_by_exit() {
    let port = free_port();
    let child = with_default_log(port);
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in 0..50 {
        let mut stream = TcpStream::connect(&addr).unwrap();
        write!(
            stream,
            "GET /health?n={i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"));
    }
    let killed = Command::new("kill")
        .args(["-s", "TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    for i in 0..50 {
        let line = log
            .lines()
            .find(|line| line.contains(&format!("uri=/health?n={i} ")))
            .unwrap_or_else(|| panic!("request {i} is not in the log:\n{log}"));
        assert!(
            line.contains("INFO") && line.contains("status=200"),
            "{line}"
        );
    }
}

/// Under load a worker gathers its access lines and hands them over in
/// batches: still one line per request, each in the log as soon as the
/// server is idle again (not only at exit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_lines_gathered_under_load_are_logged_once_idle() {
    use std::io::BufRead;
    let port = free_port();
    let mut child = with_default_log(port);
    let stderr = child.stderr.take().unwrap();
    let (lines, logged) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(format!("{base}/health")).send().await.is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let load: Vec<_> = (0..16)
        .map(|t| {
            let (client, base) = (client.clone(), base.clone());
            tokio::spawn(async move {
                for i in 0..100 {
                    let url = format!("{base}/health?load={t}-{i}");
                    assert!(client.get(url).send().await.unwrap().status().is_success());
                }
            })
        })
        .collect();
    for task in load {
        task.await.unwrap();
    }
    // The server is idle now: every line arrives without it exiting.
    let mut seen = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 1600 {
        let wait = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = logged.recv_timeout(wait) else {
            panic!("{} of 1600 lines logged while idle", seen.len());
        };
        if let Some(at) = line.find("uri=/health?load=") {
            assert!(
                line.contains(" INFO chatbot_api::access: request method=GET "),
                "{line}"
            );
            let request = line[at..].split(' ').next().unwrap().to_owned();
            *seen.entry(request).or_insert(0) += 1;
        }
    }
    assert!(seen.values().all(|n| *n == 1), "a line logged twice");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn sigterm_lets_the_request_in_flight_finish() {
    let mut server = Server::start(&["--store", "memory"]);
    let body = r#"{"user_message": "Hello!", "session_id": "inflight"}"#;
    let (head, tail) = body.split_at(10);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    write!(
        stream,
        "POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{head}",
        body.len()
    )
    .unwrap();
    stream.flush().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    server.signal("TERM");
    std::thread::sleep(Duration::from_millis(200));
    stream.write_all(tail.as_bytes()).unwrap();
    let mut response = String::new();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(
        response.contains("Hi there! How can I help you today?"),
        "{response}"
    );
    assert!(server.wait(Duration::from_secs(10)).success());
}

#[test]
fn a_port_in_use_exits_nonzero_with_one_line_naming_the_address() {
    let taken = StdListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_chatbot-api"))
        .args(["--host", "127.0.0.1", "--port", &port, "--store", "memory"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains(&format!("127.0.0.1:{port}")), "{stderr}");
}

#[test]
fn help_explains_every_flag_and_its_env_var() {
    let output = Command::new(env!("CARGO_BIN_EXE_chatbot-api"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for (flag, env) in [
        ("--host", "CHATBOT_HOST"),
        ("--port", "CHATBOT_PORT"),
        ("--max-body-bytes", "CHATBOT_MAX_BODY_BYTES"),
        ("--max-message-chars", "CHATBOT_MAX_MESSAGE_CHARS"),
        ("--store", "CHATBOT_STORE"),
        ("--db-pool-size", "CHATBOT_DB_POOL_SIZE"),
        ("--rules", "CHATBOT_RULES"),
        ("--debug-endpoints", "CHATBOT_DEBUG_ENDPOINTS"),
        ("--request-timeout", "CHATBOT_REQUEST_TIMEOUT"),
        ("--api-key", "CHATBOT_API_KEYS"),
        ("--rate-limit", "CHATBOT_RATE_LIMIT"),
        ("--rate-limit-burst", "CHATBOT_RATE_LIMIT_BURST"),
        ("--max-sessions", "CHATBOT_MAX_SESSIONS"),
        (
            "--max-messages-per-session",
            "CHATBOT_MAX_MESSAGES_PER_SESSION",
        ),
        ("--session-ttl", "CHATBOT_SESSION_TTL"),
        ("--cors-origin", "CHATBOT_CORS_ORIGINS"),
        ("--cache-mb", "CHATBOT_CACHE_MB"),
        ("--sync", "CHATBOT_SYNC"),
        ("--llm-url", "CHATBOT_LLM_URL"),
        ("--llm-model", "CHATBOT_LLM_MODEL"),
        ("--llm-api-key", "CHATBOT_LLM_API_KEY"),
        ("--llm-system-prompt", "CHATBOT_LLM_SYSTEM_PROMPT"),
        ("--llm-context", "CHATBOT_LLM_CONTEXT"),
        ("--llm-timeout", "CHATBOT_LLM_TIMEOUT"),
    ] {
        assert!(
            help.contains(flag) && help.contains(&format!("env: {env}")),
            "{flag} / {env} in:\n{help}"
        );
    }
}

#[test]
fn env_vars_configure_the_binary() {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatbot-api"))
        .env("CHATBOT_PORT", port.to_string())
        .env("CHATBOT_MAX_MESSAGE_CHARS", "3")
        .env("CHATBOT_STORE", "memory")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stream = loop {
        if let Ok(stream) = TcpStream::connect(addr) {
            break stream;
        }
        assert!(
            Instant::now() < deadline,
            "server did not start on CHATBOT_PORT"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let body = r#"{"user_message": "four"}"#;
    write!(
        stream,
        "POST /chat HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(response.starts_with("HTTP/1.1 422"), "{response}");
    assert!(
        response.contains("String should have at most 3 characters"),
        "{response}"
    );
}

#[test]
fn a_broken_rules_file_stops_the_server_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.json");
    std::fs::write(
        &path,
        r#"{"rules":[{"any":["ok"],"reply":"fine"},{"any":["x"]}]}"#,
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_chatbot-api"))
        .args(["--store", "memory", "--port", "0", "--rules"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.trim_end(),
        format!(
            "chatbot-api: rules file {}: rule 1: \"reply\" is missing",
            path.display()
        )
    );
    let missing = Command::new(env!("CARGO_BIN_EXE_chatbot-api"))
        .args([
            "--store",
            "memory",
            "--port",
            "0",
            "--rules",
            "/nonexistent/rules.json",
        ])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert_eq!(String::from_utf8_lossy(&missing.stderr).lines().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rules_file_from_the_environment_answers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.json");
    std::fs::write(&path, r#"{"rules":[{"any":["price","pricing"],"reply":"Plans start at five euros."}],"fallback":"Ask me about prices."}"#).unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatbot-api"))
        .env("CHATBOT_RULES", &path)
        .env("CHATBOT_STORE", "memory")
        .env("CHATBOT_PORT", port.to_string())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut replies = Vec::new();
    for message in ["What's the PRICING?", "Hello!"] {
        let mut answer = None;
        for _ in 0..200 {
            if let Ok(response) = client
                .post(format!("{base}/chat"))
                .json(&json!({"user_message": message}))
                .send()
                .await
            {
                answer = Some(
                    response.json::<Value>().await.unwrap()["bot_reply"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        replies.push(answer.expect("server answered"));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        replies,
        ["Plans start at five euros.", "Ask me about prices."]
    );
}
