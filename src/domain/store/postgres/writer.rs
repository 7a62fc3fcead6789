//! The commit task: this instance's one writer to the database.
//!
//! Appends queue up and are written in groups, then every request in the
//! group is answered. Deletes and clears go through the same queue, in
//! order. Other instances write too, so what the task remembers of a
//! session between groups (its row's id and version after the task's own
//! last commit to it, and its latest exchanges, for the reply engine) is
//! used only while the row is still at that version: nobody else changed it
//! meanwhile. With no caps set a group is one autocommit statement (one
//! round trip) for the sessions it holds that the task keeps and that are
//! unchanged, or that are new to the database; the rest of the group (and
//! every group with a cap set) is written in a transaction that reads those
//! sessions' latest exchanges after locking their rows. Where the statement
//! has mostly left sessions out lately (another instance keeps writing
//! them), groups go that way directly and the statement is tried now and
//! then ([`Lately`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use hashlink::LruCache;
use sqlx::postgres::PgArguments;
use sqlx::{Arguments, Encode, FromRow, PgPool, Postgres, Type};
use tokio::sync::mpsc;

use super::cache::{Cache, RowVersion};
use super::shared::{self, GONE, Mode, Put, Shared};
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
    shared: Option<Arc<Shared>>,
) {
    let mut received = Vec::with_capacity(MAX_BATCH);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let publisher = shared.clone().map(|shared| {
        let (send, groups) = mpsc::unbounded_channel();
        tokio::spawn(publisher(
            groups,
            cache.clone(),
            shared,
            pool.clone(),
            stats.clone(),
        ));
        send
    });
    let mut groups = Groups {
        pool: pool.clone(),
        stats,
        caps,
        cache,
        shared,
        publisher,
        touched: Vec::new(),
        contexts: Contexts::new(CONTEXT_SESSIONS),
        lately: Lately::default(),
    };
    while queue.recv_many(&mut received, MAX_BATCH).await > 0 {
        for command in received.drain(..) {
            match command {
                Command::Append(pending) => batch.push(pending),
                other => {
                    groups.commit(&mut batch).await;
                    run_other(&pool, caps, groups.shared.as_deref(), other).await;
                }
            }
        }
        groups.commit(&mut batch).await;
    }
}

/// Runs a command other than an append, once the group before it has
/// committed; what it changed is reported to `shared` (if any) before it
/// is answered.
async fn run_other(pool: &PgPool, caps: Caps, shared: Option<&Shared>, command: Command) {
    let epoch = shared.and_then(Shared::known_epoch);
    let report = |rows: Vec<(String, i64, i64)>| publish(pool, shared, epoch.clone(), rows);
    match command {
        Command::Append(_) => unreachable!("appends are grouped"),
        Command::Delete { session, done } => {
            let result: Result<Option<(i64,)>, _> =
                sqlx::query_as("DELETE FROM sessions WHERE session_id = $1 RETURNING id")
                    .bind(&session)
                    .fetch_optional(pool)
                    .await;
            let result = match result {
                Ok(deleted) => {
                    if let Some((id,)) = deleted {
                        report(vec![(session, id, GONE)]).await;
                    }
                    Ok(deleted.is_some())
                }
                Err(err) => Err(unavailable(err)),
            };
            let _ = done.send(result);
        }
        Command::Change {
            session,
            change,
            done,
        } => {
            let result = super::change::apply(pool, caps, session.as_str(), change).await;
            if result.is_ok() && shared.is_some() {
                let row: Result<Option<(i64, i64)>, _> =
                    sqlx::query_as("SELECT id, version FROM sessions WHERE session_id = $1")
                        .bind(session.as_str())
                        .fetch_optional(pool)
                        .await;
                match row {
                    Ok(Some((id, version))) => {
                        report(vec![(session.as_str().to_owned(), id, version)]).await;
                    }
                    Ok(None) => {}
                    // Committed, but unknown to the others: a reader
                    // could miss it, so the caller is not told it worked.
                    Err(err) => {
                        let _ = done.send(Err(unavailable(err)));
                        return;
                    }
                }
            }
            let _ = done.send(result);
        }
        Command::Clear { done } => {
            let result: Result<Vec<(String, i64)>, _> =
                sqlx::query_as("DELETE FROM sessions RETURNING session_id, id")
                    .fetch_all(pool)
                    .await;
            let result = match result {
                Ok(gone) => {
                    report(gone.into_iter().map(|(s, id)| (s, id, GONE)).collect()).await;
                    Ok(())
                }
                Err(err) => Err(unavailable(err)),
            };
            let _ = done.send(result);
        }
        Command::Expire { before, done } => {
            let result: Result<Vec<(String, i64)>, _> =
                sqlx::query_as("DELETE FROM sessions WHERE last_at < $1 RETURNING session_id, id")
                    .bind(before)
                    .fetch_all(pool)
                    .await;
            let result = match result {
                Ok(gone) => {
                    let count = gone.len();
                    report(gone.into_iter().map(|(s, id)| (s, id, GONE)).collect()).await;
                    Ok(count)
                }
                Err(err) => Err(unavailable(err)),
            };
            let _ = done.send(result);
        }
        // Committed writes are where every query looks.
        Command::Settle { done } => {
            let _ = done.send(Ok(()));
        }
    }
}

