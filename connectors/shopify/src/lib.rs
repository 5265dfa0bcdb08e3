//! The Shopify Admin GraphQL API as tributary uses it: one throttled, retrying client
//! ([`admin`]), the store's cost bucket it mirrors ([`bucket`]), and every document it sends
//! ([`operations`]). Shared by the writeback sink, code minting and the control plane.

pub mod admin;
pub mod bucket;
pub mod operations;

pub use admin::{AdminClient, AdminConfig, AdminError, StoreAccess, UserError};
