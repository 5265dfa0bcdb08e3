//! Sources: where records enter tributary.
//!
//! - [`shopify_webhooks`]: the signed Shopify webhook receiver (`POST /webhooks/shopify`).
//! - [`shopify_reconcile`]: the reconciliation pull, which reads through the Admin API the orders
//!   Shopify never delivered, into the same topic.

pub mod shopify_reconcile;
pub mod shopify_webhooks;
