//! The session cache the instances share in Redis (`--redis-url`), in front
//! of the database: which version of each session is current, and the
//! session itself, so that a read of a session any instance has recently
//! read or written asks the database nothing.
//!
//! Per session, under the deployment's prefix:
//! - `v:{key}`: `id:version:mark:count:built`, the newest row (id and
//!   version, as the database's triggers number them) any instance has
//!   committed or read. It only ever moves forward (a larger id, or the
//!   same id and a larger version), whatever order the instances' updates
//!   arrive in. `mark` is the epoch it was vouched for under, or `-`: a
//!   version learned without proof that nothing newer was missed, which
//!   readers check with the database. A deleted session's version is
//!   [`GONE`]. `count` and `built` (empty when there is no body): how many
//!   exchanges of `b:` make the session at this version, and the version
//!   the body was begun at.
//! - `b:{key}`: a list, a header (`chatbot/2 id built key`) and then the
//!   session's exchanges, one JSON array each; appends push onto it. Its
//!   first `count` exchanges are served only when its header names the row,
//!   the `built` version and the key asked for, and all of them are there.
//! - `epoch`: a random token. Every instance's listener replaces it when
//!   it (re)connects to the database, since it may have missed writes made
//!   meanwhile with plain SQL; Redis restarted empty has none. A version is
//!   trusted only when marked with the current epoch, and an instance marks
//!   its updates only with an epoch it knew before it committed (or read)
//!   what it reports.
//!
//! An acknowledged write has been reported here before its answer left,
//! so the next read on any instance sees its version. See `docs/DEPLOYING.md`
//! for the cases that are only bounded (Redis unreachable from one
//! instance, writes with plain SQL).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use redis::Script;

use super::cache::RowVersion;
use super::trust::{LEASE, Trust};
use crate::domain::models::ConversationEntry;
use crate::domain::redis::{Redis, RedisFailure};
use crate::domain::store::compact::{Replies, Session};

/// The version that marks a deleted session (2^53 - 1: Lua's numbers are
/// doubles, exact up to there).
pub(super) const GONE: i64 = (1 << 53) - 1;
/// The most exchanges a session kept whole in Redis holds (larger ones are
/// read from the database by each instance once, then kept locally).
pub(super) const MOST_SHARED: usize = 2_000;
/// Seconds an entry lives in Redis after its last update.
const TTL_SECONDS: u64 = 3_600;

