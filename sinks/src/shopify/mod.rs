//! What tributary pushes back to Shopify, through the Admin API client
//! ([`tributary_shopify`]):
//!
//! - [`writeback`]: attributed orders' tags and notes;
//! - [`codes`]: advocates' discount codes, minted in Shopify;
//! - [`minting`]: codes for the advocates who have none (bulk mint, auto-mint);
//! - [`store_credit`]: approved rewards as the advocates' store credit.

pub mod codes;
pub mod minting;
pub mod store_credit;
pub mod writeback;
