//! API keys: who is asking, and which sessions are theirs.
//!
//! Keys are kept only as SHA-256 digests and compared in constant time. Each
//! key owns its sessions: the store keys a session by the owner's tag and the
//! session id, so the same `session_id` under two keys is two conversations,
//! and listing, search, stats, export and delete never cross keys.

use std::borrow::Cow;
use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts, Request, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::domain::models::SessionId;
use crate::http::error::ApiError;

/// Separates an owner's tag from a session id in store keys; session ids
/// cannot contain it (control characters are refused).
const SEPARATOR: char = '\u{1f}';

/// The configured keys, as digests. None configured: the server is open.
#[derive(Clone, Default)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} configured)", self.digests.len())
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl ApiKeys {
    pub fn new<K: AsRef<str>>(keys: impl IntoIterator<Item = K>) -> Self {
        Self {
            digests: keys.into_iter().map(|k| digest(k.as_ref())).collect(),
        }
    }

    /// No keys configured: every request is let in, as one owner.
    pub fn is_open(&self) -> bool {
        self.digests.is_empty()
    }

    /// The owner of `presented`, if it is one of the keys. Every configured
    /// key is compared, in constant time, whatever matches.
    pub fn owner_of(&self, presented: &str) -> Option<Owner> {
        let wanted = digest(presented);
        let mut found = None;
        for known in &self.digests {
            if bool::from(known.ct_eq(&wanted)) {
                found = Some(*known);
            }
        }
        found.map(|d| Owner::keyed(&d))
    }

    /// Who the request's headers say they are: `Authorization: Bearer KEY`
    /// or `X-API-Key: KEY`.
    pub fn identify(&self, headers: &HeaderMap) -> Result<Owner, ApiError> {
        if self.is_open() {
            return Ok(Owner::open());
        }
        presented_key(headers)
            .and_then(|key| self.owner_of(key))
            .ok_or(ApiError::Unauthorized)
    }
}

/// The key a request presents, if any.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim());
    bearer.or_else(|| {
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    })
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
        let tag: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Self {
            prefix: format!("k{tag}{SEPARATOR}"),
        }
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
/// [`require_key`] found (a route without that check answers 401).
impl<S: Send + Sync> FromRequestParts<S> for Owner
where
    Arc<ApiKeys>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        if Arc::<ApiKeys>::from_ref(state).is_open() {
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
/// owner (401 otherwise) and hands it to the handler.
pub async fn require_key(
    State(keys): State<Arc<ApiKeys>>,
    request: Request,
    next: Next,
) -> Response {
    admit(&keys, request, next, IntoResponse::into_response).await
}

/// [`require_key`] for `/v1`: the same check, OpenAI-shaped 401s.
pub async fn require_key_openai(
    State(keys): State<Arc<ApiKeys>>,
    request: Request,
    next: Next,
) -> Response {
    let refuse = |err| crate::http::v1::error::OpenAiError::from(err).into_response();
    admit(&keys, request, next, refuse).await
}

/// Runs the request as its owner, or answers `refuse` of why not.
async fn admit(
    keys: &ApiKeys,
    mut request: Request,
    next: Next,
    refuse: impl FnOnce(ApiError) -> Response,
) -> Response {
    match keys.identify(request.headers()) {
        Ok(owner) => {
            request.extensions_mut().insert(owner);
            next.run(request).await
        }
        Err(err) => refuse(err),
    }
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

    #[test]
    fn keys_are_found_by_bearer_or_x_api_key() {
        let keys = ApiKeys::new(["alpha", "beta"]);
        let alpha = keys
            .identify(&headers(&[("authorization", "Bearer alpha")]))
            .unwrap();
        assert_eq!(
            keys.identify(&headers(&[("authorization", "bearer  alpha")]))
                .unwrap(),
            alpha
        );
        assert_eq!(
            keys.identify(&headers(&[("x-api-key", "alpha")])).unwrap(),
            alpha
        );
        let beta = keys.identify(&headers(&[("x-api-key", "beta")])).unwrap();
        assert_ne!(alpha, beta);
        for bad in [
            headers(&[]),
            headers(&[("authorization", "Bearer gamma")]),
            headers(&[("authorization", "Basic alpha")]),
            headers(&[("authorization", "Bearer alph")]),
            headers(&[("x-api-key", "")]),
        ] {
            assert!(keys.identify(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_open_server_scopes_nothing() {
        let owner = ApiKeys::default().identify(&headers(&[])).unwrap();
        assert_eq!(owner.scope("abc"), "abc");
        assert_eq!(owner.unscope("abc".into()), "abc");
    }

    #[test]
    fn owners_scope_and_unscope_their_ids() {
        let owner = ApiKeys::new(["k"]).owner_of("k").unwrap();
        let key = owner.scope("chat");
        assert!(key.ends_with("\u{1f}chat") && key.starts_with('k'));
        assert_eq!(owner.unscope(key), "chat");
        assert!(!format!("{:?}", ApiKeys::new(["secret"])).contains("secret"));
    }
}
