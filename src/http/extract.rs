//! Request extractors that reproduce FastAPI's parsing, so that a bad request
//! is rejected with the same status and body the seed server would give.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRef, FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::request::Parts;
use http_body_util::BodyExt;
use percent_encoding::percent_decode_str;
use serde_json::{Value, json};

use crate::domain::models::could_be_session_id;
use crate::http::error::{ApiError, Loc, ValidationIssue};
use crate::http::validate::{ChatRequest, Limits, not_an_object};

/// A validated `POST /chat` body, parsed as FastAPI and pydantic would: the
/// same answers, the same 413/408/422 bodies.
#[derive(Debug)]
pub struct ChatBody(pub ChatRequest);

impl<S> FromRequest<S> for ChatBody
where
    S: Send + Sync,
    Limits: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limits = Limits::from_ref(state);
        let content_type = req.headers().get(CONTENT_TYPE).cloned();
        let content_type = content_type.as_ref().map(|v| v.as_bytes());
        let bytes = body_bytes(req, &limits).await?;
        if is_json_content_type(content_type)
            && let Some(request) = ChatRequest::parse_fast(&bytes, &limits)
        {
            return Ok(Self(request));
        }
        let value = decode_body(content_type, &bytes)?;
        ChatRequest::parse(value, &limits)
            .map(Self)
            .map_err(ApiError::Validation)
    }
}

/// A whole body decoded as JSON whatever its content type (`None` when
/// empty), with the same limits and timeouts as [`ChatBody`], for routes
/// that validate the value themselves (`/v1`, where `curl -d` must work).
pub async fn json_body(req: Request, limits: &Limits) -> Result<Option<Value>, ApiError> {
    let bytes = body_bytes(req, limits).await?;
    decode_body(None, &bytes)
}

/// A whole body as form fields (`application/x-www-form-urlencoded`, as
/// an OAuth2 password flow sends it), with the same limits as
/// [`ChatBody`]. Another content type reads as no fields at all, as
/// FastAPI's `Form` does: each required field is then "missing".
pub async fn form_body(req: Request, limits: &Limits) -> Result<Vec<(String, String)>, ApiError> {
    let is_form = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';').next().is_some_and(|t| {
                t.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        });
    let bytes = body_bytes(req, limits).await?;
    if !is_form {
        return Ok(Vec::new());
    }
    Ok(url::form_urlencoded::parse(&bytes)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect())
}

/// The whole body, refused at once when its declared length is past the limit.
async fn body_bytes(req: Request, limits: &Limits) -> Result<Bytes, ApiError> {
    let limit = limits.max_body_bytes;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        linger(req.into_body());
        return Err(ApiError::PayloadTooLarge { limit });
    }
    read_body(req, limits).await
}

/// Decodes a complete body as FastAPI does: `None` when empty, JSON for a
/// JSON (or absent) content type, a 422 in pydantic's shape otherwise.
/// Pure, so that it can be fuzzed.
pub fn decode_body(content_type: Option<&[u8]>, bytes: &[u8]) -> Result<Option<Value>, ApiError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    if !is_json_content_type(content_type) {
        let raw = String::from_utf8_lossy(bytes).into_owned();
        return Err(ApiError::Validation(vec![not_an_object(Value::String(
            raw,
        ))]));
    }
    serde_json::from_slice(bytes)
        .map(Some)
        .map_err(|err| ApiError::Validation(vec![json_invalid(bytes, &err)]))
}

/// The whole body, up to the limit. Read frame by frame rather than with
/// `to_bytes`, which would consume the body: past the limit, the rest goes
/// to [`linger`].
async fn read_body(req: Request, limits: &Limits) -> Result<Bytes, ApiError> {
    let limit = limits.max_body_bytes;
    let mut body = req.into_body();
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| {
            if caused_by::<tower_http::timeout::TimeoutError>(&err) {
                ApiError::RequestTimeout {
                    seconds: limits.request_timeout.as_secs(),
                }
            } else {
                ApiError::BodyUnreadable
            }
        })?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > limit {
                linger(body);
                return Err(ApiError::PayloadTooLarge { limit });
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(bytes))
}

/// The most of a refused body read and thrown away, and for how long.
pub const LINGER_BYTES: usize = 16 << 20;
pub const LINGER_TIME: Duration = Duration::from_secs(2);

