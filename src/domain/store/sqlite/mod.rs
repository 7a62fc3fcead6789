//! The default store: one SQLite file for durability, RAM for reads.
//!
//! The process owns the file alone (it holds an exclusive lock on it), so
//! what it has read from the file stays true until it writes again: history
//! pages and stats come from a cache of whole sessions in the memory store's
//! compact form ([`cache`]), filled from the file on first use and bounded by
//! `--cache-mb`. Writes go through one writer thread with group commit and a
//! separate flush ([`writer`]); they reach the cache only once on disk. The
//! session list and search cover sessions not in RAM too, so they are
//! queries on reader connections (search tests each exchange with
//! [`finds`](crate::domain::store::finds), as memory mode does).

mod analytics;
mod cache;
mod change;
mod writer;

use std::collections::HashSet;
use std::fs::File;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use sqlx::ConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;

use self::cache::Cache;
pub use self::writer::SyncMode;
use super::compact::{Replies, Session};
use super::queue::{CommitStats, Writes};
use super::{
    AnalyticsCounts, AnalyticsQuery, Change, Changed, Conversation, Found, HistoryPage, JsonPage,
    NewExchange, Numbered, Page, Search, SessionSummary, Store, StoreError, StoreOptions, Totals,
    finds, prefix_end,
};
use crate::domain::chatbot::Replier;
use crate::domain::models::{ConversationEntry, SessionId};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// The writer's page cache (SQLite's default is 2 MiB): the leaves that
/// random sessions' inserts land in stay in RAM.
const WRITER_CACHE_KIB: usize = 16 * 1024;
/// The log's size in pages past which the writer checkpoints after a commit.
const WRITER_CHECKPOINT_PAGES: usize = 4000;
/// Reader connections: reads the cache cannot answer run on at most this
/// many at once (more would only take memory: each has its page cache).
const READERS: usize = 4;
/// Each reader's page cache: a cold read touches a session's few pages once.
const READER_CACHE_KIB: usize = 1024;

/// A SQLite file with a RAM cache in front.
pub struct SqliteStore {
    cache: Arc<Mutex<Cache>>,
    /// Exchanges in the writer's log, not yet in the tables queries read.
    logged: Arc<AtomicUsize>,
    readers: Readers,
    writes: Writes,
    stats: Arc<CommitStats>,
    /// The open file holding the lock that keeps other processes out.
    lock: Mutex<Option<File>>,
}

fn unavailable(err: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        unavailable(err)
    }
}

impl From<rusqlite::types::FromSqlError> for StoreError {
    fn from(err: rusqlite::types::FromSqlError) -> Self {
        unavailable(err)
    }
}

/// Settings of every connection: write-ahead log, cascading deletes. The
/// writer's commits do not wait for the disk; its syncer does (see [`writer`]).
const CONNECTION_SETUP: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
     PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;";

impl SqliteStore {
    /// Exchanges the writer's log holds before it folds them into the tables.
    pub const FOLD_ROWS: usize = writer::FOLD_ROWS;
    /// Sessions the writer's log holds before it folds them, whatever their
    /// exchanges (the writer keeps each one's context until then).
    pub const FOLD_SESSIONS: usize = writer::FOLD_SESSIONS;

