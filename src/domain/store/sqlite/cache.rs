//! The SQLite store's read cache: whole sessions in the compact form of the
//! memory store, least recently used dropped past a budget of bytes.
//!
//! The file is the truth and the cache a copy of part of it. Two rules keep
//! the copy exact:
//! - a write reaches the cache only once it is on disk, in commit order, and
//!   only where the cached session holds every exchange before it (else the
//!   session is dropped, to be read again);
//! - a session read from the file while writes go on is kept only if no
//!   write, delete, clear or expiry touched it during the read: while any
//!   read is in flight, such touches are remembered ([`Cache::invalidated`]).

use std::collections::HashSet;

use hashlink::LruCache;

use crate::domain::models::ConversationEntry;
use crate::domain::store::compact::{PageCopy, Replies, Session};
use crate::domain::store::{HistoryPage, Page, SessionSummary};

pub(super) struct Cache {
    sessions: LruCache<String, Session>,
    replies: Replies,
    /// What the cached sessions take, as [`Session::bytes`] counts it.
    bytes: usize,
    budget: usize,
    /// Reads from the file under way, and what was touched meanwhile.
    loading: usize,
    invalidated: HashSet<String>,
    /// Bumped by a clear or an expiry, which touch sessions unnamed.
    epoch: u64,
}

/// What a read from the file needs to know when it started.
pub(super) struct LoadTicket {
    epoch: u64,
    /// The store's shared replies as they stood, to share them with.
    pub replies: Replies,
}

impl Cache {
    pub fn new(budget: usize) -> Self {
        Self {
            sessions: LruCache::new_unbounded(),
            replies: Replies::default(),
            bytes: 0,
            budget,
            loading: 0,
            invalidated: HashSet::new(),
            epoch: 0,
        }
    }

    /// How many bytes the cached sessions take, and how many there are.
    pub fn usage(&self) -> (usize, usize) {
        (self.bytes, self.sessions.len())
    }

    /// A page of a cached session, marking it recently used.
    pub fn page(&mut self, key: &str, page: Page) -> Option<PageCopy> {
        let session = self.sessions.get(key)?;
        Some(session.copy_page(page, self.replies.list()))
    }

    /// Entries of a cached session.
    pub fn entries(&mut self, key: &str, page: Page) -> Option<HistoryPage> {
        let session = self.sessions.get(key)?;
        Some(session.entries(page, self.replies.list()))
    }

    pub fn summary(&mut self, key: &str) -> Option<SessionSummary> {
        self.sessions.get(key)?.summary(key)
    }

    /// Starts a read of a session from the file.
    pub fn begin_load(&mut self) -> LoadTicket {
        self.loading += 1;
        LoadTicket {
            epoch: self.epoch,
            replies: self.replies.clone(),
        }
    }

    /// Ends a read: keeps `session` unless something touched it meanwhile
    /// (or it is already cached, or too big for the budget). A failed read
    /// ends with `None`.
    pub fn finish_load(&mut self, key: &str, session: Option<Session>, ticket: LoadTicket) {
        let untouched = ticket.epoch == self.epoch && !self.invalidated.contains(key);
        self.loading -= 1;
        if self.loading == 0 {
            self.invalidated.clear();
        }
        if let Some(mut session) = session.filter(|s| !s.is_empty())
            && untouched
            && !self.sessions.contains_key(key)
        {
            session.shrink();
            self.bytes += session.bytes(key);
            self.sessions.insert(key.to_owned(), session);
            self.evict();
        }
    }

    /// Keeps a reply read back from the file once for the whole store, and
    /// returns the replies as they now stand.
    pub fn intern_reply(&mut self, text: &str) -> Replies {
        self.replies.intern(text);
        self.replies.clone()
    }

    /// An exchange now on disk at position `seq` (1-based) of its session.
    pub fn appended(&mut self, key: &str, seq: usize, entry: &ConversationEntry) {
        self.touch(key);
        // Learn the rules' replies from every write, so that sessions read
        // from the file later share them too.
        self.replies.share(&entry.bot_reply);
        let Some(session) = self.sessions.get_mut(key) else {
            return;
        };
        if session.len() >= seq {
            // Read from the file after this commit: already there.
            return;
        }
        let before = session.bytes(key);
        let fits = session.len() + 1 == seq && session.push_entry(entry, &mut self.replies).is_ok();
        let after = session.bytes(key);
        self.bytes = self.bytes + after - before;
        if fits {
            self.evict();
        } else {
            self.drop_session(key);
        }
    }

    /// A session now gone from the file (or whose state is unknown).
    pub fn removed(&mut self, key: &str) {
        self.touch(key);
        self.drop_session(key);
    }

    /// Every session gone from the file.
    pub fn cleared(&mut self) {
        self.epoch += 1;
        self.sessions.clear();
        self.bytes = 0;
    }

    /// Sessions expired from the file.
    pub fn expired(&mut self, keys: &[String]) {
        self.epoch += 1;
        for key in keys {
            self.drop_session(key);
        }
    }

    /// Remembers a touch for the reads under way.
    fn touch(&mut self, key: &str) {
        if self.loading > 0 {
            self.invalidated.insert(key.to_owned());
        }
    }

    fn drop_session(&mut self, key: &str) {
        if let Some(session) = self.sessions.remove(key) {
            self.bytes -= session.bytes(key);
        }
    }

    /// Drops the least recently used sessions until the budget holds.
    fn evict(&mut self) {
        while self.bytes > self.budget {
            let Some((key, session)) = self.sessions.remove_lru() else {
                break;
            };
            self.bytes -= session.bytes(&key);
        }
    }
}
