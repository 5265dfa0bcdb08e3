//! Outputs: where tributary's facts leave it.
//!
//! - [`clickhouse`]: every attribution into ClickHouse, with the analysts' views.
//! - [`shopify`]: what goes back to Shopify (discount codes so far).

pub mod clickhouse;
pub mod shopify;
