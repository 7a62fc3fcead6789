//! The SQLite store's RAM cache: reads from RAM that always match the file,
//! eviction and reload, context replies across eviction, deletes and expiry
//! in both places, files of earlier versions, one process per file.

use std::path::Path;
use std::sync::Arc;

use chatbot_api::domain::chatbot::{Chatbot, History, Replier};
use chatbot_api::domain::models::SessionId;
use chatbot_api::domain::store::{
    MemoryStore, NewExchange, Page, SqliteStore, Store, StoreError, StoreOptions, SyncMode,
};

fn exchange(message: &str, name: &str, timestamp: i64) -> NewExchange {
    NewExchange {
        user_message: message.into(),
        user_name: name.into(),
        timestamp,
    }
}

fn id(session: &str) -> SessionId {
    SessionId::parse(session.into()).unwrap()
}

async fn open(path: &Path, cache_bytes: usize) -> SqliteStore {
    let options = StoreOptions {
        cache_bytes,
        ..StoreOptions::default()
    };
    SqliteStore::open(&path.display().to_string(), options)
        .await
        .unwrap()
}

async fn page_json(store: &dyn Store, session: &str) -> Option<String> {
    store
        .history_json(session, Page::default())
        .await
        .unwrap()
        .map(|page| String::from_utf8(page.body).unwrap())
}

/// Messages with everything JSON must escape, shared and one-off replies,
/// names that change, context replies.
const CONVERSATION: [(&str, &str); 8] = [
    ("Hello!", "Alice"),
    ("what did I just say?", "Alice"),
    ("say \"hi\"\n\\ \u{1}", "Bob \"B\""),
    ("caf\u{e9} \u{1f600} </script>", "Alice"),
    ("What's my name?", "Zo\u{eb}"),
    ("Hello!", "Bob \"B\""),
    ("fastapi?", "Alice"),
    ("fastapi?", "Alice"),
];

