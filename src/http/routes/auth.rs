//! `/auth/*`: accounts of the server's own (`--accounts`). Sign-up, sign-in
//! as FastAPI's OAuth2 password flow does it (a form to `/auth/token`, so
//! `/docs`' "Authorize" signs in), refresh, sign-out, password changes and
//! personal API keys.
//!
//! A browser page keeps the refresh token in a cookie it cannot read
//! (`HttpOnly; Secure; SameSite=Strict`, sent only to `/auth`): it asks
//! for that with `?cookie=true`, and the token is then left out of the
//! body. Everyone else gets it in the body, as OAuth2 clients expect.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::domain::accounts::{
    Account, AccountError, Accounts, Key, PASSWORD_MAX, PASSWORD_MIN, Tokens, USERNAME_MAX,
    USERNAME_MIN, USERNAME_PATTERN, username_chars_allowed, valid_username,
};
use crate::domain::models::format_rfc3339;
use crate::http::AppState;
use crate::http::auth::{ACCOUNT_OWNER, AccountOf};
use crate::http::docs::{DetailBody, ValidationBody};
use crate::http::error::ApiError;
use crate::http::extract::{form_body, json_body};
use crate::http::validate::Fields;

/// The refresh token's cookie.
pub const REFRESH_COOKIE: &str = "chatbot_refresh";

/// The username field of a body, lower-cased.
pub fn username_field(fields: &mut Fields) -> Option<String> {
    fields
        .text(
            "username",
            true,
            USERNAME_MIN,
            USERNAME_MAX,
            Some((username_chars_allowed, USERNAME_PATTERN)),
        )
        .map(|name| name.to_ascii_lowercase())
}

/// The fields a new account is made of (sign-up, and an admin's
/// `POST /admin/users`): username, password, display name.
pub fn new_account_fields(fields: &mut Fields) -> (Option<String>, Option<String>, Option<String>) {
    let username = username_field(fields);
    let password = fields.secret("password", true, PASSWORD_MIN, PASSWORD_MAX);
    let display_name = fields.text("display_name", false, 1, 100, None);
    (username, password, display_name)
}

/// Routes anyone may call (each refuses what it must).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(token))
        .routes(routes!(refresh))
        .routes(routes!(logout))
}

/// `/auth/config`, mounted whether accounts are on or not.
pub fn config_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(config))
}

/// Routes for a signed-in account (behind the key and token check).
pub fn account_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(me))
        .routes(routes!(change_password))
        .routes(routes!(logout_all))
        .routes(routes!(list_keys, create_key))
        .routes(routes!(delete_key))
}

pub(crate) fn accounts(state: &AppState) -> Result<&Arc<Accounts>, ApiError> {
    state.auth.accounts.as_ref().ok_or(ApiError::NotFound)
}

/// The account a request acts as, or 403 for any other caller.
pub(crate) fn signed_in(account: &AccountOf) -> Result<&str, ApiError> {
    account.0.as_deref().ok_or(ApiError::Forbidden(
        "Only a signed-in account (its token or personal key) may use this route",
    ))
}

/// As [`signed_in`], but by a session's access token: a personal key may
/// not make more keys, change the password or sign the account out.
fn in_session(account: &AccountOf) -> Result<&str, ApiError> {
    let username = signed_in(account)?;
    if account.2 {
        return Err(ApiError::Forbidden(
            "A personal key cannot manage keys, the password or sessions: sign in",
        ));
    }
    Ok(username)
}

/// A page's request for the refresh cookie must come from this server's
/// own pages: a cross-site form could otherwise sign a visitor in as the
/// attacker (login CSRF). Browsers say where a request comes from in
/// `Sec-Fetch-Site`, and older ones in `Origin`.
fn same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let refused = ApiError::Forbidden("A cookie sign-in must come from this server's own pages");
    if let Some(site) = text("sec-fetch-site") {
        return if matches!(site, "same-origin" | "none") {
            Ok(())
        } else {
            Err(refused)
        };
    }
    match (text("origin"), text("host")) {
        (Some(origin), Some(host)) => {
            let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
            if origin_host.eq_ignore_ascii_case(host) {
                Ok(())
            } else {
                Err(refused)
            }
        }
        _ => Ok(()),
    }
}

