//! Managing conversations over HTTP, on every backend: session lists, history
//! pages, stats, delete, search, export, debug endpoints, replies that remember.

use axum::body::Body;
use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, field_names, said};

fn ids(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|e| e["session_id"].as_str().unwrap())
        .collect()
}

/// Follows `Link: <…>; rel="next"` headers from `first`, returning every page's body.
async fn follow(app: &TestApp, first: &str) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut next = Some(first.to_owned());
    while let Some(uri) = next {
        let response = app.get(&uri).await;
        assert_eq!(
            response.status,
            StatusCode::OK,
            "{uri}: {}",
            response.text()
        );
        next = response.header("link").map(|link| {
            assert!(link.ends_with("; rel=\"next\""), "{link}");
            link[1..link.find('>').unwrap()].to_owned()
        });
        pages.push(response.json());
    }
    pages
}

async fn session_list_pages_see_every_session_once(app: TestApp) {
    for id in [
        "b",
        "a",
        "c d",
        "ä",
        "e/f-not-allowed".split('/').next().unwrap(),
        "z?&=x",
    ] {
        app.say(id, "U", "hi").await;
    }
    app.say("a", "U", "again").await;
    let pages = follow(&app, "/chat/sessions?limit=2").await;
    assert_eq!(pages.len(), 3, "three pages of two");
    let all: Vec<&str> = pages.iter().flat_map(ids).collect();
    assert_eq!(
        all,
        ["a", "b", "c d", "e", "z?&=x", "ä"],
        "sorted, each once"
    );
    let first = &pages[0][0];
    assert_eq!(first["total_messages"], 2);
    let keys = field_names(first);
    assert_eq!(
        keys,
        [
            "session_id",
            "total_messages",
            "first_message_time",
            "last_message_time"
        ]
    );

    // The last page has no Link; a cursor past the end is an empty page.
    let last = app.get("/chat/sessions?after=%C3%BF").await; // "ÿ" sorts after every id here
    assert_eq!(last.status, StatusCode::OK);
    assert_eq!(last.json(), json!([]));
    assert_eq!(last.header("link"), None);
    assert_eq!(
        ids(&app.get("/chat/sessions").await.json()).len(),
        6,
        "default limit"
    );
}

async fn sessions_created_while_paging_do_not_disturb_the_pages(app: TestApp) {
    for id in ["s1", "s3", "s5"] {
        app.say(id, "U", "hi").await;
    }
    let first = app.get("/chat/sessions?limit=2").await;
    assert_eq!(ids(&first.json()), ["s1", "s3"]);
    // New sessions before and after the cursor.
    app.say("s0", "U", "late").await;
    app.say("s4", "U", "late").await;
    let link = first.header("link").unwrap().to_owned();
    let rest = follow(&app, &link[1..link.find('>').unwrap()]).await;
    let seen: Vec<&str> = rest.iter().flat_map(ids).collect();
    assert_eq!(
        seen,
        ["s4", "s5"],
        "nothing seen twice, nothing after the cursor missed"
    );
}

async fn history_pages_with_total_and_next_links(app: TestApp) {
    for i in 0..5 {
        app.say("paged", "U", &format!("m{i}")).await;
    }
    let whole = app.get("/chat/history/paged").await;
    assert_eq!(whole.header("x-total-count"), Some("5"));
    assert_eq!(
        whole.header("link"),
        None,
        "without parameters: everything, as the seed"
    );
    assert_eq!(said(&whole.json()), ["m0", "m1", "m2", "m3", "m4"]);

    let pages = follow(&app, "/chat/history/paged?limit=2").await;
    let seen: Vec<Vec<&str>> = pages.iter().map(said).collect();
    assert_eq!(seen, vec![vec!["m0", "m1"], vec!["m2", "m3"], vec!["m4"]]);

    let middle = app.get("/chat/history/paged?offset=1&limit=3").await;
    assert_eq!(said(&middle.json()), ["m1", "m2", "m3"]);
    assert_eq!(middle.header("x-total-count"), Some("5"));
    assert!(middle.header("link").unwrap().contains("offset=4&limit=3"));
    let past = app.get("/chat/history/paged?offset=9").await;
    assert_eq!(past.status, StatusCode::OK);
    assert_eq!(past.json(), json!([]));
    assert_eq!(past.header("x-total-count"), Some("5"));
}

