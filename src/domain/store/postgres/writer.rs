//! The commit task: this instance's one writer to the database.
//!
//! Appends queue up and are written in groups (one transaction, one commit,
//! then every request in the group is answered). Deletes and clears go
//! through the same queue, in order. Other instances write too, so what the
//! task remembers of a session between groups (its latest exchanges, for
//! the reply engine) is used only when the session's row comes back from
//! the group's upsert exactly one version past where the task's own last
//! commit left it: nobody else changed it meanwhile. Otherwise the group
//! reads those sessions' latest exchanges after locking their rows.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use hashlink::LruCache;
use sqlx::{FromRow, PgPool};
use tokio::sync::mpsc;

use super::cache::{Cache, RowVersion};
use super::{ExchangeRow, unavailable};
use crate::domain::chatbot::CONTEXT_EXCHANGES;
use crate::domain::models::ConversationEntry;
use crate::domain::store::queue::{Command, CommitStats, MAX_BATCH, Pending};
use crate::domain::store::{Caps, Numbered, StoreError, search_text};

/// Sessions whose latest exchanges the task keeps, with the row version its
/// own commit left them at.
const CONTEXT_SESSIONS: usize = 4096;

/// The latest exchanges of sessions this task wrote to, by session id.
type Contexts = LruCache<String, (RowVersion, Vec<ConversationEntry>)>;

/// Runs until every sender is gone: groups consecutive appends into one
/// commit; deletes and clears run in queue order between groups.
pub(super) async fn commit_loop(
    pool: PgPool,
    mut queue: mpsc::Receiver<Command>,
    stats: Arc<CommitStats>,
    caps: Caps,
    cache: Arc<Cache>,
) {
    let mut received = Vec::with_capacity(MAX_BATCH);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut groups = Groups {
        pool: pool.clone(),
        stats,
        caps,
        cache,
        contexts: Contexts::new(CONTEXT_SESSIONS),
    };
    while queue.recv_many(&mut received, MAX_BATCH).await > 0 {
        for command in received.drain(..) {
            match command {
                Command::Append(pending) => batch.push(pending),
                other => {
                    groups.commit(&mut batch).await;
                    run_other(&pool, caps, other).await;
                }
            }
        }
        groups.commit(&mut batch).await;
    }
}

/// Runs a command other than an append, once the group before it has
/// committed.
async fn run_other(pool: &PgPool, caps: Caps, command: Command) {
    match command {
        Command::Append(_) => unreachable!("appends are grouped"),
        Command::Delete { session, done } => {
            let result = sqlx::query("DELETE FROM sessions WHERE session_id = $1")
                .bind(&session)
                .execute(pool)
                .await
                .map(|done| done.rows_affected() > 0)
                .map_err(unavailable);
            let _ = done.send(result);
        }
        Command::Change {
            session,
            change,
            done,
        } => {
            let result = super::change::apply(pool, caps, session.as_str(), change).await;
            let _ = done.send(result);
        }
        Command::Clear { done } => {
            let result = sqlx::query("DELETE FROM sessions")
                .execute(pool)
                .await
                .map(|_| ())
                .map_err(unavailable);
            let _ = done.send(result);
        }
        Command::Expire { before, done } => {
            let result = sqlx::query("DELETE FROM sessions WHERE last_at < $1")
                .bind(before)
                .execute(pool)
                .await
                .map(|done| done.rows_affected() as usize)
                .map_err(unavailable);
            let _ = done.send(result);
        }
        // Committed writes are where every query looks.
        Command::Settle { done } => {
            let _ = done.send(Ok(()));
        }
    }
}

/// What committing a group needs, and what the task keeps between groups.
struct Groups {
    pool: PgPool,
    stats: Arc<CommitStats>,
    caps: Caps,
    cache: Arc<Cache>,
    contexts: Contexts,
}

