//! The PostgreSQL store's read cache: a copy of a session answers a read only
//! when the database says, in that read, that the session's row is still the
//! one the copy was made from. Two instances on one database, writes by
//! either (and by SQL that knows nothing of the cache), every kind of change.

use std::sync::Arc;

use chatbot_api::domain::chatbot::Chatbot;
use chatbot_api::domain::models::{ConversationEntry, SessionId};
use chatbot_api::domain::store::{At, Edit, NewExchange, Numbered, Page, PostgresStore, Store};
use sqlx::{Connection, Executor};

use crate::helpers::{PgSchema, postgres_schema};

pub(crate) fn id(session: &str) -> SessionId {
    SessionId::parse(session.into()).unwrap()
}

async fn open(schema: &PgSchema) -> Arc<PostgresStore> {
    Arc::new(
        PostgresStore::connect(&schema.url, 4, Default::default(), 16 << 20)
            .await
            .unwrap(),
    )
}

/// Appends `message` to `session` and returns the answered exchange.
pub(crate) async fn say(store: &PostgresStore, session: &str, message: &str) -> Numbered {
    let exchange = NewExchange {
        user_message: message.into(),
        user_name: "U".into(),
        timestamp: 1_700_000_000,
    };
    store
        .append(&id(session), exchange, Arc::new(Chatbot::default()))
        .await
        .unwrap()
}

/// What a context reply is asked with.
const ASK: &str = "what did I just say?";

/// The reply to [`ASK`] in `session`.
async fn ask(store: &PostgresStore, session: &str) -> String {
    say(store, session, ASK).await.bot_reply.to_string()
}

async fn json(store: &PostgresStore, session: &str) -> Option<String> {
    store
        .history_json(session, Page::default())
        .await
        .unwrap()
        .map(|page| String::from_utf8(page.body).unwrap())
}

async fn messages(store: &PostgresStore, session: &str) -> Vec<String> {
    let page = store.history(session, Page::default()).await.unwrap();
    page.map_or_else(Vec::new, |page| {
        page.entries
            .iter()
            .map(|e| e.user_message.to_string())
            .collect()
    })
}

