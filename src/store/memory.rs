//! The in-memory store of the design card: a map behind one lock, nothing on disk.
//!
//! Sessions are kept compactly, because memory is what this store spends:
//! a session's messages lie back to back in one string, and each exchange
//! takes 20 bytes more (its timestamp, where its text ends, its reply and its
//! user name). Replies a rule gave are kept once for the whole store and user
//! names once per session, both already escaped for JSON, so a history page
//! is mostly copied rather than serialized.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;

use super::{
    Caps, Found, HistoryPage, JsonPage, NewExchange, Page, Search, SessionSummary, Store,
    StoreError, search_text,
};
use crate::chatbot::{CONTEXT_EXCHANGES, History, Replier};
use crate::json::{self, HistoryWriter, Text};
use crate::models::{ConversationEntry, SessionId};

/// In [`Stored::reply`]: the reply is kept in the session's text, up to the
/// offset in the other bits; without it, the bits index the shared replies.
const INLINE: u32 = 1 << 31;
/// In [`Stored::name`]: the message needs escaping to be written as JSON.
const ESCAPED: u32 = 1 << 31;
/// The most text one session may hold (offsets keep a bit for a flag).
const MAX_TEXT: usize = (INLINE - 1) as usize;
/// The most distinct replies kept once for the whole store; a reply past
/// them is kept with each exchange, as an engine's one-off answers are.
const MAX_SHARED_REPLIES: usize = 256;
/// A new exchange looks for its user name among this many of the session's
/// latest names before adding it again.
const NAME_LOOKBACK: usize = 16;

/// One exchange, 20 bytes. Its message starts where the previous exchange's
/// text ends ([`Stored::end`]).
#[derive(Debug, Clone, Copy)]
#[repr(C, packed(4))]
struct Stored {
    /// Unix seconds.
    timestamp: i64,
    /// Where the message ends in [`Session::text`].
    message_end: u32,
    /// An index in [`Inner::replies`], or [`INLINE`] and where the reply ends.
    reply: u32,
    /// An index in [`Session::names`], with [`ESCAPED`].
    name: u32,
}

impl Stored {
    /// Where this exchange's text ends.
    fn end(self) -> usize {
        if self.reply & INLINE == 0 {
            self.message_end as usize
        } else {
            (self.reply & !INLINE) as usize
        }
    }

    fn name(self) -> usize {
        (self.name & !ESCAPED) as usize
    }
}

/// A text kept once and written often: as it is, and as a JSON string.
#[derive(Debug, Clone)]
struct Shared {
    text: Arc<str>,
    json: Arc<str>,
}

impl Shared {
    fn new(text: Arc<str>) -> Self {
        let json = json::quoted(&text).into();
        Self { text, json }
    }
}

#[derive(Debug, Default)]
struct Session {
    text: String,
    exchanges: Vec<Stored>,
    names: Vec<Arc<Shared>>,
}

impl Session {
    fn start(&self, i: usize) -> usize {
        i.checked_sub(1)
            .map_or(0, |before| self.exchanges[before].end())
    }

    fn message(&self, i: usize) -> &str {
        &self.text[self.start(i)..self.exchanges[i].message_end as usize]
    }

    fn name(&self, i: usize) -> &Arc<str> {
        &self.names[self.exchanges[i].name()].text
    }

    fn reply(&self, i: usize, replies: &[Shared]) -> Arc<str> {
        let stored = self.exchanges[i];
        if stored.reply & INLINE == 0 {
            replies[stored.reply as usize].text.clone()
        } else {
            Arc::from(&self.text[stored.message_end as usize..stored.end()])
        }
    }

    fn entry(&self, i: usize, replies: &[Shared]) -> ConversationEntry {
        ConversationEntry {
            user_message: Arc::from(self.message(i)),
            bot_reply: self.reply(i, replies),
            user_name: self.name(i).clone(),
            timestamp: self.exchanges[i].timestamp,
        }
    }

    /// The index of `name`, added if it is not among the latest names.
    fn name_index(&mut self, name: &Arc<str>) -> u32 {
        let from = self.names.len().saturating_sub(NAME_LOOKBACK);
        let found = self.names[from..]
            .iter()
            .rposition(|known| *known.text == **name);
        let index = found.map_or(self.names.len(), |at| from + at);
        if found.is_none() {
            self.names.push(Arc::new(Shared::new(name.clone())));
        }
        index as u32
    }

