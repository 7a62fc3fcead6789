//! The shared store: PostgreSQL, which several instances can use at once.
//!
//! Every read asks the database (another instance may have written a moment
//! ago). A history page is one query; a session read whole is kept in
//! [`cache`] with its row's version, and the next read of it only asks
//! whether the version is still the same ([`checks`], one query for all the
//! reads waiting at the time); if so, the copy answers. Every write goes
//! through the commit task in [`writer`], which groups appends into one
//! transaction and answers them only once it has committed.

mod analytics;
mod cache;
mod change;
mod checks;
mod listen;
mod shared;
mod trust;
mod writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, FromRow, Row};

use cache::{Cache, Copy, RowVersion};
use checks::Checks;
use shared::{Known, Mode, Put, Shared};
use writer::commit_loop;

use super::compact::Session;
use super::queue::{CommitStats, Writes};
use super::{
    AnalyticsCounts, AnalyticsQuery, Caps, Change, Changed, Conversation, Found, HistoryPage,
    JsonPage, NewExchange, Numbered, Page, Search, SessionSummary, Store, StoreError, Totals,
    contains_pattern, prefix_end,
};
use crate::domain::chatbot::Replier;
use crate::domain::models::{ConversationEntry, SessionId};
use crate::domain::redis::Redis;
use crate::domain::wire::{HistoryWriter, Text};

static MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// How long a request waits for a connection before answering 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

const SELECT_SUMMARY: &str = "\
    SELECT session_id, message_count, first_at, last_at FROM sessions WHERE session_id = $1";

/// A page of a session and its row's id, version and size, in one round
/// trip and one snapshot: the session's row joined with the page's exchanges
/// (none, past the end: then one row of NULLs).
const SELECT_PAGE: &str = "\
    SELECT s.id, s.version, s.message_count, e.user_message, e.bot_reply, e.user_name, e.created_at \
    FROM sessions s LEFT JOIN LATERAL (SELECT seq, user_message, bot_reply, user_name, created_at \
    FROM exchanges WHERE session_ref = s.id ORDER BY seq OFFSET $2 LIMIT $3) e ON true \
    WHERE s.session_id = $1 ORDER BY e.seq";

/// Sessions after `$1` and before `$2` (unless empty), in byte order (not
/// the database's locale, as the other stores compare): an owner's sessions
/// are one range of keys.
const SELECT_SESSIONS: &str = "\
    SELECT session_id, message_count, first_at, last_at FROM sessions \
    WHERE session_id COLLATE \"C\" > $1 AND ($2 = '' OR session_id COLLATE \"C\" < $2) \
    AND message_count > 0 ORDER BY session_id COLLATE \"C\" LIMIT $3";

const SEARCH: &str = "\
    SELECT s.session_id, e.user_message, e.bot_reply, e.user_name, e.created_at \
    FROM exchanges e JOIN sessions s ON s.id = e.session_ref \
    WHERE e.search_text LIKE $1 ESCAPE '\\' AND ($2 = '' OR s.session_id = $2) \
    AND s.session_id COLLATE \"C\" >= $4 AND ($5 = '' OR s.session_id COLLATE \"C\" < $5) \
    ORDER BY e.created_at DESC, s.session_id COLLATE \"C\" DESC, e.seq DESC LIMIT $3";

#[derive(FromRow)]
struct ExchangeRow {
    user_message: String,
    bot_reply: String,
    user_name: String,
    created_at: i64,
}

impl From<ExchangeRow> for ConversationEntry {
    fn from(row: ExchangeRow) -> Self {
        Self {
            user_message: row.user_message.into(),
            bot_reply: row.bot_reply.into(),
            user_name: row.user_name.into(),
            timestamp: row.created_at,
        }
    }
}

#[derive(FromRow)]
struct SummaryRow {
    session_id: String,
    message_count: i64,
    first_at: i64,
    last_at: i64,
}

