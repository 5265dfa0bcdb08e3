#![recursion_limit = "512"]
//! The `tributary` binary's library: configuration, wiring and operator commands over the
//! `schemas`, `ingest`, `processors` and `sinks` crates. End-to-end tests use it directly.

pub mod app;
pub mod bench;
pub mod config;
pub mod dev;
pub mod generate;
pub mod replay;
pub mod report;