/// Reads and discards the rest of a refused body in the background, as
/// nginx's lingering close does: a client that writes its whole body before
/// reading (`requests`, `http.client`, most SDKs) then reads our 413 instead
/// of failing on a reset connection. Bounded by [`LINGER_BYTES`] and
/// [`LINGER_TIME`]; past either the body is dropped and the connection closed.
fn linger(mut body: Body) {
    tokio::spawn(async move {
        let drain = async {
            let mut seen = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                seen += frame.data_ref().map_or(0, Bytes::len);
                if seen > LINGER_BYTES {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_TIME, drain).await;
    });
}

/// Whether `T` is anywhere in the error's chain: body errors reach us
/// wrapped by each layer they pass.
fn caused_by<T: std::error::Error + 'static>(
    err: &(dyn std::error::Error + Send + Sync + 'static),
) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if e.is::<T>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// FastAPI reads a body as JSON when the content type is absent, `application/json`
/// or `application/*+json` (parameters such as `charset` ignored).
fn is_json_content_type(header: Option<&[u8]>) -> bool {
    let Some(header) = header else {
        return true;
    };
    let text = String::from_utf8_lossy(header);
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.split_once('/') {
        Some(("application", subtype)) => subtype == "json" || subtype.ends_with("+json"),
        _ => false,
    }
}

/// The 422 item FastAPI gives for a body that is not valid JSON: the location
/// carries the offset of the error, `ctx.error` the parser's message.
fn json_invalid(bytes: &[u8], err: &serde_json::Error) -> ValidationIssue {
    let line_start: usize = bytes
        .split(|&b| b == b'\n')
        .take(err.line().saturating_sub(1))
        .map(|line| line.len() + 1)
        .sum();
    let column = if err.is_eof() {
        err.column()
    } else {
        err.column().saturating_sub(1)
    };
    let offset = (line_start + column).min(bytes.len());
    let full = err.to_string();
    let message = full
        .rfind(" at line ")
        .map_or(full.as_str(), |at| &full[..at]);
    ValidationIssue::new(
        "json_invalid",
        vec![Loc::from("body"), Loc::from(offset)],
        "JSON decode error",
        json!({}),
    )
    .with_ctx(json!({ "error": message }))
}

/// Path parameter `name`, percent-decoded as Starlette decodes it (invalid
/// UTF-8 becomes U+FFFD); a route without it is a 404.
pub async fn path_param<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
    name: &str,
) -> Result<String, ApiError> {
    let params = RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|_| ApiError::NotFound)?;
    let raw = params
        .iter()
        .find_map(|(key, value)| (key == name).then_some(value))
        .ok_or(ApiError::NotFound)?;
    Ok(percent_decode_str(raw).decode_utf8_lossy().into_owned())
}

/// The `{session_id}` path segment, percent-decoded as Starlette decodes it
/// (invalid UTF-8 becomes U+FFFD).
#[derive(Debug)]
pub struct SessionPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for SessionPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let decoded = path_param(parts, state, "session_id").await?;
        // Starlette decodes the path before routing, so `%2F` splits the
        // segment and no route matches.
        if decoded.contains('/') {
            return Err(ApiError::NotFound);
        }
        // No stored session can have a control character; don't ask the store.
        if !could_be_session_id(&decoded) {
            return Err(ApiError::NoHistory(decoded));
        }
        Ok(Self(decoded))
    }
}

/// The `{n}` path segment: a position, an integer from 0, with FastAPI's
/// 422 for anything else.
#[derive(Debug)]
pub struct PositionPath(pub usize);

impl<S: Send + Sync> FromRequestParts<S> for PositionPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let decoded = path_param(parts, state, "n").await?;
        let loc = || vec![Loc::from("path"), Loc::from("n")];
        let input = Value::String(decoded.clone());
        match decoded.trim().parse::<i64>() {
            Ok(n) if n >= 0 => Ok(Self(usize::try_from(n).unwrap_or(usize::MAX))),
            Ok(_) => Err(ApiError::Validation(vec![
                ValidationIssue::new(
                    "greater_than_equal",
                    loc(),
                    "Input should be greater than or equal to 0",
                    input,
                )
                .with_ctx(json!({ "ge": 0 })),
            ])),
            Err(_) => Err(ApiError::Validation(vec![ValidationIssue::new(
                "int_parsing",
                loc(),
                "Input should be a valid integer, unable to parse string as an integer",
                input,
            )])),
        }
    }
}

/// A validated `PATCH …/messages/{n}` body.
#[derive(Debug)]
pub struct EditBody(pub crate::http::validate::MessageEdit);

impl<S> FromRequest<S> for EditBody
where
    S: Send + Sync,
    Limits: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limits = Limits::from_ref(state);
        let content_type = req.headers().get(CONTENT_TYPE).cloned();
        let bytes = body_bytes(req, &limits).await?;
        let value = decode_body(content_type.as_ref().map(|v| v.as_bytes()), &bytes)?;
        crate::http::validate::MessageEdit::parse(value, &limits)
            .map(Self)
            .map_err(ApiError::Validation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types_as_fastapi_sees_them() {
        let cases: [(Option<&str>, bool); 8] = [
            (None, true),
            (Some("application/json"), true),
            (Some("Application/JSON; charset=utf-8"), true),
            (Some("application/vnd.api+json"), true),
            (Some("text/plain"), false),
            (Some("application/x-www-form-urlencoded"), false),
            (Some("json"), false),
            (Some(""), false),
        ];
        for (header, expected) in cases {
            assert_eq!(
                is_json_content_type(header.map(str::as_bytes)),
                expected,
                "{header:?}"
            );
        }
    }

    #[test]
    fn json_error_offsets_point_at_the_bad_byte() {
        let cases: [(&str, usize); 4] = [("{\"a\":}", 5), ("{\"a\":", 5), ("{\n  x", 4), ("", 0)];
        for (text, offset) in cases {
            let err = serde_json::from_slice::<Value>(text.as_bytes()).unwrap_err();
            let issue = json_invalid(text.as_bytes(), &err);
            assert_eq!(
                issue.loc,
                vec![Loc::from("body"), Loc::from(offset)],
                "{text:?}"
            );
        }
    }
}