/// Updates the entries of several sessions at once (see the module's
/// doc). `KEYS`: the epoch, the report counter (`seq`), the members (see
/// [`trust`](super::trust)); then each session's `v:` and `b:` keys.
/// `ARGV`: the epoch the caller knew, the TTL, the mode (`append`: the
/// records are exchanges added by the commit that made this version;
/// `whole`: they are the whole session; `mark`: never trusted), the most
/// exchanges a body holds, the caller's membership id, what members'
/// channels begin with, `1` if a write waits on this report (every session
/// is then named in it, changed or not: the writer waits for its number),
/// the `born` key; then per session its key, id, version, the
/// `v:` value the caller saw before it read the database (`''`: none; if
/// it is still there, whatever it says is older than what was read, even
/// a version "from the future" that only a wrong writer could have put),
/// the count of records (-1: no body given) and the records. If any
/// session's version changed, numbers the report and publishes the
/// sessions changed to every other member. Returns the current epoch, the report
/// number, Redis's now (ms), the members whose lease holds, per session 1 if
/// its version is now current and trusted, and when this Redis began
/// holding our keys (`born`, ms: set by the first report after it lost
/// them).
const PUT: &str = r"
local epoch = redis.call('GET', KEYS[1])
local mode = ARGV[3]
local trusted = epoch and epoch == ARGV[1] and mode ~= 'mark'
local ttl = ARGV[2]
local most = tonumber(ARGV[4])
local changed, current = {}, {}
local curs = {}
for i = 4, #KEYS, 2000 do
  local vkeys = {}
  for j = i, math.min(i + 1998, #KEYS), 2 do vkeys[#vkeys + 1] = KEYS[j] end
  for _, value in ipairs(redis.call('MGET', unpack(vkeys))) do curs[#curs + 1] = value end
end
local function push(command, bkey, first, n)
  local len = 0
  for j = first, first + n - 1, 1000 do
    len = redis.call(command, bkey, unpack(ARGV, j, math.min(j + 999, first + n - 1)))
    if len == 0 then return 0 end
  end
  return len
end
local function rebuild(bkey, key, id, version, first, n)
  redis.call('DEL', bkey)
  redis.call('RPUSH', bkey, 'chatbot/2 ' .. id .. ' ' .. version .. ' ' .. key)
  push('RPUSH', bkey, first, n)
  redis.call('EXPIRE', bkey, ttl)
end
local at = 9
for i = 4, #KEYS, 2 do
  local vkey, bkey = KEYS[i], KEYS[i + 1]
  local key, id, version, seen = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  local n = tonumber(ARGV[at + 4])
  local first = at + 5
  if n > 0 then at = first + n else at = first end
  local nid, nver = tonumber(id), tonumber(version)
  local cur = curs[(i - 2) / 2]
  local cid, cver, cmark, ccount, cbuilt
  if type(cur) == 'string' then
    local a, b, c, d, e = string.match(cur, '^(%d+):(%d+):([^:]*):(%d*):(%d*)$')
    cid, cver, cmark, ccount, cbuilt = tonumber(a), tonumber(b), c, tonumber(d), e
  end
  local newer = cid == nil or nid > cid or (nid == cid and nver > cver)
    or (seen ~= '' and cur == seen)
  local same = cid ~= nil and nid == cid and nver == cver
  local count, built = nil, ''
  if mode == 'append' and newer and n >= 0 and nver == 0 and n <= most then
    rebuild(bkey, key, id, version, first, n)
    count, built = n, version
  elseif mode == 'append' and newer and n >= 0 and ccount and cid == nid and cver == nver - 1
      and ccount + n <= most then
    local len
    if n > 0 then len = push('RPUSHX', bkey, first, n) else len = redis.call('LLEN', bkey) end
    if len == ccount + n + 1 then count, built = ccount + n, cbuilt end
  elseif mode == 'whole' and n >= 0 and (newer or same) and n <= most then
    rebuild(bkey, key, id, version, first, n)
    count, built = n, version
  elseif same and not newer then
    count, built = ccount, cbuilt
  end
  if newer and count == nil then redis.call('DEL', bkey) end
  if newer or ARGV[7] == '1' then changed[#changed + 1] = key end
  local m = nil
  if newer or (same and trusted) then
    if trusted then m = epoch else m = '-' end
  elseif same and count ~= ccount then
    m = cmark
  end
  if m then
    local c = ''
    if count then c = string.format('%d', count) end
    redis.call('SET', vkey, id .. ':' .. version .. ':' .. m .. ':' .. c .. ':' .. built, 'EX', ttl)
  end
  if (newer or same) and trusted then current[#current + 1] = 1 else current[#current + 1] = 0 end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local members = redis.call('ZRANGEBYSCORE', KEYS[3], string.format('(%d', now), '+inf')
local born = redis.call('GET', ARGV[8])
if not born then
  born = string.format('%d', now)
  redis.call('SET', ARGV[8], born)
end
local seq
if #changed > 0 then
  seq = redis.call('INCR', KEYS[2])
  local message
  for _, member in ipairs(members) do
    if member ~= ARGV[5] then
      message = message or cjson.encode({seq, ARGV[5], changed, 0})
      redis.call('PUBLISH', ARGV[6] .. member, message)
    end
  end
else
  seq = tonumber(redis.call('GET', KEYS[2]) or '0')
end
return {epoch, seq, string.format('%d', now), members, current, born}
";

/// `KEYS`: the epoch, the report counter, the members. `ARGV`: a new
/// epoch, `replace` (or only where there is none), what members' channels
/// begin with. Begins the epoch and tells every member to forget what it
/// vouched for; the report's number, or 0 if there was an epoch and
/// `replace` was not asked.
const NEW_EPOCH: &str = r#"
local set
if ARGV[2] == 'replace' then
  set = redis.call('SET', KEYS[1], ARGV[1])
else
  set = redis.call('SET', KEYS[1], ARGV[1], 'NX')
end
if not set then return 0 end
local seq = redis.call('INCR', KEYS[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local members = redis.call('ZRANGEBYSCORE', KEYS[3], string.format('(%d', now), '+inf')
for _, member in ipairs(members) do
  redis.call('PUBLISH', ARGV[3] .. member, '[' .. string.format('%d', seq) .. ',"",[],1]')
end
return seq
"#;

/// [`PUT`]'s answer: the epoch, the report's number, Redis's now (ms), the
/// members, per session whether it is now current, and `born` (ms).
type Reported = (Option<String>, u64, String, Vec<String>, Vec<i64>, String);

/// Where a session's body in Redis is, by its version entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BodyAt {
    /// How many exchanges make the session.
    pub count: usize,
    /// The version the body was begun at (its header's).
    pub built: i64,
}

/// What Redis says of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Known {
    /// This is its current row, trusted, and where its body is, if any.
    Current(RowVersion, Option<BodyAt>),
    /// It was deleted, trusted.
    Gone,
    /// Nothing trusted: ask the database.
    Unknown,
}

/// A lookup's answer, with the epoch current when it was made (to report
/// what the database then says, see [`Shared::put`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Seen {
    pub epoch: Option<String>,
    /// The `v:` entry as it was.
    pub version: Option<String>,
    pub known: Known,
    /// The number of the last report it reflects.
    pub seq: u64,
}

/// How [`Shared::put`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// A commit of this instance appended the records.
    Append,
    /// The records (if any) are the whole session at this version.
    Whole,
    /// A version learned from elsewhere (a notification), never trusted.
    Mark,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Append => "append",
            Self::Whole => "whole",
            Self::Mark => "mark",
        }
    }
}

