//! Who is asking, and which conversations are theirs: API keys
//! ([`keys`]), bearer JWTs ([`jwt`]) and the admin role.
//!
//! Each identity owns its sessions: the store keys a session by the owner's
//! tag and the session id, so the same `session_id` under two keys (or two
//! token subjects) is two conversations, and listing, search, stats,
//! export, analytics and delete never cross owners. An admin (a token with
//! the admin role, or an admin key) may address another user's
//! conversations with `?owner=SUB`, to read and delete them, never to write.

pub mod jwt;
pub mod keys;

use std::borrow::Cow;
use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts, Request, State};
use axum::http::header::{AUTHORIZATION, LINK};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sha2::{Digest, Sha256};

pub use self::jwt::{Jwt, JwtSettings, KeySource};
pub use self::keys::ApiKeys;
use crate::domain::accounts::{Accounts, Checked, KEY_PREFIX, Signed};
use crate::domain::models::SessionId;
use crate::http::error::{ApiError, ValidationIssue};

/// Separates an owner's tag from a session id in store keys; session ids
/// cannot contain it (control characters are refused).
const SEPARATOR: char = '\u{1f}';
/// How `?owner=` names one of the server's own accounts: `account:NAME`.
pub const ACCOUNT_OWNER: &str = "account:";

/// Everything that can let a request in. Nothing configured: the server is
/// open and everyone is one owner.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    /// Keys that see their own conversations.
    pub keys: ApiKeys,
    /// Keys that also may address anyone's (`?owner=`).
    pub admin_keys: ApiKeys,
    /// Bearer JWTs, if configured.
    pub jwt: Option<Arc<Jwt>>,
    /// Accounts of the server's own (`--accounts`): the tokens it signs
    /// and its users' personal keys.
    pub accounts: Option<Arc<Accounts>>,
}

/// A request's identity: whose conversations it sees, and, for an admin,
/// how logs name it (never by its key or token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub owner: Owner,
    pub admin: Option<String>,
    /// May use the routes about the whole server (`/metrics`, `/debug/*`):
    /// API keys (services, scrapers) and admins; not a user's token.
    pub operator: bool,
    /// The account it acts as: one of the server's own accounts, by its
    /// access token or personal key.
    pub account: Option<String>,
    /// That account acts by a personal key, not a signed-in session.
    pub account_by_key: bool,
}

impl Auth {
    /// An open server: nothing to check.
    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
            && self.admin_keys.is_empty()
            && self.jwt.is_none()
            && self.accounts.is_none()
    }

    /// Who the request's headers say they are: `Authorization: Bearer
    /// KEY_OR_TOKEN` or `X-API-Key: KEY`. Keys are tried first; a JWT-shaped
    /// bearer that is no key is checked as a token.
    pub async fn identify(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        if self.is_open() {
            return Ok(Caller {
                owner: Owner::open(),
                admin: None,
                operator: true,
                account: None,
                account_by_key: false,
            });
        }
        let presented = presented_key(headers).ok_or(ApiError::Unauthorized)?;
        if let Some(caller) = self.by_key(presented) {
            return Ok(caller);
        }
        if let Some(accounts) = &self.accounts {
            if presented.starts_with(KEY_PREFIX) {
                return match accounts.key_caller(presented).await? {
                    Some(signed) => Ok(Caller::from(signed)),
                    None => Err(ApiError::Unauthorized),
                };
            }
            if Jwt::looks_like_jwt(presented) {
                match accounts.check(presented).await? {
                    Checked::Valid(signed) => return Ok(Caller::from(signed)),
                    Checked::Refused => return Err(ApiError::Unauthorized),
                    Checked::NotOurs => {}
                }
            }
        }
        let jwt = self.checker_for(presented).ok_or(ApiError::Unauthorized)?;
        match jwt.verify(presented).await {
            Ok(verified) => Ok(Caller::from(verified)),
            Err(jwt::Refusal::Invalid) => Err(ApiError::Unauthorized),
            Err(jwt::Refusal::Unchecked) => Err(ApiError::AuthUnavailable),
        }
    }

    /// [`Auth::identify`] with what is at hand (no JWKS fetch): the rate
    /// limit's way to find a request's bucket before the check proper.
    pub fn owner_cached(&self, headers: &HeaderMap) -> Option<Owner> {
        let presented = presented_key(headers)?;
        if let Some(caller) = self.by_key(presented) {
            return Some(caller.owner);
        }
        if let Some(sub) = self
            .accounts
            .as_ref()
            .and_then(|accounts| accounts.subject_cached(presented))
        {
            return Some(Owner::account(&sub));
        }
        self.checker_for(presented)?
            .verify_cached(presented)
            .map(|verified| Owner::user(&verified.sub))
    }

    /// The token checker for `presented`, if tokens are on and it is shaped
    /// like one (anything else that is no key is refused as it is).
    fn checker_for(&self, presented: &str) -> Option<&Jwt> {
        self.jwt
            .as_deref()
            .filter(|_| Jwt::looks_like_jwt(presented))
    }

    fn by_key(&self, presented: &str) -> Option<Caller> {
        if let Some(owner) = self.keys.owner_of(presented) {
            return Some(Caller {
                owner,
                admin: None,
                operator: true,
                account: None,
                account_by_key: false,
            });
        }
        self.admin_keys.owner_of(presented).map(|owner| Caller {
            admin: Some(format!("admin key {}", owner.tag())),
            owner,
            operator: true,
            account: None,
            account_by_key: false,
        })
    }
}

