//! Replies from a model: any server that speaks OpenAI's chat-completions
//! protocol (Ollama, vLLM, llama.cpp's server, OpenAI, or another
//! chatbot-api), sent the session's recent exchanges as context.
//!
//! `reqwest` with typed request and answer structs rather than a full SDK
//! crate: this needs one endpoint, two shapes (an answer and its stream),
//! and control over timeouts and error kinds.

use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::domain::models::ConversationEntry;

/// How to reach the model and what to send it.
#[derive(Clone, PartialEq, Eq)]
pub struct ModelConfig {
    /// Base URL of the API, e.g. `http://localhost:11434/v1`.
    pub url: String,
    pub model: String,
    /// Sent as `Authorization: Bearer …`; never logged.
    pub api_key: Option<String>,
    pub system_prompt: Option<String>,
    /// How many of the session's latest exchanges go with each message.
    pub context: usize,
    /// How long a whole answer may take.
    pub timeout: Duration,
}

impl std::fmt::Debug for ModelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelConfig")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("context", &self.context)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Why the model gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// Not reachable, or it answered with an error status.
    #[error("model server unavailable: {0}")]
    Unavailable(String),
    /// No (complete) answer within the timeout.
    #[error("model server timed out")]
    TimedOut,
    /// An answer that is not a chat completion.
    #[error("malformed answer from the model server: {0}")]
    Malformed(String),
}

/// One message sent to the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Turn {
    pub role: &'static str,
    pub content: String,
}

#[derive(Serialize)]
struct Request<'a> {
    model: &'a str,
    messages: &'a [Turn],
    stream: bool,
}

#[derive(Deserialize)]
struct Completion {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: Said,
}

#[derive(Deserialize)]
struct Said {
    content: Option<String>,
}

#[derive(Deserialize)]
struct Chunk {
    choices: Vec<ChunkChoice>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Delta,
}

#[derive(Deserialize, Default)]
struct Delta {
    content: Option<String>,
}

/// Pieces of an answer as they arrive.
pub type Pieces = Pin<Box<dyn Stream<Item = Result<String, ModelError>> + Send>>;

/// A client for one model.
#[derive(Debug, Clone)]
pub struct ModelClient {
    http: reqwest::Client,
    endpoint: String,
    config: ModelConfig,
}

