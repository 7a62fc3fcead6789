//! Where exchanges live: the `Store` trait, its backends, and how a
//! `--store` value picks one.

mod compact;
mod memory;
mod postgres;
mod queue;
mod sqlite;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

pub use memory::MemoryStore;
pub use postgres::{PostgresStore, ReadStats};
pub use queue::CommitStats;
pub use sqlite::{SqliteStore, SyncMode};

use crate::domain::chatbot::Replier;
use crate::domain::models::{ConversationEntry, SessionId};
pub use crate::domain::models::{Found, SessionSummary};
use crate::domain::redis::Redis;

/// A user's message, before the bot has answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewExchange {
    pub user_message: Arc<str>,
    pub user_name: Arc<str>,
    /// Unix seconds.
    pub timestamp: i64,
}

impl NewExchange {
    /// The stored exchange once `bot_reply` is known.
    pub fn answered(self, bot_reply: Arc<str>) -> ConversationEntry {
        ConversationEntry {
            user_message: self.user_message,
            bot_reply,
            user_name: self.user_name,
            timestamp: self.timestamp,
        }
    }
}

/// An exchange and its id in its session: given when the exchange is
/// stored, kept through edits and deletions of others, never given again in
/// that session. Ids grow with each exchange stored (1, 2, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Numbered {
    pub seq: u64,
    pub entry: ConversationEntry,
}

impl std::ops::Deref for Numbered {
    type Target = ConversationEntry;
    fn deref(&self) -> &ConversationEntry {
        &self.entry
    }
}

/// Text pairs a client attaches to a conversation, in the order given.
pub type Metadata = Vec<(String, String)>;

/// A conversation as a whole: when it began, what the client attached to
/// it, and (when asked for) its exchanges, oldest first. A session started
/// by `POST /chat` is a conversation too: it began with its first exchange
/// and has no metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// Unix seconds.
    pub created_at: i64,
    pub metadata: Metadata,
    pub exchanges: Vec<Numbered>,
}

/// Which exchange of a session: by position (0-based, oldest first) or by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    Position(usize),
    Seq(u64),
}

/// A change to one exchange. Each `Some` replaces that half's text; an empty
/// text removes the half, and an exchange left with neither half is removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edit {
    pub user_message: Option<Arc<str>>,
    pub bot_reply: Option<Arc<str>>,
}

impl Edit {
    /// Removes the whole exchange.
    pub fn remove() -> Self {
        Self {
            user_message: Some(Arc::from("")),
            bot_reply: Some(Arc::from("")),
        }
    }

    /// The exchange after the edit, or `None` when nothing of it is left.
    pub fn apply(&self, entry: &ConversationEntry) -> Option<ConversationEntry> {
        let edited = ConversationEntry {
            user_message: self
                .user_message
                .clone()
                .unwrap_or_else(|| entry.user_message.clone()),
            bot_reply: self
                .bot_reply
                .clone()
                .unwrap_or_else(|| entry.bot_reply.clone()),
            user_name: entry.user_name.clone(),
            timestamp: entry.timestamp,
        };
        (!edited.user_message.is_empty() || !edited.bot_reply.is_empty()).then_some(edited)
    }
}

/// What became of an edited exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edited {
    Kept(Numbered),
    /// Nothing of it was left: it is gone (its id is given).
    Removed(u64),
}

/// A write to one conversation other than an answered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new conversation with its first exchanges (stored as given, no
    /// reply computed); refused if the id is taken.
    Create {
        created_at: i64,
        metadata: Metadata,
        exchanges: Vec<ConversationEntry>,
    },
    /// Replaces the metadata of an existing conversation.
    SetMetadata(Metadata),
    /// Appends exchanges as given (an imported transcript) to an existing
    /// conversation.
    Import(Vec<ConversationEntry>),
    /// Edits or removes one exchange.
    Edit { at: At, edit: Edit },
}