/// `a` and `b` give the same answers for `session`, whole and paged, and
/// its messages are `expected`.
async fn agree(a: &PostgresStore, b: &PostgresStore, session: &str, expected: &[&str]) {
    assert_eq!(messages(a, session).await, expected, "instance a");
    assert_eq!(messages(b, session).await, expected, "instance b");
    assert_eq!(json(a, session).await, json(b, session).await);
    let page = Page {
        offset: 1,
        limit: Some(1),
    };
    assert_eq!(
        a.history_json(session, page).await.unwrap(),
        b.history_json(session, page).await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_answers_only_while_the_database_has_that_version() {
    let Some(schema) = postgres_schema().await else {
        return;
    };
    let (a, b) = (open(&schema).await, open(&schema).await);
    for message in ["one", "two", "three"] {
        say(&b, "s", message).await;
    }
    agree(&a, &b, "s", &["one", "two", "three"]).await;
    assert_eq!(a.cache_usage().1, 1, "a keeps the session it read whole");
    let (dyn_a, dyn_b): (&dyn Store, &dyn Store) = (&*a, &*b);

    // Every kind of change on b, each read on a straight after.
    say(&b, "s", "four").await;
    agree(&a, &b, "s", &["one", "two", "three", "four"]).await;

    let edit = Edit {
        user_message: Some("TWO".into()),
        bot_reply: None,
    };
    dyn_b.edit(&id("s"), At::Position(1), edit).await.unwrap();
    agree(&a, &b, "s", &["one", "TWO", "three", "four"]).await;

    dyn_b
        .edit(&id("s"), At::Position(0), Edit::remove())
        .await
        .unwrap();
    agree(&a, &b, "s", &["TWO", "three", "four"]).await;

    // Deleted and begun again with as many changes: a new row, not a version.
    assert!(b.delete("s").await.unwrap());
    assert_eq!(json(&a, "s").await, None, "a deleted session is gone on a");
    assert_eq!(a.cache_usage().1, 0, "and its copy with it");
    for message in ["one", "two", "three"] {
        say(&b, "s", message).await;
    }
    agree(&a, &b, "s", &["one", "two", "three"]).await;
    assert!(b.delete("s").await.unwrap());
    for message in ["uno", "dos", "tres"] {
        say(&b, "s", message).await;
    }
    agree(&a, &b, "s", &["uno", "dos", "tres"]).await;

    // A conversation: metadata, imported exchanges, removal down to empty.
    let imported = ConversationEntry {
        user_message: "imported".into(),
        bot_reply: "a reply".into(),
        user_name: "U".into(),
        timestamp: 1,
    };
    dyn_b
        .create(&id("c"), 1, vec![("k".into(), "v".into())], vec![])
        .await
        .unwrap();
    dyn_b
        .import(&id("c"), vec![imported.clone()])
        .await
        .unwrap();
    agree(&a, &b, "c", &["imported"]).await;
    dyn_b.import(&id("c"), vec![imported]).await.unwrap();
    agree(&a, &b, "c", &["imported", "imported"]).await;
    for _ in 0..2 {
        dyn_b
            .edit(&id("c"), At::Position(0), Edit::remove())
            .await
            .unwrap();
    }
    assert_eq!(
        json(&a, "c").await,
        None,
        "an empty conversation has no history"
    );
    assert_eq!(json(&b, "c").await, None);

    // Expiry and clear, on the other instance.
    agree(&a, &b, "s", &["uno", "dos", "tres"]).await;
    assert_eq!(dyn_b.expire(i64::MAX).await.unwrap(), 2);
    assert_eq!(json(&a, "s").await, None);
    say(&a, "t", "x").await;
    assert_eq!(messages(&b, "t").await, ["x"]);
    dyn_a.clear().await.unwrap();
    assert_eq!(json(&b, "t").await, None);
}

/// An instance's own appends extend its copy (its next read needs no rows);
/// a write by another instance in between stops that, and nothing served
/// ever differs from the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instances_own_appends_extend_its_copy() {
    let Some(schema) = postgres_schema().await else {
        return;
    };
    let (a, b) = (open(&schema).await, open(&schema).await);
    say(&a, "s", "one").await;
    assert_eq!(messages(&a, "s").await, ["one"]);
    let (before, _) = a.cache_usage();
    say(&a, "s", "two").await;
    let (after, copies) = a.cache_usage();
    assert!(
        after > before && copies == 1,
        "the copy grew with the append: {before} -> {after} bytes"
    );
    agree(&a, &b, "s", &["one", "two"]).await;

    say(&b, "s", "three").await;
    say(&a, "s", "four").await;
    agree(&a, &b, "s", &["one", "two", "three", "four"]).await;
    say(&a, "s", "five").await;
    agree(&a, &b, "s", &["one", "two", "three", "four", "five"]).await;
}

/// Writes the cache knows nothing of (another tool, an instance of an earlier
/// release during an upgrade) are seen too: the database raises the version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_by_plain_sql_are_seen_at_once() {
    let Some(schema) = postgres_schema().await else {
        return;
    };
    let store = open(&schema).await;
    for message in ["one", "two"] {
        say(&store, "s", message).await;
    }
    assert_eq!(messages(&store, "s").await, ["one", "two"]);
    let mut sql = sqlx::PgConnection::connect(&schema.url).await.unwrap();

    sql.execute("UPDATE exchanges SET user_message = 'ONE' WHERE seq = 1")
        .await
        .unwrap();
    assert_eq!(messages(&store, "s").await, ["ONE", "two"]);

    sql.execute(
        "INSERT INTO exchanges (session_ref, seq, user_message, bot_reply, user_name, created_at) \
         SELECT id, 3, 'three', 'r', 'U', 0 FROM sessions WHERE session_id = 's'; \
         UPDATE sessions SET message_count = 3, next_seq = 3 WHERE session_id = 's'",
    )
    .await
    .unwrap();
    assert_eq!(messages(&store, "s").await, ["ONE", "two", "three"]);
    assert_eq!(
        json(&store, "s").await.unwrap(),
        serde_json::to_string(
            &store
                .history("s", Page::default())
                .await
                .unwrap()
                .unwrap()
                .entries
        )
        .unwrap(),
        "the copy's JSON is the rows'"
    );
}

