//! `/admin/users`: an admin manages the server's own accounts. Admins are
//! accounts with the admin flag, admin API keys and an identity provider's
//! admins; anyone else gets 403. An admin reads and deletes a user's
//! conversations through every conversation route with
//! `?owner=account:NAME`.

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{AccountBody, accounts, new_account_fields};
use crate::domain::accounts::{PASSWORD_MAX, PASSWORD_MIN};
use crate::http::AppState;
use crate::http::auth::{AccountOf, Owner};
use crate::http::docs::{DetailBody, ValidationBody};
use crate::http::error::{ApiError, Loc, ValidationIssue};
use crate::http::extract::json_body;
use crate::http::validate::Fields;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users, create_user))
        .routes(routes!(update_user, delete_user))
}

fn admin_only(caller: &AccountOf) -> Result<(), ApiError> {
    if caller.1 {
        Ok(())
    } else {
        Err(ApiError::Forbidden("Only an admin may manage accounts"))
    }
}

/// Every account, by username.
#[utoipa::path(get, path = "/admin/users", operation_id = "list_users", tag = "accounts", summary = "List accounts",
    responses(
        (status = 200, description = "Accounts by username", body = Vec<AccountBody>),
        (status = 401, description = "No valid token or key", body = DetailBody),
        (status = 403, description = "Not an admin", body = DetailBody),
    ))]
async fn list_users(
    State(state): State<AppState>,
    caller: AccountOf,
) -> Result<Json<Vec<AccountBody>>, ApiError> {
    admin_only(&caller)?;
    let all = accounts(&state)?.list().await?;
    Ok(Json(all.into_iter().map(AccountBody::from).collect()))
}

/// `POST /admin/users` body.
#[derive(Serialize, ToSchema)]
pub struct NewUserBody {
    #[schema(min_length = 3, max_length = 32, pattern = "^[A-Za-z0-9._-]+$")]
    pub username: String,
    #[schema(min_length = 8, max_length = 128, format = Password)]
    pub password: String,
    #[schema(min_length = 1, max_length = 100)]
    pub display_name: Option<String>,
    /// Make it an admin (default false).
    pub admin: Option<bool>,
}

/// Creates an account, whatever `--signup` says (approved at once).
#[utoipa::path(post, path = "/admin/users", operation_id = "create_user", tag = "accounts", summary = "Create an account",
    request_body(content = NewUserBody, content_type = "application/json"),
    responses(
        (status = 201, description = "The account", body = AccountBody),
        (status = 401, description = "No valid token or key", body = DetailBody),
        (status = 403, description = "Not an admin", body = DetailBody),
        (status = 409, description = "The username is taken", body = DetailBody),
        (status = 422, description = "A username or password that breaks a rule", body = ValidationBody),
    ))]
async fn create_user(
    State(state): State<AppState>,
    caller: AccountOf,
    request: Request,
) -> Result<Response, ApiError> {
    admin_only(&caller)?;
    let accounts = accounts(&state)?.clone();
    let mut fields = Fields::json(json_body(request, &state.limits).await?)?;
    let (username, password, display_name) = new_account_fields(&mut fields);
    let admin = fields.boolean("admin");
    let (username, password) = fields.finish_with(username.zip(password))?;
    let account = accounts
        .register(
            &username,
            password,
            display_name,
            Some(admin.unwrap_or(false)),
        )
        .await?;
    tracing::info!(target: "chatbot_api::accounts", username = %account.username,
        admin = account.admin, "account created by an admin");
    Ok((StatusCode::CREATED, Json(AccountBody::from(account))).into_response())
}

/// `PATCH /admin/users/{username}` body: at least one field.
#[derive(Serialize, ToSchema)]
pub struct UserPatch {
    /// Disabling signs the account out everywhere and refuses its tokens
    /// and keys until enabled again.
    pub disabled: Option<bool>,
    pub admin: Option<bool>,
    /// Approve an account that waits (`--signup approval`).
    pub approved: Option<bool>,
    /// A new password; the account is signed out everywhere.
    #[schema(min_length = 8, max_length = 128, format = Password)]
    pub password: Option<String>,
}