/// What a [`Change`] did; `false` / `None` when the conversation (or the
/// exchange) does not exist, or the new id was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    Created(bool),
    Metadata(bool),
    /// The ids given to the imported exchanges.
    Imported(Option<Vec<u64>>),
    Edited(Option<Edited>),
}

/// Metadata as stored in a database column: a JSON object.
pub fn metadata_json(metadata: &Metadata) -> String {
    let object: serde_json::Map<String, serde_json::Value> = metadata
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::Value::Object(object).to_string()
}

/// Metadata read back from a database column (`None`: a seed session).
pub fn metadata_from_json(text: Option<&str>) -> Metadata {
    let Some(Ok(serde_json::Value::Object(object))) = text.map(serde_json::from_str) else {
        return Vec::new();
    };
    object
        .into_iter()
        .filter_map(|(k, v)| match v {
            serde_json::Value::String(v) => Some((k, v)),
            _ => None,
        })
        .collect()
}

/// Why a store could not do what it was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backing storage failed or is unreachable; retrying later may work.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A configured cap would be exceeded; nothing was stored.
    #[error("{0}")]
    Full(String),
}

/// What `/chat/analytics` asks a store: exchanges stored in `[from, to)`
/// (Unix seconds) of sessions whose keys start with `prefix`, counted in
/// buckets of `bucket` seconds (aligned to the Unix epoch, so days are UTC
/// days), with the replies classified by `rules` (reply texts) and
/// `fallback`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalyticsQuery {
    pub prefix: String,
    pub from: i64,
    pub to: i64,
    pub bucket: i64,
    /// The rule replies to count (one row each in the answer).
    pub rules: Vec<String>,
    pub fallback: String,
    /// How many unanswered messages to list.
    pub top: usize,
}

impl AnalyticsQuery {
    /// The start of the bucket `at` falls in.
    pub fn bucket_of(&self, at: i64) -> i64 {
        at - at.rem_euclid(self.bucket)
    }
}

/// What a store counted for an [`AnalyticsQuery`]; buckets with nothing
/// are left out (the caller fills them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnalyticsCounts {
    /// Bucket start → (exchanges, active sessions).
    pub activity: Vec<(i64, u64, u64)>,
    /// Bucket start → sessions whose first exchange is in it.
    pub new_sessions: Vec<(i64, u64)>,
    pub exchanges: u64,
    pub fallback_exchanges: u64,
    /// Per rule reply of the query, in its order: how many exchanges got it.
    pub rule_exchanges: Vec<u64>,
    /// The most frequent messages answered with the fallback, most first
    /// (ties by text).
    pub unanswered: Vec<(String, u64)>,
}

impl AnalyticsCounts {
    /// Sorts exchanges counted by reply text into the fallback's count and
    /// each rule's.
    pub(crate) fn count_replies(
        &mut self,
        query: &AnalyticsQuery,
        replies: impl IntoIterator<Item = (String, u64)>,
    ) {
        self.rule_exchanges = vec![0; query.rules.len()];
        for (reply, n) in replies {
            if reply == query.fallback {
                self.fallback_exchanges = n;
            }
            if let Some(at) = query.rules.iter().position(|r| *r == reply) {
                self.rule_exchanges[at] = n;
            }
        }
    }
}

/// What a store holds, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub sessions: u64,
    pub exchanges: u64,
}

/// Counts a group commit of `exchanges` that took `seconds`
/// (`chatbot_group_commit_exchanges`, `chatbot_group_commit_duration_seconds`).
pub(crate) fn record_commit(exchanges: usize, started: std::time::Instant) {
    metrics::histogram!("chatbot_group_commit_exchanges").record(exchanges as f64);
    metrics::histogram!("chatbot_group_commit_duration_seconds")
        .record(started.elapsed().as_secs_f64());
}

/// Which part of a history to return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Page {
    /// Exchanges to skip from the oldest.
    pub offset: usize,
    /// The most to return; `None` for all the rest.
    pub limit: Option<usize>,
}

/// A page of a history and the session's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    pub total: usize,
    pub entries: Vec<ConversationEntry>,
}

