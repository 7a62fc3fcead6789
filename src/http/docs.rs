//! The OpenAPI document: schemas of the wire shapes and the document's
//! frame. Operations come from the `#[utoipa::path]` on each handler, and a
//! route exists only through `utoipa_axum::routes!`, so whatever is routed is
//! documented.
//!
//! The wire types serialize by hand (compact storage, fixed field order); the
//! schemas here describe what they write, and schemathesis in CI checks every
//! response against them.

use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

/// `POST /chat` body. Unknown fields are ignored; a key given twice: the last wins.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"user_message": "Hello!", "user_name": "Alice", "session_id": "alice_chat"}))]
pub struct ChatRequestBody {
    /// The user's message (1 to 4,000 characters by default; see `--max-message-chars`).
    #[schema(min_length = 1, max_length = 4000, pattern = r"^[^\x00]*$")]
    pub user_message: String,
    /// Who is talking.
    #[schema(
        min_length = 1,
        max_length = 100,
        default = "User",
        pattern = r"^[^\x00]*$"
    )]
    #[serde(default)]
    pub user_name: String,
    /// The conversation this message belongs to.
    #[schema(
        min_length = 1,
        max_length = 128,
        default = "default",
        pattern = r"^[^/\x00-\x1f\x7f]+$"
    )]
    #[serde(default)]
    pub session_id: String,
}

/// `POST /chat` answer, fields in this order.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"bot_reply": "Hi there! How can I help you today?", "user_message": "Hello!",
    "user_name": "Alice", "session_id": "alice_chat", "timestamp": "2025-11-09 19:55:43"}))]
pub struct ChatResponseBody {
    pub bot_reply: String,
    pub user_message: String,
    pub user_name: String,
    pub session_id: String,
    /// Server-local time, `%Y-%m-%d %H:%M:%S`.
    #[schema(example = "2025-11-09 19:55:43")]
    pub timestamp: String,
}

/// One exchange of a history, fields in this order.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"user_message": "Hello!", "bot_reply": "Hi there! How can I help you today?",
    "user_name": "Alice", "timestamp": "2025-11-09 19:55:43"}))]
pub struct HistoryEntry {
    pub user_message: String,
    pub bot_reply: String,
    pub user_name: String,
    /// Server-local time, `%Y-%m-%d %H:%M:%S`.
    pub timestamp: String,
}

/// One session of `GET /chat/sessions`.
#[derive(Serialize, ToSchema)]
pub struct SessionItem {
    pub session_id: String,
    pub total_messages: u64,
    pub first_message_time: String,
    pub last_message_time: String,
}

/// `GET /chat/history/{session_id}/stats`.
#[derive(Serialize, ToSchema)]
pub struct StatsBody {
    pub total_messages: u64,
    pub first_message_time: String,
    pub last_message_time: String,
}

/// A search hit: an exchange with the session it belongs to.
#[derive(Serialize, ToSchema)]
pub struct SearchHit {
    pub session_id: String,
    pub user_message: String,
    pub bot_reply: String,
    pub user_name: String,
    pub timestamp: String,
}

/// Every error but a validation error: `{"detail": "…"}`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"detail": "No conversation history found for session 'nonexistent_session'"}))]
pub struct DetailBody {
    pub detail: String,
}

/// `PATCH /chat/history/{id}/messages/{n}`: at least one field.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"user_message": "Hello, world!"}))]
pub struct MessagePatch {
    /// The user's message, corrected (1 to 4000 characters).
    #[schema(min_length = 1, max_length = 4000, pattern = r"^[^\x00]*$")]
    pub user_message: Option<String>,
    /// The bot's reply, corrected (1 to 4000 characters).
    #[schema(min_length = 1, max_length = 4000, pattern = r"^[^\x00]*$")]
    pub bot_reply: Option<String>,
}

