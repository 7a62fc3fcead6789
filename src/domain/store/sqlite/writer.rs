//! The one writer of a SQLite file, and its syncer.
//!
//! The writer is a thread that owns one connection with its statements
//! prepared once. Appends queue up and are written in groups: one
//! transaction, one commit. The commit does not wait for the disk
//! (`synchronous = NORMAL`); instead the group goes to the syncer, a second
//! thread, which makes the write-ahead log durable with one `fdatasync` for
//! every group that committed meanwhile, then puts the exchanges in the read
//! cache and answers the requests. So the writer commits the next group while
//! the disk flushes the last, and a 200 still means on disk: exactly what
//! `synchronous = FULL` gives, without its wait inside every commit.
//!
//! A group's exchanges are appended to the log tables (`exchange_log_0` to
//! `_7`, each session always to the same one), whose ends are a few pages
//! for the whole group; a row in `exchanges` (clustered by session) and its
//! session's counters would each take a page of their own, and every page a
//! commit touches is written to the write-ahead log and flushed. Once a log
//! table holds its eighth of [`FOLD_ROWS`] exchanges, and before anything
//! else reads or changes the tables, the writer moves it into `exchanges`
//! and `sessions` in one transaction (a "fold"), where many exchanges share
//! each page. Until then it knows each logged session's counters and context
//! itself.
//!
//! Deletes, clears, expiries and changes go through the same queue, in
//! order, each after a fold.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use hashlink::LruCache;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};

use super::cache::Cache;
use crate::domain::chatbot::{CONTEXT_EXCHANGES, History};
use crate::domain::store::queue::{Command, CommitStats, MAX_BATCH, Pending, Reply};
use crate::domain::store::{Caps, Changed, Numbered, StoreError};

/// Sessions whose latest exchanges the writer keeps for the reply engine
/// (besides those with exchanges in the log, which it keeps until a fold).
const CONTEXT_SESSIONS: usize = 4096;

/// Exchanges in the log tables at which the writer folds them into the
/// tables, a table at a time as each holds its share: large enough that a
/// fold writes each page for many exchanges, and in eight parts so that the
/// writer pauses for each a few milliseconds (`benches/sqlite.sh`).
pub(super) const FOLD_ROWS: usize = 16384;

/// Sessions in the log tables past which the writer folds one, whatever
/// their rows: it keeps their contexts until then, so this bounds them.
pub(super) const FOLD_SESSIONS: usize = CONTEXT_SESSIONS;

/// Log tables: a session's rows go to one, chosen by [`log_table`].
const LOG_TABLES: usize = 8;

/// The log table of `session`'s rows, the same for every write of a process
/// (the log is empty when a process starts).
fn log_table(session: &str) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(session) as usize % LOG_TABLES
}

/// How a commit is made durable before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// `fdatasync` of the write-ahead log before answering: survives power
    /// loss, as `synchronous = FULL` does.
    #[default]
    Fsync,
    /// Answer once the OS has the commit: survives the process crashing,
    /// not the machine losing power or the kernel crashing.
    Os,
}

impl SyncMode {
    /// Parses `fsync` or `os`, as given to `--sync`.
    pub fn parse(value: &str) -> Result<Self, String> {
        match value {
            "fsync" => Ok(Self::Fsync),
            "os" => Ok(Self::Os),
            _ => Err("expected `fsync` or `os`".into()),
        }
    }
}

