//! The durable store: SQLite or PostgreSQL through one `AnyPool`.
//!
//! The SQL below is shared by both dialects; only migrations and connection
//! settings differ. Writes go through one group-commit task: it takes every
//! pending exchange, writes them in one transaction, commits once, and only
//! then answers each of them. A 200 therefore always means committed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyConnection, AnyPool, Connection, Executor, FromRow};
use tokio::sync::{mpsc, oneshot};

use super::{NewExchange, Store, StoreError};
use crate::chatbot::{CONTEXT_EXCHANGES, Replier};
use crate::models::{ConversationEntry, SessionId};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// The most exchanges written in one transaction.
const MAX_BATCH: usize = 512;
/// Pending writes allowed to queue before `append` waits.
const QUEUE_DEPTH: usize = 4096;
/// Sessions whose recent exchanges the SQLite commit task keeps in memory.
const CONTEXT_CACHE_SESSIONS: usize = 10_000;
/// How long a request waits for a connection before answering 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Which SQL database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    fn migrator(self) -> &'static Migrator {
        match self {
            Self::Sqlite => &SQLITE_MIGRATIONS,
            Self::Postgres => &POSTGRES_MIGRATIONS,
        }
    }

    /// Per-connection settings. SQLite: write-ahead log with a full fsync at
    /// every commit, so that a committed exchange survives power loss.
    fn session_setup(self) -> &'static str {
        match self {
            Self::Sqlite => {
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                 PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;"
            }
            Self::Postgres => "",
        }
    }
}

/// Rows per multi-row `INSERT`, well under both dialects' parameter limits.
const ROWS_PER_INSERT: usize = 256;

/// `INSERT … VALUES ($1, …), (…)` for `rows` rows of `columns` columns.
fn insert_sql(head: &str, rows: usize, columns: usize, tail: &str) -> String {
    let mut sql = String::with_capacity(head.len() + tail.len() + rows * columns * 6);
    sql.push_str(head);
    sql.push_str(" VALUES ");
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..columns {
            if column > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", row * columns + column + 1));
        }
        sql.push(')');
    }
    sql.push(' ');
    sql.push_str(tail);
    sql
}

/// Adds `k` exchanges to each session row (creating missing ones) and returns
/// each session's row id and new count. Rows lock in `session_id` order, so
/// two instances committing overlapping batches cannot deadlock.
fn upsert_sessions_sql(sessions: usize) -> String {
    insert_sql(
        "INSERT INTO sessions (session_id, message_count, first_at, last_at)",
        sessions,
        4,
        "ON CONFLICT (session_id) DO UPDATE \
         SET message_count = sessions.message_count + excluded.message_count, last_at = excluded.last_at \
         RETURNING id, session_id, message_count",
    )
}

fn insert_exchanges_sql(rows: usize) -> String {
    insert_sql(
        "INSERT INTO exchanges (session_ref, seq, user_message, bot_reply, user_name, created_at)",
        rows,
        6,
        "",
    )
}

const SELECT_HISTORY: &str = "\
    SELECT e.user_message, e.bot_reply, e.user_name, e.created_at \
    FROM exchanges e JOIN sessions s ON s.id = e.session_ref \
    WHERE s.session_id = $1 ORDER BY e.seq";

/// The latest exchanges of the batch's sessions, read after their rows are
/// locked, so each reply sees exactly the history before it. `$1` is the
/// window; the rest are session row ids.
fn select_context_sql(sessions: usize) -> String {
    let ids: Vec<String> = (0..sessions).map(|i| format!("${}", i + 2)).collect();
    format!(
        "SELECT e.session_ref, e.user_message, e.bot_reply, e.user_name, e.created_at \
         FROM exchanges e JOIN sessions s ON s.id = e.session_ref \
         WHERE e.session_ref IN ({}) AND e.seq > s.message_count - $1 \
         ORDER BY e.session_ref, e.seq",
        ids.join(", ")
    )
}

#[derive(FromRow)]
struct ContextRow {
    session_ref: i64,
    #[sqlx(flatten)]
    exchange: ExchangeRow,
}

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

/// One exchange waiting for the next group commit.
struct Pending {
    session: SessionId,
    exchange: NewExchange,
    replier: Arc<dyn Replier>,
    done: oneshot::Sender<Result<ConversationEntry, StoreError>>,
}

/// How many exchanges went into how many commits, for the benchmarks.
#[derive(Debug, Default)]
pub struct CommitStats {
    commits: AtomicU64,
    exchanges: AtomicU64,
}

impl CommitStats {
    /// (commits, exchanges) so far.
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.commits.load(Ordering::Relaxed),
            self.exchanges.load(Ordering::Relaxed),
        )
    }
}

