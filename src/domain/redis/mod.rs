//! What several instances share through Redis (`--redis-url`): one
//! connection (the `redis` crate's connection manager, which reconnects on
//! its own), whether Redis answers, and the fleet-wide rate limit
//! ([`limit`]). The PostgreSQL store's shared session cache uses the same
//! connection (`store::postgres::shared`).
//!
//! Nothing depends on Redis for being right. Every call has a short
//! timeout; a call that fails for want of Redis marks it down (logged once
//! per outage, counted in `chatbot_redis_outages_total`, `chatbot_redis_up`
//! 0) and, until a probe finds it again, nobody waits for it: the rate
//! limit falls back to each instance's own, the cache to the database's
//! checks.

pub mod limit;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, RedisError, ScriptInvocation};

/// How long one call may take before Redis counts as unreachable.
const CALL_TIMEOUT: Duration = Duration::from_millis(250);
/// How long [`Redis::script_anyway`] tries a Redis thought down.
const QUICK_TRY: Duration = Duration::from_millis(50);
/// How often a Redis that is down is asked whether it is back.
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// Why a call to Redis gave nothing usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisFailure {
    /// Redis is down (or was just found to be): fall back.
    #[error("Redis is unreachable")]
    Down,
    /// Redis answered with an error (a value of another type under one of
    /// our keys, say): this answer is unusable, Redis itself is fine.
    #[error("Redis refused the command: {0}")]
    Refused(String),
}

/// The shared connection and its health.
pub struct Redis {
    client: redis::Client,
    connection: ConnectionManager,
    /// Prepended to every key, so that several deployments (or tests) can
    /// share one Redis.
    prefix: String,
    up: AtomicBool,
    /// Whether the current outage was logged (also one found at start).
    outage_logged: AtomicBool,
    /// The URL without its password, for logs.
    shown: String,
    /// When this instance last found Redis unreachable.
    down_since: Mutex<Option<Instant>>,
}

impl Redis {
    /// Prepares the connection to `url` without waiting for it: a Redis
    /// that is down at start is one more outage, not a reason not to
    /// start. A probe task connects, and keeps checking while it is down.
    pub fn open(url: &str, prefix: &str) -> Result<Arc<Self>, String> {
        let shown = without_password(url);
        let client = redis::Client::open(url).map_err(|e| format!("--redis-url {shown}: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(100));
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| format!("--redis-url {shown}: {e}"))?;
        let redis = Arc::new(Self {
            client,
            connection,
            prefix: prefix.to_owned(),
            up: AtomicBool::new(false),
            outage_logged: AtomicBool::new(false),
            shown,
            down_since: Mutex::new(None),
        });
        tokio::spawn(probe(Arc::downgrade(&redis)));
        Ok(redis)
    }

    /// Opens and waits (up to a second) until Redis answers, for tests
    /// and tools that want it up before they go on.
    pub async fn connect(url: &str, prefix: &str) -> Result<Arc<Self>, String> {
        let redis = Self::open(url, prefix)?;
        for _ in 0..100 {
            if redis.ping().await {
                return Ok(redis);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(format!("{} does not answer", redis.shown))
    }

    /// The key `name` under this deployment's prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Whether Redis answered the last call (or probe).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The URL without its password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// When this instance last found Redis unreachable (`None`: never).
    pub fn down_since(&self) -> Option<Instant> {
        *self
            .down_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection of its own subscribed to `channels` (a subscribed
    /// connection can do nothing else), or `None` if Redis does not answer
    /// in time.
    pub async fn subscribe(&self, channels: &[String]) -> Option<redis::aio::PubSub> {
        let subscribed = tokio::time::timeout(CALL_TIMEOUT, async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(channels).await?;
            Ok::<_, RedisError>(pubsub)
        })
        .await;
        match subscribed {
            Ok(Ok(pubsub)) => Some(pubsub),
            Ok(Err(err)) => {
                self.down(&err.to_string());
                None
            }
            Err(_) => {
                self.down("no answer in time");
                None
            }
        }
    }

    /// Runs `cmd`; fails at once while Redis is down.
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, RedisFailure> {
        if !self.is_up() {
            return Err(RedisFailure::Down);
        }
        let mut connection = self.connection.clone();
        let called = tokio::time::timeout(CALL_TIMEOUT, cmd.query_async(&mut connection)).await;
        self.outcome(called)
    }

    /// Runs `pipe` (its answers ignored); fails at once while Redis is down.
    pub async fn pipeline(&self, pipe: &redis::Pipeline) -> Result<(), RedisFailure> {
        if !self.is_up() {
            return Err(RedisFailure::Down);
        }
        let mut connection = self.connection.clone();
        let called = tokio::time::timeout(CALL_TIMEOUT, pipe.query_async(&mut connection)).await;
        self.outcome(called)
    }

    /// Runs a Lua script (loaded on first use); fails at once while Redis is down.
    pub async fn script<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, RedisFailure> {
        if !self.is_up() {
            return Err(RedisFailure::Down);
        }
        self.invoke(invocation).await
    }

    async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, RedisFailure> {
        let mut connection = self.connection.clone();
        let called =
            tokio::time::timeout(CALL_TIMEOUT, invocation.invoke_async(&mut connection)).await;
        self.outcome(called)
    }

    /// Runs a Lua script even while Redis is thought down (it may be back
    /// before the probe finds it, and the other instances trust it again):
    /// then one quick try on a connection of its own, [`QUICK_TRY`] at
    /// most, so that a Redis that is really gone costs little.
    pub async fn script_anyway<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, RedisFailure> {
        if self.is_up() {
            return self.invoke(invocation).await;
        }
        let tried = tokio::time::timeout(QUICK_TRY, async {
            let mut own = self.client.get_multiplexed_async_connection().await?;
            invocation.invoke_async(&mut own).await
        })
        .await;
        match tried {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) if !is_outage(&err) => Err(RedisFailure::Refused(err.to_string())),
            _ => Err(RedisFailure::Down),
        }
    }

    fn outcome<T>(
        &self,
        called: Result<Result<T, RedisError>, tokio::time::error::Elapsed>,
    ) -> Result<T, RedisFailure> {
        match called {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) if !is_outage(&err) => Err(RedisFailure::Refused(err.to_string())),
            Ok(Err(err)) => {
                self.down(&err.to_string());
                Err(RedisFailure::Down)
            }
            Err(_) => {
                self.down("no answer in time");
                Err(RedisFailure::Down)
            }
        }
    }

    /// Marks Redis down; logs and counts the outage once.
    fn down(&self, why: &str) {
        if self.up.swap(false, Ordering::Relaxed) || self.down_since().is_none() {
            *self
                .down_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        }
        if !self.outage_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                redis = %self.shown,
                error = why,
                "Redis unreachable: each instance limits on its own and checks the database \
                 until it is back"
            );
            metrics::counter!("chatbot_redis_outages_total").increment(1);
            metrics::gauge!("chatbot_redis_up").set(0.0);
        }
    }

