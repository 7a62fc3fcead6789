//! Requests per second per API key or token subject (or per client address
//! without one), with a burst allowance; over the limit: 429 with
//! `Retry-After`, in each API's shape.
//!
//! With `--redis-url` the buckets are the fleet's, in Redis
//! ([`FleetLimit`]), so an owner gets the same limit however many instances
//! serve it. Each instance also keeps its own buckets (`governor`), which
//! decide alone while Redis is unreachable: then the limit is per instance
//! (each request so decided counts in `chatbot_rate_limit_local_total`),
//! and shared again as soon as Redis answers.
//!
//! Behind a load balancer every connection comes from the balancer: with
//! `--trusted-proxy`, a request from one of those addresses is counted
//! against the client `X-Forwarded-For` names (the nearest address in it
//! that is not itself a trusted proxy).

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use axum::middleware::Next;
use axum::response::IntoResponse;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::json;

use crate::domain::redis::Redis;
use crate::domain::redis::limit::FleetLimit;
use crate::http::auth::Auth;
use crate::http::error::ApiError;
use crate::http::v1::error::OpenAiError;

/// The buckets, shared by the seed API and `/v1`: a client's requests to
/// both drain the same one.
pub struct Limiter {
    auth: Arc<Auth>,
    trusted: Vec<ProxyRange>,
    local: DefaultKeyedRateLimiter<String>,
    fleet: Option<FleetLimit>,
}

/// How the limiter is shared between the routers.
pub type SharedLimiter = Arc<Limiter>;

/// Buckets for `per_second` requests per second with a burst of `burst`,
/// the fleet's in `redis` if given.
pub fn limiter(
    per_second: u32,
    burst: u32,
    auth: Arc<Auth>,
    redis: Option<Arc<Redis>>,
    trusted: Vec<ProxyRange>,
) -> SharedLimiter {
    let period = Duration::from_secs_f64(1.0 / f64::from(per_second.max(1)));
    let quota = Quota::with_period(period)
        .expect("the period is positive")
        .allow_burst(NonZeroU32::new(burst.max(1)).expect("at least 1"));
    Arc::new(Limiter {
        auth,
        trusted,
        local: RateLimiter::keyed(quota),
        fleet: redis.map(|redis| FleetLimit::new(redis, per_second, burst)),
    })
}

impl Limiter {
    /// Whose bucket a request drains: a known key's or valid token's owner,
    /// else the peer address (so floods of bad keys and tokens are limited
    /// too).
    fn bucket(&self, request: &Request) -> String {
        if let Some(owner) = self.auth.owner_cached(request.headers()) {
            return owner.prefix().to_owned();
        }
        // In-process tests have no peer address; they share one bucket.
        let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<SocketAddr>>() else {
            return "local".to_owned();
        };
        self.client(peer.ip(), request).to_string()
    }

    fn client(&self, peer: IpAddr, request: &Request) -> IpAddr {
        client_address(&self.trusted, peer, request.headers())
    }

