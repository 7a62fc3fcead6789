//! One suite of store behaviours, run against every backend: memory, SQLite
//! and PostgreSQL (skipped with a notice when no server answers, unless
//! `CHATBOT_REQUIRE_POSTGRES=1`).

use std::sync::Arc;

use chatbot_api::domain::chatbot::{History, Replier};
use chatbot_api::domain::models::{ConversationEntry, SessionId};
use chatbot_api::domain::store::{At, Edit, Edited, NewExchange, Page, Store};

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

async fn ids(store: &Arc<dyn Store>, session: &str) -> Vec<(u64, String, String)> {
    let conversation = store.conversation(session, true).await.unwrap().unwrap();
    conversation
        .exchanges
        .into_iter()
        .map(|n| (n.seq, n.user_message.to_string(), n.bot_reply.to_string()))
        .collect()
}

fn text(value: &str) -> Option<Arc<str>> {
    Some(Arc::from(value))
}

async fn exchange_ids_survive_edits_and_are_never_given_twice(store: Arc<dyn Store>) {
    let s = sid("edits");
    let echo = Arc::new(Echo::default());
    for (i, message) in ["a", "b", "c"].into_iter().enumerate() {
        let said = store
            .append(
                &s,
                NewExchange {
                    user_message: message.into(),
                    user_name: "U".into(),
                    timestamp: i as i64,
                },
                echo.clone(),
            )
            .await
            .unwrap();
        assert_eq!(said.seq, i as u64 + 1);
    }
    let fixed = Edit {
        user_message: text("B!"),
        bot_reply: None,
    };
    let edited = store
        .edit(&s, At::Position(1), fixed)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&edited, Edited::Kept(n) if n.seq == 2 && &*n.user_message == "B!" && &*n.bot_reply == "re: b")
    );
    assert_eq!(
        store.edit(&s, At::Seq(3), Edit::remove()).await.unwrap(),
        Some(Edited::Removed(3))
    );
    assert_eq!(
        store.edit(&s, At::Seq(3), Edit::remove()).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .edit(&s, At::Position(2), Edit::remove())
            .await
            .unwrap(),
        None
    );
    // The reply engine sees what is left, and the next id is new.
    let said = store
        .append(
            &s,
            NewExchange {
                user_message: "d".into(),
                user_name: "U".into(),
                timestamp: 9,
            },
            echo.clone(),
        )
        .await
        .unwrap();
    assert_eq!(said.seq, 4);
    assert_eq!(echo.seen.lock().unwrap().last().unwrap(), &["a", "B!"]);
    // Removing one half keeps the exchange with an empty text there.
    let half = Edit {
        user_message: text(""),
        bot_reply: None,
    };
    store.edit(&s, At::Seq(1), half).await.unwrap().unwrap();
    assert_eq!(
        ids(&store, "edits").await,
        [(1, "", "re: a"), (2, "B!", "re: b"), (4, "d", "re: d")].map(|(n, m, r)| (
            n,
            m.to_owned(),
            r.to_owned()
        ))
    );
    let history = store
        .history("edits", Page::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(history.total, 3);
    assert_eq!(messages(&history.entries), ["", "B!", "d"]);
    let other_half = Edit {
        user_message: None,
        bot_reply: text(""),
    };
    assert_eq!(
        store.edit(&s, At::Seq(1), other_half).await.unwrap(),
        Some(Edited::Removed(1))
    );
    let summary = store.summary("edits").await.unwrap().unwrap();
    assert_eq!(
        (summary.total_messages, summary.first_at, summary.last_at),
        (2, 1, 9)
    );
}

