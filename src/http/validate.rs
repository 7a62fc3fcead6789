//! `POST /chat` bodies validated once, with the same rules and the same
//! error items pydantic would produce for the seed's `ChatRequest`, and the
//! size limits applied to every request.

use serde_json::{Map, Value, json};

use crate::domain::models::{
    MAX_SESSION_ID_CHARS, MAX_USER_NAME_CHARS, SESSION_ID_PATTERN, SessionId, TEXT_PATTERN,
    Violation, check_string, could_be_session_id, text_allowed,
};
use crate::http::error::{ApiError, Loc, ValidationIssue};

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

/// "character" or "characters", as pydantic writes it.
fn plural(n: usize) -> &'static str {
    if n == 1 { "character" } else { "characters" }
}

/// A body that is a JSON object, or pydantic's error for a missing body or
/// another value.
fn body_object(body: Option<Value>) -> Result<Map<String, Value>, Vec<ValidationIssue>> {
    match body {
        None => Err(vec![ValidationIssue::new(
            "missing",
            vec![Loc::from("body")],
            "Field required",
            Value::Null,
        )]),
        Some(Value::Object(object)) => Ok(object),
        Some(other) => Err(vec![not_an_object(other)]),
    }
}

impl ChatRequest {
    /// Validates a decoded JSON body (`None` when the body was empty).
    pub fn parse(body: Option<Value>, limits: &Limits) -> Result<Self, Vec<ValidationIssue>> {
        let object = body_object(body)?;
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
                allowed: Some(could_be_session_id),
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

/// A validated `PATCH /chat/history/{id}/messages/{n}` body: new text for
/// the user's message, the bot's reply, both, or neither (a patch that
/// changes nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageEdit {
    pub user_message: Option<String>,
    pub bot_reply: Option<String>,
}

impl MessageEdit {
    /// Validates a decoded JSON body: each field given is held to the rules
    /// of `POST /chat`'s `user_message`.
    pub fn parse(body: Option<Value>, limits: &Limits) -> Result<Self, Vec<ValidationIssue>> {
        let object = body_object(body)?;
        let mut issues = Vec::new();
        // A field left out or `null` stays as it is (pydantic's `Optional[str] = None`).
        let mut field = |name: &'static str| {
            object.get(name).filter(|value| !value.is_null())?;
            let rule = FieldRule {
                name,
                default: None,
                max_chars: limits.max_message_chars,
                allowed: Some(text_allowed),
                pattern: TEXT_PATTERN,
            };
            validate_field(&object, &rule)
                .map_err(|issue| issues.push(*issue))
                .ok()
        };
        let user_message = field("user_message");
        let bot_reply = field("bot_reply");
        if !issues.is_empty() {
            return Err(issues);
        }
        Ok(Self {
            user_message,
            bot_reply,
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
                Some(could_be_session_id),
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

/// A rule on a text's characters, and the regex that states it.
pub type Pattern = (fn(&str) -> bool, &'static str);

/// The fields of a JSON object (or a form) read one by one, each problem
/// collected as pydantic reports it, for bodies with a few plain fields.
pub struct Fields {
    object: Map<String, Value>,
    /// `body` fields of a form are reported with `null` as a missing input.
    form: bool,
    issues: Vec<ValidationIssue>,
}

impl Fields {
    /// The fields of a JSON body; anything but an object is one issue.
    pub fn json(body: Option<Value>) -> Result<Self, ApiError> {
        match body {
            Some(Value::Object(object)) => Ok(Self {
                object,
                form: false,
                issues: Vec::new(),
            }),
            // A password sent where an object belongs is not echoed either.
            Some(Value::String(_)) => Err(ApiError::Validation(vec![not_an_object(
                Value::String("**********".into()),
            )])),
            None => Err(ApiError::Validation(vec![ValidationIssue::new(
                "missing",
                vec![Loc::from("body")],
                "Field required",
                Value::Null,
            )])),
            Some(other) => Err(ApiError::Validation(vec![not_an_object(other)])),
        }
    }

    /// The fields of a form (the last of a repeated name wins).
    pub fn form(pairs: Vec<(String, String)>) -> Self {
        Self {
            object: pairs
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
            form: true,
            issues: Vec::new(),
        }
    }

    /// A string field of `min..=max` characters matching `allowed` (whose
    /// regex `pattern` the message names); `None` when absent and not required.
    pub fn text(
        &mut self,
        name: &'static str,
        required: bool,
        min: usize,
        max: usize,
        allowed: Option<Pattern>,
    ) -> Option<String> {
        let loc = vec![Loc::from("body"), Loc::from(name)];
        let value = match self.object.get(name) {
            Some(Value::Null) | None if !required => return None,
            Some(value) => value.clone(),
            None => {
                let input = if self.form {
                    Value::Null
                } else {
                    Value::Object(self.shown())
                };
                self.issues.push(ValidationIssue::new(
                    "missing",
                    loc,
                    "Field required",
                    input,
                ));
                return None;
            }
        };
        let Value::String(text) = &value else {
            self.issues.push(ValidationIssue::new(
                "string_type",
                loc,
                "Input should be a valid string",
                value,
            ));
            return None;
        };
        let chars = text.chars().count();
        let issue = if chars < min {
            ValidationIssue::new(
                "string_too_short",
                loc,
                format!("String should have at least {min} {}", plural(min)),
                value.clone(),
            )
            .with_ctx(json!({ "min_length": min }))
        } else if chars > max {
            // A password's text is never echoed back, not even here.
            ValidationIssue::new(
                "string_too_long",
                loc,
                format!("String should have at most {max} {}", plural(max)),
                value.clone(),
            )
            .with_ctx(json!({ "max_length": max }))
        } else if let Some((_, pattern)) = allowed.filter(|(check, _)| !check(text)) {
            ValidationIssue::new(
                "string_pattern_mismatch",
                loc,
                format!("String should match pattern '{pattern}'"),
                value.clone(),
            )
            .with_ctx(json!({ "pattern": pattern }))
        } else {
            return Some(text.clone());
        };
        self.issues.push(issue);
        None
    }

    /// The object as an error may show it: a field whose name says
    /// "password" shows `"**********"`.
    fn shown(&self) -> Map<String, Value> {
        self.object
            .iter()
            .map(|(k, v)| {
                let v = if k.contains("password") {
                    Value::String("**********".into())
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect()
    }

    /// A secret string field: checked as [`Fields::text`], but a problem
    /// never shows the value (`input` is `"**********"`).
    pub fn secret(
        &mut self,
        name: &'static str,
        required: bool,
        min: usize,
        max: usize,
    ) -> Option<String> {
        let before = self.issues.len();
        let value = self.text(name, required, min, max, None);
        for issue in &mut self.issues[before..] {
            if issue.kind != "missing" {
                issue.input = Value::String("**********".into());
            }
        }
        value
    }

    /// A boolean field, if given.
    pub fn boolean(&mut self, name: &'static str) -> Option<bool> {
        match self.object.get(name) {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => {
                self.issues.push(ValidationIssue::new(
                    "bool_type",
                    vec![Loc::from("body"), Loc::from(name)],
                    "Input should be a valid boolean",
                    other.clone(),
                ));
                None
            }
        }
    }

    /// Whether the body has this field at all.
    pub fn has(&self, name: &str) -> bool {
        self.object.contains_key(name)
    }

    /// The problems found, if any, as a 422.
    pub fn finish(self) -> Result<(), ApiError> {
        self.finish_with(Some(()))
    }

    /// As [`Fields::finish`], answering the required fields read:
    /// `required` is `None` only when one is missing or wrong, which is
    /// then among the problems.
    pub fn finish_with<T>(self, required: Option<T>) -> Result<T, ApiError> {
        match required {
            Some(values) if self.issues.is_empty() => Ok(values),
            _ => Err(ApiError::Validation(self.issues)),
        }
    }
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
}