    fn push(
        &mut self,
        exchange: &NewExchange,
        reply: &Arc<str>,
        shared_reply: Option<u32>,
    ) -> Result<(), StoreError> {
        let inline = if shared_reply.is_some() {
            0
        } else {
            reply.len()
        };
        if self.text.len() + exchange.user_message.len() + inline > MAX_TEXT {
            return Err(StoreError::Full(
                "Message limit reached: this session holds all the text it can".into(),
            ));
        }
        self.text.push_str(&exchange.user_message);
        let message_end = self.text.len() as u32;
        let reply = match shared_reply {
            Some(index) => index,
            None => {
                self.text.push_str(reply);
                self.text.len() as u32 | INLINE
            }
        };
        let escaped = if json::is_plain(&exchange.user_message) {
            0
        } else {
            ESCAPED
        };
        let name = self.name_index(&exchange.user_name) | escaped;
        self.exchanges.push(Stored {
            timestamp: exchange.timestamp,
            message_end,
            reply,
            name,
        });
        Ok(())
    }

    fn summary(&self, session_id: &str) -> Option<SessionSummary> {
        Some(SessionSummary {
            session_id: session_id.to_owned(),
            total_messages: self.exchanges.len(),
            first_at: self.exchanges.first()?.timestamp,
            last_at: self.exchanges.last()?.timestamp,
        })
    }

    /// The indices `page` selects.
    fn range(&self, page: Page) -> std::ops::Range<usize> {
        let len = self.exchanges.len();
        let start = page.offset.min(len);
        let end = page
            .limit
            .map_or(len, |limit| start.saturating_add(limit).min(len));
        start..end
    }
}

/// The latest exchanges of a session, as the reply engine reads them.
struct Recent<'a> {
    session: &'a Session,
    from: usize,
}

impl History for Recent<'_> {
    fn len(&self) -> usize {
        self.session.exchanges.len() - self.from
    }

    fn user_message(&self, i: usize) -> &str {
        self.session.message(self.from + i)
    }

    fn user_name(&self, i: usize) -> &str {
        self.session.name(self.from + i)
    }
}

/// Everything behind the lock.
#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<String, Session>,
    /// Replies kept once, by index; replaced whole (rarely) when one is
    /// added, so a reader can hold on to it after the lock is released.
    replies: Arc<Vec<Shared>>,
}

impl Inner {
    /// The session, if it has any exchange.
    fn non_empty(&self, session: &str) -> Option<&Session> {
        self.sessions
            .get(session)
            .filter(|s| !s.exchanges.is_empty())
    }
}