/// The errors every conversation route can answer besides its own.
#[derive(utoipa::IntoResponses)]
pub enum ConversationErrors {
    #[response(
        status = 401,
        description = "API key or token missing or invalid (when the server has keys or tokens)"
    )]
    Unauthorized(DetailBody),
    #[response(status = 429, description = "Rate limit exceeded (see Retry-After)")]
    TooManyRequests(DetailBody),
    #[response(status = 503, description = "Storage unavailable")]
    Unavailable(DetailBody),
}

/// One problem with a request, as pydantic reports it.
#[derive(Serialize, ToSchema)]
pub struct ValidationItem {
    /// e.g. `missing`, `string_type`, `string_too_long`, `json_invalid`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Where: `["body", "user_message"]`, `["query", "limit"]`, `["body", 17]`.
    pub loc: Vec<serde_json::Value>,
    pub msg: String,
    /// The offending value.
    pub input: serde_json::Value,
    /// Constraint details, such as `{"max_length": 4000}`.
    pub ctx: Option<serde_json::Value>,
}

/// A 422: `{"detail": [ … ]}`, one item per problem.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"detail": [{"type": "missing", "loc": ["body", "user_message"],
    "msg": "Field required", "input": {"user_name": "Alice"}}]}))]
pub struct ValidationBody {
    pub detail: Vec<ValidationItem>,
}

/// One bucket of `GET /chat/analytics`.
#[derive(Serialize, ToSchema)]
pub struct AnalyticsBucket {
    /// Its start, RFC 3339 UTC.
    pub start: String,
    pub exchanges: u64,
    /// Sessions with an exchange in the bucket.
    pub active_sessions: u64,
    /// Sessions whose first exchange is in the bucket.
    pub new_sessions: u64,
}

/// How often a rule answered.
#[derive(Serialize, ToSchema)]
pub struct RuleCount {
    /// The rule's first keyword.
    pub rule: String,
    pub reply: String,
    pub exchanges: u64,
}

/// A message the bot answered with its fallback, and how often.
#[derive(Serialize, ToSchema)]
pub struct UnansweredCount {
    pub message: String,
    pub count: u64,
}

/// `GET /chat/analytics`.
#[derive(Serialize, ToSchema)]
pub struct AnalyticsBody {
    pub from: String,
    pub to: String,
    /// `day` or `hour`.
    pub bucket: String,
    pub buckets: Vec<AnalyticsBucket>,
    pub exchanges: u64,
    pub new_sessions: u64,
    pub fallback_exchanges: u64,
    /// `fallback_exchanges / exchanges`, 0 without exchanges.
    pub fallback_share: f64,
    /// Every rule, most used first.
    pub rules: Vec<RuleCount>,
    /// The messages most often answered with the fallback: what to write rules for.
    pub unanswered: Vec<UnansweredCount>,
}

/// `GET /health`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"status": "ok"}))]
pub struct StatusBody {
    pub status: String,
}

/// `GET /debug/sessions`.
#[derive(Serialize, ToSchema)]
pub struct DebugSessions {
    pub total_sessions: u64,
    pub session_ids: Vec<String>,
    pub total_messages: u64,
}