    /// Opens (or creates) the file at `path`, runs the migrations and starts
    /// the writer. Fails if another process has the file open as a store.
    pub async fn open(path: &str, options: StoreOptions) -> Result<Self, StoreError> {
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(unavailable)?;
        lock.try_lock().map_err(|_| {
            StoreError::Unavailable(
                "the file is in use by another chatbot-api process (one process per SQLite file; \
                 use PostgreSQL to share a database)"
                    .into(),
            )
        })?;
        // Migrations as sqlx writes them, so files of earlier versions open.
        let mut migrating = SqliteConnectOptions::from_str(path)
            .map_err(unavailable)?
            .create_if_missing(true)
            .connect()
            .await
            .map_err(unavailable)?;
        MIGRATIONS
            .run(&mut migrating)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migration failed: {e}")))?;
        sqlx::Connection::close(migrating)
            .await
            .map_err(unavailable)?;

        let path = PathBuf::from(path);
        let mut conn = open_connection(&path).map_err(unavailable)?;
        // What a crash left in the log, into the tables before any read.
        writer::fold(&mut conn).map_err(unavailable)?;
        // The checkpointer copies the log into the database file in the
        // background; what is left for the writer's own checkpoint (which
        // alone can start the log afresh) is then small.
        conn.execute_batch(&format!(
            "PRAGMA wal_autocheckpoint = {WRITER_CHECKPOINT_PAGES}; PRAGMA cache_size = -{WRITER_CACHE_KIB};"
        ))
        .map_err(unavailable)?;
        let checkpointer = open_connection(&path).map_err(unavailable)?;
        let cache = Arc::new(Mutex::new(Cache::new(options.cache_bytes)));
        let stats = Arc::new(CommitStats::default());
        let logged = Arc::new(AtomicUsize::new(0));
        let (writes, queue) = Writes::channel();
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        writer::spawn(
            conn,
            checkpointer,
            wal.into(),
            options.sync,
            options.caps,
            cache.clone(),
            stats.clone(),
            logged.clone(),
            queue,
        )
        .map_err(unavailable)?;
        Ok(Self {
            cache,
            logged,
            readers: Readers::new(path)?,
            writes,
            stats,
            lock: Mutex::new(Some(lock)),
        })
    }

    /// Group-commit counters since start.
    pub fn commit_stats(&self) -> Arc<CommitStats> {
        self.stats.clone()
    }

    /// Bytes and sessions in the read cache.
    pub fn cache_usage(&self) -> (usize, usize) {
        self.cache().usage()
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        // Every cache change checks first, then changes: a panic elsewhere
        // cannot leave it half-updated.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `read` on a reader connection once the tables hold every write
    /// answered so far: if the writer's log holds exchanges, it folds them
    /// first (and the read waits for that fold to be on disk).
    async fn query<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.settle().await?;
        self.readers.run(read).await
    }

    /// Waits until the tables hold every write answered so far (a fold of
    /// the writer's log, if it holds anything).
    async fn settle(&self) -> Result<(), StoreError> {
        if self.logged.load(Ordering::Acquire) > 0 {
            self.writes.settle().await?;
        }
        Ok(())
    }

    /// Reads a session that is not cached from the file (its row, then its
    /// exchanges by their primary key), answers `read` from it, and caches
    /// it if nothing wrote to it meanwhile. `None` when the file has no
    /// such session.
    async fn cold<T>(
        &self,
        key: &str,
        read: impl FnOnce(&Session, &Replies) -> T,
    ) -> Result<Option<T>, StoreError> {
        let ticket = self.cache().begin_load();
        let replies = ticket.replies.clone();
        let owned_key = key.to_owned();
        let cache = self.cache.clone();
        let loaded = self
            .query(move |conn| load(conn, &owned_key, replies, &cache))
            .await;
        let (session, replies) = match loaded {
            Ok(loaded) => loaded,
            Err(err) => {
                self.cache().finish_load(key, None, ticket);
                return Err(err);
            }
        };
        let answer = session.as_ref().map(|s| read(s, &replies));
        self.cache().finish_load(key, session, ticket);
        Ok(answer)
    }
}

/// A connection with the store's settings.
fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.execute_batch(CONNECTION_SETUP)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// The most exchanges, and bytes of their text, a session read from the
/// file is made with room for before its rows come in.
const PRESIZE_EXCHANGES: usize = 1 << 16;
const PRESIZE_TEXT: usize = 16 << 20;

/// A session's id and count, then its exchanges.
const SELECT_SESSION_COUNT: &str = "SELECT id, message_count FROM sessions WHERE session_id = ?1";
const SELECT_SESSION: &str = "\
    SELECT user_message, bot_reply, user_name, created_at FROM exchanges \
    WHERE session_ref = ?1 ORDER BY seq";

const SELECT_SUMMARY: &str = "\
    SELECT session_id, message_count, first_at, last_at FROM sessions WHERE session_id = ?1";

