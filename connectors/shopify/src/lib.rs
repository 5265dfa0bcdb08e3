//! The Shopify Admin GraphQL API as tributary uses it: one throttled, retrying client
//! ([`admin`]), the store's cost bucket it mirrors ([`bucket`]), and every document it sends
//! ([`operations`]), and the store's access token, refreshed where it expires ([`oauth`]).
//! Shared by the writeback sink, store credit, code minting, the reconciliation pull and the
//! control plane.

pub mod admin;
pub mod bucket;
pub mod oauth;
pub mod operations;

pub use admin::{AdminClient, AdminConfig, AdminError, StoreAccess, UserError};
