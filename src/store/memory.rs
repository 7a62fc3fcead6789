//! The in-memory store of the design card: a map behind one lock, nothing on disk.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;

use super::{
    Caps, Found, HistoryPage, NewExchange, Page, Search, SessionSummary, Store, StoreError,
    search_text,
};
use crate::chatbot::{CONTEXT_EXCHANGES, Replier};
use crate::models::{ConversationEntry, SessionId};

/// Every session's exchanges, oldest first.
pub type Sessions = Arc<RwLock<HashMap<String, Vec<ConversationEntry>>>>;

/// Keeps everything in RAM: fast, and gone when the process exits.
///
/// The lock is only held for map operations and clones of `Arc`s, never
/// across an `.await` and never while a response is serialized.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    sessions: Sessions,
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

    fn read(&self) -> RwLockReadGuard<'_, HashMap<String, Vec<ConversationEntry>>> {
        // A panic elsewhere cannot leave the map half-updated: every write is one push or insert.
        self.sessions.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<String, Vec<ConversationEntry>>> {
        self.sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn summarize(session_id: &str, entries: &[ConversationEntry]) -> Option<SessionSummary> {
    Some(SessionSummary {
        session_id: session_id.to_owned(),
        total_messages: entries.len(),
        first_at: entries.first()?.timestamp,
        last_at: entries.last()?.timestamp,
    })
}

#[async_trait]
impl Store for MemoryStore {
    async fn append(
        &self,
        session: &SessionId,
        exchange: NewExchange,
        replier: Arc<dyn Replier>,
    ) -> Result<ConversationEntry, StoreError> {
        let mut sessions = self.write();
        if let Some(max) = self.caps.max_sessions
            && sessions.len() >= max
            && !sessions.contains_key(session.as_str())
        {
            return Err(Caps::sessions_full(max));
        }
        let entries = match sessions.get_mut(session.as_str()) {
            Some(entries) => entries,
            None => sessions.entry(session.as_str().to_owned()).or_default(),
        };
        if let Some(max) = self.caps.max_messages_per_session
            && entries.len() >= max
        {
            return Err(Caps::session_full(max));
        }
        // The engine reads the history in place: no copy, and no exchange can
        // slip in between what it saw and where this one lands.
        let context = &entries[entries.len().saturating_sub(CONTEXT_EXCHANGES)..];
        let bot_reply = replier.reply(&exchange.user_message, context);
        let mut entry = exchange.answered(bot_reply);
        // Share the user name with the previous exchange when it repeats.
        if let Some(last) = entries.last()
            && last.user_name == entry.user_name
        {
            entry.user_name = last.user_name.clone();
        }
        entries.push(entry.clone());
        Ok(entry)
    }

    async fn history(&self, session: &str, page: Page) -> Result<Option<HistoryPage>, StoreError> {
        let sessions = self.read();
        let Some(entries) = sessions.get(session).filter(|e| !e.is_empty()) else {
            return Ok(None);
        };
        let start = page.offset.min(entries.len());
        let end = page.limit.map_or(entries.len(), |l| {
            start.saturating_add(l).min(entries.len())
        });
        Ok(Some(HistoryPage {
            total: entries.len(),
            entries: entries[start..end].to_vec(),
        }))
    }

    async fn summary(&self, session: &str) -> Result<Option<SessionSummary>, StoreError> {
        Ok(self.read().get(session).and_then(|e| summarize(session, e)))
    }

    async fn sessions(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SessionSummary>, StoreError> {
        let sessions = self.read();
        let mut ids: Vec<&String> = sessions
            .keys()
            .filter(|id| id.starts_with(prefix))
            .filter(|id| after.is_none_or(|after| id.as_str() > after))
            .collect();
        ids.sort_unstable();
        Ok(ids
            .into_iter()
            .filter_map(|id| summarize(id, &sessions[id]))
            .take(limit)
            .collect())
    }

    async fn delete(&self, session: &str) -> Result<bool, StoreError> {
        Ok(self.write().remove(session).is_some())
    }

    async fn search(&self, search: &Search) -> Result<Vec<Found>, StoreError> {
        let sessions = self.read();
        let mut found: Vec<(i64, &str, usize, &ConversationEntry)> = Vec::new();
        for (id, entries) in sessions.iter() {
            let other_session = search
                .session_id
                .as_deref()
                .is_some_and(|wanted| wanted != id);
            if !id.starts_with(&search.prefix) || other_session {
                continue;
            }
            for (seq, entry) in entries.iter().enumerate() {
                if search_text(&entry.user_message, &entry.bot_reply).contains(&search.text) {
                    found.push((entry.timestamp, id, seq, entry));
                }
            }
        }
        // Newest first; within one second, later in the session first.
        found.sort_unstable_by(|a, b| (b.0, b.1, b.2).cmp(&(a.0, a.1, a.2)));
        Ok(found
            .into_iter()
            .take(search.limit)
            .map(|(_, id, _, entry)| Found {
                session_id: id.to_owned(),
                entry: entry.clone(),
            })
            .collect())
    }

    async fn clear(&self) -> Result<(), StoreError> {
        self.write().clear();
        Ok(())
    }

    async fn expire(&self, before: i64) -> Result<usize, StoreError> {
        let mut sessions = self.write();
        let had = sessions.len();
        sessions.retain(|_, entries| entries.last().is_some_and(|last| last.timestamp >= before));
        Ok(had - sessions.len())
    }
}
