//! Accounts of the server's own (`--accounts`): sign-up, sign-in with a
//! password, the tokens the server signs, refresh tokens that rotate, and
//! personal API keys.
//!
//! - Access tokens are HS256 JWTs (issuer and audience `chatbot-api`),
//!   short-lived, carrying the account's *epoch*: signing out everywhere, a
//!   password change and disabling raise it, which ends every access token
//!   issued before. Each instance keeps an account's state for
//!   [`STATE_TTL`], so another instance sees such a change within that.
//! - Refresh tokens are opaque, stored as SHA-256 digests, and rotate: each
//!   use gives a new one of the same *family* (one sign-in on one device),
//!   and a used one presented again revokes the family (RFC 9700 §4.14.2).
//! - The signing key is `--jwt-secret`, or one generated at first start and
//!   kept in the database, so tokens survive restarts and every instance on
//!   one PostgreSQL accepts every other's.

pub mod db;
pub mod password;

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use self::db::{AccountDb, Rotation};
use self::password::Passwords;
use crate::domain::models::now;

/// Usernames: 3 to 32 of `A-Z a-z 0-9 . _ -` (kept lower-cased).
pub const USERNAME_PATTERN: &str = "^[A-Za-z0-9._-]+$";
pub const USERNAME_MIN: usize = 3;
pub const USERNAME_MAX: usize = 32;
/// Passwords: at least this many characters, and at most that (hashing is bounded).
pub const PASSWORD_MIN: usize = 8;
pub const PASSWORD_MAX: usize = 128;

/// Whether every character of `name` may be in a username.
pub fn username_chars_allowed(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `name` could be an account's username (length and characters).
pub fn valid_username(name: &str) -> bool {
    (USERNAME_MIN..=USERNAME_MAX).contains(&name.len()) && username_chars_allowed(name)
}

/// Whether `password` has an allowed length.
pub fn valid_password(password: &str) -> bool {
    (PASSWORD_MIN..=PASSWORD_MAX).contains(&password.chars().count())
}

/// How long an instance trusts what it read of an account's state.
pub const STATE_TTL: Duration = Duration::from_secs(2);
/// The `iss` and `aud` of the tokens this server signs.
pub const ISSUER: &str = "chatbot-api";
/// Personal API keys start with this.
pub const KEY_PREFIX: &str = "cbk_";
/// Refresh tokens start with this.
const REFRESH_PREFIX: &str = "cbr_";
/// The claim in `server_secrets` the first account makes.
const FIRST_ADMIN: &str = "first_admin";
/// The generated signing key's name in `server_secrets`.
const SIGNING_KEY: &str = "jwt_signing_key";

/// Who may create an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signup {
    /// Anyone.
    Open,
    /// Only admins (the first account excepted).
    Closed,
    /// Anyone, but the account waits for an admin's approval.
    Approval,
}

impl Signup {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
            Self::Approval => "approval",
        }
    }
}

impl std::str::FromStr for Signup {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "open" => Ok(Self::Open),
            "closed" => Ok(Self::Closed),
            "approval" => Ok(Self::Approval),
            _ => Err(format!("{s:?}: expected open, closed or approval")),
        }
    }
}

/// What configures accounts.
#[derive(Clone)]
pub struct Settings {
    pub signup: Signup,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    /// Password hashes at once.
    pub hash_concurrency: usize,
    /// `--jwt-secret`; `None`: a key kept in the database.
    pub secret: Option<Vec<u8>>,
    /// How long a used refresh token still works (two tabs of one page
    /// refreshing with one cookie at once); after it, a use revokes the family.
    pub reuse_grace: Duration,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("signup", &self.signup)
            .field("access_ttl", &self.access_ttl)
            .field("refresh_ttl", &self.refresh_ttl)
            .field("hash_concurrency", &self.hash_concurrency)
            .field("secret", &self.secret.as_ref().map(|_| "(given)"))
            .field("reuse_grace", &self.reuse_grace)
            .finish()
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            signup: Signup::Closed,
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            hash_concurrency: 1,
            secret: None,
            reuse_grace: Duration::from_secs(10),
        }
    }
}