/// Many reads at once share a version check; none of them may miss a write
/// acknowledged before it began, on either instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_in_flight_never_miss_an_acknowledged_write() {
    let Some(schema) = postgres_schema().await else {
        return;
    };
    let (a, b) = (open(&schema).await, open(&schema).await);
    say(&b, "s", "0").await;
    assert_eq!(messages(&a, "s").await, ["0"]);
    // Readers keep a's checks busy, so that checks are grouped.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..16)
        .map(|_| {
            let (a, stop) = (a.clone(), stop.clone());
            tokio::spawn(async move {
                let mut seen = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let now = messages(&a, "s").await.len();
                    assert!(now >= seen, "a read went back in time");
                    seen = now;
                }
            })
        })
        .collect();
    for i in 1..=40 {
        let message = i.to_string();
        say(&b, "s", &message).await;
        let seen = messages(&a, "s").await;
        assert_eq!(seen.len(), i + 1, "a read after write {i} was acknowledged");
        assert_eq!(seen.last(), Some(&message));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        reader.await.unwrap();
    }
}

/// A database written by the previous release (migrations up to 0003) opens:
/// the version column and its triggers are added, and its sessions are read
/// and cached like new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_the_previous_release_migrates_and_caches() {
    let Some(schema) = postgres_schema().await else {
        return;
    };
    let old = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir("migrations/postgres").unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.as_str() < "0004" {
            std::fs::copy(&path, old.path().join(name)).unwrap();
        }
    }
    let mut sql = sqlx::PgConnection::connect(&schema.url).await.unwrap();
    let migrator = sqlx::migrate::Migrator::new(old.path()).await.unwrap();
    assert_eq!(migrator.iter().count(), 3);
    migrator.run(&mut sql).await.unwrap();
    sql.execute(
        "INSERT INTO sessions (session_id, message_count, first_at, last_at, next_seq) \
         VALUES ('old', 2, 5, 6, 2); \
         INSERT INTO exchanges (session_ref, seq, user_message, bot_reply, user_name, created_at) \
         SELECT id, 1, 'first', 'r1', 'Ann', 5 FROM sessions; \
         INSERT INTO exchanges (session_ref, seq, user_message, bot_reply, user_name, created_at) \
         SELECT id, 2, 'second', 'r2', 'Ann', 6 FROM sessions",
    )
    .await
    .unwrap();

    let store = open(&schema).await;
    assert_eq!(messages(&store, "old").await, ["first", "second"]);
    assert_eq!(
        json(&store, "old").await.unwrap(),
        r#"[{"user_message":"first","bot_reply":"r1","user_name":"Ann","timestamp":"1970-01-01 00:00:05"},{"user_message":"second","bot_reply":"r2","user_name":"Ann","timestamp":"1970-01-01 00:00:06"}]"#
    );
    assert_eq!(store.cache_usage().1, 1);
    sql.execute("UPDATE exchanges SET bot_reply = 'R2' WHERE seq = 2")
        .await
        .unwrap();
    let page = store
        .history("old", Page::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&*page.entries[1].bot_reply, "R2");
}

/// The commit task keeps the latest exchanges of the sessions it wrote to,
/// for the reply engine; it uses them only while nobody else changed the
/// session: another instance's append, an edit (by an instance or by plain
/// SQL), a delete and new beginning are all seen by the next reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reply_context_a_commit_task_keeps_yields_to_every_other_change() {
    let Some(schema) = postgres_schema().await else {
        return;
    };
    let (a, b) = (open(&schema).await, open(&schema).await);
    say(&a, "s", "tea").await;
    assert_eq!(ask(&a, "s").await, "You said: \"tea\"", "a's own context");
    say(&b, "s", "coffee").await;
    assert_eq!(ask(&a, "s").await, "You said: \"coffee\"", "b's append");

    let (dyn_a, dyn_b): (&dyn Store, &dyn Store) = (&*a, &*b);
    say(&a, "s", "milk").await;
    let edit = Edit {
        user_message: Some("MILK".into()),
        bot_reply: None,
    };
    dyn_b.edit(&id("s"), At::Position(4), edit).await.unwrap();
    assert_eq!(ask(&a, "s").await, "You said: \"MILK\"", "b's edit");

    say(&a, "s", "juice").await;
    let mut sql = sqlx::PgConnection::connect(&schema.url).await.unwrap();
    sql.execute("UPDATE exchanges SET user_message = 'JUICE' WHERE user_message = 'juice'")
        .await
        .unwrap();
    assert_eq!(ask(&a, "s").await, "You said: \"JUICE\"", "plain SQL");

    say(&a, "s", "water").await;
    assert!(dyn_b.delete("s").await.unwrap());
    assert_eq!(
        ask(&a, "s").await,
        "You haven't said anything yet in this conversation.",
        "deleted on b"
    );
    // a's own edit, too.
    say(&a, "s", "soda").await;
    let edit = Edit {
        user_message: Some("SODA".into()),
        bot_reply: None,
    };
    dyn_a.edit(&id("s"), At::Position(1), edit).await.unwrap();
    assert_eq!(ask(&a, "s").await, "You said: \"SODA\"", "a's edit");
}

