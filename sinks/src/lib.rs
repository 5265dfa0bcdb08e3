//! Outputs: where tributary's facts leave it.
//!
//! - [`clickhouse`]: every attribution into ClickHouse, with the analysts' views.

pub mod clickhouse;
