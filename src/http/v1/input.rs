//! What `/v1` requests carry, checked once at the edge: JSON bodies, path
//! ids, metadata and messages, each refusal a 400 naming the field.

use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde_json::{Map, Value};

use super::error::OpenAiError;
use crate::domain::models::{SessionId, text_allowed};
use crate::domain::store::Metadata;
use crate::http::extract::{json_body, path_param};
use crate::http::validate::Limits;

/// The most metadata pairs, and their keys' and values' lengths (OpenAI's).
pub const MAX_METADATA_PAIRS: usize = 16;
pub const MAX_METADATA_KEY: usize = 64;
pub const MAX_METADATA_VALUE: usize = 512;
/// The most items one request may add to a conversation (OpenAI's).
pub const MAX_ITEMS: usize = 20;

/// A JSON object body (an empty body, or `null`, reads as `{}`).
#[derive(Debug, Default)]
pub struct Body(pub Map<String, Value>);

impl<S> FromRequest<S> for Body
where
    S: Send + Sync,
    Limits: FromRef<S>,
{
    type Rejection = OpenAiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, OpenAiError> {
        match json_body(req, &Limits::from_ref(state)).await? {
            None | Some(Value::Null) => Ok(Self::default()),
            Some(Value::Object(object)) => Ok(Self(object)),
            Some(_) => Err(OpenAiError::invalid(
                "body",
                "invalid_type",
                "The request body must be a JSON object.",
            )),
        }
    }
}

impl Body {
    /// An optional string field.
    pub fn text(&self, name: &str) -> Result<Option<&str>, OpenAiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(_) => Err(OpenAiError::wrong_type(name, "a string")),
        }
    }

    /// An optional boolean field.
    pub fn flag(&self, name: &str) -> Result<Option<bool>, OpenAiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(on)) => Ok(Some(*on)),
            Some(_) => Err(OpenAiError::wrong_type(name, "a boolean")),
        }
    }

    /// `metadata`, if given.
    pub fn metadata(&self) -> Result<Option<Metadata>, OpenAiError> {
        match self.0.get("metadata") {
            None | Some(Value::Null) => Ok(None),
            Some(value) => metadata(value).map(Some),
        }
    }
}

/// The ids in a `/v1` path, percent-decoded.
#[derive(Debug)]
pub struct Ids {
    pub conversation: String,
    pub item: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Ids {
    type Rejection = OpenAiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, OpenAiError> {
        let ids = Self {
            conversation: path_param(parts, state, "conversation_id").await?,
            item: path_param(parts, state, "item_id").await.ok(),
        };
        if !could_be_conversation(&ids.conversation) {
            return Err(OpenAiError::no_conversation(&ids.conversation));
        }
        Ok(ids)
    }
}

/// Whether a conversation could have this id: no stored one can otherwise,
/// so the store is not asked.
pub fn could_be_conversation(id: &str) -> bool {
    SessionId::is_valid(id)
}

/// Metadata: an object of at most 16 string values, keys of at most 64
/// characters, values of at most 512.
pub fn metadata(value: &Value) -> Result<Metadata, OpenAiError> {
    let Value::Object(object) = value else {
        return Err(OpenAiError::wrong_type("metadata", "an object"));
    };
    if object.len() > MAX_METADATA_PAIRS {
        return Err(OpenAiError::invalid(
            "metadata",
            "object_above_max_properties",
            format!(
                "Invalid 'metadata': too many properties. Expected an object with at most \
                 {MAX_METADATA_PAIRS} properties, but got an object with {} properties instead.",
                object.len()
            ),
        ));
    }
    let mut pairs = Vec::with_capacity(object.len());
    for (key, value) in object {
        let param = format!("metadata.{key}");
        let length = key.chars().count();
        if length > MAX_METADATA_KEY {
            return Err(OpenAiError::invalid(
                "metadata",
                "string_above_max_length",
                format!(
                    "Invalid 'metadata': key too long. Expected keys of at most \
                     {MAX_METADATA_KEY} characters, but got a key of {length} characters instead."
                ),
            ));
        }
        let Value::String(text) = value else {
            return Err(OpenAiError::wrong_type(&param, "a string"));
        };
        let length = text.chars().count();
        if length > MAX_METADATA_VALUE {
            return Err(OpenAiError::invalid(
                param.clone(),
                "string_above_max_length",
                format!(
                    "Invalid '{param}': string too long. Expected a string with maximum length \
                     {MAX_METADATA_VALUE}, but got a string with length {length} instead."
                ),
            ));
        }
        pairs.push((key.clone(), text.clone()));
    }
    Ok(pairs)
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
    /// `system` or `developer`: instructions, which the rule engine does not
    /// read and conversations do not store.
    System,
}

/// One message of a request, its text parts joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub text: String,
}