async fn bad_query_parameters_are_422_in_fastapis_shape(app: TestApp) {
    app.say("q", "U", "hi").await;
    let cases = [
        (
            "/chat/history/q?limit=0",
            r#"{"detail":[{"type":"greater_than_equal","loc":["query","limit"],"msg":"Input should be greater than or equal to 1","input":"0","ctx":{"ge":1}}]}"#,
        ),
        (
            "/chat/history/q?limit=abc",
            r#"{"detail":[{"type":"int_parsing","loc":["query","limit"],"msg":"Input should be a valid integer, unable to parse string as an integer","input":"abc"}]}"#,
        ),
        (
            "/chat/history/q?offset=-1&limit=x",
            r#"{"detail":[{"type":"greater_than_equal","loc":["query","offset"],"msg":"Input should be greater than or equal to 0","input":"-1","ctx":{"ge":0}},{"type":"int_parsing","loc":["query","limit"],"msg":"Input should be a valid integer, unable to parse string as an integer","input":"x"}]}"#,
        ),
        (
            "/chat/sessions?limit=1001",
            r#"{"detail":[{"type":"less_than_equal","loc":["query","limit"],"msg":"Input should be less than or equal to 1000","input":"1001","ctx":{"le":1000}}]}"#,
        ),
        (
            "/chat/search?q=",
            r#"{"detail":[{"type":"string_too_short","loc":["query","q"],"msg":"String should have at least 1 character","input":"","ctx":{"min_length":1}}]}"#,
        ),
        (
            "/chat/search",
            r#"{"detail":[{"type":"missing","loc":["query","q"],"msg":"Field required","input":null}]}"#,
        ),
        (
            "/chat/history/q/export?format=xml",
            r#"{"detail":[{"type":"enum","loc":["query","format"],"msg":"Input should be 'jsonl', 'csv' or 'markdown'","input":"xml","ctx":{"expected":"'jsonl', 'csv' or 'markdown'"}}]}"#,
        ),
    ];
    for (uri, expected) in cases {
        let response = app.get(uri).await;
        assert_eq!(response.status, StatusCode::UNPROCESSABLE_ENTITY, "{uri}");
        assert_eq!(response.text(), expected, "{uri}");
    }
}

async fn stats_follow_the_seed_tip(app: TestApp) {
    app.say("st", "U", "one").await;
    app.say("st", "U", "two").await;
    let stats = app.get("/chat/history/st/stats").await;
    assert_eq!(stats.status, StatusCode::OK);
    let body = stats.json();
    let keys = field_names(&body);
    assert_eq!(
        keys,
        ["total_messages", "first_message_time", "last_message_time"]
    );
    assert_eq!(body["total_messages"], 2);
    let history = app.get("/chat/history/st").await.json();
    assert_eq!(body["first_message_time"], history[0]["timestamp"]);
    assert_eq!(body["last_message_time"], history[1]["timestamp"]);
    let missing = app.get("/chat/history/nope/stats").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        missing.text(),
        r#"{"detail":"No conversation history found for session 'nope'"}"#
    );
}

async fn delete_then_reuse_starts_a_fresh_conversation(app: TestApp) {
    app.say("gone", "Ann", "What is my name?").await;
    app.say("gone", "Ann", "first life").await;
    app.say("kept", "Bob", "stay").await;
    let deleted = app
        .request(Method::DELETE, "/chat/history/gone", None, Body::empty())
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert!(deleted.body.is_empty());
    assert_eq!(
        app.get("/chat/history/gone").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get("/chat/history/gone/stats").await.status,
        StatusCode::NOT_FOUND
    );
    let again = app
        .request(Method::DELETE, "/chat/history/gone", None, Body::empty())
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_eq!(
        again.text(),
        r#"{"detail":"No conversation history found for session 'gone'"}"#
    );

    // The id works again at once, with no memory of the old conversation.
    let reply = app.say("gone", "User", "What did I just say?").await;
    assert_eq!(
        reply["bot_reply"],
        "You haven't said anything yet in this conversation."
    );
    assert_eq!(
        said(&app.get("/chat/history/gone").await.json()),
        ["What did I just say?"]
    );
    assert_eq!(said(&app.get("/chat/history/kept").await.json()), ["stay"]);
}

