//! `GET /metrics` after known traffic, scraped from a server process of its
//! own (the recorder is per process) and parsed, not grepped.

use std::collections::HashMap;

use serde_json::json;

use crate::helpers::Server;

/// Prometheus text → `name{labels}` (labels sorted) → value.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').expect("a sample line");
        let key = match series.split_once('{') {
            None => series.to_owned(),
            Some((name, labels)) => {
                let mut pairs: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                pairs.sort_unstable();
                format!("{name}{{{}}}", pairs.join(","))
            }
        };
        samples.insert(key, value.parse().expect("a number"));
    }
    samples
}

fn requests(method: &str, route: &str, status: u16) -> String {
    format!("http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_known_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", dir.path().join("m.db").display());
    let server = Server::start(&[
        "--store",
        &store,
        "--api-key",
        "k",
        "--api-key",
        "k2",
        "--api-key",
        "k3",
        "--rate-limit",
        "1",
        "--rate-limit-burst",
        "8",
        "--max-sessions",
        "1",
        "--max-body-bytes",
        "2048",
    ]);
    let client = reqwest::Client::new();
    let post = |key: &'static str, body: String| {
        client
            .post(server.url("/chat"))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body)
    };
    for message in ["hello", "xyz", "what did I just say?"] {
        let sent = post(
            "k",
            json!({"user_message": message, "session_id": "s"}).to_string(),
        );
        assert_eq!(sent.send().await.unwrap().status(), 200);
    }
    let full = post(
        "k",
        json!({"user_message": "hi", "session_id": "another"}).to_string(),
    );
    assert_eq!(full.send().await.unwrap().status(), 507);
    let large = post("k", json!({"user_message": "x".repeat(4000)}).to_string());
    assert_eq!(large.send().await.unwrap().status(), 413);
    let missing = client
        .get(server.url("/chat/history/nope"))
        .bearer_auth("k");
    assert_eq!(missing.send().await.unwrap().status(), 404);
    let anonymous = client.get(server.url("/chat/sessions"));
    assert_eq!(anonymous.send().await.unwrap().status(), 401);
    let mut limited = 0;
    for _ in 0..10 {
        let status = client
            .get(server.url("/chat/sessions"))
            .bearer_auth("k2")
            .send()
            .await
            .unwrap()
            .status();
        limited += usize::from(status == 429);
    }
    assert!(limited >= 1, "a burst of 8 lets 10 quick requests through");
    assert_eq!(
        client
            .get(server.url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    let scrape = client
        .get(server.url("/metrics"))
        .bearer_auth("k3")
        .send()
        .await
        .unwrap();
    assert_eq!(scrape.status(), 200);
    assert!(
        scrape.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let samples = parse(&scrape.text().await.unwrap());
    let value = |key: &str| samples.get(key).copied().unwrap_or(0.0);
    let expected = [
        (requests("POST", "/chat", 200), 3.0),
        (requests("POST", "/chat", 507), 1.0),
        (requests("POST", "/chat", 413), 1.0),
        (requests("GET", "/chat/history/{session_id}", 404), 1.0),
        (requests("GET", "/metrics", 401), 1.0),
        (
            "chatbot_replies_total{rule=\"hello\",source=\"rule\"}".into(),
            1.0,
        ),
        (
            "chatbot_replies_total{rule=\"\",source=\"conversation\"}".into(),
            1.0,
        ),
        (
            "chatbot_replies_total{rule=\"\",source=\"fallback\"}".into(),
            1.0,
        ),
        ("chatbot_sessions".into(), 1.0),
        ("chatbot_exchanges".into(), 3.0),
        ("chatbot_group_commit_exchanges_sum".into(), 3.0),
    ];
    for (key, want) in expected {
        assert_eq!(value(&key), want, "{key}");
    }
    let sessions_401 = value(&requests("GET", "/chat/sessions", 401));
    let sessions_429 = value(&requests("GET", "/chat/sessions", 429));
    let sessions_200 = value(&requests("GET", "/chat/sessions", 200));
    assert_eq!((sessions_401, sessions_429), (1.0, limited as f64));
    assert_eq!(sessions_200 + sessions_429, 10.0);
    let commits = value("chatbot_group_commit_duration_seconds_count");
    // One per message that reached the writer, one at a time: the three
    // stored and the one refused by the session cap (an empty group).
    assert_eq!(commits, 4.0);
    assert_eq!(value("chatbot_group_commit_exchanges_count"), commits);
    let timed =
        "http_request_duration_seconds_count{method=\"POST\",route=\"/chat\",status=\"200\"}";
    assert_eq!(value(timed), 3.0);
    // The raw path never becomes a label.
    assert!(
        samples
            .keys()
            .all(|key| !key.contains("/chat/history/nope"))
    );
}