/// An account as the API shows it.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"username": "alice", "display_name": "Alice", "admin": false, "disabled": false,
    "pending": false, "owner": "account:alice", "created_at": "2026-12-06T09:30:00Z"}))]
pub struct AccountBody {
    pub username: String,
    pub display_name: String,
    pub admin: bool,
    pub disabled: bool,
    /// Waits for an admin's approval (`--signup approval`).
    pub pending: bool,
    /// What an admin's `?owner=` names to reach this account's conversations.
    pub owner: String,
    /// RFC 3339, UTC.
    pub created_at: String,
}

impl From<Account> for AccountBody {
    fn from(account: Account) -> Self {
        Self {
            owner: format!("{ACCOUNT_OWNER}{}", account.username),
            username: account.username,
            display_name: account.display_name,
            admin: account.admin,
            disabled: account.disabled,
            pending: account.pending,
            created_at: format_rfc3339(account.created_at),
        }
    }
}

/// `/auth/token` and `/auth/refresh`: OAuth2's token response.
#[derive(Serialize, ToSchema)]
pub struct TokenBody {
    pub access_token: String,
    /// Always `bearer`.
    #[schema(example = "bearer")]
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Exchange it at `/auth/refresh` for a new pair (it works once).
    /// Absent with `?cookie=true`: then it is in the `chatbot_refresh` cookie.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

/// What `GET /auth/config` tells a page.
#[derive(Serialize, ToSchema)]
pub struct ConfigBody {
    /// Whether the server has accounts of its own.
    pub accounts: bool,
    /// Who may sign up: `open`, `closed` or `approval`.
    pub signup: &'static str,
    /// No account yet: signing up makes the first, an admin.
    pub first_account: bool,
}

/// A personal API key (its secret only when created).
#[derive(Serialize, ToSchema)]
pub struct KeyBody {
    pub id: String,
    pub name: String,
    /// The key itself: shown once, when it is created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Its first characters, to recognize it by.
    pub hint: String,
    pub created_at: String,
    pub last_used_at: Option<String>,
}

impl KeyBody {
    fn new(key: Key, secret: Option<String>) -> Self {
        Self {
            id: key.id,
            name: key.name,
            key: secret,
            hint: key.hint,
            created_at: format_rfc3339(key.created_at),
            last_used_at: key.last_used_at.map(format_rfc3339),
        }
    }
}

/// The address a request came from, if the server recorded it.
pub(crate) fn peer_of(request: &Request) -> Option<std::net::IpAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip())
}

fn wants_cookie(uri: &Uri) -> bool {
    uri.query().is_some_and(|query| {
        url::form_urlencoded::parse(query.as_bytes())
            .any(|(name, value)| name == "cookie" && matches!(&*value, "true" | "1"))
    })
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == REFRESH_COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|value| !value.is_empty())
}

