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
//! Deletes, clears and expiries go through the same queue, in order.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use hashlink::LruCache;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};

use super::cache::Cache;
use crate::domain::chatbot::{CONTEXT_EXCHANGES, History};
use crate::domain::store::queue::{Command, CommitStats, MAX_BATCH, Pending, Reply};
use crate::domain::store::{Caps, Changed, Numbered, StoreError, search_text};

/// Sessions whose latest exchanges the writer keeps for the reply engine.
const CONTEXT_SESSIONS: usize = 4096;

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

const UPSERT_SESSION: &str = "\
    INSERT INTO sessions (session_id, message_count, first_at, last_at, next_seq) \
    VALUES (?1, 1, ?2, ?2, 1) \
    ON CONFLICT (session_id) DO UPDATE \
    SET message_count = message_count + 1, next_seq = next_seq + 1, last_at = excluded.last_at, \
    first_at = CASE WHEN message_count = 0 THEN excluded.first_at ELSE first_at END \
    RETURNING id, message_count, next_seq";
const INSERT_EXCHANGE: &str = "\
    INSERT INTO exchanges \
    (session_ref, seq, user_message, bot_reply, user_name, created_at, search_text) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
const SELECT_CONTEXT: &str = "\
    SELECT user_message, user_name FROM (SELECT seq, user_message, user_name FROM exchanges \
    WHERE session_ref = ?1 ORDER BY seq DESC LIMIT ?2) ORDER BY seq";
const SELECT_COUNT: &str = "SELECT message_count FROM sessions WHERE session_id = ?1";

/// The writer's side: its connection, what it remembers, where it hands off.
pub(super) struct Writer {
    conn: Connection,
    context: LruCache<String, Context>,
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
        }
    }

    fn hand_off(&self, committed: Committed) {
        // The syncer only stops once this writer has.
        let _ = self.committed.send(committed);
    }

    fn run_other(&mut self, command: Command) {
        match command {
            Command::Append(_) => unreachable!("appends are batched"),
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

    /// One transaction for the whole batch. Returns each request's answer
    /// and, for those stored, their session and position.
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
        let mut admitted = Admission::new(&tx, self.caps)?;
        let mut answers = Vec::with_capacity(batch.len());
        let mut stored = Vec::with_capacity(batch.len());
        {
            let mut upsert = tx.prepare_cached(UPSERT_SESSION)?;
            let mut insert = tx.prepare_cached(INSERT_EXCHANGE)?;
            let mut recent = tx.prepare_cached(SELECT_CONTEXT)?;
            for (i, pending) in batch.iter().enumerate() {
                let session = pending.session.as_str();
                if let Err(refusal) = admitted.admit(&tx, session)? {
                    answers.push(Err(refusal));
                    continue;
                }
                let exchange = &pending.exchange;
                let (session_ref, position, seq): (i64, i64, i64) = upsert
                    .query_row(params![session, exchange.timestamp], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                    })?;
                if !self.context.contains_key(session) {
                    let mut context = Context::default();
                    let mut rows = recent.query(params![session_ref, CONTEXT_EXCHANGES as i64])?;
                    while let Some(row) = rows.next()? {
                        context.push(
                            Arc::from(row.get_ref(0)?.as_str()?),
                            Arc::from(row.get_ref(1)?.as_str()?),
                        );
                    }
                    self.context.insert(session.to_owned(), context);
                }
                let Some(context) = self.context.get_mut(session) else {
                    unreachable!("inserted above");
                };
                // A panicking reply engine must not take the writer down with it.
                let bot_reply = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    pending.replier.reply(&exchange.user_message, &*context)
                }))
                .map_err(|_| Failed("the reply engine panicked".into()))?;
                context.push(exchange.user_message.clone(), exchange.user_name.clone());
                insert.execute(params![
                    session_ref,
                    seq,
                    &*exchange.user_message,
                    &*bot_reply,
                    &*exchange.user_name,
                    exchange.timestamp,
                    search_text(&exchange.user_message, &bot_reply),
                ])?;
                stored.push((session.to_owned(), position as usize, i));
                answers.push(Ok(Numbered {
                    seq: seq as u64,
                    entry: exchange.clone().answered(bot_reply),
                }));
            }
        }
        tx.commit()?;
        Ok((answers, stored))
    }
}

/// The caps, checked as a batch goes: counts read once per session.
struct Admission {
    caps: Caps,
    /// Sessions in the file, when a session cap is set.
    total: usize,
    counts: HashMap<String, usize>,
}

impl Admission {
    fn new(tx: &rusqlite::Transaction<'_>, caps: Caps) -> Result<Self, rusqlite::Error> {
        let total = match caps.max_sessions {
            Some(_) => tx.query_row("SELECT count(*) FROM sessions", [], |row| {
                row.get::<_, i64>(0)
            })? as usize,
            None => 0,
        };
        Ok(Self {
            caps,
            total,
            counts: HashMap::new(),
        })
    }

    /// Counts one more exchange for `session`, or the 507 refusing it.
    fn admit(
        &mut self,
        tx: &rusqlite::Transaction<'_>,
        session: &str,
    ) -> Result<Result<(), StoreError>, rusqlite::Error> {
        if self.caps == Caps::default() {
            return Ok(Ok(()));
        }
        let count = match self.counts.get(session) {
            Some(count) => Some(*count),
            None => tx
                .prepare_cached(SELECT_COUNT)?
                .query_row([session], |row| row.get::<_, i64>(0))
                .optional()?
                .map(|n| n as usize),
        };
        match count {
            None if self.caps.max_sessions.is_some_and(|max| self.total >= max) => Ok(Err(
                Caps::sessions_full(self.caps.max_sessions.unwrap_or_default()),
            )),
            Some(n)
                if self
                    .caps
                    .max_messages_per_session
                    .is_some_and(|max| n >= max) =>
            {
                Ok(Err(Caps::session_full(
                    self.caps.max_messages_per_session.unwrap_or_default(),
                )))
            }
            _ => {
                if count.is_none() {
                    self.total += 1;
                }
                self.counts
                    .insert(session.to_owned(), count.unwrap_or(0) + 1);
                Ok(Ok(()))
            }
        }
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
