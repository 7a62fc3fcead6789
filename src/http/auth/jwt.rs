//! Bearer JWTs from an identity provider: checked against a shared secret
//! (HS256/384/512), a public key file (RS*/PS*, ES256/384, EdDSA) or the
//! provider's JWKS, which is fetched, cached and fetched again when a token
//! names a key id it does not hold (at most once per cooldown).
//!
//! Verification is `jsonwebtoken` with its RustCrypto backend: pure Rust,
//! so the server still builds with nothing but cargo. Each key accepts only
//! its own family's algorithms, so a token cannot ask for an RSA public key
//! to be used as an HMAC secret, and `alg: none` is no algorithm at all.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Seconds of clock difference allowed on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 60;
/// How long one JWKS fetch may take.
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the keys that sign tokens come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A shared secret (HS256, HS384, HS512).
    Secret(Vec<u8>),
    /// A PEM public key: RSA, EC (P-256/P-384) or Ed25519.
    PublicKeyPem(Vec<u8>),
    /// The identity provider's JWKS URL.
    Jwks(String),
}

/// How tokens are checked, and which ones make an admin.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub source: KeySource,
    /// The `iss` every token must carry, if set.
    pub issuer: Option<String>,
    /// A value the token's `aud` must hold, if set.
    pub audience: Option<String>,
    /// The claim that lists roles or scopes (a dotted path reaches into
    /// objects, e.g. `realm_access.roles`).
    pub admin_claim: String,
    /// The role (or scope) in that claim that makes an admin.
    pub admin_value: String,
    /// Least time between two JWKS fetches caused by unknown key ids.
    pub jwks_cooldown: Duration,
    /// A JWKS copy older than this is fetched again in the background.
    pub jwks_max_age: Duration,
}

impl JwtSettings {
    /// Settings with the defaults: no issuer or audience check, admins by
    /// `roles` holding `admin`, a 10 s JWKS cooldown, a JWKS copy kept 10 minutes.
    pub fn new(source: KeySource) -> Self {
        Self {
            source,
            issuer: None,
            audience: None,
            admin_claim: "roles".to_owned(),
            admin_value: "admin".to_owned(),
            jwks_cooldown: Duration::from_secs(10),
            jwks_max_age: Duration::from_secs(600),
        }
    }
}

/// Why a token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a valid token for this server (401).
    Invalid,
    /// Its key could not be fetched, so it could not be checked (503).
    Unchecked,
}

/// Who a valid token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub sub: String,
    pub admin: bool,
}

/// A key that may sign tokens, with the checks for tokens it signed.
struct VerifyKey {
    kid: Option<String>,
    key: DecodingKey,
    validation: Validation,
}

/// Checks bearer JWTs.
pub struct Jwt {
    keys: Keys,
    admin_claim: Vec<String>,
    admin_value: String,
}

enum Keys {
    Fixed(Box<VerifyKey>),
    Jwks(Arc<Jwks>),
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.keys {
            Keys::Fixed(key) => format!("{:?} key", key.key.family()),
            Keys::Jwks(jwks) => format!("JWKS {}", jwks.url),
        };
        write!(f, "Jwt({source})")
    }
}

/// The claims read from a token; the rest stay for the admin check.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

/// The checks every token gets, for keys of one family.
fn validation(settings: &JwtSettings, algorithms: Vec<Algorithm>) -> Validation {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.algorithms = algorithms;
    validation.leeway = LEEWAY_SECONDS;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    let mut required = vec!["exp", "sub"];
    if let Some(issuer) = &settings.issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    match &settings.audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    validation
}

/// The algorithms a key of `family` may verify.
fn family_algorithms(family: AlgorithmFamily) -> Vec<Algorithm> {
    family.algorithms().to_vec()
}