fn set_cookie(response: &mut Response, token: Option<&str>, max_age: u64) {
    let value = match token {
        Some(token) => format!(
            "{REFRESH_COOKIE}={token}; HttpOnly; Secure; SameSite=Strict; Path=/auth; Max-Age={max_age}"
        ),
        None => {
            format!("{REFRESH_COOKIE}=; HttpOnly; Secure; SameSite=Strict; Path=/auth; Max-Age=0")
        }
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// The token response: the refresh token in the body, or in the cookie.
fn issued(accounts: &Accounts, tokens: Tokens, cookie: bool) -> Response {
    let body = TokenBody {
        access_token: tokens.access_token,
        token_type: "bearer",
        expires_in: tokens.expires_in,
        refresh_token: (!cookie).then(|| tokens.refresh_token.clone()),
    };
    let mut response = Json(body).into_response();
    if cookie {
        let max_age = accounts.settings().refresh_ttl.as_secs();
        set_cookie(&mut response, Some(&tokens.refresh_token), max_age);
    }
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

async fn check_limit(
    state: &AppState,
    peer: Option<std::net::IpAddr>,
    headers: &HeaderMap,
    account: Option<&str>,
) -> Result<(), ApiError> {
    match &state.signin_limit {
        Some(limit) => limit.check(peer, headers, account).await,
        None => Ok(()),
    }
}

/// Whether accounts are on and who may sign up: what a page needs to know
/// to offer sign-in and sign-up.
#[utoipa::path(get, path = "/auth/config", operation_id = "auth_config", tag = "accounts", summary = "Sign-in options",
    responses((status = 200, description = "Whether the server has accounts, and who may sign up", body = ConfigBody)))]
async fn config(State(state): State<AppState>) -> Result<Json<ConfigBody>, ApiError> {
    let Some(accounts) = &state.auth.accounts else {
        return Ok(Json(ConfigBody {
            accounts: false,
            signup: "closed",
            first_account: false,
        }));
    };
    Ok(Json(ConfigBody {
        accounts: true,
        signup: accounts.settings().signup.as_str(),
        first_account: accounts.first_account().await?,
    }))
}

/// Creates an account, as `--signup` allows: `open` to anyone, `approval`
/// to anyone but it waits for an admin, `closed` only the very first
/// account. The first account is an admin.
#[utoipa::path(post, path = "/auth/register", operation_id = "register", tag = "accounts", summary = "Sign up",
    request_body(content = RegisterBody, content_type = "application/json"),
    responses(
        (status = 201, description = "The account", body = AccountBody),
        (status = 403, description = "Sign-up is closed", body = DetailBody),
        (status = 409, description = "The username is taken", body = DetailBody),
        (status = 422, description = "A username or password that breaks a rule", body = ValidationBody),
        (status = 429, description = "Too many attempts from this address (see Retry-After)", body = DetailBody),
        (status = 503, description = "Storage or the shared limit unavailable", body = DetailBody),
    ))]
async fn register(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let accounts = accounts(&state)?.clone();
    let peer = peer_of(&request);
    let headers = request.headers().clone();
    let mut fields = Fields::json(json_body(request, &state.limits).await?)?;
    let (username, password, display_name) = new_account_fields(&mut fields);
    let (username, password) = fields.finish_with(username.zip(password))?;
    check_limit(&state, peer, &headers, None).await?;
    let account = accounts
        .register(&username, password, display_name, None)
        .await?;
    tracing::info!(target: "chatbot_api::accounts", username = %account.username,
        admin = account.admin, pending = account.pending, "account created");
    Ok((StatusCode::CREATED, Json(AccountBody::from(account))).into_response())
}

/// `POST /auth/register` body.
#[derive(Serialize, ToSchema)]
pub struct RegisterBody {
    /// 3 to 32 letters, digits, `.`, `_` or `-`; kept lower-cased.
    #[schema(min_length = 3, max_length = 32, pattern = "^[A-Za-z0-9._-]+$")]
    pub username: String,
    /// 8 to 128 characters.
    #[schema(min_length = 8, max_length = 128, format = Password)]
    pub password: String,
    /// How the pages name the account (default: the username).
    #[schema(min_length = 1, max_length = 100)]
    pub display_name: Option<String>,
}

/// `POST /auth/token` form, as OAuth2's password grant sends it.
#[derive(Serialize, ToSchema)]
pub struct TokenForm {
    #[schema(min_length = 1, max_length = 32)]
    pub username: String,
    #[schema(min_length = 1, max_length = 128, format = Password)]
    pub password: String,
    /// `password`, if given.
    #[schema(pattern = "^password$")]
    pub grant_type: Option<String>,
}