/// A page of a history already written as the JSON array `GET
/// /chat/history/{id}` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPage {
    /// The session's size.
    pub total: usize,
    /// How many exchanges `body` holds.
    pub count: usize,
    pub body: Vec<u8>,
}

/// How to open a store, besides where it is.
#[derive(Clone)]
pub struct StoreOptions {
    pub caps: Caps,
    /// The read cache's budget in bytes (SQLite and PostgreSQL).
    pub cache_bytes: usize,
    /// When a SQLite write is acknowledged.
    pub sync: SyncMode,
    /// PostgreSQL: the cache shared with the other instances (`--redis-url`).
    pub redis: Option<Arc<Redis>>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            caps: Caps::default(),
            cache_bytes: 256 << 20,
            sync: SyncMode::default(),
            redis: None,
        }
    }
}

/// Limits on what a store accepts; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps {
    pub max_sessions: Option<usize>,
    pub max_messages_per_session: Option<usize>,
}

impl Caps {
    /// The 507 message when a new session would pass `max_sessions`.
    pub fn sessions_full(max: usize) -> StoreError {
        StoreError::Full(format!(
            "Session limit reached: this server keeps at most {max} sessions"
        ))
    }

    /// The 507 message when a session would pass `max_messages_per_session`.
    pub fn session_full(max: usize) -> StoreError {
        StoreError::Full(format!(
            "Message limit reached: a session holds at most {max} messages"
        ))
    }

    /// Refuses one more session when `sessions` exist already.
    pub fn check_new_session(&self, sessions: usize) -> Result<(), StoreError> {
        match self.max_sessions {
            Some(max) if sessions >= max => Err(Self::sessions_full(max)),
            _ => Ok(()),
        }
    }

    /// Refuses `adding` exchanges to a session that holds `has`, past the cap.
    pub fn check_room(&self, has: usize, adding: usize) -> Result<(), StoreError> {
        match self.max_messages_per_session {
            Some(max) if has + adding > max => Err(Self::session_full(max)),
            _ => Ok(()),
        }
    }
}

/// The first key after every key that starts with `prefix`, for range scans
/// (`None` for the empty prefix: no upper bound).
pub fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    let last = chars.pop()?;
    chars.push(char::from_u32(last as u32 + 1)?);
    Some(chars.into_iter().collect())
}

/// `text` as a `LIKE` pattern matching it anywhere, wildcards escaped.
pub(crate) fn contains_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// What to search for: `text` (already lower-cased) in messages and replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Search {
    /// Only sessions whose ids start with this (an owner's scope, or `""`).
    pub prefix: String,
    pub text: String,
    pub session_id: Option<String>,
    pub limit: usize,
}

/// Whether a search for `text` (lower-cased, as [`Search::text`] is) finds
/// an exchange: its message or its reply (UTF-8, or searched as if it
/// were: SQLite hands over a row's bytes), lower-cased, contains it. The
/// memory and SQLite stores search with this; PostgreSQL's index needs the
/// text stored ([`search_text`]).
pub fn finds(user_message: &[u8], bot_reply: &[u8], text: &str) -> bool {
    contains_lowered(user_message, text) || contains_lowered(bot_reply, text)
}

/// Whether `haystack` (UTF-8, or searched as if it were), lower-cased,
/// contains `needle`. ASCII text (most of it) is compared as it is: the
/// needle's first byte found in either case, then the rest checked.
fn contains_lowered(haystack: &[u8], needle: &str) -> bool {
    if !haystack.is_ascii() {
        return String::from_utf8_lossy(haystack)
            .to_lowercase()
            .contains(needle);
    }
    let needle = needle.as_bytes();
    let Some(&first) = needle.first() else {
        return true;
    };
    memchr::memchr2_iter(first, first.to_ascii_uppercase(), haystack).any(|at| {
        haystack[at..].get(..needle.len()).is_some_and(|window| {
            window
                .iter()
                .zip(needle)
                .all(|(h, n)| h.to_ascii_lowercase() == *n)
        })
    })
}

