//! Replies through the OpenAI protocol: `POST /v1/responses` (stored in a
//! conversation when one is named), `POST /v1/chat/completions` (stateless,
//! streamed as Server-Sent Events on request) and `GET /v1/models`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::body::Body as HttpBody;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::OpenAiError;
use super::input::{Body, Message, Role, messages};
use super::schema::{
    ChatCompletion, ChatCompletionRequest, ErrorBody, ModelList, ModelObject, ResponseObject,
    ResponseRequest,
};
use super::{Half, MODEL, exchanges_of, item_id, message_json, new_id};
use crate::domain::models::{ConversationEntry, SessionId, now};
use crate::domain::store::NewExchange;
use crate::http::AppState;
use crate::http::auth::Owner;
use futures_util::StreamExt;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(responses))
        .routes(routes!(chat_completions))
        .routes(routes!(models))
        .routes(routes!(model))
}

/// `model` must name the reply engine.
fn check_model(body: &Body) -> Result<(), OpenAiError> {
    match body.text("model")? {
        None => Err(OpenAiError::missing("model")),
        Some(MODEL) => Ok(()),
        Some(other) => Err(model_not_found(other)),
    }
}

fn model_not_found(name: &str) -> OpenAiError {
    OpenAiError {
        code: Some("model_not_found"),
        ..OpenAiError::not_found(format!(
            "The model '{name}' does not exist. This server's model is '{MODEL}'."
        ))
    }
}

/// The user message to answer: the last message, which must be the user's.
fn last_user_message(messages: &[Message], param: &str) -> Result<usize, OpenAiError> {
    match messages.iter().rposition(|m| m.role != Role::System) {
        Some(at) if messages[at].role == Role::User => Ok(at),
        _ => Err(OpenAiError::invalid(
            param,
            "invalid_value",
            format!("Invalid '{param}': the last message must be a 'user' message."),
        )),
    }
}

/// The exchanges before `messages[at]`, as the reply engine reads them.
fn context(messages: &[Message], at: usize) -> Vec<ConversationEntry> {
    exchanges_of(&messages[..at], now())
}

/// Rough token counts for `usage`: words, as the rule engine has no tokenizer.
fn words(text: &str) -> usize {
    text.split_whitespace().count()
}

#[utoipa::path(post, path = "/v1/responses", operation_id = "create_response", tag = "openai",
    summary = "Create a response",
    description = "Answers the input's last user message with the rule engine. With `conversation`, the input is stored in that conversation (earlier input messages as given, the last one with the bot's answer) and the bot reads the conversation's history; without it nothing is stored.",
    request_body = ResponseRequest,
    responses(
        (status = 200, description = "The response", body = ResponseObject),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 404, description = "No such conversation or model", body = ErrorBody),
        (status = 401, description = "API key missing or wrong (when the server has keys)", body = ErrorBody),
        (status = 408, description = "The body arrived too slowly", body = ErrorBody),
        (status = 413, description = "Body larger than the limit", body = ErrorBody),
        (status = 429, description = "Rate limit exceeded", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
        (status = 507, description = "A session or message cap was reached; nothing stored", body = ErrorBody),
    ))]