/// The index of a reply to keep once in `replies`: one a rule gave, which is
/// why someone else holds it too. A reply made for this exchange alone is
/// kept with it (`None`).
fn shared_reply(replies: &mut Arc<Vec<Shared>>, reply: &Arc<str>) -> Option<u32> {
    if Arc::strong_count(reply) < 2 {
        return None;
    }
    if let Some(index) = replies.iter().position(|r| Arc::ptr_eq(&r.text, reply)) {
        return Some(index as u32);
    }
    if replies.len() >= MAX_SHARED_REPLIES {
        return None;
    }
    // The list holds the reply, so its address cannot be reused by another.
    Arc::make_mut(replies).push(Shared::new(reply.clone()));
    Some(replies.len() as u32 - 1)
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

/// A page copied out from under the lock, to be written without it.
struct PageCopy {
    total: usize,
    exchanges: Vec<Stored>,
    /// The page's text; offsets in `exchanges` are relative to `offset`.
    text: String,
    offset: usize,
    names: Vec<Arc<Shared>>,
    replies: Arc<Vec<Shared>>,
}

impl PageCopy {
    fn write(&self) -> Vec<u8> {
        let shared: usize = self
            .exchanges
            .iter()
            .map(|stored| {
                let reply = if stored.reply & INLINE == 0 {
                    self.replies[stored.reply as usize].json.len()
                } else {
                    2
                };
                reply + self.names[stored.name()].json.len() + 2
            })
            .sum();
        let mut writer = HistoryWriter::new(self.exchanges.len(), self.text.len() + shared);
        let mut at = 0;
        let mut current = None;
        for stored in &self.exchanges {
            let message_end = stored.message_end as usize - self.offset;
            let message = &self.text[at..message_end];
            at = stored.end() - self.offset;
            let name = Text::Quoted(&self.names[stored.name()].json);
            if stored.reply & INLINE != 0 {
                writer.reply_and_name(Text::Raw(&self.text[message_end..at]), name);
                current = None;
            } else if current != Some((stored.reply, stored.name)) {
                let reply = Text::Quoted(&self.replies[stored.reply as usize].json);
                writer.reply_and_name(reply, name);
                current = Some((stored.reply, stored.name));
            }
            let message = if stored.name & ESCAPED == 0 {
                Text::Plain(message)
            } else {
                Text::Raw(message)
            };
            writer.message(message, stored.timestamp);
        }
        writer.finish()
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
        let mut guard = self.write();
        let inner = &mut *guard;
        if let Some(max) = self.caps.max_sessions
            && inner.sessions.len() >= max
            && !inner.sessions.contains_key(session.as_str())
        {
            return Err(Caps::sessions_full(max));
        }
        let stored = match inner.sessions.get_mut(session.as_str()) {
            Some(stored) => stored,
            None => inner
                .sessions
                .entry(session.as_str().to_owned())
                .or_default(),
        };
        if let Some(max) = self.caps.max_messages_per_session
            && stored.exchanges.len() >= max
        {
            return Err(Caps::session_full(max));
        }
        // The engine reads the history in place: no copy, and no exchange can
        // slip in between what it saw and where this one lands.
        let recent = Recent {
            session: stored,
            from: stored.exchanges.len().saturating_sub(CONTEXT_EXCHANGES),
        };
        let bot_reply = replier.reply(&exchange.user_message, &recent);
        let shared = shared_reply(&mut inner.replies, &bot_reply);
        let result = stored.push(&exchange, &bot_reply, shared);
        if stored.exchanges.is_empty() {
            // A first exchange that did not fit leaves no empty session behind.
            inner.sessions.remove(session.as_str());
        }
        result?;
        Ok(exchange.answered(bot_reply))
    }

    async fn history(&self, session: &str, page: Page) -> Result<Option<HistoryPage>, StoreError> {
        let inner = self.read();
        let Some(stored) = inner.non_empty(session) else {
            return Ok(None);
        };
        Ok(Some(HistoryPage {
            total: stored.exchanges.len(),
            entries: stored
                .range(page)
                .map(|i| stored.entry(i, &inner.replies))
                .collect(),
        }))
    }

    async fn history_json(
        &self,
        session: &str,
        page: Page,
    ) -> Result<Option<JsonPage>, StoreError> {
        let copy = {
            let inner = self.read();
            let Some(stored) = inner.non_empty(session) else {
                return Ok(None);
            };
            let range = stored.range(page);
            let offset = stored.start(range.start);
            let end = range
                .end
                .checked_sub(1)
                .map_or(offset, |last| stored.exchanges[last].end().max(offset));
            PageCopy {
                total: stored.exchanges.len(),
                exchanges: stored.exchanges[range].to_vec(),
                text: stored.text[offset..end].to_owned(),
                offset,
                names: stored.names.clone(),
                replies: inner.replies.clone(),
            }
        };
        Ok(Some(JsonPage {
            total: copy.total,
            count: copy.exchanges.len(),
            body: copy.write(),
        }))
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
            for seq in 0..stored.exchanges.len() {
                let reply = stored.reply(seq, &inner.replies);
                if search_text(stored.message(seq), &reply).contains(&search.text) {
                    found.push((stored.exchanges[seq].timestamp, id, seq));
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
                entry: inner.sessions[id].entry(seq, &inner.replies),
            })
            .collect())
    }

    async fn clear(&self) -> Result<(), StoreError> {
        self.write().sessions.clear();
        Ok(())
    }

    async fn expire(&self, before: i64) -> Result<usize, StoreError> {
        let mut inner = self.write();
        let had = inner.sessions.len();
        inner.sessions.retain(|_, stored| {
            stored
                .exchanges
                .last()
                .is_some_and(|last| last.timestamp >= before)
        });
        Ok(had - inner.sessions.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chatbot::Chatbot;

    fn exchange(message: &str, name: &str, timestamp: i64) -> NewExchange {
        NewExchange {
            user_message: Arc::from(message),
            user_name: Arc::from(name),
            timestamp,
        }
    }

    #[test]
    fn an_exchange_takes_twenty_bytes_besides_its_text() {
        assert_eq!(std::mem::size_of::<Stored>(), 20);
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
        assert_eq!(inner.replies.len(), 1);
        for session in inner.sessions.values() {
            assert_eq!(session.text, "Hello!".repeat(10));
            assert_eq!(session.names.len(), 1);
        }
    }
}