    /// `None` if a request from `bucket` may go, else how long until it
    /// may: from the fleet's bucket while Redis answers, else from this instance's.
    async fn wait(&self, bucket: String) -> Option<Duration> {
        if let Some(fleet) = &self.fleet {
            if let Ok(wait) = fleet.check(&bucket).await {
                return wait;
            }
            metrics::counter!("chatbot_rate_limit_local_total").increment(1);
        }
        self.local
            .check_key(&bucket)
            .err()
            .map(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// The client's address: the peer's, or, from a trusted proxy, the nearest
/// untrusted address the proxies forwarded for.
pub fn client_address(trusted: &[ProxyRange], peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let is_trusted = |addr: IpAddr| trusted.iter().any(|range| range.contains(addr));
    if !is_trusted(peer) {
        return peer;
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .collect::<Vec<_>>();
    for hop in forwarded.iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(addr) if is_trusted(addr) => continue,
            Ok(addr) => return addr,
            // Not an address: nothing further left can be trusted.
            Err(_) => break,
        }
    }
    peer
}

/// Sign-in attempts (and sign-ups and password changes: each costs a
/// password hash) per client address and per account, per minute. With
/// `--redis-url` the counts are the fleet's, and when Redis cannot be
/// reached the attempt is refused (503): the limit fails closed, so losing
/// Redis never opens the door to guessing passwords at every instance's
/// rate. Without Redis each instance counts alone.
pub struct SignInLimit {
    trusted: Vec<ProxyRange>,
    local: DefaultKeyedRateLimiter<String>,
    fleet: Option<(FleetLimit, FleetLimit)>,
    local_account: DefaultKeyedRateLimiter<String>,
    checks: std::sync::atomic::AtomicU64,
}

impl SignInLimit {
    /// `per_address` and `per_account` attempts a minute (each also the burst).
    pub fn new(
        per_address: u32,
        per_account: u32,
        redis: Option<Arc<Redis>>,
        trusted: Vec<ProxyRange>,
    ) -> Self {
        let quota = |n: u32| Quota::per_minute(NonZeroU32::new(n.max(1)).expect("at least 1"));
        let interval = |n: u32| Duration::from_secs(60) / n.max(1);
        Self {
            trusted,
            local: RateLimiter::keyed(quota(per_address)),
            local_account: RateLimiter::keyed(quota(per_account)),
            checks: std::sync::atomic::AtomicU64::new(0),
            fleet: redis.map(|redis| {
                (
                    FleetLimit::with_interval(redis.clone(), interval(per_address), per_address),
                    FleetLimit::with_interval(redis, interval(per_account), per_account),
                )
            }),
        }
    }

    /// Counts an attempt from the request's client (and for `account`):
    /// `Err` with a 429 when over either limit, 503 when the fleet's limit
    /// is unreachable.
    pub async fn check(
        &self,
        peer: Option<IpAddr>,
        headers: &HeaderMap,
        account: Option<&str>,
    ) -> Result<(), ApiError> {
        let address = match peer.map(|peer| client_address(&self.trusted, peer, headers)) {
            // One IPv6 client commonly holds a whole /64: counted as one.
            Some(IpAddr::V6(v6)) => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
            Some(addr) => addr.to_string(),
            None => "local".to_owned(),
        };
        // Now and then, buckets full again are dropped (memory stays bounded).
        if self
            .checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .is_multiple_of(1024)
        {
            self.local.retain_recent();
            self.local_account.retain_recent();
            self.local.shrink_to_fit();
            self.local_account.shrink_to_fit();
        }
        let address = format!("signin:ip:{address}");
        let account = account.map(|a| format!("signin:account:{a}"));
        let wait = match &self.fleet {
            Some((by_address, by_account)) => {
                let mut wait = by_address
                    .check(&address)
                    .await
                    .map_err(|_| ApiError::SignInLimitUnavailable)?;
                if wait.is_none()
                    && let Some(account) = &account
                {
                    wait = by_account
                        .check(account)
                        .await
                        .map_err(|_| ApiError::SignInLimitUnavailable)?;
                }
                wait
            }
            None => {
                let now = DefaultClock::default().now();
                let by_address = self.local.check_key(&address).err();
                let by_account = match (&account, &by_address) {
                    (Some(account), None) => self.local_account.check_key(account).err(),
                    _ => None,
                };
                by_address
                    .or(by_account)
                    .map(|not_until| not_until.wait_time_from(now))
            }
        };
        match wait {
            None => Ok(()),
            Some(wait) => Err(ApiError::TooManySignIns {
                retry_after: seconds(wait),
            }),
        }
    }
}

/// The limit for the seed API: FastAPI-shaped 429s.
pub async fn limit(
    State(limiter): State<SharedLimiter>,
    request: Request,
    next: Next,
) -> Response<Body> {
    limiter.run(request, next, too_many).await
}

/// The same buckets for `/v1`: OpenAI-shaped 429s.
pub async fn limit_openai(
    State(limiter): State<SharedLimiter>,
    request: Request,
    next: Next,
) -> Response<Body> {
    limiter.run(request, next, too_many_openai).await
}

impl Limiter {
    /// Runs the request, or answers it with `refuse(seconds to wait)`.
    async fn run(
        &self,
        request: Request,
        next: Next,
        refuse: fn(u64) -> Response<Body>,
    ) -> Response<Body> {
        let bucket = self.bucket(&request);
        match self.wait(bucket).await {
            None => next.run(request).await,
            Some(wait) => refuse(seconds(wait)),
        }
    }
}

/// An address or a network (`10.0.0.0/8`, `::1`) whose requests come
/// from a proxy that sets `X-Forwarded-For`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyRange {
    addr: IpAddr,
    prefix: u8,
}

impl ProxyRange {
    /// Parses `ADDRESS` or `ADDRESS/PREFIX`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not an IP address or network (e.g. 10.0.0.0/8)");
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let most = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix.trim().parse::<u8>().map_err(|_| bad())?,
            None => most,
        };
        if prefix > most {
            return Err(bad());
        }
        Ok(Self { addr, prefix })
    }

    fn contains(&self, addr: IpAddr) -> bool {
        let (network, addr, bits) = match (self.addr, addr) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                (u128::from(n.to_bits()), u128::from(a.to_bits()), 32)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => (n.to_bits(), a.to_bits(), 128),
            _ => return false,
        };
        let host_bits = bits - u32::from(self.prefix);
        let mask = if host_bits >= 128 {
            0
        } else {
            u128::MAX << host_bits
        };
        network & mask == addr & mask
    }
}