/// A SQLite- or PostgreSQL-backed store with group commit.
pub struct SqlStore {
    pool: AnyPool,
    writer: mpsc::Sender<Pending>,
    stats: Arc<CommitStats>,
}

fn unavailable(err: sqlx::Error) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

impl SqlStore {
    /// Connects, runs the dialect's migrations and starts the commit task.
    ///
    /// A database that cannot be reached fails here, with the driver's own
    /// reason, rather than on the first request.
    pub async fn connect(dialect: Dialect, url: &str, pool_size: u32) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let options: AnyConnectOptions = url.parse().map_err(unavailable)?;
        let mut probe = AnyConnection::connect_with(&options)
            .await
            .map_err(unavailable)?;
        probe
            .execute(dialect.session_setup())
            .await
            .map_err(unavailable)?;
        probe.close().await.map_err(unavailable)?;

        let pool = AnyPoolOptions::new()
            .max_connections(pool_size.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // A local file cannot vanish; a server can, so check its connections.
            .test_before_acquire(dialect == Dialect::Postgres)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    conn.execute(dialect.session_setup()).await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(unavailable)?;
        dialect
            .migrator()
            .run(&pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migration failed: {e}")))?;

        let (writer, queue) = mpsc::channel(QUEUE_DEPTH);
        let stats = Arc::new(CommitStats::default());
        // Only SQLite has a single writer, so only there can a cache of recent
        // exchanges never go stale; PostgreSQL instances share their writes.
        let cache = (dialect == Dialect::Sqlite).then(ContextCache::default);
        tokio::spawn(commit_loop(pool.clone(), queue, stats.clone(), cache));
        Ok(Self {
            pool,
            writer,
            stats,
        })
    }

    /// Group-commit counters since start.
    pub fn commit_stats(&self) -> Arc<CommitStats> {
        self.stats.clone()
    }
}

/// Takes every pending exchange, writes them in one transaction, commits,
/// then answers them all with the commit's outcome.
async fn commit_loop(
    pool: AnyPool,
    mut queue: mpsc::Receiver<Pending>,
    stats: Arc<CommitStats>,
    mut cache: Option<ContextCache>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        match write_batch(&pool, &batch, cache.as_mut()).await {
            Ok(entries) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats
                    .exchanges
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                for (pending, entry) in batch.drain(..).zip(entries) {
                    let _ = pending.done.send(Ok(entry));
                }
            }
            Err(err) => {
                tracing::error!(error = %err, exchanges = batch.len(), "group commit failed");
                let err = unavailable(err);
                for pending in batch.drain(..) {
                    let _ = pending.done.send(Err(err.clone()));
                }
            }
        }
    }
}

/// The latest exchanges of recently written sessions, owned by the commit
/// task. Valid only while that task is the database's one writer.
#[derive(Default)]
struct ContextCache {
    sessions: HashMap<String, Vec<ConversationEntry>>,
}

impl ContextCache {
    fn remember(&mut self, session: &str, window: &[ConversationEntry]) {
        if self.sessions.len() >= CONTEXT_CACHE_SESSIONS && !self.sessions.contains_key(session) {
            // Crude but bounded: start over rather than track recency.
            self.sessions.clear();
        }
        let keep = &window[window.len().saturating_sub(CONTEXT_EXCHANGES)..];
        self.sessions.insert(session.to_owned(), keep.to_vec());
    }
}

/// What one batch adds to one session.
struct Tally {
    count: i64,
    first_at: i64,
    last_at: i64,
}