impl Jwt {
    /// Checks tokens as `settings` say. A JWKS is not fetched here: call
    /// [`Jwt::prefetch`] once a runtime runs, or the first token fetches it.
    pub fn new(settings: &JwtSettings) -> Result<Self, String> {
        let keys = match &settings.source {
            KeySource::Secret(secret) => {
                if secret.len() < 32 {
                    return Err(
                        "--jwt-secret must be at least 32 bytes (HS256 needs a 256-bit key)".into(),
                    );
                }
                let key =
                    DecodingKey::from_secret(secret).map_err(|e| format!("--jwt-secret: {e}"))?;
                Keys::Fixed(Box::new(VerifyKey {
                    kid: None,
                    validation: validation(settings, family_algorithms(AlgorithmFamily::Hmac)),
                    key,
                }))
            }
            KeySource::PublicKeyPem(pem) => {
                let key = DecodingKey::from_rsa_pem(pem)
                    .or_else(|_| DecodingKey::from_ec_pem(pem))
                    .or_else(|_| DecodingKey::from_ed_pem(pem))
                    .map_err(|_| {
                        "--jwt-public-key: not a PEM RSA, EC or Ed25519 public key".to_owned()
                    })?;
                Keys::Fixed(Box::new(VerifyKey {
                    kid: None,
                    validation: validation(settings, family_algorithms(key.family())),
                    key,
                }))
            }
            KeySource::Jwks(url) => {
                let parsed =
                    url::Url::parse(url).map_err(|e| format!("--jwt-jwks-url {url:?}: {e}"))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(format!("--jwt-jwks-url {url:?}: not an http(s) URL"));
                }
                let client = reqwest::Client::builder()
                    .timeout(JWKS_TIMEOUT)
                    .build()
                    .map_err(|e| format!("--jwt-jwks-url: {e}"))?;
                Keys::Jwks(Arc::new(Jwks {
                    url: url.clone(),
                    client,
                    cooldown: settings.jwks_cooldown,
                    settings: settings.clone(),
                    current: RwLock::new(Arc::new(KeySet::default())),
                    refreshing: AtomicBool::new(false),
                    fetching: tokio::sync::Mutex::new(()),
                }))
            }
        };
        Ok(Self {
            keys,
            admin_claim: settings.admin_claim.split('.').map(str::to_owned).collect(),
            admin_value: settings.admin_value.clone(),
        })
    }

    /// Starts fetching the JWKS, if keys come from one, without waiting:
    /// the server serves meanwhile (and answers 503 to tokens it cannot
    /// check yet).
    pub fn prefetch(&self) {
        if let Keys::Jwks(jwks) = &self.keys {
            let jwks = jwks.clone();
            tokio::spawn(async move { jwks.refresh(0).await });
        }
    }

    /// Whether `token` is shaped like a JWT (three base64url parts), so
    /// that it is checked as one rather than as an API key.
    pub fn looks_like_jwt(token: &str) -> bool {
        let mut parts = 0;
        for part in token.split('.') {
            parts += 1;
            if part.is_empty()
                || !part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return false;
            }
        }
        parts == 3
    }

    /// Checks `token`, fetching the JWKS again if it names an unknown key.
    pub async fn verify(&self, token: &str) -> Result<Verified, Refusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::Invalid)?;
        match &self.keys {
            Keys::Fixed(key) => self.check(token, key),
            Keys::Jwks(jwks) => {
                let key = jwks.key(header.kid.as_deref()).await?;
                self.check(token, &key)
            }
        }
    }

    /// Checks `token` with the keys at hand, fetching nothing: `None` when
    /// it would need a fetch or is not valid. (The rate limit uses it to
    /// find a token's bucket.)
    pub fn verify_cached(&self, token: &str) -> Option<Verified> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        match &self.keys {
            Keys::Fixed(key) => self.check(token, key).ok(),
            Keys::Jwks(jwks) => {
                let set = jwks.current();
                let key = set.find(header.kid.as_deref())?;
                self.check(token, key).ok()
            }
        }
    }

    fn check(&self, token: &str, key: &VerifyKey) -> Result<Verified, Refusal> {
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation)
            .map_err(|_| Refusal::Invalid)?;
        let Claims { sub, rest } = data.claims;
        if sub.is_empty() {
            return Err(Refusal::Invalid);
        }
        let admin = self.holds_admin(&rest);
        Ok(Verified { sub, admin })
    }

    /// Whether the admin claim lists the admin value: an array of strings
    /// (`roles`) or a space-separated string (`scope`).
    fn holds_admin(&self, claims: &Map<String, Value>) -> bool {
        let Some((first, path)) = self.admin_claim.split_first() else {
            return false;
        };
        let mut value = claims.get(first);
        for step in path {
            value = value.and_then(|v| v.get(step));
        }
        match value {
            Some(Value::String(text)) => text.split_whitespace().any(|v| v == self.admin_value),
            Some(Value::Array(items)) => items
                .iter()
                .any(|v| v.as_str() == Some(self.admin_value.as_str())),
            _ => false,
        }
    }
}