/// Reports sessions (key, row id, version; [`GONE`] for a deleted one) a
/// command changed to `shared`, as versions without bodies. If Redis
/// cannot be told, the database's listeners are (the notification the
/// triggers send for other writers), so the other instances learn of it
/// all the same, a moment later.
async fn publish(
    pool: &PgPool,
    shared: Option<&Shared>,
    epoch: Option<String>,
    rows: Vec<(String, i64, i64)>,
) {
    let Some(shared) = shared else {
        return;
    };
    for chunk in rows.chunks(256) {
        let puts: Vec<Put<'_>> = chunk
            .iter()
            .map(|(key, id, version)| Put {
                key,
                row: RowVersion {
                    id: *id,
                    version: *version,
                },
                records: None,
                seen: None,
            })
            .collect();
        if shared
            .put(epoch.as_deref(), Mode::Whole, &puts, true)
            .await
            .is_err()
        {
            shared.owe();
            notify(pool, chunk.iter().map(|(k, i, v)| (k.as_str(), *i, *v))).await;
            shared.unreported().await;
        }
    }
}

/// Sends the notifications migration 0006's trigger sends for other
/// writers, for sessions Redis could not be told about.
async fn notify<'a>(pool: &PgPool, rows: impl Iterator<Item = (&'a str, i64, i64)>) {
    let payloads: Vec<String> = rows
        .map(|(key, id, version)| {
            if version == GONE {
                format!("{id}:gone:{key}")
            } else {
                format!("{id}:{version}:{key}")
            }
        })
        .collect();
    let sent = sqlx::query("SELECT pg_notify($2, p) FROM unnest($1::text[]) p")
        .bind(&payloads)
        .bind(super::listen::CHANNEL)
        .execute(pool)
        .await;
    if let Err(err) = sent {
        tracing::error!(error = %err, sessions = payloads.len(), "could not tell the other instances of a change");
    }
}

/// A session a group appended to: its row after the commit and what was
/// added, for the local copy and the shared cache.
struct Touched {
    session: String,
    row: RowVersion,
    entries: Vec<ConversationEntry>,
}

/// What a group's writes came to: each request's outcome, or the error
/// that stored none of them.
type Outcomes = Result<Vec<Result<Numbered, StoreError>>, sqlx::Error>;

/// A committed group on its way to being answered.
struct Answering {
    touched: Vec<Touched>,
    batch: Vec<Pending>,
    written: Outcomes,
    started: std::time::Instant,
    /// The epoch known before the group committed.
    epoch: Option<String>,
}