/// The lower-cased text PostgreSQL's search index covers: message and
/// reply, kept apart by a separator.
pub fn search_text(user_message: &str, bot_reply: &str) -> String {
    format!(
        "{}\u{1f}{}",
        user_message.to_lowercase(),
        bot_reply.to_lowercase()
    )
}

/// A conversation store. Every backend keeps each session's exchanges in the
/// order they were appended, and `append` returns only once the exchange is
/// as durable as the backend makes it.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Answers `exchange` with `replier`, shown the session's latest
    /// exchanges as they stand at this moment, and appends the answered
    /// exchange to the session (created if needed).
    async fn append(
        &self,
        session: &SessionId,
        exchange: NewExchange,
        replier: Arc<dyn Replier>,
    ) -> Result<Numbered, StoreError>;

    /// Writes `change` to the conversation (see [`Change`]).
    async fn change(&self, session: &SessionId, change: Change) -> Result<Changed, StoreError>;

    /// The conversation, with its exchanges if `exchanges`; `None` when it
    /// does not exist. An empty conversation (created, or emptied by edits)
    /// exists here but has no history for the seed API.
    async fn conversation(
        &self,
        session: &str,
        exchanges: bool,
    ) -> Result<Option<Conversation>, StoreError>;

    /// A page of the session's history, oldest first, or `None` when it has none.
    async fn history(&self, session: &str, page: Page) -> Result<Option<HistoryPage>, StoreError>;

    /// The same page written as JSON. Stores that keep a compact form write
    /// it straight from there; the others write the entries of [`Store::history`].
    async fn history_json(
        &self,
        session: &str,
        page: Page,
    ) -> Result<Option<JsonPage>, StoreError> {
        Ok(self.history(session, page).await?.map(|page| JsonPage {
            total: page.total,
            count: page.entries.len(),
            body: crate::domain::wire::history(&page.entries),
        }))
    }

    /// The session's size and time span, or `None` when it has no history.
    async fn summary(&self, session: &str) -> Result<Option<SessionSummary>, StoreError>;

    /// Up to `limit` sessions with ids after `after`, sorted by id.
    /// Sessions whose ids start with `prefix` (an owner's scope, or `""`),
    /// after `after` (a full id), sorted by id.
    async fn sessions(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SessionSummary>, StoreError>;

    /// Removes the session and all its exchanges; `false` when there was none.
    async fn delete(&self, session: &str) -> Result<bool, StoreError>;

    /// Exchanges whose message or reply contains the text, newest first.
    async fn search(&self, search: &Search) -> Result<Vec<Found>, StoreError>;

    /// How many sessions have history, and how many exchanges they hold.
    async fn totals(&self) -> Result<Totals, StoreError>;

    /// Activity and replies in a time range (see [`AnalyticsQuery`]).
    async fn analytics(&self, query: &AnalyticsQuery) -> Result<AnalyticsCounts, StoreError>;

    /// Removes every session.
    async fn clear(&self) -> Result<(), StoreError>;

    /// Removes every session whose last exchange is older than `before`
    /// (Unix seconds); returns how many went.
    async fn expire(&self, before: i64) -> Result<usize, StoreError>;

    /// Flushes and releases resources at shutdown.
    async fn close(&self) {}
}

/// Removes sessions untouched for `ttl`, checking every `ttl / 4` (between
/// one second and a minute), for as long as the store lives. With `redis`,
/// one instance of the fleet sweeps each period ([`expiry_turn`]); while
/// Redis is unreachable each sweeps on its own (a sweep deletes what is
/// expired, so two sweeps delete it once).
pub fn spawn_expiry(
    store: Arc<dyn Store>,
    ttl: std::time::Duration,
    redis: Option<Arc<Redis>>,
) -> tokio::task::JoinHandle<()> {
    let every = (ttl / 4).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    );
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        loop {
            ticks.tick().await;
            if let Some(redis) = &redis
                && !expiry_turn(redis, every).await
            {
                continue;
            }
            let before =
                crate::domain::models::now() - i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
            match store.expire(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(sessions = n, "expired idle sessions"),
                Err(err) => tracing::warn!(error = %err, "session expiry failed"),
            }
        }
    })
}

