//! The in-memory store of the design card: a map behind one lock, nothing on disk.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;

use super::{NewExchange, Store, StoreError};
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
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
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

#[async_trait]
impl Store for MemoryStore {
    async fn append(
        &self,
        session: &SessionId,
        exchange: NewExchange,
        replier: Arc<dyn Replier>,
    ) -> Result<ConversationEntry, StoreError> {
        let mut sessions = self.write();
        let entries = match sessions.get_mut(session.as_str()) {
            Some(entries) => entries,
            None => sessions.entry(session.as_str().to_owned()).or_default(),
        };
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

    async fn history(&self, session: &str) -> Result<Option<Vec<ConversationEntry>>, StoreError> {
        Ok(self.read().get(session).cloned())
    }
}