async fn responses(
    State(state): State<AppState>,
    owner: Owner,
    body: Body,
) -> Result<Json<Value>, OpenAiError> {
    check_model(&body)?;
    if body.flag("stream")? == Some(true) {
        return Err(OpenAiError::invalid(
            "stream",
            "unsupported_value",
            "Streaming is not supported on /v1/responses yet; use /v1/chat/completions to stream.",
        ));
    }
    if body.text("previous_response_id")?.is_some() {
        return Err(OpenAiError::invalid(
            "previous_response_id",
            "unsupported_parameter",
            "Responses are not kept: pass 'conversation' to continue one.",
        ));
    }
    let instructions = body.text("instructions")?.map(str::to_owned);
    let metadata = body.metadata()?.unwrap_or_default();
    let input = match body.0.get("input") {
        None | Some(Value::Null) => return Err(OpenAiError::missing("input")),
        Some(Value::String(text)) => {
            let one = json!([{"role": "user", "content": text}]);
            messages(&one, "input", &state.limits).map_err(|err| OpenAiError {
                param: Some("input".into()),
                ..err
            })?
        }
        Some(value) => messages(value, "input", &state.limits)?,
    };
    let conversation = match body.0.get("conversation") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id.clone()),
        Some(Value::Object(object)) => match object.get("id") {
            Some(Value::String(id)) => Some(id.clone()),
            _ => return Err(OpenAiError::wrong_type("conversation.id", "a string")),
        },
        Some(_) => {
            return Err(OpenAiError::wrong_type(
                "conversation",
                "a string or an object with an id",
            ));
        }
    };
    let at = last_user_message(&input, "input")?;
    let created_at = now();
    let (reply, output_id) = match &conversation {
        None => (
            state
                .replies
                .answer_once(&context(&input, at), &input[at].text)
                .await?,
            new_id("msg_"),
        ),
        Some(id) => {
            let session = SessionId::from_store_key(owner.scope(id));
            let missing = || OpenAiError::no_conversation(id);
            if !super::input::could_be_conversation(id)
                || state
                    .store
                    .conversation(session.as_str(), false)
                    .await?
                    .is_none()
            {
                return Err(missing());
            }
            let earlier: Vec<Message> = input[..at]
                .iter()
                .filter(|m| m.role != Role::System)
                .cloned()
                .collect();
            if !earlier.is_empty() {
                state
                    .store
                    .import(&session, exchanges_of(&earlier, created_at))
                    .await?
                    .ok_or_else(missing)?;
            }
            let exchange = NewExchange {
                user_message: Arc::from(input[at].text.as_str()),
                user_name: Arc::from("User"),
                timestamp: created_at,
            };
            let stored = state
                .replies
                .answer(&*state.store, &session, exchange)
                .await?;
            (
                stored.bot_reply.clone(),
                item_id(stored.seq, Half::Assistant),
            )
        }
    };
    let metadata: serde_json::Map<String, Value> = metadata
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let input_tokens: usize = input.iter().map(|m| words(&m.text)).sum();
    let output_tokens = words(&reply);
    Ok(Json(json!({
        "id": new_id("resp_"),
        "object": "response",
        "created_at": created_at,
        "status": "completed",
        "error": null,
        "incomplete_details": null,
        "instructions": instructions,
        "max_output_tokens": null,
        "model": MODEL,
        "output": [message_json(&output_id, Half::Assistant, &reply)],
        "output_text": &*reply,
        "parallel_tool_calls": false,
        "previous_response_id": null,
        "conversation": conversation.map(|id| json!({"id": id})),
        "store": false,
        "temperature": null,
        "tool_choice": "auto",
        "tools": [],
        "top_p": null,
        "truncation": "disabled",
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        },
        "metadata": metadata,
    })))
}

#[utoipa::path(post, path = "/v1/chat/completions", operation_id = "create_chat_completion", tag = "openai",
    summary = "Create a chat completion",
    description = "Answers the last message (a user's) with the rule engine, the earlier user messages as its history. Stateless: nothing is stored. With `stream: true` the answer comes as Server-Sent Events, `chat.completion.chunk` objects ending with `data: [DONE]`.",
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "The completion (or its chunks, streamed)", content(
            (ChatCompletion = "application/json"),
            (String = "text/event-stream"),
        )),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 404, description = "No such model", body = ErrorBody),
        (status = 401, description = "API key missing or wrong (when the server has keys)", body = ErrorBody),
        (status = 408, description = "The body arrived too slowly", body = ErrorBody),
        (status = 413, description = "Body larger than the limit", body = ErrorBody),
        (status = 429, description = "Rate limit exceeded", body = ErrorBody),
    ))]