/// Whether this instance sweeps expired sessions this period: the first
/// to ask in a period of `every` does; if Redis cannot say, each does.
pub async fn expiry_turn(redis: &Redis, every: std::time::Duration) -> bool {
    let mut claim = redis::cmd("SET");
    claim
        .arg(redis.key("expiry"))
        .arg(1)
        .arg("NX")
        .arg("PX")
        .arg(u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1));
    let claimed: Result<Option<String>, _> = redis.query(&claim).await;
    !matches!(claimed, Ok(None))
}

impl dyn Store {
    /// Creates a conversation; `false` when the id is taken.
    pub async fn create(
        &self,
        session: &SessionId,
        created_at: i64,
        metadata: Metadata,
        exchanges: Vec<ConversationEntry>,
    ) -> Result<bool, StoreError> {
        let change = Change::Create {
            created_at,
            metadata,
            exchanges,
        };
        match self.change(session, change).await? {
            Changed::Created(created) => Ok(created),
            _ => Err(mismatched()),
        }
    }

    /// Replaces a conversation's metadata; `false` when it does not exist.
    pub async fn set_metadata(
        &self,
        session: &SessionId,
        metadata: Metadata,
    ) -> Result<bool, StoreError> {
        match self.change(session, Change::SetMetadata(metadata)).await? {
            Changed::Metadata(found) => Ok(found),
            _ => Err(mismatched()),
        }
    }

    /// Appends exchanges as given; their ids, or `None` when the
    /// conversation does not exist.
    pub async fn import(
        &self,
        session: &SessionId,
        exchanges: Vec<ConversationEntry>,
    ) -> Result<Option<Vec<u64>>, StoreError> {
        match self.change(session, Change::Import(exchanges)).await? {
            Changed::Imported(ids) => Ok(ids),
            _ => Err(mismatched()),
        }
    }

    /// Edits or removes one exchange; `None` when there is no such exchange.
    pub async fn edit(
        &self,
        session: &SessionId,
        at: At,
        edit: Edit,
    ) -> Result<Option<Edited>, StoreError> {
        match self.change(session, Change::Edit { at, edit }).await? {
            Changed::Edited(edited) => Ok(edited),
            _ => Err(mismatched()),
        }
    }
}

fn mismatched() -> StoreError {
    StoreError::Unavailable("the store answered a change with another kind".into())
}

/// Which backend to use, as given to `--store`.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// Everything in RAM; nothing survives a restart.
    Memory,
    /// One SQLite file, created if missing.
    Sqlite(String),
    /// A PostgreSQL URL.
    Postgres(String),
}

impl StoreKind {
    /// Parses `memory`, `sqlite:PATH` or a `postgres://` / `postgresql://` URL.
    pub fn parse(value: &str) -> Result<Self, String> {
        if value == "memory" {
            Ok(Self::Memory)
        } else if let Some(path) = value.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                Err("sqlite: needs a file path, e.g. sqlite:chatbot.db".into())
            } else {
                Ok(Self::Sqlite(path.to_owned()))
            }
        } else if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            url::Url::parse(value).map_err(|e| format!("bad PostgreSQL URL: {e}"))?;
            Ok(Self::Postgres(value.to_owned()))
        } else {
            Err("expected `memory`, `sqlite:PATH` or a `postgres://` URL".into())
        }
    }

    /// Opens the store: connects, migrates, starts background tasks.
    pub async fn open(&self, pool_size: u32) -> Result<Arc<dyn Store>, StoreError> {
        self.open_with(pool_size, Caps::default()).await
    }

    /// Opens the store with caps on what it accepts.
    pub async fn open_with(
        &self,
        pool_size: u32,
        caps: Caps,
    ) -> Result<Arc<dyn Store>, StoreError> {
        self.open_tuned(
            pool_size,
            StoreOptions {
                caps,
                ..StoreOptions::default()
            },
        )
        .await
    }

    /// Opens the store with caps, its cache's budget and SQLite's sync mode.
    pub async fn open_tuned(
        &self,
        pool_size: u32,
        options: StoreOptions,
    ) -> Result<Arc<dyn Store>, StoreError> {
        let caps = options.caps;
        Ok(match self {
            Self::Memory => Arc::new(MemoryStore::with_caps(caps)),
            Self::Sqlite(path) => Arc::new(SqliteStore::open(path, options).await?),
            Self::Postgres(url) => Arc::new(
                PostgresStore::connect_shared(
                    url,
                    pool_size,
                    caps,
                    options.cache_bytes,
                    options.redis,
                )
                .await?,
            ),
        })
    }
}

