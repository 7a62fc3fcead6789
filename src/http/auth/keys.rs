//! API keys, kept only as SHA-256 digests and compared in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Owner;

/// A set of configured keys, as digests.
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
            digests: keys
                .into_iter()
                .filter(|k| !k.as_ref().is_empty())
                .map(|k| digest(k.as_ref()))
                .collect(),
        }
    }

    /// No keys in the set.
    pub fn is_empty(&self) -> bool {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_matched_whole_and_never_shown() {
        let keys = ApiKeys::new(["alpha", "beta", ""]);
        assert!(keys.owner_of("alpha").is_some());
        assert_ne!(keys.owner_of("alpha"), keys.owner_of("beta"));
        for wrong in ["alph", "alphaa", "gamma", ""] {
            assert!(keys.owner_of(wrong).is_none(), "{wrong:?}");
        }
        assert!(!format!("{:?}", ApiKeys::new(["secret"])).contains("secret"));
    }
}
