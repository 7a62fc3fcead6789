//! Replies from a model (`--llm-url`): a real OpenAI-compatible server over
//! TCP as the upstream, either a small recording one written here or a
//! second chatbot-api, on every backend.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use chatbot_api::AppState;
use chatbot_api::domain::chatbot::Chatbot;
use chatbot_api::domain::model::{ModelClient, ModelConfig};
use chatbot_api::domain::store::{MemoryStore, Store};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::helpers::{TestApp, TestResponse, completion_pieces, exchanges, pairs};

/// One request the upstream received: its body and `Authorization` header.
type Seen = (Value, Option<String>);

/// What the recording upstream saw.
#[derive(Clone, Default)]
struct Upstream {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    fn requests(&self) -> Vec<Value> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(body, _)| body.clone())
            .collect()
    }
}

/// An OpenAI-style chat-completions endpoint: answers `model says: LAST`,
/// whole or streamed; the last user message picks a misbehaviour:
/// `slow` waits 3 s, `a bit slow` 0.8 s, `garbage` answers non-JSON,
/// `broken` answers 500.
async fn completions(
    State(upstream): State<Upstream>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let auth = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_owned());
    upstream.seen.lock().unwrap().push((body.clone(), auth));
    let last = body["messages"].as_array().unwrap().last().unwrap()["content"]
        .as_str()
        .unwrap()
        .to_owned();
    if last.contains("a bit slow") {
        tokio::time::sleep(Duration::from_millis(800)).await;
    } else if last.contains("slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    if last.contains("garbage") {
        return "this is not JSON".into_response();
    }
    if last.contains("broken") {
        return (StatusCode::INTERNAL_SERVER_ERROR, "oops").into_response();
    }
    let reply = format!("model says: {last}");
    if body["stream"] == json!(true) {
        // Pieces of five characters, as no word-splitter would make them;
        // `slowly` spaces them 100 ms apart; `breaks` stops with an error.
        let chars: Vec<char> = reply.chars().collect();
        let mut events: Vec<String> = chars
            .chunks(5)
            .map(|c| {
                let chunk = json!({"choices": [{"index": 0, "delta": {"content": c.iter().collect::<String>()}}]});
                format!("data: {chunk}\n\n")
            })
            .collect();
        if last.contains("breaks") {
            events.truncate(2);
            events.push("data: this is not a chunk\n\n".into());
        } else {
            events.push("data: [DONE]\n\n".into());
        }
        let pause = if last.contains("slowly") {
            Duration::from_millis(100)
        } else {
            Duration::ZERO
        };
        let body = futures_util::stream::iter(events).then(move |event| async move {
            tokio::time::sleep(pause).await;
            Ok::<_, std::convert::Infallible>(event)
        });
        return (
            [("content-type", "text/event-stream")],
            axum::body::Body::from_stream(body),
        )
            .into_response();
    }
    Json(json!({
        "id": "x", "object": "chat.completion", "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
    }))
    .into_response()
}

/// Serves the recording upstream on a loopback port; its base URL.
async fn recording_upstream() -> (Upstream, String) {
    let upstream = Upstream::default();
    let router = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(completions))
        .with_state(upstream.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (upstream, url)
}

fn model(url: &str, name: &str, context: usize, timeout: Duration) -> ModelClient {
    ModelClient::new(ModelConfig {
        url: url.to_owned(),
        model: name.to_owned(),
        api_key: Some("upstream-key".into()),
        system_prompt: Some("Be brief.".into()),
        context,
        timeout,
    })
    .unwrap()
}

fn app_with(store: Arc<dyn Store>, model: ModelClient, rules_first: bool) -> TestApp {
    TestApp::from_state(
        AppState::new(store, Chatbot::seed(), Default::default()).with_model(model, rules_first),
    )
}

async fn say(app: &TestApp, session: &str, message: &str) -> TestResponse {
    app.call(
        Method::POST,
        "/chat",
        None,
        Some(json!({"user_message": message, "session_id": session})),
    )
    .await
}