    /// Asks Redis whether it answers, whatever it was thought to be.
    async fn ping(&self) -> bool {
        let mut connection = self.connection.clone();
        let answered = tokio::time::timeout(
            CALL_TIMEOUT,
            redis::cmd("PING").query_async::<String>(&mut connection),
        )
        .await;
        match answered {
            Ok(Ok(_)) => {
                if !self.up.swap(true, Ordering::Relaxed) {
                    self.outage_logged.store(false, Ordering::Relaxed);
                    tracing::info!(redis = %self.shown, "Redis reachable: limits and cache shared");
                    metrics::gauge!("chatbot_redis_up").set(1.0);
                }
                true
            }
            Ok(Err(err)) => {
                self.down(&err.to_string());
                false
            }
            Err(_) => {
                self.down("no answer in time");
                false
            }
        }
    }
}

/// Whether `err` says Redis could not be reached (as against an answer
/// that is an error).
fn is_outage(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_unrecoverable_error()
}

/// While the handle lives: every [`PROBE_EVERY`], if Redis is down, ask
/// whether it is back.
async fn probe(redis: std::sync::Weak<Redis>) {
    loop {
        let Some(redis) = redis.upgrade() else {
            return;
        };
        if !redis.is_up() {
            redis.ping().await;
        }
        // Set on every round, so a recorder installed later shows it too.
        metrics::gauge!("chatbot_redis_up").set(if redis.is_up() { 1.0 } else { 0.0 });
        drop(redis);
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// `url` with any password replaced by `***`, fit for logs.
pub fn without_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "(an unparsable URL)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_never_shown() {
        assert_eq!(
            without_password("redis://app:s3cret@cache.internal:6380/2"),
            "redis://app:***@cache.internal:6380/2"
        );
        assert_eq!(
            without_password("rediss://:s3cret@cache:6379"),
            "rediss://:***@cache:6379"
        );
        assert_eq!(
            without_password("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert!(!without_password("redis//u:s3cret@").contains("s3cret"));
    }
}