impl From<jwt::Verified> for Caller {
    fn from(verified: jwt::Verified) -> Self {
        Self {
            owner: Owner::user(&verified.sub),
            admin: verified.admin.then(|| format!("sub {:?}", verified.sub)),
            operator: verified.admin,
            account: None,
            account_by_key: false,
        }
    }
}

impl From<Signed> for Caller {
    fn from(signed: Signed) -> Self {
        Self {
            owner: Owner::account(&signed.account_id),
            admin: signed
                .admin
                .then(|| format!("account {:?}", signed.username)),
            operator: signed.admin,
            account_by_key: signed.by_key,
            account: Some(signed.username),
        }
    }
}

/// The key or token a request presents, if any.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim());
    bearer
        .or_else(|| {
            headers
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        })
        .filter(|key| !key.is_empty())
}

/// Whose sessions a request may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    prefix: String,
}

impl Owner {
    /// Everyone, on a server without keys: session ids are stored as given.
    pub fn open() -> Self {
        Self {
            prefix: String::new(),
        }
    }

    fn keyed(digest: &[u8; 32]) -> Self {
        Self::tagged('k', digest)
    }

    /// The owner a token's subject names.
    pub fn user(sub: &str) -> Self {
        Self::tagged('u', &Sha256::digest(sub.as_bytes()).into())
    }

    /// The owner one of the server's own accounts is, by its id (random,
    /// never reused): never a token subject, never a later account of the
    /// same name. `?owner=account:NAME` addresses it.
    pub fn account(account_id: &str) -> Self {
        Self::tagged('a', &Sha256::digest(account_id.as_bytes()).into())
    }

    fn tagged(kind: char, digest: &[u8; 32]) -> Self {
        let tag: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Self {
            prefix: format!("{kind}{tag}{SEPARATOR}"),
        }
    }

    /// The owner's tag (no secret: a digest's first bytes), for logs.
    pub fn tag(&self) -> &str {
        self.prefix.trim_end_matches(SEPARATOR)
    }

    /// What the owner's store keys start with (`""` on an open server).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The store key of one of the owner's sessions.
    pub fn scope(&self, session_id: &str) -> String {
        format!("{}{session_id}", self.prefix)
    }

    /// [`Owner::scope`] for a validated id; an open server's ids are their own keys.
    pub fn scope_id<'a>(&self, session_id: &'a SessionId) -> Cow<'a, SessionId> {
        if self.prefix.is_empty() {
            Cow::Borrowed(session_id)
        } else {
            Cow::Owned(SessionId::from_store_key(self.scope(session_id.as_str())))
        }
    }

    /// The session id of one of the owner's store keys.
    pub fn unscope(&self, key: String) -> String {
        match key.strip_prefix(&self.prefix) {
            Some(id) if !self.prefix.is_empty() => id.to_owned(),
            _ => key,
        }
    }
}

/// The owner of a request: everyone on an open server; otherwise the one
/// [`authenticate`] found (a route without that check answers 401).
impl<S: Send + Sync> FromRequestParts<S> for Owner
where
    Arc<Auth>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        if Arc::<Auth>::from_ref(state).is_open() {
            return Ok(Self::open());
        }
        parts
            .extensions
            .get::<Self>()
            .cloned()
            .ok_or(ApiError::Unauthorized)
    }
}

/// Middleware for every route that touches conversations: identifies the
/// caller (401 otherwise), settles `?owner=` and hands the owner to the
/// handler.
pub async fn authenticate(State(auth): State<Arc<Auth>>, request: Request, next: Next) -> Response {
    admit(&auth, request, next, IntoResponse::into_response).await
}

/// [`authenticate`] for `/v1`: the same check, OpenAI-shaped errors.
pub async fn authenticate_openai(
    State(auth): State<Arc<Auth>>,
    request: Request,
    next: Next,
) -> Response {
    let refuse = |err| crate::http::v1::error::OpenAiError::from(err).into_response();
    admit(&auth, request, next, refuse).await
}