impl ModelClient {
    pub fn new(config: ModelConfig) -> Result<Self, String> {
        let base = url::Url::parse(&config.url).map_err(|e| format!("bad model URL: {e}"))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err("the model URL must be http:// or https://".into());
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            http,
            endpoint: format!("{}/chat/completions", config.url.trim_end_matches('/')),
            config,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The system prompt, then the latest exchanges (user, then assistant;
    /// a side left empty is left out), then `message`.
    pub fn turns(&self, history: &[ConversationEntry], message: &str) -> Vec<Turn> {
        let from = history.len().saturating_sub(self.config.context);
        let mut turns = Vec::with_capacity(2 * (history.len() - from) + 2);
        if let Some(prompt) = &self.config.system_prompt {
            turns.push(Turn {
                role: "system",
                content: prompt.clone(),
            });
        }
        for exchange in &history[from..] {
            for (role, text) in [
                ("user", &exchange.user_message),
                ("assistant", &exchange.bot_reply),
            ] {
                if !text.is_empty() {
                    turns.push(Turn {
                        role,
                        content: text.to_string(),
                    });
                }
            }
        }
        turns.push(Turn {
            role: "user",
            content: message.to_owned(),
        });
        turns
    }

    fn request(&self, turns: &[Turn], stream: bool) -> reqwest::RequestBuilder {
        let request = self.http.post(&self.endpoint).json(&Request {
            model: &self.config.model,
            messages: turns,
            stream,
        });
        match &self.config.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    /// The model's answer to `turns`.
    pub async fn complete(&self, turns: &[Turn]) -> Result<String, ModelError> {
        let response = self.request(turns, false).send().await.map_err(failed)?;
        let response = check_status(response)?;
        let body = response.bytes().await.map_err(failed)?;
        let completion: Completion = serde_json::from_slice(&body)
            .map_err(|e| ModelError::Malformed(format!("not a chat completion: {e}")))?;
        completion
            .choices
            .into_iter()
            .next()
            .and_then(|choice| choice.message.content)
            .filter(|text| !text.is_empty())
            .ok_or_else(|| ModelError::Malformed("no text in the first choice".into()))
    }

    /// The model's answer as it is written: each item a piece of text.
    /// Errors before the first piece come back here; later ones in the stream.
    pub async fn stream(&self, turns: &[Turn]) -> Result<Pieces, ModelError> {
        let response = self.request(turns, true).send().await.map_err(failed)?;
        let response = check_status(response)?;
        let bytes = response.bytes_stream();
        let pieces = futures_util::stream::unfold(
            (bytes, Vec::<u8>::new(), false),
            |(mut bytes, mut buffer, done)| async move {
                if done {
                    return None;
                }
                loop {
                    // One event per line (`data: …`); blank lines separate them.
                    if let Some(end) = buffer.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = buffer.drain(..=end).collect();
                        match sse_data(&line) {
                            None => continue,
                            Some(Event::Done) => return None,
                            Some(Event::Piece(Ok(text))) if text.is_empty() => continue,
                            Some(Event::Piece(piece)) => {
                                let stop = piece.is_err();
                                return Some((piece, (bytes, buffer, stop)));
                            }
                        }
                    }
                    match bytes.next().await {
                        Some(Ok(chunk)) => buffer.extend_from_slice(&chunk),
                        Some(Err(err)) => return Some((Err(failed(err)), (bytes, buffer, true))),
                        // The server closed the stream: what was written is the answer.
                        None => return None,
                    }
                }
            },
        );
        Ok(Box::pin(pieces))
    }
}

enum Event {
    Piece(Result<String, ModelError>),
    Done,
}

/// The text of one `data:` line of a chat-completion stream.
fn sse_data(line: &[u8]) -> Option<Event> {
    let line = std::str::from_utf8(line).ok()?.trim();
    let data = line.strip_prefix("data:")?.trim();
    if data == "[DONE]" {
        return Some(Event::Done);
    }
    Some(Event::Piece(match serde_json::from_str::<Chunk>(data) {
        Ok(chunk) => Ok(chunk
            .choices
            .into_iter()
            .next()
            .and_then(|choice| choice.delta.content)
            .unwrap_or_default()),
        Err(e) => Err(ModelError::Malformed(format!(
            "not a completion chunk: {e}"
        ))),
    }))
}

fn check_status(response: reqwest::Response) -> Result<reqwest::Response, ModelError> {
    let status = response.status();
    if status.is_success() {
        Ok(response)
    } else {
        Err(ModelError::Unavailable(format!("it answered {status}")))
    }
}

fn failed(err: reqwest::Error) -> ModelError {
    if err.is_timeout() {
        ModelError::TimedOut
    } else if err.is_decode() {
        ModelError::Malformed(err.to_string())
    } else {
        // Without the URL: it may carry credentials.
        ModelError::Unavailable(err.without_url().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(context: usize, prompt: Option<&str>) -> ModelClient {
        ModelClient::new(ModelConfig {
            url: "http://127.0.0.1:9/v1/".into(),
            model: "m".into(),
            api_key: Some("secret".into()),
            system_prompt: prompt.map(str::to_owned),
            context,
            timeout: Duration::from_secs(1),
        })
        .unwrap()
    }

    fn exchange(message: &str, reply: &str) -> ConversationEntry {
        ConversationEntry {
            user_message: message.into(),
            bot_reply: reply.into(),
            user_name: "U".into(),
            timestamp: 0,
        }
    }

    #[test]
    fn turns_carry_the_prompt_and_the_latest_exchanges_in_order() {
        let history = [exchange("a", "A"), exchange("b", "B"), exchange("", "C")];
        let turns = client(2, Some("Be brief.")).turns(&history, "now");
        let shown: Vec<(&str, &str)> = turns.iter().map(|t| (t.role, t.content.as_str())).collect();
        assert_eq!(
            shown,
            [
                ("system", "Be brief."),
                ("user", "b"),
                ("assistant", "B"),
                ("assistant", "C"),
                ("user", "now")
            ]
        );
        assert_eq!(client(0, None).turns(&history, "x").len(), 1);
    }

    #[test]
    fn stream_lines_parse() {
        let piece = |line: &str| match sse_data(line.as_bytes()) {
            Some(Event::Piece(Ok(text))) => Some(text),
            _ => None,
        };
        assert_eq!(
            piece(r#"data: {"choices":[{"delta":{"content":"Hi"}}]}"#).as_deref(),
            Some("Hi")
        );
        assert_eq!(
            piece(r#"data: {"choices":[{"delta":{"role":"assistant"}}]}"#).as_deref(),
            Some("")
        );
        assert!(matches!(sse_data(b"data: [DONE]"), Some(Event::Done)));
        assert!(sse_data(b": keep-alive").is_none());
        assert!(matches!(
            sse_data(b"data: nonsense"),
            Some(Event::Piece(Err(ModelError::Malformed(_))))
        ));
    }

    #[test]
    fn the_key_is_not_shown() {
        let shown = format!("{:?}", client(1, None));
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn only_http_urls() {
        let mut config = client(1, None).config().clone();
        config.url = "ftp://x/v1".into();
        assert!(ModelClient::new(config).is_err());
    }
}
