//! What the two bench servers share: the seed's request, and serving an app
//! on `BENCH_PORT`. A directory module, so cargo does not take it for a bench.

use axum::Router;
use serde::Deserialize;

/// The seed's `ChatRequest`, with its defaults.
#[derive(Deserialize)]
pub struct ChatRequest {
    pub user_message: String,
    #[serde(default = "user")]
    pub user_name: String,
    #[serde(default = "default_session")]
    pub session_id: String,
}

fn user() -> String {
    "User".into()
}

fn default_session() -> String {
    "default".into()
}

/// Serves `app` on 127.0.0.1, port `BENCH_PORT` (else `default_port`).
pub async fn serve(app: Router, default_port: u16) {
    let port = std::env::var("BENCH_PORT").unwrap_or_else(|_| default_port.to_string());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}"))
        .await
        .expect("bind");
    axum::serve(listener, app).await.expect("serve");
}