/// Changes an account: disable or enable it, make or unmake an admin,
/// approve it, set its password. The last admin stays one.
#[utoipa::path(patch, path = "/admin/users/{username}", operation_id = "update_user", tag = "accounts", summary = "Change an account",
    params(("username" = String, Path, description = "The account")),
    request_body(content = UserPatch, content_type = "application/json"),
    responses(
        (status = 200, description = "The account as it is now", body = AccountBody),
        (status = 401, description = "No valid token or key", body = DetailBody),
        (status = 403, description = "Not an admin", body = DetailBody),
        (status = 404, description = "No such account", body = DetailBody),
        (status = 409, description = "It would leave no admin", body = DetailBody),
        (status = 422, description = "No field, or a field that breaks a rule", body = ValidationBody),
    ))]
async fn update_user(
    State(state): State<AppState>,
    caller: AccountOf,
    Path(username): Path<String>,
    request: Request,
) -> Result<Json<AccountBody>, ApiError> {
    admin_only(&caller)?;
    let accounts = accounts(&state)?.clone();
    let body = json_body(request, &state.limits).await?;
    let empty = body.as_ref().and_then(|b| b.as_object()).is_some_and(|o| {
        !["disabled", "admin", "approved", "password"]
            .iter()
            .any(|k| o.contains_key(*k))
    });
    let mut fields = Fields::json(body.clone())?;
    let disabled = fields.boolean("disabled");
    let admin = fields.boolean("admin");
    let approved = fields.boolean("approved");
    let password = fields.secret("password", false, PASSWORD_MIN, PASSWORD_MAX);
    fields.finish()?;
    if empty {
        return Err(ApiError::Validation(vec![ValidationIssue::new(
            "missing",
            vec![Loc::from("body")],
            "At least one of disabled, admin, approved, password is required",
            body.unwrap_or_default(),
        )]));
    }
    let account = accounts
        .admin_update(
            &username.to_ascii_lowercase(),
            admin,
            disabled,
            approved,
            password,
        )
        .await?;
    tracing::info!(target: "chatbot_api::accounts", username = %account.username,
        admin = account.admin, disabled = account.disabled, pending = account.pending,
        "account changed by an admin");
    Ok(Json(account.into()))
}

/// Deletes an account and everything it owns: its conversations, its
/// tokens and its keys. Its username may then be taken again, by someone
/// who sees none of it.
#[utoipa::path(delete, path = "/admin/users/{username}", operation_id = "delete_user", tag = "accounts", summary = "Delete an account",
    params(("username" = String, Path, description = "The account")),
    responses(
        (status = 204, description = "Deleted, with its conversations"),
        (status = 401, description = "No valid token or key", body = DetailBody),
        (status = 403, description = "Not an admin", body = DetailBody),
        (status = 404, description = "No such account", body = DetailBody),
        (status = 409, description = "The last admin", body = DetailBody),
    ))]
async fn delete_user(
    State(state): State<AppState>,
    caller: AccountOf,
    Path(username): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin_only(&caller)?;
    let username = username.to_ascii_lowercase();
    let accounts = accounts(&state)?.clone();
    // Disabled and signed out first, then its conversations, then the
    // account. Conversations belong to the account's id, never reused: a
    // new account of the same name sees none of them, even any a request
    // still running wrote after this sweep (they are then unreachable).
    let account_id = accounts.retire(&username).await?;
    let owner = Owner::account(&account_id);
    let mut deleted = 0usize;
    loop {
        let batch = state.store.sessions(owner.prefix(), None, 500).await?;
        let before = deleted;
        for session in &batch {
            if state.store.delete(&session.session_id).await? {
                deleted += 1;
            }
        }
        // Nothing left, or nothing this pass could delete: done.
        if batch.is_empty() || deleted == before {
            break;
        }
    }
    accounts.remove(&username).await?;
    tracing::info!(target: "chatbot_api::accounts", username = %username,
        conversations = deleted, "account deleted by an admin");
    Ok(StatusCode::NO_CONTENT)
}