/// Runs the request as its owner, or answers `refuse` of why not.
async fn admit(
    auth: &Auth,
    mut request: Request,
    next: Next,
    refuse: impl FnOnce(ApiError) -> Response,
) -> Response {
    let caller = match auth.identify(request.headers()).await {
        Ok(caller) => caller,
        Err(err) => return refuse(err),
    };
    let operator = Operator(caller.operator);
    let account = AccountOf(
        caller.account.clone(),
        caller.admin.is_some(),
        caller.account_by_key,
    );
    let asked = owner_asked(request.uri());
    // Only an admin's `?owner=` is looked up (anyone else is refused below).
    let named = match &asked {
        Some(name) if caller.admin.is_some() => match named_owner(auth, name).await {
            Ok(owner) => Some(owner),
            Err(err) => return refuse(err),
        },
        Some(name) => Some(Owner::user(name)),
        None => None,
    };
    let path = request.uri().path();
    let target = asked.as_deref().zip(named);
    match act_as(caller, request.method(), path, target) {
        Ok(owner) => {
            request.extensions_mut().insert(owner);
            request.extensions_mut().insert(operator);
            request.extensions_mut().insert(account);
            let mut response = next.run(request).await;
            if let Some(sub) = &asked {
                keep_owner_in_link(&mut response, sub);
            }
            response
        }
        Err(err) => refuse(err),
    }
}

/// The owner `?owner=` names: `account:NAME` for one of the server's own
/// accounts (by its id; an owner nobody has when there is no such
/// account), else a token subject.
async fn named_owner(auth: &Auth, name: &str) -> Result<Owner, ApiError> {
    match (name.strip_prefix(ACCOUNT_OWNER), &auth.accounts) {
        (Some(username), Some(accounts)) => {
            let username = username.to_ascii_lowercase();
            Ok(match accounts.id_of(&username).await? {
                Some(id) => Owner::account(&id),
                None => Owner::account(&format!("none:{username}")),
            })
        }
        _ => Ok(Owner::user(name)),
    }
}

/// The `owner` a request asks for (its last value, as Starlette reads one).
fn owner_asked(uri: &axum::http::Uri) -> Option<String> {
    let query = uri.query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .filter(|(name, _)| name == "owner")
        .last()
        .map(|(_, value)| value.into_owned())
}

/// Adds `owner=SUB` to a paging `Link` (`<target>; rel="next"`), so that an
/// admin's next page is still that user's; every paged route gets it here.
fn keep_owner_in_link(response: &mut Response, sub: &str) {
    let Some(link) = response.headers().get(LINK).and_then(|v| v.to_str().ok()) else {
        return;
    };
    let Some((target, rest)) = link.strip_prefix('<').and_then(|l| l.split_once('>')) else {
        return;
    };
    let joint = if target.contains('?') { '&' } else { '?' };
    let sub: String = url::form_urlencoded::byte_serialize(sub.as_bytes()).collect();
    if let Ok(value) = HeaderValue::from_str(&format!("<{target}{joint}owner={sub}>{rest}")) {
        response.headers_mut().insert(LINK, value);
    }
}

/// The account a request acts as (if it is one of the server's own),
/// whether the caller is an admin, and whether the account acts by a
/// personal key; set by [`authenticate`].
#[derive(Debug, Clone)]
pub struct AccountOf(pub Option<String>, pub bool, pub bool);

impl<S: Send + Sync> FromRequestParts<S> for AccountOf {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Self>()
            .cloned()
            .ok_or(ApiError::Unauthorized)
    }
}

/// Whether the caller may use the routes about the whole server; set by
/// [`authenticate`].
#[derive(Debug, Clone, Copy)]
struct Operator(bool);

/// Route layer for `/metrics` and `/debug/*`, inside [`authenticate`]:
/// 403 for a user's token that is not an admin's. (An open server has no
/// callers to tell apart.)
pub async fn require_operator(request: Request, next: Next) -> Response {
    match request.extensions().get::<Operator>() {
        Some(Operator(false)) => {
            ApiError::Forbidden("Only an API key or an admin may use this route").into_response()
        }
        _ => next.run(request).await,
    }
}