fn roles_and_texts(request: &Value) -> Vec<(String, String)> {
    request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn the_model_answers_with_the_prompt_and_the_latest_exchanges(store: Arc<dyn Store>) {
    let (upstream, url) = recording_upstream().await;
    let app = app_with(
        store,
        model(&url, "test-model", 2, Duration::from_secs(5)),
        false,
    );
    for message in ["one", "two", "three", "hello"] {
        let answer = say(&app, "s", message).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        assert_eq!(
            answer.json()["bot_reply"],
            format!("model says: {message}"),
            "the model answers everything, rules too"
        );
    }
    let last = upstream.requests().pop().unwrap();
    assert_eq!(last["model"], "test-model");
    assert_eq!(last["stream"], false);
    assert_eq!(
        roles_and_texts(&last),
        pairs(&[
            ("system", "Be brief."),
            ("user", "two"),
            ("assistant", "model says: two"),
            ("user", "three"),
            ("assistant", "model says: three"),
            ("user", "hello"),
        ])
    );
    let auth = upstream.seen.lock().unwrap()[0].1.clone();
    assert_eq!(auth.as_deref(), Some("Bearer upstream-key"));
    let history = app.get("/chat/history/s").await.json();
    assert_eq!(
        exchanges(&history),
        pairs(&[
            ("one", "model says: one"),
            ("two", "model says: two"),
            ("three", "model says: three"),
            ("hello", "model says: hello")
        ])
    );
}

async fn rules_answer_first_and_the_model_the_rest(store: Arc<dyn Store>) {
    let (upstream, url) = recording_upstream().await;
    let app = app_with(
        store,
        model(&url, "test-model", 20, Duration::from_secs(5)),
        true,
    );
    assert_eq!(
        say(&app, "s", "Hello!").await.json()["bot_reply"],
        "Hi there! How can I help you today?"
    );
    assert_eq!(
        say(&app, "s", "what did I just say?").await.json()["bot_reply"],
        "You said: \"Hello!\""
    );
    assert!(
        upstream.requests().is_empty(),
        "rules answered without the model"
    );
    assert_eq!(
        say(&app, "s", "quantum physics").await.json()["bot_reply"],
        "model says: quantum physics"
    );
    assert_eq!(upstream.requests().len(), 1);
    // Through /v1 too: a response in a conversation, stored there.
    let id = app
        .call(Method::POST, "/v1/conversations", None, Some(json!({})))
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let response = app
        .call(
            Method::POST,
            "/v1/responses",
            None,
            Some(json!({"model": "chatbot-rules", "input": "tell me a story", "conversation": id})),
        )
        .await;
    assert_eq!(
        response.json()["output_text"],
        "model says: tell me a story",
        "{}",
        response.text()
    );
    let history = app.get(&format!("/chat/history/{id}")).await.json();
    assert_eq!(
        exchanges(&history),
        pairs(&[("tell me a story", "model says: tell me a story")])
    );
}

async fn failures_are_502_or_504_and_store_nothing(store: Arc<dyn Store>) {
    let (_upstream, url) = recording_upstream().await;
    let app = app_with(
        store.clone(),
        model(&url, "m", 20, Duration::from_secs(1)),
        false,
    );
    assert_eq!(say(&app, "s", "fine").await.status, StatusCode::OK);
    let before = app.get("/chat/history/s").await.text().to_owned();
    let unavailable = json!({"detail": "Reply engine unavailable"});
    for (message, status, body) in [
        (
            "garbage please",
            StatusCode::BAD_GATEWAY,
            unavailable.clone(),
        ),
        (
            "broken please",
            StatusCode::BAD_GATEWAY,
            unavailable.clone(),
        ),
        (
            "slow please",
            StatusCode::GATEWAY_TIMEOUT,
            json!({"detail": "Reply engine timed out"}),
        ),
    ] {
        let answer = say(&app, "s", message).await;
        assert_eq!((answer.status, answer.json()), (status, body), "{message}");
    }
    // A model server that is not there at all.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/v1", listener.local_addr().unwrap())
    };
    let gone = app_with(
        store,
        model(&closed, "m", 20, Duration::from_secs(1)),
        false,
    );
    let answer = say(&gone, "s", "anyone?").await;
    assert_eq!(
        (answer.status, answer.json()),
        (StatusCode::BAD_GATEWAY, unavailable)
    );
    assert_eq!(
        app.get("/chat/history/s").await.text(),
        before,
        "nothing stored"
    );
    // The same through /v1, in OpenAI's shape.
    let timed_out = app
        .call(Method::POST, "/v1/chat/completions", None, Some(json!({"model": "chatbot-rules", "messages": [{"role": "user", "content": "slow"}]})))
        .await;
    assert_eq!(timed_out.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(timed_out.json()["error"]["code"], "upstream_timeout");
    let broken = app
        .call(
            Method::POST,
            "/v1/responses",
            None,
            Some(json!({"model": "chatbot-rules", "input": "broken", "conversation": "s"})),
        )
        .await;
    assert_eq!(broken.status, StatusCode::BAD_GATEWAY);
    assert_eq!(broken.json()["error"]["code"], "upstream_error");
    assert_eq!(
        app.get("/chat/history/s").await.text(),
        before,
        "nothing stored"
    );
}

async fn a_slow_model_slows_nothing_else_and_concurrent_messages_see_the_history_before_both(
    store: Arc<dyn Store>,
) {
    let (upstream, url) = recording_upstream().await;
    let app = Arc::new(app_with(
        store,
        model(&url, "m", 20, Duration::from_secs(5)),
        false,
    ));
    assert_eq!(say(&app, "s", "first").await.status, StatusCode::OK);
    assert_eq!(say(&app, "other", "elsewhere").await.status, StatusCode::OK);
    let slow = tokio::spawn({
        let app = app.clone();
        async move { say(&app, "s", "a bit slow").await }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    // While the model thinks: reads answer at once, and another message to
    // the same session is answered and stored first.
    let started = Instant::now();
    let read = app.get("/chat/history/other").await;
    assert_eq!(read.status, StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "a read waited {:?}",
        started.elapsed()
    );
    assert_eq!(say(&app, "s", "quick").await.status, StatusCode::OK);
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    let history = app.get("/chat/history/s").await.json();
    let said: Vec<String> = exchanges(&history).into_iter().map(|(m, _)| m).collect();
    assert_eq!(
        said,
        ["first", "quick", "a bit slow"],
        "stored in the order the answers came"
    );
    // Each was answered from the history before both.
    for request in upstream.requests() {
        let texts: Vec<String> = roles_and_texts(&request)
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        let last = texts.last().unwrap().clone();
        if last == "a bit slow" || last == "quick" {
            assert_eq!(
                texts,
                ["Be brief.", "first", "model says: first", last.as_str()],
                "{request}"
            );
        }
    }
}

async fn streamed_completions_pass_the_models_pieces_through(store: Arc<dyn Store>) {
    let (upstream, url) = recording_upstream().await;
    let app = app_with(store, model(&url, "m", 20, Duration::from_secs(5)), false);
    let response = app
        .call(Method::POST, "/v1/chat/completions", None, Some(json!({"model": "chatbot-rules", "stream": true, "messages": [
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "tell me more"}]})))
        .await;
    assert_eq!(response.status, StatusCode::OK);
    let pieces = completion_pieces(response.text());
    assert_eq!(
        pieces,
        ["model", " says", ": tel", "l me ", "more"].map(String::from)
    );
    assert!(response.text().ends_with("data: [DONE]\n\n"));
    let request = upstream.requests().pop().unwrap();
    assert_eq!(request["stream"], true);
    assert_eq!(
        roles_and_texts(&request),
        pairs(&[
            ("system", "Be brief."),
            ("user", "hi"),
            ("assistant", "hello"),
            ("user", "tell me more")
        ])
    );
}

async fn a_streamed_answer_is_stored_whole_even_if_the_client_leaves(store: Arc<dyn Store>) {
    let (_upstream, url) = recording_upstream().await;
    let app = app_with(store, model(&url, "m", 20, Duration::from_secs(5)), false);
    let id = app
        .call(Method::POST, "/v1/conversations", None, Some(json!({})))
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let request = axum::http::Request::post("/v1/responses")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(
            json!({"model": "chatbot-rules", "input": "answer slowly", "conversation": id, "stream": true}).to_string(),
        ))
        .unwrap();
    let response = tower::ServiceExt::oneshot(app.router.clone(), request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(first.data_ref().unwrap()).contains("response.created"));
    // The client goes away after the first event, with most of the answer unwritten.
    drop(body);
    let history = format!("/chat/history/{id}");
    let mut stored = Value::Null;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let read = app.get(&history).await;
        if read.status == StatusCode::OK {
            stored = read.json();
            break;
        }
    }
    assert_eq!(
        exchanges(&stored),
        pairs(&[("answer slowly", "model says: answer slowly")]),
        "stored whole"
    );
    // A model that breaks off mid-answer stores nothing and says so.
    let broken = app
        .call(Method::POST, "/v1/responses", None, Some(json!({"model": "chatbot-rules", "input": "this breaks", "conversation": id, "stream": true})))
        .await;
    assert_eq!(broken.status, StatusCode::OK);
    assert!(
        broken.text().contains("event: response.failed"),
        "{}",
        broken.text()
    );
    assert!(!broken.text().contains("response.completed"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        exchanges(&app.get(&history).await.json()).len(),
        1,
        "nothing stored"
    );
}

on_every_store!(
    the_model_answers_with_the_prompt_and_the_latest_exchanges,
    rules_answer_first_and_the_model_the_rest,
    failures_are_502_or_504_and_store_nothing,
    a_slow_model_slows_nothing_else_and_concurrent_messages_see_the_history_before_both,
    streamed_completions_pass_the_models_pieces_through,
    a_streamed_answer_is_stored_whole_even_if_the_client_leaves,
);

/// A second chatbot-api, over TCP, is the model: its `/v1/chat/completions`
/// answers from its rules and the context this one sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_chatbot_api_is_a_model_server() {
    let upstream_state = AppState::new(
        Arc::new(MemoryStore::new()),
        Chatbot::seed(),
        Default::default(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(chatbot_api::serve(
        listener,
        upstream_state,
        std::future::pending(),
    ));
    let app = app_with(
        Arc::new(MemoryStore::new()),
        model(&url, "chatbot-rules", 20, Duration::from_secs(5)),
        false,
    );
    assert_eq!(
        say(&app, "s", "hello").await.json()["bot_reply"],
        "Hi there! How can I help you today?"
    );
    assert_eq!(
        say(&app, "s", "what did I just say?").await.json()["bot_reply"],
        "You said: \"hello\""
    );
    let streamed = app
        .call(
            Method::POST,
            "/v1/chat/completions",
            None,
            Some(json!({"model": "chatbot-rules", "stream": true,
            "messages": [{"role": "user", "content": "fastapi?"}]})),
        )
        .await;
    let text = completion_pieces(streamed.text()).concat();
    assert!(text.starts_with("FastAPI is a modern"), "{text}");
    // A wrong model name is the upstream's 404: a 502 here.
    let wrong = app_with(
        Arc::new(MemoryStore::new()),
        model(&url, "gpt-4o", 20, Duration::from_secs(5)),
        false,
    );
    assert_eq!(
        say(&wrong, "s", "hello").await.status,
        StatusCode::BAD_GATEWAY
    );
}

/// Two chatbot-api processes: one answers the other's messages through its
/// `/v1/chat/completions`, configured by flags only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_answers_through_the_flags() {
    let upstream = crate::helpers::Server::start(&["--store", "memory"]);
    let url = upstream.url("/v1");
    let server = crate::helpers::Server::start(&[
        "--store",
        "memory",
        "--llm-url",
        &url,
        "--llm-model",
        "chatbot-rules",
        "--llm-system-prompt",
        "Be brief.",
        "--llm-timeout",
        "5",
    ]);
    let client = reqwest::Client::new();
    let mut said = Vec::new();
    for message in ["hello", "what did I just say?"] {
        let answer: Value = client
            .post(server.url("/chat"))
            .json(&json!({"user_message": message, "session_id": "s"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        said.push(answer["bot_reply"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        said,
        ["Hi there! How can I help you today?", "You said: \"hello\""]
    );
    // The upstream stored nothing: its chat completions are stateless.
    let sessions: Value = client
        .get(upstream.url("/chat/sessions"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sessions, json!([]));
}

#[test]
fn a_model_url_without_a_model_name_stops_the_server_with_one_line() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_chatbot-api"))
        .args([
            "--store",
            "memory",
            "--port",
            "0",
            "--llm-url",
            "http://127.0.0.1:9/v1",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--llm-model"), "{stderr}");
}