/// What the syncer does once a commit is on disk.
enum Committed {
    Appends {
        /// Each request's answer, in batch order.
        answers: Vec<(Reply, Result<Numbered, StoreError>)>,
        /// Stored exchanges: session, position (1-based), index in `answers`.
        stored: Vec<(String, usize, usize)>,
    },
    Deleted {
        session: String,
        result: Result<bool, StoreError>,
        done: oneshot::Sender<Result<bool, StoreError>>,
    },
    Changed {
        session: String,
        result: Result<Changed, StoreError>,
        done: oneshot::Sender<Result<Changed, StoreError>>,
    },
    Cleared {
        result: Result<(), StoreError>,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    Expired {
        result: Result<Vec<String>, StoreError>,
        done: oneshot::Sender<Result<usize, StoreError>>,
    },
    /// The log is folded (a failed fold refused the command before).
    Settled {
        done: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// The latest user messages and names of one session, oldest first.
#[derive(Default, Clone)]
struct Context {
    said: Vec<(Arc<str>, Arc<str>)>,
}

impl Context {
    fn push(&mut self, message: Arc<str>, name: Arc<str>) {
        if self.said.len() == CONTEXT_EXCHANGES {
            self.said.remove(0);
        }
        self.said.push((message, name));
    }
}

impl History for Context {
    fn len(&self) -> usize {
        self.said.len()
    }

    fn user_message(&self, i: usize) -> &str {
        &self.said[i].0
    }

    fn user_name(&self, i: usize) -> &str {
        &self.said[i].1
    }
}

const SELECT_COUNTERS: &str = "SELECT message_count, next_seq FROM sessions WHERE session_id = ?1";
const SELECT_CONTEXT: &str = "\
    SELECT user_message, user_name FROM (SELECT seq, user_message, user_name FROM exchanges \
    WHERE session_ref = (SELECT id FROM sessions WHERE session_id = ?1) \
    ORDER BY seq DESC LIMIT ?2) ORDER BY seq";

/// The SQL of one log table: its insert and its fold (its sessions counted
/// into `sessions`, created where new; then its exchanges into `exchanges`
/// in key order; then the table emptied). First and last times as an edit
/// computes them (change.rs): the earliest and latest.
struct LogSql {
    insert: String,
    fold: [String; 3],
}

static LOG_SQL: std::sync::LazyLock<Vec<LogSql>> = std::sync::LazyLock::new(|| {
    (0..LOG_TABLES)
        .map(|k| LogSql {
            insert: format!(
                "INSERT INTO exchange_log_{k} \
                 (session_id, seq, user_message, bot_reply, user_name, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            ),
            fold: [
                format!(
                    "INSERT INTO sessions (session_id, message_count, first_at, last_at, next_seq) \
                     SELECT session_id, count(*), min(created_at), max(created_at), max(seq) \
                     FROM exchange_log_{k} WHERE true GROUP BY session_id \
                     ON CONFLICT (session_id) DO UPDATE \
                     SET first_at = CASE WHEN message_count = 0 THEN excluded.first_at ELSE first_at END, \
                     message_count = message_count + excluded.message_count, \
                     next_seq = excluded.next_seq, last_at = max(last_at, excluded.last_at)"
                ),
                format!(
                    "INSERT INTO exchanges \
                     (session_ref, seq, user_message, bot_reply, user_name, created_at) \
                     SELECT s.id, l.seq, l.user_message, l.bot_reply, l.user_name, l.created_at \
                     FROM exchange_log_{k} l JOIN sessions s ON s.session_id = l.session_id \
                     ORDER BY s.id, l.seq"
                ),
                format!("DELETE FROM exchange_log_{k}"),
            ],
        })
        .collect()
});

/// Moves the exchanges of the given log tables into the tables, in one
/// transaction.
fn fold_log_tables(
    conn: &mut Connection,
    tables: impl Iterator<Item = usize>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for k in tables {
        for statement in &LOG_SQL[k].fold {
            tx.prepare_cached(statement)?.execute([])?;
        }
    }
    tx.commit()
}

/// Moves every exchange in the log tables into the tables (at open: what a
/// crash left).
pub(super) fn fold(conn: &mut Connection) -> rusqlite::Result<()> {
    fold_log_tables(conn, 0..LOG_TABLES)
}

/// A session with exchanges in the log: what `sessions` will say of it after
/// the fold, and its latest messages.
#[derive(Clone)]
struct Logged {
    /// Exchanges, counting those in the log.
    count: i64,
    /// The last exchange id given.
    next_seq: i64,
    /// Not in `sessions` yet: the fold creates it.
    new: bool,
    context: Context,
}

/// What the writer knows of the log tables, between folds.
#[derive(Default)]
struct Log {
    sessions: HashMap<String, Logged>,
    /// Exchanges in each.
    rows: [usize; LOG_TABLES],
}

impl Log {
    fn rows(&self) -> usize {
        self.rows.iter().sum()
    }

    /// Sessions in the log that `sessions` does not have yet.
    fn new_sessions(&self) -> usize {
        self.sessions.values().filter(|logged| logged.new).count()
    }
}

/// The writer's side: its connection, what it remembers, where it hands off.
pub(super) struct Writer {
    conn: Connection,
    context: LruCache<String, Context>,
    log: Log,
    /// Exchanges in the log, for readers: they ask for a fold when not 0.
    logged: Arc<AtomicUsize>,
    caps: Caps,
    stats: Arc<CommitStats>,
    committed: std::sync::mpsc::Sender<Committed>,
}

/// Every this many flushes, the checkpointer copies the write-ahead log into
/// the database file (at a commit of a few pages each, about 1,000 pages).
const CHECKPOINT_EVERY: u64 = 64;

/// Starts the writer, the syncer and the checkpointer on their own threads.
#[allow(clippy::too_many_arguments)]
pub(super) fn spawn(
    conn: Connection,
    checkpointer: Connection,
    wal: PathBuf,
    sync: SyncMode,
    caps: Caps,
    cache: Arc<Mutex<Cache>>,
    stats: Arc<CommitStats>,
    logged: Arc<AtomicUsize>,
    queue: mpsc::Receiver<Command>,
) -> std::io::Result<()> {
    let (committed, to_sync) = std::sync::mpsc::channel();
    let (checkpoint, checkpoints) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            // PASSIVE: copies what no reader needs, never blocks the writer.
            while checkpoints.recv().is_ok() {
                if let Err(err) = checkpointer.execute_batch("PRAGMA wal_checkpoint(PASSIVE);") {
                    tracing::warn!(error = %err, "checkpoint failed");
                }
            }
        })?;
    let syncer = Syncer {
        wal,
        file: None,
        sync,
        cache,
        stats: stats.clone(),
        checkpoint,
    };
    std::thread::Builder::new()
        .name("sqlite-sync".into())
        .spawn(move || syncer.run(to_sync))?;
    let writer = Writer {
        conn,
        context: LruCache::new(CONTEXT_SESSIONS),
        log: Log::default(),
        logged,
        caps,
        stats,
        committed,
    };
    std::thread::Builder::new()
        .name("sqlite-writer".into())
        .spawn(move || writer.run(queue))?;
    Ok(())
}

fn unavailable(err: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

/// Why a group was not committed.
#[derive(Debug)]
struct Failed(String);

impl From<rusqlite::Error> for Failed {
    fn from(err: rusqlite::Error) -> Self {
        Self(err.to_string())
    }
}

impl From<rusqlite::types::FromSqlError> for Failed {
    fn from(err: rusqlite::types::FromSqlError) -> Self {
        Self(err.to_string())
    }
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Writer {
    /// Runs until every sender is gone.
    fn run(mut self, mut queue: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = queue.blocking_recv() {
            let mut next = Some(first);
            while let Some(command) = next.take() {
                match command {
                    Command::Append(pending) => batch.push(pending),
                    other => {
                        self.commit_group(&mut batch);
                        self.run_other(other);
                    }
                }
                if batch.len() < MAX_BATCH {
                    next = queue.try_recv().ok();
                }
            }
            self.commit_group(&mut batch);
            // At most one table per group, so the pauses are spread out.
            let fullest = (0..LOG_TABLES)
                .max_by_key(|k| self.log.rows[*k])
                .unwrap_or(0);
            if self.log.rows[fullest] >= FOLD_ROWS / LOG_TABLES
                || self.log.sessions.len() > FOLD_SESSIONS
            {
                // Failing, it is tried again after the next group.
                let _ = self.fold_tables(&[fullest]);
            }
        }
    }

    fn hand_off(&self, committed: Committed) {
        // The syncer only stops once this writer has.
        let _ = self.committed.send(committed);
    }

    /// Folds every log table that holds anything, in one transaction. On
    /// failure the log stays as it was (and what the writer knows of it).
    fn fold(&mut self) -> Result<(), StoreError> {
        let tables: Vec<usize> = (0..LOG_TABLES).filter(|k| self.log.rows[*k] > 0).collect();
        self.fold_tables(&tables)
    }

    /// Folds the given log tables into the tables, in one transaction.
    fn fold_tables(&mut self, tables: &[usize]) -> Result<(), StoreError> {
        if tables.is_empty() {
            return Ok(());
        }
        let rows: usize = tables.iter().map(|k| self.log.rows[*k]).sum();
        let started = std::time::Instant::now();
        if let Err(err) = fold_log_tables(&mut self.conn, tables.iter().copied()) {
            tracing::error!(error = %err, exchanges = rows, "folding the log failed");
            return Err(unavailable(err));
        }
        tracing::debug!(?tables, exchanges = rows, elapsed = ?started.elapsed(), "log folded");
        let folded = self
            .log
            .sessions
            .extract_if(|session, _| tables.contains(&log_table(session)));
        for (session, logged) in folded {
            self.context.insert(session, logged.context);
        }
        for k in tables {
            self.log.rows[*k] = 0;
        }
        self.logged.store(self.log.rows(), Ordering::Release);
        Ok(())
    }

    fn run_other(&mut self, command: Command) {
        // Every other command reads or changes the tables: the log first.
        if let Err(err) = self.fold() {
            command.refuse(err);
            return;
        }
        match command {
            Command::Append(_) => unreachable!("appends are batched"),
            Command::Settle { done } => self.hand_off(Committed::Settled { done }),
            Command::Delete { session, done } => {
                self.context.remove(&session);
                let result = self
                    .conn
                    .prepare_cached("DELETE FROM sessions WHERE session_id = ?1")
                    .and_then(|mut statement| statement.execute([&session]))
                    .map(|deleted| deleted > 0)
                    .map_err(unavailable);
                self.hand_off(Committed::Deleted {
                    session,
                    result,
                    done,
                });
            }
            Command::Change {
                session,
                change,
                done,
            } => {
                self.context.remove(session.as_str());
                let result =
                    super::change::apply(&mut self.conn, self.caps, session.as_str(), change);
                if let Err(err) = &result {
                    tracing::debug!(error = %err, "conversation change refused or failed");
                }
                self.hand_off(Committed::Changed {
                    session: session.as_str().to_owned(),
                    result,
                    done,
                });
            }
            Command::Clear { done } => {
                self.context.clear();
                let result = self
                    .conn
                    .execute("DELETE FROM sessions", [])
                    .map(|_| ())
                    .map_err(unavailable);
                self.hand_off(Committed::Cleared { result, done });
            }
            Command::Expire { before, done } => {
                let result = self
                    .conn
                    .prepare_cached("DELETE FROM sessions WHERE last_at < ?1 RETURNING session_id")
                    .and_then(|mut statement| {
                        statement
                            .query_map([before], |row| row.get::<_, String>(0))?
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .map_err(unavailable);
                if let Ok(gone) = &result {
                    for session in gone {
                        self.context.remove(session);
                    }
                }
                self.hand_off(Committed::Expired { result, done });
            }
        }
    }

    /// Writes and commits `batch`, hands it to the syncer, and empties it.
    fn commit_group(&mut self, batch: &mut Vec<Pending>) {
        if batch.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        match self.write_batch(batch) {
            Ok((answers, stored)) => {
                self.stats.committed(stored.len() as u64);
                crate::domain::store::record_commit(stored.len(), started);
                let answers = batch.drain(..).map(|p| p.done).zip(answers).collect();
                self.hand_off(Committed::Appends { answers, stored });
            }
            Err(err) => {
                tracing::error!(error = %err, exchanges = batch.len(), "group commit failed");
                // Nothing of the group is in the file; forget what we learnt.
                for pending in batch.iter() {
                    self.context.remove(pending.session.as_str());
                }
                let err = StoreError::Unavailable(err.0);
                for pending in batch.drain(..) {
                    let _ = pending.done.send(Err(err.clone()));
                }
            }
        }
    }

    /// One transaction for the whole batch, appending to the log. Returns
    /// each request's answer and, for those stored, their session and
    /// position; what it learns of the log's sessions is kept only once the
    /// transaction has committed.
    #[allow(clippy::type_complexity)]
    fn write_batch(
        &mut self,
        batch: &[Pending],
    ) -> Result<
        (
            Vec<Result<Numbered, StoreError>>,
            Vec<(String, usize, usize)>,
        ),
        Failed,
    > {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut admitted = Admission::new(&tx, self.caps, &self.log)?;
        let mut answers = Vec::with_capacity(batch.len());
        let mut stored = Vec::with_capacity(batch.len());
        // The batch's sessions as they will be once it has committed.
        let mut staged: HashMap<&str, (Logged, bool)> = HashMap::new();
        let mut logged_rows = [0; LOG_TABLES];
        {
            let mut counters = tx.prepare_cached(SELECT_COUNTERS)?;
            let mut inserts = LOG_SQL
                .iter()
                .map(|sql| tx.prepare_cached(&sql.insert))
                .collect::<Result<Vec<_>, _>>()?;
            let mut recent = tx.prepare_cached(SELECT_CONTEXT)?;
            for (i, pending) in batch.iter().enumerate() {
                let session = pending.session.as_str();
                let (logged, wrote) = match staged.entry(session) {
                    Entry::Occupied(entry) => entry.into_mut(),
                    Entry::Vacant(entry) => {
                        let known = match self.log.sessions.get(session) {
                            Some(logged) => logged.clone(),
                            None => {
                                from_tables(session, &mut self.context, &mut counters, &mut recent)?
                            }
                        };
                        entry.insert((known, false))
                    }
                };
                if let Err(refusal) = admitted.admit(logged) {
                    answers.push(Err(refusal));
                    continue;
                }
                let exchange = &pending.exchange;
                // A panicking reply engine must not take the writer down with it.
                let bot_reply = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    pending
                        .replier
                        .reply(&exchange.user_message, &logged.context)
                }))
                .map_err(|_| Failed("the reply engine panicked".into()))?;
                logged.count += 1;
                logged.next_seq += 1;
                logged
                    .context
                    .push(exchange.user_message.clone(), exchange.user_name.clone());
                let table = log_table(session);
                inserts[table].execute(params![
                    session,
                    logged.next_seq,
                    &*exchange.user_message,
                    &*bot_reply,
                    &*exchange.user_name,
                    exchange.timestamp,
                ])?;
                *wrote = true;
                logged_rows[table] += 1;
                stored.push((session.to_owned(), logged.count as usize, i));
                answers.push(Ok(Numbered {
                    seq: logged.next_seq as u64,
                    entry: exchange.clone().answered(bot_reply),
                }));
            }
        }
        tx.commit()?;
        for (session, (logged, wrote)) in staged {
            // A session whose every exchange was refused is as it was.
            if !wrote {
                continue;
            }
            self.context.remove(session);
            self.log.sessions.insert(session.to_owned(), logged);
        }
        for (rows, added) in self.log.rows.iter_mut().zip(logged_rows) {
            *rows += added;
        }
        self.logged.store(self.log.rows(), Ordering::Release);
        Ok((answers, stored))
    }
}

/// A session that has nothing in the log, as the tables have it: counters
/// from its row (a new one if none), context from the writer's cache or
/// else its latest exchanges.
fn from_tables(
    session: &str,
    contexts: &mut LruCache<String, Context>,
    counters: &mut rusqlite::CachedStatement<'_>,
    recent: &mut rusqlite::CachedStatement<'_>,
) -> Result<Logged, Failed> {
    let row: Option<(i64, i64)> = counters
        .query_row([session], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let context = match contexts.get(session) {
        Some(context) => context.clone(),
        None => {
            let mut context = Context::default();
            let mut rows = recent.query(params![session, CONTEXT_EXCHANGES as i64])?;
            while let Some(row) = rows.next()? {
                context.push(
                    Arc::from(row.get_ref(0)?.as_str()?),
                    Arc::from(row.get_ref(1)?.as_str()?),
                );
            }
            context
        }
    };
    let (count, next_seq) = row.unwrap_or_default();
    Ok(Logged {
        count,
        next_seq,
        new: row.is_none(),
        context,
    })
}

/// The caps, checked as a batch goes.
struct Admission {
    caps: Caps,
    /// Sessions in the file (counting the log's new ones), when a session
    /// cap is set.
    total: usize,
}

impl Admission {
    fn new(tx: &rusqlite::Transaction<'_>, caps: Caps, log: &Log) -> rusqlite::Result<Self> {
        let total = match caps.max_sessions {
            Some(_) => {
                tx.query_row("SELECT count(*) FROM sessions", [], |row| {
                    row.get::<_, i64>(0)
                })? as usize
                    + log.new_sessions()
            }
            None => 0,
        };
        Ok(Self { caps, total })
    }

    /// Admits one more exchange for a session as it stands, or gives the
    /// 507 refusing it.
    fn admit(&mut self, session: &Logged) -> Result<(), StoreError> {
        if self.caps == Caps::default() {
            return Ok(());
        }
        let exists = !session.new || session.count > 0;
        if let Some(max) = self
            .caps
            .max_sessions
            .filter(|max| !exists && self.total >= *max)
        {
            return Err(Caps::sessions_full(max));
        }
        if let Some(max) = self
            .caps
            .max_messages_per_session
            .filter(|max| session.count as usize >= *max)
        {
            return Err(Caps::session_full(max));
        }
        if !exists {
            self.total += 1;
        }
        Ok(())
    }
}

/// Flushes the log, then updates the cache and answers.
struct Syncer {
    wal: PathBuf,
    /// The log, opened once (again if SQLite made a new one).
    file: Option<File>,
    sync: SyncMode,
    cache: Arc<Mutex<Cache>>,
    stats: Arc<CommitStats>,
    /// Asks the checkpointer for a checkpoint (dropped if one is pending).
    checkpoint: std::sync::mpsc::SyncSender<()>,
}

impl Syncer {
    fn run(mut self, committed: std::sync::mpsc::Receiver<Committed>) {
        let mut ready = Vec::new();
        let mut rounds = 0u64;
        while let Ok(first) = committed.recv() {
            ready.push(first);
            ready.extend(committed.try_iter());
            let synced = match self.sync {
                SyncMode::Fsync => self.flush(),
                SyncMode::Os => Ok(()),
            };
            rounds += 1;
            if rounds.is_multiple_of(CHECKPOINT_EVERY) {
                let _ = self.checkpoint.try_send(());
            }
            if let Err(err) = &synced {
                tracing::error!(error = %err, "flushing the write-ahead log failed");
            }
            self.finish(ready.drain(..), synced.is_ok());
        }
    }

    /// `fdatasync` of the write-ahead log: every commit handed over so far
    /// is on disk once this returns.
    fn flush(&mut self) -> std::io::Result<()> {
        let on_disk = std::fs::metadata(&self.wal)?;
        let same = self
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .is_some_and(|open| open.ino() == on_disk.ino() && open.dev() == on_disk.dev());
        if !same {
            self.file = Some(File::open(&self.wal)?);
        }
        self.stats.synced();
        match &self.file {
            Some(file) => file.sync_data(),
            None => Ok(()),
        }
    }

    /// Applies what is on disk to the cache and answers. When the flush
    /// failed, nothing is acknowledged and the sessions are dropped from the
    /// cache (the file may or may not hold them: it is read again).
    fn finish(&self, ready: impl Iterator<Item = Committed>, synced: bool) {
        let unsynced =
            || StoreError::Unavailable("the write-ahead log could not be flushed".into());
        // Answering only wakes the waiting request: cheap enough under the lock.
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        for committed in ready {
            match committed {
                Committed::Appends { answers, stored } => {
                    for (session, seq, i) in &stored {
                        match (&answers[*i].1, synced) {
                            (Ok(entry), true) => cache.appended(session, *seq, entry),
                            _ => cache.removed(session),
                        }
                    }
                    for (done, answer) in answers {
                        let _ = done.send(if synced { answer } else { Err(unsynced()) });
                    }
                }
                Committed::Deleted {
                    session,
                    result,
                    done,
                } => {
                    cache.removed(&session);
                    let _ = done.send(if synced { result } else { Err(unsynced()) });
                }
                Committed::Changed {
                    session,
                    result,
                    done,
                } => {
                    cache.removed(&session);
                    let _ = done.send(if synced { result } else { Err(unsynced()) });
                }
                Committed::Settled { done } => {
                    let _ = done.send(if synced { Ok(()) } else { Err(unsynced()) });
                }
                Committed::Cleared { result, done } => {
                    cache.cleared();
                    let _ = done.send(if synced { result } else { Err(unsynced()) });
                }
                Committed::Expired { result, done } => {
                    let result = match (result, synced) {
                        (Ok(gone), true) => {
                            cache.expired(&gone);
                            Ok(gone.len())
                        }
                        (Ok(_), false) => {
                            cache.cleared();
                            Err(unsynced())
                        }
                        (Err(err), _) => Err(err),
                    };
                    let _ = done.send(result);
                }
            }
        }
    }
}
