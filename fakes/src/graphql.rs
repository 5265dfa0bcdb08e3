//! The fake's answers to fields it serves from stored JSON (orders): only the fields a document
//! selects, lists and connections cut to their `first`, and Shopify's cost of them.
//!
//! Cost follows Shopify's published rule (shopify.dev/docs/apps/build/graphql-admin/rate-limits):
//! a scalar or enum costs 0, an object 1, a connection 2 plus its nodes (`first`) times a node's
//! cost, a list taken with `first` that many times an element; `PageInfo` is free. The requested
//! cost is computed from the document before running it; the actual cost from what came back,
//! and the difference is refunded to the bucket.

use apollo_compiler::ast::Value as Literal;
use apollo_compiler::executable::{Field, Selection, SelectionSet};
use apollo_compiler::{ExecutableDocument, Node};
use serde_json::{Map, Value};

/// Shopify refuses a query whose requested cost is above this, whatever the bucket holds.
pub const MAX_QUERY_COST: f64 = 1_000.0;

/// The root field `name` of the document's (first) operation, validated against `version`.
pub fn root_field(version: &str, document: &str, name: &str) -> Option<Node<Field>> {
    let doc = ExecutableDocument::parse_and_validate(
        crate::admin_schema::schema(version),
        document,
        "request.graphql",
    )
    .ok()?;
    let operation = doc.operations.iter().next()?;
    fields(&operation.selection_set)
        .into_iter()
        .find(|f| f.name == name)
        .cloned()
}

/// The fields of a selection set, inline fragments flattened (tributary's documents use no named
/// fragments).
fn fields(set: &SelectionSet) -> Vec<&Node<Field>> {
    let mut out = Vec::new();
    for selection in &set.selections {
        match selection {
            Selection::Field(field) => out.push(field),
            Selection::InlineFragment(fragment) => out.extend(fields(&fragment.selection_set)),
            Selection::FragmentSpread(_) => {}
        }
    }
    out
}

/// The field's `first` (or `last`) argument, literal or variable; or the length of its `ids`
/// (`nodes(ids:)`).
fn count(field: &Field, variables: &Value) -> Option<usize> {
    let argument = field
        .arguments
        .iter()
        .find(|a| a.name == "first" || a.name == "last" || a.name == "ids")?;
    match argument.value.as_ref() {
        Literal::Int(n) => n.try_to_i32().ok().map(|n| n.max(0) as usize),
        Literal::List(items) => Some(items.len()),
        Literal::Variable(name) => match variables.get(name.as_str()) {
            Some(Value::Array(items)) => Some(items.len()),
            other => other.and_then(Value::as_u64).map(|n| n as usize),
        },
        _ => None,
    }
}

/// Shopify's rules for a bulk query beyond its schema (shopify.dev/docs/api/usage/bulk-operations/
/// queries, and Shopify's refusals as public code records them): one top-level field, at least
/// one connection and at most five, nested at most two deep, the object holding a nested
/// connection selects `id`, and no connection inside a list field. Errors: Shopify's messages,
/// one per line.
pub fn bulk_query_errors(version: &str, query: &str) -> Result<(), String> {
    let doc = ExecutableDocument::parse_and_validate(
        crate::admin_schema::schema(version),
        query,
        "bulk.graphql",
    )
    .map_err(|with_errors| format!("Invalid bulk query: {}", with_errors.errors))?;
    let roots = doc
        .operations
        .iter()
        .next()
        .map(|operation| fields(&operation.selection_set))
        .unwrap_or_default();
    let [root] = roots.as_slice() else {
        return Err("Bulk queries must select exactly one top-level field.".into());
    };
    let mut shape = BulkShape::default();
    shape.walk(root, 0, false, false);
    let mut errors = Vec::new();
    if shape.connections == 0 {
        errors.push("Bulk queries must contain at least one connection.".to_owned());
    }
    if shape.connections > 5 {
        errors.push("Bulk queries cannot contain more than 5 connections.".to_owned());
    }
    if shape.deepest > 2 {
        errors.push(
            "Bulk queries cannot contain connections with a nesting depth greater than 2."
                .to_owned(),
        );
    }
    if !shape.without_parent_id.is_empty() {
        errors.push(format!("The parent 'node' field for a nested connection must select the 'id' field without an alias and must be of 'ID' return type. Connection fields without 'id': {}.", shape.without_parent_id.join(", ")));
    }
    if shape.connection_in_list {
        errors.push("Queries that contain a connection field within a list field are not currently supported.".to_owned());
    }
    match errors.is_empty() {
        true => Ok(()),
        false => Err(errors.join("\n")),
    }
}

#[derive(Default)]
struct BulkShape {
    connections: usize,
    deepest: usize,
    without_parent_id: Vec<String>,
    connection_in_list: bool,
}

