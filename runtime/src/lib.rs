//! The shared runtime of tributary's stages: what every source, processor and sink needs to take
//! part in the pipeline, and nothing of the topic contract itself (that is `tributary-schemas`).
//!
//! - [`stage`]: the one consume loop every stage runs in, with its offset contract;
//! - [`member`]: how a stage takes part in its consumer group (readiness, revocations, start
//!   positions, static membership, pausing, commits);
//! - [`dead_letter`]: the record a stage writes for a record it could not take;
//! - [`kafka`]: client settings, the embedded broker, topic provisioning, whole-topic reads and
//!   group offset resets;
//! - [`changelog`]: reading a compacted changelog topic;
//! - [`state`]: a stage's keyed state per partition, in memory or on disk, restored from and
//!   checkpointed against its changelog;
//! - [`control`]: the tables of stores and advocates, followed from their control topics;
//! - [`secrets`]: the master key and the secrets it seals at rest;
//! - [`credentials`]: credentials that expire, refreshed by one refresher per connection and
//!   persisted before use;
//! - [`ops`]: readiness, health and metrics routes, and the HTTP server every endpoint runs on.

pub mod changelog;
pub mod control;
pub mod credentials;
pub mod dead_letter;
pub mod kafka;
pub mod member;
pub mod ops;
pub mod secrets;
pub mod stage;
pub mod state;