impl From<SummaryRow> for SessionSummary {
    fn from(row: SummaryRow) -> Self {
        Self {
            session_id: row.session_id,
            total_messages: usize::try_from(row.message_count).unwrap_or(0),
            first_at: row.first_at,
            last_at: row.last_at,
        }
    }
}

#[derive(FromRow)]
struct FoundRow {
    session_id: String,
    #[sqlx(flatten)]
    exchange: ExchangeRow,
}

fn unavailable(err: sqlx::Error) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

/// Message, reply, user name and time of a row of [`SELECT_PAGE`].
fn page_exchange(row: &PgRow) -> Result<(&str, &str, &str, i64), StoreError> {
    Ok((
        row.try_get(3).map_err(unavailable)?,
        row.try_get(4).map_err(unavailable)?,
        row.try_get(5).map_err(unavailable)?,
        row.try_get(6).map_err(unavailable)?,
    ))
}

/// What a history read found: a copy of the whole session, current as of
/// the read, or the page's rows and the session's size.
enum Read {
    Copy(Arc<Copy>),
    Rows(RowVersion, usize, Vec<PgRow>),
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A PostgreSQL-backed store with group commit.
pub struct PostgresStore {
    pool: PgPool,
    writes: Writes,
    stats: Arc<CommitStats>,
    cache: Arc<Cache>,
    checks: Checks,
    /// The cache shared with the other instances, with `--redis-url`.
    shared: Option<Arc<Shared>>,
    reads: ReadStats,
}

/// Marks this program's connections, so that the database's triggers tell
/// only the writes of others (plain SQL, an earlier release) to the
/// instances' listeners (migration 0006).
const WRITER_SETTING: (&str, &str) = ("chatbot.writer", "chatbot-api");

/// Where history reads were answered from, since the store opened.
#[derive(Debug, Default)]
pub struct ReadStats {
    /// This instance's copy, vouched for (no question asked anywhere).
    pub vouched: AtomicU64,
    /// This instance's copy, current by Redis.
    pub instance: AtomicU64,
    /// The copy in Redis.
    pub redis: AtomicU64,
    /// The database: its version check or its rows.
    pub database: AtomicU64,
}

impl ReadStats {
    /// (vouched, instance, redis, database).
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.vouched.load(Ordering::Relaxed),
            self.instance.load(Ordering::Relaxed),
            self.redis.load(Ordering::Relaxed),
            self.database.load(Ordering::Relaxed),
        )
    }

    /// Counts a read answered `from` there, here and in
    /// `chatbot_session_reads_total{from}`.
    fn count(&self, from: &'static str) {
        // Registered once each: a lookup by name and label on every read
        // costs more than the read's own bookkeeping.
        static HANDLES: OnceLock<[metrics::Counter; 4]> = OnceLock::new();
        let handles = HANDLES.get_or_init(|| {
            ["instance", "redis", "database", "vouched"]
                .map(|from| metrics::counter!("chatbot_session_reads_total", "from" => from))
        });
        let (counter, handle) = match from {
            "instance" => (&self.instance, &handles[0]),
            "redis" => (&self.redis, &handles[1]),
            "vouched" => (&self.vouched, &handles[3]),
            _ => (&self.database, &handles[2]),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        handle.increment(1);
    }
}

impl PostgresStore {
    /// Connects, runs the migrations and starts the commit task.
    ///
    /// A database that cannot be reached fails here, with the driver's own
    /// reason, rather than on the first request.
    /// `cache_bytes` bounds the copies of sessions kept for reads.
    pub async fn connect(
        url: &str,
        pool_size: u32,
        caps: Caps,
        cache_bytes: usize,
    ) -> Result<Self, StoreError> {
        Self::connect_shared(url, pool_size, caps, cache_bytes, None).await
    }