/// Marks every conversation operation as needing an API key or token:
/// `Authorization: Bearer …` (a key or a JWT), or `X-API-Key: KEY`; where
/// admins can exist, documents `?owner=` on the reads and deletes.
pub fn require_auth(doc: &mut utoipa::openapi::OpenApi, auth: &crate::http::auth::Auth) {
    use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
    use utoipa::openapi::security::{
        ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
    };
    use utoipa::openapi::{ContentBuilder, ObjectBuilder, Ref, Required, ResponseBuilder, Type};
    let components = doc.components.get_or_insert_with(Default::default);
    let mut bearer = HttpBuilder::new().scheme(HttpAuthScheme::Bearer);
    if auth.jwt.is_some() {
        bearer = bearer
            .bearer_format("JWT")
            .description(Some("A JWT from the identity provider, or an API key"));
    }
    components.add_security_scheme("bearer", SecurityScheme::Http(bearer.build()));
    let mut either = vec![SecurityRequirement::new("bearer", Vec::<String>::new())];
    if !auth.keys.is_empty() || !auth.admin_keys.is_empty() {
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        either.push(SecurityRequirement::new("api_key", Vec::<String>::new()));
    }
    if auth.accounts.is_some() {
        // As FastAPI's OAuth2PasswordBearer: /docs' "Authorize" signs in.
        use utoipa::openapi::security::{Flow, OAuth2, Password, Scopes};
        let password = Password::with_refresh_url("/auth/token", Scopes::new(), "/auth/refresh");
        components.add_security_scheme(
            "OAuth2PasswordBearer",
            SecurityScheme::OAuth2(OAuth2::with_description(
                [Flow::Password(password)],
                "Sign in with an account's username and password",
            )),
        );
        either.push(SecurityRequirement::new(
            "OAuth2PasswordBearer",
            Vec::<String>::new(),
        ));
    }
    let admins = auth.jwt.is_some() || !auth.admin_keys.is_empty() || auth.accounts.is_some();
    let owner = ParameterBuilder::new()
        .name("owner")
        .parameter_in(ParameterIn::Query)
        .required(Required::False)
        .description(Some(
            "Admins only: read or delete this user's conversations (a token subject, or `account:NAME` for an account) \
             instead of their own; 403 for anyone else.",
        ))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1)),
        ))
        .build();
    // Each API's own error body.
    let error = |path: &str, description: &str| {
        let body = if path.starts_with("/v1") {
            "ErrorBody"
        } else {
            "DetailBody"
        };
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name(body)))
                    .build(),
            )
            .build()
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        let keyed = ["/chat", "/debug", "/v1", "/metrics", "/admin", "/auth/keys"];
        let account_routes = ["/auth/me", "/auth/password", "/auth/logout/all"];
        if !keyed.iter().any(|prefix| path.starts_with(prefix))
            && !account_routes.contains(&path.as_str())
        {
            continue;
        }
        let unavailable = error(path, "A token whose key could not be fetched from the JWKS");
        let forbidden = error(path, "`owner` given by someone who is not an admin");
        let not_operator = error(
            path,
            "A user's token: only API keys and admins may use this route",
        );
        for operation in [
            &mut item.get,
            &mut item.post,
            &mut item.patch,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            if auth.jwt.is_some() {
                let responses = &mut operation.responses.responses;
                responses
                    .entry("503".to_owned())
                    .or_insert_with(|| unavailable.clone().into());
                if path == "/metrics" || path.starts_with("/debug") {
                    responses.insert("403".to_owned(), not_operator.clone().into());
                }
            }
        }
        for operation in [&mut item.post, &mut item.patch].into_iter().flatten() {
            operation.security = Some(either.clone());
        }
        let addressable = admins && (path.starts_with("/chat") || path.starts_with("/v1/conv"));
        for operation in [&mut item.get, &mut item.delete].into_iter().flatten() {
            operation.security = Some(either.clone());
            if addressable {
                operation
                    .parameters
                    .get_or_insert_with(Vec::new)
                    .push(owner.clone().into());
                operation
                    .responses
                    .responses
                    .insert("403".to_owned(), forbidden.clone().into());
            }
        }
    }
}

/// The document's frame; paths are added by the routers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "chatbot-api",
        description = "A conversation-history chat server that speaks the FastAPI tutorial server's wire format byte for byte.",
        license(name = "MIT")
    ),
    components(schemas(crate::domain::export::ExportFormat)),
    tags(
        (name = "chat", description = "Send messages and read conversations"),
        (name = "sessions", description = "Across conversations: list and search"),
        (name = "openai", description = "The same conversations through the OpenAI API (Conversations, Responses, Chat Completions): point an OpenAI SDK's base URL at `/v1`"),
        (name = "accounts", description = "Accounts of the server's own (`--accounts`): sign up, sign in (OAuth2 password flow), tokens, personal keys, and the admin's user management"),
        (name = "service", description = "Health, index and debugging")
    )
)]
pub struct ApiDoc;
