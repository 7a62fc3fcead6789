//! One rate limit for the whole fleet: a bucket per owner in Redis, kept by
//! GCRA (the generic cell rate algorithm: one number per bucket, the
//! theoretical arrival time) in a Lua script that reads Redis's own clock,
//! so the instances' clocks never matter and each request is one atomic
//! round trip.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use super::{Redis, RedisFailure};

/// `KEYS[1]`: the bucket. `ARGV[1]`: microseconds between two requests at
/// the sustained rate; `ARGV[2]`: the burst. Returns 0 when the request
/// may go (and counts it), else the microseconds until it may. A bucket
/// holding anything but a number (another program's, or a hostile value)
/// counts as empty.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local stored = redis.pcall('GET', KEYS[1])
local tat = now
if type(stored) == 'string' then
  tat = tonumber(stored) or now
end
if tat < now then tat = now end
local next_tat = tat + interval
local wait = next_tat - now - burst * interval
if wait > 0 then return wait end
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1)
return 0
";

/// The fleet's buckets: `per_second` requests per second with a `burst`.
pub struct FleetLimit {
    redis: Arc<Redis>,
    script: Script,
    interval_micros: u64,
    burst: u32,
}

impl FleetLimit {
    pub fn new(redis: Arc<Redis>, per_second: u32, burst: u32) -> Self {
        Self {
            redis,
            script: Script::new(GCRA),
            interval_micros: (1_000_000 / u64::from(per_second.max(1))).max(1),
            burst: burst.max(1),
        }
    }

    /// Buckets of one request every `interval`, with a `burst`.
    pub fn with_interval(redis: Arc<Redis>, interval: Duration, burst: u32) -> Self {
        Self {
            redis,
            script: Script::new(GCRA),
            interval_micros: u64::try_from(interval.as_micros())
                .unwrap_or(u64::MAX)
                .max(1),
            burst: burst.max(1),
        }
    }

    /// Whether Redis is thought to answer (else [`FleetLimit::check`]
    /// fails at once).
    pub fn is_up(&self) -> bool {
        self.redis.is_up()
    }

    /// Takes one request from `owner`'s bucket: `None` if it may go, else
    /// how long until it may.
    pub async fn check(&self, owner: &str) -> Result<Option<Duration>, RedisFailure> {
        let key = self.redis.key(&format!("limit:{owner}"));
        let mut invocation = self.script.key(key);
        invocation.arg(self.interval_micros).arg(self.burst);
        let wait: i64 = self.redis.script(&invocation).await?;
        Ok((wait > 0).then(|| Duration::from_micros(wait.unsigned_abs())))
    }
}
