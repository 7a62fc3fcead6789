//! Several instances as one service through Redis (`--redis-url`): one
//! rate limit for the fleet (and each instance's own while Redis is away),
//! and the session cache shared in front of PostgreSQL, whose reads see
//! every acknowledged write on every instance. The cases that can only be
//! bounded (Redis unreachable from one instance, writes with plain SQL)
//! are held to the bound `docs/DEPLOYING.md` states: 2 seconds here.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use chatbot_api::AppState;
use chatbot_api::domain::chatbot::Chatbot;
use chatbot_api::domain::redis::Redis;
use chatbot_api::domain::store::{MemoryStore, Page, PostgresStore, Store, expiry_turn};
use sqlx::{Connection, Executor};

use crate::helpers::{
    PgSchema, Proxy, RedisServer, Server, TestApp, eventually, postgres_schema, redis_prefix,
    redis_raw, redis_url,
};
use crate::pg_cache::say;

/// What the bounded cases are held to.
const BOUND: Duration = Duration::from_secs(2);

async fn redis(url: &str, prefix: &str) -> Arc<Redis> {
    Redis::connect(url, prefix).await.expect("Redis answers")
}

/// An in-process instance on its own memory store, limited to `per_second`
/// with `burst`, sharing its buckets through `redis` if given.
fn limited(redis: Option<Arc<Redis>>, per_second: u32, burst: u32) -> TestApp {
    let mut state = AppState::new(
        Arc::new(MemoryStore::new()),
        Chatbot::seed(),
        Default::default(),
    )
    .with_rate_limit(per_second, burst);
    if let Some(redis) = redis {
        state = state.with_redis(redis);
    }
    TestApp::from_state(state)
}

/// Sends `requests` requests over `apps` in turn; how many were let through.
async fn passed(apps: &[TestApp], requests: usize) -> usize {
    let mut passed = 0;
    for i in 0..requests {
        let response = apps[i % apps.len()].get("/chat/history/nobody").await;
        match response.status {
            StatusCode::NOT_FOUND => passed += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                let wait: u64 = response.header("retry-after").unwrap().parse().unwrap();
                assert!(wait >= 1, "Retry-After {wait}");
                assert_eq!(response.text(), r#"{"detail":"Rate limit exceeded"}"#);
            }
            other => panic!("unexpected {other}: {}", response.text()),
        }
    }
    passed
}

#[tokio::test]
async fn the_rate_limit_is_the_fleets_over_two_and_three_instances() {
    let Some(url) = redis_url().await else {
        return;
    };
    for instances in [1, 2, 3] {
        let prefix = redis_prefix();
        let mut apps = Vec::new();
        for _ in 0..instances {
            apps.push(limited(Some(redis(&url, &prefix).await), 2, 5));
        }
        // 30 requests take well under half a second: the burst of 5 and
        // at most one more from the refill at 2/s, however many instances.
        let fleet = passed(&apps, 30).await;
        assert!((5..=6).contains(&fleet), "{instances} instances: {fleet}");
    }
    // Without Redis each instance has a bucket of its own: the bug.
    let apps: Vec<TestApp> = (0..3).map(|_| limited(None, 2, 5)).collect();
    let alone = passed(&apps, 30).await;
    assert!((15..=18).contains(&alone), "{alone}");
}

#[tokio::test]
async fn without_redis_each_instance_limits_on_its_own_then_shares_again() {
    let Some(mut server) = RedisServer::start().await else {
        return;
    };
    let prefix = redis_prefix();
    let handles = [
        redis(&server.url(), &prefix).await,
        redis(&server.url(), &prefix).await,
    ];
    let apps: Vec<TestApp> = handles
        .iter()
        .map(|redis| limited(Some(redis.clone()), 1, 3))
        .collect();
    assert_eq!(passed(&apps, 12).await, 3, "shared");

    server.kill();
    // The first request finds Redis gone and is decided locally; so are
    // the rest, without waiting for Redis.
    let started = std::time::Instant::now();
    let during = passed(&apps, 12).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        (6..=8).contains(&during),
        "each instance's own burst of 3: {during}"
    );
    assert!(handles.iter().all(|redis| !redis.is_up()));

    server.restart().await;
    for redis in &handles {
        assert!(
            eventually(Duration::from_secs(5), || async { redis.is_up() })
                .await
                .is_some(),
            "back within the probe's period"
        );
    }
    // Redis came back empty: one fresh bucket for both.
    assert_eq!(passed(&apps, 12).await, 3, "shared again");
}

