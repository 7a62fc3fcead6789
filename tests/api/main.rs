//! Integration tests: one binary, one module per area.

mod cache;
mod concurrency;
mod durability;
mod errors;
mod hardening;
mod helpers;
mod manage;
mod openapi;
mod seed;
mod socket;
mod stores;
