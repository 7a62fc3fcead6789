//! `POST /v1/responses`: the answer to the input's last user message, stored
//! in a conversation when one is named; whole, or streamed as OpenAI's
//! response events.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::body::Body as HttpBody;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Map, Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::OpenAiError;
use super::input::{Body, Message, Role, could_be_conversation, messages};
use super::schema::{
    BodyErrors, ErrorBody, KeyErrors, ResponseObject, ResponseRequest, StorageError,
};
use super::{
    Half, MODEL, check_model, context, exchanges_of, item_id, last_user_message, message_json,
    new_id, words,
};
use crate::domain::models::{SessionId, now};
use crate::domain::replies::Streamed;
use crate::domain::store::NewExchange;
use crate::http::AppState;
use crate::http::auth::Owner;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(responses))
}

/// A checked `POST /v1/responses` body.
struct Request {
    input: Vec<Message>,
    /// Where the user message to answer is in `input`.
    at: usize,
    conversation: Option<String>,
    instructions: Option<String>,
    metadata: Map<String, Value>,
    stream: bool,
}

impl Request {
    fn parse(body: &Body, state: &AppState) -> Result<Self, OpenAiError> {
        check_model(body)?;
        if body.text("previous_response_id")?.is_some() {
            return Err(OpenAiError::invalid(
                "previous_response_id",
                "unsupported_parameter",
                "Responses are not kept: pass 'conversation' to continue one.",
            ));
        }
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
        let metadata = body
            .metadata()?
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        Ok(Self {
            at: last_user_message(&input, "input")?,
            input,
            conversation,
            instructions: body.text("instructions")?.map(str::to_owned),
            metadata,
            stream: body.flag("stream")?.unwrap_or(false),
        })
    }

    /// The response object, `status` and `output` as given.
    fn object(&self, id: &str, created_at: i64, status: &str, output: &[(String, &str)]) -> Value {
        let input_tokens: usize = self.input.iter().map(|m| words(&m.text)).sum();
        let text: String = output.iter().map(|(_, text)| *text).collect();
        let output_tokens = words(&text);
        json!({
            "id": id,
            "object": "response",
            "created_at": created_at,
            "status": status,
            "error": null,
            "incomplete_details": null,
            "instructions": self.instructions,
            "max_output_tokens": null,
            "model": MODEL,
            "output": output.iter().map(|(id, text)| message_json(id, Half::Assistant, text)).collect::<Vec<_>>(),
            "output_text": text,
            "parallel_tool_calls": false,
            "previous_response_id": null,
            "conversation": self.conversation.as_ref().map(|id| json!({"id": id})),
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
            "metadata": self.metadata,
        })
    }

    /// The session the answer goes in, once the input before the user
    /// message is stored there; `None` without a conversation.
    async fn prepare(
        &self,
        state: &AppState,
        owner: &Owner,
        created_at: i64,
    ) -> Result<Option<SessionId>, OpenAiError> {
        let Some(id) = &self.conversation else {
            return Ok(None);
        };
        let session = SessionId::from_store_key(owner.scope(id));
        let missing = || OpenAiError::no_conversation(id);
        if !could_be_conversation(id)
            || state
                .store
                .conversation(session.as_str(), false)
                .await?
                .is_none()
        {
            return Err(missing());
        }
        let earlier: Vec<Message> = self.input[..self.at]
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
        Ok(Some(session))
    }

    fn exchange(&self, created_at: i64) -> NewExchange {
        NewExchange {
            user_message: Arc::from(self.input[self.at].text.as_str()),
            user_name: Arc::from("User"),
            timestamp: created_at,
        }
    }
}

#[utoipa::path(post, path = "/v1/responses", operation_id = "create_response", tag = "openai",
    summary = "Create a response",
    description = "Answers the input's last user message (the rules, or the model with `--llm-url`). With `conversation`, the input is stored in that conversation (earlier input messages as given, the last one with the answer) and the answer reads the conversation's history; without it nothing is stored. With `stream: true`, OpenAI's response events as Server-Sent Events; in a conversation the exchange is stored once the answer is complete, even if the client has gone.",
    request_body = ResponseRequest,
    responses(
        (status = 200, description = "The response (or its events, streamed)", content(
            (ResponseObject = "application/json"),
            (String = "text/event-stream"),
        )),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 404, description = "No such conversation or model", body = ErrorBody),
        KeyErrors,
        StorageError,
        BodyErrors,
        (status = 502, description = "The model server failed; nothing stored", body = ErrorBody),
        (status = 504, description = "The model server timed out; nothing stored", body = ErrorBody),
        (status = 507, description = "A session or message cap was reached; nothing stored", body = ErrorBody),
    ))]
