//! Integration tests: one binary, one module per area.

mod concurrency;
mod errors;
mod helpers;
mod seed;
mod socket;