#[tokio::test]
async fn the_local_fallback_is_counted_in_metrics() {
    let Some(mut server) = RedisServer::start().await else {
        return;
    };
    let app = limited(Some(redis(&server.url(), &redis_prefix()).await), 100, 100);
    server.kill();
    let before = local_decisions(&app).await;
    for _ in 0..5 {
        app.get("/chat/history/nobody").await;
    }
    // Other tests in this binary may count too: at least ours.
    assert!(local_decisions(&app).await >= before + 5.0);
    let metrics = app.get("/metrics").await;
    assert!(metrics.text().contains("chatbot_redis_outages_total"));
}

/// `chatbot_rate_limit_local_total` as `app` reports it.
async fn local_decisions(app: &TestApp) -> f64 {
    let metrics = app.get("/metrics").await;
    metrics
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("chatbot_rate_limit_local_total "))
        .map_or(0.0, |n| n.parse().unwrap())
}

async fn instance(schema: &PgSchema, redis: Option<Arc<Redis>>) -> Arc<PostgresStore> {
    Arc::new(
        PostgresStore::connect_shared(&schema.url, 4, Default::default(), 16 << 20, redis)
            .await
            .unwrap(),
    )
}

/// Two instances on one database and one Redis prefix.
async fn two(schema: &PgSchema, url: &str) -> (Arc<PostgresStore>, Arc<PostgresStore>) {
    let (a, b, _) = two_under(schema, url).await;
    (a, b)
}

/// [`two`], with their Redis prefix.
async fn two_under(
    schema: &PgSchema,
    url: &str,
) -> (Arc<PostgresStore>, Arc<PostgresStore>, String) {
    let prefix = redis_prefix();
    let a = instance(schema, Some(redis(url, &prefix).await)).await;
    let b = instance(schema, Some(redis(url, &prefix).await)).await;
    for store in [&a, &b] {
        sharing(store).await;
    }
    (a, b, prefix)
}

/// Waits until `store` reads through Redis (its listener has begun its
/// epoch).
async fn sharing(store: &PostgresStore) {
    let took = eventually(Duration::from_secs(5), || async { store.vouches() }).await;
    assert!(took.is_some(), "the instance never shared its reads");
}

async fn messages(store: &PostgresStore, session: &str) -> Option<Vec<String>> {
    let page = store.history(session, Page::default()).await.unwrap()?;
    Some(
        page.entries
            .iter()
            .map(|e| e.user_message.to_string())
            .collect(),
    )
}

