//! Shopify writeback: what tributary pushes back to stores (discount codes first; notes, tags and
//! store credit with the Admin API client).

pub mod codes;