async fn chat_completions(
    State(state): State<AppState>,
    _owner: Owner,
    body: Body,
) -> Result<Response, OpenAiError> {
    check_model(&body)?;
    let stream = body.flag("stream")?.unwrap_or(false);
    let list = body
        .0
        .get("messages")
        .filter(|v| !v.is_null())
        .ok_or_else(|| OpenAiError::missing("messages"))?;
    let list = messages(list, "messages", &state.limits)?;
    let at = last_user_message(&list, "messages")?;
    let history = context(&list, at);
    let id = new_id("chatcmpl-");
    let created = now();
    if !stream {
        let reply = state.replies.answer_once(&history, &list[at].text).await?;
        let prompt_tokens: usize = list.iter().map(|m| words(&m.text)).sum();
        let completion_tokens = words(&reply);
        return Ok(Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": MODEL,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": &*reply, "refusal": null},
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "system_fingerprint": null,
        }))
        .into_response());
    }
    // A model that cannot be reached fails here, before the 200.
    let pieces = state.replies.stream_once(&history, &list[at].text).await?;
    let chunks = Chunks { id, created };
    let events = futures_util::stream::unfold(
        (pieces, Stage::Head, chunks),
        |(mut pieces, stage, chunks)| async move {
            let (event, next) = match stage {
                Stage::Head => (
                    chunks.event(json!({"role": "assistant", "content": ""}), None),
                    Stage::Body,
                ),
                Stage::Body => match pieces.next().await {
                    Some(Ok(text)) => (chunks.event(json!({ "content": text }), None), Stage::Body),
                    Some(Err(err)) => {
                        // The 200 is sent: the stream ends with OpenAI's error event.
                        let OpenAiError {
                            message,
                            kind,
                            code,
                            ..
                        } = OpenAiError::from(err);
                        let error = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
                        (format!("data: {error}\n\n"), Stage::End)
                    }
                    None => (chunks.event(json!({}), Some("stop")), Stage::Done),
                },
                Stage::Done => ("data: [DONE]\n\n".to_owned(), Stage::End),
                Stage::End => return None,
            };
            Some((Ok::<_, Infallible>(event), (pieces, next, chunks)))
        },
    );
    let body = HttpBody::from_stream(events);
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response())
}

/// Where a streamed completion is.
enum Stage {
    Head,
    Body,
    Done,
    End,
}

/// Writes `chat.completion.chunk` events of one completion.
struct Chunks {
    id: String,
    created: i64,
}

impl Chunks {
    fn event(&self, delta: Value, finish: Option<&str>) -> String {
        let chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        format!("data: {chunk}\n\n")
    }
}

fn model_json() -> Value {
    json!({"id": MODEL, "object": "model", "created": 0, "owned_by": "chatbot-api"})
}

#[utoipa::path(get, path = "/v1/models", operation_id = "list_models", tag = "openai",
    summary = "List models",
    description = "One model: the rule engine.",
    responses(
        (status = 200, description = "The models", body = ModelList),
        (status = 401, description = "API key missing or wrong (when the server has keys)", body = ErrorBody),
        (status = 429, description = "Rate limit exceeded", body = ErrorBody),
    ))]
async fn models(_owner: Owner) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_json()]}))
}

#[utoipa::path(get, path = "/v1/models/{model}", operation_id = "retrieve_model", tag = "openai",
    summary = "Retrieve a model",
    params(("model" = String, Path, description = "The model id")),
    responses(
        (status = 200, description = "The model", body = ModelObject),
        (status = 404, description = "No such model", body = ErrorBody),
        (status = 401, description = "API key missing or wrong (when the server has keys)", body = ErrorBody),
        (status = 429, description = "Rate limit exceeded", body = ErrorBody),
    ))]
async fn model(_owner: Owner, Path(name): Path<String>) -> Result<Json<Value>, OpenAiError> {
    if name == MODEL {
        Ok(Json(model_json()))
    } else {
        Err(model_not_found(&name))
    }
}
