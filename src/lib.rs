#![recursion_limit = "512"]
//! The `tributary` binary's library: configuration, wiring and operator commands over the
//! `schemas`, `ingest`, `processors` and `sinks` crates. End-to-end tests use it directly.
//!
//! With the `dev` feature: the generator and its oracle ([`generate`]), the benchmark ([`bench`])
//! and the fake Shopify ([`dev`]), which the release build leaves out.

pub mod app;
#[cfg(feature = "dev")]
pub mod bench;
pub mod config;
#[cfg(feature = "dev")]
pub mod dev;
pub mod export;
#[cfg(feature = "dev")]
pub mod generate;
pub mod progress;
pub mod reconcile;
pub mod replay;
pub mod report;
