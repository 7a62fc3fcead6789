//! Durability: restarts, `kill -9` mid-load, group commit, two instances on
//! one PostgreSQL database, and a database outage with recovery.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use chatbot_api::domain::chatbot::Chatbot;
use chatbot_api::domain::models::{ConversationEntry, SessionId};
use chatbot_api::domain::store::{NewExchange, PostgresStore, SqliteStore, Store};

use crate::helpers::all;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::helpers::{Proxy, Server, TestApp, open_sqlite, postgres_schema};

fn entry(message: &str) -> ConversationEntry {
    ConversationEntry {
        user_message: message.into(),
        bot_reply: "Interesting! I'm still learning...".into(),
        user_name: "U".into(),
        timestamp: 0,
    }
}

async fn append(store: &dyn Store, session: &SessionId, message: &str) -> ConversationEntry {
    let exchange = NewExchange {
        user_message: message.into(),
        user_name: "U".into(),
        timestamp: 0,
    };
    store
        .append(session, exchange, Arc::new(Chatbot::seed()))
        .await
        .unwrap()
        .entry
}

#[tokio::test]
async fn sqlite_history_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_sqlite(dir.path()).await;
    let s = SessionId::parse("kept".into()).unwrap();
    append(&*store, &s, "one").await;
    append(&*store, &s, "two").await;
    store.close().await;
    drop(store);

    let reopened = open_sqlite(dir.path()).await;
    let history = all(&*reopened, "kept").await.unwrap();
    assert_eq!(history, vec![entry("one"), entry("two")]);
}