async fn converse(store: &dyn Store, session: &str) {
    let bot: Arc<dyn Replier> = Arc::new(Chatbot::seed());
    for (i, (message, name)) in CONVERSATION.iter().enumerate() {
        store
            .append(
                &id(session),
                exchange(message, name, 1_700_000_000 + i as i64),
                bot.clone(),
            )
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_and_reload_give_byte_identical_histories() {
    let dir = tempfile::tempdir().unwrap();
    // Room for a few sessions of this size, not for twenty.
    let store = open(&dir.path().join("c.db"), 4096).await;
    let memory = MemoryStore::new();
    converse(&memory, "s0").await;
    let expected = page_json(&memory, "s0").await.unwrap();
    for i in 0..20 {
        converse(&store, &format!("s{i}")).await;
    }
    let (bytes, cached) = store.cache_usage();
    assert!(bytes <= 4096, "the cache keeps to its budget: {bytes}");
    assert!(cached < 20, "some sessions were dropped: {cached} cached");
    for round in 0..2 {
        for i in 0..20 {
            assert_eq!(
                page_json(&store, &format!("s{i}")).await.as_deref(),
                Some(expected.as_str()),
                "session s{i}, round {round}"
            );
        }
    }
    // Pages and entries agree too, cached or not.
    for i in [0, 19] {
        let page = Page {
            offset: 2,
            limit: Some(3),
        };
        let entries = store
            .history(&format!("s{i}"), page)
            .await
            .unwrap()
            .unwrap();
        let json = store
            .history_json(&format!("s{i}"), page)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            String::from_utf8(json.body).unwrap(),
            serde_json::to_string(&entries.entries).unwrap()
        );
        assert_eq!((json.total, json.count), (8, 3));
    }
    // And a fresh process reads the same bytes from the file alone.
    store.close().await;
    drop(store);
    let reopened = open(&dir.path().join("c.db"), 1 << 20).await;
    assert_eq!(page_json(&reopened, "s7").await.unwrap(), expected);
}

/// Rows another program wrote: replies repeated but no rule's, names that
/// change back and forth, text that is not UTF-8 (which SQLite stores as
/// given), a count far past the rows. A read checks only the bytes it has not seen (a kept reply,
/// the same name as the row before); what it has not seen is still checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_read_from_the_file_are_checked_as_text_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let store = open(&path, 1 << 20).await;
    store.close().await;
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "INSERT INTO sessions (id, session_id, message_count, first_at, last_at, next_seq) VALUES
           (1, 'other', 5, 1, 5, 5), (2, 'bad-name', 2, 1, 2, 2), (3, 'bad-reply', 2, 1, 2, 2),
           (4, 'huge-count', 9000000000000000000, 1, 1, 1);
         INSERT INTO exchanges (session_ref, seq, user_message, bot_reply, user_name, created_at) VALUES
           (1, 1, 'a', 'Same \"reply\"', 'Ann', 1),
           (1, 2, 'b', 'Same \"reply\"', 'Bob', 2),
           (1, 3, 'c', 'Same \"reply\"', 'Ann', 3),
           (1, 4, 'd', 'once', 'Ann', 4),
           (1, 5, 'e', 'Same \"reply\"', 'Zo\u{eb}', 5),
           (2, 1, 'a', 'ok', 'Ann', 1),
           (2, 2, 'b', 'ok', CAST(x'416eff' AS TEXT), 2),
           (3, 1, 'a', 'fine', 'Ann', 1),
           (3, 2, 'b', CAST(x'66696eff' AS TEXT), 'Ann', 2),
           (4, 1, 'a', 'ok', 'Ann', 1);",
    )
    .unwrap();
    drop(conn);

    let store = open(&path, 1 << 20).await;
    let page = store
        .history("other", Page::default())
        .await
        .unwrap()
        .unwrap();
    let rows: Vec<(&str, &str, &str)> = page
        .entries
        .iter()
        .map(|e| (&*e.user_message, &*e.bot_reply, &*e.user_name))
        .collect();
    assert_eq!(
        rows,
        [
            ("a", "Same \"reply\"", "Ann"),
            ("b", "Same \"reply\"", "Bob"),
            ("c", "Same \"reply\"", "Ann"),
            ("d", "once", "Ann"),
            ("e", "Same \"reply\"", "Zo\u{eb}"),
        ]
    );
    assert_eq!(
        page_json(&store, "other").await.unwrap(),
        serde_json::to_string(&page.entries).unwrap()
    );
    for bad in ["bad-name", "bad-reply"] {
        let read = store.history_json(bad, Page::default()).await;
        assert!(
            matches!(read, Err(StoreError::Unavailable(_))),
            "{bad}: refused, not served or a panic"
        );
    }
    assert_eq!(store.cache_usage().1, 1, "only the good session is kept");
    // A count no session could hold only sizes the read within reason.
    let huge = store
        .history("huge-count", Page::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(huge.entries.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_evicted_mid_conversation_keeps_its_context_replies() {
    let dir = tempfile::tempdir().unwrap();
    // A one-byte budget keeps nothing: every read goes to the file.
    let store = Arc::new(open(&dir.path().join("c.db"), 1).await);
    let bot: Arc<dyn Replier> = Arc::new(Chatbot::seed());
    store
        .append(
            &id("m"),
            exchange("I like green tea", "Ann", 1),
            bot.clone(),
        )
        .await
        .unwrap();
    assert!(page_json(&*store, "m").await.is_some());
    assert_eq!(store.cache_usage(), (0, 0), "nothing stays cached");
    // Enough other sessions to push "m" out of the writer's recent context too.
    let others: Vec<_> = (0..5000)
        .map(|i| {
            let (store, bot) = (store.clone(), bot.clone());
            tokio::spawn(async move {
                store
                    .append(&id(&format!("o{i}")), exchange("hi", "X", 2), bot)
                    .await
                    .unwrap();
            })
        })
        .collect();
    for other in others {
        other.await.unwrap();
    }
    let said = store
        .append(
            &id("m"),
            exchange("What did I just say?", "User", 3),
            bot.clone(),
        )
        .await
        .unwrap();
    assert_eq!(&*said.bot_reply, "You said: \"I like green tea\"");
    let name = store
        .append(&id("m"), exchange("What is my name?", "User", 4), bot)
        .await
        .unwrap();
    assert_eq!(&*name.bot_reply, "Your name is Ann.");
    assert_eq!(
        store
            .history("m", Page::default())
            .await
            .unwrap()
            .unwrap()
            .total,
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_expiry_remove_a_session_from_ram_and_file_together() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let store = open(&path, 1 << 20).await;
    let bot: Arc<dyn Replier> = Arc::new(Chatbot::seed());
    for (session, at) in [("old", 100), ("deleted", 5_000), ("kept", 10_000)] {
        store
            .append(&id(session), exchange("Hello!", "U", at), bot.clone())
            .await
            .unwrap();
        // Read, so that each is in RAM.
        assert!(page_json(&store, session).await.is_some());
    }
    assert_eq!(store.cache_usage().1, 3);
    assert!(store.delete("deleted").await.unwrap());
    assert_eq!(store.expire(1_000).await.unwrap(), 1);
    for gone in ["deleted", "old"] {
        assert_eq!(page_json(&store, gone).await, None, "{gone} in RAM");
        assert_eq!(store.summary(gone).await.unwrap(), None);
    }
    assert_eq!(store.cache_usage().1, 1);
    store.close().await;
    drop(store);
    let reopened = open(&path, 1 << 20).await;
    for gone in ["deleted", "old"] {
        assert_eq!(page_json(&reopened, gone).await, None, "{gone} in the file");
    }
    assert!(page_json(&reopened, "kept").await.is_some());
    // A deleted id starts afresh, in RAM and file alike.
    reopened
        .append(&id("deleted"), exchange("again", "U", 20_000), bot)
        .await
        .unwrap();
    assert_eq!(
        reopened
            .summary("deleted")
            .await
            .unwrap()
            .unwrap()
            .total_messages,
        1
    );
}

struct Panics;

impl Replier for Panics {
    fn reply(&self, _: &str, _: &dyn History) -> Arc<str> {
        panic!("the reply engine broke")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_leaves_ram_and_file_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let store = open(&path, 1 << 20).await;
    let bot: Arc<dyn Replier> = Arc::new(Chatbot::seed());
    store
        .append(&id("s"), exchange("Hello!", "U", 1), bot.clone())
        .await
        .unwrap();
    let before = page_json(&store, "s").await.unwrap();
    assert_eq!(store.cache_usage().1, 1, "the session is in RAM");
    let failed = store
        .append(&id("s"), exchange("boom", "U", 2), Arc::new(Panics))
        .await;
    assert!(failed.is_err());
    assert_eq!(
        page_json(&store, "s").await.unwrap(),
        before,
        "RAM unchanged"
    );
    let (_, exchanges) = store.commit_stats().snapshot();
    assert_eq!(exchanges, 1);
    store.close().await;
    drop(store);
    let reopened = open(&path, 1 << 20).await;
    assert_eq!(
        page_json(&reopened, "s").await.unwrap(),
        before,
        "file unchanged"
    );
    let next = reopened
        .append(&id("s"), exchange("Hello!", "U", 3), bot.clone())
        .await
        .unwrap();
    assert_eq!(next.seq, 2, "the failed one took no number");
    let failed = reopened
        .append(&id("s"), exchange("boom", "U", 4), Arc::new(Panics))
        .await;
    assert!(failed.is_err());
    let next = reopened
        .append(&id("s"), exchange("what did I just say?", "U", 5), bot)
        .await
        .unwrap();
    assert_eq!(next.seq, 3, "nor in the writer's memory of the log");
    assert_eq!(
        &*next.bot_reply, "You said: \"Hello!\"",
        "the failed one is not in the context"
    );
}

/// Writers and readers at once on a cache too small to keep anything long:
/// every read shows every exchange acknowledged before it, in order, and
/// nothing else but exchanges of this session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_racing_writes_and_eviction_always_see_every_acknowledged_exchange() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&dir.path().join("c.db"), 3000).await);
    let bot: Arc<dyn Replier> = Arc::new(Chatbot::seed());
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let (store, bot) = (store.clone(), bot.clone());
            tokio::spawn(async move {
                let session = format!("race{}", w % 4);
                let mut mine = Vec::new();
                for i in 0..40 {
                    let message = format!("w{w}-{i}");
                    store
                        .append(&id(&session), exchange(&message, "U", 1), bot.clone())
                        .await
                        .unwrap();
                    mine.push(message);
                    let page = store
                        .history(&session, Page::default())
                        .await
                        .unwrap()
                        .unwrap();
                    let said: Vec<&str> = page
                        .entries
                        .iter()
                        .map(|e| &*e.user_message)
                        .filter(|m| m.starts_with(&format!("w{w}-")))
                        .collect();
                    assert_eq!(said, mine, "writer {w} reads back all it wrote, in order");
                    assert_eq!(page.total, page.entries.len());
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    for s in 0..4 {
        let page = store
            .history(&format!("race{s}"), Page::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(page.total, 4 * 40);
    }
}

#[tokio::test]
async fn a_second_store_on_the_same_file_is_refused_until_the_first_closes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db").display().to_string();
    let first = SqliteStore::open(&path, StoreOptions::default())
        .await
        .unwrap();
    let second = SqliteStore::open(&path, StoreOptions::default()).await;
    let err = second.err().expect("a second store is refused").to_string();
    assert!(
        err.contains("in use by another chatbot-api process"),
        "{err}"
    );
    first.close().await;
    assert!(
        SqliteStore::open(&path, StoreOptions::default())
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_are_flushed_once_per_group_unless_told_otherwise() {
    for (sync, flushes) in [(SyncMode::Fsync, true), (SyncMode::Os, false)] {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            sync,
            ..StoreOptions::default()
        };
        let store = Arc::new(
            SqliteStore::open(&dir.path().join("c.db").display().to_string(), options)
                .await
                .unwrap(),
        );
        let bot: Arc<dyn Replier> = Arc::new(Chatbot::seed());
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let (store, bot) = (store.clone(), bot.clone());
                tokio::spawn(async move {
                    store
                        .append(&id(&format!("f{}", i % 8)), exchange("hi", "U", 1), bot)
                        .await
                        .unwrap();
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let stats = store.commit_stats();
        let (commits, exchanges) = stats.snapshot();
        assert_eq!(exchanges, 64);
        if flushes {
            assert!(
                (1..=commits).contains(&stats.syncs()),
                "{} flushes for {commits} commits",
                stats.syncs()
            );
        } else {
            assert_eq!(stats.syncs(), 0, "{sync:?} leaves flushing to the OS");
        }
    }
}

/// A file at `path` as a release that had the migrations before `upto`
/// (a file name prefix, e.g. "0002") left it, then `sql` run on it.
async fn file_of_release(dir: &Path, path: &Path, upto: &str, sql: &str) {
    use sqlx::{ConnectOptions, Executor};
    let migrations = dir.join(format!("migrations-before-{upto}"));
    std::fs::create_dir(&migrations).unwrap();
    for entry in
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite")).unwrap()
    {
        let entry = entry.unwrap();
        if entry.file_name().to_str().unwrap() < upto {
            std::fs::copy(entry.path(), migrations.join(entry.file_name())).unwrap();
        }
    }
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .connect()
        .await
        .unwrap();
    sqlx::migrate::Migrator::new(migrations.as_path())
        .await
        .unwrap()
        .run(&mut conn)
        .await
        .unwrap();
    conn.execute(sql).await.unwrap();
    sqlx::Connection::close(conn).await.unwrap();
}

/// A file as the first release wrote it (only the first migration, rows
/// without search text) opens: the later migration runs, and history,
/// search and new writes work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_by_an_earlier_version_opens_and_migrates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    file_of_release(
        dir.path(),
        &path,
        "0002",
        "INSERT INTO sessions (id, session_id, message_count, first_at, last_at) VALUES (1, 'old', 2, 10, 20);
         INSERT INTO exchanges (session_ref, seq, user_message, bot_reply, user_name, created_at) VALUES
           (1, 1, 'Hello!', 'Hi there! How can I help you today?', 'Ann', 10),
           (1, 2, 'Tell me about FastAPI', 'FastAPI is a modern, fast Python web framework for building APIs. It''s awesome!', 'Ann', 20);",
    )
    .await;

    let store = open(&path, 1 << 20).await;
    let page = store
        .history("old", Page::default())
        .await
        .unwrap()
        .unwrap();
    let said: Vec<&str> = page.entries.iter().map(|e| &*e.user_message).collect();
    assert_eq!(said, ["Hello!", "Tell me about FastAPI"]);
    let search = chatbot_api::domain::store::Search {
        prefix: String::new(),
        text: "python".into(),
        session_id: None,
        limit: 10,
    };
    let found = store.search(&search).await.unwrap();
    assert_eq!(found.len(), 1, "search text was filled in by the migration");
    let reply = store
        .append(
            &id("old"),
            exchange("What is my name?", "User", 30),
            Arc::new(Chatbot::seed()),
        )
        .await
        .unwrap();
    assert_eq!(
        &*reply.bot_reply, "Your name is Ann.",
        "context from the old rows"
    );
    assert_eq!(
        store.summary("old").await.unwrap().unwrap().total_messages,
        3
    );
}

/// A file of the previous release (migrations up to 0004: a lower-cased
/// copy of each message and reply in `exchanges` and in the log tables),
/// with an exchange a crash left in the log, opens: migration 0005 drops the
/// copies, the log is folded, and history and case-insensitive search (now
/// lower-casing as it reads) see both exchanges, non-ASCII text included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_the_previous_release_drops_its_search_copies() {
    use sqlx::{ConnectOptions, Row};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("previous.db");
    file_of_release(
        dir.path(),
        &path,
        "0005",
        "INSERT INTO sessions (id, session_id, message_count, first_at, last_at, next_seq) VALUES (1, 'prev', 1, 10, 10, 1);
         INSERT INTO exchanges (session_ref, seq, user_message, bot_reply, user_name, created_at, search_text) VALUES
           (1, 1, 'Grüße aus MÜNCHEN', 'Hello Ann!', 'Ann', 10, 'grüße aus münchen' || char(31) || 'hello ann!');
         INSERT INTO exchange_log_3 (session_id, seq, user_message, bot_reply, user_name, created_at, search_text) VALUES
           ('prev', 2, 'Zürich next', 'Noted.', 'Ann', 20, 'zürich next' || char(31) || 'noted.');",
    )
    .await;

    let store = open(&path, 1 << 20).await;
    let page = store
        .history("prev", Page::default())
        .await
        .unwrap()
        .unwrap();
    let said: Vec<&str> = page.entries.iter().map(|e| &*e.user_message).collect();
    assert_eq!(said, ["Grüße aus MÜNCHEN", "Zürich next"]);
    let search = |text: &str| chatbot_api::domain::store::Search {
        prefix: String::new(),
        text: text.into(),
        session_id: None,
        limit: 10,
    };
    for (text, hits) in [
        ("münchen", 1),
        ("zürich", 1),
        ("ann", 1),
        ("noted", 1),
        ("e", 2),
        ("paris", 0),
        // the copy joined message and reply: a search no longer spans them
        ("münchen\u{1f}hello", 0),
    ] {
        let found = store.search(&search(text)).await.unwrap();
        assert_eq!(found.len(), hits, "{text:?}");
    }
    drop(store);
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .connect()
        .await
        .unwrap();
    for table in ["exchanges", "exchange_log_3"] {
        let columns: Vec<String> =
            sqlx::query(&format!("SELECT name FROM pragma_table_info('{table}')"))
                .fetch_all(&mut conn)
                .await
                .unwrap()
                .iter()
                .map(|row| row.get(0))
                .collect();
        assert!(
            !columns.iter().any(|c| c == "search_text"),
            "{table}: {columns:?}"
        );
    }
}

/// Runs `write(store, i)` for every `i` below `sessions`, from 32 tasks at once
/// (each its share, in order): groups of many sessions.
async fn in_32_tasks<F>(
    store: &Arc<SqliteStore>,
    sessions: usize,
    write: fn(Arc<SqliteStore>, usize) -> F,
) where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let tasks: Vec<_> = (0..32)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in (task..sessions).step_by(32) {
                    write(store.clone(), i).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

/// Exchanges the writer's log holds, read with a connection of the test's
/// own: (in the log, in the tables).
fn logged_and_folded(path: &Path) -> (i64, i64) {
    let conn = rusqlite::Connection::open(path).unwrap();
    let count = |table: &str| -> i64 {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
            row.get(0)
        })
        .unwrap()
    };
    let logged = (0..8).map(|k| count(&format!("exchange_log_{k}"))).sum();
    (logged, count("exchanges"))
}

/// Commits go to a log that is folded into the tables in batches: a part
/// at a time once it holds `FOLD_ROWS` exchanges, before any query, and at open for what a
/// crash left. None of it shows: histories (byte for byte, context replies
/// included, conversations spanning a fold), counts and positions are
/// memory mode's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_folds_into_the_tables_unseen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    // A small cache: most reads below go to the file.
    let store = Arc::new(open(&path, 64 << 10).await);
    // A quarter more than the threshold: every log table passes its share.
    let sessions = SqliteStore::FOLD_ROWS * 5 / 4 / CONVERSATION.len();
    in_32_tasks(&store, sessions, |store, i| async move {
        converse(&*store, &format!("s{i}")).await
    })
    .await;
    let written = (sessions * CONVERSATION.len()) as i64;
    let (logged, folded) = logged_and_folded(&path);
    assert_eq!(logged + folded, written);
    assert!(
        folded >= SqliteStore::FOLD_ROWS as i64,
        "folded past the threshold, with no query asking: {logged} logged, {folded} folded"
    );
    assert!(logged > 0, "the last ones wait for the next fold");

    let memory = MemoryStore::new();
    converse(&memory, "m").await;
    let expected = page_json(&memory, "m").await.unwrap();
    let totals = store.totals().await.unwrap();
    assert_eq!(
        (totals.sessions, totals.exchanges),
        (sessions as u64, written as u64)
    );
    assert_eq!(
        logged_and_folded(&path),
        (0, written),
        "a query folds first"
    );
    for i in 0..sessions {
        assert_eq!(
            page_json(&*store, &format!("s{i}")).await.unwrap(),
            expected,
            "session s{i}"
        );
    }

    // A crash with exchanges in the log: the next open folds them.
    for s in [&*store as &dyn Store, &memory] {
        converse(s, "late").await;
        let answered = s
            .append(
                &id("late"),
                exchange("what did I just say?", "Alice", 1_800_000_000),
                Arc::new(Chatbot::seed()),
            )
            .await
            .unwrap();
        assert_eq!(answered.seq, CONVERSATION.len() as u64 + 1);
    }
    let late = page_json(&memory, "late").await.unwrap();
    drop(Arc::into_inner(store).unwrap());
    let in_log = CONVERSATION.len() as i64 + 1;
    assert_eq!(logged_and_folded(&path), (in_log, written));
    let reopened = open(&path, 64 << 10).await;
    assert_eq!(logged_and_folded(&path), (0, written + in_log));
    assert_eq!(page_json(&reopened, "late").await.unwrap(), late);
    let summary = reopened.summary("late").await.unwrap().unwrap();
    assert_eq!(summary.total_messages, CONVERSATION.len() + 1);
    assert_eq!(summary.first_at, 1_700_000_000);
    assert_eq!(summary.last_at, 1_800_000_000);
    let next = reopened
        .append(
            &id("late"),
            exchange("Hello!", "Alice", 1_800_000_001),
            Arc::new(Chatbot::seed()),
        )
        .await
        .unwrap();
    assert_eq!(next.seq, CONVERSATION.len() as u64 + 2, "numbering goes on");
}

/// A log of many sessions with few exchanges each is folded before its rows
/// would ask: the writer keeps each logged session's context, and this
/// bounds how many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_of_many_sessions_is_folded_before_its_rows_would_ask() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let store = Arc::new(open(&path, 1 << 20).await);
    let sessions = SqliteStore::FOLD_SESSIONS + 64;
    // Each log table gets about an eighth of the sessions, one row each: far
    // below its eighth of `FOLD_ROWS`.
    assert!(sessions * 2 < SqliteStore::FOLD_ROWS);
    in_32_tasks(&store, sessions, |store, i| async move {
        store
            .append(
                &id(&format!("s{i}")),
                exchange("Hello!", "U", 1),
                Arc::new(Chatbot::seed()),
            )
            .await
            .unwrap();
    })
    .await;
    let (logged, folded) = logged_and_folded(&path);
    assert_eq!(logged + folded, sessions as i64);
    assert!(folded > 0, "folded for its sessions: {logged} logged");
    assert!(logged <= SqliteStore::FOLD_SESSIONS as i64);
    // A clean stop leaves the file whole in its tables.
    assert!(logged > 0);
    store.close().await;
    assert_eq!(logged_and_folded(&path), (0, sessions as i64));
}