/// Signs in with a username and password (OAuth2's password grant: a
/// form, as FastAPI's `OAuth2PasswordRequestForm` reads it). An unknown
/// user and a wrong password get the same 401, after the same work.
/// Attempts are limited per address and per account.
#[utoipa::path(post, path = "/auth/token", operation_id = "sign_in", tag = "accounts", summary = "Sign in",
    params(("cookie" = Option<bool>, Query, description = "For a browser page: the refresh token goes into an HttpOnly cookie, not the body")),
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Tokens", body = TokenBody),
        (status = 401, description = "Incorrect username or password, or a disabled account", body = DetailBody),
        (status = 403, description = "The account awaits an admin's approval", body = DetailBody),
        (status = 422, description = "A field missing", body = ValidationBody),
        (status = 429, description = "Too many attempts (see Retry-After)", body = DetailBody),
        (status = 503, description = "Storage or the shared limit unavailable", body = DetailBody),
    ))]
async fn token(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let accounts = accounts(&state)?.clone();
    let peer = peer_of(&request);
    let headers = request.headers().clone();
    let cookie = wants_cookie(request.uri());
    if cookie {
        same_origin(&headers)?;
    }
    let mut fields = Fields::form(form_body(request, &state.limits).await?);
    let username = fields.text("username", true, 1, 256, None);
    let password = fields.secret("password", true, 1, PASSWORD_MAX);
    fields.text(
        "grant_type",
        false,
        0,
        64,
        Some((|g: &str| g == "password", "^password$")),
    );
    let (username, password) = fields.finish_with(username.zip(password))?;
    let username = username.to_ascii_lowercase();
    // A name no account can have gets no bucket of its own (the address's counts).
    let bucket = valid_username(&username).then_some(username.as_str());
    check_limit(&state, peer, &headers, bucket).await?;
    let tokens = accounts.sign_in(&username, password).await;
    if let Err(AccountError::BadCredentials) = &tokens {
        // Not the name itself: people type their password into it.
        let tag: String = crate::domain::accounts::digest(&username)[..12].to_owned();
        tracing::info!(target: "chatbot_api::accounts", username_sha256 = %tag, "failed sign-in");
    }
    Ok(issued(&accounts, tokens?, cookie))
}

/// The refresh token of a body's `refresh_token`, else of the cookie.
async fn presented_refresh(
    state: &AppState,
    request: Request,
) -> Result<(Option<String>, bool), ApiError> {
    let from_cookie = cookie_token(request.headers());
    let body = json_body(request, &state.limits).await?;
    let given = match body {
        Some(Value::Object(object)) => match object.get("refresh_token") {
            Some(Value::String(token)) => Some(token.clone()),
            None | Some(Value::Null) => None,
            Some(other) => {
                let mut fields = Fields::json(Some(json!({ "refresh_token": other })))?;
                fields.text("refresh_token", true, 1, 256, None);
                fields.finish()?;
                None
            }
        },
        None => None,
        Some(other) => Fields::json(Some(other)).map(|_| None)?,
    };
    match (given, from_cookie) {
        (Some(token), _) => Ok((Some(token), false)),
        (None, Some(token)) => Ok((Some(token), true)),
        (None, None) => Ok((None, false)),
    }
}

/// `POST /auth/refresh` and `/auth/logout` body (or the page's cookie).
#[derive(Serialize, ToSchema)]
pub struct RefreshBody {
    /// The refresh token; without it, the `chatbot_refresh` cookie's.
    pub refresh_token: Option<String>,
}

/// Exchanges a refresh token for a new access token and a new refresh
/// token: each refresh token works once, and one used twice revokes every
/// token of its sign-in (a stolen copy is then worthless to both).
#[utoipa::path(post, path = "/auth/refresh", operation_id = "refresh", tag = "accounts", summary = "Refresh tokens",
    request_body(content = Option<RefreshBody>, content_type = "application/json", description = "The refresh token; or none, and the `chatbot_refresh` cookie"),
    responses(
        (status = 200, description = "New tokens; the cookie is renewed if it was the one used", body = TokenBody),
        (status = 401, description = "Unknown, expired, revoked or already used", body = DetailBody),
        (status = 422, description = "A malformed body", body = ValidationBody),
        (status = 503, description = "Storage unavailable", body = DetailBody),
    ))]
