//! What the service is about, independent of how it is reached: the reply
//! engine, the stored values, the seed's JSON bytes for them, exports, and
//! the stores. Nothing here imports from `crate::http`.

pub mod chatbot;
pub mod export;
pub mod models;
pub mod store;
pub mod wire;
