//! HTTP routes, one module per resource, each exporting its `router()`.

pub mod chat;
pub mod health;
