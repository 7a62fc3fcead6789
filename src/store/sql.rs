//! The durable store: SQLite or PostgreSQL through one `AnyPool`.
//!
//! The SQL below is shared by both dialects; only migrations and connection
//! settings differ. Writes go through one group-commit task: it takes every
//! pending exchange, writes them in one transaction, commits once, and only
//! then answers each of them. A 200 therefore always means committed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyConnection, AnyPool, Connection, Executor, FromRow};
use tokio::sync::{mpsc, oneshot};

use super::{Store, StoreError};
use crate::models::{ConversationEntry, SessionId};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// The most exchanges written in one transaction.
const MAX_BATCH: usize = 512;
/// Pending writes allowed to queue before `append` waits.
const QUEUE_DEPTH: usize = 4096;
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

const UPSERT_SESSION: &str = "\
    INSERT INTO sessions (session_id, message_count, first_at, last_at) VALUES ($1, 1, $2, $2) \
    ON CONFLICT (session_id) DO UPDATE \
    SET message_count = sessions.message_count + 1, last_at = excluded.last_at \
    RETURNING id, message_count";

const INSERT_EXCHANGE: &str = "\
    INSERT INTO exchanges (session_ref, seq, user_message, bot_reply, user_name, created_at) \
    VALUES ($1, $2, $3, $4, $5, $6)";

const SELECT_HISTORY: &str = "\
    SELECT e.user_message, e.bot_reply, e.user_name, e.created_at \
    FROM exchanges e JOIN sessions s ON s.id = e.session_ref \
    WHERE s.session_id = $1 ORDER BY e.seq";

const SELECT_RECENT: &str = "\
    SELECT e.user_message, e.bot_reply, e.user_name, e.created_at \
    FROM exchanges e JOIN sessions s ON s.id = e.session_ref \
    WHERE s.session_id = $1 ORDER BY e.seq DESC LIMIT $2";

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
    entry: ConversationEntry,
    done: oneshot::Sender<Result<(), StoreError>>,
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
        tokio::spawn(commit_loop(pool.clone(), queue, stats.clone()));
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
async fn commit_loop(pool: AnyPool, mut queue: mpsc::Receiver<Pending>, stats: Arc<CommitStats>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let result = write_batch(&pool, &batch).await;
        if let Err(err) = &result {
            tracing::error!(error = %err, exchanges = batch.len(), "group commit failed");
        } else {
            stats.commits.fetch_add(1, Ordering::Relaxed);
            stats
                .exchanges
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        let result = result.map_err(unavailable);
        for pending in batch.drain(..) {
            let _ = pending.done.send(result.clone());
        }
    }
}

#[tracing::instrument(skip_all, fields(exchanges = batch.len()))]
async fn write_batch(pool: &AnyPool, batch: &[Pending]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for pending in batch {
        let (session_ref, seq): (i64, i64) = sqlx::query_as(UPSERT_SESSION)
            .bind(pending.session.as_str())
            .bind(pending.entry.timestamp)
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query(INSERT_EXCHANGE)
            .bind(session_ref)
            .bind(seq)
            .bind(&*pending.entry.user_message)
            .bind(&*pending.entry.bot_reply)
            .bind(&*pending.entry.user_name)
            .bind(pending.entry.timestamp)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

#[async_trait]
impl Store for SqlStore {
    #[tracing::instrument(skip_all)]
    async fn recent(
        &self,
        session: &SessionId,
        n: usize,
    ) -> Result<Vec<ConversationEntry>, StoreError> {
        let rows: Vec<ExchangeRow> = sqlx::query_as(SELECT_RECENT)
            .bind(session.as_str())
            .bind(i64::try_from(n).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(rows.into_iter().rev().map(Into::into).collect())
    }

    #[tracing::instrument(skip_all)]
    async fn append(
        &self,
        session: &SessionId,
        entry: ConversationEntry,
    ) -> Result<ConversationEntry, StoreError> {
        let (done, committed) = oneshot::channel();
        let pending = Pending {
            session: session.clone(),
            entry: entry.clone(),
            done,
        };
        let gone = || StoreError::Unavailable("commit task stopped".into());
        self.writer.send(pending).await.map_err(|_| gone())?;
        committed.await.map_err(|_| gone())??;
        Ok(entry)
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