async fn responses(
    State(state): State<AppState>,
    owner: Owner,
    body: Body,
) -> Result<Response, OpenAiError> {
    let request = Request::parse(&body, &state)?;
    let created_at = now();
    let session = request.prepare(&state, &owner, created_at).await?;
    if request.stream {
        return stream(state, request, session, created_at).await;
    }
    let (reply, output_id) = match session {
        None => (
            state
                .replies
                .answer_once(
                    &context(&request.input, request.at),
                    &request.input[request.at].text,
                )
                .await?,
            new_id("msg_"),
        ),
        Some(session) => {
            let stored = state
                .replies
                .answer(&*state.store, &session, request.exchange(created_at))
                .await?;
            (
                stored.bot_reply.clone(),
                item_id(stored.seq, Half::Assistant),
            )
        }
    };
    let object = request.object(
        &new_id("resp_"),
        created_at,
        "completed",
        &[(output_id, &reply)],
    );
    Ok(Json(object).into_response())
}

/// The answer as OpenAI's response events, each `event: TYPE` and
/// `data: {…, "type": TYPE, "sequence_number": n}`.
async fn stream(
    state: AppState,
    request: Request,
    session: Option<SessionId>,
    created_at: i64,
) -> Result<Response, OpenAiError> {
    // Failures before the first piece (a model that cannot be reached) are
    // still a plain error status.
    let pieces: futures_util::stream::BoxStream<'static, Streamed> = match session {
        None => {
            let history = context(&request.input, request.at);
            let text = request.input[request.at].text.clone();
            state
                .replies
                .stream_once(&history, &text)
                .await?
                .map(|piece| match piece {
                    Ok(text) => Streamed::Piece(text),
                    Err(err) => Streamed::Failed(err.into()),
                })
                .boxed()
        }
        Some(session) => {
            let receiver = state
                .replies
                .answer_streaming(state.store.clone(), session, request.exchange(created_at))
                .await?;
            futures_util::stream::unfold(receiver, |mut receiver| async move {
                receiver.recv().await.map(|item| (item, receiver))
            })
            .boxed()
        }
    };
    let events = Events {
        response_id: new_id("resp_"),
        // The stored item's id is known only at the end: the stream names
        // its message with an id of its own.
        item_id: new_id("msg_"),
        created_at,
        sequence: 0,
        text: String::new(),
        request,
    };
    let body = futures_util::stream::unfold(
        (pieces, events, Stage::Head),
        |(mut pieces, mut events, stage)| async move {
            let (chunk, next) = match stage {
                Stage::Head => (events.head(), Stage::Body),
                Stage::Body => match pieces.next().await {
                    Some(Streamed::Piece(text)) => (events.delta(text), Stage::Body),
                    Some(Streamed::Stored(_)) => (String::new(), Stage::Body),
                    Some(Streamed::Failed(err)) => (events.failed(err.into()), Stage::End),
                    None => (events.tail(), Stage::End),
                },
                Stage::End => return None,
            };
            Some((Ok::<_, Infallible>(chunk), (pieces, events, next)))
        },
    );
    Ok(super::event_stream(HttpBody::from_stream(body)))
}

enum Stage {
    Head,
    Body,
    End,
}

/// Writes one response's events.
struct Events {
    response_id: String,
    item_id: String,
    created_at: i64,
    sequence: u64,
    text: String,
    request: Request,
}

impl Events {
    fn event(&mut self, kind: &str, mut data: Value) -> String {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        format!("event: {kind}\ndata: {data}\n\n")
    }

    fn response(&self, status: &str, done: bool) -> Value {
        let output = if done {
            vec![(self.item_id.clone(), self.text.as_str())]
        } else {
            Vec::new()
        };
        self.request
            .object(&self.response_id, self.created_at, status, &output)
    }

    fn item(&self, status: &str, text: Option<&str>) -> Value {
        let mut item = message_json(&self.item_id, Half::Assistant, text.unwrap_or(""));
        item["status"] = json!(status);
        if text.is_none() {
            item["content"] = json!([]);
        }
        item
    }

    fn head(&mut self) -> String {
        let created = self.response("in_progress", false);
        let item = self.item("in_progress", None);
        let item_id = self.item_id.clone();
        [
            self.event("response.created", json!({ "response": created.clone() })),
            self.event("response.in_progress", json!({ "response": created })),
            self.event(
                "response.output_item.added",
                json!({"output_index": 0, "item": item}),
            ),
            self.event(
                "response.content_part.added",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []}}),
            ),
        ]
        .concat()
    }

    fn delta(&mut self, text: String) -> String {
        self.text.push_str(&text);
        let item_id = self.item_id.clone();
        self.event(
            "response.output_text.delta",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "delta": text, "logprobs": []}),
        )
    }

    fn tail(&mut self) -> String {
        let item_id = self.item_id.clone();
        let text = self.text.clone();
        let item = self.item("completed", Some(&text));
        let completed = self.response("completed", true);
        [
            self.event(
                "response.output_text.done",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
            ),
            self.event(
                "response.content_part.done",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0,
                    "part": {"type": "output_text", "text": text, "annotations": []}}),
            ),
            self.event("response.output_item.done", json!({"output_index": 0, "item": item})),
            self.event("response.completed", json!({ "response": completed })),
        ]
        .concat()
    }

    fn failed(&mut self, error: OpenAiError) -> String {
        let mut response = self.response("failed", false);
        response["error"] =
            json!({"code": error.code.unwrap_or("server_error"), "message": error.message});
        self.event("response.failed", json!({ "response": response }))
    }
}
