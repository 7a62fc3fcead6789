//! Errors under `/v1`, in OpenAI's shape:
//! `{"error": {"message", "type", "param", "code"}}`, with OpenAI's status
//! codes. Server faults are logged and answered without internals, as in
//! the seed API.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::domain::model::ModelError;
use crate::domain::replies::ReplyError;
use crate::domain::store::StoreError;
use crate::http::error::{ApiError, BEARER_INVALID_TOKEN, Loc};

/// One `/v1` error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `server_error`, …
    pub kind: &'static str,
    /// The request field at fault, as a dotted path (`metadata.topic`, `items[2].role`).
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl OpenAiError {
    /// A 400 about `param`.
    pub fn invalid(
        param: impl Into<String>,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.into()),
            code: Some(code),
        }
    }

    /// A 400 for a field of the wrong JSON type.
    pub fn wrong_type(param: &str, expected: &str) -> Self {
        Self::invalid(
            param,
            "invalid_type",
            format!("Invalid type for '{param}': expected {expected}."),
        )
    }

    /// A 400 for a required field left out.
    pub fn missing(param: &str) -> Self {
        Self::invalid(
            param,
            "missing_required_parameter",
            format!("Missing required parameter: '{param}'."),
        )
    }

    /// A 404 for something the caller cannot see (or that does not exist).
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    /// The 404 for a conversation id this caller has no conversation under.
    pub fn no_conversation(id: &str) -> Self {
        Self::not_found(format!("Conversation with id '{id}' not found."))
    }

    fn plain(
        status: StatusCode,
        kind: &'static str,
        code: Option<&'static str>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code,
        }
    }
}

impl From<StoreError> for OpenAiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Full(detail) => Self::plain(
                StatusCode::INSUFFICIENT_STORAGE,
                "server_error",
                Some("storage_full"),
                detail,
            ),
            StoreError::Unavailable(cause) => {
                tracing::error!(error = %cause, "store unavailable");
                Self::plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    None,
                    "Storage unavailable",
                )
            }
        }
    }
}

impl From<ModelError> for OpenAiError {
    fn from(err: ModelError) -> Self {
        match err {
            ModelError::TimedOut => {
                tracing::warn!("the model server timed out");
                Self::plain(
                    StatusCode::GATEWAY_TIMEOUT,
                    "server_error",
                    Some("upstream_timeout"),
                    "Reply engine timed out",
                )
            }
            cause => {
                tracing::error!(error = %cause, "the model server failed");
                Self::plain(
                    StatusCode::BAD_GATEWAY,
                    "server_error",
                    Some("upstream_error"),
                    "Reply engine unavailable",
                )
            }
        }
    }
}

impl From<ReplyError> for OpenAiError {
    fn from(err: ReplyError) -> Self {
        match err {
            ReplyError::Store(err) => err.into(),
            ReplyError::Model(err) => err.into(),
        }
    }
}

/// The seed API's errors (from the shared body reader, key check and
/// fallbacks) told the OpenAI way.
impl From<ApiError> for OpenAiError {
    fn from(err: ApiError) -> Self {
        match err {
            ApiError::NotFound => Self::not_found("Not found."),
            ApiError::MethodNotAllowed => Self::plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                None,
                "Method not allowed.",
            ),
            ApiError::NoHistory(id) => Self::no_conversation(&id),
            ApiError::NoMessage { position, .. } => {
                Self::not_found(format!("No message at position {position}."))
            }
            ApiError::Validation(issues) => {
                let Some(issue) = issues.into_iter().next() else {
                    return Self::invalid("body", "invalid_body", "The request body is invalid.");
                };
                if issue.kind == "json_invalid" {
                    return Self {
                        param: None,
                        ..Self::invalid(
                            "",
                            "invalid_json",
                            "We could not parse the JSON body of your request. (HINT: This \
                             likely means you aren't using your HTTP library correctly.)",
                        )
                    };
                }
                let param = issue
                    .loc
                    .iter()
                    .skip(1)
                    .map(|loc| match loc {
                        Loc::Key(key) => key.to_string(),
                        Loc::Index(i) => i.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(".");
                Self::invalid(param, "invalid_value", issue.msg)
            }
            ApiError::PayloadTooLarge { limit } => Self::plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                Some("request_too_large"),
                format!("Request body too large: the limit is {limit} bytes."),
            ),
            ApiError::BodyUnreadable => Self::plain(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                "The request body could not be read.",
            ),
            ApiError::RequestTimeout { seconds } => Self::plain(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                Some("request_timeout"),
                format!("Request timed out: the body did not arrive within {seconds} seconds."),
            ),
            ApiError::Unauthorized => Self::plain(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                Some("invalid_api_key"),
                "Incorrect API key or token provided. Send it as 'Authorization: Bearer KEY'.",
            ),
            ApiError::Forbidden(why) => Self::plain(
                StatusCode::FORBIDDEN,
                "invalid_request_error",
                Some("permission_denied"),
                format!("{why}."),
            ),
            // Identifying a caller fails with an account error only when
            // the accounts' database is unreachable.
            ApiError::AuthUnavailable
            | ApiError::Account(_)
            | ApiError::TooManySignIns { .. }
            | ApiError::SignInLimitUnavailable => Self::plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                Some("auth_unavailable"),
                "Authentication is unavailable: try again shortly.",
            ),
            ApiError::Store(err) => err.into(),
            ApiError::Model(err) => err.into(),
        }
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        });
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, BEARER_INVALID_TOKEN);
        }
        if self.status == StatusCode::REQUEST_TIMEOUT {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}