impl BulkShape {
    /// `depth`: connections above `field`; `in_list`: a list field (not a connection's own
    /// `edges` or `nodes`) above it; `holder_has_id`: the object holding it selects `id`.
    fn walk(&mut self, field: &Field, depth: usize, in_list: bool, holder_has_id: bool) {
        let connection = is_connection(field);
        let depth = if connection {
            self.connections += 1;
            self.connection_in_list |= in_list;
            if depth > 0 && !holder_has_id {
                self.without_parent_id.push(field.name.to_string());
            }
            depth + 1
        } else {
            depth
        };
        self.deepest = self.deepest.max(depth);
        let children = fields(&field.selection_set);
        let has_id = children.iter().any(|c| c.name == "id" && c.alias.is_none());
        for child in children {
            let own_list = connection && (child.name == "edges" || child.name == "nodes");
            let in_list = in_list || (child.definition.ty.is_list() && !own_list);
            self.walk(child, depth, in_list, has_id);
        }
    }
}

fn is_connection(field: &Field) -> bool {
    field
        .definition
        .ty
        .inner_named_type()
        .as_str()
        .ends_with("Connection")
}

fn is_free(field: &Field) -> bool {
    field.selection_set.selections.is_empty()
        || field.definition.ty.inner_named_type().as_str() == "PageInfo"
}

/// Shopify's requested cost of `field`, before it runs.
pub fn requested_cost(field: &Field, variables: &Value) -> f64 {
    if is_free(field) {
        return 0.0;
    }
    let children: f64 = fields(&field.selection_set)
        .into_iter()
        .map(|f| requested_cost(f, variables))
        .sum();
    let n = count(field, variables).unwrap_or(1) as f64;
    if is_connection(field) {
        // Its `nodes` (a list without `first`) cost 1 + a node's fields each, `n` of them.
        2.0 + n * children
    } else if count(field, variables).is_some() {
        n * (1.0 + children)
    } else {
        1.0 + children
    }
}

/// Shopify's actual cost of `value`, the answer to `field`.
pub fn actual_cost(field: &Field, value: &Value) -> f64 {
    if is_free(field) {
        return 0.0;
    }
    let children = |v: &Value| -> f64 {
        fields(&field.selection_set)
            .into_iter()
            .map(|f| actual_cost(f, v.get(response_key(f)).unwrap_or(&Value::Null)))
            .sum()
    };
    match value {
        Value::Null => 0.0,
        Value::Array(items) => items.iter().map(|v| 1.0 + children(v)).sum(),
        v if is_connection(field) => 2.0 + children(v),
        v => 1.0 + children(v),
    }
}

/// The field's argument `name` when it is a string literal.
pub fn string_argument(field: &Field, name: &str) -> Option<String> {
    let argument = field.arguments.iter().find(|a| a.name == name)?;
    match argument.value.as_ref() {
        Literal::String(text) => Some(text.clone()),
        _ => None,
    }
}

/// The field that selects each node of the connection `field`: its `edges { node }`, or its
/// `nodes`.
pub fn connection_node(field: &Field) -> Option<Node<Field>> {
    let children = fields(&field.selection_set);
    if let Some(edges) = children.iter().find(|f| f.name == "edges") {
        return fields(&edges.selection_set)
            .into_iter()
            .find(|f| f.name == "node")
            .cloned();
    }
    children.into_iter().find(|f| f.name == "nodes").cloned()
}

/// One root object of a bulk query's answer as the lines of its JSONL: the object without its
/// nested connections, then each of their nodes, with `__parentId` the `id` of the object that
/// holds the connection (shopify.dev/docs/api/usage/bulk-operations/queries, "JSONL file format").
pub fn jsonl_lines(mut root: Value) -> Vec<Value> {
    let mut children = Vec::new();
    let id = root.get("id").cloned();
    lift_connections(&mut root, id.as_ref(), &mut children);
    std::iter::once(root).chain(children).collect()
}

fn lift_connections(value: &mut Value, parent: Option<&Value>, out: &mut Vec<Value>) {
    match value {
        Value::Object(map) => {
            let own = map.get("id").cloned();
            let parent = own.as_ref().or(parent);
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let connection = map.get(&key).and_then(|v| {
                    v.get("edges")
                        .and_then(Value::as_array)
                        .map(|edges| edges.iter().map(|e| e["node"].clone()).collect::<Vec<_>>())
                        .or_else(|| v.get("nodes").and_then(Value::as_array).cloned())
                });
                match connection {
                    Some(nodes) => {
                        map.remove(&key);
                        for mut node in nodes {
                            let mut lifted = Vec::new();
                            lift_connections(&mut node, None, &mut lifted);
                            if let Value::Object(fields) = &mut node {
                                fields.insert(
                                    "__parentId".into(),
                                    parent.cloned().unwrap_or(Value::Null),
                                );
                            }
                            out.push(node);
                            out.extend(lifted);
                        }
                    }
                    None => {
                        if let Some(child) = map.get_mut(&key) {
                            lift_connections(child, parent, out);
                        }
                    }
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                lift_connections(item, parent, out);
            }
        }
        _ => {}
    }
}