async fn refresh(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let accounts = accounts(&state)?.clone();
    let (token, from_cookie) = presented_refresh(&state, request).await?;
    let token = token.ok_or(AccountError::InvalidToken)?;
    match accounts.refresh(&token).await {
        Ok(tokens) => Ok(issued(&accounts, tokens, from_cookie)),
        Err(err) => {
            let mut response = ApiError::from(err).into_response();
            if from_cookie {
                set_cookie(&mut response, None, 0);
            }
            Ok(response)
        }
    }
}

/// Signs out this device: its refresh token (and every one rotated from
/// the same sign-in) stops working; its access token expires on its own.
#[utoipa::path(post, path = "/auth/logout", operation_id = "logout", tag = "accounts", summary = "Sign out",
    request_body(content = Option<RefreshBody>, content_type = "application/json", description = "The refresh token; or none, and the `chatbot_refresh` cookie"),
    responses(
        (status = 204, description = "Signed out (also when the token was unknown)"),
        (status = 422, description = "A malformed body", body = ValidationBody),
        (status = 503, description = "Storage unavailable", body = DetailBody),
    ))]
async fn logout(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let accounts = accounts(&state)?.clone();
    let (token, _) = presented_refresh(&state, request).await?;
    if let Some(token) = token {
        accounts.logout(&token).await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    set_cookie(&mut response, None, 0);
    Ok(response)
}

/// The signed-in account.
#[utoipa::path(get, path = "/auth/me", operation_id = "me", tag = "accounts", summary = "Who am I",
    responses(
        (status = 200, description = "The account", body = AccountBody),
        (status = 401, description = "No valid token", body = DetailBody),
        (status = 403, description = "Not an account (an API key or another identity provider's token)", body = DetailBody),
    ))]
async fn me(
    State(state): State<AppState>,
    account: AccountOf,
) -> Result<Json<AccountBody>, ApiError> {
    let username = signed_in(&account)?;
    let found = accounts(&state)?.account(username).await?;
    Ok(Json(found.into()))
}

/// `POST /auth/password` body.
#[derive(Serialize, ToSchema)]
pub struct PasswordBody {
    #[schema(format = Password, min_length = 1, max_length = 128)]
    pub current_password: String,
    #[schema(format = Password, min_length = 8, max_length = 128)]
    pub new_password: String,
}

/// Changes the password. Every other session ends (refresh tokens revoked,
/// access tokens refused); this one gets new tokens.
#[utoipa::path(post, path = "/auth/password", operation_id = "change_password", tag = "accounts", summary = "Change password",
    params(("cookie" = Option<bool>, Query, description = "The new refresh token into the page's cookie")),
    request_body(content = PasswordBody, content_type = "application/json"),
    responses(
        (status = 200, description = "New tokens", body = TokenBody),
        (status = 401, description = "No valid token, or the current password is wrong", body = DetailBody),
        (status = 403, description = "Not an account", body = DetailBody),
        (status = 422, description = "A new password that breaks a rule", body = ValidationBody),
        (status = 429, description = "Too many attempts (see Retry-After)", body = DetailBody),
    ))]
async fn change_password(
    State(state): State<AppState>,
    account: AccountOf,
    request: Request,
) -> Result<Response, ApiError> {
    let username = in_session(&account)?.to_owned();
    let accounts = accounts(&state)?.clone();
    let peer = peer_of(&request);
    let headers = request.headers().clone();
    let cookie = wants_cookie(request.uri()) || cookie_token(&headers).is_some();
    let mut fields = Fields::json(json_body(request, &state.limits).await?)?;
    let current = fields.secret("current_password", true, 1, PASSWORD_MAX);
    let new = fields.secret("new_password", true, PASSWORD_MIN, PASSWORD_MAX);
    let (current, new) = fields.finish_with(current.zip(new))?;
    check_limit(&state, peer, &headers, Some(&username)).await?;
    let tokens = accounts.change_password(&username, current, new).await?;
    tracing::info!(target: "chatbot_api::accounts", username = %username, "password changed");
    Ok(issued(&accounts, tokens, cookie))
}

