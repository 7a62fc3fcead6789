//! The compact in-RAM form of a session, shared by the memory store and the
//! SQLite store's read cache.
//!
//! A session's messages lie back to back in one string, and each exchange
//! takes 20 bytes more (its timestamp, where its text ends, its reply and its
//! user name). Replies a rule gave are kept once for the whole store and user
//! names once per session, both already escaped for JSON, so a history page
//! is mostly copied rather than serialized.

use std::collections::HashMap;
use std::sync::Arc;

use super::{At, HistoryPage, Metadata, NewExchange, Numbered, Page, SessionSummary, StoreError};
use crate::domain::chatbot::{CONTEXT_EXCHANGES, History};
use crate::domain::models::ConversationEntry;
use crate::domain::wire::{self, HistoryWriter, Text};

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
/// What a session costs besides its text and exchanges: the map entry, the
/// key's allocation, the vectors' headers (an estimate, for cache budgets).
const SESSION_OVERHEAD: usize = 160;
/// What one kept user name costs besides its text (two `Arc<str>`s).
const NAME_OVERHEAD: usize = 64;

/// One exchange, 20 bytes. Its message starts where the previous exchange's
/// text ends ([`Stored::end`]).
#[derive(Debug, Clone, Copy)]
#[repr(C, packed(4))]
struct Stored {
    /// Unix seconds.
    timestamp: i64,
    /// Where the message ends in [`Session::text`].
    message_end: u32,
    /// An index in [`Replies`], or [`INLINE`] and where the reply ends.
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
pub(super) struct Shared {
    text: Arc<str>,
    json: Arc<str>,
}

impl Shared {
    fn new(text: Arc<str>) -> Self {
        let json = wire::quoted(&text).into();
        Self { text, json }
    }
}

/// Replies kept once for a whole store. The list only grows, so an index
/// stays valid in every later copy of it, and a reader can hold one copy
/// (a cheap clone) after the lock is released.
#[derive(Debug, Default, Clone)]
pub(super) struct Replies {
    list: Arc<Vec<Shared>>,
    /// Where each text is in `list`, by its bytes (a file's row is looked up
    /// before it is checked as UTF-8). Looked up for every exchange read back
    /// from a file: foldhash, where SipHash was 5% of a cold read.
    index: Arc<HashMap<Box<[u8]>, u32, foldhash::fast::RandomState>>,
}

impl Replies {
    /// The list as it stands, for a page written without the lock.
    pub fn list(&self) -> &Arc<Vec<Shared>> {
        &self.list
    }

    /// The index of a reply to keep once: one a rule gave, which is why
    /// someone else holds it too. A reply made for this exchange alone is
    /// kept with it (`None`).
    pub fn share(&mut self, reply: &Arc<str>) -> Option<u32> {
        if Arc::strong_count(reply) < 2 {
            return None;
        }
        self.known(reply).or_else(|| self.keep(reply.clone()))
    }

    /// Keeps `text` once from now on (a reply read back from a file that
    /// repeats); `None` when the list is full.
    pub fn intern(&mut self, text: &str) -> Option<u32> {
        self.known(text).or_else(|| self.keep(Arc::from(text)))
    }

    /// Adds a text not yet kept; `None` when the list is full.
    fn keep(&mut self, text: Arc<str>) -> Option<u32> {
        if self.list.len() >= MAX_SHARED_REPLIES {
            return None;
        }
        let index = self.list.len() as u32;
        Arc::make_mut(&mut self.index).insert(text.as_bytes().into(), index);
        Arc::make_mut(&mut self.list).push(Shared::new(text));
        Some(index)
    }

    /// The index of a reply already kept once with this text (for
    /// exchanges read back from a file, which share no `Arc` with a rule).
    pub fn known(&self, reply: &str) -> Option<u32> {
        self.known_bytes(reply.as_bytes())
    }

    /// [`Replies::known`] for text not yet checked as UTF-8, with the text
    /// kept (which is).
    pub fn known_bytes(&self, reply: &[u8]) -> Option<u32> {
        self.index.get(reply).copied()
    }

    /// The text kept at `index`.
    pub fn text(&self, index: u32) -> Option<&str> {
        Some(&self.list.get(index as usize)?.text)
    }
}

/// One session's exchanges, compactly.
#[derive(Debug, Default, Clone)]
pub(super) struct Session {
    text: String,
    exchanges: Vec<Stored>,
    names: Vec<Arc<Shared>>,
    /// Each exchange's id, once they are not simply 1, 2, … (after an
    /// exchange was removed); empty until then.
    ids: Vec<u32>,
    /// How many ids were given: the next exchange gets one more.
    issued: u32,
    /// What a conversation created through `/v1` carries.
    meta: Option<Box<Meta>>,
}

/// A conversation's creation time and metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Meta {
    pub created_at: i64,
    pub metadata: Metadata,
}