/// The keys of one JWKS fetch.
#[derive(Default)]
struct KeySet {
    keys: Vec<Arc<VerifyKey>>,
    /// When the last successful fetch was; `None`: never.
    fetched: Option<Instant>,
    /// When the last attempt was, successful or not (the same instant as
    /// `fetched` when it succeeded).
    attempted: Option<Instant>,
    /// Counts attempts, so that waiters see a fetch happened meanwhile.
    generation: u64,
}

impl KeySet {
    /// Whether the last attempt failed (so a key it lacks may exist).
    fn failed(&self) -> bool {
        self.attempted != self.fetched
    }

    /// The key `kid` names; a token without `kid` may use the only key.
    fn find(&self, kid: Option<&str>) -> Option<&Arc<VerifyKey>> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
    }
}

/// A cached JWKS.
struct Jwks {
    url: String,
    client: reqwest::Client,
    cooldown: Duration,
    settings: JwtSettings,
    current: RwLock<Arc<KeySet>>,
    /// A background fetch of an old copy is under way.
    refreshing: AtomicBool,
    /// Held while fetching: one fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

impl Jwks {
    fn current(&self) -> Arc<KeySet> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The key `kid` names, fetching the set again (once per cooldown, one
    /// fetch at a time) if it is not known.
    async fn key(self: &Arc<Self>, kid: Option<&str>) -> Result<Arc<VerifyKey>, Refusal> {
        let set = self.current();
        if let Some(key) = set.find(kid) {
            // An old copy is fetched again in the background, at most once
            // per cooldown (a failed attempt counts) and one at a time.
            let stale = set
                .fetched
                .is_some_and(|at| at.elapsed() > self.settings.jwks_max_age)
                && set
                    .attempted
                    .is_some_and(|at| at.elapsed() >= self.cooldown);
            if stale && !self.refreshing.swap(true, Ordering::AcqRel) {
                let jwks = self.clone();
                let generation = set.generation;
                tokio::spawn(async move {
                    jwks.refresh(generation).await;
                    jwks.refreshing.store(false, Ordering::Release);
                });
            }
            return Ok(key.clone());
        }
        self.refresh(set.generation).await;
        let set = self.current();
        match set.find(kid) {
            Some(key) => Ok(key.clone()),
            None if set.failed() || set.fetched.is_none() => Err(Refusal::Unchecked),
            None => Err(Refusal::Invalid),
        }
    }

    /// Fetches the set unless another fetch happened since `seen`
    /// (generation) or the last one started within the cooldown.
    async fn refresh(&self, seen: u64) {
        let _fetching = self.fetching.lock().await;
        let set = self.current();
        if set.generation != seen || set.attempted.is_some_and(|at| at.elapsed() < self.cooldown) {
            return;
        }
        let fetched = self.fetch().await;
        let now = Instant::now();
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let generation = current.generation + 1;
        *current = Arc::new(match fetched {
            Ok(keys) => KeySet {
                keys,
                fetched: Some(now),
                attempted: Some(now),
                generation,
            },
            Err(err) => {
                tracing::warn!(url = %self.url, error = %err, "cannot fetch the JWKS");
                KeySet {
                    keys: current.keys.clone(),
                    fetched: current.fetched,
                    attempted: Some(now),
                    generation,
                }
            }
        });
    }

    async fn fetch(&self) -> Result<Vec<Arc<VerifyKey>>, String> {
        let response = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let set: JwkSet = response.json().await.map_err(|e| e.to_string())?;
        let mut keys = Vec::with_capacity(set.keys.len());
        for jwk in &set.keys {
            // Symmetric keys are never published; keys for encryption do not sign.
            if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_))
                || matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption))
            {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                tracing::warn!(kid = ?jwk.common.key_id, "skipping a JWKS key that cannot verify");
                continue;
            };
            let algorithms = match jwk.common.key_algorithm.map(Algorithm::try_from) {
                Some(Ok(alg)) if alg.family() == key.family() => vec![alg],
                Some(_) => continue,
                None => family_algorithms(key.family()),
            };
            keys.push(Arc::new(VerifyKey {
                kid: jwk.common.key_id.clone(),
                validation: validation(&self.settings, algorithms),
                key,
            }));
        }
        tracing::info!(url = %self.url, keys = keys.len(), "fetched the JWKS");
        Ok(keys)
    }
}
