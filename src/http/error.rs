//! One error type for the whole API, rendered in FastAPI's JSON shapes.
//!
//! Client mistakes get the exact bodies of `docs/API.md`; server faults are
//! logged here and answered without internals.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

use crate::domain::accounts::AccountError;
use crate::domain::model::ModelError;
use crate::domain::replies::ReplyError;
use crate::domain::store::StoreError;

/// One element of an error location: a name or an index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Loc {
    Key(&'static str),
    Index(usize),
}

impl From<&'static str> for Loc {
    fn from(key: &'static str) -> Self {
        Self::Key(key)
    }
}

impl From<usize> for Loc {
    fn from(index: usize) -> Self {
        Self::Index(index)
    }
}

/// One item of a 422 `detail` list, as pydantic writes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValidationIssue {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub loc: Vec<Loc>,
    pub msg: String,
    pub input: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ctx: Option<Value>,
}

impl ValidationIssue {
    pub fn new(kind: &'static str, loc: Vec<Loc>, msg: impl Into<String>, input: Value) -> Self {
        Self {
            kind,
            loc,
            msg: msg.into(),
            input,
            ctx: None,
        }
    }

    pub fn with_ctx(mut self, ctx: Value) -> Self {
        self.ctx = Some(ctx);
        self
    }
}

/// The `WWW-Authenticate` of every 401: the same whatever check failed.
pub const BEARER_INVALID_TOKEN: HeaderValue =
    HeaderValue::from_static(r#"Bearer error="invalid_token""#);

/// Everything a request can end in other than success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No route has this path.
    #[error("not found")]
    NotFound,
    /// The path exists but not with this method; axum adds the `allow` header.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The session has no stored exchanges.
    #[error("no conversation history for session {0:?}")]
    NoHistory(String),
    /// The session has no exchange at this position.
    #[error("no message {position} in session {session:?}")]
    NoMessage { session: String, position: usize },
    /// The request failed validation; one issue per bad field.
    #[error("request validation failed")]
    Validation(Vec<ValidationIssue>),
    /// The body is larger than the configured limit.
    #[error("request body larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The body could not be read from the connection.
    #[error("request body could not be read")]
    BodyUnreadable,
    /// The body did not arrive within the request timeout.
    #[error("request body timed out after {seconds} s")]
    RequestTimeout { seconds: u64 },
    /// No valid API key or token on a server that requires one.
    #[error("not authenticated")]
    Unauthorized,
    /// Identified, but not allowed to do this.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// A token whose signing key could not be fetched, so it is unchecked.
    #[error("authentication unavailable")]
    AuthUnavailable,
    /// The store failed; the cause is logged, never sent.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The model gave no usable answer; the cause is logged, never sent.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Accounts: sign-up, sign-in, tokens, keys.
    #[error(transparent)]
    Account(#[from] AccountError),
    /// Too many sign-in attempts from this address or for this account.
    #[error("too many sign-in attempts")]
    TooManySignIns { retry_after: u64 },
    /// The shared sign-in limit cannot be checked: refused (fails closed).
    #[error("sign-in limit unavailable")]
    SignInLimitUnavailable,
}

impl From<ReplyError> for ApiError {
    fn from(err: ReplyError) -> Self {
        match err {
            ReplyError::Store(err) => Self::Store(err),
            ReplyError::Model(err) => Self::Model(err),
        }
    }
}

impl ApiError {
    fn status_and_detail(&self) -> (StatusCode, Value) {
        match self {
            Self::NotFound => (StatusCode::NOT_FOUND, json!("Not Found")),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, json!("Method Not Allowed")),
            Self::NoHistory(session) => (
                StatusCode::NOT_FOUND,
                json!(format!(
                    "No conversation history found for session '{session}'"
                )),
            ),
            Self::NoMessage { session, position } => (
                StatusCode::NOT_FOUND,
                json!(format!(
                    "No message {position} in the history of session '{session}'"
                )),
            ),
            Self::Validation(issues) => (StatusCode::UNPROCESSABLE_ENTITY, json!(issues)),
            Self::PayloadTooLarge { limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!(format!(
                    "Request body too large: the limit is {limit} bytes"
                )),
            ),
            Self::BodyUnreadable => (
                StatusCode::BAD_REQUEST,
                json!("There was an error parsing the body"),
            ),
            Self::RequestTimeout { seconds } => (
                StatusCode::REQUEST_TIMEOUT,
                json!(format!(
                    "Request timed out: the body did not arrive within {seconds} seconds"
                )),
            ),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, json!("Not authenticated")),
            Self::Forbidden(why) => (StatusCode::FORBIDDEN, json!(why)),
            Self::AuthUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!("Authentication unavailable: try again shortly"),
            ),
            Self::Store(StoreError::Full(detail)) => {
                (StatusCode::INSUFFICIENT_STORAGE, json!(detail))
            }
            Self::Model(ModelError::TimedOut) => {
                tracing::warn!("the model server timed out");
                (StatusCode::GATEWAY_TIMEOUT, json!("Reply engine timed out"))
            }
            Self::Model(cause) => {
                tracing::error!(error = %cause, "the model server failed");
                (StatusCode::BAD_GATEWAY, json!("Reply engine unavailable"))
            }
            Self::Account(err) => account_status(err),
            Self::TooManySignIns { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                json!("Too many sign-in attempts: try again later"),
            ),
            Self::SignInLimitUnavailable => {
                tracing::error!("the shared sign-in limit is unreachable: sign-ins refused");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!("Sign-in is unavailable: try again shortly"),
                )
            }
            Self::Store(StoreError::Unavailable(cause)) => {
                tracing::error!(error = %cause, "store unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!("Storage unavailable"),
                )
            }
        }
    }
}

