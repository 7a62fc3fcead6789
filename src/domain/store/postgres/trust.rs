//! Which copies of sessions this instance may serve without asking anyone
//! (with `--redis-url`): leases and invalidations, so that a read of a
//! session whose copy is current costs no round trip at all.
//!
//! - Each instance holds a **membership**: an id in the `members` sorted
//!   set, scored with when it lapses (Redis's clock, [`LEASE`] after its
//!   last renewal). It renews every [`RENEW_EVERY`] and trusts itself only
//!   until [`TRUSTED_SHARE`] of a lease after it sent the renewal, so it
//!   stops trusting before Redis counts it lapsed.
//! - Every report that makes a session's version current in Redis also
//!   numbers itself (`seq`) and publishes an **invalidation** (the sessions
//!   it changed) to every other member, on its channel `inv:{id}`, in the
//!   same script, so invalidations come in the order of the reports (and a
//!   lone instance publishes nothing). Members drop the copies they vouched
//!   for before that number and **acknowledge** it on the writer's channel.
//! - A write is answered only once every other member whose lease held when
//!   it was reported has acknowledged, or has been **fenced**: a member
//!   silent for [`ACK_WAIT`] is taken out of `members` (so it cannot renew)
//!   and the writer waits until its lease has lapsed. A member that could
//!   not renew forgets everything and joins again under a new id.
//! - A copy is vouched for as of the report number its version was seen at
//!   (a lookup's `MGET` or this instance's own report), and only if no
//!   invalidation after that number has come for it meanwhile.
//!
//! So an acknowledged write is never followed by a trusted read of an older
//! copy anywhere, unless a member went silent (then writes wait at most
//! `ACK_WAIT` plus a lease) or Redis itself was unreachable (see
//! `docs/DEPLOYING.md` for that bound).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use redis::Script;
use tokio::sync::Notify;

use super::cache::RowVersion;
use crate::domain::redis::Redis;

/// How long a membership holds in Redis after its last renewal.
pub(super) const LEASE: Duration = Duration::from_millis(1_000);
/// How often a member renews.
const RENEW_EVERY: Duration = Duration::from_millis(200);
/// The part of a lease a member trusts itself for, from when it sent the
/// renewal (the rest is margin for clocks and scheduling).
const TRUSTED_SHARE: f64 = 0.8;
/// How often a writer without a membership asks Redis what a member applied.
const ASK_EVERY: Duration = Duration::from_millis(5);
/// How long a writer waits for a member's acknowledgement before fencing it.
const ACK_WAIT: Duration = Duration::from_millis(250);
/// Invalidations are remembered per slot (a hash of the key), so that a
/// copy seen before an invalidation that came first is not vouched for.
const SLOTS: usize = 4_096;
/// Vouched copies past this are all forgotten (they are asked about again).
const MOST_VOUCHED: usize = 100_000;

/// `KEYS`: members, fenced, the report counter. `ARGV`: id, lease (ms),
/// `join` or `renew`. Joins, answering the report number it joined at; or
/// renews a membership that is still there and has not lapsed (0, else
/// -1: a lapsed member may have missed invalidations and must join anew).
const JOIN: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lapses = string.format('%d', now + tonumber(ARGV[2]))
if ARGV[3] == 'renew' then
  local held = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '0')
  if held <= now then
    redis.call('ZREM', KEYS[1], ARGV[1])
    return -1
  end
  redis.call('ZADD', KEYS[1], 'XX', lapses, ARGV[1])
  return 0
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('%d', now))
redis.call('ZADD', KEYS[1], lapses, ARGV[1])
return tonumber(redis.call('GET', KEYS[3]) or '0')
";

/// `KEYS`: members, fenced. `ARGV`: id. Takes the member out (it cannot
/// renew any more) and returns when its lease lapses and Redis's now (ms).
const FENCE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local a = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '0')
local b = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]) or '0')
if a > 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZADD', KEYS[2], string.format('%d', a), ARGV[1])
end
return {string.format('%d', math.max(a, b)), string.format('%d', now)}
";

