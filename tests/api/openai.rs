//! The OpenAI-compatible API under `/v1`, on every backend: conversations,
//! items, responses, chat completions, models; the same data through the
//! seed API; OpenAI-shaped errors that change nothing; per-key isolation.

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use chatbot_api::AppState;
use chatbot_api::domain::chatbot::Chatbot;
use chatbot_api::domain::store::Store;
use chatbot_api::http::auth::ApiKeys;
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestResponse, exchanges, field_names, pairs};

const MODEL: &str = "chatbot-rules";

fn ok(response: &TestResponse) -> Value {
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    response.json()
}

/// Asserts an OpenAI-shaped error and returns its `error` object.
fn openai_error(response: &TestResponse, status: StatusCode) -> Value {
    assert_eq!(response.status, status, "{}", response.text());
    let body = response.json();
    assert_eq!(field_names(&body), ["error"], "{body}");
    let error = body["error"].clone();
    assert_eq!(
        field_names(&error),
        ["message", "type", "param", "code"],
        "{error}"
    );
    assert!(!error["message"].as_str().unwrap().is_empty());
    error
}

async fn post(app: &TestApp, uri: &str, body: Value) -> TestResponse {
    app.call(Method::POST, uri, None, Some(body)).await
}

fn item_ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["id"].as_str().unwrap().to_owned())
        .collect()
}

fn texts(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["content"][0]["text"].as_str().unwrap().to_owned())
        .collect()
}

/// A conversation with two exchanges: ("Hello!", "Hi!") and ("Bye", "See you").
async fn conversation(app: &TestApp) -> String {
    let created = ok(&post(
        app,
        "/v1/conversations",
        json!({
            "metadata": {"topic": "demo", "lang": "en"},
            "items": [
                {"type": "message", "role": "user", "content": "Hello!"},
                {"role": "assistant", "content": [{"type": "output_text", "text": "Hi!"}]},
                {"role": "user", "content": [{"type": "input_text", "text": "Bye"}]},
                {"role": "assistant", "content": "See you"},
            ],
        }),
    )
    .await);
    assert_eq!(
        field_names(&created),
        ["id", "object", "created_at", "metadata"]
    );
    assert_eq!(created["object"], "conversation");
    assert_eq!(created["metadata"], json!({"topic": "demo", "lang": "en"}));
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("conv_") && id.len() == 37, "{id}");
    let now = chatbot_api::domain::models::now();
    assert!((now - created["created_at"].as_i64().unwrap()).abs() < 5);
    id
}

async fn a_conversation_is_a_session_both_ways(app: TestApp) {
    let id = conversation(&app).await;
    // Created items are stored as given: no reply was made.
    let history = ok(&app.get(&format!("/chat/history/{id}")).await);
    assert_eq!(
        exchanges(&history),
        pairs(&[("Hello!", "Hi!"), ("Bye", "See you")])
    );
    let fetched = ok(&app.get(&format!("/v1/conversations/{id}")).await);
    assert_eq!(fetched["metadata"], json!({"topic": "demo", "lang": "en"}));
    // A seed session is a conversation under its own id, without metadata.
    app.say("seed chat", "Ann", "Hello!").await;
    let seed = ok(&app.get("/v1/conversations/seed%20chat").await);
    assert_eq!(
        (seed["id"].as_str(), &seed["metadata"]),
        (Some("seed chat"), &json!({}))
    );
    let items = ok(&app
        .get("/v1/conversations/seed%20chat/items?order=asc")
        .await);
    assert_eq!(
        texts(&items),
        ["Hello!", "Hi there! How can I help you today?"]
    );
    assert_eq!(item_ids(&items), ["msg_1u", "msg_1a"]);
    assert_eq!(items["data"][0]["role"], "user");
    assert_eq!(items["data"][0]["content"][0]["type"], "input_text");
    assert_eq!(items["data"][1]["role"], "assistant");
    assert_eq!(items["data"][1]["content"][0]["type"], "output_text");
    // Metadata can be replaced; a seed session gains some too.
    let updated = ok(&post(
        &app,
        "/v1/conversations/seed%20chat",
        json!({"metadata": {"k": "v"}}),
    )
    .await);
    assert_eq!(updated["metadata"], json!({"k": "v"}));
    assert_eq!(updated["created_at"], seed["created_at"]);
    let deleted = ok(&app
        .call(
            Method::DELETE,
            &format!("/v1/conversations/{id}"),
            None,
            None,
        )
        .await);
    assert_eq!(
        deleted,
        json!({"id": id, "object": "conversation.deleted", "deleted": true})
    );
    assert_eq!(
        app.get(&format!("/chat/history/{id}")).await.status,
        StatusCode::NOT_FOUND
    );
    openai_error(
        &app.get(&format!("/v1/conversations/{id}")).await,
        StatusCode::NOT_FOUND,
    );
}

