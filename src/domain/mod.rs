//! What the service is about, independent of how it is reached: the reply
//! engine (rules, a model, and which answers), the stored values, the
//! seed's JSON bytes for them, exports, the stores, and what several
//! instances share through Redis. Nothing here
//! imports from `crate::http`.

pub mod accounts;
pub mod chatbot;
pub mod export;
pub mod model;
pub mod models;
pub mod redis;
pub mod replies;
pub mod store;
pub mod wire;