async fn search_is_case_insensitive_unicode_aware_and_newest_first(app: TestApp) {
    app.say("fr", "U", "Un bel ÉTÉ à Paris").await;
    app.say("fr", "U", "rien").await;
    app.say("fr", "U", "Straße im Sommer: été?").await;
    app.say("de", "U", "Noch ein Été").await;
    app.say("x", "U", "100% sure_thing").await;
    let found = app.get("/chat/search?q=%C3%A9t%C3%A9&session_id=fr").await; // "été"
    assert_eq!(found.status, StatusCode::OK);
    let hits = found.json();
    assert_eq!(
        said(&hits),
        ["Straße im Sommer: été?", "Un bel ÉTÉ à Paris"],
        "newest first"
    );
    let keys = field_names(&hits[0]);
    assert_eq!(
        keys,
        [
            "session_id",
            "user_message",
            "bot_reply",
            "user_name",
            "timestamp"
        ]
    );
    assert_eq!(hits[0]["session_id"], "fr");

    // Without session_id, every session is searched.
    let everywhere = app.get("/chat/search?q=%C3%89T%C3%89").await.json();
    let mut found: Vec<&str> = said(&everywhere);
    found.sort_unstable();
    assert_eq!(
        found,
        [
            "Noch ein Été",
            "Straße im Sommer: été?",
            "Un bel ÉTÉ à Paris"
        ]
    );
    // Replies are searched too; wildcards are literal.
    let in_replies = app
        .get("/chat/search?q=still%20LEARNING&limit=1")
        .await
        .json();
    assert_eq!(in_replies.as_array().unwrap().len(), 1);
    assert_eq!(
        said(&app.get("/chat/search?q=0%25%20s").await.json()),
        ["100% sure_thing"]
    );
    assert_eq!(
        app.get("/chat/search?q=s_r").await.json(),
        json!([]),
        "_ is no wildcard"
    );
}

async fn exports_round_trip(app: TestApp) {
    let tricky = "Hello, \"world\"\nsecond line; ünïcode ☕";
    app.say("ex", "Zoë, Jr.", tricky).await;
    app.say("ex", "Zoë, Jr.", "plain").await;
    let history = app.get("/chat/history/ex").await.json();

    let jsonl = app.get("/chat/history/ex/export?format=jsonl").await;
    assert_eq!(jsonl.status, StatusCode::OK);
    assert_eq!(jsonl.header("content-type"), Some("application/x-ndjson"));
    assert!(
        jsonl
            .header("content-disposition")
            .unwrap()
            .starts_with("attachment; filename=\"conversation.jsonl\"")
    );
    let lines: Vec<Value> = jsonl
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(Value::Array(lines), history);
    assert_eq!(
        app.get("/chat/history/ex/export").await.text(),
        jsonl.text(),
        "jsonl is the default"
    );

    let csv = app.get("/chat/history/ex/export?format=csv").await;
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    assert!(
        csv.header("content-disposition")
            .unwrap()
            .contains("conversation.csv")
    );
    let mut reader = ::csv::Reader::from_reader(csv.body.as_slice());
    assert_eq!(
        reader.headers().unwrap(),
        vec!["user_message", "bot_reply", "user_name", "timestamp"]
    );
    let rows: Vec<Vec<String>> = reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect();
    let expected: Vec<Vec<String>> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            ["user_message", "bot_reply", "user_name", "timestamp"]
                .iter()
                .map(|k| e[k].as_str().unwrap().to_owned())
                .collect()
        })
        .collect();
    assert_eq!(rows, expected);

    let markdown = app.get("/chat/history/ex/export?format=markdown").await;
    assert_eq!(
        markdown.header("content-type"),
        Some("text/markdown; charset=utf-8")
    );
    assert!(markdown.text().starts_with("# Conversation `ex`"));
    assert!(markdown.text().contains("> second line; ünïcode ☕"));

    assert_eq!(
        app.get("/chat/history/none/export?format=csv").await.status,
        StatusCode::NOT_FOUND
    );
}