async fn items_page_both_ways_and_delete_for_good(app: TestApp) {
    let id = conversation(&app).await;
    let base = format!("/v1/conversations/{id}/items");
    let all = ok(&app.get(&base).await);
    assert_eq!(
        item_ids(&all),
        ["msg_2a", "msg_2u", "msg_1a", "msg_1u"],
        "newest first by default"
    );
    assert_eq!(
        (all["first_id"].as_str(), all["last_id"].as_str()),
        (Some("msg_2a"), Some("msg_1u"))
    );
    assert_eq!(all["has_more"], false);
    assert_eq!(all["object"], "list");
    // Pages of 3, both orders, each following `after`.
    for (order, expected) in [
        ("asc", ["msg_1u", "msg_1a", "msg_2u", "msg_2a"]),
        ("desc", ["msg_2a", "msg_2u", "msg_1a", "msg_1u"]),
    ] {
        let first = ok(&app.get(&format!("{base}?order={order}&limit=3")).await);
        assert_eq!(item_ids(&first), expected[..3]);
        assert_eq!(first["has_more"], true);
        let after = first["last_id"].as_str().unwrap();
        let second = ok(&app
            .get(&format!("{base}?order={order}&limit=3&after={after}"))
            .await);
        assert_eq!(item_ids(&second), expected[3..]);
        assert_eq!(second["has_more"], false);
    }
    let one = ok(&app.get(&format!("{base}/msg_1a")).await);
    assert_eq!(one["content"][0]["text"], "Hi!");
    assert_eq!(
        field_names(&one),
        ["type", "id", "status", "role", "content"]
    );
    // Deleting the user's half keeps the exchange with an empty message.
    let after_delete = ok(&app
        .call(Method::DELETE, &format!("{base}/msg_1u"), None, None)
        .await);
    assert_eq!(after_delete["id"], id.as_str());
    openai_error(
        &app.get(&format!("{base}/msg_1u")).await,
        StatusCode::NOT_FOUND,
    );
    openai_error(
        &app.call(Method::DELETE, &format!("{base}/msg_1u"), None, None)
            .await,
        StatusCode::NOT_FOUND,
    );
    let history = ok(&app.get(&format!("/chat/history/{id}")).await);
    assert_eq!(history[0]["user_message"], "");
    assert_eq!(history[0]["bot_reply"], "Hi!");
    // Deleting the other half removes the exchange; a cursor on a gone item still places.
    ok(&app
        .call(Method::DELETE, &format!("{base}/msg_1a"), None, None)
        .await);
    let history = ok(&app.get(&format!("/chat/history/{id}")).await);
    assert_eq!(history.as_array().unwrap().len(), 1);
    assert_eq!(history[0]["user_message"], "Bye");
    let rest = ok(&app.get(&format!("{base}?order=asc&after=msg_1a")).await);
    assert_eq!(item_ids(&rest), ["msg_2u", "msg_2a"]);
    // Items added later are stored as given; an assistant item answers an open exchange.
    let added = ok(&post(
        &app,
        &base,
        json!({"items": [{"role": "user", "content": "Still there?"}]}),
    )
    .await);
    assert_eq!(item_ids(&added), ["msg_3u"]);
    let answered = ok(&post(&app, &base, json!({"items": [{"role": "assistant", "content": "Yes."}, {"role": "assistant", "content": "Alone"}]})).await);
    assert_eq!(item_ids(&answered), ["msg_3a", "msg_4a"]);
    assert_eq!(texts(&answered), ["Yes.", "Alone"]);
    let history = ok(&app.get(&format!("/chat/history/{id}")).await);
    assert_eq!(
        exchanges(&history)[1..],
        pairs(&[("Still there?", "Yes."), ("", "Alone")])
    );
}