/// A list of message items at `param` (`items`, `input`, `messages`):
/// `{"type"?: "message", "role", "content"}`, content a string or text parts.
/// User messages are held to the seed's length limit; no text may be empty
/// or hold a NUL.
pub fn messages(value: &Value, param: &str, limits: &Limits) -> Result<Vec<Message>, OpenAiError> {
    let Value::Array(items) = value else {
        return Err(OpenAiError::wrong_type(param, "an array"));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| message(item, &format!("{param}[{i}]"), limits))
        .collect()
}

fn message(item: &Value, param: &str, limits: &Limits) -> Result<Message, OpenAiError> {
    let Value::Object(item) = item else {
        return Err(OpenAiError::wrong_type(param, "an object"));
    };
    match item.get("type") {
        None | Some(Value::Null) => {}
        Some(Value::String(kind)) if kind == "message" => {}
        Some(Value::String(kind)) => {
            return Err(OpenAiError::invalid(
                format!("{param}.type"),
                "invalid_value",
                format!("Item type '{kind}' is not supported: only 'message' items are stored."),
            ));
        }
        Some(_) => {
            return Err(OpenAiError::wrong_type(
                &format!("{param}.type"),
                "a string",
            ));
        }
    }
    let role = match item.get("role") {
        None => return Err(OpenAiError::missing(&format!("{param}.role"))),
        Some(Value::String(role)) => match role.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "system" | "developer" => Role::System,
            other => {
                return Err(OpenAiError::invalid(
                    format!("{param}.role"),
                    "invalid_value",
                    format!(
                        "Invalid value: '{other}'. Supported values are: 'user', 'assistant', \
                         'system' and 'developer'."
                    ),
                ));
            }
        },
        Some(_) => {
            return Err(OpenAiError::wrong_type(
                &format!("{param}.role"),
                "a string",
            ));
        }
    };
    let content_param = format!("{param}.content");
    let text = match item.get("content") {
        None => return Err(OpenAiError::missing(&content_param)),
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                texts.push(text_part(part, &format!("{content_param}[{j}]"))?);
            }
            texts.join("\n")
        }
        Some(_) => {
            return Err(OpenAiError::wrong_type(
                &content_param,
                "a string or an array of text parts",
            ));
        }
    };
    check_text(&text, role, &content_param, limits)?;
    Ok(Message { role, text })
}

fn text_part<'a>(part: &'a Value, param: &str) -> Result<&'a str, OpenAiError> {
    let Value::Object(part) = part else {
        return Err(OpenAiError::wrong_type(param, "an object"));
    };
    match part.get("type").and_then(Value::as_str) {
        Some("input_text" | "output_text" | "text") => {}
        Some(other) => {
            return Err(OpenAiError::invalid(
                format!("{param}.type"),
                "invalid_value",
                format!(
                    "Content type '{other}' is not supported: only text ('input_text', \
                     'output_text', 'text') is stored."
                ),
            ));
        }
        None => return Err(OpenAiError::missing(&format!("{param}.type"))),
    }
    match part.get("text") {
        Some(Value::String(text)) => Ok(text),
        None => Err(OpenAiError::missing(&format!("{param}.text"))),
        Some(_) => Err(OpenAiError::wrong_type(
            &format!("{param}.text"),
            "a string",
        )),
    }
}