impl Session {
    /// An empty session with room for `exchanges` exchanges.
    pub fn with_capacity(exchanges: usize) -> Self {
        Self {
            exchanges: Vec::with_capacity(exchanges),
            ..Self::default()
        }
    }

    /// Room for `text` more bytes of text.
    pub fn reserve_text(&mut self, text: usize) {
        self.text.reserve(text);
    }

    /// An empty conversation created with `meta`.
    pub fn created(meta: Meta) -> Self {
        Self {
            meta: Some(Box::new(meta)),
            ..Self::default()
        }
    }

    /// The conversation's creation time and metadata: a seed session began
    /// with its first exchange and has none.
    pub fn meta(&self) -> Option<Meta> {
        match &self.meta {
            Some(meta) => Some((**meta).clone()),
            None => self.exchanges.first().map(|first| Meta {
                created_at: first.timestamp,
                metadata: Vec::new(),
            }),
        }
    }

    /// Replaces the metadata, keeping when the conversation began.
    pub fn set_metadata(&mut self, metadata: Metadata) {
        let created_at = self
            .meta()
            .map_or_else(crate::domain::models::now, |m| m.created_at);
        self.meta = Some(Box::new(Meta {
            created_at,
            metadata,
        }));
    }

    /// Whether it was created as a conversation (and so lives on empty).
    pub fn has_meta(&self) -> bool {
        self.meta.is_some()
    }

    /// The id of exchange `i`.
    pub fn id(&self, i: usize) -> u64 {
        match self.ids.get(i) {
            Some(id) => u64::from(*id),
            None => i as u64 + 1,
        }
    }

    /// The position of the exchange `at` names, if there is one.
    pub fn position(&self, at: At) -> Option<usize> {
        match at {
            At::Position(n) => (n < self.len()).then_some(n),
            At::Seq(seq) if self.ids.is_empty() => (1..=self.len() as u64)
                .contains(&seq)
                .then(|| seq as usize - 1),
            At::Seq(seq) => {
                let seq = u32::try_from(seq).ok()?;
                self.ids.binary_search(&seq).ok()
            }
        }
    }

    /// Every exchange with its id, oldest first.
    pub fn numbered(&self, replies: &[Shared]) -> Vec<Numbered> {
        (0..self.len())
            .map(|i| Numbered {
                seq: self.id(i),
                entry: self.entry(i, replies),
            })
            .collect()
    }

    /// The same session with exchange `at` replaced by `edited`, or removed
    /// when `None`: written again from the start (edits are rare; the packed
    /// text has no room to change in place).
    pub fn rewritten(
        &self,
        at: usize,
        edited: Option<&ConversationEntry>,
        replies: &mut Replies,
    ) -> Result<Self, StoreError> {
        let mut session = Self {
            meta: self.meta.clone(),
            ..Self::default()
        };
        let shown = replies.list().clone();
        let mut ids = Vec::with_capacity(self.len());
        for i in 0..self.len() {
            let entry = match (i == at, edited) {
                (false, _) => self.entry(i, &shown),
                (true, Some(entry)) => entry.clone(),
                (true, None) => continue,
            };
            session.push_entry(&entry, replies)?;
            ids.push(self.id(i) as u32);
        }
        session.issued = self.issued;
        let plain = ids.iter().enumerate().all(|(i, id)| *id as usize == i + 1);
        if !(plain && self.issued as usize == ids.len()) {
            session.ids = ids;
        }
        Ok(session)
    }

    pub fn len(&self) -> usize {
        self.exchanges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.exchanges.is_empty()
    }

    /// The timestamp of the latest exchange, or when an empty conversation
    /// was created.
    pub fn last_at(&self) -> Option<i64> {
        self.exchanges
            .last()
            .map(|last| last.timestamp)
            .or_else(|| self.meta.as_ref().map(|meta| meta.created_at))
    }

    /// About how many bytes of heap the session takes, its key included.
    pub fn bytes(&self, key: &str) -> usize {
        SESSION_OVERHEAD
            + key.len()
            + self.text.capacity()
            + self.exchanges.capacity() * std::mem::size_of::<Stored>()
            + self.ids.capacity() * 4
            + self
                .names
                .iter()
                .map(|name| NAME_OVERHEAD + name.text.len() + name.json.len())
                .sum::<usize>()
    }

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

    /// Exchange `i` as an entry.
    pub fn entry(&self, i: usize, replies: &[Shared]) -> ConversationEntry {
        ConversationEntry {
            user_message: Arc::from(self.message(i)),
            bot_reply: self.reply(i, replies),
            user_name: self.name(i).clone(),
            timestamp: self.exchanges[i].timestamp,
        }
    }

