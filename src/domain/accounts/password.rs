//! Passwords: Argon2id with the `argon2` crate's defaults (19 MiB, t=2,
//! p=1: OWASP's minimum), as PHC strings, so that a hash names its own
//! parameters and raising them later rehashes each password at its next
//! sign-in.
//!
//! Hashing costs ~20 ms of a core and 19 MiB: it runs on the blocking
//! pool, never on the async workers, and at most `concurrency` at once (a
//! burst of sign-ins waits its turn rather than taking every core and all
//! memory). A sign-in for an account that does not exist verifies against
//! a dummy hash, so it costs as long as one that does.

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use super::AccountError;

/// How long a hash may wait for its turn before the request is refused (503).
const QUEUE_WAIT: Duration = Duration::from_secs(10);

/// Hashes and verifies passwords, a bounded number at once.
pub struct Passwords {
    permits: Arc<Semaphore>,
    dummy: String,
}

/// What a verification found.
pub struct Verdict {
    pub matches: bool,
    /// A new hash with today's parameters, when the stored one is older.
    pub rehash: Option<String>,
}

fn hasher() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::default())
}

fn hash_now(password: &[u8]) -> Result<String, AccountError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| AccountError::Unavailable(e.to_string()))?;
    let salt =
        SaltString::encode_b64(&salt).map_err(|e| AccountError::Unavailable(e.to_string()))?;
    hasher()
        .hash_password(password, &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| AccountError::Unavailable(e.to_string()))
}

/// Whether `hash` was made with other parameters than today's.
fn outdated(hash: &PasswordHash<'_>) -> bool {
    hash.algorithm != Algorithm::Argon2id.ident()
        || hash.version != Some(Version::V0x13.into())
        || Params::try_from(hash).map_or(true, |params| {
            let now = Params::default();
            params.m_cost() < now.m_cost()
                || params.t_cost() < now.t_cost()
                || params.p_cost() < now.p_cost()
        })
}

impl Passwords {
    /// At most `concurrency` hashes at once (at least one).
    pub async fn new(concurrency: usize) -> Result<Self, AccountError> {
        let dummy = tokio::task::spawn_blocking(|| hash_now(b"dummy password, never matches"))
            .await
            .map_err(|e| AccountError::Unavailable(e.to_string()))??;
        Ok(Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy,
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AccountError> {
        let permit = tokio::time::timeout(QUEUE_WAIT, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| AccountError::Busy)?
            .map_err(|_| AccountError::Busy)?;
        let done = tokio::task::spawn_blocking(move || {
            let result = work();
            drop(permit);
            result
        })
        .await;
        done.map_err(|e| AccountError::Unavailable(e.to_string()))
    }

    /// A PHC string for `password`.
    pub async fn hash(&self, password: String) -> Result<String, AccountError> {
        self.blocking(move || hash_now(password.as_bytes())).await?
    }

    /// Checks `password` against `stored` (or, for an account that does
    /// not exist, against the dummy hash: the same work, never a match).
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<Verdict, AccountError> {
        let real = stored.is_some();
        let stored = stored.unwrap_or_else(|| self.dummy.clone());
        self.blocking(move || {
            let Ok(hash) = PasswordHash::new(&stored) else {
                return Ok(Verdict {
                    matches: false,
                    rehash: None,
                });
            };
            let matches = hasher().verify_password(password.as_bytes(), &hash).is_ok() && real;
            let rehash = if matches && outdated(&hash) {
                Some(hash_now(password.as_bytes())?)
            } else {
                None
            };
            Ok(Verdict { matches, rehash })
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_old_parameters_are_rehashed() {
        let passwords = Passwords::new(1).await.unwrap();
        let hash = passwords.hash("correct horse".into()).await.unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        let right = passwords
            .verify("correct horse".into(), Some(hash.clone()))
            .await
            .unwrap();
        assert!(right.matches && right.rehash.is_none());
        let wrong = passwords
            .verify("wrong horse".into(), Some(hash))
            .await
            .unwrap();
        assert!(!wrong.matches);
        // The dummy never matches, even its own password.
        let unknown = passwords
            .verify("dummy password, never matches".into(), None)
            .await
            .unwrap();
        assert!(!unknown.matches);
        // A hash with weaker parameters (t=1) is replaced at sign-in.
        let weak = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(19456, 1, 1, None).unwrap(),
        )
        .hash_password(b"old", &SaltString::encode_b64(&[7; 16]).unwrap())
        .unwrap()
        .to_string();
        let verdict = passwords.verify("old".into(), Some(weak)).await.unwrap();
        assert!(verdict.matches);
        let rehash = verdict.rehash.expect("rehashed");
        assert!(rehash.contains("m=19456,t=2,p=1"), "{rehash}");
    }
}