    /// [`PostgresStore::connect`], sharing versions and sessions with the
    /// other instances through `redis` if given (see [`shared`]).
    pub async fn connect_shared(
        url: &str,
        pool_size: u32,
        caps: Caps,
        cache_bytes: usize,
        redis: Option<Arc<Redis>>,
    ) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse().map_err(unavailable)?;
        let options = options.options([WRITER_SETTING]);
        let probe = PgConnection::connect_with(&options)
            .await
            .map_err(unavailable)?;
        probe.close().await.map_err(unavailable)?;

        let pool = PgPoolOptions::new()
            .max_connections(pool_size.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // A server can go away: check a connection before handing it out.
            .test_before_acquire(true)
            .connect_with(options.clone())
            .await
            .map_err(unavailable)?;
        MIGRATIONS
            .run(&pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migration failed: {e}")))?;

        let (writes, queue) = Writes::channel();
        let stats = Arc::new(CommitStats::default());
        let cache = Arc::new(Cache::new(cache_bytes));
        let shared = redis.map(Shared::start);
        if let Some(shared) = &shared {
            tokio::spawn(listen::listen(pool.clone(), shared.clone()));
        }
        tokio::spawn(commit_loop(
            pool.clone(),
            queue,
            stats.clone(),
            caps,
            cache.clone(),
            shared.clone(),
        ));
        Ok(Self {
            pool,
            writes,
            stats,
            cache,
            checks: Checks::start(options),
            shared,
            reads: ReadStats::default(),
        })
    }

    /// Group-commit counters since start.
    pub fn commit_stats(&self) -> Arc<CommitStats> {
        self.stats.clone()
    }

    /// Whether reads trust the cache shared in Redis now (`--redis-url`
    /// given, Redis answering, and this instance's epoch begun).
    pub fn shares_reads(&self) -> bool {
        self.shared.as_ref().is_some_and(|shared| shared.is_up())
    }

    /// Whether this instance serves copies it vouches for without asking
    /// (its membership among the instances sharing Redis holds).
    pub fn vouches(&self) -> bool {
        self.shares_reads() && self.shared.as_ref().is_some_and(|shared| shared.holds())
    }

    /// Where history reads were answered from.
    pub fn read_stats(&self) -> &ReadStats {
        &self.reads
    }

    /// Bytes and sessions in the read cache.
    pub fn cache_usage(&self) -> (usize, usize) {
        self.cache.usage()
    }

    /// A page of a session: from the cached copy when the database says it
    /// is current (one check shared with the reads waiting beside it, see
    /// [`checks`]), else from the rows in one query, kept as the new copy
    /// when they are the whole session. `None` when there is no session.
    async fn read(&self, session: &str, page: Page) -> Result<Option<Read>, StoreError> {
        let Some(shared) = self.shared.as_ref().filter(|shared| shared.is_up()) else {
            return self.read_database(session, page).await;
        };
        if let Some(row) = shared.vouched(session)
            && let Some(copy) = self.cache.get(session).filter(|copy| copy.row == row)
        {
            self.reads.count("vouched");
            return Ok(Some(Read::Copy(copy)));
        }
        let generation = shared.generation();
        let Ok(seen) = shared.lookup(session).await else {
            return self.read_database(session, page).await;
        };
        match seen.known {
            Known::Gone => {
                self.cache.remove(session);
                self.reads.count("redis");
                return Ok(None);
            }
            Known::Current(row, body) => {
                if let Some(copy) = self.cache.get(session).filter(|copy| copy.row == row) {
                    shared.vouch(session, row, &seen, generation);
                    self.reads.count("instance");
                    return Ok(Some(Read::Copy(copy)));
                }
                let whole = match body {
                    Some(at) => shared.body(session, row, at, self.cache.replies()).await,
                    None => None,
                };
                if let Some(whole) = whole {
                    self.reads.count("redis");
                    let copy = Copy {
                        row,
                        session: whole,
                    };
                    let copy = self.cache.put(session, copy);
                    shared.vouch(session, row, &seen, generation);
                    return Ok(Some(Read::Copy(copy)));
                }
            }
            Known::Unknown => {}
        }
        let read = self.read_database(session, page).await?;
        // What the database said, for the next reader on any instance.
        let put = match &read {
            Some(Read::Copy(copy)) => Some(Put {
                key: session,
                row: copy.row,
                records: (copy.session.len() <= shared::MOST_SHARED).then(|| {
                    copy.session
                        .entries(Page::default(), self.cache.replies().list())
                        .entries
                        .iter()
                        .map(shared::record)
                        .collect()
                }),
                seen: seen.version.as_deref(),
            }),
            Some(Read::Rows(row, _, _)) => Some(Put {
                key: session,
                row: *row,
                records: None,
                seen: seen.version.as_deref(),
            }),
            None => None,
        };
        if let Some(put) = put {
            // A failure only means the next reader asks the database too.
            let _ = shared
                .put(seen.epoch.as_deref(), Mode::Whole, &[put], false)
                .await;
        }
        Ok(read)
    }

    /// [`PostgresStore::read`] from the database alone: the copy checked
    /// there, or the rows.
    async fn read_database(&self, session: &str, page: Page) -> Result<Option<Read>, StoreError> {
        self.reads.count("database");
        if let Some(copy) = self.cache.get(session) {
            match self.checks.check(session).await? {
                Some(row) if row == copy.row => return Ok(Some(Read::Copy(copy))),
                Some(_) => {}
                None => {
                    self.cache.remove(session);
                    return Ok(None);
                }
            }
        }
        let mut rows = sqlx::query(SELECT_PAGE)
            .bind(session)
            .bind(to_i64(page.offset))
            .bind(page.limit.map(to_i64))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        let Some(first) = rows.first() else {
            self.cache.remove(session);
            return Ok(None);
        };
        let row = RowVersion {
            id: first.try_get(0).map_err(unavailable)?,
            version: first.try_get(1).map_err(unavailable)?,
        };
        let total: i64 = first.try_get(2).map_err(unavailable)?;
        if total == 0 {
            self.cache.remove(session);
            return Ok(None);
        }
        // The row of NULLs of a page past the end.
        if first
            .try_get::<Option<&str>, _>(3)
            .map_err(unavailable)?
            .is_none()
        {
            rows.clear();
        }
        if page == Page::default() {
            let mut whole = Session::default();
            let built = rows.iter().try_for_each(|row| {
                let (message, reply, name, at) = page_exchange(row)?;
                whole.push_row(message, reply, name, at, self.cache.replies())
            });
            if built.is_ok() {
                let copy = Copy {
                    row,
                    session: whole,
                };
                return Ok(Some(Read::Copy(self.cache.put(session, copy))));
            }
        }
        Ok(Some(Read::Rows(
            row,
            usize::try_from(total).unwrap_or(0),
            rows,
        )))
    }
}

#[async_trait]
impl Store for PostgresStore {
    #[tracing::instrument(skip_all)]
    async fn append(
        &self,
        session: &SessionId,
        exchange: NewExchange,
        replier: Arc<dyn Replier>,
    ) -> Result<Numbered, StoreError> {
        self.writes.append(session, exchange, replier).await
    }