/// Whole seconds to wait, rounded up, at least 1.
fn seconds(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

/// FastAPI-shaped 429 with `Retry-After` in whole seconds.
fn too_many(wait: u64) -> Response<Body> {
    Response::builder()
        .status(StatusCode::TOO_MANY_REQUESTS)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::RETRY_AFTER, wait)
        .body(Body::from(
            json!({ "detail": "Rate limit exceeded" }).to_string(),
        ))
        .unwrap_or_default()
}

/// The same refusal in OpenAI's shape.
fn too_many_openai(wait: u64) -> Response<Body> {
    let error = OpenAiError {
        status: StatusCode::TOO_MANY_REQUESTS,
        message: format!("Rate limit exceeded: retry in {wait} s."),
        kind: "requests",
        param: None,
        code: Some("rate_limit_exceeded"),
    };
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(wait));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_ranges() {
        let range = |text| ProxyRange::parse(text).unwrap();
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert!(range("10.0.0.0/8").contains(ip("10.200.3.4")));
        assert!(!range("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(range("127.0.0.1").contains(ip("127.0.0.1")));
        assert!(!range("127.0.0.1").contains(ip("127.0.0.2")));
        assert!(range("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(range("fd00::/8").contains(ip("fd12::1")));
        assert!(!range("fd00::/8").contains(ip("10.0.0.1")));
        for bad in ["", "10.0.0.0/33", "::/129", "host", "10.0.0.0/x"] {
            assert!(ProxyRange::parse(bad).is_err(), "{bad:?}");
        }
    }

    fn limiter_trusting(proxies: &[&str]) -> Limiter {
        let trusted = proxies
            .iter()
            .map(|p| ProxyRange::parse(p).unwrap())
            .collect();
        Arc::into_inner(limiter(1, 1, Arc::default(), None, trusted)).unwrap()
    }

    #[test]
    fn the_client_behind_trusted_proxies_is_counted() {
        let limiter = limiter_trusting(&["10.0.0.0/8"]);
        let request = |forwarded: &[&str]| {
            let mut builder = Request::builder();
            for value in forwarded {
                builder = builder.header("x-forwarded-for", *value);
            }
            builder.body(Body::empty()).unwrap()
        };
        let client = |peer: &str, forwarded: &[&str]| {
            limiter
                .client(peer.parse().unwrap(), &request(forwarded))
                .to_string()
        };
        // Straight from a client: its own address, whatever it claims.
        assert_eq!(client("203.0.113.9", &["1.2.3.4"]), "203.0.113.9");
        // Through the balancer: whom it forwarded for.
        assert_eq!(client("10.0.0.2", &["198.51.100.7"]), "198.51.100.7");
        // A client's own claim, left of the hop the balancer added, is not believed.
        assert_eq!(
            client("10.0.0.2", &["1.2.3.4, 198.51.100.7"]),
            "198.51.100.7"
        );
        assert_eq!(
            client("10.0.0.2", &["1.2.3.4", "198.51.100.7, 10.0.0.3"]),
            "198.51.100.7"
        );
        // Nothing usable: the balancer's address.
        assert_eq!(client("10.0.0.2", &[]), "10.0.0.2");
        assert_eq!(client("10.0.0.2", &["unknown"]), "10.0.0.2");
    }

    #[test]
    fn waits_round_up_to_whole_seconds() {
        assert_eq!(seconds(Duration::from_millis(1)), 1);
        assert_eq!(seconds(Duration::from_millis(1000)), 1);
        assert_eq!(seconds(Duration::from_millis(1001)), 2);
        assert_eq!(seconds(Duration::ZERO), 1);
    }
}
