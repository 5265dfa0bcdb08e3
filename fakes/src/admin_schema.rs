//! Shopify's published Admin GraphQL schema, against which the fake validates every document
//! before it answers, as Shopify does: a field the schema does not have, a wrong argument or a
//! missing variable is an error, however well the fake could have answered it.
//!
//! `fakes/shopify-admin-schema/<version>.graphql` is Shopify's schema for the Admin API versions
//! tributary targets (`tributary_shopify::admin::API_VERSION`, the newest) and the one before it,
//! as published (shopify.dev, Admin GraphQL API, the version's introspection). A request for a
//! version not held is validated against the newest: Shopify answers a retired version with the
//! oldest version it still supports.

use std::sync::LazyLock;

use apollo_compiler::validation::Valid;
use apollo_compiler::{ExecutableDocument, Schema};

/// The Admin API versions of the vendored schemas, oldest first.
pub const VERSIONS: [&str; 2] = ["2026-01", "2026-04"];

fn parse(text: &str, name: &str) -> Valid<Schema> {
    // Shopify's schema is taken as published: it is the reference, not the thing under test.
    match Schema::parse(text, name) {
        Ok(schema) => Valid::assume_valid(schema),
        Err(with_errors) => Valid::assume_valid(with_errors.partial),
    }
}

static SCHEMA_2026_01: LazyLock<Valid<Schema>> = LazyLock::new(|| {
    parse(
        include_str!("../shopify-admin-schema/2026-01.graphql"),
        "2026-01.graphql",
    )
});
static SCHEMA_2026_04: LazyLock<Valid<Schema>> = LazyLock::new(|| {
    parse(
        include_str!("../shopify-admin-schema/2026-04.graphql"),
        "2026-04.graphql",
    )
});

/// The schema of `version`, or the newest held.
pub fn schema(version: &str) -> &'static Valid<Schema> {
    match version {
        "2026-01" => &SCHEMA_2026_01,
        _ => &SCHEMA_2026_04,
    }
}

/// Validates `document` (one or more operations and fragments) against the schema of `version`
/// (see [`schema`]), as Shopify does before executing it. Errors: every problem found, one per
/// line, in the words of the GraphQL spec's validation rules (an unknown field names its type).
pub fn validate(version: &str, document: &str) -> Result<(), String> {
    ExecutableDocument::parse_and_validate(schema(version), document, "request.graphql")
        .map(|_| ())
        .map_err(|with_errors| {
            with_errors
                .errors
                .iter()
                .map(|diagnostic| diagnostic.error.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_field_on_an_interface_is_refused_and_a_fragment_on_node_is_not() {
        let refused = validate(
            "2026-04",
            "query Q { customer(id: \"gid://shopify/Customer/1\") { storeCreditAccounts(first: 1) { nodes { transactions(first: 1) { nodes { id } } } } } }",
        )
        .unwrap_err();
        assert!(
            refused.contains("StoreCreditAccountTransaction"),
            "{refused}"
        );
        validate(
            "2026-04",
            "query Q { customer(id: \"gid://shopify/Customer/1\") { storeCreditAccounts(first: 1) { nodes { transactions(first: 1) { nodes { __typename ... on Node { id } } } } } } }",
        )
        .unwrap();
    }
}
