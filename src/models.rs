//! Wire types and the validated values they are parsed into.
//!
//! `POST /chat` bodies are validated here, once, with the same rules and the
//! same error items pydantic would produce for the seed's `ChatRequest`.

use std::sync::Arc;

use chrono::{Local, TimeZone};
use serde::ser::{Serialize, SerializeStruct, Serializer};
use serde_json::{Map, Value, json};

use crate::error::{Loc, ValidationIssue};

/// One stored exchange, in its compact form.
///
/// The reply is shared with the rule that produced it and the user name with
/// the session's previous exchange; the timestamp is Unix seconds, formatted
/// only when written out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationEntry {
    pub user_message: Arc<str>,
    pub bot_reply: Arc<str>,
    pub user_name: Arc<str>,
    pub timestamp: i64,
}

impl Serialize for ConversationEntry {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("ConversationEntry", 4)?;
        s.serialize_field("user_message", &*self.user_message)?;
        s.serialize_field("bot_reply", &*self.bot_reply)?;
        s.serialize_field("user_name", &*self.user_name)?;
        s.serialize_field("timestamp", &Timestamp(self.timestamp))?;
        s.end()
    }
}

/// A session's size and time span. Serializes as an item of
/// `GET /chat/sessions`; [`SessionStats`] gives the stats shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    pub session_id: String,
    pub total_messages: usize,
    /// Unix seconds of the first and the last exchange.
    pub first_at: i64,
    pub last_at: i64,
}

impl Serialize for SessionSummary {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("SessionSummary", 4)?;
        s.serialize_field("session_id", &self.session_id)?;
        s.serialize_field("total_messages", &self.total_messages)?;
        s.serialize_field("first_message_time", &Timestamp(self.first_at))?;
        s.serialize_field("last_message_time", &Timestamp(self.last_at))?;
        s.end()
    }
}

/// `GET /chat/history/{id}/stats`: the seed's debug tip, made real.
#[derive(Debug)]
pub struct SessionStats(pub SessionSummary);

impl Serialize for SessionStats {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("SessionStats", 3)?;
        s.serialize_field("total_messages", &self.0.total_messages)?;
        s.serialize_field("first_message_time", &Timestamp(self.0.first_at))?;
        s.serialize_field("last_message_time", &Timestamp(self.0.last_at))?;
        s.end()
    }
}

/// An exchange found by a search, with the session it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub session_id: String,
    pub entry: ConversationEntry,
}

impl Serialize for Found {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Found", 5)?;
        s.serialize_field("session_id", &self.session_id)?;
        s.serialize_field("user_message", &*self.entry.user_message)?;
        s.serialize_field("bot_reply", &*self.entry.bot_reply)?;
        s.serialize_field("user_name", &*self.entry.user_name)?;
        s.serialize_field("timestamp", &Timestamp(self.entry.timestamp))?;
        s.end()
    }
}

/// Server-local time as the seed writes it: `%Y-%m-%d %H:%M:%S`.
pub fn format_timestamp(unix_seconds: i64) -> String {
    Timestamp(unix_seconds).text().to_string()
}

/// A Unix time that serializes as the seed's text, formatted once per second
/// per thread: a history's exchanges mostly share a few seconds, and asking
/// the time zone for every one of them dominated large reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub i64);

/// Slots of the per-thread cache of formatted seconds.
const TIMESTAMP_SLOTS: usize = 64;
const TIMESTAMP_LEN: usize = 19;

thread_local! {
    static FORMATTED: std::cell::RefCell<[(i64, [u8; TIMESTAMP_LEN]); TIMESTAMP_SLOTS]> =
        const { std::cell::RefCell::new([(i64::MIN, [0; TIMESTAMP_LEN]); TIMESTAMP_SLOTS]) };
}

impl Timestamp {
    fn bytes(self) -> [u8; TIMESTAMP_LEN] {
        let slot = self.0.rem_euclid(TIMESTAMP_SLOTS as i64) as usize;
        FORMATTED.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache[slot].0 != self.0 {
                let mut text = [b'?'; TIMESTAMP_LEN];
                if let Some(t) = Local.timestamp_opt(self.0, 0).earliest() {
                    let formatted = t.format("%Y-%m-%d %H:%M:%S").to_string();
                    if formatted.len() == TIMESTAMP_LEN {
                        text.copy_from_slice(formatted.as_bytes());
                    }
                }
                cache[slot] = (self.0, text);
            }
            cache[slot].1
        })
    }

    /// The formatted text, e.g. `2025-11-09 19:55:43`.
    pub fn text(self) -> TimestampText {
        TimestampText(self.bytes())
    }
}

