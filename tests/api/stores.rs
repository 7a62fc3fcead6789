//! One suite of store behaviours, run against every backend: memory, SQLite
//! and PostgreSQL (skipped with a notice when no server answers, unless
//! `CHATBOT_REQUIRE_POSTGRES=1`).

use std::sync::Arc;

use chatbot_api::models::{ConversationEntry, SessionId};
use chatbot_api::store::Store;

fn entry(message: &str, user: &str, timestamp: i64) -> ConversationEntry {
    ConversationEntry {
        user_message: message.into(),
        bot_reply: format!("re: {message}").into(),
        user_name: user.into(),
        timestamp,
    }
}

fn sid(id: &str) -> SessionId {
    SessionId::parse(id.to_owned()).expect("valid session id")
}

fn messages(entries: &[ConversationEntry]) -> Vec<&str> {
    entries.iter().map(|e| &*e.user_message).collect()
}

async fn appends_come_back_in_order_with_every_field(store: Arc<dyn Store>) {
    let s = sid("alice_chat");
    store
        .append(&s, entry("Hello!", "Alice", 1_700_000_000))
        .await
        .unwrap();
    store
        .append(&s, entry("What's your name?", "Alice", 1_700_000_000))
        .await
        .unwrap();
    store
        .append(&s, entry("Bye", "Al", 1_699_999_999))
        .await
        .unwrap();
    let history = store.history("alice_chat").await.unwrap().expect("history");
    // Order is the order of appends, not of timestamps.
    assert_eq!(
        history,
        vec![
            entry("Hello!", "Alice", 1_700_000_000),
            entry("What's your name?", "Alice", 1_700_000_000),
            entry("Bye", "Al", 1_699_999_999),
        ]
    );
}

async fn unknown_sessions_have_no_history(store: Arc<dyn Store>) {
    assert_eq!(store.history("nobody").await.unwrap(), None);
    assert!(store.recent(&sid("nobody"), 5).await.unwrap().is_empty());
}

async fn sessions_are_separate(store: Arc<dyn Store>) {
    store
        .append(&sid("a"), entry("for a", "A", 1))
        .await
        .unwrap();
    store
        .append(&sid("b"), entry("for b", "B", 2))
        .await
        .unwrap();
    assert_eq!(
        messages(&store.history("a").await.unwrap().unwrap()),
        ["for a"]
    );
    assert_eq!(
        messages(&store.history("b").await.unwrap().unwrap()),
        ["for b"]
    );
}

async fn recent_returns_the_latest_oldest_first(store: Arc<dyn Store>) {
    let s = sid("r");
    for i in 0..10 {
        store
            .append(&s, entry(&format!("m{i}"), "U", i))
            .await
            .unwrap();
    }
    assert_eq!(
        messages(&store.recent(&s, 3).await.unwrap()),
        ["m7", "m8", "m9"]
    );
    assert_eq!(store.recent(&s, 100).await.unwrap().len(), 10);
    assert!(store.recent(&s, 0).await.unwrap().is_empty());
}

async fn unicode_and_quotes_round_trip(store: Arc<dyn Store>) {
    let s = sid("会话 ☕ 'x' \"y\"");
    let e = entry("Ça va? 你好 🙂 \\ ' \" \n\t%_", "Zoë 🚀", 5);
    store.append(&s, e.clone()).await.unwrap();
    assert_eq!(store.history(s.as_str()).await.unwrap(), Some(vec![e]));
    // LIKE-style wildcards in an id match nothing else.
    assert_eq!(store.history("会话 %").await.unwrap(), None);
}

async fn concurrent_appends_keep_each_writers_order(store: Arc<dyn Store>) {
    let writers = 16;
    let per_writer = 40;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                let session = if i % 2 == 0 {
                    sid("shared")
                } else {
                    sid(&format!("own-{w}"))
                };
                store
                    .append(&session, entry(&format!("w{w}-{i}"), "U", 0))
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let shared = store.history("shared").await.unwrap().unwrap();
    assert_eq!(shared.len(), writers * per_writer / 2);
    for w in 0..writers {
        let prefix = format!("w{w}-");
        let own: Vec<String> = shared
            .iter()
            .map(|e| e.user_message.to_string())
            .filter(|m| m.starts_with(&prefix))
            .collect();
        let expected: Vec<String> = (0..per_writer)
            .step_by(2)
            .map(|i| format!("w{w}-{i}"))
            .collect();
        assert_eq!(own, expected);
        let private = store.history(&format!("own-{w}")).await.unwrap().unwrap();
        let expected: Vec<String> = (1..per_writer)
            .step_by(2)
            .map(|i| format!("w{w}-{i}"))
            .collect();
        assert_eq!(
            messages(&private),
            expected.iter().map(String::as_str).collect::<Vec<_>>()
        );
    }
}

macro_rules! store_suite {
    ($($behaviour:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $behaviour() {
                    let backend = crate::helpers::memory();
                    super::$behaviour(backend.store.clone()).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() {
                    let backend = crate::helpers::sqlite().await;
                    super::$behaviour(backend.store.clone()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() {
                    let Some(backend) = crate::helpers::postgres().await else { return };
                    super::$behaviour(backend.store.clone()).await;
                }
            )*
        }
    };
}

store_suite!(
    appends_come_back_in_order_with_every_field,
    unknown_sessions_have_no_history,
    sessions_are_separate,
    recent_returns_the_latest_oldest_first,
    unicode_and_quotes_round_trip,
    concurrent_appends_keep_each_writers_order,
);