async fn conversations_exist_empty_and_carry_metadata(store: Arc<dyn Store>) {
    let s = sid("conv_1");
    let metadata = vec![
        ("topic".to_owned(), "demo".to_owned()),
        ("a".to_owned(), "1".to_owned()),
    ];
    assert!(
        store
            .create(&s, 1_000, metadata.clone(), Vec::new())
            .await
            .unwrap()
    );
    assert!(
        !store
            .create(&s, 2_000, Vec::new(), Vec::new())
            .await
            .unwrap()
    );
    let conversation = store.conversation("conv_1", true).await.unwrap().unwrap();
    assert_eq!(
        (conversation.created_at, &conversation.metadata),
        (1_000, &metadata)
    );
    assert!(conversation.exchanges.is_empty());
    // Empty: no history, no stats, not listed, but there.
    assert!(
        store
            .history("conv_1", Page::default())
            .await
            .unwrap()
            .is_none_or(|p| p.total == 0)
    );
    assert_eq!(store.summary("conv_1").await.unwrap(), None);
    assert!(store.sessions("", None, 10).await.unwrap().is_empty());
    let ids = store
        .import(
            &s,
            vec![
                entry("hi", "Ann", 1_001),
                ConversationEntry {
                    user_message: "".into(),
                    ..entry("x", "User", 1_002)
                },
            ],
        )
        .await
        .unwrap();
    assert_eq!(ids, Some(vec![1, 2]));
    assert_eq!(
        store
            .import(&sid("nope"), vec![entry("x", "U", 0)])
            .await
            .unwrap(),
        None
    );
    assert!(
        store
            .set_metadata(&s, vec![("k".into(), "v".into())])
            .await
            .unwrap()
    );
    assert!(!store.set_metadata(&sid("nope"), Vec::new()).await.unwrap());
    let conversation = store.conversation("conv_1", true).await.unwrap().unwrap();
    assert_eq!(conversation.created_at, 1_000);
    assert_eq!(
        conversation.metadata,
        vec![("k".to_owned(), "v".to_owned())]
    );
    assert_eq!(conversation.exchanges.len(), 2);
    let history = store
        .history("conv_1", Page::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(messages(&history.entries), ["hi", ""]);
    assert_eq!(&*history.entries[0].user_name, "Ann");
    assert_eq!(store.sessions("", None, 10).await.unwrap().len(), 1);
    // Emptied by edits, it lives on; deleted, it is gone.
    store
        .edit(&s, At::Seq(1), Edit::remove())
        .await
        .unwrap()
        .unwrap();
    store
        .edit(&s, At::Seq(2), Edit::remove())
        .await
        .unwrap()
        .unwrap();
    assert!(store.conversation("conv_1", false).await.unwrap().is_some());
    assert!(store.delete("conv_1").await.unwrap());
    assert!(store.conversation("conv_1", false).await.unwrap().is_none());
}

async fn a_seed_session_is_a_conversation_until_its_last_exchange_goes(store: Arc<dyn Store>) {
    let s = sid("seed");
    say(&store, &s, "hello", "Ann", 500).await;
    let conversation = store.conversation("seed", true).await.unwrap().unwrap();
    assert_eq!(
        (conversation.created_at, conversation.metadata.len()),
        (500, 0)
    );
    assert_eq!(conversation.exchanges[0].seq, 1);
    store
        .edit(&s, At::Position(0), Edit::remove())
        .await
        .unwrap()
        .unwrap();
    assert!(store.conversation("seed", false).await.unwrap().is_none());
    assert!(
        store
            .history("seed", Page::default())
            .await
            .unwrap()
            .is_none_or(|p| p.total == 0)
    );
}

on_every_store!(
    exchange_ids_survive_edits_and_are_never_given_twice,
    conversations_exist_empty_and_carry_metadata,
    a_seed_session_is_a_conversation_until_its_last_exchange_goes,
    appends_come_back_in_order_with_every_field,
    unknown_sessions_have_no_history,
    sessions_are_separate,
    the_replier_sees_the_latest_exchanges_oldest_first,
    unicode_and_quotes_round_trip,
    concurrent_appends_keep_each_writers_order,
);