async fn responses_answer_from_the_conversation_and_store_both(app: TestApp) {
    let id = conversation(&app).await;
    let response = ok(&post(
        &app,
        "/v1/responses",
        json!({"model": MODEL, "input": "what did I just say?", "conversation": id}),
    )
    .await);
    assert_eq!(response["object"], "response");
    assert_eq!(response["status"], "completed");
    assert!(response["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(response["output_text"], "You said: \"Bye\"");
    assert_eq!(response["output"][0]["id"], "msg_3a");
    assert_eq!(
        response["output"][0]["content"][0]["text"],
        "You said: \"Bye\""
    );
    assert_eq!(response["conversation"], json!({"id": id}));
    let history = ok(&app.get(&format!("/chat/history/{id}")).await);
    assert_eq!(history[2]["user_message"], "what did I just say?");
    assert_eq!(history[2]["bot_reply"], "You said: \"Bye\"");
    // Input items before the last are stored as given, in order.
    let response = ok(&post(
        &app,
        "/v1/responses",
        json!({"model": MODEL, "conversation": {"id": id}, "input": [
            {"role": "developer", "content": "be nice"},
            {"role": "user", "content": "Earlier"},
            {"role": "assistant", "content": "Noted"},
            {"role": "user", "content": "hello again"},
        ]}),
    )
    .await);
    assert_eq!(
        response["output_text"],
        "Hi there! How can I help you today?"
    );
    let items = ok(&app
        .get(&format!("/v1/conversations/{id}/items?limit=4"))
        .await);
    assert_eq!(
        texts(&items),
        [
            "Hi there! How can I help you today?",
            "hello again",
            "Noted",
            "Earlier"
        ]
    );
    // Without a conversation nothing is stored.
    let before = app.get("/chat/sessions").await.text().to_owned();
    let alone = ok(&post(
        &app,
        "/v1/responses",
        json!({"model": MODEL, "input": "fastapi?"}),
    )
    .await);
    assert!(
        alone["output_text"]
            .as_str()
            .unwrap()
            .starts_with("FastAPI is")
    );
    assert_eq!(alone["conversation"], Value::Null);
    assert_eq!(app.get("/chat/sessions").await.text(), before);
}

/// The `data` of each event of a streamed response, with its `event` name checked.
fn response_events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|event| {
            let (name, data) = event.split_once('\n').expect("event and data lines");
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(
                name.strip_prefix("event: "),
                data["type"].as_str(),
                "{event}"
            );
            data
        })
        .collect()
}