/// Shows the store with any password masked, fit for logs and error messages.
impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory => f.write_str("memory"),
            Self::Sqlite(path) => write!(f, "sqlite:{path}"),
            Self::Postgres(url) => match url::Url::parse(url) {
                Ok(mut parsed) if parsed.password().is_some() => {
                    let _ = parsed.set_password(Some("***"));
                    f.write_str(parsed.as_str())
                }
                _ => f.write_str(url),
            },
        }
    }
}

impl fmt::Debug for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_finds_what_the_stored_search_text_held() {
        let cases = [
            ("Hello There", "Hi!", "lo th", true),
            ("Hello There", "Hi!", "hi!", true),
            ("Hello There", "Hi!", "HELLO", false), // the query comes lower-cased
            ("ÉCOLE", "…", "école", true),
            ("Straße", "", "straße", true),
            ("ΟΔΟΣ", "", "οδος", true), // a final sigma lowers to ς
            ("ΟΔΟΣ", "", "οδος".trim_end_matches('ς'), true),
            ("abc", "xyz", "", true),
            ("abc", "xyz", "abcx", false),
        ];
        for (message, reply, text, found) in cases {
            let stored = search_text(message, reply).contains(text);
            assert_eq!(
                finds(message.as_bytes(), reply.as_bytes(), text),
                found,
                "{message:?} {reply:?} {text:?}"
            );
            assert_eq!(
                stored, found,
                "as the stored text did: {message:?} {text:?}"
            );
        }
        // Nor across the two: the stored text joined them with U+001F.
        assert!(search_text("ab", "cd").contains("b\u{1f}c"));
        assert!(!finds(b"ab", b"cd", "b\u{1f}c"));
        assert!(finds("a\u{1f}b".as_bytes(), b"", "a\u{1f}b"));
    }

    #[test]
    fn store_values_parse() {
        assert_eq!(StoreKind::parse("memory"), Ok(StoreKind::Memory));
        assert_eq!(
            StoreKind::parse("sqlite:chatbot.db"),
            Ok(StoreKind::Sqlite("chatbot.db".into()))
        );
        assert_eq!(
            StoreKind::parse("sqlite:///tmp/x.db"),
            Ok(StoreKind::Sqlite("/tmp/x.db".into()))
        );
        assert!(matches!(
            StoreKind::parse("postgres://u@h/db"),
            Ok(StoreKind::Postgres(_))
        ));
        for bad in [
            "",
            "mem",
            "sqlite:",
            "mysql://h/db",
            "postgres://exa mple:x/",
        ] {
            assert!(StoreKind::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(contains_pattern("50%_off\\"), "%50\\%\\_off\\\\%");
        assert_eq!(contains_pattern("été"), "%été%");
    }

    #[test]
    fn passwords_are_masked() {
        let kind = StoreKind::parse("postgres://app:s3cret@db.example:5432/chat").unwrap();
        let shown = kind.to_string();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("app:***@db.example:5432/chat"), "{shown}");
        assert!(!format!("{kind:?}").contains("s3cret"));
    }
}
