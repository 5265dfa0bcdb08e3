//! Transforms with their state. One order's records flow, in partition order, through:
//!
//! 1. [`normalize`]: a raw webhook envelope becomes a typed [`OrderEvent`](tributary_schemas::OrderEvent)
//!    (or is skipped, or dead-lettered);
//! 2. [`dedup`]: a delivery already applied, or an older version than the one held, changes nothing;
//! 3. [`exclusions`] and [`attribution`]: the settled version is judged against the store's rules
//!    and advocates ([`tributary_runtime::control`]);
//! 4. [`state`]: the order's [`Attribution`](tributary_schemas::Attribution) record, which is both
//!    the output and the changelog the processor restores from.
//!
//! [`runner`] is the processor as a stage of the one consume loop (`tributary_runtime::stage`),
//! with its offset contract.

pub mod attribution;
pub mod customer_events;
pub mod dedup;
pub mod exclusions;
pub mod normalize;
pub mod rewards;
pub mod runner;
pub mod settled;
pub mod state;