/// Sessions after `?1` and before `?2` (unless empty), in byte order: an
/// owner's sessions are one range of keys.
const SELECT_SESSIONS: &str = "\
    SELECT session_id, message_count, first_at, last_at FROM sessions \
    WHERE session_id > ?1 AND (?2 = '' OR session_id < ?2) AND message_count > 0 \
    ORDER BY session_id LIMIT ?3";

const TOTALS: &str = "\
    SELECT count(*), coalesce(sum(message_count), 0) FROM sessions WHERE message_count > 0";

const SEARCH: &str = "\
    SELECT s.session_id, e.user_message, e.bot_reply, e.user_name, e.created_at \
    FROM exchanges e JOIN sessions s ON s.id = e.session_ref \
    WHERE chatbot_finds(e.user_message, e.bot_reply, ?1) AND (?2 = '' OR s.session_id = ?2) \
    AND s.session_id >= ?4 AND (?5 = '' OR s.session_id < ?5) \
    ORDER BY e.created_at DESC, s.session_id DESC, e.seq DESC LIMIT ?3";

/// A whole session from the file, in the compact form, and the store's
/// replies it refers to. A reply that repeats in the session (a rule's) is
/// kept once for the whole store, as a written one would be.
fn load(
    conn: &Connection,
    key: &str,
    mut replies: Replies,
    cache: &Mutex<Cache>,
) -> Result<(Option<Session>, Replies), StoreError> {
    let found = conn
        .prepare_cached(SELECT_SESSION_COUNT)?
        .query_row([key], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
        })
        .optional()?;
    let Some((id, count)) = found else {
        return Ok((None, replies));
    };
    let mut statement = conn.prepare_cached(SELECT_SESSION)?;
    let mut rows = statement.query([id])?;
    // The row's count sizes the session, within reason: another program
    // may have written any number there.
    let count = usize::try_from(count).unwrap_or(0).min(PRESIZE_EXCHANGES);
    let mut session = Session::with_capacity(count);
    let mut seen: HashSet<Box<[u8]>> = HashSet::new();
    // Texts are checked as UTF-8 only where they are new: a reply the store
    // already keeps, or the same name as the row before, is known good.
    let mut name = String::new();
    while let Some(row) = rows.next()? {
        let message = row.get_ref(0)?.as_str()?;
        let reply_bytes = row.get_ref(1)?.as_bytes()?;
        let mut shared = replies.known_bytes(reply_bytes);
        if session.is_empty() {
            // Room for all the text, guessing from the first: no growing
            // (a copy each time) while 100 rows come in.
            let inline = if shared.is_some() {
                0
            } else {
                reply_bytes.len()
            };
            let text = count.saturating_mul(message.len() + inline);
            session.reserve_text(text.min(PRESIZE_TEXT));
        }
        if shared.is_none() && !seen.insert(reply_bytes.into()) {
            // Twice in this session: kept once for the store from now on.
            let text = utf8(reply_bytes)?;
            replies = cache
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .intern_reply(text);
            shared = replies.known_bytes(reply_bytes);
        }
        let reply = match shared.and_then(|index| replies.text(index)) {
            Some(text) => text,
            None => utf8(reply_bytes)?,
        };
        let name_bytes = row.get_ref(2)?.as_bytes()?;
        if name_bytes != name.as_bytes() {
            name = utf8(name_bytes)?.to_owned();
        }
        session.push_read(message, reply, shared, &name, row.get(3)?)?;
    }
    Ok(((!session.is_empty()).then_some(session), replies))
}

/// A text column's bytes as text, or the error `as_str` gives.
fn utf8(bytes: &[u8]) -> Result<&str, StoreError> {
    std::str::from_utf8(bytes)
        .map_err(|err| rusqlite::types::FromSqlError::Other(Box::new(err)).into())
}