impl Answering {
    /// Extends the local copies of the sessions the group appended to,
    /// reports them to the shared cache (if any), then answers.
    async fn publish_and_answer(
        self,
        cache: &Cache,
        shared: Option<&Shared>,
        pool: &PgPool,
        stats: &CommitStats,
    ) {
        for touched in &self.touched {
            let entries: Vec<&ConversationEntry> = touched.entries.iter().collect();
            cache.extend(&touched.session, touched.row, &entries);
        }
        if let Some(shared) = shared {
            let puts: Vec<Put<'_>> = self
                .touched
                .iter()
                .map(|touched| Put {
                    key: &touched.session,
                    row: touched.row,
                    records: Some(touched.entries.iter().map(shared::record).collect()),
                    seen: None,
                })
                .collect();
            if shared
                .put(self.epoch.as_deref(), Mode::Append, &puts, true)
                .await
                .is_err()
            {
                shared.owe();
                let rows = self.touched.iter();
                notify(
                    pool,
                    rows.map(|t| (t.session.as_str(), t.row.id, t.row.version)),
                )
                .await;
                shared.unreported().await;
            }
        }
        match self.written {
            Ok(outcomes) => {
                let stored = outcomes.iter().filter(|o| o.is_ok()).count() as u64;
                stats.committed(stored);
                crate::domain::store::record_commit(stored as usize, self.started);
                for (pending, outcome) in self.batch.into_iter().zip(outcomes) {
                    let _ = pending.done.send(outcome);
                }
            }
            Err(err) => {
                tracing::error!(error = %err, exchanges = self.batch.len(), "group commit failed");
                let err = unavailable(err);
                for pending in self.batch {
                    let _ = pending.done.send(Err(err.clone()));
                }
            }
        }
    }
}

/// Publishes and answers committed groups in the order they committed,
/// for as long as the commit task sends them.
async fn publisher(
    mut groups: mpsc::UnboundedReceiver<Answering>,
    cache: Arc<Cache>,
    shared: Arc<Shared>,
    pool: PgPool,
    stats: Arc<CommitStats>,
) {
    while let Some(answering) = groups.recv().await {
        answering
            .publish_and_answer(&cache, Some(&shared), &pool, &stats)
            .await;
    }
}

/// What committing a group needs, and what the task keeps between groups.
struct Groups {
    pool: PgPool,
    stats: Arc<CommitStats>,
    caps: Caps,
    cache: Arc<Cache>,
    shared: Option<Arc<Shared>>,
    /// With Redis: where committed groups go to be published and answered.
    publisher: Option<mpsc::UnboundedSender<Answering>>,
    /// The sessions the group being committed appended to.
    touched: Vec<Touched>,
    contexts: Contexts,
    lately: Lately,
}

/// Groups between two tries of the one statement while it mostly fails.
const TRY_EVERY: u32 = 16;

/// How the one statement ([`APPEND_KNOWN`]) has fared lately. Where
/// another instance keeps writing the same sessions, what this task keeps
/// is mostly stale, the statement leaves most sessions to the locked way,
/// and trying it first only adds a round trip: groups then go the locked
/// way directly, and the statement is tried again every [`TRY_EVERY`]
/// groups; one that leaves nothing out brings it back.
#[derive(Default)]
struct Lately {
    /// A running mean of the share of a group's exchanges left out.
    left_out: f32,
    skipped: u32,
}

impl Lately {
    fn worth_trying(&mut self) -> bool {
        if self.left_out < 0.5 {
            return true;
        }
        self.skipped += 1;
        if self.skipped < TRY_EVERY {
            return false;
        }
        self.skipped = 0;
        true
    }

    fn record(&mut self, left_out: usize, exchanges: usize) {
        let share = left_out as f32 / exchanges.max(1) as f32;
        self.left_out = if left_out == 0 {
            0.0
        } else {
            (self.left_out + share) / 2.0
        };
    }
}

