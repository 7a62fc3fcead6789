//! Version checks for the read cache, grouped: a read holding a cached copy
//! asks for its session row's id and version, and every such question
//! waiting when the database is free goes out as one query, on a connection
//! of its own.
//!
//! Grouping keeps the guarantee a query per read gives: each question is
//! asked before the query that answers it is sent, so the query's snapshot
//! holds every write acknowledged before the read began, by any instance.
//! Under load, one round trip answers tens of reads instead of one.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tokio::sync::{mpsc, oneshot};

use super::cache::RowVersion;
use super::unavailable;
use crate::domain::store::StoreError;

/// The most questions one query answers.
const MOST_PER_QUERY: usize = 256;
/// How long connecting, or one query, may take before the waiting reads
/// get 503 (and the connection is made anew for the next ones).
const TIMEOUT: Duration = Duration::from_secs(3);

/// Each distinct session asked about, in order, with its row's id and
/// version; NULLs where there is no row.
const SELECT_VERSIONS: &str = "\
    SELECT s.id, s.version FROM unnest($1::text[]) WITH ORDINALITY AS k(session_id, n) \
    LEFT JOIN sessions s ON s.session_id = k.session_id ORDER BY k.n";

type Answer = Result<Option<RowVersion>, StoreError>;

struct Question {
    session: String,
    answer: oneshot::Sender<Answer>,
}

/// The handle reads ask through; the task answering stops with it.
pub(super) struct Checks {
    questions: mpsc::UnboundedSender<Question>,
}

impl Checks {
    /// Starts the task that answers, connecting when first asked.
    pub fn start(options: PgConnectOptions) -> Self {
        let (questions, waiting) = mpsc::unbounded_channel();
        tokio::spawn(answer_loop(options, waiting));
        Self { questions }
    }

    /// The id and version of `session`'s row now, or `None` if it has none.
    pub async fn check(&self, session: &str) -> Answer {
        let (answer, answered) = oneshot::channel();
        let question = Question {
            session: session.to_owned(),
            answer,
        };
        let stopped = || StoreError::Unavailable("the version check task stopped".into());
        self.questions.send(question).map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

async fn answer_loop(options: PgConnectOptions, mut waiting: mpsc::UnboundedReceiver<Question>) {
    let mut connection: Option<PgConnection> = None;
    let mut batch = Vec::with_capacity(MOST_PER_QUERY);
    while waiting.recv_many(&mut batch, MOST_PER_QUERY).await > 0 {
        // Each session once, however many reads ask about it.
        let mut sessions: Vec<&str> = Vec::with_capacity(batch.len());
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(batch.len());
        let at: Vec<usize> = batch
            .iter()
            .map(|q: &Question| {
                *index.entry(q.session.as_str()).or_insert_with(|| {
                    sessions.push(q.session.as_str());
                    sessions.len() - 1
                })
            })
            .collect();
        let found = versions(&mut connection, &options, &sessions).await;
        if found.is_err() {
            // Broken or never made: the next question connects again.
            connection = None;
        }
        drop(index);
        drop(sessions);
        for (question, i) in batch.drain(..).zip(at) {
            let answer = match &found {
                Ok(rows) => Ok(rows[i]),
                Err(err) => Err(err.clone()),
            };
            // The read may have gone (its client hung up): nothing to do.
            let _ = question.answer.send(answer);
        }
    }
}

async fn versions(
    connection: &mut Option<PgConnection>,
    options: &PgConnectOptions,
    sessions: &[&str],
) -> Result<Vec<Option<RowVersion>>, StoreError> {
    let conn = match connection {
        Some(conn) => conn,
        None => {
            let made = tokio::time::timeout(TIMEOUT, PgConnection::connect_with(options))
                .await
                .map_err(|_| StoreError::Unavailable("connecting timed out".into()))?
                .map_err(unavailable)?;
            connection.insert(made)
        }
    };
    let query = sqlx::query_as(SELECT_VERSIONS)
        .bind(sessions)
        .fetch_all(&mut *conn);
    let rows: Vec<(Option<i64>, Option<i64>)> = tokio::time::timeout(TIMEOUT, query)
        .await
        .map_err(|_| StoreError::Unavailable("the version check timed out".into()))?
        .map_err(unavailable)?;
    if rows.len() != sessions.len() {
        return Err(StoreError::Unavailable(format!(
            "{} versions for {} sessions",
            rows.len(),
            sessions.len()
        )));
    }
    Ok(rows
        .into_iter()
        .map(|row| match row {
            (Some(id), Some(version)) => Some(RowVersion { id, version }),
            _ => None,
        })
        .collect())
}