async fn last(store: &PostgresStore, session: &str) -> Option<String> {
    messages(store, session).await?.pop()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_see_acknowledged_writes_on_every_instance_10_000_times() {
    let (Some(schema), Some(url)) = (postgres_schema().await, redis_url().await) else {
        return;
    };
    let (a, b) = two(&schema, &url).await;
    let mut tasks = Vec::new();
    for task in 0..16 {
        let (a, b) = (a.clone(), b.clone());
        tasks.push(tokio::spawn(async move {
            let session = format!("ryw-{task}");
            for i in 0..625 {
                let (writer, reader) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
                let message = format!("{task}-{i}");
                say(writer, &session, &message).await;
                // The full history, or a page of the last one.
                let seen = if i % 5 == 4 {
                    let page = Page {
                        offset: i,
                        limit: Some(1),
                    };
                    let page = reader.history(&session, page).await.unwrap().unwrap();
                    page.entries.last().map(|e| e.user_message.to_string())
                } else {
                    last(reader, &session).await
                };
                assert_eq!(seen.as_deref(), Some(message.as_str()), "read after write");
                // Read again on both: copies each vouches for, which the
                // next write (on the other) must take back.
                for store in [reader, writer] {
                    let seen = last(store, &session).await;
                    assert_eq!(seen.as_deref(), Some(message.as_str()), "read again");
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for store in [&a, &b] {
        let (vouched, ..) = store.read_stats().snapshot();
        assert!(vouched > 1_000, "copies vouched for: {vouched}");
    }
    // Most reads asked the database nothing.
    let (vouched, instance, redis, database) = b.read_stats().snapshot();
    let instance = vouched + instance;
    assert!(
        instance + redis > 4 * database,
        "instance {instance}, redis {redis}, database {database}"
    );
}

#[tokio::test]
async fn a_read_of_a_session_another_instance_wrote_asks_the_database_nothing() {
    let (Some(schema), Some(url)) = (postgres_schema().await, redis_url().await) else {
        return;
    };
    let (a, b) = two(&schema, &url).await;
    for i in 0..100 {
        say(&a, "warm", &format!("m{i}")).await;
    }
    let before = b.read_stats().snapshot();
    for _ in 0..50 {
        assert_eq!(messages(&b, "warm").await.unwrap().len(), 100);
    }
    let (vouched, instance, redis, database) = b.read_stats().snapshot();
    assert_eq!(database, before.3, "no read of b went to the database");
    assert_eq!(redis - before.2, 1, "the first read took the copy in Redis");
    assert_eq!(
        (vouched - before.0, instance - before.1),
        (49, 0),
        "the others, b's own copy, vouched for: no question to Redis either"
    );
}

#[tokio::test]
async fn redis_restarted_empty_or_gone_serves_nothing_stale() {
    let (Some(schema), Some(mut server)) = (postgres_schema().await, RedisServer::start().await)
    else {
        return;
    };
    let (a, b) = two(&schema, &server.url()).await;
    say(&a, "s", "one").await;
    assert_eq!(last(&b, "s").await.as_deref(), Some("one"));

    server.kill();
    say(&a, "s", "two").await;
    assert_eq!(
        last(&b, "s").await.as_deref(),
        Some("two"),
        "down: the database"
    );
    say(&b, "s", "three").await;
    assert_eq!(last(&a, "s").await.as_deref(), Some("three"));

    server.restart().await;
    for store in [&a, &b] {
        assert_eq!(last(store, "s").await.as_deref(), Some("three"), "empty");
    }
    say(&a, "s", "four").await;
    assert_eq!(last(&b, "s").await.as_deref(), Some("four"), "back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_by_an_instance_cut_off_from_redis_reaches_the_others_within_the_bound() {
    let (Some(schema), Some(url)) = (postgres_schema().await, redis_url().await) else {
        return;
    };
    let (proxy, cut_off, other) = behind_a_proxy(&schema, &url).await;
    say(&other, "s", "one").await;
    assert_eq!(last(&other, "s").await.as_deref(), Some("one"));
    assert_eq!(last(&cut_off, "s").await.as_deref(), Some("one"));

    proxy.cut();
    say(&cut_off, "s", "two").await;
    assert_eq!(last(&cut_off, "s").await.as_deref(), Some("two"), "its own");
    let took = eventually(BOUND, || async {
        last(&other, "s").await.as_deref() == Some("two")
    })
    .await;
    assert!(took.is_some(), "the other instance never saw it");
    // And it goes on seeing it (no older version comes back).
    for _ in 0..20 {
        assert_eq!(last(&other, "s").await.as_deref(), Some("two"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_with_plain_sql_reach_every_instance_within_the_bound() {
    let (Some(schema), Some(url)) = (postgres_schema().await, redis_url().await) else {
        return;
    };
    let (a, b) = two(&schema, &url).await;
    say(&a, "plain", "typed").await;
    say(&a, "plain", "second").await;
    assert_eq!(last(&b, "plain").await.as_deref(), Some("second"));

    let mut sql = sqlx::PgConnection::connect(&schema.url).await.unwrap();
    sql.execute(
        "UPDATE exchanges SET user_message = 'edited by hand' WHERE seq = 2 \
         AND session_ref = (SELECT id FROM sessions WHERE session_id = 'plain')",
    )
    .await
    .unwrap();
    for store in [&a, &b] {
        let took = eventually(BOUND, || async {
            last(store, "plain").await.as_deref() == Some("edited by hand")
        })
        .await;
        assert!(took.is_some(), "an edit with plain SQL");
    }

    sql.execute("DELETE FROM sessions WHERE session_id = 'plain'")
        .await
        .unwrap();
    for store in [&a, &b] {
        let took = eventually(BOUND, || async { messages(store, "plain").await.is_none() }).await;
        assert!(took.is_some(), "a delete with plain SQL");
    }
}

#[tokio::test]
async fn deletes_and_expiry_are_seen_by_every_instance_at_once() {
    let (Some(schema), Some(url)) = (postgres_schema().await, redis_url().await) else {
        return;
    };
    let (a, b) = two(&schema, &url).await;
    for session in ["deleted", "expired"] {
        say(&a, session, "hello").await;
        assert!(messages(&b, session).await.is_some());
    }
    assert!(a.delete("deleted").await.unwrap());
    assert_eq!(messages(&b, "deleted").await, None);
    assert_eq!(a.expire(1_700_000_001).await.unwrap(), 1);
    assert_eq!(messages(&b, "expired").await, None);
    // Begun again under the same id, it is a new session everywhere.
    say(&b, "deleted", "again").await;
    assert_eq!(
        messages(&a, "deleted").await,
        Some(vec!["again".to_owned()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_writing_one_session_at_once_agree() {
    let (Some(schema), Some(url)) = (postgres_schema().await, redis_url().await) else {
        return;
    };
    let (a, b, prefix) = two_under(&schema, &url).await;
    let mut tasks = Vec::new();
    for (name, store) in [("a", a.clone()), ("b", b.clone())] {
        for writer in 0..4 {
            let (store, other) = (
                store.clone(),
                if name == "a" { b.clone() } else { a.clone() },
            );
            tasks.push(tokio::spawn(async move {
                for i in 0..25 {
                    let message = format!("{name}{writer}-{i}");
                    say(&store, "shared", &message).await;
                    let seen = messages(&other, "shared").await.unwrap();
                    assert!(seen.contains(&message), "{message} missing on the other");
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let on_a = messages(&a, "shared").await.unwrap();
    assert_eq!(on_a.len(), 200);
    assert_eq!(messages(&b, "shared").await.unwrap(), on_a);
    let database = instance(&schema, None).await;
    assert_eq!(messages(&database, "shared").await.unwrap(), on_a);
    // Reports arriving out of order (the newer version first) are still
    // acknowledged: no instance was taken for silent.
    let fenced: usize = redis::cmd("ZCARD")
        .arg(format!("{prefix}fenced"))
        .query_async(&mut redis_raw(&url).await)
        .await
        .unwrap();
    assert_eq!(fenced, 0, "instances fenced while both answered");
}

#[tokio::test]
async fn a_key_never_reads_another_keys_session_from_redis() {
    let (Some(schema), Some(url)) = (postgres_schema().await, redis_url().await) else {
        return;
    };
    let prefix = redis_prefix();
    let a = instance(&schema, Some(redis(&url, &prefix).await)).await;
    let b = instance(&schema, Some(redis(&url, &prefix).await)).await;
    sharing(&a).await;
    sharing(&b).await;
    // Two owners' sessions (owner prefixes, as API keys give them).
    say(&a, "k1.chat", "secret of k1").await;
    say(&a, "k2.chat", "k2's own").await;
    assert!(messages(&a, "k1.chat").await.is_some());
    assert!(messages(&a, "k2.chat").await.is_some());
    // Someone copies k1's entries over k2's.
    let mut raw = redis_raw(&url).await;
    for kind in ["v", "b"] {
        let copied: i64 = redis::cmd("COPY")
            .arg(format!("{prefix}{kind}:k1.chat"))
            .arg(format!("{prefix}{kind}:k2.chat"))
            .arg("REPLACE")
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(copied, 1);
    }
    assert_eq!(
        messages(&b, "k2.chat").await,
        Some(vec!["k2's own".to_owned()])
    );
}

#[tokio::test]
async fn redis_values_from_a_wrong_or_hostile_writer_are_never_served() {
    let (Some(schema), Some(url)) = (postgres_schema().await, redis_url().await) else {
        return;
    };
    let prefix = redis_prefix();
    let a = instance(&schema, Some(redis(&url, &prefix).await)).await;
    sharing(&a).await;
    say(&a, "s", "one").await;
    say(&a, "s", "two").await;
    let truth = Some(vec!["one".to_owned(), "two".to_owned()]);
    let mut raw = redis_raw(&url).await;
    let (v, b) = (format!("{prefix}v:s"), format!("{prefix}b:s"));
    let current = vouched(&a, &mut raw, &prefix).await.1;
    // id:version:mark:count:built
    let parts: Vec<String> = current.split(':').map(str::to_owned).collect();
    let (id, version, built) = (parts[0].clone(), parts[1].clone(), parts[4].clone());
    assert_eq!(parts[3], "2", "the body holds both exchanges: {current}");
    let header = format!("chatbot/2 {id} {built} s");
    let record = r#"["forged","reply","U",1700000000]"#;
    type Tamper<'a> = Box<dyn Fn(&str) -> Vec<redis::Cmd> + 'a>;
    let cases: Vec<(&str, Tamper)> = vec![
        (
            "a version that is not ours",
            Box::new(|_| vec![set(&v, "garbage")]),
        ),
        (
            "a version from the future",
            Box::new(|epoch| vec![set(&v, &format!("{id}:999:{epoch}::"))]),
        ),
        (
            "a version in the old format",
            Box::new(|epoch| vec![set(&v, &format!("{id}:{version}:{epoch}"))]),
        ),
        (
            "a body count larger than the body",
            Box::new(|epoch| vec![set(&v, &format!("{id}:{version}:{epoch}:5:{built}"))]),
        ),
        (
            "a body of another type",
            Box::new(|_| vec![del(&b), set(&b, "not a list")]),
        ),
        (
            "a body cut short",
            Box::new(|_| vec![del(&b), rpush(&b, &[&header, record])]),
        ),
        (
            "a body begun at another version",
            Box::new(|_| {
                vec![
                    del(&b),
                    rpush(&b, &[&format!("chatbot/2 {id} 999 s"), record, record]),
                ]
            }),
        ),
        (
            "a body of another session",
            Box::new(|_| {
                vec![
                    del(&b),
                    rpush(&b, &[&format!("chatbot/2 {id} {built} t"), record, record]),
                ]
            }),
        ),
        (
            "a body that is not ours",
            Box::new(|_| vec![del(&b), rpush(&b, &["hello", record, record])]),
        ),
        (
            "records that are not ours",
            Box::new(|_| vec![del(&b), rpush(&b, &[&header, "{}", "[1]"])]),
        ),
    ];
    for (what, tamper) in cases {
        // A fresh instance has no copy of its own: only Redis or the database.
        let fresh = instance(&schema, Some(redis(&url, &prefix).await)).await;
        sharing(&fresh).await;
        // Its listener began a new epoch: the version vouched again under it.
        let (epoch, _) = vouched(&a, &mut raw, &prefix).await;
        for command in tamper(&epoch) {
            command.query_async::<()>(&mut raw).await.unwrap();
        }
        assert_eq!(messages(&fresh, "s").await, truth, "{what}");
        assert_eq!(
            messages(&a, "s").await,
            truth,
            "{what}, an instance with a copy"
        );
    }
}

/// Reads session `s` through `store` until Redis holds its version vouched
/// for under the current epoch; the epoch and that version.
async fn vouched(
    store: &PostgresStore,
    raw: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> (String, String) {
    for _ in 0..300 {
        assert!(messages(store, "s").await.is_some());
        let values: Vec<Option<String>> = redis::cmd("MGET")
            .arg(format!("{prefix}epoch"))
            .arg(format!("{prefix}v:s"))
            .query_async(raw)
            .await
            .unwrap();
        if let [Some(epoch), Some(version)] = &values[..]
            && version.split(':').nth(2) == Some(epoch.as_str())
        {
            return (epoch.clone(), version.clone());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "the version was never vouched for: shares {}",
        store.shares_reads()
    );
}

fn set(key: &str, value: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("SET");
    cmd.arg(key).arg(value);
    cmd
}

fn del(key: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("DEL");
    cmd.arg(key);
    cmd
}

fn rpush(key: &str, values: &[&str]) -> redis::Cmd {
    let mut cmd = redis::cmd("RPUSH");
    cmd.arg(key).arg(values);
    cmd
}

#[tokio::test]
async fn one_instance_sweeps_expired_sessions_each_period() {
    let Some(mut server) = RedisServer::start().await else {
        return;
    };
    let prefix = redis_prefix();
    let (a, b) = (
        redis(&server.url(), &prefix).await,
        redis(&server.url(), &prefix).await,
    );
    let every = Duration::from_millis(300);
    assert!(expiry_turn(&a, every).await);
    assert!(!expiry_turn(&b, every).await);
    assert!(!expiry_turn(&a, every).await);
    tokio::time::sleep(every + Duration::from_millis(50)).await;
    assert!(expiry_turn(&b, every).await, "the next period");
    server.kill();
    assert!(expiry_turn(&a, every).await, "without Redis each sweeps");
    assert!(expiry_turn(&b, every).await);
}

#[test]
fn the_redis_password_is_never_logged() {
    let log = tempfile::NamedTempFile::new().unwrap();
    let port = crate::helpers::free_port();
    let url = format!("redis://app:s3cret-pw@127.0.0.1:{port}/");
    let mut server = Server::start_with(
        &[
            "--store",
            "memory",
            "--redis-url",
            &url,
            "--rate-limit",
            "5",
        ],
        &[("RUST_LOG", "info")],
        log.reopen().unwrap().into(),
    );
    // Redis is not there: the outage is logged too.
    std::thread::sleep(Duration::from_millis(700));
    server.signal("TERM");
    server.wait(Duration::from_secs(10));
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(text.contains("redis://app:***@127.0.0.1"), "{text}");
    assert!(!text.contains("s3cret-pw"), "{text}");
}

/// The address behind a `redis://` URL, for a [`Proxy`] in front of it.
async fn redis_addr(url: &str) -> std::net::SocketAddr {
    let parsed = url::Url::parse(url).unwrap();
    tokio::net::lookup_host((parsed.host_str().unwrap(), parsed.port().unwrap_or(6379)))
        .await
        .unwrap()
        .next()
        .unwrap()
}

/// Two instances sharing one Redis prefix: the first reaches Redis through
/// a [`Proxy`] the test can cut or freeze, the second directly.
async fn behind_a_proxy(
    schema: &PgSchema,
    url: &str,
) -> (Proxy, Arc<PostgresStore>, Arc<PostgresStore>) {
    let proxy = Proxy::start(redis_addr(url).await).await;
    let prefix = redis_prefix();
    let proxied = instance(
        schema,
        Some(redis(&format!("redis://{}/", proxy.addr), &prefix).await),
    )
    .await;
    let direct = instance(schema, Some(redis(url, &prefix).await)).await;
    sharing(&proxied).await;
    sharing(&direct).await;
    (proxy, proxied, direct)
}

/// The longest a write waits for an instance that went silent: the wait for
/// its acknowledgement (250 ms), then its lease (1 s), with room to spare.
const SILENT_BOUND: Duration = Duration::from_millis(2_500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_gone_silent_is_fenced_and_serves_nothing_stale() {
    let (Some(schema), Some(url)) = (postgres_schema().await, redis_url().await) else {
        return;
    };
    let (proxy, silent, writer) = behind_a_proxy(&schema, &url).await;
    say(&writer, "s", "one").await;
    for _ in 0..3 {
        assert_eq!(last(&silent, "s").await.as_deref(), Some("one"));
    }
    let (vouched, ..) = silent.read_stats().snapshot();
    assert!(vouched >= 1, "the silent one vouched for its copy");

    // Its Redis connections hang: it hears no invalidation and cannot
    // acknowledge or renew.
    proxy.freeze(true);
    let started = std::time::Instant::now();
    say(&writer, "s", "two").await;
    let took = started.elapsed();
    assert!(took < SILENT_BOUND, "the write waited {took:?}");
    assert_eq!(
        last(&silent, "s").await.as_deref(),
        Some("two"),
        "the very next read on the silent instance"
    );
    // Fenced: the next writes wait for it no more.
    let started = std::time::Instant::now();
    say(&writer, "s", "three").await;
    assert!(started.elapsed() < Duration::from_millis(500));

    proxy.freeze(false);
    let back = eventually(Duration::from_secs(5), || async { silent.vouches() }).await;
    assert!(back.is_some(), "it joined again once Redis answered");
    for (i, message) in ["four", "five", "six"].into_iter().enumerate() {
        say(&writer, "s", message).await;
        for _ in 0..3 {
            assert_eq!(last(&silent, "s").await.as_deref(), Some(message), "{i}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_instance_holds_writes_back_once_for_at_most_its_lease() {
    let (Some(schema), Some(url)) = (postgres_schema().await, redis_url().await) else {
        return;
    };
    let prefix = redis_prefix();
    let writer = instance(&schema, Some(redis(&url, &prefix).await)).await;
    sharing(&writer).await;
    say(&writer, "v", "warm").await;
    // A member that will never acknowledge (an instance killed with -9),
    // its lease just renewed.
    let mut raw = redis_raw(&url).await;
    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut raw).await.unwrap();
    let lapses = seconds * 1_000 + micros / 1_000 + 1_000;
    let _: () = redis::cmd("ZADD")
        .arg(format!("{prefix}members"))
        .arg(lapses)
        .arg("ghost")
        .query_async(&mut raw)
        .await
        .unwrap();

    let started = std::time::Instant::now();
    say(&writer, "v", "one").await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < SILENT_BOUND,
        "the write waited for the ghost's acknowledgement, then its lease: {took:?}"
    );
    let fenced: Option<f64> = redis::cmd("ZSCORE")
        .arg(format!("{prefix}fenced"))
        .arg("ghost")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(fenced, Some(lapses as f64), "fenced until its lease lapses");
    let started = std::time::Instant::now();
    for message in ["two", "three"] {
        say(&writer, "v", message).await;
    }
    assert!(started.elapsed() < Duration::from_millis(500), "once only");
    assert_eq!(last(&writer, "v").await.as_deref(), Some("three"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_instance_leaves_and_holds_no_write_back() {
    let (Some(schema), Some(url)) = (postgres_schema().await, redis_url().await) else {
        return;
    };
    let (a, b) = two(&schema, &url).await;
    say(&a, "left", "one").await;
    assert_eq!(last(&b, "left").await.as_deref(), Some("one"));
    b.close().await;
    assert!(!b.vouches(), "it vouches for nothing once closed");
    let started = std::time::Instant::now();
    for message in ["two", "three"] {
        say(&a, "left", message).await;
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(200),
        "the writes waited {took:?} for an instance that had left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_reaches_redis_back_before_its_instance_noticed() {
    // Others may trust Redis again before this instance's probe finds it
    // back: a write it acknowledges meanwhile must still reach Redis.
    let (Some(schema), Some(mut server)) = (postgres_schema().await, RedisServer::start().await)
    else {
        return;
    };
    let prefix = redis_prefix();
    let handle = redis(&server.url(), &prefix).await;
    let a = instance(&schema, Some(handle.clone())).await;
    sharing(&a).await;
    say(&a, "back", "one").await;
    for round in 0..5 {
        server.kill();
        say(&a, "back", &format!("down {round}")).await;
        assert!(!handle.is_up(), "the write found Redis gone");
        server.restart().await;
        if handle.is_up() {
            continue; // the probe was quicker: try again
        }
        say(&a, "back", &format!("back {round}")).await;
        let mut raw = redis_raw(&server.url()).await;
        let version: Option<String> = redis::cmd("GET")
            .arg(format!("{prefix}v:back"))
            .query_async(&mut raw)
            .await
            .unwrap();
        assert!(
            version.is_some(),
            "the write was reported to the Redis that came back"
        );
        return;
    }
    panic!("the probe always found Redis back first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_lapsed_in_redis_is_never_renewed() {
    // An instance paused past its lease (SIGSTOP, a VM pause) missed the
    // invalidations of writes that no longer waited for it: it must join
    // anew (forgetting what it vouched for), not renew.
    let (Some(schema), Some(url)) = (postgres_schema().await, redis_url().await) else {
        return;
    };
    let prefix = redis_prefix();
    let a = instance(&schema, Some(redis(&url, &prefix).await)).await;
    sharing(&a).await;
    let mut raw = redis_raw(&url).await;
    let members = format!("{prefix}members");
    let before: Vec<String> = redis::cmd("ZRANGE")
        .arg(&members)
        .arg(0)
        .arg(-1)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(before.len(), 1);
    // Its lease, lapsed (Redis's clock is this host's).
    let _: () = redis::cmd("ZADD")
        .arg(&members)
        .arg("XX")
        .arg(1)
        .arg(&before[0])
        .query_async(&mut raw)
        .await
        .unwrap();
    let rejoined = eventually(Duration::from_secs(3), || {
        let (members, mut raw) = (members.clone(), raw.clone());
        let old = before[0].clone();
        async move {
            let now: Vec<String> = redis::cmd("ZRANGE")
                .arg(&members)
                .arg(0)
                .arg(-1)
                .query_async(&mut raw)
                .await
                .unwrap();
            now.len() == 1 && now[0] != old
        }
    })
    .await;
    assert!(rejoined.is_some(), "it renewed a lapsed lease");
}