/// Writes a whole batch with a fixed number of statements: one upsert for
/// all its sessions, one read of their recent history, then multi-row
/// inserts. Returns the answered exchanges in batch order.
#[tracing::instrument(skip_all, fields(exchanges = batch.len()))]
async fn write_batch(
    pool: &AnyPool,
    batch: &[Pending],
    mut cache: Option<&mut ContextCache>,
) -> Result<Vec<ConversationEntry>, sqlx::Error> {
    let mut tallies: BTreeMap<&str, Tally> = BTreeMap::new();
    for pending in batch {
        let at = pending.exchange.timestamp;
        let tally = tallies.entry(pending.session.as_str()).or_insert(Tally {
            count: 0,
            first_at: at,
            last_at: at,
        });
        tally.count += 1;
        tally.last_at = at;
    }

    let mut tx = pool.begin().await?;
    let upsert = upsert_sessions_sql(tallies.len());
    let mut query = sqlx::query_as::<_, (i64, String, i64)>(&upsert).persistent(false);
    for (session, tally) in &tallies {
        query = query
            .bind(*session)
            .bind(tally.count)
            .bind(tally.first_at)
            .bind(tally.last_at);
    }
    // Each session's row id and the seq its first exchange in this batch gets.
    let mut next_seq: HashMap<String, (i64, i64)> = HashMap::with_capacity(tallies.len());
    for (id, session, count) in query.fetch_all(&mut *tx).await? {
        let added = tallies.get(session.as_str()).map_or(0, |t| t.count);
        next_seq.insert(session, (id, count - added + 1));
    }

    // Recent history per session row: from the cache where it has it, else one read.
    let mut context: HashMap<i64, Vec<ConversationEntry>> = HashMap::with_capacity(next_seq.len());
    let mut missing = Vec::new();
    for (session, (id, _)) in &next_seq {
        match cache.as_deref().and_then(|c| c.sessions.get(session)) {
            Some(window) => {
                context.insert(*id, window.clone());
            }
            None => missing.push(*id),
        }
    }
    if !missing.is_empty() {
        let most_added = tallies.values().map(|t| t.count).max().unwrap_or(0);
        let select = select_context_sql(missing.len());
        let mut query = sqlx::query_as::<_, ContextRow>(&select)
            .persistent(false)
            .bind(CONTEXT_EXCHANGES as i64 + most_added);
        for id in &missing {
            query = query.bind(*id);
        }
        for row in query.fetch_all(&mut *tx).await? {
            context
                .entry(row.session_ref)
                .or_default()
                .push(row.exchange.into());
        }
    }

    let mut answered = Vec::with_capacity(batch.len());
    let mut rows = Vec::with_capacity(batch.len());
    for pending in batch {
        let slot = next_seq
            .get_mut(pending.session.as_str())
            .ok_or_else(|| sqlx::Error::Protocol("upsert returned no row for a session".into()))?;
        let (session_ref, seq) = *slot;
        slot.1 += 1;
        let history = context.entry(session_ref).or_default();
        let window = &history[history.len().saturating_sub(CONTEXT_EXCHANGES)..];
        let bot_reply = pending
            .replier
            .reply(&pending.exchange.user_message, window);
        let entry = pending.exchange.clone().answered(bot_reply);
        history.push(entry.clone());
        rows.push((session_ref, seq));
        answered.push(entry);
    }

    for (entries, refs) in answered
        .chunks(ROWS_PER_INSERT)
        .zip(rows.chunks(ROWS_PER_INSERT))
    {
        let insert = insert_exchanges_sql(entries.len());
        let mut query = sqlx::query(&insert).persistent(false);
        for (entry, (session_ref, seq)) in entries.iter().zip(refs) {
            query = query
                .bind(*session_ref)
                .bind(*seq)
                .bind(&*entry.user_message)
                .bind(&*entry.bot_reply)
                .bind(&*entry.user_name)
                .bind(entry.timestamp);
        }
        query.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    if let Some(cache) = cache.as_deref_mut() {
        for (session, (id, _)) in &next_seq {
            if let Some(window) = context.get(id) {
                cache.remember(session, window);
            }
        }
    }
    Ok(answered)
}

#[async_trait]
impl Store for SqlStore {
    #[tracing::instrument(skip_all)]
    async fn append(
        &self,
        session: &SessionId,
        exchange: NewExchange,
        replier: Arc<dyn Replier>,
    ) -> Result<ConversationEntry, StoreError> {
        let (done, committed) = oneshot::channel();
        let pending = Pending {
            session: session.clone(),
            exchange,
            replier,
            done,
        };
        let gone = || StoreError::Unavailable("commit task stopped".into());
        self.writer.send(pending).await.map_err(|_| gone())?;
        committed.await.map_err(|_| gone())?
    }

    #[tracing::instrument(skip_all)]
    async fn history(&self, session: &str) -> Result<Option<Vec<ConversationEntry>>, StoreError> {
        let rows: Vec<ExchangeRow> = sqlx::query_as(SELECT_HISTORY)
            .bind(session)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok((!rows.is_empty()).then(|| rows.into_iter().map(Into::into).collect()))
    }

    async fn close(&self) {
        let (commits, exchanges) = self.stats.snapshot();
        tracing::info!(commits, exchanges, "group commit totals");
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_row_inserts_number_their_parameters() {
        assert_eq!(
            insert_sql("INSERT INTO t (a, b)", 2, 2, "X"),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4) X"
        );
        assert!(upsert_sessions_sql(1).contains("VALUES ($1, $2, $3, $4) ON CONFLICT"));
        assert!(insert_exchanges_sql(3).ends_with("($13, $14, $15, $16, $17, $18) "));
    }
}