async fn replies_remember_the_conversation(app: TestApp) {
    let first = app.say("mem", "Ann", "What did I just say?").await;
    assert_eq!(
        first["bot_reply"],
        "You haven't said anything yet in this conversation."
    );
    app.say("mem", "Ann", "I like green tea").await;
    let echo = app.say("mem", "Ann", "what did i just say").await;
    assert_eq!(echo["bot_reply"], "You said: \"I like green tea\"");
    let name = app.say("mem", "User", "What is my name?").await;
    assert_eq!(name["bot_reply"], "Your name is Ann.");
    app.say("mem", "Ann", "Tell me about FastAPI?").await;
    let twice = app.say("mem", "Ann", "tell me about fastapi?").await;
    assert!(
        twice["bot_reply"]
            .as_str()
            .unwrap()
            .starts_with("You asked me about \"tell me about fastapi?\" earlier...")
    );
    // Another session knows nothing of this one.
    let other = app.say("mem-other", "User", "What did I just say?").await;
    assert_eq!(
        other["bot_reply"],
        "You haven't said anything yet in this conversation."
    );
}

async fn debug_endpoints_only_when_enabled(app: TestApp) {
    app.say("d1", "U", "a").await;
    app.say("d2", "U", "b").await;
    app.say("d2", "U", "c").await;
    assert_eq!(
        app.get("/debug/sessions").await.text(),
        r#"{"detail":"Not Found"}"#
    );
    let clear = app
        .request(Method::POST, "/debug/clear", None, Body::empty())
        .await;
    assert_eq!(clear.status, StatusCode::NOT_FOUND);
    assert_eq!(app.get("/chat/history/d1").await.status, StatusCode::OK);

    let debug = TestApp::from_state(app.state.clone().with_debug_endpoints(true));
    let sessions = debug.get("/debug/sessions").await;
    assert_eq!(
        sessions.text(),
        r#"{"total_sessions":2,"session_ids":["d1","d2"],"total_messages":3}"#
    );
    let clear = debug
        .request(Method::POST, "/debug/clear", None, Body::empty())
        .await;
    assert_eq!(clear.text(), r#"{"status":"cleared"}"#);
    assert_eq!(
        debug.get("/debug/sessions").await.text(),
        r#"{"total_sessions":0,"session_ids":[],"total_messages":0}"#
    );
    assert_eq!(
        debug.get("/chat/history/d1").await.status,
        StatusCode::NOT_FOUND
    );
    // The store works after a clear.
    debug.say("d1", "U", "fresh").await;
}

http_suite!(
    session_list_pages_see_every_session_once,
    sessions_created_while_paging_do_not_disturb_the_pages,
    history_pages_with_total_and_next_links,
    bad_query_parameters_are_422_in_fastapis_shape,
    stats_follow_the_seed_tip,
    delete_then_reuse_starts_a_fresh_conversation,
    search_is_case_insensitive_unicode_aware_and_newest_first,
    exports_round_trip,
    replies_remember_the_conversation,
    debug_endpoints_only_when_enabled,
);

mod nul {
    use crate::helpers::TestApp;

    /// PostgreSQL cannot take NUL; these must still answer, and right.
    async fn nul_in_queries_finds_nothing_instead_of_failing(app: TestApp) {
        app.say("a", "U", "hello").await;
        app.say("b", "U", "hello").await;
        let search = app.get("/chat/search?q=hel%00lo").await;
        assert_eq!(search.status, axum::http::StatusCode::OK);
        assert_eq!(search.text(), "[]");
        let scoped = app.get("/chat/search?q=hello&session_id=a%00").await;
        assert_eq!(scoped.text(), "[]");
        let page = app.get("/chat/sessions?after=a%00zz").await;
        assert_eq!(page.status, axum::http::StatusCode::OK);
        assert_eq!(page.json()[0]["session_id"], "b", "after a\\0… is after a");
    }

    #[tokio::test]
    async fn on_memory() {
        nul_in_queries_finds_nothing_instead_of_failing(TestApp::new()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_postgres() {
        let Some(backend) = crate::helpers::postgres().await else {
            return;
        };
        nul_in_queries_finds_nothing_instead_of_failing(TestApp::with_store(
            backend.store.clone(),
            Default::default(),
        ))
        .await;
    }
}
