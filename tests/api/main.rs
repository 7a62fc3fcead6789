//! Integration tests: one binary, one module per area.

#[macro_use]
mod helpers;

mod accounts;
mod analytics;
mod cache;
mod concurrency;
mod durability;
mod errors;
mod fleet;
mod hardening;
mod jwt;
mod manage;
mod messages;
mod metrics;
mod model;
mod openai;
mod openapi;
mod pg_cache;
mod seed;
mod socket;
mod stores;
