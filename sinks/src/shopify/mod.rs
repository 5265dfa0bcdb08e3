//! What tributary pushes back to Shopify, through the Admin API client
//! ([`tributary_shopify`]):
//!
//! - [`writeback`]: attributed orders' tags and notes;
//! - [`codes`]: advocates' discount codes.

pub mod codes;
pub mod writeback;
