//! The durable store: SQLite or PostgreSQL through one `AnyPool`.
//!
//! The SQL is shared by both dialects; only migrations and connection
//! settings differ. Reads go straight to the pool; every write goes through
//! the commit task in [`writer`], which groups appends into one transaction
//! and answers them only once it has committed.

mod writer;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyConnection, AnyPool, Connection, Executor, FromRow};
use tokio::sync::{mpsc, oneshot};

pub use writer::CommitStats;
use writer::{Command, ContextCache, MAX_BATCH, Pending, commit_loop};

use super::{
    Caps, Found, HistoryPage, NewExchange, Page, Search, SessionSummary, Store, StoreError,
    contains_pattern, prefix_end,
};
use crate::chatbot::Replier;
use crate::models::{ConversationEntry, SessionId};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// Commands allowed to queue before callers wait.
const QUEUE_DEPTH: usize = 8 * MAX_BATCH;
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

    /// Compare text by bytes (code points), as the memory store does, not by
    /// the database's locale.
    fn byte_order(self) -> &'static str {
        match self {
            Self::Sqlite => "",
            Self::Postgres => " COLLATE \"C\"",
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

const SELECT_SUMMARY: &str = "\
    SELECT session_id, message_count, first_at, last_at FROM sessions WHERE session_id = $1";

const SELECT_PAGE: &str = "\
    SELECT user_message, bot_reply, user_name, created_at FROM exchanges \
    WHERE session_ref = (SELECT id FROM sessions WHERE session_id = $1) AND seq > $2 AND seq <= $3 \
    ORDER BY seq";

/// Sessions after `$1` and before `$2` (unless empty), in byte order: an
/// owner's sessions are one range of keys.
fn select_sessions_sql(dialect: Dialect) -> String {
    let c = dialect.byte_order();
    format!(
        "SELECT session_id, message_count, first_at, last_at FROM sessions \
         WHERE session_id{c} > $1 AND ($2 = '' OR session_id{c} < $2) \
         ORDER BY session_id{c} LIMIT $3"
    )
}

fn search_sql(dialect: Dialect) -> String {
    let c = dialect.byte_order();
    format!(
        "SELECT s.session_id, e.user_message, e.bot_reply, e.user_name, e.created_at \
         FROM exchanges e JOIN sessions s ON s.id = e.session_ref \
         WHERE e.search_text LIKE $1 ESCAPE '\\' AND ($2 = '' OR s.session_id = $2) \
         AND s.session_id{c} >= $4 AND ($5 = '' OR s.session_id{c} < $5) \
         ORDER BY e.created_at DESC, s.session_id{c} DESC, e.seq DESC LIMIT $3"
    )
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

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A SQLite- or PostgreSQL-backed store with group commit.
pub struct SqlStore {
    pool: AnyPool,
    dialect: Dialect,
    writer: mpsc::Sender<Command>,
    stats: Arc<CommitStats>,
}

impl SqlStore {
    /// Connects, runs the dialect's migrations and starts the commit task.
    ///
    /// A database that cannot be reached fails here, with the driver's own
    /// reason, rather than on the first request.
    pub async fn connect(
        dialect: Dialect,
        url: &str,
        pool_size: u32,
        caps: Caps,
    ) -> Result<Self, StoreError> {
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
        tokio::spawn(commit_loop(pool.clone(), queue, stats.clone(), cache, caps));
        Ok(Self {
            pool,
            dialect,
            writer,
            stats,
        })
    }

    /// Group-commit counters since start.
    pub fn commit_stats(&self) -> Arc<CommitStats> {
        self.stats.clone()
    }

    /// Hands `command` to the commit task and waits for its answer.
    async fn submit<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> Result<T, StoreError> {
        let gone = || StoreError::Unavailable("commit task stopped".into());
        let (done, answer) = oneshot::channel();
        self.writer.send(command(done)).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
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
        self.submit(|done| {
            Command::Append(Pending {
                session: session.clone(),
                exchange,
                replier,
                done,
            })
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn history(&self, session: &str, page: Page) -> Result<Option<HistoryPage>, StoreError> {
        let Some(summary) = self.summary(session).await? else {
            return Ok(None);
        };
        // seq runs 1..=total without gaps; reading no further than the count
        // just read keeps the page consistent with its total.
        let end = page.limit.map_or(summary.total_messages, |l| {
            page.offset.saturating_add(l).min(summary.total_messages)
        });
        let rows: Vec<ExchangeRow> = sqlx::query_as(SELECT_PAGE)
            .bind(session)
            .bind(to_i64(page.offset))
            .bind(to_i64(end))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(Some(HistoryPage {
            total: summary.total_messages,
            entries: rows.into_iter().map(Into::into).collect(),
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
        let sql = select_sessions_sql(self.dialect);
        let rows: Vec<SummaryRow> = sqlx::query_as(&sql)
            .bind(after.unwrap_or(prefix))
            .bind(prefix_end(prefix).unwrap_or_default())
            .bind(to_i64(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn delete(&self, session: &str) -> Result<bool, StoreError> {
        let session = session.to_owned();
        self.submit(|done| Command::Delete { session, done }).await
    }

    #[tracing::instrument(skip_all)]
    async fn search(&self, search: &Search) -> Result<Vec<Found>, StoreError> {
        let sql = search_sql(self.dialect);
        let rows: Vec<FoundRow> = sqlx::query_as(&sql)
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

    async fn clear(&self) -> Result<(), StoreError> {
        self.submit(|done| Command::Clear { done }).await
    }

    async fn expire(&self, before: i64) -> Result<usize, StoreError> {
        self.submit(|done| Command::Expire { before, done }).await
    }

    async fn close(&self) {
        let (commits, exchanges) = self.stats.snapshot();
        tracing::info!(commits, exchanges, "group commit totals");
        self.pool.close().await;
    }
}