/// Signs out every device of the account: all refresh tokens revoked, all
/// access tokens refused (on other instances within two seconds).
#[utoipa::path(post, path = "/auth/logout/all", operation_id = "logout_all", tag = "accounts", summary = "Sign out everywhere",
    responses(
        (status = 204, description = "Signed out everywhere"),
        (status = 401, description = "No valid token", body = DetailBody),
        (status = 403, description = "Not an account", body = DetailBody),
    ))]
async fn logout_all(
    State(state): State<AppState>,
    account: AccountOf,
) -> Result<Response, ApiError> {
    let username = in_session(&account)?;
    accounts(&state)?.logout_all(username).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    set_cookie(&mut response, None, 0);
    Ok(response)
}

/// The account's personal API keys (never the keys themselves).
#[utoipa::path(get, path = "/auth/keys", operation_id = "list_keys", tag = "accounts", summary = "List personal keys",
    responses(
        (status = 200, description = "Keys, oldest first", body = Vec<KeyBody>),
        (status = 401, description = "No valid token", body = DetailBody),
        (status = 403, description = "Not an account", body = DetailBody),
    ))]
async fn list_keys(
    State(state): State<AppState>,
    account: AccountOf,
) -> Result<Json<Vec<KeyBody>>, ApiError> {
    let username = in_session(&account)?;
    let keys = accounts(&state)?.keys(username).await?;
    Ok(Json(
        keys.into_iter().map(|k| KeyBody::new(k, None)).collect(),
    ))
}

/// `POST /auth/keys` body.
#[derive(Serialize, ToSchema)]
pub struct NewKeyBody {
    /// What the key is for.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
}

/// Most personal keys an account may hold.
const MAX_KEYS: usize = 100;

/// A new personal API key that acts as the account (an OpenAI SDK, a
/// script): `Authorization: Bearer KEY`. The key is in this answer only.
#[utoipa::path(post, path = "/auth/keys", operation_id = "create_key", tag = "accounts", summary = "Create a personal key",
    request_body(content = NewKeyBody, content_type = "application/json"),
    responses(
        (status = 201, description = "The key, shown this once", body = KeyBody),
        (status = 401, description = "No valid token", body = DetailBody),
        (status = 403, description = "Not an account", body = DetailBody),
        (status = 409, description = "The account has the most keys it may have", body = DetailBody),
        (status = 422, description = "No name", body = ValidationBody),
    ))]
async fn create_key(
    State(state): State<AppState>,
    account: AccountOf,
    request: Request,
) -> Result<Response, ApiError> {
    let username = in_session(&account)?.to_owned();
    let accounts = accounts(&state)?.clone();
    let mut fields = Fields::json(json_body(request, &state.limits).await?)?;
    let name = fields.text("name", true, 1, 100, None);
    let name = fields.finish_with(name)?;
    if accounts.keys(&username).await?.len() >= MAX_KEYS {
        return Ok((
            StatusCode::CONFLICT,
            Json(json!({ "detail": format!("An account may hold at most {MAX_KEYS} keys") })),
        )
            .into_response());
    }
    let (secret, key) = accounts.create_key(&username, name).await?;
    Ok((StatusCode::CREATED, Json(KeyBody::new(key, Some(secret)))).into_response())
}

/// Deletes a personal key: it stops working at once here, and on other
/// instances within two seconds.
#[utoipa::path(delete, path = "/auth/keys/{key_id}", operation_id = "delete_key", tag = "accounts", summary = "Delete a personal key",
    params(("key_id" = String, Path, description = "The key's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid token", body = DetailBody),
        (status = 403, description = "Not an account", body = DetailBody),
        (status = 404, description = "The account has no such key", body = DetailBody),
    ))]
async fn delete_key(
    State(state): State<AppState>,
    account: AccountOf,
    Path(key_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let username = in_session(&account)?;
    accounts(&state)?.delete_key(username, &key_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
