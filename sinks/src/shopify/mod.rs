//! What tributary pushes back to Shopify, through the Admin API client
//! ([`tributary_shopify`]):
//!
//! - [`writeback`]: attributed orders' tags and notes;
//! - [`codes`]: advocates' discount codes, minted in Shopify;
//! - [`minting`]: codes for the advocates who have none (bulk mint, auto-mint).

pub mod codes;
pub mod minting;
pub mod writeback;
