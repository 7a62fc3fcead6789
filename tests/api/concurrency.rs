//! Many writers at once: every acknowledged exchange is stored once, in each writer's order.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::helpers::TestApp;

const WRITERS: usize = 32;
const MESSAGES: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_keep_every_exchange_once_and_in_order() {
    let app = Arc::new(TestApp::new());
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0..MESSAGES {
                // Even messages go to the shared session, odd ones to this writer's own.
                let session = if i % 2 == 0 { "shared".to_owned() } else { format!("private-{writer}") };
                let message = format!("w{writer}-m{i}");
                let body = json!({"user_message": message, "user_name": format!("u{writer}"), "session_id": session});
                let response = app.post_chat(body.to_string()).await;
                assert_eq!(response.status, StatusCode::OK, "{}", response.text());
                acknowledged.push((session, message));
            }
            acknowledged
        }));
    }
    let mut expected: HashMap<String, Vec<String>> = HashMap::new();
    for task in tasks {
        for (session, message) in task.await.expect("writer task") {
            expected.entry(session).or_default().push(message);
        }
    }

    let messages_of = |history: Value| -> Vec<String> {
        history
            .as_array()
            .expect("array")
            .iter()
            .map(|e| e["user_message"].as_str().unwrap().to_owned())
            .collect()
    };

    // Private sessions: exactly the writer's messages, in its order.
    for writer in 0..WRITERS {
        let session = format!("private-{writer}");
        let stored = messages_of(app.get(&format!("/chat/history/{session}")).await.json());
        assert_eq!(stored, expected[&session], "{session}");
    }

    // The shared session: every acknowledged message once, and each writer's in its order.
    let stored = messages_of(app.get("/chat/history/shared").await.json());
    assert_eq!(stored.len(), WRITERS * MESSAGES / 2);
    let mut sorted = stored.clone();
    sorted.sort();
    let mut wanted = expected["shared"].clone();
    wanted.sort();
    assert_eq!(
        sorted, wanted,
        "shared history holds exactly the acknowledged messages"
    );
    for writer in 0..WRITERS {
        let prefix = format!("w{writer}-");
        let own: Vec<&String> = stored.iter().filter(|m| m.starts_with(&prefix)).collect();
        let acked: Vec<&String> = expected["shared"]
            .iter()
            .filter(|m| m.starts_with(&prefix))
            .collect();
        assert_eq!(own, acked, "writer {writer}'s order in the shared session");
    }
}