impl Groups {
    /// Writes and commits `batch` (empty afterwards) and answers each of
    /// its requests: with no caps set as one [`APPEND_KNOWN`] statement
    /// first (unless it has mostly failed lately), else the locked way
    /// ([`write_batch`]).
    async fn commit(&mut self, batch: &mut Vec<Pending>) {
        if batch.is_empty() {
            return;
        }
        let batch = std::mem::take(batch);
        // Known before the commit, as the shared cache asks (see `shared`).
        let epoch = self.shared.as_ref().and_then(|shared| shared.known_epoch());
        self.touched.clear();
        if self.caps != Caps::default() || !self.lately.worth_trying() {
            let started = std::time::Instant::now();
            let all: Vec<&Pending> = batch.iter().collect();
            let written = self.write_locked(&all).await;
            return self.answer(batch, written, started, epoch).await;
        }
        match Prepared::new(batch, &mut self.contexts) {
            Ok(prepared) => {
                self.stats.sent_as_one_statement();
                let written = prepared.execute(&self.pool).await;
                self.finish(prepared, written, epoch).await;
            }
            Err((batch, err)) => {
                self.answer(batch, Err(err), std::time::Instant::now(), epoch)
                    .await;
            }
        }
    }

    /// Answers each request of `batch` with its outcome, or all with 503,
    /// once what the group committed is published ([`publish`]): at once
    /// without Redis; with it, by the publisher task, so that the next
    /// group commits while this one's report to Redis is under way.
    async fn answer(
        &mut self,
        batch: Vec<Pending>,
        written: Outcomes,
        started: std::time::Instant,
        epoch: Option<String>,
    ) {
        let answering = Answering {
            touched: std::mem::take(&mut self.touched),
            batch,
            written,
            started,
            epoch,
        };
        match &self.publisher {
            Some(publisher) => {
                if let Err(unsent) = publisher.send(answering) {
                    // The publisher is gone (a panic): publish and answer here.
                    self.publisher = None;
                    unsent
                        .0
                        .publish_and_answer(
                            &self.cache,
                            self.shared.as_deref(),
                            &self.pool,
                            &self.stats,
                        )
                        .await;
                }
            }
            None => {
                answering
                    .publish_and_answer(&self.cache, None, &self.pool, &self.stats)
                    .await;
            }
        }
    }

    /// Answers a group sent as one [`APPEND_KNOWN`] statement: what it
    /// wrote, numbered; the exchanges of sessions it left out (whose rows
    /// moved on since this task's last commit to them, or that this task
    /// does not know and that exist) go through [`write_batch`] now, which
    /// reads their context under their rows' locks. A session's exchanges
    /// stay together, so its order holds.
    async fn finish(
        &mut self,
        prepared: Prepared,
        written: Result<Vec<Written>, sqlx::Error>,
        epoch: Option<String>,
    ) {
        let started = prepared.started;
        let (batch, known) = match written {
            Ok(written) => prepared.numbered(written, &mut self.touched, &mut self.contexts),
            // Nothing of the statement committed. Its rows lock in no fixed
            // order, so an instance writing the same sessions at once may
            // deadlock with it: the group goes the locked way, whose rows do.
            Err(err) if is_transient(&err) => {
                let count = prepared.batch.len();
                (prepared.batch, vec![None; count])
            }
            Err(err) => return self.answer(prepared.batch, Err(err), started, epoch).await,
        };
        let rest: Vec<&Pending> = batch
            .iter()
            .zip(&known)
            .filter_map(|(pending, known)| known.is_none().then_some(pending))
            .collect();
        self.lately.record(rest.len(), batch.len());
        let mut retried = if rest.is_empty() {
            Vec::new()
        } else {
            match self.write_locked(&rest).await {
                Ok(retried) => retried,
                // The first statement committed: its exchanges stand.
                Err(err) => {
                    tracing::error!(error = %err, exchanges = rest.len(), "group commit failed");
                    let err = unavailable(err);
                    rest.iter().map(|_| Err(err.clone())).collect()
                }
            }
        }
        .into_iter();
        let outcomes = known
            .into_iter()
            .map(|known| match known {
                Some(numbered) => Ok(numbered),
                None => retried.next().unwrap_or_else(|| Err(unreachable_refusal())),
            })
            .collect();
        self.answer(batch, Ok(outcomes), started, epoch).await;
    }