/// A message's text must be non-empty, without NUL, and a user's within the
/// seed's character limit.
fn check_text(text: &str, role: Role, param: &str, limits: &Limits) -> Result<(), OpenAiError> {
    if text.is_empty() {
        return Err(OpenAiError::invalid(
            param,
            "empty_string",
            format!("Invalid '{param}': empty text. Expected at least 1 character."),
        ));
    }
    let length = text.chars().count();
    if role == Role::User && length > limits.max_message_chars {
        return Err(OpenAiError::invalid(
            param,
            "string_above_max_length",
            format!(
                "Invalid '{param}': string too long. Expected a string with maximum length {}, \
                 but got a string with length {length} instead.",
                limits.max_message_chars
            ),
        ));
    }
    if !text_allowed(text) {
        return Err(OpenAiError::invalid(
            param,
            "invalid_value",
            format!("Invalid '{param}': text may not contain NUL characters."),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn metadata_rules() {
        assert_eq!(
            metadata(&json!({"a": "1", "b": "2"})).unwrap(),
            vec![
                ("a".to_owned(), "1".to_owned()),
                ("b".to_owned(), "2".to_owned())
            ]
        );
        let many: Map<String, Value> = (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
        let cases = [
            (json!([]), "metadata", "invalid_type"),
            (
                Value::Object(many),
                "metadata",
                "object_above_max_properties",
            ),
            (
                json!({"k".repeat(65): "v"}),
                "metadata",
                "string_above_max_length",
            ),
            (
                json!({"k": "v".repeat(513)}),
                "metadata.k",
                "string_above_max_length",
            ),
            (json!({"k": 5}), "metadata.k", "invalid_type"),
        ];
        for (value, param, code) in cases {
            let err = metadata(&value).unwrap_err();
            assert_eq!(
                (err.param.as_deref(), err.code),
                (Some(param), Some(code)),
                "{value}"
            );
        }
    }

    #[test]
    fn message_shapes() {
        let limits = Limits::default();
        let items = json!([
            {"role": "user", "content": "hi"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hello"}]},
            {"role": "developer", "content": [{"type": "input_text", "text": "be brief"}]},
        ]);
        let parsed = messages(&items, "items", &limits).unwrap();
        assert_eq!(
            parsed
                .iter()
                .map(|m| (m.role, m.text.as_str()))
                .collect::<Vec<_>>(),
            [
                (Role::User, "hi"),
                (Role::Assistant, "hello"),
                (Role::System, "be brief")
            ]
        );
        let cases = [
            (json!({}), "items", "invalid_type"),
            (json!([5]), "items[0]", "invalid_type"),
            (
                json!([{"content": "x"}]),
                "items[0].role",
                "missing_required_parameter",
            ),
            (
                json!([{"role": "tool", "content": "x"}]),
                "items[0].role",
                "invalid_value",
            ),
            (
                json!([{"role": "user", "content": ""}]),
                "items[0].content",
                "empty_string",
            ),
            (
                json!([{"role": "user", "content": 7}]),
                "items[0].content",
                "invalid_type",
            ),
            (
                json!([{"role": "user", "content": [{"type": "input_image"}]}]),
                "items[0].content[0].type",
                "invalid_value",
            ),
            (
                json!([{"type": "function_call", "role": "user", "content": "x"}]),
                "items[0].type",
                "invalid_value",
            ),
            (
                json!([{"role": "user", "content": "x".repeat(4001)}]),
                "items[0].content",
                "string_above_max_length",
            ),
        ];
        for (value, param, code) in cases {
            let err = messages(&value, "items", &limits).unwrap_err();
            assert_eq!(
                (err.param.as_deref(), err.code),
                (Some(param), Some(code)),
                "{value}"
            );
        }
    }
}
