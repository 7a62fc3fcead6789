//! `POST /v1/chat/completions` (stateless, streamed as Server-Sent Events
//! on request) and `GET /v1/models`.

use std::convert::Infallible;

use axum::Json;
use axum::body::Body as HttpBody;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::OpenAiError;
use super::input::{Body, messages};
use super::schema::{
    BodyErrors, ChatCompletion, ChatCompletionRequest, ErrorBody, KeyErrors, ModelList, ModelObject,
};
use super::{MODEL, check_model, context, last_user_message, model_not_found, new_id, words};
use crate::domain::models::now;
use crate::http::AppState;
use crate::http::auth::Owner;
use futures_util::StreamExt;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(chat_completions))
        .routes(routes!(models))
        .routes(routes!(model))
}

#[utoipa::path(post, path = "/v1/chat/completions", operation_id = "create_chat_completion", tag = "openai",
    summary = "Create a chat completion",
    description = "Answers the last message (a user's) with the rules, or the model with `--llm-url`, the earlier messages as its context. Stateless: nothing is stored. With `stream: true` the answer comes as Server-Sent Events, `chat.completion.chunk` objects ending with `data: [DONE]`.",
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "The completion (or its chunks, streamed)", content(
            (ChatCompletion = "application/json"),
            (String = "text/event-stream"),
        )),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 404, description = "No such model", body = ErrorBody),
        BodyErrors,
        KeyErrors,
        (status = 502, description = "The model server failed", body = ErrorBody),
        (status = 504, description = "The model server timed out", body = ErrorBody),
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
    Ok(super::event_stream(body))
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
        KeyErrors,
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
        KeyErrors,
    ))]
async fn model(_owner: Owner, Path(name): Path<String>) -> Result<Json<Value>, OpenAiError> {
    if name == MODEL {
        Ok(Json(model_json()))
    } else {
        Err(model_not_found(&name))
    }
}
