//! The control plane: what says which stores and advocates exist and how tributary reaches them.
//! Everything here writes the control topics (`tributary.stores`, `tributary.advocates`,
//! `tributary.teams`, `tributary.commands`) that the stages follow as tables.
//!
//! - [`connections`]: teams and their stores over an admin API (connect, disconnect, health
//!   checks and alerts), `tributary control`;
//! - [`files`]: the operator's control files (`stores.toml`, `advocates.csv`) and commands, read,
//!   checked and published;
//! - [`keys`]: re-sealing every stored secret under a new master key;
//! - [`jobs`]: scheduled jobs (minting codes for advocates without one).

pub mod connections;
pub mod files;
pub mod jobs;
pub mod keys;