    /// `page` as entries.
    pub fn entries(&self, page: Page, replies: &[Shared]) -> HistoryPage {
        HistoryPage {
            total: self.len(),
            entries: self.range(page).map(|i| self.entry(i, replies)).collect(),
        }
    }

    /// Whether exchange `i`'s message or reply contains `text` (lower-cased).
    pub fn matches(&self, i: usize, replies: &[Shared], text: &str) -> bool {
        super::finds(
            self.message(i).as_bytes(),
            self.reply(i, replies).as_bytes(),
            text,
        )
    }

    /// The timestamp of exchange `i`.
    pub fn timestamp(&self, i: usize) -> i64 {
        self.exchanges[i].timestamp
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

    /// Appends an exchange whose reply is `reply`, kept once in the store's
    /// replies at `shared_reply` or else inline.
    pub fn push(
        &mut self,
        exchange: &NewExchange,
        reply: &Arc<str>,
        shared_reply: Option<u32>,
    ) -> Result<(), StoreError> {
        self.push_parts(
            &exchange.user_message,
            &exchange.user_name,
            exchange.timestamp,
            reply,
            shared_reply,
        )
    }

    /// Appends an answered exchange, sharing its reply where a rule gave it.
    pub fn push_entry(
        &mut self,
        entry: &ConversationEntry,
        replies: &mut Replies,
    ) -> Result<(), StoreError> {
        let shared = replies.share(&entry.bot_reply);
        self.push_parts(
            &entry.user_message,
            &entry.user_name,
            entry.timestamp,
            &entry.bot_reply,
            shared,
        )
    }

    /// Appends an exchange read back from a file.
    pub fn push_row(
        &mut self,
        user_message: &str,
        bot_reply: &str,
        user_name: &str,
        timestamp: i64,
        replies: &Replies,
    ) -> Result<(), StoreError> {
        self.push_read(
            user_message,
            bot_reply,
            replies.known(bot_reply),
            user_name,
            timestamp,
        )
    }

    /// [`Session::push_row`] with the reply already looked up in the
    /// store's replies (`shared`).
    pub fn push_read(
        &mut self,
        user_message: &str,
        bot_reply: &str,
        shared: Option<u32>,
        user_name: &str,
        timestamp: i64,
    ) -> Result<(), StoreError> {
        // Consecutive exchanges mostly share a name: reuse the kept one.
        let name = match self.names.last() {
            Some(last) if *last.text == *user_name => last.text.clone(),
            _ => Arc::from(user_name),
        };
        self.push_parts(user_message, &name, timestamp, bot_reply, shared)
    }

    fn push_parts(
        &mut self,
        user_message: &str,
        user_name: &Arc<str>,
        timestamp: i64,
        reply: &str,
        shared_reply: Option<u32>,
    ) -> Result<(), StoreError> {
        let inline = if shared_reply.is_some() {
            0
        } else {
            reply.len()
        };
        if self.text.len() + user_message.len() + inline > MAX_TEXT {
            return Err(StoreError::Full(
                "Message limit reached: this session holds all the text it can".into(),
            ));
        }
        self.text.push_str(user_message);
        let message_end = self.text.len() as u32;
        let reply = match shared_reply {
            Some(index) => index,
            None => {
                self.text.push_str(reply);
                self.text.len() as u32 | INLINE
            }
        };
        let escaped = if wire::is_plain(user_message) {
            0
        } else {
            ESCAPED
        };
        let name = self.name_index(user_name) | escaped;
        if self.ids.is_empty() && self.issued as usize != self.exchanges.len() {
            // The ids so far are 1, 2, …, but the next one is not one more.
            self.ids = (1..=self.exchanges.len() as u32).collect();
        }
        self.exchanges.push(Stored {
            timestamp,
            message_end,
            reply,
            name,
        });
        self.issued += 1;
        if !self.ids.is_empty() {
            self.ids.push(self.issued);
        }
        Ok(())
    }

    /// The id of the latest exchange.
    pub fn last_id(&self) -> u64 {
        self.len().checked_sub(1).map_or(0, |i| self.id(i))
    }

    /// The text kept and how many user names (for tests of sharing).
    #[cfg(test)]
    pub fn kept(&self) -> (&str, usize) {
        (&self.text, self.names.len())
    }

    /// Gives back memory a growing session reserved ahead.
    pub fn shrink(&mut self) {
        self.text.shrink_to_fit();
        self.exchanges.shrink_to_fit();
    }

    pub fn summary(&self, session_id: &str) -> Option<SessionSummary> {
        Some(SessionSummary {
            session_id: session_id.to_owned(),
            total_messages: self.exchanges.len(),
            first_at: self.exchanges.first()?.timestamp,
            last_at: self.exchanges.last()?.timestamp,
        })
    }

    /// The indices `page` selects.
    pub fn range(&self, page: Page) -> std::ops::Range<usize> {
        let len = self.exchanges.len();
        let start = page.offset.min(len);
        let end = page
            .limit
            .map_or(len, |limit| start.saturating_add(limit).min(len));
        start..end
    }

    /// The latest exchanges, as the reply engine reads them.
    pub fn recent(&self) -> Recent<'_> {
        Recent {
            session: self,
            from: self.exchanges.len().saturating_sub(CONTEXT_EXCHANGES),
        }
    }