fn summary_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SessionSummary> {
    Ok(SessionSummary {
        session_id: row.get(0)?,
        total_messages: usize::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
        first_at: row.get(2)?,
        last_at: row.get(3)?,
    })
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A read for a reader thread: it gets the thread's connection, or why
/// there is none.
type ReadJob = Box<dyn FnOnce(Result<&Connection, StoreError>) + Send>;

/// Reads the cache cannot answer: [`READERS`] threads, each with its own
/// connection (opened on first need and kept), taking reads from one queue.
/// A busy reader takes the next read without sleeping, so under load a read
/// costs no thread wake-up of its own, where a blocking task per read cost
/// two task switches (a third of a cold read; benches/README.md).
struct Readers {
    jobs: crossbeam_channel::Sender<ReadJob>,
}

impl Readers {
    fn new(path: PathBuf) -> Result<Self, StoreError> {
        let (jobs, queue) = crossbeam_channel::unbounded::<ReadJob>();
        for _ in 0..READERS {
            let (queue, path) = (queue.clone(), path.clone());
            std::thread::Builder::new()
                .name("sqlite-reader".into())
                .spawn(move || read_loop(&path, &queue))
                .map_err(|err| StoreError::Unavailable(format!("no reader thread: {err}")))?;
        }
        Ok(Self { jobs })
    }

    async fn run<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (done, answer) = tokio::sync::oneshot::channel();
        let job: ReadJob = Box::new(move |conn| {
            // The request may have gone (its client hung up): nothing to do.
            let _ = done.send(conn.and_then(read));
        });
        let stopped = || StoreError::Unavailable("the readers stopped".into());
        self.jobs.send(job).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// One reader thread: runs reads until the store is dropped.
fn read_loop(path: &Path, queue: &crossbeam_channel::Receiver<ReadJob>) {
    let mut kept: Option<Connection> = None;
    while let Ok(job) = queue.recv() {
        match kept.take().map_or_else(|| open_reader(path), Ok) {
            Ok(conn) => {
                // A read that panics (a bug) fails its request alone: its
                // answer is dropped (a 503), the thread goes on, and the
                // connection it may have left mid-statement is not reused.
                let ran = std::panic::catch_unwind(AssertUnwindSafe(|| job(Ok(&conn))));
                if ran.is_ok() {
                    kept = Some(conn);
                }
            }
            // Not opened: the read gets why, the next one tries again.
            Err(err) => job(Err(err)),
        }
    }
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = open_connection(path)?;
    conn.execute_batch(&format!("PRAGMA cache_size = -{READER_CACHE_KIB};"))?;
    register_finds(&conn)?;
    Ok(conn)
}

/// `chatbot_finds(message, reply, text)`: whether a search for `text`
/// finds the exchange ([`finds`]). Text that
/// is not UTF-8 (written by another program) is searched as if it were.
fn register_finds(conn: &Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    conn.create_scalar_function(
        "chatbot_finds",
        3,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let text = String::from_utf8_lossy(ctx.get_raw(2).as_bytes()?);
            Ok(finds(
                ctx.get_raw(0).as_bytes()?,
                ctx.get_raw(1).as_bytes()?,
                &text,
            ))
        },
    )
}

#[async_trait]
impl Store for SqliteStore {
    async fn append(
        &self,
        session: &SessionId,
        exchange: NewExchange,
        replier: Arc<dyn Replier>,
    ) -> Result<Numbered, StoreError> {
        self.writes.append(session, exchange, replier).await
    }

    async fn change(&self, session: &SessionId, change: Change) -> Result<Changed, StoreError> {
        self.writes.change(session, change).await
    }

    async fn conversation(
        &self,
        session: &str,
        exchanges: bool,
    ) -> Result<Option<Conversation>, StoreError> {
        let key = session.to_owned();
        self.query(move |conn| change::read(conn, &key, exchanges))
            .await
    }

    async fn history(&self, session: &str, page: Page) -> Result<Option<HistoryPage>, StoreError> {
        if let Some(found) = self.cache().entries(session, page) {
            return Ok(Some(found));
        }
        self.cold(session, |s, replies| s.entries(page, replies.list()))
            .await
    }

    async fn history_json(
        &self,
        session: &str,
        page: Page,
    ) -> Result<Option<JsonPage>, StoreError> {
        let cached = self.cache().page(session, page);
        let copy = match cached {
            Some(copy) => Some(copy),
            None => {
                self.cold(session, |s, replies| s.copy_page(page, replies.list()))
                    .await?
            }
        };
        Ok(copy.map(|copy| copy.into_json()))
    }

    async fn summary(&self, session: &str) -> Result<Option<SessionSummary>, StoreError> {
        if let Some(summary) = self.cache().summary(session) {
            return Ok(Some(summary));
        }
        let key = session.to_owned();
        let row = self
            .query(move |conn| {
                use rusqlite::OptionalExtension;
                Ok(conn
                    .prepare_cached(SELECT_SUMMARY)?
                    .query_row([key], summary_row)
                    .optional()?)
            })
            .await?;
        Ok(row.filter(|s| s.total_messages > 0))
    }

    async fn sessions(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SessionSummary>, StoreError> {
        let from = after.unwrap_or(prefix).to_owned();
        let to = prefix_end(prefix).unwrap_or_default();
        self.query(move |conn| {
            Ok(conn
                .prepare_cached(SELECT_SESSIONS)?
                .query_map(params![from, to, to_i64(limit)], summary_row)?
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn delete(&self, session: &str) -> Result<bool, StoreError> {
        self.writes.delete(session).await
    }

    async fn search(&self, search: &Search) -> Result<Vec<Found>, StoreError> {
        let text = search.text.clone();
        let only = search.session_id.clone().unwrap_or_default();
        let from = search.prefix.clone();
        let to = prefix_end(&search.prefix).unwrap_or_default();
        let limit = to_i64(search.limit);
        self.query(move |conn| {
            let found = conn
                .prepare_cached(SEARCH)?
                .query_map(params![text, only, limit, from, to], |row| {
                    Ok(Found {
                        session_id: row.get(0)?,
                        entry: ConversationEntry {
                            user_message: Arc::from(row.get_ref(1)?.as_str()?),
                            bot_reply: Arc::from(row.get_ref(2)?.as_str()?),
                            user_name: Arc::from(row.get_ref(3)?.as_str()?),
                            timestamp: row.get(4)?,
                        },
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(found)
        })
        .await
    }

    async fn analytics(&self, query: &AnalyticsQuery) -> Result<AnalyticsCounts, StoreError> {
        let query = query.clone();
        self.query(move |conn| analytics::read(conn, &query)).await
    }

    async fn totals(&self) -> Result<Totals, StoreError> {
        self.query(|conn| {
            Ok(conn.prepare_cached(TOTALS)?.query_row([], |row| {
                Ok(Totals {
                    sessions: row.get::<_, i64>(0)? as u64,
                    exchanges: row.get::<_, i64>(1)? as u64,
                })
            })?)
        })
        .await
    }

    async fn clear(&self) -> Result<(), StoreError> {
        self.writes.clear().await
    }

    async fn expire(&self, before: i64) -> Result<usize, StoreError> {
        self.writes.expire(before).await
    }

    async fn close(&self) {
        // The file whole in its tables, for whatever opens it next.
        if let Err(err) = self.settle().await {
            tracing::warn!(error = %err, "the log could not be folded at close; the next start does");
        }
        let (commits, exchanges) = self.stats.snapshot();
        tracing::info!(commits, exchanges, "group commit totals");
        // Let another store (a restart in the same process) open the file.
        self.lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read that panics fails alone: more reads than there are reader
    /// threads, each after a panicking one, are all answered.
    #[tokio::test]
    async fn a_panicking_read_fails_its_request_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        Connection::open(&path).unwrap();
        let readers = Readers::new(path).unwrap();
        for _ in 0..2 * READERS {
            let failed = readers
                .run(|_| -> Result<(), StoreError> { panic!("a bug in a read") })
                .await;
            assert!(matches!(failed, Err(StoreError::Unavailable(_))));
            let answered = readers
                .run(|conn| Ok(conn.query_row("SELECT 41 + 1", [], |row| row.get::<_, i64>(0))?))
                .await;
            assert_eq!(answered.unwrap(), 42);
        }
    }
}
