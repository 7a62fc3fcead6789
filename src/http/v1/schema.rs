//! The `/v1` shapes as the OpenAPI document shows them. Handlers build
//! their JSON directly; these types only describe it (tests check that the
//! answers match).

#![allow(dead_code)]

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

/// `{"error": {...}}`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"error": {"message": "Conversation with id 'conv_x' not found.",
    "type": "invalid_request_error", "param": null, "code": null}}))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    /// `invalid_request_error` or `server_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The field at fault, e.g. `metadata.topic`, `items[2].role`.
    pub param: Option<String>,
    /// e.g. `invalid_type`, `missing_required_parameter`, `model_not_found`.
    pub code: Option<String>,
}

/// The errors of the key check and the rate limit, on every `/v1` route.
#[derive(utoipa::IntoResponses)]
pub enum KeyErrors {
    #[response(
        status = 401,
        description = "API key or token missing or invalid (when the server has keys or tokens)"
    )]
    Unauthorized(ErrorBody),
    #[response(status = 429, description = "Rate limit exceeded")]
    TooManyRequests(ErrorBody),
}

/// The error of a `/v1` route that touches stored conversations.
#[derive(utoipa::IntoResponses)]
pub enum StorageError {
    #[response(status = 503, description = "Storage unavailable")]
    Unavailable(ErrorBody),
}

/// The errors of reading a request body.
#[derive(utoipa::IntoResponses)]
pub enum BodyErrors {
    #[response(status = 408, description = "The body arrived too slowly")]
    TooSlow(ErrorBody),
    #[response(status = 413, description = "Body larger than the limit")]
    TooLarge(ErrorBody),
}

/// Up to 16 pairs; keys of at most 64 characters, values of at most 512.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"topic": "billing"}))]
pub struct Metadata(pub BTreeMap<String, String>);

/// The kinds of text part.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PartType {
    InputText,
    OutputText,
    Text,
}

/// A text part of a message.
#[derive(Serialize, ToSchema)]
pub struct TextPart {
    #[serde(rename = "type")]
    pub kind: PartType,
    pub text: String,
}

/// A message's content: text, or text parts (joined with newlines).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum Content {
    Text(NonEmptyText),
    Parts(TextParts),
}

/// Text of at least one character.
#[derive(Serialize, ToSchema)]
#[schema(min_length = 1)]
pub struct NonEmptyText(pub String);

/// At least one text part.
#[derive(Serialize, ToSchema)]
#[schema(min_items = 1)]
pub struct TextParts(pub Vec<TextPart>);

/// Who wrote a message.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Assistant,
    System,
    Developer,
}

/// The one kind of item stored.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ItemType {
    Message,
}

/// An item list's order.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    Asc,
    Desc,
}

/// A message given to the server. Conversations store `user` and
/// `assistant` messages; `system` and `developer` ones are read by nothing
/// (accepted by Responses and Chat Completions, refused by Conversations).
#[derive(Serialize, ToSchema)]
pub struct InputMessage {
    #[serde(rename = "type")]
    pub kind: Option<ItemType>,
    pub role: Role,
    pub content: Content,
}

/// `POST /v1/conversations`.
#[derive(Serialize, ToSchema)]
pub struct ConversationCreate {
    /// At most 20, stored as given.
    #[schema(max_items = 20)]
    pub items: Option<Vec<InputMessage>>,
    pub metadata: Option<Metadata>,
}

/// `POST /v1/conversations/{id}`.
#[derive(Serialize, ToSchema)]
pub struct ConversationUpdate {
    pub metadata: Metadata,
}

/// `POST /v1/conversations/{id}/items`.
#[derive(Serialize, ToSchema)]
pub struct ItemsCreate {
    /// At most 20, stored as given.
    #[schema(max_items = 20)]
    pub items: Vec<InputMessage>,
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"id": "conv_6f1c0e0b9a0d4b5e8f3a2c1d0e9f8a7b", "object": "conversation",
    "created_at": 1_764_000_000, "metadata": {"topic": "billing"}}))]
pub struct ConversationObject {
    pub id: String,
    /// `conversation`.
    pub object: String,
    /// Unix seconds.
    pub created_at: i64,
    pub metadata: Metadata,
}

#[derive(Serialize, ToSchema)]
pub struct ConversationDeleted {
    pub id: String,
    /// `conversation.deleted`.
    pub object: String,
    pub deleted: bool,
}

/// A stored message: the user's (`input_text`) or the bot's (`output_text`).
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"type": "message", "id": "msg_1u", "status": "completed", "role": "user",
    "content": [{"type": "input_text", "text": "Hello!"}]}))]
pub struct ItemObject {
    /// `message`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `msg_{n}u` or `msg_{n}a`: exchange `n`'s user or assistant half.
    pub id: String,
    /// `completed`.
    pub status: String,
    /// `user` or `assistant`.
    pub role: String,
    pub content: Vec<TextPart>,
}

#[derive(Serialize, ToSchema)]
pub struct ItemList {
    /// `list`.
    pub object: String,
    pub data: Vec<ItemObject>,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub has_more: bool,
}

/// A conversation, by id or as `{"id": …}`.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum ConversationRef {
    Id(String),
    Object { id: String },
}

/// Input: one user message as text, or messages ending with a user's.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum ResponseInput {
    Text(String),
    Messages(Vec<InputMessage>),
}

/// `POST /v1/responses`.
#[derive(Serialize, ToSchema)]
pub struct ResponseRequest {
    /// `chatbot-rules`.
    pub model: String,
    pub input: ResponseInput,
    /// Store the input and the answer in this conversation, which the bot reads.
    pub conversation: Option<ConversationRef>,
    /// Accepted; the rule engine reads no instructions.
    pub instructions: Option<String>,
    pub metadata: Option<Metadata>,
    /// Answer as Server-Sent Events (OpenAI's response events).
    pub stream: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct ResponseObject {
    /// `resp_…`.
    pub id: String,
    /// `response`.
    pub object: String,
    pub created_at: i64,
    /// `completed`.
    pub status: String,
    pub model: String,
    /// One assistant message; its id is the stored item's when a
    /// conversation was given.
    pub output: Vec<ItemObject>,
    /// The answer's text.
    pub output_text: String,
    pub conversation: Option<ConversationRefObject>,
    pub metadata: Metadata,
}

#[derive(Serialize, ToSchema)]
pub struct ConversationRefObject {
    pub id: String,
}

/// `POST /v1/chat/completions`.
#[derive(Serialize, ToSchema)]
pub struct ChatCompletionRequest {
    /// `chatbot-rules`.
    pub model: String,
    /// Ending with a user message.
    pub messages: Vec<InputMessage>,
    /// Answer as Server-Sent Events.
    pub stream: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct ChatCompletion {
    /// `chatcmpl-…`.
    pub id: String,
    /// `chat.completion`.
    pub object: String,
    pub created: i64,
    pub model: String,
    pub choices: Vec<Choice>,
}

#[derive(Serialize, ToSchema)]
pub struct Choice {
    pub index: u32,
    pub message: AssistantMessage,
    /// `stop`.
    pub finish_reason: String,
}

#[derive(Serialize, ToSchema)]
pub struct AssistantMessage {
    /// `assistant`.
    pub role: String,
    pub content: String,
}

#[derive(Serialize, ToSchema)]
pub struct ModelObject {
    /// `chatbot-rules`.
    pub id: String,
    /// `model`.
    pub object: String,
    pub created: i64,
    pub owned_by: String,
}

#[derive(Serialize, ToSchema)]
pub struct ModelList {
    /// `list`.
    pub object: String,
    pub data: Vec<ModelObject>,
}
