//! The OpenAI-compatible face of the same conversations, under `/v1`:
//! Conversations and their items, Responses, Chat Completions and Models,
//! so the official SDKs and chat front ends that take a base URL work.
//!
//! A conversation is a session: `/chat/history/{id}` shows the same
//! exchanges. Each exchange is two message items, the user's
//! (`msg_{seq}u`) and the bot's (`msg_{seq}a`), where `seq` is the
//! exchange's id in the store; an exchange that lost one half is one item.
//! Errors are OpenAI's shape ([`error`]); keys, limits and scopes are the
//! seed API's.

pub mod completions;
pub mod conversations;
pub mod error;
pub mod input;
pub mod responses;
pub mod schema;

use std::sync::Arc;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;

use crate::domain::models::{ConversationEntry, now};
use crate::domain::store::{Metadata, Numbered};
use crate::http::AppState;
use error::OpenAiError;
use input::{Body, Message, Role};

/// The reply engine's name as a model: `model` must name it.
pub const MODEL: &str = "chatbot-rules";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(conversations::router())
        .merge(responses::router())
        .merge(completions::router())
}

/// A fresh id: `prefix` and 32 random hex digits (128 bits).
pub fn new_id(prefix: &str) -> String {
    let mut bytes = [0u8; 16];
    // The OS's generator; should it fail, the clock and a counter still
    // make the id unique in this process (a taken id is retried).
    if getrandom::fill(&mut bytes).is_err() {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes[..8].copy_from_slice(&nanos.to_le_bytes());
        bytes[8..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{hex}")
}

/// Which half of an exchange an item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Half {
    User,
    Assistant,
}

/// The id of one half of exchange `seq`.
pub fn item_id(seq: u64, half: Half) -> String {
    match half {
        Half::User => format!("msg_{seq}u"),
        Half::Assistant => format!("msg_{seq}a"),
    }
}

/// The exchange and half an item id names, if it is one of ours.
pub fn parse_item_id(id: &str) -> Option<(u64, Half)> {
    let rest = id.strip_prefix("msg_")?;
    let (digits, half) = match rest.as_bytes().last()? {
        b'u' => (&rest[..rest.len() - 1], Half::User),
        b'a' => (&rest[..rest.len() - 1], Half::Assistant),
        _ => return None,
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.starts_with('0') {
        return None;
    }
    Some((digits.parse().ok()?, half))
}

/// One stored message: half of an exchange.
#[derive(Debug, Clone)]
pub struct Item {
    pub seq: u64,
    pub half: Half,
    pub text: Arc<str>,
}

impl Item {
    /// The exchange's halves that are there, user first.
    pub fn of(exchange: &Numbered) -> impl Iterator<Item = Item> + '_ {
        [
            (Half::User, &exchange.user_message),
            (Half::Assistant, &exchange.bot_reply),
        ]
        .into_iter()
        .filter(|(_, text)| !text.is_empty())
        .map(|(half, text)| Item {
            seq: exchange.seq,
            half,
            text: text.clone(),
        })
    }

    pub fn id(&self) -> String {
        item_id(self.seq, self.half)
    }

    /// The item as OpenAI writes a message item.
    pub fn json(&self) -> Value {
        message_json(&self.id(), self.half, &self.text)
    }
}

/// A message item: the user's with `input_text`, the bot's with `output_text`.
pub fn message_json(id: &str, half: Half, text: &str) -> Value {
    match half {
        Half::User => json!({
            "type": "message",
            "id": id,
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        }),
        Half::Assistant => json!({
            "type": "message",
            "id": id,
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
        }),
    }
}

/// A conversation object.
pub fn conversation_json(id: &str, created_at: i64, metadata: &Metadata) -> Value {
    let metadata: serde_json::Map<String, Value> = metadata
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({
        "id": id,
        "object": "conversation",
        "created_at": created_at,
        "metadata": metadata,
    })
}

/// Messages stored as exchanges: a user message opens one (its reply
/// empty until an assistant message follows); an assistant message answers
/// the open one, or else stands alone with an empty user half. `system`
/// messages are not stored (callers refuse them first).
pub fn exchanges_of(messages: &[Message], timestamp: i64) -> Vec<ConversationEntry> {
    let user_name: Arc<str> = Arc::from("User");
    let empty: Arc<str> = Arc::from("");
    let mut exchanges: Vec<ConversationEntry> = Vec::new();
    for message in messages {
        match message.role {
            Role::User => exchanges.push(ConversationEntry {
                user_message: Arc::from(message.text.as_str()),
                bot_reply: empty.clone(),
                user_name: user_name.clone(),
                timestamp,
            }),
            Role::Assistant => match exchanges.last_mut() {
                Some(open) if open.bot_reply.is_empty() => {
                    open.bot_reply = Arc::from(message.text.as_str());
                }
                _ => exchanges.push(ConversationEntry {
                    user_message: empty.clone(),
                    bot_reply: Arc::from(message.text.as_str()),
                    user_name: user_name.clone(),
                    timestamp,
                }),
            },
            Role::System => {}
        }
    }
    exchanges
}

/// `{"object": "list", "data", "first_id", "last_id", "has_more"}`.
pub fn list_json(items: &[Item], has_more: bool) -> Value {
    json!({
        "object": "list",
        "data": items.iter().map(Item::json).collect::<Vec<_>>(),
        "first_id": items.first().map(Item::id),
        "last_id": items.last().map(Item::id),
        "has_more": has_more,
    })
}

// What every reply route checks, reads and writes.

/// A streamed answer: Server-Sent Events, not to be cached.
pub fn event_stream(body: axum::body::Body) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// `model` must name the reply engine.
pub fn check_model(body: &Body) -> Result<(), OpenAiError> {
    match body.text("model")? {
        None => Err(OpenAiError::missing("model")),
        Some(MODEL) => Ok(()),
        Some(other) => Err(model_not_found(other)),
    }
}

pub fn model_not_found(name: &str) -> OpenAiError {
    OpenAiError {
        code: Some("model_not_found"),
        ..OpenAiError::not_found(format!(
            "The model '{name}' does not exist. This server's model is '{MODEL}'."
        ))
    }
}

/// The user message to answer: the last message, which must be the user's.
pub fn last_user_message(messages: &[Message], param: &str) -> Result<usize, OpenAiError> {
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
pub fn context(messages: &[Message], at: usize) -> Vec<ConversationEntry> {
    exchanges_of(&messages[..at], now())
}

/// Rough token counts for `usage`: words, as the rule engine has no tokenizer.
pub fn words(text: &str) -> usize {
    text.split_whitespace().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_ids_round_trip_and_refuse_the_rest() {
        for (seq, half) in [
            (1, Half::User),
            (42, Half::Assistant),
            (u64::MAX, Half::User),
        ] {
            assert_eq!(parse_item_id(&item_id(seq, half)), Some((seq, half)));
        }
        for bad in [
            "",
            "msg_",
            "msg_u",
            "msg_1",
            "msg_1x",
            "msg_01u",
            "msg_-1u",
            "item_1u",
            "msg_1 u",
            "msg_99999999999999999999u",
        ] {
            assert_eq!(parse_item_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn messages_pair_into_exchanges() {
        let m = |role, text: &str| Message {
            role,
            text: text.into(),
        };
        let exchanges = exchanges_of(
            &[
                m(Role::System, "rules"),
                m(Role::User, "q1"),
                m(Role::Assistant, "a1"),
                m(Role::User, "q2"),
                m(Role::User, "q3"),
                m(Role::Assistant, "a3"),
                m(Role::Assistant, "a4"),
            ],
            7,
        );
        let pairs: Vec<(&str, &str)> = exchanges
            .iter()
            .map(|e| (&*e.user_message, &*e.bot_reply))
            .collect();
        assert_eq!(pairs, [("q1", "a1"), ("q2", ""), ("q3", "a3"), ("", "a4")]);
        assert!(
            exchanges
                .iter()
                .all(|e| e.timestamp == 7 && &*e.user_name == "User")
        );
    }

    #[test]
    fn fresh_ids_differ() {
        let a = new_id("conv_");
        assert!(a.starts_with("conv_") && a.len() == 37, "{a}");
        assert_ne!(a, new_id("conv_"));
    }
}