fn response_key(field: &Field) -> &str {
    field.alias.as_ref().unwrap_or(&field.name).as_str()
}

/// `stored` (a node as the fake holds it, with every field) as the answer to `field`: only the
/// fields selected, under their response keys; a list cut to `first`, a connection's `nodes`
/// too. A field the fake does not hold is `null`.
pub fn project(field: &Field, stored: &Value, variables: &Value) -> Value {
    if field.selection_set.selections.is_empty() {
        return stored.clone();
    }
    let limit = count(field, variables);
    match stored {
        Value::Array(items) => Value::Array(
            items
                .iter()
                .take(limit.unwrap_or(usize::MAX))
                .map(|v| project_object(field, v, variables, None))
                .collect(),
        ),
        Value::Object(_) => project_object(field, stored, variables, limit),
        other => other.clone(),
    }
}

fn project_object(field: &Field, stored: &Value, variables: &Value, nodes: Option<usize>) -> Value {
    let Value::Object(map) = stored else {
        return stored.clone();
    };
    let mut out = Map::new();
    for child in fields(&field.selection_set) {
        let value = match (child.name.as_str(), map.get(child.name.as_str())) {
            ("__typename", None) => {
                Value::String(field.definition.ty.inner_named_type().as_str().to_owned())
            }
            ("nodes", Some(Value::Array(items))) if nodes.is_some() => {
                let cut: Vec<Value> = items
                    .iter()
                    .take(nodes.unwrap_or(usize::MAX))
                    .cloned()
                    .collect();
                project(child, &Value::Array(cut), variables)
            }
            (_, Some(value)) => project(child, value, variables),
            (_, None) => Value::Null,
        };
        out.insert(response_key(child).to_owned(), value);
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_bulk_query_with_a_connection_inside_a_list_is_refused_as_shopify_does() {
        let refused = "{ orders { edges { node { id refunds { id transactions { edges { node { kind } } } } } } } }";
        let errors = bulk_query_errors("2026-04", refused).unwrap_err();
        assert!(
            errors.contains("connection field within a list field"),
            "{errors}"
        );
        let no_connection = "{ shop { name } }";
        assert!(bulk_query_errors("2026-04", no_connection)
            .unwrap_err()
            .contains("at least one connection"));
        let nested_without_id =
            "{ orders { edges { node { name lineItems { edges { node { title } } } } } } }";
        assert!(bulk_query_errors("2026-04", nested_without_id)
            .unwrap_err()
            .contains("Connection fields without 'id': lineItems"));
        bulk_query_errors(
            "2026-04",
            "{ orders { edges { node { id refunds { id } lineItems { edges { node { title } } } } } } }",
        )
        .unwrap();
    }

    const DOC: &str = "query Q($first: Int!) { orders(first: $first, query: \"\") { pageInfo { hasNextPage } nodes { id name refunds(first: 2) { legacyResourceId transactions(first: 1) { nodes { kind amountSet { shopMoney { amount } } } } } } } }";

    #[test]
    fn costs_follow_the_connection_rule_and_answers_hold_only_what_was_asked() {
        let vars = json!({"first": 3});
        let field = root_field("2026-04", DOC, "orders").unwrap();
        // A transaction 3 (itself, its amountSet, its shopMoney); its connection 2 + 1 × 3; a
        // refund 1 + 5, two of them 12; an order 1 + 12; the orders 2 + 3 × 13.
        assert_eq!(requested_cost(&field, &vars), 41.0);
        let stored = json!({"pageInfo": {"hasNextPage": false}, "nodes": [
            {"id": "gid://shopify/Order/1", "name": "#1", "email": "a@b.c", "refunds": [
                {"legacyResourceId": "7", "note": "x", "transactions": {"nodes": [
                    {"kind": "REFUND", "status": "SUCCESS", "amountSet": {"shopMoney": {"amount": "1.00", "currencyCode": "USD"}}},
                    {"kind": "REFUND", "status": "SUCCESS", "amountSet": {"shopMoney": {"amount": "2.00", "currencyCode": "USD"}}}]}},
                {"legacyResourceId": "8", "transactions": {"nodes": []}},
                {"legacyResourceId": "9", "transactions": {"nodes": []}}]}]});
        let answer = project(&field, &stored, &vars);
        assert_eq!(
            answer,
            json!({"pageInfo": {"hasNextPage": false}, "nodes": [
                {"id": "gid://shopify/Order/1", "name": "#1", "refunds": [
                    {"legacyResourceId": "7", "transactions": {"nodes": [
                        {"kind": "REFUND", "amountSet": {"shopMoney": {"amount": "1.00"}}}]}},
                    {"legacyResourceId": "8", "transactions": {"nodes": []}}]}]})
        );
        // One order of two refunds, one transaction: 2 + (1 + (1 + 2 + 3) + (1 + 2)).
        assert_eq!(actual_cost(&field, &answer), 12.0);
    }
}