/// This instance's leases and vouched copies.
pub(super) struct Trust {
    redis: Arc<Redis>,
    /// This instance's part of each of its membership ids.
    instance: String,
    state: Mutex<State>,
    /// Whether a membership holds (joined, not yet left).
    joined: AtomicBool,
    /// Set when the store closes: no membership again.
    closed: AtomicBool,
    /// Set when the subscription ended or Redis stopped answering: Redis
    /// may have lost (or gone back on) what it held, so a new epoch is
    /// owed before it is trusted again (the shared cache's flag).
    owed: Arc<AtomicBool>,
    /// Until when (ns after `base`) this instance may trust itself.
    until: AtomicU64,
    base: Instant,
    /// The newest report number each member acknowledged.
    acked: Mutex<HashMap<String, u64>>,
    acks: Notify,
    join: Script,
    fence: Script,
    /// `inv:` under the deployment's prefix: each member's channel is this
    /// and its id.
    channels: String,
}

struct State {
    /// Raised each time a membership begins: what was vouched for under an
    /// earlier one is forgotten.
    generation: u64,
    /// The current membership's id.
    id: Option<String>,
    /// Copies vouched for: their version and the report number it was
    /// current at.
    vouched: HashMap<String, (RowVersion, u64)>,
    /// The newest invalidation seen per slot.
    slots: Vec<u64>,
    /// Nothing seen before this report number is vouched for.
    floor: u64,
}

/// An invalidation as published: report number, writer's id, sessions,
/// and 1 when every session is meant.
type Invalidation = (u64, String, Vec<String>, u8);

impl Trust {
    pub fn new(redis: Arc<Redis>, owed: Arc<AtomicBool>) -> Arc<Self> {
        let mut token = [0u8; 8];
        // Without randomness, the address is unique enough within one host.
        let instance = if getrandom::fill(&mut token).is_ok() {
            token.iter().map(|b| format!("{b:02x}")).collect()
        } else {
            format!("{:p}", &token)
        };
        let channels = redis.key("inv:");
        let trust = Arc::new(Self {
            redis,
            instance,
            state: Mutex::new(State {
                generation: 0,
                id: None,
                vouched: HashMap::new(),
                slots: vec![0; SLOTS],
                floor: 0,
            }),
            joined: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            owed,
            until: AtomicU64::new(0),
            base: Instant::now(),
            acked: Mutex::new(HashMap::new()),
            acks: Notify::new(),
            join: Script::new(JOIN),
            fence: Script::new(FENCE),
            channels,
        });
        tokio::spawn(keep(Arc::downgrade(&trust)));
        trust
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What each member's channel name begins with, for the scripts that
    /// publish invalidations.
    pub fn channels(&self) -> &str {
        &self.channels
    }

    /// The membership now: its generation, and its id if it holds.
    pub fn membership(&self) -> (u64, Option<String>) {
        let state = self.state();
        (state.generation, state.id.clone())
    }

    /// Whether the membership holds now.
    pub fn holds(&self) -> bool {
        self.joined.load(Ordering::Acquire)
            && (self.base.elapsed().as_nanos() as u64) < self.until.load(Ordering::Acquire)
    }

    /// The version of `key` this instance may serve without asking, if any.
    pub fn vouched(&self, key: &str) -> Option<RowVersion> {
        if !self.holds() {
            return None;
        }
        self.state().vouched.get(key).map(|(row, _)| *row)
    }

    /// `row` of `key` was current at report number `seq`, as seen under
    /// membership `generation`: vouch for it, unless the membership changed
    /// or an invalidation after `seq` came for it meanwhile.
    pub fn vouch(&self, key: &str, row: RowVersion, seq: u64, generation: u64) {
        self.state().vouch(key, row, seq, generation);
    }

    /// Report `seq` changed `keys`: what was vouched for before it is not.
    pub fn invalidate<'a>(&self, keys: impl IntoIterator<Item = &'a str>, seq: u64) {
        self.state().invalidate(keys, seq);
    }