/// An account as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Random and never reused: what its tokens, keys and conversations
    /// belong to (a username deleted and taken again gets none of them).
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub admin: bool,
    pub disabled: bool,
    /// Waits for an admin's approval (`--signup approval`).
    pub pending: bool,
    pub created_at: i64,
}

/// What a request with an account's token may do; cached per instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub id: String,
    pub epoch: i64,
    pub admin: bool,
    pub disabled: bool,
    pub pending: bool,
}

/// A personal API key (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub id: String,
    pub username: String,
    pub name: String,
    /// The key's first characters, to recognize it by.
    pub hint: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

/// An access token and a refresh token, as `/auth/token` answers them.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access_token: String,
    pub expires_in: u64,
    pub refresh_token: String,
}

/// A request that a valid access token or personal key speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub username: String,
    /// The account's id: whose conversations these are.
    pub account_id: String,
    pub admin: bool,
    /// By a personal key (which may not manage keys or the password).
    pub by_key: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("username taken")]
    Taken,
    #[error("incorrect username or password")]
    BadCredentials,
    #[error("account disabled")]
    Disabled,
    #[error("account awaits approval")]
    Pending,
    #[error("sign-up is closed")]
    SignupClosed,
    #[error("no such account")]
    NoAccount,
    #[error("no such key")]
    NoKey,
    /// A refresh or access token that is not (or no longer) valid.
    #[error("invalid token")]
    InvalidToken,
    /// The last admin cannot be removed, disabled or demoted.
    #[error("the last admin")]
    LastAdmin,
    /// Too many hashes waiting.
    #[error("too busy")]
    Busy,
    #[error("accounts unavailable: {0}")]
    Unavailable(String),
}

#[derive(Serialize, Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    sub: String,
    /// The account's id: a token outlives no deletion of its account.
    aid: String,
    iat: i64,
    exp: i64,
    /// The account's epoch when the token was issued.
    ep: i64,
}

/// What checking a bearer JWT against this server's key found.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    /// One of ours, valid: the account.
    Valid(Signed),
    /// One of ours, but no longer valid (expired, old epoch, disabled).
    Refused,
    /// Not signed by this server for this server: someone else's to check.
    NotOurs,
}

/// What an instance read of the database, kept for [`STATE_TTL`]: at most
/// [`Fresh::MAX`] entries (past that it starts afresh).
struct Fresh<V> {
    map: RwLock<HashMap<String, (V, Instant)>>,
}

impl<V> Default for Fresh<V> {
    fn default() -> Self {
        Self {
            map: RwLock::default(),
        }
    }
}

impl<V: Clone> Fresh<V> {
    const MAX: usize = 100_000;

    fn get(&self, key: &str) -> Option<V> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(key)
            .filter(|(_, at)| at.elapsed() < STATE_TTL)
            .map(|(value, _)| value.clone())
    }

    fn put(&self, key: String, value: V) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if map.len() > Self::MAX {
            map.clear();
        }
        map.insert(key, (value, Instant::now()));
    }

    fn remove(&self, key: &str) {
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    fn clear(&self) {
        self.map.write().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// A personal key's id, and its account's name and id.
type KeyOwner = (String, String, String);

/// Everything about accounts.
pub struct Accounts {
    db: AccountDb,
    passwords: Passwords,
    settings: Settings,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    states: Fresh<Option<State>>,
    /// Keys' digests to (id, username), and when each was last noted used.
    keys: Fresh<Option<KeyOwner>>,
    touched: RwLock<HashMap<String, i64>>,
    /// Changes made on this instance (see [`Accounts::state_now`]).
    changes: AtomicU64,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Accounts(signup {})", self.settings.signup.as_str())
    }
}

fn random_token(prefix: &str) -> Result<String, AccountError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| AccountError::Unavailable(e.to_string()))?;
    Ok(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// The accounts' signing key derived from `--jwt-secret`:
/// HMAC-SHA256(secret, a label of its own).
fn derive_key(secret: &[u8]) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(b"chatbot-api/accounts/access-tokens/v1");
    mac.finalize().into_bytes().to_vec()
}

