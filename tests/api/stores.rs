//! One suite of store behaviours, run against every backend: memory, SQLite
//! and PostgreSQL (skipped with a notice when no server answers, unless
//! `CHATBOT_REQUIRE_POSTGRES=1`).

use std::sync::Arc;

use chatbot_api::domain::chatbot::{History, Replier};
use chatbot_api::domain::models::{ConversationEntry, SessionId};
use chatbot_api::domain::store::{NewExchange, Store};

use crate::helpers::all;

fn entry(message: &str, user: &str, timestamp: i64) -> ConversationEntry {
    ConversationEntry {
        user_message: message.into(),
        bot_reply: format!("re: {message}").into(),
        user_name: user.into(),
        timestamp,
    }
}

/// Replies `re: MESSAGE`, and records the history it was shown.
#[derive(Default)]
struct Echo {
    seen: std::sync::Mutex<Vec<Vec<String>>>,
}

impl Replier for Echo {
    fn reply(&self, message: &str, history: &dyn History) -> Arc<str> {
        let shown = (0..history.len())
            .map(|i| history.user_message(i).to_string())
            .collect();
        self.seen.lock().unwrap().push(shown);
        format!("re: {message}").into()
    }
}

/// Appends `message` with the echo replier.
async fn say(
    store: &Arc<dyn Store>,
    session: &SessionId,
    message: &str,
    user: &str,
    timestamp: i64,
) -> ConversationEntry {
    let exchange = NewExchange {
        user_message: message.into(),
        user_name: user.into(),
        timestamp,
    };
    store
        .append(session, exchange, Arc::new(Echo::default()))
        .await
        .unwrap()
        .entry
}

fn sid(id: &str) -> SessionId {
    SessionId::parse(id.to_owned()).expect("valid session id")
}

fn messages(entries: &[ConversationEntry]) -> Vec<&str> {
    entries.iter().map(|e| &*e.user_message).collect()
}

async fn appends_come_back_in_order_with_every_field(store: Arc<dyn Store>) {
    let s = sid("alice_chat");
    say(&store, &s, "Hello!", "Alice", 1_700_000_000).await;
    say(&store, &s, "What's your name?", "Alice", 1_700_000_000).await;
    say(&store, &s, "Bye", "Al", 1_699_999_999).await;
    let history = all(&*store, "alice_chat").await.expect("history");
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
    assert_eq!(all(&*store, "nobody").await, None);
}

async fn sessions_are_separate(store: Arc<dyn Store>) {
    say(&store, &sid("a"), "for a", "A", 1).await;
    say(&store, &sid("b"), "for b", "B", 2).await;
    assert_eq!(messages(&all(&*store, "a").await.unwrap()), ["for a"]);
    assert_eq!(messages(&all(&*store, "b").await.unwrap()), ["for b"]);
}

async fn the_replier_sees_the_latest_exchanges_oldest_first(store: Arc<dyn Store>) {
    let s = sid("r");
    let echo = Arc::new(Echo::default());
    let total = chatbot_api::domain::chatbot::CONTEXT_EXCHANGES + 5;
    for i in 0..total {
        let exchange = NewExchange {
            user_message: format!("m{i}").into(),
            user_name: "U".into(),
            timestamp: i as i64,
        };
        store.append(&s, exchange, echo.clone()).await.unwrap();
    }
    let seen = echo.seen.lock().unwrap().clone();
    assert!(seen[0].is_empty(), "the first exchange has no history");
    assert_eq!(seen[1], ["m0"]);
    let last = &seen[total - 1];
    let expected: Vec<String> = (total - 1 - chatbot_api::domain::chatbot::CONTEXT_EXCHANGES
        ..total - 1)
        .map(|i| format!("m{i}"))
        .collect();
    assert_eq!(last, &expected, "a window of the latest, oldest first");
    // Another session's history is never shown.
    say(&store, &sid("other"), "x", "U", 0).await;
}

async fn unicode_and_quotes_round_trip(store: Arc<dyn Store>) {
    let s = sid("会话 ☕ 'x' \"y\"");
    let e = entry("Ça va? 你好 🙂 \\ ' \" \n\t%_", "Zoë 🚀", 5);
    say(&store, &s, &e.user_message, &e.user_name, e.timestamp).await;
    assert_eq!(all(&*store, s.as_str()).await, Some(vec![e]));
    // LIKE-style wildcards in an id match nothing else.
    assert_eq!(all(&*store, "会话 %").await, None);
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
                say(&store, &session, &format!("w{w}-{i}"), "U", 0).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let shared = all(&*store, "shared").await.unwrap();
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
        let private = all(&*store, &format!("own-{w}")).await.unwrap();
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
    the_replier_sees_the_latest_exchanges_oldest_first,
    unicode_and_quotes_round_trip,
    concurrent_appends_keep_each_writers_order,
);
