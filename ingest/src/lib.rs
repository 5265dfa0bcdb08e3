//! Sources: where records enter tributary.
//!
//! - [`shopify_webhooks`]: the signed Shopify webhook receiver (`POST /webhooks/shopify`).

pub mod shopify_webhooks;
