//! HTTP routes, one module per resource, each exporting its `router()`.

pub mod admin;
pub mod analytics;
pub mod auth;
pub mod chat;
pub mod debug;
pub mod health;
pub mod history;
pub mod messages;
pub mod sessions;
pub mod ui;