impl Groups {
    /// Writes and commits `batch`, answers each of its requests, and empties
    /// it.
    async fn commit(&mut self, batch: &mut Vec<Pending>) {
        if batch.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        match write_batch(
            &self.pool,
            batch,
            self.caps,
            &self.cache,
            &mut self.contexts,
        )
        .await
        {
            Ok(outcomes) => {
                let stored = outcomes.iter().filter(|o| o.is_ok()).count() as u64;
                self.stats.committed(stored);
                crate::domain::store::record_commit(stored as usize, started);
                for (pending, outcome) in batch.drain(..).zip(outcomes) {
                    let _ = pending.done.send(outcome);
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

/// Adds to each session row (creating missing ones) what the group adds and
/// returns each session's row id, last exchange id and version: one
/// statement whatever the group's size, the rows as arrays. Rows come in
/// `session_id` order and lock in it, so two instances committing
/// overlapping groups cannot deadlock.
const UPSERT_SESSIONS: &str = "\
    INSERT INTO sessions (session_id, message_count, first_at, last_at, next_seq) \
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $2::bigint[]) \
    ON CONFLICT (session_id) DO UPDATE \
    SET message_count = sessions.message_count + excluded.message_count, \
    next_seq = sessions.next_seq + excluded.next_seq, last_at = excluded.last_at, \
    first_at = CASE WHEN sessions.message_count = 0 THEN excluded.first_at ELSE sessions.first_at END \
    RETURNING id, session_id, next_seq, version";

/// The group's exchanges, as arrays: one statement whatever its size.
const INSERT_EXCHANGES: &str = "\
    INSERT INTO exchanges \
    (session_ref, seq, user_message, bot_reply, user_name, created_at, search_text) \
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
    $6::bigint[], $7::text[])";

/// The latest exchanges of the sessions whose row ids are `$2`, read after
/// their rows are locked (and before this group's are written), so each
/// reply sees exactly the history before it. `$1` is the window.
const SELECT_CONTEXT: &str = "\
    SELECT s.id AS session_ref, e.user_message, e.bot_reply, e.user_name, e.created_at \
    FROM sessions s CROSS JOIN LATERAL (SELECT seq, user_message, bot_reply, user_name, created_at \
    FROM exchanges WHERE session_ref = s.id ORDER BY seq DESC LIMIT $1) e \
    WHERE s.id = ANY($2::bigint[]) ORDER BY s.id, e.seq";

/// A group's exchanges as columns, one array each for [`INSERT_EXCHANGES`].
#[derive(Default)]
struct Columns<'a> {
    session_ref: Vec<i64>,
    seq: Vec<i64>,
    user_message: Vec<&'a str>,
    bot_reply: Vec<&'a str>,
    user_name: Vec<&'a str>,
    created_at: Vec<i64>,
    search_text: Vec<String>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, session_ref: i64, seq: i64, entry: &'a ConversationEntry) {
        self.session_ref.push(session_ref);
        self.seq.push(seq);
        self.user_message.push(&entry.user_message);
        self.bot_reply.push(&entry.bot_reply);
        self.user_name.push(&entry.user_name);
        self.created_at.push(entry.timestamp);
        self.search_text
            .push(search_text(&entry.user_message, &entry.bot_reply));
    }
}

#[derive(FromRow)]
struct ContextRow {
    session_ref: i64,
    #[sqlx(flatten)]
    exchange: ExchangeRow,
}

/// What one batch adds to one session.
struct Tally {
    count: i64,
    first_at: i64,
    last_at: i64,
}

/// Writes a whole batch with a fixed number of statements: one upsert for
/// all its sessions, one read of their recent history, then multi-row
/// inserts. Returns the answered exchanges in
/// batch order.
#[tracing::instrument(skip_all, fields(exchanges = batch.len()))]
async fn write_batch(
    pool: &PgPool,
    batch: &[Pending],
    caps: Caps,
    cache: &Cache,
    contexts: &mut Contexts,
) -> Result<Vec<Result<Numbered, StoreError>>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let refusals = admit(&mut tx, batch, caps).await?;
    let admitted: Vec<&Pending> = batch
        .iter()
        .zip(&refusals)
        .filter_map(|(pending, refusal)| refusal.is_none().then_some(pending))
        .collect();

    let mut tallies: BTreeMap<&str, Tally> = BTreeMap::new();
    for pending in admitted.iter().copied() {
        let at = pending.exchange.timestamp;
        let tally = tallies.entry(pending.session.as_str()).or_insert(Tally {
            count: 0,
            first_at: at,
            last_at: at,
        });
        tally.count += 1;
        tally.last_at = at;
    }

    if admitted.is_empty() {
        tx.commit().await?;
        return Ok(refusals
            .into_iter()
            .map(|r| Err(r.unwrap_or_else(unreachable_refusal)))
            .collect());
    }
    // Each session's row (id, and version once this batch commits) and the
    // seq its next exchange in this batch gets. The upsert's rows go in
    // session-id order (`tallies` is sorted), so rows lock in that order.
    let mut next_seq: HashMap<String, (RowVersion, i64)> = HashMap::with_capacity(tallies.len());
    let upserted: Vec<(i64, String, i64, i64)> = sqlx::query_as(UPSERT_SESSIONS)
        .bind(tallies.keys().copied().collect::<Vec<&str>>())
        .bind(tallies.values().map(|t| t.count).collect::<Vec<i64>>())
        .bind(tallies.values().map(|t| t.first_at).collect::<Vec<i64>>())
        .bind(tallies.values().map(|t| t.last_at).collect::<Vec<i64>>())
        .fetch_all(&mut *tx)
        .await?;
    for (id, session, last_seq, version) in upserted {
        let added = tallies.get(session.as_str()).map_or(0, |t| t.count);
        next_seq.insert(session, (RowVersion { id, version }, last_seq - added + 1));
    }

    // Recent history per session row: kept from this task's last commit
    // to it if the upsert took the row exactly one version past that commit
    // (nobody else changed it since), else read after the rows are locked.
    let mut context: HashMap<i64, Vec<ConversationEntry>> = HashMap::with_capacity(next_seq.len());
    let mut missing = Vec::new();
    for (session, (row, _)) in &next_seq {
        match contexts.remove(session) {
            Some((kept, entries)) if kept.id == row.id && kept.version + 1 == row.version => {
                context.insert(row.id, entries);
            }
            _ => missing.push(row.id),
        }
    }
    if !missing.is_empty() {
        let rows: Vec<ContextRow> = sqlx::query_as(SELECT_CONTEXT)
            .bind(CONTEXT_EXCHANGES as i64)
            .bind(missing)
            .fetch_all(&mut *tx)
            .await?;
        for row in rows {
            context
                .entry(row.session_ref)
                .or_default()
                .push(row.exchange.into());
        }
    }

    let mut answered = Vec::with_capacity(admitted.len());
    let mut rows = Vec::with_capacity(admitted.len());
    for pending in admitted.iter().copied() {
        let slot = next_seq
            .get_mut(pending.session.as_str())
            .ok_or_else(|| sqlx::Error::Protocol("upsert returned no row for a session".into()))?;
        let (
            RowVersion {
                id: session_ref, ..
            },
            seq,
        ) = *slot;
        slot.1 += 1;
        let history = context.entry(session_ref).or_default();
        let window = &history[history.len().saturating_sub(CONTEXT_EXCHANGES)..];
        // A panicking reply engine must not take the commit task down with it.
        let bot_reply = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pending
                .replier
                .reply(&pending.exchange.user_message, &window)
        }))
        .map_err(|_| sqlx::Error::Protocol("the reply engine panicked".into()))?;
        let entry = pending.exchange.clone().answered(bot_reply);
        history.push(entry.clone());
        rows.push((session_ref, seq));
        answered.push(Numbered {
            seq: seq as u64,
            entry,
        });
    }

    let mut columns = Columns::default();
    for (answer, (session_ref, seq)) in answered.iter().zip(&rows) {
        columns.push(*session_ref, *seq, &answer.entry);
    }
    sqlx::query(INSERT_EXCHANGES)
        .bind(columns.session_ref)
        .bind(columns.seq)
        .bind(columns.user_message)
        .bind(columns.bot_reply)
        .bind(columns.user_name)
        .bind(columns.created_at)
        .bind(columns.search_text)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    for (session, (row, _)) in &next_seq {
        if let Some(mut entries) = context.remove(&row.id) {
            entries.drain(..entries.len().saturating_sub(CONTEXT_EXCHANGES));
            contexts.insert(session.clone(), (*row, entries));
        }
    }

    // Cached copies of these sessions, extended by what this batch added.
    let mut added: BTreeMap<&str, Vec<&ConversationEntry>> = BTreeMap::new();
    for (pending, numbered) in admitted.iter().zip(&answered) {
        added
            .entry(pending.session.as_str())
            .or_default()
            .push(&numbered.entry);
    }
    for (session, entries) in added {
        if let Some((row, _)) = next_seq.get(session) {
            cache.extend(session, *row, &entries);
        }
    }

    let mut answered = answered.into_iter();
    Ok(refusals
        .into_iter()
        .map(|refusal| match refusal {
            Some(refusal) => Err(refusal),
            None => answered.next().ok_or_else(unreachable_refusal),
        })
        .collect())
}