/// The digest a token or key is kept as.
pub fn digest(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Accounts {
    /// Accounts in `db`, signing with `settings.secret` or the database's key.
    pub async fn new(db: AccountDb, settings: Settings) -> Result<Self, AccountError> {
        let secret = match &settings.secret {
            // A key of its own, derived: tokens an identity provider signs
            // with the same secret are never ours, nor ours theirs.
            Some(secret) => derive_key(secret),
            None => {
                let generated = random_token("")?;
                db.secret(SIGNING_KEY, generated).await?.into_bytes()
            }
        };
        db.ensure_admin_lock().await?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.leeway = 5;
        Ok(Self {
            passwords: Passwords::new(settings.hash_concurrency).await?,
            encoding: EncodingKey::from_secret(&secret)
                .map_err(|e| AccountError::Unavailable(e.to_string()))?,
            decoding: DecodingKey::from_secret(&secret)
                .map_err(|e| AccountError::Unavailable(e.to_string()))?,
            validation,
            db,
            settings,
            states: Fresh::default(),
            keys: Fresh::default(),
            touched: RwLock::default(),
            changes: AtomicU64::new(0),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Whether no account has been made yet (the next one is the admin).
    pub async fn first_account(&self) -> Result<bool, AccountError> {
        Ok(!self.db.claimed(FIRST_ADMIN).await?)
    }

    /// Creates an account. By `admin_made` (an admin's request) it is
    /// made as given; otherwise as `--signup` allows: the first account
    /// signing up is an admin whatever the mode (once, on every instance:
    /// the account and the claim to be first are one transaction).
    pub async fn register(
        &self,
        username: &str,
        password: String,
        display_name: Option<String>,
        admin_made: Option<bool>,
    ) -> Result<Account, AccountError> {
        let first = admin_made.is_none() && self.first_account().await?;
        if admin_made.is_none() && !first && self.settings.signup == Signup::Closed {
            return Err(AccountError::SignupClosed);
        }
        if self.db.get(username).await?.is_some() {
            return Err(AccountError::Taken);
        }
        let hash = self.passwords.hash(password).await?;
        let mut account = Account {
            id: random_token("acct_")?,
            username: username.to_owned(),
            display_name: display_name.unwrap_or_else(|| username.to_owned()),
            admin: admin_made.unwrap_or(false),
            disabled: false,
            pending: admin_made.is_none() && self.settings.signup == Signup::Approval,
            created_at: now(),
        };
        if first {
            match self.db.insert_first(&account, &hash, FIRST_ADMIN).await? {
                Some(true) => {
                    account.admin = true;
                    account.pending = false;
                    return Ok(account);
                }
                None => return Err(AccountError::Taken),
                // Someone else was first meanwhile: as any later sign-up.
                Some(false) if self.settings.signup == Signup::Closed => {
                    return Err(AccountError::SignupClosed);
                }
                Some(false) => {}
            }
        }
        if !self.db.insert(&account, &hash).await? {
            return Err(AccountError::Taken);
        }
        Ok(account)
    }

    /// Creates the first account, an admin, unless there is one already
    /// (`--admin-username`, at start): `true` when it made it. The first
    /// admin then exists before anyone else can reach the server.
    pub async fn bootstrap_admin(
        &self,
        username: &str,
        password: String,
    ) -> Result<bool, AccountError> {
        if !self.first_account().await? {
            return Ok(false);
        }
        match self.register(username, password, None, None).await {
            Ok(account) => Ok(account.admin),
            // Another instance made it meanwhile.
            Err(AccountError::Taken | AccountError::SignupClosed) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Signs in with a password: tokens, or why not. An unknown account
    /// costs the same hash as a known one.
    pub async fn sign_in(&self, username: &str, password: String) -> Result<Tokens, AccountError> {
        let found = self.db.get(username).await?;
        let stored = found.as_ref().map(|(_, _, hash)| hash.clone());
        let verdict = self.passwords.verify(password, stored).await?;
        let Some((account, state, _)) = found.filter(|_| verdict.matches) else {
            return Err(AccountError::BadCredentials);
        };
        if account.disabled {
            return Err(AccountError::Disabled);
        }
        if account.pending {
            return Err(AccountError::Pending);
        }
        if let Some(rehash) = verdict.rehash {
            self.db.set_password(username, &rehash, false).await?;
        }
        self.issue(username, &state, None).await
    }

    /// A new access token and refresh token; a new family unless `family`.
    async fn issue(
        &self,
        username: &str,
        state: &State,
        refresh: Option<String>,
    ) -> Result<Tokens, AccountError> {
        let now = now();
        let access_ttl = self.settings.access_ttl.as_secs();
        let claims = Claims {
            iss: ISSUER.to_owned(),
            aud: ISSUER.to_owned(),
            sub: username.to_owned(),
            aid: state.id.clone(),
            iat: now,
            exp: now + i64::try_from(access_ttl).unwrap_or(i64::MAX / 2),
            ep: state.epoch,
        };
        let access_token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
                .map_err(|e| AccountError::Unavailable(e.to_string()))?;
        let refresh_token = match refresh {
            Some(token) => token,
            None => {
                let token = random_token(REFRESH_PREFIX)?;
                let family = random_token("")?;
                self.db
                    .insert_refresh(
                        &digest(&token),
                        &family,
                        (username, &state.id),
                        now,
                        now + self.refresh_secs(),
                    )
                    .await?;
                token
            }
        };
        Ok(Tokens {
            access_token,
            expires_in: access_ttl,
            refresh_token,
        })
    }

    fn refresh_secs(&self) -> i64 {
        i64::try_from(self.settings.refresh_ttl.as_secs()).unwrap_or(i64::MAX / 2)
    }

    /// Exchanges a refresh token for new tokens (the old one is spent).
    pub async fn refresh(&self, refresh_token: &str) -> Result<Tokens, AccountError> {
        if !refresh_token.starts_with(REFRESH_PREFIX) || refresh_token.len() > 128 {
            return Err(AccountError::InvalidToken);
        }
        let next = random_token(REFRESH_PREFIX)?;
        let now = now();
        let rotation = self
            .db
            .rotate(
                &digest(refresh_token),
                &digest(&next),
                now,
                now + self.refresh_secs(),
                i64::try_from(self.settings.reuse_grace.as_secs()).unwrap_or(0),
            )
            .await?;
        let (username, account_id) = match rotation {
            Rotation::Rotated {
                username,
                account_id,
            } => (username, account_id),
            Rotation::Reused => {
                tracing::warn!(
                    target: "chatbot_api::accounts",
                    "a spent refresh token was presented again: its family is revoked"
                );
                return Err(AccountError::InvalidToken);
            }
            Rotation::Invalid => return Err(AccountError::InvalidToken),
        };
        let state = self.state_now(&username).await?;
        match state {
            Some(state) if state.id == account_id && !state.disabled && !state.pending => {
                self.issue(&username, &state, Some(next)).await
            }
            _ => Err(AccountError::InvalidToken),
        }
    }

    /// Signs out the device of `refresh_token` (its family).
    pub async fn logout(&self, refresh_token: &str) -> Result<(), AccountError> {
        self.db.revoke_family_of(&digest(refresh_token)).await?;
        Ok(())
    }

    /// Signs out every device of the account: refresh tokens and access tokens.
    pub async fn logout_all(&self, username: &str) -> Result<(), AccountError> {
        self.db.revoke_everything(username).await?;
        self.forget(username);
        Ok(())
    }

    /// Changes the password, ending every session; new tokens for this one.
    pub async fn change_password(
        &self,
        username: &str,
        current: String,
        new: String,
    ) -> Result<Tokens, AccountError> {
        let found = self.db.get(username).await?;
        let stored = found.as_ref().map(|(_, _, hash)| hash.clone());
        if !self.passwords.verify(current, stored).await?.matches {
            return Err(AccountError::BadCredentials);
        }
        let hash = self.passwords.hash(new).await?;
        self.db.set_password(username, &hash, true).await?;
        self.forget(username);
        let state = self
            .state_now(username)
            .await?
            .ok_or(AccountError::NoAccount)?;
        self.issue(username, &state, None).await
    }

    pub async fn account(&self, username: &str) -> Result<Account, AccountError> {
        self.db
            .get(username)
            .await?
            .map(|(account, _, _)| account)
            .ok_or(AccountError::NoAccount)
    }

    pub async fn list(&self) -> Result<Vec<Account>, AccountError> {
        self.db.list().await
    }

    /// An admin's change to an account. Disabling ends its sessions; the
    /// last active admin cannot be disabled or demoted.
    pub async fn admin_update(
        &self,
        username: &str,
        admin: Option<bool>,
        disabled: Option<bool>,
        approved: Option<bool>,
        password: Option<String>,
    ) -> Result<Account, AccountError> {
        let (before, _, _) = self
            .db
            .get(username)
            .await?
            .ok_or(AccountError::NoAccount)?;
        let loses_admin = before.admin
            && !before.disabled
            && !before.pending
            && (admin == Some(false) || disabled == Some(true) || approved == Some(false));
        // Disabled, or sent back to wait for approval: its sessions end.
        let revoke = (disabled == Some(true) && !before.disabled)
            || (approved == Some(false) && !before.pending);
        let pending = approved.map(|approved| !approved);
        self.db
            .update(username, admin, disabled, pending, revoke, loses_admin)
            .await?;
        if let Some(password) = password {
            let hash = self.passwords.hash(password).await?;
            self.db.set_password(username, &hash, true).await?;
        }
        self.forget(username);
        self.account(username).await
    }

    /// The first step of removing an account: it is disabled and signed
    /// out everywhere, so nothing acts as it while the caller removes its
    /// conversations; then [`Accounts::remove`].
    /// Answers the account's id (whose conversations are to go).
    pub async fn retire(&self, username: &str) -> Result<String, AccountError> {
        let (before, _, _) = self
            .db
            .get(username)
            .await?
            .ok_or(AccountError::NoAccount)?;
        let active_admin = before.admin && !before.disabled && !before.pending;
        self.db
            .update(username, None, Some(true), None, true, active_admin)
            .await?;
        self.forget(username);
        Ok(before.id)
    }

    /// Removes the account, its tokens and its keys.
    pub async fn remove(&self, username: &str) -> Result<(), AccountError> {
        self.db.delete(username).await?;
        self.forget(username);
        self.keys.clear();
        Ok(())
    }

    /// A new personal key: the key itself (shown once) and its record.
    pub async fn create_key(
        &self,
        username: &str,
        name: String,
    ) -> Result<(String, Key), AccountError> {
        let (account, _, _) = self
            .db
            .get(username)
            .await?
            .ok_or(AccountError::NoAccount)?;
        let secret = random_token(KEY_PREFIX)?;
        let key = Key {
            id: format!("key_{}", &random_token("")?[..16]),
            username: username.to_owned(),
            name,
            hint: format!("{}…", &secret[..KEY_PREFIX.len() + 4]),
            created_at: now(),
            last_used_at: None,
        };
        self.db
            .insert_key(&key, &digest(&secret), &account.id)
            .await?;
        Ok((secret, key))
    }

    pub async fn keys(&self, username: &str) -> Result<Vec<Key>, AccountError> {
        self.db.keys(username).await
    }

    pub async fn delete_key(&self, username: &str, id: &str) -> Result<(), AccountError> {
        if !self.db.delete_key(username, id).await? {
            return Err(AccountError::NoKey);
        }
        // Other instances drop it from their cache within STATE_TTL.
        self.keys.clear();
        Ok(())
    }

    /// The account a personal key speaks for, if it is one and the account may act.
    pub async fn key_caller(&self, presented: &str) -> Result<Option<Signed>, AccountError> {
        let hash = digest(presented);
        let found = match self.keys.get(&hash) {
            Some(found) => found,
            None => {
                let found = self.db.key_by_hash(&hash).await?;
                self.keys.put(hash, found.clone());
                found
            }
        };
        let Some((id, username, account_id)) = found else {
            return Ok(None);
        };
        let Some(state) = self.state(&username).await? else {
            return Ok(None);
        };
        if state.id != account_id || state.disabled || state.pending {
            return Ok(None);
        }
        self.note_used(&id).await;
        Ok(Some(Signed {
            username,
            account_id,
            admin: state.admin,
            by_key: true,
        }))
    }

    /// Records a key's use, at most once a minute per key and instance.
    async fn note_used(&self, id: &str) {
        let now = now();
        let due = self
            .touched
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .is_none_or(|last| now - last >= 60);
        if due {
            self.touched
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.to_owned(), now);
            if let Err(err) = self.db.touch_key(id, now).await {
                tracing::warn!(error = %err, "could not record a key's use");
            }
        }
    }

    /// Checks a bearer JWT against this server's key.
    pub async fn check(&self, token: &str) -> Result<Checked, AccountError> {
        let Some(claims) = self.decode(token) else {
            return Ok(Checked::NotOurs);
        };
        let Ok(claims) = claims else {
            return Ok(Checked::Refused);
        };
        match self.state(&claims.sub).await? {
            Some(state)
                if state.id == claims.aid
                    && state.epoch == claims.ep
                    && !state.disabled
                    && !state.pending =>
            {
                Ok(Checked::Valid(Signed {
                    username: claims.sub,
                    account_id: claims.aid,
                    admin: state.admin,
                    by_key: false,
                }))
            }
            _ => Ok(Checked::Refused),
        }
    }

    /// The account id a token names, if it is one of ours and valid as far
    /// as the signature and time go (no database): for the rate limit's buckets.
    pub fn subject_cached(&self, token: &str) -> Option<String> {
        self.decode(token)?.ok().map(|claims| claims.aid)
    }

    /// The id of the account named `username`, if there is one.
    pub async fn id_of(&self, username: &str) -> Result<Option<String>, AccountError> {
        Ok(self
            .db
            .get(username)
            .await?
            .map(|(account, _, _)| account.id))
    }

    /// `None`: not ours. `Some(Err)`: ours, but expired or malformed.
    fn decode(&self, token: &str) -> Option<Result<Claims, ()>> {
        use jsonwebtoken::errors::ErrorKind;
        match jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation) {
            Ok(data) => Some(Ok(data.claims)),
            Err(err) => match err.kind() {
                ErrorKind::InvalidSignature
                | ErrorKind::InvalidIssuer
                | ErrorKind::InvalidAudience
                | ErrorKind::InvalidAlgorithm
                | ErrorKind::MissingRequiredClaim(_)
                | ErrorKind::InvalidToken
                | ErrorKind::Base64(_)
                | ErrorKind::Json(_)
                | ErrorKind::Utf8(_) => None,
                _ => Some(Err(())),
            },
        }
    }

    /// The account's state, from this instance's copy if fresh.
    async fn state(&self, username: &str) -> Result<Option<State>, AccountError> {
        match self.states.get(username) {
            Some(state) => Ok(state),
            None => self.state_now(username).await,
        }
    }

    async fn state_now(&self, username: &str) -> Result<Option<State>, AccountError> {
        let changes = self.changes.load(Ordering::Acquire);
        let state = self.db.get(username).await?.map(|(_, state, _)| state);
        // A change on this instance while it was read: the copy may be
        // older than the change, so it is used this once, not kept.
        if self.changes.load(Ordering::Acquire) == changes {
            self.states.put(username.to_owned(), state.clone());
        }
        Ok(state)
    }

    /// Drops this instance's copy of the account's state.
    fn forget(&self, username: &str) {
        self.changes.fetch_add(1, Ordering::AcqRel);
        self.states.remove(username);
    }

    /// Drops spent refresh tokens past their expiry.
    pub async fn expire(&self) -> Result<u64, AccountError> {
        self.db.expire_refresh(now()).await
    }

    pub async fn close(&self) {
        self.db.close().await;
    }
}