    #[tracing::instrument(skip_all)]
    async fn change(&self, session: &SessionId, change: Change) -> Result<Changed, StoreError> {
        self.writes.change(session, change).await
    }

    #[tracing::instrument(skip_all)]
    async fn conversation(
        &self,
        session: &str,
        exchanges: bool,
    ) -> Result<Option<Conversation>, StoreError> {
        change::read(&self.pool, session, exchanges).await
    }

    #[tracing::instrument(skip_all)]
    async fn history(&self, session: &str, page: Page) -> Result<Option<HistoryPage>, StoreError> {
        let (total, rows) = match self.read(session, page).await? {
            None => return Ok(None),
            Some(Read::Copy(copy)) => {
                return Ok(Some(
                    copy.session.entries(page, self.cache.replies().list()),
                ));
            }
            Some(Read::Rows(_, total, rows)) => (total, rows),
        };
        let mut entries = Vec::with_capacity(rows.len());
        for row in &rows {
            let (message, reply, name, timestamp) = page_exchange(row)?;
            entries.push(ConversationEntry {
                user_message: message.into(),
                bot_reply: reply.into(),
                user_name: name.into(),
                timestamp,
            });
        }
        Ok(Some(HistoryPage { total, entries }))
    }

    /// Copied from the cached session, or written straight from the rows
    /// without building entries.
    #[tracing::instrument(skip_all)]
    async fn history_json(
        &self,
        session: &str,
        page: Page,
    ) -> Result<Option<JsonPage>, StoreError> {
        let (total, rows) = match self.read(session, page).await? {
            None => return Ok(None),
            Some(Read::Copy(copy)) => {
                let replies = self.cache.replies().list();
                return Ok(Some(copy.session.write_page(page, replies)));
            }
            Some(Read::Rows(_, total, rows)) => (total, rows),
        };
        let mut texts = Vec::with_capacity(rows.len());
        let mut bytes = 0;
        for row in &rows {
            let text = page_exchange(row)?;
            bytes += text.0.len() + text.1.len() + text.2.len() + 6;
            texts.push(text);
        }
        let mut writer = HistoryWriter::new(texts.len(), bytes);
        for (message, reply, name, at) in &texts {
            writer.entry(Text::Raw(message), Text::Raw(reply), Text::Raw(name), *at);
        }
        Ok(Some(JsonPage {
            total,
            count: texts.len(),
            body: writer.finish(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn summary(&self, session: &str) -> Result<Option<SessionSummary>, StoreError> {
        let row: Option<SummaryRow> = sqlx::query_as(SELECT_SUMMARY)
            .bind(session)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(row
            .map(Into::into)
            .filter(|s: &SessionSummary| s.total_messages > 0))
    }

    #[tracing::instrument(skip_all)]
    async fn sessions(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SessionSummary>, StoreError> {
        let rows: Vec<SummaryRow> = sqlx::query_as(SELECT_SESSIONS)
            .bind(after.unwrap_or(prefix))
            .bind(prefix_end(prefix).unwrap_or_default())
            .bind(to_i64(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn delete(&self, session: &str) -> Result<bool, StoreError> {
        self.writes.delete(session).await
    }

    #[tracing::instrument(skip_all)]
    async fn search(&self, search: &Search) -> Result<Vec<Found>, StoreError> {
        let rows: Vec<FoundRow> = sqlx::query_as(SEARCH)
            .bind(contains_pattern(&search.text))
            .bind(search.session_id.as_deref().unwrap_or(""))
            .bind(to_i64(search.limit))
            .bind(&search.prefix)
            .bind(prefix_end(&search.prefix).unwrap_or_default())
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .map(|row| Found {
                session_id: row.session_id,
                entry: row.exchange.into(),
            })
            .collect())
    }

    #[tracing::instrument(skip_all)]
    async fn analytics(&self, query: &AnalyticsQuery) -> Result<AnalyticsCounts, StoreError> {
        analytics::read(&self.pool, query).await
    }

    #[tracing::instrument(skip_all)]
    async fn totals(&self) -> Result<Totals, StoreError> {
        let (sessions, exchanges): (i64, i64) = sqlx::query_as(
            "SELECT count(*), coalesce(sum(message_count), 0)::BIGINT FROM sessions \
             WHERE message_count > 0",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(Totals {
            sessions: sessions as u64,
            exchanges: exchanges as u64,
        })
    }

    async fn clear(&self) -> Result<(), StoreError> {
        self.writes.clear().await
    }

    async fn expire(&self, before: i64) -> Result<usize, StoreError> {
        self.writes.expire(before).await
    }

    async fn close(&self) {
        let (commits, exchanges) = self.stats.snapshot();
        tracing::info!(commits, exchanges, "group commit totals");
        if let Some(shared) = &self.shared {
            shared.close().await;
        }
        self.pool.close().await;
    }
}