    /// [`write_batch`], tried again (up to three times in all) when the
    /// database rolled it back for a deadlock or serialization failure.
    async fn write_locked(
        &mut self,
        batch: &[&Pending],
    ) -> Result<Vec<Result<Numbered, StoreError>>, sqlx::Error> {
        let mut tries = 1;
        loop {
            match write_batch(
                &self.pool,
                batch,
                self.caps,
                &mut self.touched,
                &mut self.contexts,
            )
            .await
            {
                Err(err) if tries < 3 && is_transient(&err) => tries += 1,
                written => return written,
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

/// A group's exchanges as columns, one array each for [`INSERT_EXCHANGES`]
/// (sessions by row id) and [`APPEND_KNOWN`] (by session id), which both
/// take them as their first seven parameters.
#[derive(Default)]
struct Columns<'a, S> {
    session: Vec<S>,
    seq: Vec<i64>,
    user_message: Vec<&'a str>,
    bot_reply: Vec<&'a str>,
    user_name: Vec<&'a str>,
    created_at: Vec<i64>,
    search_text: Vec<String>,
}

impl<'a, S> Columns<'a, S> {
    fn push(&mut self, session: S, seq: i64, entry: &'a ConversationEntry) {
        self.session.push(session);
        self.seq.push(seq);
        self.user_message.push(&entry.user_message);
        self.bot_reply.push(&entry.bot_reply);
        self.user_name.push(&entry.user_name);
        self.created_at.push(entry.timestamp);
        self.search_text
            .push(search_text(&entry.user_message, &entry.bot_reply));
    }

    /// The columns as the statement's first seven parameters, in order.
    fn arguments(self) -> Result<PgArguments, sqlx::Error>
    where
        Vec<S>: Encode<'a, Postgres> + Type<Postgres> + 'a,
    {
        let mut args = PgArguments::default();
        let add = || -> Result<(), sqlx::error::BoxDynError> {
            args.add(self.session)?;
            args.add(self.seq)?;
            args.add(self.user_message)?;
            args.add(self.bot_reply)?;
            args.add(self.user_name)?;
            args.add(self.created_at)?;
            args.add(self.search_text)
        };
        add().map_err(sqlx::Error::Encode)?;
        Ok(args)
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

/// What `pendings` add to each session, in session-id order (the order
/// rows lock in).
fn tally<'a>(pendings: impl Iterator<Item = &'a Pending>) -> BTreeMap<&'a str, Tally> {
    let mut tallies: BTreeMap<&str, Tally> = BTreeMap::new();
    for pending in pendings {
        let at = pending.exchange.timestamp;
        let tally = tallies.entry(pending.session.as_str()).or_insert(Tally {
            count: 0,
            first_at: at,
            last_at: at,
        });
        tally.count += 1;
        tally.last_at = at;
    }
    tallies
}

/// Answers `pending` from `history` (the session's exchanges before it, the
/// latest last) and appends the answered exchange to it.
fn answer(
    pending: &Pending,
    history: &mut Vec<ConversationEntry>,
) -> Result<ConversationEntry, sqlx::Error> {
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
    Ok(entry)
}

/// A group in one autocommit statement, for sessions whose context this
/// task knows: a session it keeps a row for is updated only if that row
/// (id and version) is still exactly what this task's last commit to it
/// left; a session it does not keep is created only if it does not exist
/// (it has no history). Only the sessions so written get their exchanges,
/// numbered from the row's `next_seq`; the rest are not touched (their
/// rows do not come back). `$1`..`$6` are the sessions (in session-id
/// order), `$7`..`$13` the exchanges, each with its place `k` (from 1)
/// among its session's in the group.
const APPEND_KNOWN: &str = "\
    WITH input AS (SELECT * FROM unnest($8::text[], $9::bigint[], $10::bigint[], $11::bigint[], \
    $12::bigint[], $13::bigint[]) AS i(session_id, added, first_at, last_at, kept_id, kept_version)), \
    created AS (INSERT INTO sessions (session_id, message_count, first_at, last_at, next_seq) \
    SELECT session_id, added, first_at, last_at, added FROM input WHERE kept_id IS NULL \
    ORDER BY session_id ON CONFLICT (session_id) DO NOTHING \
    RETURNING id, session_id, next_seq, version), \
    updated AS (UPDATE sessions s SET message_count = s.message_count + input.added, \
    next_seq = s.next_seq + input.added, last_at = input.last_at, \
    first_at = CASE WHEN s.message_count = 0 THEN input.first_at ELSE s.first_at END \
    FROM input WHERE s.id = input.kept_id AND s.version = input.kept_version \
    RETURNING s.id, s.session_id, s.next_seq, s.version), \
    up AS (SELECT * FROM created UNION ALL SELECT * FROM updated), \
    exchanges_in AS (INSERT INTO exchanges \
    (session_ref, seq, user_message, bot_reply, user_name, created_at, search_text) \
    SELECT up.id, up.next_seq - input.added + e.k, e.user_message, e.bot_reply, e.user_name, \
    e.created_at, e.search_text \
    FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[], \
    $7::text[]) AS e(session_id, k, user_message, bot_reply, user_name, created_at, search_text) \
    JOIN up USING (session_id) JOIN input USING (session_id)) \
    SELECT id, session_id, next_seq, version FROM up";

/// A row [`APPEND_KNOWN`] wrote: id, session id, `next_seq`, version.
type Written = (i64, String, i64, i64);

/// A group ready to be sent as one [`APPEND_KNOWN`] statement (no caps
/// set), each request answered from what this task keeps of its session.
struct Prepared {
    started: std::time::Instant,
    batch: Vec<Pending>,
    /// The answered exchanges, in batch order.
    entries: Vec<ConversationEntry>,
    /// Each exchange's place among its session's in the group, from 1.
    places: Vec<i64>,
    /// For each session (in session-id order, the order rows lock in):
    /// what the group adds, the row this task's last commit to it left
    /// (none for a session it treats as new), and its latest exchanges.
    sessions: BTreeMap<String, (Tally, Option<RowVersion>, Vec<ConversationEntry>)>,
}

impl Prepared {
    /// Takes what this task keeps of the group's sessions out of `contexts`
    /// (it goes back once the group is written) and answers each request.
    fn new(
        batch: Vec<Pending>,
        contexts: &mut Contexts,
    ) -> Result<Self, (Vec<Pending>, sqlx::Error)> {
        let mut sessions = BTreeMap::new();
        for (session, tally) in tally(batch.iter()) {
            let (row, history) = contexts
                .remove(session)
                .map_or((None, Vec::new()), |(row, entries)| (Some(row), entries));
            sessions.insert(session.to_owned(), (tally, row, history));
        }
        let mut entries = Vec::with_capacity(batch.len());
        let mut places = Vec::with_capacity(batch.len());
        let mut counted: HashMap<&str, i64> = HashMap::with_capacity(sessions.len());
        for pending in &batch {
            let (_, _, history) = sessions
                .get_mut(pending.session.as_str())
                .expect("every session is tallied");
            match answer(pending, history) {
                Ok(entry) => entries.push(entry),
                Err(err) => return Err((batch, err)),
            }
            let place = counted.entry(pending.session.as_str()).or_insert(0);
            *place += 1;
            places.push(*place);
        }
        Ok(Self {
            started: std::time::Instant::now(),
            batch,
            entries,
            places,
            sessions,
        })
    }

    /// Sends the group as one autocommit statement.
    async fn execute(&self, pool: &PgPool) -> Result<Vec<Written>, sqlx::Error> {
        let mut columns = Columns::default();
        for ((pending, entry), place) in self.batch.iter().zip(&self.entries).zip(&self.places) {
            columns.push(pending.session.as_str(), *place, entry);
        }
        let kept = |f: fn(&RowVersion) -> i64| -> Vec<Option<i64>> {
            self.sessions
                .values()
                .map(|(_, row, _)| row.as_ref().map(f))
                .collect()
        };
        let tallies = || self.sessions.values().map(|(tally, _, _)| tally);
        sqlx::query_as_with(APPEND_KNOWN, columns.arguments()?)
            .bind(
                self.sessions
                    .keys()
                    .map(String::as_str)
                    .collect::<Vec<&str>>(),
            )
            .bind(tallies().map(|t| t.count).collect::<Vec<i64>>())
            .bind(tallies().map(|t| t.first_at).collect::<Vec<i64>>())
            .bind(tallies().map(|t| t.last_at).collect::<Vec<i64>>())
            .bind(kept(|row| row.id))
            .bind(kept(|row| row.version))
            .fetch_all(pool)
            .await
    }

    /// The group's requests, with `Some` for each exchange the statement
    /// wrote (numbered from its session's row) and `None` for the rest;
    /// what this task keeps of the written sessions goes back to
    /// `contexts`, and cached copies of them are extended.
    fn numbered(
        self,
        written: Vec<Written>,
        touched: &mut Vec<Touched>,
        contexts: &mut Contexts,
    ) -> (Vec<Pending>, Vec<Option<Numbered>>) {
        let mut sessions = self.sessions;
        let written: HashMap<String, (RowVersion, i64)> = written
            .into_iter()
            .map(|(id, session, next_seq, version)| {
                (session, (RowVersion { id, version }, next_seq))
            })
            .collect();
        let mut numbered = Vec::with_capacity(self.batch.len());
        let mut added: BTreeMap<&str, Vec<ConversationEntry>> = BTreeMap::new();
        for ((pending, entry), place) in self.batch.iter().zip(&self.entries).zip(&self.places) {
            let session = pending.session.as_str();
            numbered.push(written.get(session).map(|(_, next_seq)| {
                added.entry(session).or_default().push(entry.clone());
                Numbered {
                    seq: (next_seq - sessions[session].0.count + place) as u64,
                    entry: entry.clone(),
                }
            }));
        }
        for (session, entries) in added {
            if let Some((row, _)) = written.get(session) {
                touched.push(Touched {
                    session: session.to_owned(),
                    row: *row,
                    entries,
                });
            }
        }
        for (session, (row, _)) in written {
            if let Some((_, _, mut history)) = sessions.remove(&session) {
                history.drain(..history.len().saturating_sub(CONTEXT_EXCHANGES));
                contexts.insert(session, (row, history));
            }
        }
        (self.batch, numbered)
    }
}

/// Writes a whole batch with a fixed number of statements: one upsert for
/// all its sessions, one read of their recent history, then multi-row
/// inserts. Returns the answered exchanges in
/// batch order.
#[tracing::instrument(skip_all, fields(exchanges = batch.len()))]
async fn write_batch(
    pool: &PgPool,
    batch: &[&Pending],
    caps: Caps,
    touched: &mut Vec<Touched>,
    contexts: &mut Contexts,
) -> Result<Vec<Result<Numbered, StoreError>>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let refusals = admit(&mut tx, batch, caps).await?;
    let admitted: Vec<&Pending> = batch
        .iter()
        .copied()
        .zip(&refusals)
        .filter_map(|(pending, refusal)| refusal.is_none().then_some(pending))
        .collect();

    let tallies = tally(admitted.iter().copied());

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
        let entry = answer(pending, context.entry(session_ref).or_default())?;
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
    sqlx::query_with(INSERT_EXCHANGES, columns.arguments()?)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    for (session, (row, _)) in &next_seq {
        if let Some(mut entries) = context.remove(&row.id) {
            entries.drain(..entries.len().saturating_sub(CONTEXT_EXCHANGES));
            contexts.insert(session.clone(), (*row, entries));
        }
    }

    // What this batch added to each session, for its copies.
    let mut added: BTreeMap<&str, Vec<ConversationEntry>> = BTreeMap::new();
    for (pending, numbered) in admitted.iter().zip(&answered) {
        added
            .entry(pending.session.as_str())
            .or_default()
            .push(numbered.entry.clone());
    }
    for (session, entries) in added {
        if let Some((row, _)) = next_seq.get(session) {
            touched.push(Touched {
                session: session.to_owned(),
                row: *row,
                entries,
            });
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

/// A deadlock or serialization failure: the transaction was rolled back
/// and may be tried again.
fn is_transient(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|err| err.code())
        .is_some_and(|code| code.starts_with("40"))
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
    batch: &[&Pending],
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