    /// Report `seq` changed every session (a new epoch).
    pub fn invalidate_all(&self, seq: u64) {
        self.state().invalidate_all(seq);
    }

    /// `key` changed and its report may come late (a notification from the
    /// database): stop vouching for it now.
    pub fn forget(&self, key: &str) {
        self.state().vouched.remove(key);
    }

    /// Waits until every other member in `members` has acknowledged report
    /// `seq`, or has been fenced and its lease has lapsed. `Err` if a silent
    /// member could not be fenced (Redis unreachable from here): the caller
    /// falls back as for a report that failed.
    /// `listening`: this instance held a membership when it reported, so
    /// acknowledgements reach it on its channel; else it asks Redis for
    /// them (`applied`) every few milliseconds.
    pub async fn await_members(
        &self,
        seq: u64,
        members: &[String],
        listening: bool,
    ) -> Result<(), ()> {
        let started = Instant::now();
        for member in members {
            // This instance, under this membership or an earlier one: it
            // applied the report itself, or forgot everything.
            if self.is_own(member) {
                continue;
            }
            let mut lapses: Option<Instant> = None;
            loop {
                let notified = self.acks.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if !listening {
                    self.ask_applied(member).await;
                }
                if self.acked(member) >= seq {
                    break;
                }
                let now = Instant::now();
                match lapses {
                    Some(lapses) if now >= lapses => break,
                    Some(lapses) => {
                        let _ = tokio::time::timeout_at(lapses.into(), notified).await;
                    }
                    None if now >= started + ACK_WAIT => {
                        lapses = Some(self.fence_member(member).await.ok_or(())?);
                    }
                    None => {
                        let wake = if listening {
                            started + ACK_WAIT
                        } else {
                            (now + ASK_EVERY).min(started + ACK_WAIT)
                        };
                        let _ = tokio::time::timeout_at(wake.into(), notified).await;
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether membership id `id` is this instance's (now or before).
    fn is_own(&self, id: &str) -> bool {
        id.rsplit_once('-')
            .is_some_and(|(instance, _)| instance == self.instance)
    }

    /// Leaves for good (the server stops): the other instances' writes
    /// need not wait for this one's lease to lapse.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let (_, Some(id)) = self.membership() {
            leave(self, &id).await;
        }
    }

    /// Records what Redis says member `id` applied (`applied`).
    async fn ask_applied(&self, id: &str) {
        let mut zscore = redis::cmd("ZSCORE");
        zscore.arg(self.redis.key("applied")).arg(id);
        if let Ok(Some(seq)) = self.redis.query::<Option<f64>>(&zscore).await {
            self.record_ack(id, seq as u64);
        }
    }

    fn record_ack(&self, id: &str, seq: u64) {
        let mut acked = self.acked.lock().unwrap_or_else(PoisonError::into_inner);
        if acked.len() > 1_024 {
            acked.clear();
        }
        let held = acked.entry(id.to_owned()).or_default();
        *held = (*held).max(seq);
        drop(acked);
        self.acks.notify_waiters();
    }

    fn acked(&self, id: &str) -> u64 {
        let acked = self.acked.lock().unwrap_or_else(PoisonError::into_inner);
        acked.get(id).copied().unwrap_or(0)
    }

    /// Fences member `id`; when its lease lapses, on this instance's clock.
    async fn fence_member(&self, id: &str) -> Option<Instant> {
        metrics::counter!("chatbot_redis_fenced_total").increment(1);
        let mut invocation = self.fence.key(self.redis.key("members"));
        invocation.key(self.redis.key("fenced")).arg(id);
        let answer: (String, String) = self.redis.script_anyway(&invocation).await.ok()?;
        let received = Instant::now();
        let lapses: u64 = answer.0.parse().ok()?;
        let now: u64 = answer.1.parse().ok()?;
        tracing::warn!(
            member = id,
            "an instance did not acknowledge a change in time: fenced until its lease lapses"
        );
        // Never longer than a lease from now, whatever the score says.
        let wait = Duration::from_millis(lapses.saturating_sub(now)).min(LEASE);
        Some(received + wait)
    }

    /// A new generation: everything vouched for is forgotten.
    fn begin(&self) -> u64 {
        self.joined.store(false, Ordering::Release);
        let mut state = self.state();
        state.generation += 1;
        state.id = None;
        state.vouched.clear();
        state.slots.fill(0);
        state.floor = 0;
        state.generation
    }

    /// Joins (or renews, `renew`) as `id`: the report number it joined at
    /// (0 for a renewal), or `None` if Redis did not take it.
    async fn join_as(&self, id: &str, renew: bool) -> Option<u64> {
        let mut invocation = self.join.key(self.redis.key("members"));
        invocation
            .key(self.redis.key("fenced"))
            .key(self.redis.key("seq"))
            .arg(id)
            .arg(LEASE.as_millis() as u64)
            .arg(if renew { "renew" } else { "join" });
        let answer = self.redis.script::<i64>(&invocation).await.ok()?;
        u64::try_from(answer).ok()
    }

    /// The membership (re)taken at `sent` holds for a while more.
    fn extend(&self, sent: Instant) {
        let until = sent.duration_since(self.base) + LEASE.mul_f64(TRUSTED_SHARE);
        self.until.store(until.as_nanos() as u64, Ordering::Release);
        self.joined.store(true, Ordering::Release);
    }

    /// Applies one message; `Some((writer, seq))` if it is an invalidation
    /// to acknowledge, `Err` if it cannot be read (the membership must end:
    /// what it said is unknown).
    fn receive(&self, message: &redis::Msg) -> Result<Option<(String, u64)>, ()> {
        let payload = message.get_payload_bytes();
        if let Some(ack) = payload.strip_prefix(b"ack ") {
            let text = std::str::from_utf8(ack).map_err(|_| ())?;
            let (id, seq) = text.split_once(' ').ok_or(())?;
            let seq: u64 = seq.parse().map_err(|_| ())?;
            self.record_ack(id, seq);
            return Ok(None);
        }
        let (seq, writer, keys, all): Invalidation =
            serde_json::from_slice(payload).map_err(|_| ())?;
        if all == 1 {
            self.state().invalidate_all(seq);
        } else {
            self.invalidate(keys.iter().map(String::as_str), seq);
        }
        Ok((!self.is_own(&writer)).then_some((writer, seq)))
    }
}

impl State {
    fn vouch(&mut self, key: &str, row: RowVersion, seq: u64, generation: u64) {
        if self.generation != generation
            || self.id.is_none()
            || seq < self.floor
            || self.slots[slot(key)] > seq
        {
            return;
        }
        if self.vouched.len() >= MOST_VOUCHED {
            self.vouched.clear();
        }
        match self.vouched.get_mut(key) {
            Some(held) if held.1 > seq => {}
            Some(held) => *held = (row, seq),
            None => {
                self.vouched.insert(key.to_owned(), (row, seq));
            }
        }
    }

    fn invalidate<'a>(&mut self, keys: impl IntoIterator<Item = &'a str>, seq: u64) {
        for key in keys {
            let at = slot(key);
            self.slots[at] = self.slots[at].max(seq);
            if self.vouched.get(key).is_some_and(|held| held.1 < seq) {
                self.vouched.remove(key);
            }
        }
    }

    fn invalidate_all(&mut self, seq: u64) {
        self.floor = self.floor.max(seq);
        self.vouched.clear();
    }
}

fn slot(key: &str) -> usize {
    use std::hash::BuildHasher;
    (foldhash::fast::FixedState::with_seed(0).hash_one(key) as usize) % SLOTS
}

/// For as long as `trust` lives: subscribes, joins, applies invalidations
/// and acknowledges them, renews; on any failure forgets everything and
/// starts again once Redis answers.
async fn keep(trust: Weak<Trust>) {
    loop {
        let Some(strong) = trust.upgrade() else {
            return;
        };
        if strong.closed.load(Ordering::Acquire) {
            return;
        }
        if strong.redis.is_up() {
            hold(&trust, strong).await;
        } else {
            drop(strong);
        }
        tokio::time::sleep(RENEW_EVERY).await;
    }
}

/// One membership, from subscribing to leaving.
async fn hold(weak: &Weak<Trust>, trust: Arc<Trust>) {
    let generation = trust.begin();
    let id = format!("{}-{generation}", trust.instance);
    let channel = format!("{}{id}", trust.channels);
    let Some(pubsub) = trust.redis.subscribe(&[channel]).await else {
        return;
    };
    let mut messages = pubsub.into_on_message();
    let sent = Instant::now();
    let Some(joined_at) = trust.join_as(&id, false).await else {
        return;
    };
    let taken = {
        let mut state = trust.state();
        let taken = state.generation == generation && !trust.closed.load(Ordering::Acquire);
        if taken {
            state.id = Some(id.clone());
            // A version seen before the membership holds (a lookup sent
            // before it, a report made before it) may have been changed by
            // a report that did not wait for this instance.
            state.floor = state.floor.max(joined_at);
        }
        taken
    };
    if !taken {
        return leave(&trust, &id).await;
    }
    trust.extend(sent);
    drop(trust);
    let mut renewals = tokio::time::interval_at((Instant::now() + RENEW_EVERY).into(), RENEW_EVERY);
    renewals.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = messages.next() => {
                let Some(message) = message else {
                    if let Some(trust) = weak.upgrade() {
                        trust.owed.store(true, Ordering::Relaxed);
                    }
                    break;
                };
                let Some(trust) = weak.upgrade() else { return };
                // The newest report of each writer to acknowledge.
                let mut newest: HashMap<String, u64> = HashMap::new();
                let mut next = Some(message);
                while let Some(message) = next {
                    match trust.receive(&message) {
                        Ok(Some((writer, seq))) => {
                            let held = newest.entry(writer).or_default();
                            *held = (*held).max(seq);
                        }
                        Ok(None) => {}
                        Err(()) => {
                            tracing::warn!("an invalidation could not be read: forgetting every copy");
                            return leave(&trust, &id).await;
                        }
                    }
                    next = messages.next().now_or_never().flatten();
                }
                if let Some(&most) = newest.values().max() {
                    // Kept in `applied` too, for writers between memberships.
                    let mut pipe = redis::pipe();
                    pipe.cmd("ZADD")
                        .arg(trust.redis.key("applied"))
                        .arg("GT")
                        .arg(most)
                        .arg(&id)
                        .ignore();
                    for (writer, seq) in newest.into_iter().filter(|(w, _)| !w.is_empty()) {
                        pipe.cmd("PUBLISH")
                            .arg(format!("{}{writer}", trust.channels))
                            .arg(format!("ack {id} {seq}"))
                            .ignore();
                    }
                    let redis = trust.redis.clone();
                    tokio::spawn(async move { redis.pipeline(&pipe).await });
                }
            }
            _ = renewals.tick() => {
                let Some(trust) = weak.upgrade() else { return };
                if trust.closed.load(Ordering::Acquire) {
                    return;
                }
                // A lease already lapsed here may have lapsed in Redis too:
                // writes stopped waiting for this instance. Join anew.
                if !trust.holds() {
                    return leave(&trust, &id).await;
                }
                let sent = Instant::now();
                if trust.join_as(&id, true).await.is_none() {
                    if !trust.redis.is_up() {
                        trust.owed.store(true, Ordering::Relaxed);
                    }
                    return leave(&trust, &id).await;
                }
                trust.extend(sent);
            }
        }
    }
    if let Some(trust) = weak.upgrade() {
        leave(&trust, &id).await;
    }
}