/// Formatted timestamp on the stack.
#[derive(Debug, Clone, Copy)]
pub struct TimestampText([u8; TIMESTAMP_LEN]);

impl TimestampText {
    /// The text's bytes, without a UTF-8 check.
    pub fn as_bytes(&self) -> &[u8; TIMESTAMP_LEN] {
        &self.0
    }
}

impl std::ops::Deref for TimestampText {
    type Target = str;
    fn deref(&self) -> &str {
        // Only ASCII digits, dashes, colons, a space or '?' are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text())
    }
}

/// The current time as Unix seconds.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Size limits applied to request bodies and their fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most characters a `user_message` may have.
    pub max_message_chars: usize,
    /// The most bytes a request body may have.
    pub max_body_bytes: usize,
    /// How long a request's headers or body may take to arrive.
    pub request_timeout: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_chars: 4000,
            max_body_bytes: 64 * 1024,
            request_timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// The most characters a user name may have.
pub const MAX_USER_NAME_CHARS: usize = 100;
/// The most characters a session id may have.
pub const MAX_SESSION_ID_CHARS: usize = 128;
/// The pattern a session id must match, as pydantic reports it.
pub const SESSION_ID_PATTERN: &str = r"^[^/\x00-\x1f\x7f]+$";
/// The pattern messages and names must match: no NUL, which PostgreSQL
/// cannot store in text (ours; the same on every backend).
pub const TEXT_PATTERN: &str = r"^[^\x00]*$";

/// A session id that passed the contract's rules: 1 to 128 characters, no
/// `/`, no control character.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionId(String);

impl SessionId {
    /// Checks `value` against the session id rules.
    pub fn parse(value: String) -> Result<Self, String> {
        match check_string(&value, 1, MAX_SESSION_ID_CHARS, Some(session_id_allowed)) {
            None => Ok(Self(value)),
            Some(_) => Err(value),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A store key built by `auth::Owner::scope` from an id that passed
    /// [`SessionId::parse`]: the owner's prefix, then that id.
    pub fn from_store_key(key: String) -> Self {
        Self(key)
    }
}

impl AsRef<str> for SessionId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Whether `value` could be a stored session id (after decoding a path).
pub fn could_be_session_id(value: &str) -> bool {
    session_id_allowed(value)
}

fn session_id_allowed(value: &str) -> bool {
    !value.chars().any(|c| c == '/' || c.is_ascii_control())
}

/// A validated `POST /chat` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatRequest {
    pub user_message: String,
    pub user_name: String,
    pub session_id: SessionId,
}

struct FieldRule {
    name: &'static str,
    default: Option<&'static str>,
    max_chars: usize,
    allowed: Option<fn(&str) -> bool>,
    pattern: &'static str,
}

fn text_allowed(value: &str) -> bool {
    !value.contains('\0')
}

enum Violation {
    TooShort(usize),
    TooLong(usize),
    Pattern,
}

fn check_string(
    value: &str,
    min: usize,
    max: usize,
    allowed: Option<fn(&str) -> bool>,
) -> Option<Violation> {
    // pydantic counts characters (code points), not bytes; checks run in this order.
    let chars = value.chars().count();
    if chars < min {
        Some(Violation::TooShort(min))
    } else if chars > max {
        Some(Violation::TooLong(max))
    } else if allowed.is_some_and(|ok| !ok(value)) {
        Some(Violation::Pattern)
    } else {
        None
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "character" } else { "characters" }
}

impl ChatRequest {
    /// Validates a decoded JSON body (`None` when the body was empty).
    pub fn parse(body: Option<Value>, limits: &Limits) -> Result<Self, Vec<ValidationIssue>> {
        let object = match body {
            None => {
                return Err(vec![ValidationIssue::new(
                    "missing",
                    vec![Loc::from("body")],
                    "Field required",
                    Value::Null,
                )]);
            }
            Some(Value::Object(object)) => object,
            Some(other) => return Err(vec![not_an_object(other)]),
        };
        let rules = [
            FieldRule {
                name: "user_message",
                default: None,
                max_chars: limits.max_message_chars,
                allowed: Some(text_allowed),
                pattern: TEXT_PATTERN,
            },
            FieldRule {
                name: "user_name",
                default: Some("User"),
                max_chars: MAX_USER_NAME_CHARS,
                allowed: Some(text_allowed),
                pattern: TEXT_PATTERN,
            },
            FieldRule {
                name: "session_id",
                default: Some("default"),
                max_chars: MAX_SESSION_ID_CHARS,
                allowed: Some(session_id_allowed),
                pattern: SESSION_ID_PATTERN,
            },
        ];
        let mut issues = Vec::new();
        let mut values = Vec::with_capacity(rules.len());
        for rule in &rules {
            match validate_field(&object, rule) {
                Ok(value) => values.push(value),
                Err(issue) => issues.push(*issue),
            }
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        let [user_message, user_name, session_id]: [String; 3] =
            values.try_into().expect("one value per rule");
        Ok(Self {
            user_message,
            user_name,
            session_id: SessionId(session_id),
        })
    }
}

/// The common case, parsed without building a JSON tree: plain string
/// fields, no duplicate keys. Anything else (a wrong type, a repeated key, a
/// broken rule) returns `None`, and [`ChatRequest::parse`] gives the exact
/// error or the last-key-wins reading.
#[derive(serde::Deserialize)]
struct FastBody<'a> {
    #[serde(borrow)]
    user_message: std::borrow::Cow<'a, str>,
    #[serde(borrow, default = "default_user_name")]
    user_name: std::borrow::Cow<'a, str>,
    #[serde(borrow, default = "default_session_id")]
    session_id: std::borrow::Cow<'a, str>,
}

fn default_user_name() -> std::borrow::Cow<'static, str> {
    "User".into()
}