/// One session's report to [`Shared::put`].
pub(super) struct Put<'a> {
    pub key: &'a str,
    /// The row; version [`GONE`] for a deleted session.
    pub row: RowVersion,
    /// The records, one per exchange ([`record`]); `None`: no body.
    pub records: Option<Vec<String>>,
    /// What a reader saw in Redis before it read the database ([`Seen`]).
    pub seen: Option<&'a str>,
}

/// The shared cache's side of the PostgreSQL store.
pub(super) struct Shared {
    redis: Arc<Redis>,
    put: Script,
    new_epoch: Script,
    /// What this instance may serve without asking.
    trust: Arc<Trust>,
    /// The epoch Redis last showed this instance.
    epoch: Mutex<Option<String>>,
    /// Set while this instance may have missed a change it should have
    /// passed on (its listener (re)connected, or Redis could not be told):
    /// its reads ask the database until a new epoch is begun.
    owed: Arc<AtomicBool>,
    /// Where reads ask what Redis says of their sessions.
    lookups: mpsc::UnboundedSender<Lookup>,
}

/// A read's question to Redis, and where its answer goes.
struct Lookup {
    key: String,
    answer: oneshot::Sender<Result<Seen, RedisFailure>>,
}

/// The most sessions one `MGET` asks about.
const MOST_PER_LOOKUP: usize = 256;

