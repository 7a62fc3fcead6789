//! The in-memory store of the design card: a map behind one lock, nothing on disk.
//!
//! Sessions are kept in the compact form of [`super::compact`], because
//! memory is what this store spends.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;

use super::compact::{Meta, Replies, Session};
use super::{
    AnalyticsCounts, AnalyticsQuery, Caps, Change, Changed, Conversation, Edited, Found,
    HistoryPage, JsonPage, NewExchange, Numbered, Page, Search, SessionSummary, Store, StoreError,
    Totals,
};
use crate::domain::chatbot::Replier;
use crate::domain::models::SessionId;

/// Everything behind the lock.
#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<String, Session>,
    replies: Replies,
}

impl Inner {
    /// The session, if it has any exchange.
    fn non_empty(&self, session: &str) -> Option<&Session> {
        self.sessions.get(session).filter(|s| !s.is_empty())
    }
}

/// Keeps everything in RAM: fast, and gone when the process exits.
///
/// The lock is only held for map operations and copies, never across an
/// `.await` and never while a response is written.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    inner: Arc<RwLock<Inner>>,
    caps: Caps,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_caps(caps: Caps) -> Self {
        Self {
            caps,
            ..Self::default()
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // A panic elsewhere cannot leave the map half-updated: every write
        // checks first, then pushes.
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn append(
        &self,
        session: &SessionId,
        exchange: NewExchange,
        replier: Arc<dyn Replier>,
    ) -> Result<Numbered, StoreError> {
        let mut guard = self.write();
        let inner = &mut *guard;
        if !inner.sessions.contains_key(session.as_str()) {
            self.caps.check_new_session(inner.sessions.len())?;
        }
        let stored = match inner.sessions.get_mut(session.as_str()) {
            Some(stored) => stored,
            None => inner
                .sessions
                .entry(session.as_str().to_owned())
                .or_default(),
        };
        self.caps.check_room(stored.len(), 1)?;
        // The engine reads the history in place: no copy, and no exchange can
        // slip in between what it saw and where this one lands.
        let bot_reply = replier.reply(&exchange.user_message, &stored.recent());
        let shared = inner.replies.share(&bot_reply);
        let result = stored.push(&exchange, &bot_reply, shared);
        let seq = stored.last_id();
        if stored.is_empty() && !stored.has_meta() {
            // A first exchange that did not fit leaves no empty session behind.
            inner.sessions.remove(session.as_str());
        }
        result?;
        Ok(Numbered {
            seq,
            entry: exchange.answered(bot_reply),
        })
    }

    async fn change(&self, session: &SessionId, change: Change) -> Result<Changed, StoreError> {
        let mut guard = self.write();
        let inner = &mut *guard;
        let key = session.as_str();
        match change {
            Change::Create {
                created_at,
                metadata,
                exchanges,
            } => {
                if inner.sessions.contains_key(key) {
                    return Ok(Changed::Created(false));
                }
                self.caps.check_new_session(inner.sessions.len())?;
                self.caps.check_room(0, exchanges.len())?;
                let mut created = Session::created(Meta {
                    created_at,
                    metadata,
                });
                for entry in &exchanges {
                    created.push_entry(entry, &mut inner.replies)?;
                }
                inner.sessions.insert(key.to_owned(), created);
                Ok(Changed::Created(true))
            }
            Change::SetMetadata(metadata) => {
                Ok(Changed::Metadata(match inner.sessions.get_mut(key) {
                    Some(stored) => {
                        stored.set_metadata(metadata);
                        true
                    }
                    None => false,
                }))
            }
            Change::Import(exchanges) => {
                let Some(stored) = inner.sessions.get_mut(key) else {
                    return Ok(Changed::Imported(None));
                };
                self.caps.check_room(stored.len(), exchanges.len())?;
                let mut ids = Vec::with_capacity(exchanges.len());
                for entry in &exchanges {
                    stored.push_entry(entry, &mut inner.replies)?;
                    ids.push(stored.last_id());
                }
                Ok(Changed::Imported(Some(ids)))
            }
            Change::Edit { at, edit } => {
                let Some(stored) = inner.sessions.get(key) else {
                    return Ok(Changed::Edited(None));
                };
                let Some(i) = stored.position(at) else {
                    return Ok(Changed::Edited(None));
                };
                let seq = stored.id(i);
                let edited = edit.apply(&stored.entry(i, inner.replies.list()));
                let rewritten = stored.rewritten(i, edited.as_ref(), &mut inner.replies)?;
                if rewritten.is_empty() && !rewritten.has_meta() {
                    // A seed session without exchanges is no session.
                    inner.sessions.remove(key);
                } else {
                    inner.sessions.insert(key.to_owned(), rewritten);
                }
                Ok(Changed::Edited(Some(match edited {
                    Some(entry) => Edited::Kept(Numbered { seq, entry }),
                    None => Edited::Removed(seq),
                })))
            }
        }
    }

    async fn conversation(
        &self,
        session: &str,
        exchanges: bool,
    ) -> Result<Option<Conversation>, StoreError> {
        let inner = self.read();
        let Some(stored) = inner.sessions.get(session) else {
            return Ok(None);
        };
        let Some(meta) = stored.meta() else {
            return Ok(None);
        };
        Ok(Some(Conversation {
            created_at: meta.created_at,
            metadata: meta.metadata,
            exchanges: if exchanges {
                stored.numbered(inner.replies.list())
            } else {
                Vec::new()
            },
        }))
    }

    async fn history(&self, session: &str, page: Page) -> Result<Option<HistoryPage>, StoreError> {
        let inner = self.read();
        let Some(stored) = inner.non_empty(session) else {
            return Ok(None);
        };
        Ok(Some(stored.entries(page, inner.replies.list())))
    }

    async fn history_json(
        &self,
        session: &str,
        page: Page,
    ) -> Result<Option<JsonPage>, StoreError> {
        let inner = self.read();
        let Some(stored) = inner.non_empty(session) else {
            return Ok(None);
        };
        let copy = stored.copy_page(page, inner.replies.list());
        drop(inner);
        Ok(Some(copy.into_json()))
    }

    async fn summary(&self, session: &str) -> Result<Option<SessionSummary>, StoreError> {
        Ok(self
            .read()
            .sessions
            .get(session)
            .and_then(|s| s.summary(session)))
    }

    async fn sessions(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SessionSummary>, StoreError> {
        let inner = self.read();
        let mut ids: Vec<&String> = inner
            .sessions
            .keys()
            .filter(|id| id.starts_with(prefix))
            .filter(|id| after.is_none_or(|after| id.as_str() > after))
            .collect();
        ids.sort_unstable();
        Ok(ids
            .into_iter()
            .filter_map(|id| inner.sessions[id].summary(id))
            .take(limit)
            .collect())
    }

    async fn delete(&self, session: &str) -> Result<bool, StoreError> {
        Ok(self.write().sessions.remove(session).is_some())
    }

    async fn search(&self, search: &Search) -> Result<Vec<Found>, StoreError> {
        let inner = self.read();
        let mut found: Vec<(i64, &str, usize)> = Vec::new();
        for (id, stored) in &inner.sessions {
            let other_session = search
                .session_id
                .as_deref()
                .is_some_and(|wanted| wanted != id);
            if !id.starts_with(&search.prefix) || other_session {
                continue;
            }
            for seq in 0..stored.len() {
                if stored.matches(seq, inner.replies.list(), &search.text) {
                    found.push((stored.timestamp(seq), id, seq));
                }
            }
        }
        // Newest first; within one second, later in the session first.
        found.sort_unstable_by(|a, b| b.cmp(a));
        Ok(found
            .into_iter()
            .take(search.limit)
            .map(|(_, id, seq)| Found {
                session_id: id.to_owned(),
                entry: inner.sessions[id].entry(seq, inner.replies.list()),
            })
            .collect())
    }

    async fn analytics(&self, query: &AnalyticsQuery) -> Result<AnalyticsCounts, StoreError> {
        let inner = self.read();
        let replies = inner.replies.list();
        let in_range = |at: i64| (query.from..query.to).contains(&at);
        let mut activity: BTreeMap<i64, (u64, u64)> = BTreeMap::new();
        let mut new_sessions: BTreeMap<i64, u64> = BTreeMap::new();
        let mut counts = AnalyticsCounts {
            rule_exchanges: vec![0; query.rules.len()],
            ..AnalyticsCounts::default()
        };
        let mut unanswered: HashMap<String, u64> = HashMap::new();
        for (id, stored) in &inner.sessions {
            if !id.starts_with(&query.prefix) || stored.is_empty() {
                continue;
            }
            let first = (0..stored.len())
                .map(|i| stored.timestamp(i))
                .min()
                .unwrap_or(0);
            if in_range(first) {
                *new_sessions.entry(query.bucket_of(first)).or_default() += 1;
            }
            let mut buckets_seen = std::collections::HashSet::new();
            for i in (0..stored.len()).filter(|i| in_range(stored.timestamp(*i))) {
                let bucket = query.bucket_of(stored.timestamp(i));
                let slot = activity.entry(bucket).or_default();
                slot.0 += 1;
                if buckets_seen.insert(bucket) {
                    slot.1 += 1;
                }
                counts.exchanges += 1;
                let entry = stored.entry(i, replies);
                if *entry.bot_reply == *query.fallback {
                    counts.fallback_exchanges += 1;
                    if !entry.user_message.is_empty() {
                        *unanswered
                            .entry(entry.user_message.to_string())
                            .or_default() += 1;
                    }
                }
                if let Some(at) = query.rules.iter().position(|r| **r == *entry.bot_reply) {
                    counts.rule_exchanges[at] += 1;
                }
            }
        }
        counts.activity = activity.into_iter().map(|(b, (e, s))| (b, e, s)).collect();
        counts.new_sessions = new_sessions.into_iter().collect();
        let mut unanswered: Vec<(String, u64)> = unanswered.into_iter().collect();
        unanswered.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        unanswered.truncate(query.top);
        counts.unanswered = unanswered;
        Ok(counts)
    }

    async fn totals(&self) -> Result<Totals, StoreError> {
        let inner = self.read();
        let with_history = inner.sessions.values().filter(|s| !s.is_empty());
        Ok(Totals {
            sessions: with_history.clone().count() as u64,
            exchanges: with_history.map(|s| s.len() as u64).sum(),
        })
    }

    async fn clear(&self) -> Result<(), StoreError> {
        self.write().sessions.clear();
        Ok(())
    }

    async fn expire(&self, before: i64) -> Result<usize, StoreError> {
        let mut inner = self.write();
        let had = inner.sessions.len();
        inner
            .sessions
            .retain(|_, stored| stored.last_at().is_some_and(|last| last >= before));
        Ok(had - inner.sessions.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::chatbot::Chatbot;

    fn exchange(message: &str, name: &str, timestamp: i64) -> NewExchange {
        NewExchange {
            user_message: Arc::from(message),
            user_name: Arc::from(name),
            timestamp,
        }
    }

    #[tokio::test]
    async fn pages_written_from_the_compact_form_match_the_entries() {
        let store = MemoryStore::new();
        let bot: Arc<dyn Replier> = Arc::new(Chatbot::seed());
        let session = SessionId::parse("s".into()).unwrap();
        let messages = [
            ("Hello!", "Alice"),
            ("what did I just say?", "Alice"),
            ("say \"hi\"\n\\", "Bob \"B\""),
            ("caf\u{e9} \u{1f600}", "Alice"),
            ("What's my name?", "User"),
            ("Hello!", "Bob \"B\""),
            ("fastapi?", "Alice"),
            ("fastapi?", "Alice"),
        ];
        for (i, (message, name)) in messages.iter().enumerate() {
            store
                .append(
                    &session,
                    exchange(message, name, 1_700_000_000 + i as i64 / 3),
                    bot.clone(),
                )
                .await
                .unwrap();
        }
        for (offset, limit) in [
            (0, None),
            (0, Some(1)),
            (1, Some(3)),
            (5, None),
            (7, Some(9)),
            (8, None),
            (99, Some(2)),
        ] {
            let page = Page { offset, limit };
            let entries = store.history("s", page).await.unwrap().unwrap();
            let json = store.history_json("s", page).await.unwrap().unwrap();
            assert_eq!(json.total, entries.total);
            assert_eq!(json.count, entries.entries.len());
            assert_eq!(
                String::from_utf8(json.body).unwrap(),
                serde_json::to_string(&entries.entries).unwrap(),
                "{page:?}"
            );
        }
        let all = store.history("s", Page::default()).await.unwrap().unwrap();
        let said: Vec<&str> = all.entries.iter().map(|e| &*e.user_message).collect();
        assert_eq!(said, messages.map(|(m, _)| m));
        assert_eq!(&*all.entries[1].bot_reply, "You said: \"Hello!\"");
        assert_eq!(&*all.entries[2].user_name, "Bob \"B\"");
        assert!(all.entries[7].bot_reply.starts_with("You asked me about"));
    }

    #[tokio::test]
    async fn rule_replies_are_kept_once() {
        let store = MemoryStore::new();
        let bot: Arc<dyn Replier> = Arc::new(Chatbot::seed());
        for i in 0..50 {
            let session = SessionId::parse(format!("s{}", i % 5)).unwrap();
            store
                .append(&session, exchange("Hello!", "Alice", 0), bot.clone())
                .await
                .unwrap();
        }
        let inner = store.read();
        assert_eq!(inner.replies.list().len(), 1);
        for session in inner.sessions.values() {
            assert_eq!(session.kept(), ("Hello!".repeat(10).as_str(), 1));
        }
    }
}