/// Any number fixed for this use: the lock under which caps are counted.
const CAPS_LOCK: i64 = 0x6368_6174_626f_7463;

/// Takes the caps' lock until the transaction ends: one transaction at a
/// time counts what is stored and adds to it, across instances, so two
/// cannot both take the last place.
pub(super) async fn lock_caps(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(CAPS_LOCK)
        .execute(&mut **tx)
        .await
        .map(|_| ())
}

/// Never reached: every admitted exchange was answered.
fn unreachable_refusal() -> StoreError {
    StoreError::Unavailable("batch bookkeeping mismatch".into())
}

/// Which exchanges of the batch the caps refuse (`Some(507 error)`), in
/// order: a session at its message cap, or a new session past the session
/// cap. Reads only when a cap is set.
async fn admit(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    batch: &[Pending],
    caps: Caps,
) -> Result<Vec<Option<StoreError>>, sqlx::Error> {
    if caps == Caps::default() {
        return Ok(batch.iter().map(|_| None).collect());
    }
    lock_caps(tx).await?;
    let sessions: Vec<&str> = batch.iter().map(|p| p.session.as_str()).collect();
    let params: Vec<String> = (1..=sessions.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT session_id, message_count FROM sessions WHERE session_id IN ({})",
        params.join(", ")
    );
    let mut query = sqlx::query_as::<_, (String, i64)>(&sql).persistent(false);
    for session in &sessions {
        query = query.bind(*session);
    }
    let mut counts: HashMap<String, usize> = query
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .map(|(id, n)| (id, usize::try_from(n).unwrap_or(0)))
        .collect();
    let mut total = match caps.max_sessions {
        Some(_) => {
            let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM sessions")
                .fetch_one(&mut **tx)
                .await?;
            usize::try_from(n).unwrap_or(0)
        }
        None => 0,
    };
    let mut refusals = Vec::with_capacity(batch.len());
    for session in sessions {
        let refusal = match counts.get(session).copied() {
            None if caps.max_sessions.is_some_and(|max| total >= max) => {
                caps.max_sessions.map(Caps::sessions_full)
            }
            Some(n) if caps.max_messages_per_session.is_some_and(|max| n >= max) => {
                caps.max_messages_per_session.map(Caps::session_full)
            }
            known => {
                if known.is_none() {
                    total += 1;
                }
                *counts.entry(session.to_owned()).or_insert(0) += 1;
                None
            }
        };
        refusals.push(refusal);
    }
    Ok(refusals)
}
