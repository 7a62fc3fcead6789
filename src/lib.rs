//! chatbot-api: a conversation-history chat server that speaks the FastAPI
//! tutorial server's wire format byte for byte.
//!
//! Two halves, and imports go one way only, from `http` to `domain`:
//! - [`domain`]: the reply engine, the stored values and the stores; no HTTP.
//! - [`http`]: routes, extractors, errors, auth, limits, docs, the accept loop.
//!
//! [`config`] is the command line that wires them together in `main.rs`.

pub mod config;
pub mod domain;
pub mod http;

pub use http::{App, AppState, app, serve};