async fn assert_commits_are_grouped(store: Arc<dyn Store>, stats: impl Fn() -> (u64, u64)) {
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let s = SessionId::parse(format!("g{}", i % 4)).unwrap();
                append(&*store, &s, &format!("m{i}")).await;
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let (commits, exchanges) = stats();
    assert_eq!(exchanges, 64);
    assert!(
        commits < exchanges,
        "64 concurrent appends took {commits} commits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_commits_concurrent_exchanges_in_groups() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.db").display().to_string();
    let store = Arc::new(SqliteStore::open(&path, Default::default()).await.unwrap());
    let stats = store.commit_stats();
    assert_commits_are_grouped(store, || stats.snapshot()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_commits_concurrent_exchanges_in_groups() {
    let Some(schema) = postgres_schema().await else {
        return;
    };
    let store = Arc::new(
        PostgresStore::connect(&schema.url, 4, Default::default(), 1 << 20)
            .await
            .unwrap(),
    );
    let stats = store.commit_stats();
    assert_commits_are_grouped(store, || stats.snapshot()).await;
}

/// Posts `message` and returns whether it was acknowledged with a 200.
async fn post(
    client: &reqwest::Client,
    url: &str,
    session: &str,
    message: &str,
) -> Result<bool, reqwest::Error> {
    let body = json!({"user_message": message, "session_id": session});
    let response = client.post(url).json(&body).send().await?;
    Ok(response.status() == 200)
}

async fn messages_of(client: &reqwest::Client, url: String) -> Vec<String> {
    let response = client.get(url).send().await.unwrap();
    if response.status() == 404 {
        return Vec::new();
    }
    let history: Value = response.json().await.unwrap();
    history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["user_message"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_load_loses_no_acknowledged_exchange() {
    let dir = tempfile::tempdir().unwrap();
    let store_arg = format!("sqlite:{}", dir.path().join("crash.db").display());
    let mut server = Server::start(&["--store", &store_arg]);
    let url = server.url("/chat");
    let client = reqwest::Client::new();

    // 32 writers, each to its own session and to a shared one, until the server dies.
    let acked: Arc<Mutex<HashMap<usize, Vec<String>>>> = Arc::default();
    let in_flight: Arc<Mutex<HashMap<usize, String>>> = Arc::default();
    let writers: Vec<JoinHandle<()>> = (0..32)
        .map(|w| {
            let (client, url, acked, in_flight) = (
                client.clone(),
                url.clone(),
                acked.clone(),
                in_flight.clone(),
            );
            tokio::spawn(async move {
                for i in 0.. {
                    let message = format!("w{w}-{i}");
                    let session = if i % 2 == 0 {
                        format!("crash-{w}")
                    } else {
                        "crash-shared".to_owned()
                    };
                    in_flight.lock().unwrap().insert(w, message.clone());
                    match post(&client, &url, &session, &message).await {
                        Ok(true) => acked.lock().unwrap().entry(w).or_default().push(message),
                        _ => return,
                    }
                }
            })
        })
        .collect();
    // Let the load run, then kill without warning.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().values().map(Vec::len).sum::<usize>() < 1500
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.signal("KILL");
    server.wait(Duration::from_secs(10));
    for writer in writers {
        writer.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let in_flight = in_flight.lock().unwrap().clone();
    assert!(
        acked.values().map(Vec::len).sum::<usize>() > 100,
        "the load barely ran"
    );

    let restarted = Server::start(&["--store", &store_arg]);
    let shared = messages_of(&client, restarted.url("/chat/history/crash-shared")).await;
    for w in 0..32 {
        let own = messages_of(&client, restarted.url(&format!("/chat/history/crash-{w}"))).await;
        let prefix = format!("w{w}-");
        let stored: Vec<String> = own
            .into_iter()
            .chain(shared.iter().filter(|m| m.starts_with(&prefix)).cloned())
            .collect();
        let mut stored_sorted = stored.clone();
        stored_sorted.sort_by_key(|m| m[prefix.len()..].parse::<u32>().unwrap());
        let wanted = acked.get(&w).cloned().unwrap_or_default();
        // Everything acknowledged is there, once, in order; at most the one
        // request in flight at the kill may also be there, whole.
        let mut allowed = wanted.clone();
        if let Some(last) = in_flight.get(&w).filter(|m| !wanted.contains(m)) {
            allowed.push(last.clone());
        }
        assert!(
            stored_sorted == wanted || stored_sorted == allowed,
            "writer {w}: stored {stored_sorted:?}, acknowledged {wanted:?}"
        );
        let mut unique = stored.clone();
        unique.dedup();
        assert_eq!(unique.len(), stored.len(), "writer {w} has duplicates");
    }
    // Within each session, each writer's messages are in its order.
    for (i, pair) in shared.windows(2).enumerate() {
        let (a, b) = (&pair[0], &pair[1]);
        if a.split('-').next() == b.split('-').next() {
            let n = |m: &str| m.split('-').nth(1).unwrap().parse::<u32>().unwrap();
            assert!(n(a) < n(b), "out of order at {i}: {a} then {b}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_postgres_database() {
    let Some(schema) = postgres_schema().await else {
        return;
    };
    let a = Server::start(&["--store", &schema.url]);
    let b = Server::start(&["--store", &schema.url]);
    let client = reqwest::Client::new();

    // A write on one is read on the other at once.
    assert!(
        post(&client, &a.url("/chat"), "seen", "Hello!")
            .await
            .unwrap()
    );
    assert_eq!(
        messages_of(&client, b.url("/chat/history/seen")).await,
        ["Hello!"]
    );
    // b now holds a copy of the session; a's next write is seen all the same.
    assert!(
        post(&client, &a.url("/chat"), "seen", "Again")
            .await
            .unwrap()
    );
    assert_eq!(
        messages_of(&client, b.url("/chat/history/seen")).await,
        ["Hello!", "Again"]
    );

    // Concurrent writers on both instances, one session: every exchange once, each writer in order.
    let tasks: Vec<_> = (0..16)
        .map(|w| {
            let client = client.clone();
            let url = if w % 2 == 0 {
                a.url("/chat")
            } else {
                b.url("/chat")
            };
            tokio::spawn(async move {
                for i in 0..40 {
                    assert!(
                        post(&client, &url, "both", &format!("w{w}-{i}"))
                            .await
                            .unwrap()
                    );
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let from_a = messages_of(&client, a.url("/chat/history/both")).await;
    let from_b = messages_of(&client, b.url("/chat/history/both")).await;
    assert_eq!(from_a, from_b, "both instances see the same history");
    assert_eq!(from_a.len(), 16 * 40);
    for w in 0..16 {
        let prefix = format!("w{w}-");
        let own: Vec<&String> = from_a.iter().filter(|m| m.starts_with(&prefix)).collect();
        let expected: Vec<String> = (0..40).map(|i| format!("w{w}-{i}")).collect();
        assert_eq!(own, expected.iter().collect::<Vec<_>>());
    }
}

/// Two instances creating sessions at once never store more than
/// `--max-sessions` between them: the count and the insert are one step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_never_pass_the_session_cap_together() {
    let Some(schema) = postgres_schema().await else {
        return;
    };
    let caps = chatbot_api::domain::store::Caps {
        max_sessions: Some(5),
        max_messages_per_session: None,
    };
    let mut instances = Vec::new();
    for _ in 0..2 {
        instances.push(Arc::new(
            PostgresStore::connect(&schema.url, 4, caps, 1 << 20)
                .await
                .unwrap(),
        ));
    }
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let store = instances[i % 2].clone();
            tokio::spawn(async move {
                let exchange = NewExchange {
                    user_message: "hi".into(),
                    user_name: "U".into(),
                    timestamp: 1,
                };
                let session = SessionId::parse(format!("s{i}")).unwrap();
                let stored = store
                    .append(&session, exchange, Arc::new(Chatbot::default()))
                    .await;
                let conversation: &dyn Store = &*store;
                let created = conversation
                    .create(
                        &SessionId::parse(format!("c{i}")).unwrap(),
                        1,
                        vec![],
                        vec![],
                    )
                    .await;
                (stored.is_ok(), matches!(created, Ok(true)))
            })
        })
        .collect();
    let mut stored = 0;
    for task in tasks {
        let (appended, created) = task.await.unwrap();
        stored += usize::from(appended) + usize::from(created);
    }
    let mut sql = <sqlx::PgConnection as sqlx::Connection>::connect(&schema.url)
        .await
        .unwrap();
    let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM sessions")
        .fetch_one(&mut sql)
        .await
        .unwrap();
    assert_eq!(rows, 5, "sessions stored by both instances");
    assert_eq!(stored, 5, "acknowledged creations");
}

/// An app on a PostgreSQL store that reaches `schema` through a [`Proxy`].
async fn behind_proxy(schema: &crate::helpers::PgSchema) -> (Proxy, TestApp) {
    let pg: SocketAddr = {
        let url = url::Url::parse(&schema.url).unwrap();
        let host = url.host_str().unwrap().to_owned();
        tokio::net::lookup_host((host.as_str(), url.port().unwrap_or(5432)))
            .await
            .unwrap()
            .next()
            .unwrap()
    };
    let proxy = Proxy::start(pg).await;
    let store = Arc::new(
        PostgresStore::connect(&schema.url_via(proxy.addr), 2, Default::default(), 1 << 20)
            .await
            .unwrap(),
    );
    (proxy, TestApp::with_store(store, Default::default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_gives_503_and_recovers_without_restart() {
    let Some(schema) = postgres_schema().await else {
        return;
    };
    let (proxy, app) = behind_proxy(&schema).await;
    app.say("outage", "U", "before").await;
    // Read once, so that the reads below go through the cache's version check.
    assert_eq!(app.get("/chat/history/outage").await.status, StatusCode::OK);

    proxy.cut();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let during = app
        .post_chat(r#"{"user_message": "during", "session_id": "outage"}"#)
        .await;
    assert_eq!(during.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(during.header("content-type"), Some("application/json"));
    assert_eq!(during.text(), r#"{"detail":"Storage unavailable"}"#);
    let read = app.get("/chat/history/outage").await;
    assert_eq!(read.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(read.text(), r#"{"detail":"Storage unavailable"}"#);

    proxy.restore().await;
    let mut recovered = false;
    for _ in 0..50 {
        if app
            .post_chat(r#"{"user_message": "after", "session_id": "outage"}"#)
            .await
            .status
            == StatusCode::OK
        {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(recovered, "no 200 within 10 s of the database coming back");
    let history: Vec<String> = app
        .get("/chat/history/outage")
        .await
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["user_message"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        history,
        ["before", "after"],
        "the failed write stored nothing"
    );
}

#[tokio::test]
async fn after_a_restart_replies_still_remember_the_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::with_store(open_sqlite(dir.path()).await, Default::default());
    app.say("mem", "Ann", "I like green tea").await;
    app.state.store.close().await;
    drop(app);

    let app = TestApp::with_store(open_sqlite(dir.path()).await, Default::default());
    let reply = app.say("mem", "User", "What did I just say?").await;
    assert_eq!(reply["bot_reply"], "You said: \"I like green tea\"");
    let name = app.say("mem", "User", "What is my name?").await;
    assert_eq!(name["bot_reply"], "Your name is Ann.");
}

/// A database that stops answering (not gone: hung) gives cached reads a
/// 503 within seconds, not a request that waits for ever; they recover when
/// it answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_database_gives_cached_reads_503_in_seconds() {
    let Some(schema) = postgres_schema().await else {
        return;
    };
    let (proxy, app) = behind_proxy(&schema).await;
    app.say("hung", "U", "before").await;
    assert_eq!(app.get("/chat/history/hung").await.status, StatusCode::OK);

    proxy.freeze(true);
    let read = tokio::time::timeout(Duration::from_secs(10), app.get("/chat/history/hung"))
        .await
        .expect("an answer within 10 s");
    assert_eq!(read.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(read.text(), r#"{"detail":"Storage unavailable"}"#);

    proxy.freeze(false);
    let mut recovered = false;
    for _ in 0..50 {
        if app.get("/chat/history/hung").await.status == StatusCode::OK {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        recovered,
        "no 200 within 10 s of the database answering again"
    );
}