async fn streamed_responses_are_stored_once_complete(app: TestApp) {
    let id = conversation(&app).await;
    let response = post(
        &app,
        "/v1/responses",
        json!({"model": MODEL, "input": "what did I just say?", "conversation": id, "stream": true}),
    )
    .await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    let events = response_events(response.text());
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    assert_eq!(
        kinds[kinds.len() - 4..],
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    let deltas: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, "You said: \"Bye\"");
    let numbers: Vec<u64> = events
        .iter()
        .map(|e| e["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, (0..events.len() as u64).collect::<Vec<_>>());
    let completed = &events.last().unwrap()["response"];
    assert_eq!(
        (
            completed["status"].as_str(),
            completed["output_text"].as_str()
        ),
        (Some("completed"), Some("You said: \"Bye\""))
    );
    let history = ok(&app.get(&format!("/chat/history/{id}")).await);
    assert_eq!(history[2]["bot_reply"], "You said: \"Bye\"");
}

async fn chat_completions_answer_and_stream(app: TestApp) {
    let body = json!({"model": MODEL, "messages": [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "what did I just say?"},
    ]});
    let completion = ok(&post(&app, "/v1/chat/completions", body.clone()).await);
    assert_eq!(completion["object"], "chat.completion");
    assert!(completion["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(completion["model"], MODEL);
    assert_eq!(completion["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        completion["choices"][0]["message"]["content"],
        "You said: \"Hi\""
    );
    assert_eq!(completion["choices"][0]["finish_reason"], "stop");
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let response = post(&app, "/v1/chat/completions", streamed).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    let events: Vec<&str> = response
        .text()
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("an SSE data line"))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks.len() > 3, "the reply comes in pieces");
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"])
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "You said: \"Hi\"");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
    // Stateless: nothing stored.
    assert_eq!(app.get("/chat/sessions").await.text(), "[]");
    let models = ok(&app.get("/v1/models").await);
    assert_eq!(models["data"][0]["id"], MODEL);
    assert_eq!(
        ok(&app.get(&format!("/v1/models/{MODEL}")).await)["object"],
        "model"
    );
    let unknown = openai_error(&app.get("/v1/models/gpt-4o").await, StatusCode::NOT_FOUND);
    assert_eq!(unknown["code"], "model_not_found");
}

/// A request and the error it must get: method, URI, body, status, `param`.
type Case = (
    Method,
    String,
    Option<Value>,
    StatusCode,
    Option<&'static str>,
);

async fn bad_input_gets_openai_errors_and_changes_nothing(app: TestApp) {
    let id = conversation(&app).await;
    let items = format!("/v1/conversations/{id}/items");
    let before = app
        .get(&format!("/chat/history/{id}"))
        .await
        .text()
        .to_owned();
    let many: serde_json::Map<String, Value> =
        (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
    let too_many_items: Vec<Value> = (0..21)
        .map(|_| json!({"role": "user", "content": "x"}))
        .collect();
    let cases: Vec<Case> = vec![
        (
            Method::GET,
            "/v1/conversations/conv_nope".into(),
            None,
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            Method::GET,
            "/v1/conversations/conv_nope/items".into(),
            None,
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            Method::POST,
            "/v1/conversations/conv_nope/items".into(),
            Some(json!({"items": [{"role": "user", "content": "x"}]})),
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            Method::DELETE,
            "/v1/conversations/conv_nope".into(),
            None,
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            Method::POST,
            "/v1/responses".into(),
            Some(json!({"model": MODEL, "input": "hi", "conversation": "conv_nope"})),
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            Method::GET,
            format!("{items}?after=bogus"),
            None,
            StatusCode::BAD_REQUEST,
            Some("after"),
        ),
        (
            Method::GET,
            format!("{items}?limit=0"),
            None,
            StatusCode::BAD_REQUEST,
            Some("limit"),
        ),
        (
            Method::GET,
            format!("{items}?limit=101"),
            None,
            StatusCode::BAD_REQUEST,
            Some("limit"),
        ),
        (
            Method::GET,
            format!("{items}?order=up"),
            None,
            StatusCode::BAD_REQUEST,
            Some("order"),
        ),
        (
            Method::GET,
            format!("{items}/msg_9u"),
            None,
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            Method::GET,
            format!("{items}/bogus"),
            None,
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            Method::POST,
            format!("/v1/conversations/{id}"),
            Some(json!({"metadata": Value::Object(many.clone())})),
            StatusCode::BAD_REQUEST,
            Some("metadata"),
        ),
        (
            Method::POST,
            format!("/v1/conversations/{id}"),
            Some(json!({"metadata": {"k": 1}})),
            StatusCode::BAD_REQUEST,
            Some("metadata.k"),
        ),
        (
            Method::POST,
            format!("/v1/conversations/{id}"),
            Some(json!({"metadata": {"k": "v".repeat(513)}})),
            StatusCode::BAD_REQUEST,
            Some("metadata.k"),
        ),
        (
            Method::POST,
            format!("/v1/conversations/{id}"),
            Some(json!({})),
            StatusCode::BAD_REQUEST,
            Some("metadata"),
        ),
        (
            Method::POST,
            "/v1/conversations".into(),
            Some(json!({"metadata": "x"})),
            StatusCode::BAD_REQUEST,
            Some("metadata"),
        ),
        (
            Method::POST,
            "/v1/conversations".into(),
            Some(json!({"items": too_many_items})),
            StatusCode::BAD_REQUEST,
            Some("items"),
        ),
        (
            Method::POST,
            items.clone(),
            Some(json!({"items": [{"role": "system", "content": "x"}]})),
            StatusCode::BAD_REQUEST,
            Some("items[0].role"),
        ),
        (
            Method::POST,
            items.clone(),
            Some(json!({"items": [{"role": "user", "content": 5}]})),
            StatusCode::BAD_REQUEST,
            Some("items[0].content"),
        ),
        (
            Method::POST,
            items.clone(),
            Some(
                json!({"items": [{"role": "user", "content": "ok"}, {"role": "user", "content": ""}]}),
            ),
            StatusCode::BAD_REQUEST,
            Some("items[1].content"),
        ),
        (
            Method::POST,
            items.clone(),
            Some(json!({})),
            StatusCode::BAD_REQUEST,
            Some("items"),
        ),
        (
            Method::POST,
            items.clone(),
            Some(json!([1])),
            StatusCode::BAD_REQUEST,
            Some("body"),
        ),
        (
            Method::POST,
            "/v1/responses".into(),
            Some(json!({"input": "hi"})),
            StatusCode::BAD_REQUEST,
            Some("model"),
        ),
        (
            Method::POST,
            "/v1/responses".into(),
            Some(json!({"model": "gpt-4o", "input": "hi"})),
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            Method::POST,
            "/v1/responses".into(),
            Some(json!({"model": MODEL, "input": 3})),
            StatusCode::BAD_REQUEST,
            Some("input"),
        ),
        (
            Method::POST,
            "/v1/responses".into(),
            Some(json!({"model": MODEL, "input": "hi", "conversation": id, "stream": "yes"})),
            StatusCode::BAD_REQUEST,
            Some("stream"),
        ),
        (
            Method::POST,
            "/v1/responses".into(),
            Some(
                json!({"model": MODEL, "input": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "conversation": id}),
            ),
            StatusCode::BAD_REQUEST,
            Some("input"),
        ),
        (
            Method::POST,
            "/v1/chat/completions".into(),
            Some(json!({"model": MODEL})),
            StatusCode::BAD_REQUEST,
            Some("messages"),
        ),
        (
            Method::POST,
            "/v1/chat/completions".into(),
            Some(json!({"model": MODEL, "messages": [], "stream": "yes"})),
            StatusCode::BAD_REQUEST,
            Some("stream"),
        ),
        (
            Method::POST,
            "/v1/chat/completions".into(),
            Some(json!({"model": MODEL, "messages": [{"role": "assistant", "content": "x"}]})),
            StatusCode::BAD_REQUEST,
            Some("messages"),
        ),
        (
            Method::GET,
            "/v1/nothing".into(),
            None,
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            Method::PUT,
            "/v1/models".into(),
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            None,
        ),
    ];
    for (method, uri, body, status, param) in cases {
        let response = app.call(method.clone(), &uri, None, body.clone()).await;
        let error = openai_error(&response, status);
        assert_eq!(
            error["param"].as_str(),
            param,
            "{method} {uri} {body:?}: {error}"
        );
    }
    let broken = app
        .request(
            Method::POST,
            "/v1/conversations",
            Some("application/json"),
            "{\"metadata\":",
        )
        .await;
    assert_eq!(
        openai_error(&broken, StatusCode::BAD_REQUEST)["code"],
        "invalid_json"
    );
    assert_eq!(app.get(&format!("/chat/history/{id}")).await.text(), before);
    assert_eq!(
        ok(&app.get(&format!("/v1/conversations/{id}")).await)["metadata"],
        json!({"topic": "demo", "lang": "en"})
    );
    let sessions = ok(&app.get("/chat/sessions").await);
    assert_eq!(
        sessions.as_array().unwrap().len(),
        1,
        "no stray conversation: {sessions}"
    );
}

http_suite!(
    a_conversation_is_a_session_both_ways,
    items_page_both_ways_and_delete_for_good,
    responses_answer_from_the_conversation_and_store_both,
    chat_completions_answer_and_stream,
    streamed_responses_are_stored_once_complete,
    bad_input_gets_openai_errors_and_changes_nothing,
);

fn keyed(store: Arc<dyn Store>) -> TestApp {
    TestApp::from_state(
        AppState::new(store, Chatbot::seed(), Default::default())
            .with_api_keys(ApiKeys::new(["alpha-key", "beta-key"]))
            .with_rate_limit(1000, 1000),
    )
}

const ALPHA: Option<(&str, &str)> = Some(("authorization", "Bearer alpha-key"));
const BETA: Option<(&str, &str)> = Some(("authorization", "Bearer beta-key"));

async fn keys_never_see_each_others_conversations(store: Arc<dyn Store>) {
    let app = keyed(store);
    let created = app
        .call(
            Method::POST,
            "/v1/conversations",
            ALPHA,
            Some(json!({"items": [{"role": "user", "content": "mine"}]})),
        )
        .await;
    let id = ok(&created)["id"].as_str().unwrap().to_owned();
    let said = app
        .call(
            Method::POST,
            "/chat",
            ALPHA,
            Some(json!({"user_message": "seed", "session_id": "shared"})),
        )
        .await;
    ok(&said);
    for conversation in [id.as_str(), "shared"] {
        let base = format!("/v1/conversations/{conversation}");
        let every_route: Vec<(Method, String, Option<Value>)> = vec![
            (Method::GET, base.clone(), None),
            (
                Method::POST,
                base.clone(),
                Some(json!({"metadata": {"x": "y"}})),
            ),
            (Method::GET, format!("{base}/items"), None),
            (
                Method::POST,
                format!("{base}/items"),
                Some(json!({"items": [{"role": "user", "content": "intruder"}]})),
            ),
            (Method::GET, format!("{base}/items/msg_1u"), None),
            (Method::DELETE, format!("{base}/items/msg_1u"), None),
            (
                Method::POST,
                "/v1/responses".into(),
                Some(json!({"model": MODEL, "input": "hi", "conversation": conversation})),
            ),
            (Method::DELETE, base.clone(), None),
        ];
        for (method, uri, body) in &every_route {
            let response = app.call(method.clone(), uri, BETA, body.clone()).await;
            openai_error(&response, StatusCode::NOT_FOUND);
            let anonymous = app.call(method.clone(), uri, None, body.clone()).await;
            let error = openai_error(&anonymous, StatusCode::UNAUTHORIZED);
            assert_eq!(error["code"], "invalid_api_key");
            assert_eq!(
                anonymous.header("www-authenticate"),
                Some(r#"Bearer error="invalid_token""#)
            );
        }
        // Untouched for its owner.
        let items = ok(&app
            .call(Method::GET, &format!("{base}/items?order=asc"), ALPHA, None)
            .await);
        assert_eq!(item_ids(&items)[0], "msg_1u", "{items}");
        assert_eq!(
            ok(&app.call(Method::GET, &base, ALPHA, None).await)["metadata"],
            json!({})
        );
    }
    // Beta's own conversation under the same id is another one.
    let beta_said = app
        .call(
            Method::POST,
            "/chat",
            BETA,
            Some(json!({"user_message": "theirs", "session_id": "shared"})),
        )
        .await;
    ok(&beta_said);
    let beta_items = ok(&app
        .call(Method::GET, "/v1/conversations/shared/items", BETA, None)
        .await);
    assert_eq!(texts(&beta_items)[1], "theirs");
    let models = app.call(Method::GET, "/v1/models", None, None).await;
    openai_error(&models, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn keys_never_see_each_others_conversations_on_memory() {
    keys_never_see_each_others_conversations(crate::helpers::memory().store.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_never_see_each_others_conversations_on_sqlite() {
    let backend = crate::helpers::sqlite().await;
    keys_never_see_each_others_conversations(backend.store.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_never_see_each_others_conversations_on_postgres() {
    let Some(backend) = crate::helpers::postgres().await else {
        return;
    };
    keys_never_see_each_others_conversations(backend.store.clone()).await;
}

#[tokio::test]
async fn the_rate_limit_is_one_bucket_for_both_apis_with_each_apis_429() {
    let app = TestApp::from_state(
        AppState::new(
            crate::helpers::memory().store.clone(),
            Chatbot::seed(),
            Default::default(),
        )
        .with_api_keys(ApiKeys::new(["alpha-key"]))
        .with_rate_limit(1, 2),
    );
    ok(&app.call(Method::GET, "/v1/models", ALPHA, None).await);
    let seed = app.call(Method::GET, "/chat/sessions", ALPHA, None).await;
    assert_eq!(seed.status, StatusCode::OK);
    let limited = app.call(Method::GET, "/v1/models", ALPHA, None).await;
    let error = openai_error(&limited, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error["code"], "rate_limit_exceeded");
    assert!(limited.header("retry-after").is_some());
    let seed = app.call(Method::GET, "/chat/sessions", ALPHA, None).await;
    assert_eq!(seed.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(seed.json(), json!({"detail": "Rate limit exceeded"}));
}