    /// `page` copied out, to be written as JSON once the lock is released.
    /// The exchanges of `page`, and where their text begins and ends.
    fn bounds(&self, page: Page) -> (std::ops::Range<usize>, usize, usize) {
        let range = self.range(page);
        let offset = self.start(range.start);
        let end = range
            .end
            .checked_sub(1)
            .map_or(offset, |last| self.exchanges[last].end().max(offset));
        (range, offset, end)
    }

    /// `page` written as JSON where it lies: for a session no one changes
    /// meanwhile (a shared, immutable copy), without [`Session::copy_page`]'s copy.
    pub fn write_page(&self, page: Page, replies: &[Shared]) -> super::JsonPage {
        let (range, offset, end) = self.bounds(page);
        let view = PageView {
            exchanges: &self.exchanges[range],
            text: &self.text[offset..end],
            offset,
            names: &self.names,
            replies,
        };
        super::JsonPage {
            total: self.exchanges.len(),
            count: view.exchanges.len(),
            body: view.write(),
        }
    }

    pub fn copy_page(&self, page: Page, replies: &Arc<Vec<Shared>>) -> PageCopy {
        let (range, offset, end) = self.bounds(page);
        PageCopy {
            total: self.exchanges.len(),
            exchanges: self.exchanges[range].to_vec(),
            text: self.text[offset..end].to_owned(),
            offset,
            names: self.names.clone(),
            replies: replies.clone(),
        }
    }
}

/// The latest exchanges of a session, read in place by the reply engine.
pub(super) struct Recent<'a> {
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

/// A page copied out from under a lock, to be written without it.
pub(super) struct PageCopy {
    pub total: usize,
    exchanges: Vec<Stored>,
    /// The page's text; offsets in `exchanges` are relative to `offset`.
    text: String,
    offset: usize,
    names: Vec<Arc<Shared>>,
    replies: Arc<Vec<Shared>>,
}

impl PageCopy {
    /// The page as the JSON array `GET /chat/history/{id}` answers.
    pub fn write(&self) -> Vec<u8> {
        PageView {
            exchanges: &self.exchanges,
            text: &self.text,
            offset: self.offset,
            names: &self.names,
            replies: &self.replies,
        }
        .write()
    }

    /// The page as a [`super::JsonPage`].
    pub fn into_json(self) -> super::JsonPage {
        super::JsonPage {
            total: self.total,
            count: self.exchanges.len(),
            body: self.write(),
        }
    }
}

/// A page of a session as it lies, in place or copied ([`PageCopy`]).
struct PageView<'a> {
    exchanges: &'a [Stored],
    /// The page's text; offsets in `exchanges` are relative to `offset`.
    text: &'a str,
    offset: usize,
    names: &'a [Arc<Shared>],
    replies: &'a [Shared],
}

impl PageView<'_> {
    /// The page as the JSON array `GET /chat/history/{id}` answers.
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
        for stored in self.exchanges {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exchange_takes_twenty_bytes_besides_its_text() {
        assert_eq!(std::mem::size_of::<Stored>(), 20);
    }

    #[test]
    fn rows_read_back_share_known_replies_and_names() {
        let mut replies = Replies::default();
        let rule: Arc<str> = Arc::from("Hi there!");
        let _held_by_the_rule = rule.clone();
        assert_eq!(replies.share(&rule), Some(0));
        let mut session = Session::default();
        for i in 0..3 {
            session
                .push_row("hello", "Hi there!", "Ann", i, &replies)
                .unwrap();
        }
        session
            .push_row("x", "one-off \"reply\"", "Ann", 3, &replies)
            .unwrap();
        assert_eq!(session.names.len(), 1);
        assert_eq!(
            session.text,
            "hellohellohellox".to_owned() + "one-off \"reply\""
        );
        let entries: Vec<_> = (0..4).map(|i| session.entry(i, replies.list())).collect();
        let page = session.copy_page(Page::default(), replies.list());
        assert_eq!(
            String::from_utf8(page.write()).unwrap(),
            serde_json::to_string(&entries).unwrap()
        );
        for page in [
            Page::default(),
            Page {
                offset: 1,
                limit: Some(2),
            },
            Page {
                offset: 3,
                limit: None,
            },
            Page {
                offset: 9,
                limit: None,
            },
        ] {
            assert_eq!(
                session.write_page(page, replies.list()),
                session.copy_page(page, replies.list()).into_json(),
                "{page:?}"
            );
        }
    }
}
