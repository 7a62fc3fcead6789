//! The PostgreSQL store's read cache: whole sessions in the memory store's
//! compact form, each with the row id and version it was read at, least
//! recently used dropped past a budget of bytes.
//!
//! Several instances write to one database, so a copy is never trusted on
//! its own: every read still asks the database for the session row's id and
//! version ([`super::checks`]), and the copy answers only when they are its
//! own, so no read can see less than a write acknowledged before it began,
//! whichever instance made it. What the cache saves is the rows: their
//! transfer, decoding and JSON writing.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hashlink::LruCache;

use crate::domain::models::ConversationEntry;
use crate::domain::store::compact::{Replies, Session};

/// A session row as the database has it at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RowVersion {
    /// The row's id: a session deleted and begun again has a new one.
    pub id: i64,
    /// Raised by every change to the session (migration 0004's triggers).
    pub version: i64,
}

/// A session as it was at one version of its row.
pub(super) struct Copy {
    pub row: RowVersion,
    pub session: Session,
}

pub(super) struct Cache {
    inner: Mutex<Inner>,
    /// The copies share no reply (each keeps its own text): always empty.
    replies: Replies,
}

struct Inner {
    sessions: LruCache<String, Arc<Copy>>,
    /// What the copies take, as [`Session::bytes`] counts it.
    bytes: usize,
    budget: usize,
}

impl Cache {
    pub fn new(budget: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                sessions: LruCache::new_unbounded(),
                bytes: 0,
                budget,
            }),
            replies: Replies::default(),
        }
    }

    /// The replies the copies refer to: none.
    pub fn replies(&self) -> &Replies {
        &self.replies
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // Every change below checks first, then changes: a panic elsewhere
        // cannot leave the map and its byte count apart.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The copy of `key`, if there is one, marking it recently used.
    pub fn get(&self, key: &str) -> Option<Arc<Copy>> {
        self.inner().sessions.get(key).cloned()
    }

    /// Keeps `copy` of `key` in place of any older one, unless it alone is
    /// over the budget; returns it, to be read from.
    pub fn put(&self, key: &str, mut copy: Copy) -> Arc<Copy> {
        copy.session.shrink();
        let size = copy.session.bytes(key);
        let copy = Arc::new(copy);
        let mut inner = self.inner();
        inner.remove(key);
        if size <= inner.budget {
            inner.bytes += size;
            inner.sessions.insert(key.to_owned(), copy.clone());
            while inner.bytes > inner.budget {
                let Some((key, old)) = inner.sessions.remove_lru() else {
                    break;
                };
                inner.bytes -= old.session.bytes(&key);
            }
        }
        copy
    }

    /// `entries` were appended to `key` by a commit that took its row to
    /// `row`: a copy of the version before becomes one of this version, so
    /// the writer's next read of its session needs no rows. Any other copy
    /// is left as it is (the next read finds it out of date).
    pub fn extend(&self, key: &str, row: RowVersion, entries: &[&ConversationEntry]) {
        let Some(copy) = self.inner().sessions.peek(key).cloned() else {
            return;
        };
        let before = RowVersion {
            version: row.version - 1,
            ..row
        };
        if copy.row != before {
            return;
        }
        let mut session = copy.session.clone();
        for entry in entries {
            let pushed = session.push_row(
                &entry.user_message,
                &entry.bot_reply,
                &entry.user_name,
                entry.timestamp,
                &self.replies,
            );
            if pushed.is_err() {
                return;
            }
        }
        self.put(key, Copy { row, session });
    }

    /// Forgets the copy of a session the database no longer has.
    pub fn remove(&self, key: &str) {
        self.inner().remove(key);
    }

    /// How many bytes the copies take, and how many there are.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.inner();
        (inner.bytes, inner.sessions.len())
    }
}

impl Inner {
    fn remove(&mut self, key: &str) {
        if let Some(old) = self.sessions.remove(key) {
            self.bytes -= old.session.bytes(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(id: i64, exchanges: usize) -> Copy {
        let mut session = Session::default();
        for i in 0..exchanges {
            session
                .push_row(
                    "a message of some length",
                    "a reply",
                    "Ann",
                    i as i64,
                    &Replies::default(),
                )
                .unwrap();
        }
        Copy {
            row: RowVersion { id, version: 1 },
            session,
        }
    }

    #[test]
    fn keeps_the_newest_copy_within_the_budget() {
        let mut sized = copy(1, 10);
        sized.session.shrink();
        let one = sized.session.bytes("a");
        let cache = Cache::new(one * 2 + one / 2);
        cache.put("a", copy(1, 10));
        cache.put("b", copy(2, 10));
        assert_eq!(cache.usage(), (one * 2, 2));
        // Reading "a" makes "b" the least recently used.
        assert!(cache.get("a").is_some());
        cache.put("c", copy(3, 10));
        assert!(cache.get("b").is_none());
        assert!(cache.get("a").is_some() && cache.get("c").is_some());
        // A newer copy replaces the old one and its bytes.
        cache.put("a", copy(4, 10));
        assert_eq!(
            cache.get("a").unwrap().row,
            RowVersion { id: 4, version: 1 }
        );
        assert_eq!(cache.usage(), (one * 2, 2));
        cache.remove("a");
        assert_eq!(cache.usage(), (one, 1));
    }

    #[test]
    fn a_copy_over_the_budget_is_served_but_not_kept() {
        let cache = Cache::new(100);
        let served = cache.put("big", copy(1, 100));
        assert_eq!(served.session.len(), 100);
        assert!(cache.get("big").is_none());
        assert_eq!(cache.usage(), (0, 0));
    }
}