/// While the store lives: the lookups waiting at one moment go out as one
/// `MGET` (the epoch and each session's version), as the database's
/// version checks do (`checks`), so one round trip answers tens of reads;
/// the next batch is sent without waiting for the last one's answer.
async fn answer_lookups(shared: Weak<Shared>, mut waiting: mpsc::UnboundedReceiver<Lookup>) {
    let mut batch = Vec::with_capacity(MOST_PER_LOOKUP);
    while waiting.recv_many(&mut batch, MOST_PER_LOOKUP).await > 0 {
        // Let the reads already woken ask too.
        tokio::task::yield_now().await;
        while batch.len() < MOST_PER_LOOKUP {
            match waiting.try_recv() {
                Ok(lookup) => batch.push(lookup),
                Err(_) => break,
            }
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        tokio::spawn(answer_batch(shared, std::mem::take(&mut batch)));
    }
}

/// Asks Redis about `batch` in one `MGET` and answers each lookup.
async fn answer_batch(shared: Arc<Shared>, batch: Vec<Lookup>) {
    let mut mget = redis::cmd("MGET");
    mget.arg(shared.redis.key("epoch"))
        .arg(shared.redis.key("seq"));
    for lookup in &batch {
        mget.arg(shared.version_key(&lookup.key));
    }
    let answered: Result<Vec<Option<String>>, _> = shared.redis.query(&mget).await;
    let values = match answered {
        Ok(values) if values.len() == batch.len() + 2 => values,
        other => {
            let err = other
                .err()
                .unwrap_or_else(|| RedisFailure::Refused("MGET answered another count".into()));
            for lookup in batch {
                let _ = lookup.answer.send(Err(err.clone()));
            }
            return;
        }
    };
    let mut values = values.into_iter();
    let epoch = values.next().flatten();
    // No counter yet is 0; one that is not a number is not ours.
    let seq = match values.next().flatten() {
        None => Some(0),
        Some(seq) => seq.parse::<u64>().ok(),
    };
    shared.learn(epoch.as_deref());
    if epoch.is_none() {
        shared.new_epoch(false).await;
    }
    for (lookup, version) in batch.into_iter().zip(values) {
        let known = known(epoch.as_deref(), version.as_deref());
        let known = if seq.is_some() { known } else { Known::Unknown };
        let seen = Seen {
            epoch: epoch.clone(),
            version,
            known,
            seq: seq.unwrap_or(0),
        };
        // The read may have gone (its client hung up): nothing to do.
        let _ = lookup.answer.send(Ok(seen));
    }
}

/// What a `v:` entry says, given the current epoch.
fn known(epoch: Option<&str>, version: Option<&str>) -> Known {
    match (epoch, version.and_then(parse_version)) {
        (Some(epoch), Some((row, mark, body))) if mark == epoch => {
            if row.version == GONE {
                Known::Gone
            } else {
                Known::Current(row, body)
            }
        }
        _ => Known::Unknown,
    }
}

/// An exchange as it is kept in a body.
pub(super) fn record(entry: &ConversationEntry) -> String {
    serde_json::to_string(&(
        &*entry.user_message,
        &*entry.bot_reply,
        &*entry.user_name,
        entry.timestamp,
    ))
    .unwrap_or_default()
}

impl Shared {
    /// The shared side, with the task that answers lookups.
    pub fn start(redis: Arc<Redis>) -> Arc<Self> {
        let (lookups, waiting) = mpsc::unbounded_channel();
        let owed = Arc::new(AtomicBool::new(true));
        let shared = Arc::new(Self {
            trust: Trust::new(redis.clone(), owed.clone()),
            redis,
            put: Script::new(PUT),
            new_epoch: Script::new(NEW_EPOCH),
            epoch: Mutex::new(None),
            owed,
            lookups,
        });
        tokio::spawn(answer_lookups(Arc::downgrade(&shared), waiting));
        shared
    }

    /// Whether reads may trust Redis: it answers, and nothing is owed.
    pub fn is_up(&self) -> bool {
        self.redis.is_up() && !self.owed.load(Ordering::Relaxed)
    }

    /// A new epoch is owed (see [`Shared::settle`]).
    pub fn owe(&self) {
        self.owed.store(true, Ordering::Relaxed);
    }

    /// Begins the new epoch owed, if one is and Redis answers; until then
    /// this instance's reads ask the database.
    pub async fn settle(&self) {
        if self.owed.load(Ordering::Relaxed) && self.redis.is_up() && self.new_epoch(true).await {
            self.owed.store(false, Ordering::Relaxed);
        }
    }

    /// The epoch Redis last showed this instance.
    pub fn known_epoch(&self) -> Option<String> {
        self.epoch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn learn(&self, epoch: Option<&str>) {
        let mut known = self.epoch.lock().unwrap_or_else(PoisonError::into_inner);
        if known.as_deref() != epoch {
            *known = epoch.map(str::to_owned);
        }
    }

    fn version_key(&self, key: &str) -> String {
        self.redis.key(&format!("v:{key}"))
    }

    fn body_key(&self, key: &str) -> String {
        self.redis.key(&format!("b:{key}"))
    }

    /// What Redis says of `key` (one `MGET` with the other reads waiting).
    pub async fn lookup(&self, key: &str) -> Result<Seen, RedisFailure> {
        let (answer, answered) = oneshot::channel();
        let lookup = Lookup {
            key: key.to_owned(),
            answer,
        };
        let stopped = || RedisFailure::Refused("the lookup task stopped".into());
        self.lookups.send(lookup).map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }

    /// The session at `row` from its body in Redis (`at`), if that body is
    /// sound and of that very row; anything else (missing, begun at another
    /// version, of another key, cut short, not ours) is `None`.
    pub async fn body(
        &self,
        key: &str,
        row: RowVersion,
        at: BodyAt,
        replies: &Replies,
    ) -> Option<Session> {
        let mut lrange = redis::cmd("LRANGE");
        lrange.arg(self.body_key(key)).arg(0).arg(at.count);
        let items: Vec<Vec<u8>> = self.redis.query(&lrange).await.ok()?;
        parse_body(&items, key, row, at, replies)
    }

    /// Leaves the instances sharing Redis (the server stops).
    pub async fn close(&self) {
        self.trust.close().await;
    }

    /// Whether this instance's membership holds (it may vouch for copies).
    pub fn holds(&self) -> bool {
        self.trust.holds()
    }

    /// The version of `key` this instance may serve with no question.
    pub fn vouched(&self, key: &str) -> Option<RowVersion> {
        self.trust.vouched(key)
    }

    /// The membership's generation now, to be passed to [`Shared::vouch`]
    /// with what a lookup sent now sees.
    pub fn generation(&self) -> u64 {
        self.trust.membership().0
    }

    /// A lookup made under `generation` saw `row` of `key` current.
    pub fn vouch(&self, key: &str, row: RowVersion, seen: &Seen, generation: u64) {
        self.trust.vouch(key, row, seen.seq, generation);
    }

    /// A notification from the database says `key` changed.
    pub fn forget(&self, key: &str) {
        self.trust.forget(key);
    }

    /// Reports `puts` (see [`PUT`]); `epoch` is the one this instance knew
    /// before it committed or read what it reports. This instance's own
    /// copies are invalidated (and the versions now current vouched for)
    /// before it returns; with `acknowledged` (a write about to be
    /// answered), so are every other member's ([`trust`](super::trust)).
    pub async fn put(
        &self,
        epoch: Option<&str>,
        mode: Mode,
        puts: &[Put<'_>],
        acknowledged: bool,
    ) -> Result<(), RedisFailure> {
        if puts.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let (generation, id) = self.trust.membership();
        let mut invocation = self.put.key(self.redis.key("epoch"));
        invocation
            .key(self.redis.key("seq"))
            .key(self.redis.key("members"))
            .arg(epoch.unwrap_or(""))
            .arg(TTL_SECONDS)
            .arg(mode.name())
            .arg(MOST_SHARED)
            .arg(id.as_deref().unwrap_or(""))
            .arg(self.trust.channels())
            .arg(if acknowledged { "1" } else { "0" })
            .arg(self.redis.key("born"));
        for put in puts {
            invocation
                .key(self.version_key(put.key))
                .key(self.body_key(put.key));
            invocation
                .arg(put.key)
                .arg(put.row.id)
                .arg(put.row.version)
                .arg(put.seen.unwrap_or(""));
            match &put.records {
                Some(records) => {
                    invocation.arg(records.len());
                    for record in records {
                        invocation.arg(record.as_str());
                    }
                }
                None => {
                    invocation.arg(-1);
                }
            }
        }
        // A write about to be acknowledged tries even while Redis is
        // thought down: it may be back for the others already, who would
        // trust what it holds.
        let reported: Result<Reported, _> = if acknowledged {
            self.redis.script_anyway(&invocation).await
        } else {
            self.redis.script(&invocation).await
        };
        let (current, seq, now, members, vouched, born) = match reported {
            Ok(reported) => reported,
            Err(err) => {
                for put in puts {
                    self.trust.forget(put.key);
                }
                return Err(err);
            }
        };
        self.learn(current.as_deref());
        self.trust.invalidate(puts.iter().map(|put| put.key), seq);
        for (put, vouched) in puts.iter().zip(vouched) {
            if vouched == 1 && put.row.version != GONE {
                self.trust.vouch(put.key, put.row, seq, generation);
            }
        }
        if acknowledged {
            // Redis lost our keys less than a lease ago: an instance that
            // did not notice may still vouch for copies from before, for
            // at most a lease after its last renewal there.
            let (now, born) = (now.parse::<u64>(), born.parse::<u64>());
            if let (Ok(now), Ok(born)) = (now, born) {
                let young = Duration::from_millis(
                    born.saturating_add(LEASE.as_millis() as u64)
                        .saturating_sub(now),
                );
                // (Only if so: even a sleep of zero waits for the timer's
                // next tick, a millisecond, and writes are answered in turn.)
                if !young.is_zero() {
                    tokio::time::sleep(young.min(LEASE)).await;
                }
            }
            if self
                .trust
                .await_members(seq, &members, id.is_some())
                .await
                .is_err()
            {
                return Err(RedisFailure::Down);
            }
            metrics::histogram!("chatbot_redis_report_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// A write could not be reported: once every member that might not
    /// have heard of it has stopped trusting itself (Redis unreachable for
    /// a lease: none can renew), it can be answered. Where Redis is
    /// unreachable from this instance alone, the notification the caller
    /// sends is what tells the others.
    pub async fn unreported(&self) {
        if let Some(since) = self.redis.down_since()
            && since + LEASE > std::time::Instant::now()
        {
            tokio::time::sleep_until((since + LEASE).into()).await;
        }
    }

    /// A new epoch: every version in Redis is to be checked with the
    /// database again, and every member forgets what it vouched for.
    /// `replace`: even if there is one (this instance may have missed
    /// notifications); else only where there is none.
    pub async fn new_epoch(&self, replace: bool) -> bool {
        let mut token = [0u8; 16];
        if getrandom::fill(&mut token).is_err() {
            return false;
        }
        let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
        let mut invocation = self.new_epoch.key(self.redis.key("epoch"));
        invocation
            .key(self.redis.key("seq"))
            .key(self.redis.key("members"))
            .arg(&token)
            .arg(if replace { "replace" } else { "absent" })
            .arg(self.trust.channels());
        match self.redis.script::<u64>(&invocation).await {
            Ok(0) => true,
            Ok(seq) => {
                self.trust.invalidate_all(seq);
                self.learn(Some(&token));
                true
            }
            Err(_) => false,
        }
    }
}

/// `id:version:mark:count:built` of a `v:` entry.
fn parse_version(value: &str) -> Option<(RowVersion, &str, Option<BodyAt>)> {
    let mut parts = value.split(':');
    let id = parts.next()?.parse().ok()?;
    let version = parts.next()?.parse().ok()?;
    let mark = parts.next()?;
    let body = match (parts.next()?, parts.next()?) {
        ("", "") => None,
        (count, built) => Some(BodyAt {
            count: count.parse().ok()?,
            built: built.parse().ok()?,
        }),
    };
    if parts.next().is_some() {
        return None;
    }
    Some((RowVersion { id, version }, mark, body))
}

/// A body's items (its header and first `at.count` exchanges) as a
/// session, if sound and of `key` at `row`.
fn parse_body(
    items: &[Vec<u8>],
    key: &str,
    row: RowVersion,
    at: BodyAt,
    replies: &Replies,
) -> Option<Session> {
    let (header, records) = items.split_first()?;
    let header = std::str::from_utf8(header).ok()?;
    let mut parts = header.splitn(4, ' ');
    let sound = parts.next() == Some("chatbot/2")
        && parts.next()?.parse::<i64>().ok()? == row.id
        && parts.next()?.parse::<i64>().ok()? == at.built
        && at.built <= row.version
        && parts.next()? == key
        && records.len() == at.count;
    if !sound || records.is_empty() {
        return None;
    }
    let mut session = Session::with_capacity(records.len());
    for record in records {
        let (message, reply, name, at): (String, String, String, i64) =
            serde_json::from_slice(record).ok()?;
        session
            .push_row(&message, &reply, &name, at, replies)
            .ok()?;
    }
    Some(session)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(message: &str) -> ConversationEntry {
        ConversationEntry {
            user_message: message.into(),
            bot_reply: "a \"reply\"\n".into(),
            user_name: "Ann".into(),
            timestamp: 1_700_000_000,
        }
    }

    fn body(header: &str, messages: &[&str]) -> Vec<Vec<u8>> {
        std::iter::once(header.as_bytes().to_vec())
            .chain(messages.iter().map(|m| record(&entry(m)).into_bytes()))
            .collect()
    }

    #[test]
    fn a_body_is_served_only_when_sound_and_of_the_row_asked_for() {
        let row = RowVersion { id: 7, version: 3 };
        let at = BodyAt { count: 2, built: 1 };
        let replies = Replies::default();
        let good = body("chatbot/2 7 1 alice chat", &["one", "two"]);
        let session = parse_body(&good, "alice chat", row, at, &replies).expect("sound");
        assert_eq!(session.len(), 2);
        assert_eq!(session.entry(1, &[]), entry("two"));

        for (what, items, key, at) in [
            (
                "begun at another version",
                body("chatbot/2 7 2 alice chat", &["one", "two"]),
                "alice chat",
                at,
            ),
            (
                "begun after the version asked for",
                body("chatbot/2 7 4 alice chat", &["one", "two"]),
                "alice chat",
                BodyAt { count: 2, built: 4 },
            ),
            (
                "another row",
                body("chatbot/2 8 1 alice chat", &["one", "two"]),
                "alice chat",
                at,
            ),
            ("another key", good.clone(), "bob chat", at),
            (
                "cut short",
                body("chatbot/2 7 1 alice chat", &["one"]),
                "alice chat",
                at,
            ),
            (
                "the old format",
                body("chatbot/1 7 3 2 alice chat", &["one", "two"]),
                "alice chat",
                at,
            ),
            (
                "not ours",
                body("something else", &["one", "two"]),
                "alice chat",
                at,
            ),
            ("empty", Vec::new(), "alice chat", at),
            (
                "a record that is not ours",
                vec![b"chatbot/2 7 1 alice chat".to_vec(), b"{\"x\":1}".to_vec()],
                "alice chat",
                BodyAt { count: 1, built: 1 },
            ),
            (
                "a record cut short",
                vec![
                    b"chatbot/2 7 1 alice chat".to_vec(),
                    b"[\"a\",\"b\"".to_vec(),
                ],
                "alice chat",
                BodyAt { count: 1, built: 1 },
            ),
            (
                "not UTF-8",
                vec![
                    b"chatbot/2 7 1 alice chat".to_vec(),
                    b"[\"\xff\",\"b\",\"c\",1]".to_vec(),
                ],
                "alice chat",
                BodyAt { count: 1, built: 1 },
            ),
        ] {
            assert!(
                parse_body(&items, key, row, at, &replies).is_none(),
                "{what}"
            );
        }
    }

    #[test]
    fn versions_parse_with_their_mark_and_body() {
        assert_eq!(
            parse_version("12:5:abc:3:2"),
            Some((
                RowVersion { id: 12, version: 5 },
                "abc",
                Some(BodyAt { count: 3, built: 2 })
            ))
        );
        assert_eq!(
            parse_version("12:5:-::"),
            Some((RowVersion { id: 12, version: 5 }, "-", None))
        );
        for bad in [
            "",
            "12",
            "12:5",
            "12:5:e",
            "x:5:e::",
            "12:y:e::",
            "-1x:5:e::",
            "12:5:e:3:",
            "12:5:e::2",
            "12:5:e:x:1",
            "12:5:e:1:2:3",
        ] {
            assert_eq!(parse_version(bad), None, "{bad:?}");
        }
    }
}