fn default_session_id() -> std::borrow::Cow<'static, str> {
    "default".into()
}

impl ChatRequest {
    /// Parses a JSON body directly when it is well-formed and valid.
    pub fn parse_fast(bytes: &[u8], limits: &Limits) -> Option<Self> {
        let body: FastBody<'_> = serde_json::from_slice(bytes).ok()?;
        let ok = check_string(
            &body.user_message,
            1,
            limits.max_message_chars,
            Some(text_allowed),
        )
        .is_none()
            && check_string(&body.user_name, 1, MAX_USER_NAME_CHARS, Some(text_allowed)).is_none()
            && check_string(
                &body.session_id,
                1,
                MAX_SESSION_ID_CHARS,
                Some(session_id_allowed),
            )
            .is_none();
        ok.then(|| Self {
            user_message: body.user_message.into_owned(),
            user_name: body.user_name.into_owned(),
            session_id: SessionId(body.session_id.into_owned()),
        })
    }
}

/// The error pydantic gives when a model's input is not an object.
pub fn not_an_object(input: Value) -> ValidationIssue {
    ValidationIssue::new(
        "model_attributes_type",
        vec![Loc::from("body")],
        "Input should be a valid dictionary or object to extract fields from",
        input,
    )
}

fn validate_field(
    object: &Map<String, Value>,
    rule: &FieldRule,
) -> Result<String, Box<ValidationIssue>> {
    let loc = || vec![Loc::from("body"), Loc::from(rule.name)];
    let value = match (object.get(rule.name), rule.default) {
        (Some(value), _) => value,
        (None, Some(default)) => return Ok(default.to_owned()),
        (None, None) => {
            return Err(Box::new(ValidationIssue::new(
                "missing",
                loc(),
                "Field required",
                Value::Object(object.clone()),
            )));
        }
    };
    let Value::String(text) = value else {
        return Err(Box::new(ValidationIssue::new(
            "string_type",
            loc(),
            "Input should be a valid string",
            value.clone(),
        )));
    };
    let issue = match check_string(text, 1, rule.max_chars, rule.allowed) {
        None => return Ok(text.clone()),
        Some(Violation::TooShort(min)) => ValidationIssue::new(
            "string_too_short",
            loc(),
            format!("String should have at least {min} {}", plural(min)),
            value.clone(),
        )
        .with_ctx(json!({ "min_length": min })),
        Some(Violation::TooLong(max)) => ValidationIssue::new(
            "string_too_long",
            loc(),
            format!("String should have at most {max} {}", plural(max)),
            value.clone(),
        )
        .with_ctx(json!({ "max_length": max })),
        Some(Violation::Pattern) => ValidationIssue::new(
            "string_pattern_mismatch",
            loc(),
            format!("String should match pattern '{}'", rule.pattern),
            value.clone(),
        )
        .with_ctx(json!({ "pattern": rule.pattern })),
    };
    Err(Box::new(issue))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value) -> Result<ChatRequest, Vec<ValidationIssue>> {
        ChatRequest::parse(Some(body), &Limits::default())
    }

    #[test]
    fn defaults_fill_missing_optional_fields() {
        let req = parse(json!({"user_message": "hi"})).unwrap();
        assert_eq!(req.user_name, "User");
        assert_eq!(req.session_id.as_str(), "default");
    }

    #[test]
    fn field_rules_table() {
        let long_message = "x".repeat(4001);
        let cases: Vec<(Value, &str)> = vec![
            (json!({}), "missing"),
            (json!({"user_message": 5}), "string_type"),
            (json!({"user_message": null}), "string_type"),
            (json!({"user_message": ""}), "string_too_short"),
            (json!({"user_message": long_message}), "string_too_long"),
            (
                json!({"user_message": "a", "session_id": "a/b"}),
                "string_pattern_mismatch",
            ),
            (
                json!({"user_message": "a", "session_id": "a\u{7f}"}),
                "string_pattern_mismatch",
            ),
            (
                json!({"user_message": "a", "session_id": "a\nb"}),
                "string_pattern_mismatch",
            ),
            (
                json!({"user_message": "a", "user_name": "n".repeat(101)}),
                "string_too_long",
            ),
            (json!([1]), "model_attributes_type"),
        ];
        for (body, kind) in cases {
            let issues = parse(body.clone()).unwrap_err();
            assert_eq!(issues.len(), 1, "{body}");
            assert_eq!(issues[0].kind, kind, "{body}");
        }
    }

    #[test]
    fn the_fast_path_agrees_with_the_full_one() {
        let limits = Limits::default();
        let bodies = [
            r#"{"user_message": "Hello!", "user_name": "Alice", "session_id": "alice_chat"}"#,
            r#"{"user_message": "x", "extra": [1, {"a": null}]}"#,
            r#"{"user_message": "caf\u00e9 \n"}"#,
            r#"{"user_message": "a", "user_message": "b"}"#,
            r#"{"user_message": "a", "user_name": null}"#,
            r#"{"user_message": ""}"#,
            r#"{"user_message": "a", "session_id": "a/b"}"#,
            r#"{"user_message": "a\u0000"}"#,
            r#"[1]"#,
        ];
        for body in bodies {
            let full = ChatRequest::parse(Some(serde_json::from_str(body).unwrap()), &limits);
            match ChatRequest::parse_fast(body.as_bytes(), &limits) {
                Some(fast) => assert_eq!(Ok(fast), full, "{body}"),
                None => assert!(
                    full.is_err() || body.matches("user_message").count() > 1,
                    "{body}"
                ),
            }
        }
    }

    #[test]
    fn lengths_count_characters_not_bytes() {
        let message = "é".repeat(4000);
        assert!(parse(json!({"user_message": message})).is_ok());
        let session = "日".repeat(128);
        assert!(parse(json!({"user_message": "a", "session_id": session})).is_ok());
    }

    #[test]
    fn cached_timestamps_match_a_fresh_format() {
        let now = now();
        for secs in [
            now,
            now - 1,
            now + 64,
            now,
            0,
            1_700_000_000,
            now - 86_400 * 200,
        ] {
            let fresh = Local
                .timestamp_opt(secs, 0)
                .unwrap()
                .format("%Y-%m-%d %H:%M:%S")
                .to_string();
            assert_eq!(&*Timestamp(secs).text(), fresh, "{secs}");
            assert_eq!(
                serde_json::to_string(&Timestamp(secs)).unwrap(),
                format!("\"{fresh}\"")
            );
        }
    }

    #[test]
    fn timestamp_has_the_seed_format() {
        let text = format_timestamp(now());
        assert_eq!(text.len(), 19);
        assert!(chrono::NaiveDateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S").is_ok());
    }
}