/// One group may hold a session the commit task keeps, one another instance
/// created (which the task's one-statement write must leave to the locked
/// way) and a new one: each reply is answered from its own history and each
/// exchange numbered after what the database holds.
#[tokio::test]
async fn a_group_answers_kept_foreign_and_new_sessions_from_their_own_histories() {
    let Some(schema) = postgres_schema().await else {
        return;
    };
    let (a, b) = (open(&schema).await, open(&schema).await);
    say(&a, "kept", "tea").await;
    say(&b, "foreign", "coffee").await;
    say(&b, "foreign", "cocoa").await;
    let answer = |session| {
        let a = &a;
        async move {
            let answered = say(a, session, ASK).await;
            (answered.seq, answered.bot_reply.to_string())
        }
    };
    let (kept, foreign, new) = tokio::join!(answer("kept"), answer("foreign"), answer("new"));
    assert_eq!(kept, (2, "You said: \"tea\"".to_owned()));
    assert_eq!(foreign, (3, "You said: \"cocoa\"".to_owned()));
    assert_eq!(
        new,
        (
            1,
            "You haven't said anything yet in this conversation.".to_owned()
        )
    );
    agree(&a, &b, "foreign", &["coffee", "cocoa", ASK]).await;
    agree(&a, &b, "new", &[ASK]).await;
}

/// The search index merges its pending list in small steps (migration
/// 0005): a commit never waits behind a merge of megabytes.
#[tokio::test]
async fn the_search_index_keeps_its_pending_list_short() {
    let Some(schema) = postgres_schema().await else {
        return;
    };
    let _store = open(&schema).await;
    let mut sql = sqlx::PgConnection::connect(&schema.url).await.unwrap();
    let (options,): (Vec<String>,) = sqlx::query_as(
        "SELECT reloptions FROM pg_class WHERE relname = 'exchanges_search_text' \
         AND relnamespace = current_schema()::regnamespace",
    )
    .fetch_one(&mut sql)
    .await
    .unwrap();
    assert_eq!(options, ["gin_pending_list_limit=128"]);
}

/// A group goes out as one statement while that works; while another
/// instance keeps writing the same session (so what this one keeps is
/// stale) it goes the locked way directly, trying the one statement only
/// now and then; and back once this instance writes alone again. Replies
/// stay right throughout.
#[tokio::test]
async fn the_one_statement_is_tried_while_it_works() {
    let Some(schema) = postgres_schema().await else {
        return;
    };
    let (a, b) = (open(&schema).await, open(&schema).await);
    let tried = || a.commit_stats().one_statement();
    for i in 0..10 {
        say(&a, "s", &format!("a{i}")).await;
    }
    assert_eq!(tried(), 10, "alone, every group is one statement");

    let before = tried();
    for i in 0..48 {
        say(&b, "s", &format!("b{i}")).await;
        assert_eq!(ask(&a, "s").await, format!("You said: \"b{i}\""));
    }
    let stale = tried() - before;
    assert!(
        stale <= 6,
        "{stale} of 48 stale groups tried as one statement"
    );

    let before = tried();
    for i in 0..48 {
        say(&a, "s", &format!("again{i}")).await;
    }
    let alone = tried() - before;
    assert!(
        alone >= 32,
        "only {alone} of 48 groups as one statement once alone again"
    );
}
