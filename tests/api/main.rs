//! Integration tests: one binary, one module per area.

mod concurrency;
mod durability;
mod errors;
mod helpers;
mod seed;
mod socket;
mod stores;
