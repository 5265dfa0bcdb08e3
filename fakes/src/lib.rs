//! Local stand-ins for the third-party APIs tributary calls, which these machines cannot reach.
//! Each behaves as its public documentation says (status codes, throttling, pagination) and counts
//! what it was asked to do, so tests can prove what happened.
//!
//! - [`shopify`]: the Shopify Admin GraphQL API, validating every document against
//!   [`admin_schema`], Shopify's published schema.

pub mod admin_schema;
pub mod graphql;
pub mod shopify;