fn account_status(err: &AccountError) -> (StatusCode, Value) {
    let (status, detail) = match err {
        AccountError::Taken => (StatusCode::CONFLICT, "Username already taken"),
        AccountError::BadCredentials => {
            (StatusCode::UNAUTHORIZED, "Incorrect username or password")
        }
        AccountError::Disabled => (StatusCode::UNAUTHORIZED, "Account disabled"),
        AccountError::Pending => (StatusCode::FORBIDDEN, "Account awaits an admin's approval"),
        AccountError::SignupClosed => (
            StatusCode::FORBIDDEN,
            "Sign-up is closed: an admin creates accounts",
        ),
        AccountError::NoAccount => (StatusCode::NOT_FOUND, "Account not found"),
        AccountError::NoKey => (StatusCode::NOT_FOUND, "Key not found"),
        AccountError::InvalidToken => (StatusCode::UNAUTHORIZED, "Invalid or expired token"),
        AccountError::LastAdmin => (
            StatusCode::CONFLICT,
            "The last admin cannot be disabled, demoted or deleted",
        ),
        AccountError::Busy => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many sign-ins at once: try again shortly",
        ),
        AccountError::Unavailable(cause) => {
            tracing::error!(error = %cause, "accounts unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, "Storage unavailable")
        }
    };
    (status, json!(detail))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, detail) = self.status_and_detail();
        let mut response = (status, Json(json!({ "detail": detail }))).into_response();
        match self {
            Self::Unauthorized
            | Self::Account(AccountError::InvalidToken | AccountError::Disabled) => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, BEARER_INVALID_TOKEN);
            }
            // As FastAPI's OAuth2 password flow answers a failed sign-in.
            Self::Account(AccountError::BadCredentials) => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::Account(AccountError::Busy | AccountError::Unavailable(_))
            | Self::SignInLimitUnavailable => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            Self::TooManySignIns { retry_after } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after.max(1)));
            }
            Self::AuthUnavailable => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            // The rest of a slow body is not worth waiting for.
            Self::RequestTimeout { .. } => {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

/// Whether `uri` is under `/v1`, whose errors are OpenAI's shape.
fn is_openai(uri: &Uri) -> bool {
    let path = uri.path();
    path == "/v1" || path.starts_with("/v1/")
}

/// `error` in the shape of the API `uri` belongs to.
fn shaped(uri: &Uri, error: ApiError) -> Response {
    if is_openai(uri) {
        crate::http::v1::error::OpenAiError::from(error).into_response()
    } else {
        error.into_response()
    }
}

/// The fallback for paths no route matches.
pub async fn not_found(uri: Uri) -> Response {
    shaped(&uri, ApiError::NotFound)
}

/// The fallback for a known path with an unsupported method.
pub async fn method_not_allowed(uri: Uri) -> Response {
    shaped(&uri, ApiError::MethodNotAllowed)
}