/// Ends the membership `id`: nothing is vouched for until the next one.
async fn leave(trust: &Trust, id: &str) {
    trust.begin();
    let mut pipe = redis::pipe();
    pipe.cmd("ZREM")
        .arg(trust.redis.key("members"))
        .arg(id)
        .ignore();
    pipe.cmd("ZREM")
        .arg(trust.redis.key("applied"))
        .arg(id)
        .ignore();
    let _ = trust.redis.pipeline(&pipe).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State {
            generation: 1,
            id: Some("x-1".into()),
            vouched: HashMap::new(),
            slots: vec![0; SLOTS],
            floor: 0,
        }
    }

    const ROW: RowVersion = RowVersion { id: 1, version: 4 };
    const NEWER: RowVersion = RowVersion { id: 1, version: 5 };

    fn vouched(state: &State, key: &str) -> Option<RowVersion> {
        state.vouched.get(key).map(|held| held.0)
    }

    #[test]
    fn an_invalidation_after_the_version_was_seen_drops_it() {
        let mut state = state();
        state.vouch("a", ROW, 10, 1);
        assert_eq!(vouched(&state, "a"), Some(ROW));
        // Reports the version already reflects change nothing.
        state.invalidate(["a"], 10);
        state.invalidate(["a"], 7);
        assert_eq!(vouched(&state, "a"), Some(ROW));
        state.invalidate(["a"], 11);
        assert_eq!(vouched(&state, "a"), None);
    }

    #[test]
    fn a_version_seen_before_an_invalidation_that_came_first_is_not_vouched_for() {
        let mut state = state();
        // The invalidation of report 12 arrived before the answer of a
        // lookup made at report 11.
        state.invalidate(["a"], 12);
        state.vouch("a", ROW, 11, 1);
        assert_eq!(vouched(&state, "a"), None);
        // A lookup made after it is fine.
        state.vouch("a", NEWER, 12, 1);
        assert_eq!(vouched(&state, "a"), Some(NEWER));
        // An older sighting never replaces a newer one.
        state.vouch("a", ROW, 11, 1);
        assert_eq!(vouched(&state, "a"), Some(NEWER));
    }

    #[test]
    fn another_membership_or_a_new_epoch_vouches_for_nothing_seen_before() {
        let mut state = state();
        state.vouch("a", ROW, 5, 0);
        assert_eq!(
            vouched(&state, "a"),
            None,
            "seen under an earlier membership"
        );
        state.id = None;
        state.vouch("a", ROW, 5, 1);
        assert_eq!(vouched(&state, "a"), None, "seen while not a member");
        state.id = Some("x-1".into());
        state.vouch("a", ROW, 5, 1);
        state.vouch("b", ROW, 6, 1);
        state.invalidate_all(8);
        assert_eq!((vouched(&state, "a"), vouched(&state, "b")), (None, None));
        state.vouch("a", ROW, 7, 1);
        assert_eq!(vouched(&state, "a"), None, "seen before the new epoch");
        state.vouch("a", ROW, 8, 1);
        assert_eq!(vouched(&state, "a"), Some(ROW));
    }

    #[test]
    fn keys_sharing_a_slot_only_ever_cost_a_question() {
        let mut state = state();
        let a = "a".to_owned();
        let other = (0..100_000)
            .map(|i| format!("k{i}"))
            .find(|k| slot(k) == slot(&a))
            .expect("a key in the same slot");
        state.invalidate([other.as_str()], 9);
        state.vouch(&a, ROW, 8, 1);
        assert_eq!(vouched(&state, &a), None);
        state.vouch(&a, ROW, 9, 1);
        assert_eq!(vouched(&state, &a), Some(ROW));
    }
}
