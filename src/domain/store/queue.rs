//! The queue through which both durable stores hand their writes to their
//! one writer: what a write is, how a caller waits for it, and the writer's
//! counters. Appends are grouped into one commit by the writer; deletes,
//! clears and expiries run in queue order between groups.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use super::{Change, Changed, NewExchange, Numbered, StoreError};
use crate::domain::chatbot::Replier;
use crate::domain::models::SessionId;

/// The most exchanges written in one transaction.
pub(super) const MAX_BATCH: usize = 512;
/// Commands allowed to queue before callers wait.
const QUEUE_DEPTH: usize = 8 * MAX_BATCH;

/// Where an append's answer goes.
pub(super) type Reply = oneshot::Sender<Result<Numbered, StoreError>>;

/// Work for a writer.
pub(super) enum Command {
    Append(Pending),
    Delete {
        session: String,
        done: oneshot::Sender<Result<bool, StoreError>>,
    },
    Clear {
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    Change {
        session: SessionId,
        change: Change,
        done: oneshot::Sender<Result<Changed, StoreError>>,
    },
    Expire {
        before: i64,
        done: oneshot::Sender<Result<usize, StoreError>>,
    },
    /// Puts every write answered so far where the store's queries look
    /// (SQLite folds its log; PostgreSQL's writes always are).
    Settle {
        done: oneshot::Sender<Result<(), StoreError>>,
    },
}

impl Command {
    /// Answers the command with `err`, doing nothing.
    pub(super) fn refuse(self, err: StoreError) {
        match self {
            Self::Append(pending) => {
                let _ = pending.done.send(Err(err));
            }
            Self::Delete { done, .. } => {
                let _ = done.send(Err(err));
            }
            Self::Clear { done } | Self::Settle { done } => {
                let _ = done.send(Err(err));
            }
            Self::Change { done, .. } => {
                let _ = done.send(Err(err));
            }
            Self::Expire { done, .. } => {
                let _ = done.send(Err(err));
            }
        }
    }
}

/// One exchange waiting for the next group commit.
pub(super) struct Pending {
    pub session: SessionId,
    pub exchange: NewExchange,
    pub replier: Arc<dyn Replier>,
    pub done: Reply,
}

/// The callers' end of the queue.
pub(super) struct Writes {
    sender: mpsc::Sender<Command>,
}

impl Writes {
    /// A queue, and the end the writer reads.
    pub fn channel() -> (Self, mpsc::Receiver<Command>) {
        let (sender, queue) = mpsc::channel(QUEUE_DEPTH);
        (Self { sender }, queue)
    }

    pub async fn append(
        &self,
        session: &SessionId,
        exchange: NewExchange,
        replier: Arc<dyn Replier>,
    ) -> Result<Numbered, StoreError> {
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

    pub async fn delete(&self, session: &str) -> Result<bool, StoreError> {
        let session = session.to_owned();
        self.submit(|done| Command::Delete { session, done }).await
    }

    pub async fn change(&self, session: &SessionId, change: Change) -> Result<Changed, StoreError> {
        let session = session.clone();
        self.submit(|done| Command::Change {
            session,
            change,
            done,
        })
        .await
    }

    pub async fn clear(&self) -> Result<(), StoreError> {
        self.submit(|done| Command::Clear { done }).await
    }

    pub async fn expire(&self, before: i64) -> Result<usize, StoreError> {
        self.submit(|done| Command::Expire { before, done }).await
    }

    pub async fn settle(&self) -> Result<(), StoreError> {
        self.submit(|done| Command::Settle { done }).await
    }

    /// Hands `command` to the writer and waits for its answer.
    async fn submit<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> Result<T, StoreError> {
        let gone = || StoreError::Unavailable("the writer stopped".into());
        let (done, answer) = oneshot::channel();
        self.sender.send(command(done)).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// How many exchanges went into how many commits, and how many flushes to
/// disk the writer made itself (SQLite), for tests and benchmarks.
#[derive(Debug, Default)]
pub struct CommitStats {
    commits: AtomicU64,
    exchanges: AtomicU64,
    syncs: AtomicU64,
    one_statement: AtomicU64,
}

impl CommitStats {
    /// (commits, exchanges) so far.
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.commits.load(Ordering::Relaxed),
            self.exchanges.load(Ordering::Relaxed),
        )
    }

    /// How many times the writer flushed its log to disk.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// How many groups the PostgreSQL commit task sent as one statement.
    pub fn one_statement(&self) -> u64 {
        self.one_statement.load(Ordering::Relaxed)
    }

    /// Counts a group sent as one statement.
    pub(super) fn sent_as_one_statement(&self) {
        self.one_statement.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a commit of `exchanges` exchanges.
    pub(super) fn committed(&self, exchanges: u64) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.exchanges.fetch_add(exchanges, Ordering::Relaxed);
    }

    /// Counts a flush.
    pub(super) fn synced(&self) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
    }
}