/// Whose conversations the request acts on: the caller's own, or, for an
/// admin reading or deleting, those of `?owner=SUB`.
fn act_as(
    caller: Caller,
    method: &Method,
    path: &str,
    asked: Option<(&str, Owner)>,
) -> Result<Owner, ApiError> {
    let Some((sub, named)) = asked else {
        return Ok(caller.owner);
    };
    let Some(admin) = caller.admin else {
        return Err(ApiError::Forbidden(
            "Only an admin may address another owner's conversations",
        ));
    };
    if sub.is_empty() {
        return Err(ApiError::Validation(vec![
            ValidationIssue::new(
                "string_too_short",
                vec!["query".into(), "owner".into()],
                "String should have at least 1 character",
                json!(sub),
            )
            .with_ctx(json!({ "min_length": 1 })),
        ]));
    }
    if !matches!(*method, Method::GET | Method::HEAD | Method::DELETE) {
        return Err(ApiError::Forbidden(
            "An admin may read and delete another owner's conversations, not write to them",
        ));
    }
    tracing::info!(
        target: "chatbot_api::admin",
        admin = %admin,
        method = %method,
        path,
        owner = ?sub,
        "admin acts on another owner's conversations"
    );
    Ok(named)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    fn keyed(keys: &[&str]) -> Auth {
        Auth {
            keys: ApiKeys::new(keys),
            ..Auth::default()
        }
    }

    #[tokio::test]
    async fn keys_are_found_by_bearer_or_x_api_key() {
        let auth = keyed(&["alpha", "beta"]);
        let id = |pairs| {
            let auth = auth.clone();
            let headers = headers(pairs);
            async move { auth.identify(&headers).await.map(|c| c.owner) }
        };
        let alpha = id(&[("authorization", "Bearer alpha")]).await.unwrap();
        assert_eq!(
            id(&[("authorization", "bearer  alpha")]).await.unwrap(),
            alpha
        );
        assert_eq!(id(&[("x-api-key", "alpha")]).await.unwrap(), alpha);
        assert_ne!(id(&[("x-api-key", "beta")]).await.unwrap(), alpha);
        for bad in [
            &[][..],
            &[("authorization", "Bearer gamma")],
            &[("authorization", "Basic alpha")],
            &[("authorization", "Bearer alph")],
            &[("x-api-key", "")],
        ] {
            assert!(id(bad).await.is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn an_open_server_scopes_nothing() {
        let caller = Auth::default().identify(&headers(&[])).await.unwrap();
        assert_eq!(caller.owner.scope("abc"), "abc");
        assert_eq!(caller.owner.unscope("abc".into()), "abc");
        assert_eq!(caller.admin, None);
    }

    #[test]
    fn owners_scope_and_unscope_their_ids() {
        let owner = ApiKeys::new(["k"]).owner_of("k").unwrap();
        let key = owner.scope("chat");
        assert!(key.ends_with("\u{1f}chat") && key.starts_with('k'));
        assert_eq!(owner.unscope(key), "chat");
        let user = Owner::user("k");
        assert!(user.scope("chat").starts_with('u'));
        assert_ne!(user, owner);
        assert_eq!(Owner::user("alice"), Owner::user("alice"));
        assert_ne!(Owner::user("alice"), Owner::user("bob"));
    }

    #[test]
    fn only_admins_address_other_owners_and_only_to_read_or_delete() {
        let user = Caller {
            owner: Owner::user("alice"),
            admin: None,
            operator: false,
            account: None,
            account_by_key: false,
        };
        let admin = Caller {
            owner: Owner::user("root"),
            admin: Some("sub \"root\"".into()),
            operator: true,
            account: None,
            account_by_key: false,
        };
        let uri = |u: &str| u.parse::<axum::http::Uri>().unwrap();
        let act_as = |caller, method: &Method, uri: &axum::http::Uri| {
            let asked = owner_asked(uri);
            let target = asked.as_deref().map(|name| (name, Owner::user(name)));
            act_as(caller, method, uri.path(), target)
        };
        let plain = uri("/chat/history/s");
        let other = uri("/chat/history/s?owner=bob");
        assert_eq!(
            act_as(user.clone(), &Method::GET, &plain).unwrap(),
            user.owner
        );
        assert!(matches!(
            act_as(user.clone(), &Method::GET, &other),
            Err(ApiError::Forbidden(_))
        ));
        assert_eq!(
            act_as(admin.clone(), &Method::GET, &plain).unwrap(),
            admin.owner
        );
        for method in [Method::GET, Method::DELETE] {
            assert_eq!(
                act_as(admin.clone(), &method, &other).unwrap(),
                Owner::user("bob")
            );
        }
        for method in [Method::POST, Method::PATCH] {
            assert!(matches!(
                act_as(admin.clone(), &method, &other),
                Err(ApiError::Forbidden(_))
            ));
        }
        assert!(matches!(
            act_as(admin, &Method::GET, &uri("/chat/sessions?owner=")),
            Err(ApiError::Validation(_))
        ));
    }

    #[test]
    fn only_jwt_shaped_bearers_are_checked_as_tokens() {
        assert!(Jwt::looks_like_jwt("eyJh.eyJz.c2ln"));
        for not in ["key", "a.b", "a.b.c.d", "a..c", "a.b.c=", "a b.c.d"] {
            assert!(!Jwt::looks_like_jwt(not), "{not}");
        }
    }
}