/// Query parameters, validated as FastAPI validates them: every problem is
/// collected, each with `loc: ["query", NAME]` and the raw text as `input`.
#[derive(Debug, Default)]
pub struct QueryParams {
    pairs: Vec<(String, String)>,
    issues: Vec<ValidationIssue>,
}

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let pairs = url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Ok(Self {
            pairs,
            issues: Vec::new(),
        })
    }
}

impl QueryParams {
    /// The parameter's last value, as Starlette's `QueryParams.get` gives it.
    pub fn raw(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn reject(&mut self, issue: ValidationIssue) {
        self.issues.push(issue);
    }

    fn loc(name: &'static str) -> Vec<Loc> {
        vec![Loc::from("query"), Loc::from(name)]
    }

    /// An optional integer in `min..=max`.
    pub fn int(&mut self, name: &'static str, min: i64, max: i64) -> Option<i64> {
        let raw = self.raw(name)?.to_owned();
        let input = Value::String(raw.clone());
        let Ok(value) = raw.trim().parse::<i64>() else {
            self.reject(ValidationIssue::new(
                "int_parsing",
                Self::loc(name),
                "Input should be a valid integer, unable to parse string as an integer",
                input,
            ));
            return None;
        };
        if value < min {
            self.reject(
                ValidationIssue::new(
                    "greater_than_equal",
                    Self::loc(name),
                    format!("Input should be greater than or equal to {min}"),
                    input,
                )
                .with_ctx(json!({ "ge": min })),
            );
            None
        } else if value > max {
            self.reject(
                ValidationIssue::new(
                    "less_than_equal",
                    Self::loc(name),
                    format!("Input should be less than or equal to {max}"),
                    input,
                )
                .with_ctx(json!({ "le": max })),
            );
            None
        } else {
            Some(value)
        }
    }

    /// A string of at least one character; `required` makes absence an error.
    pub fn text(&mut self, name: &'static str, required: bool) -> Option<String> {
        match self.raw(name).map(str::to_owned) {
            None if required => {
                self.reject(ValidationIssue::new(
                    "missing",
                    Self::loc(name),
                    "Field required",
                    Value::Null,
                ));
                None
            }
            None => None,
            Some(value) if value.is_empty() => {
                self.reject(
                    ValidationIssue::new(
                        "string_too_short",
                        Self::loc(name),
                        "String should have at least 1 character",
                        Value::String(value),
                    )
                    .with_ctx(json!({ "min_length": 1 })),
                );
                None
            }
            Some(value) => Some(value),
        }
    }

    /// An optional point in time: RFC 3339 (`2026-11-28T09:00:00Z`), a
    /// date (`2026-11-28`, midnight UTC) or Unix seconds.
    pub fn time(&mut self, name: &'static str) -> Option<i64> {
        let raw = self.raw(name)?.to_owned();
        let parsed = raw
            .parse::<i64>()
            .ok()
            .or_else(|| {
                chrono::DateTime::parse_from_rfc3339(&raw)
                    .ok()
                    .map(|t| t.timestamp())
            })
            .or_else(|| {
                chrono::NaiveDate::parse_from_str(&raw, "%Y-%m-%d")
                    .ok()
                    .and_then(|d| d.and_hms_opt(0, 0, 0))
                    .map(|t| t.and_utc().timestamp())
            });
        if parsed.is_none() {
            self.reject(ValidationIssue::new(
                "datetime_parsing",
                Self::loc(name),
                "Input should be a valid datetime (RFC 3339), a date (YYYY-MM-DD) or Unix seconds",
                Value::String(raw),
            ));
        }
        parsed
    }

    /// Adds a problem found after reading the parameters (`loc` the
    /// parameter, `input` its raw value).
    pub fn refuse(&mut self, name: &'static str, message: &str) {
        let input = self
            .raw(name)
            .map_or(Value::Null, |raw| Value::String(raw.to_owned()));
        self.reject(ValidationIssue::new(
            "value_error",
            Self::loc(name),
            format!("Value error, {message}"),
            input,
        ));
    }

    /// One of `choices`, or `default` when absent.
    pub fn choice(
        &mut self,
        name: &'static str,
        choices: &[&'static str],
        default: &'static str,
    ) -> &'static str {
        let Some(raw) = self.raw(name).map(str::to_owned) else {
            return default;
        };
        if let Some(choice) = choices.iter().find(|c| **c == raw) {
            return choice;
        }
        let quoted: Vec<String> = choices.iter().map(|c| format!("'{c}'")).collect();
        let expected = match quoted.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        self.reject(
            ValidationIssue::new(
                "enum",
                Self::loc(name),
                format!("Input should be {expected}"),
                Value::String(raw),
            )
            .with_ctx(json!({ "expected": expected })),
        );
        default
    }

    /// `Ok` when every parameter read so far was valid, else the 422.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.issues.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.issues))
        }
    }
}
