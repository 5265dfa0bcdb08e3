//! Every Admin GraphQL document tributary sends, by operation name, with the cost it is charged.
//!
//! Costs follow Shopify's published calculation: a mutation costs 10, an object 1, and a
//! connection 2 plus one per node requested. The client reserves this estimate before sending;
//! Shopify's own `requestedQueryCost` then corrects the bucket.

use serde_json::Value;

/// How an operation is charged.
#[derive(Debug, Clone, Copy)]
pub enum Charge {
    Fixed(f64),
    /// `base` plus one per element of the array variable (or per unit of the integer variable)
    /// named `per`.
    PerItem {
        base: f64,
        per: &'static str,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct Operation {
    /// The operation name, sent as `operationName` too.
    pub name: &'static str,
    pub document: &'static str,
    pub charge: Charge,
}

impl Operation {
    pub fn estimated_cost(&self, variables: &Value) -> f64 {
        match self.charge {
            Charge::Fixed(cost) => cost,
            Charge::PerItem { base, per } => {
                let items = match variables.get(per) {
                    Some(Value::Array(items)) => items.len() as f64,
                    Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
                    _ => 0.0,
                };
                base + items
            }
        }
    }
}

/// The shop, the product count and the scopes granted to this app: the connection check.
pub const SHOP: Operation = Operation {
    name: "TributaryShop",
    document: "query TributaryShop { shop { name myshopifyDomain } productsCount { count } currentAppInstallation { accessScopes { handle } } }",
    charge: Charge::Fixed(3.0),
};

pub const WEBHOOK_SUBSCRIPTIONS: Operation = Operation {
    name: "TributaryWebhookSubscriptions",
    document: "query TributaryWebhookSubscriptions { webhookSubscriptions(first: 100) { nodes { id topic uri } } }",
    charge: Charge::Fixed(102.0),
};

pub const WEBHOOK_SUBSCRIPTION_CREATE: Operation = Operation {
    name: "TributaryWebhookSubscriptionCreate",
    document: "mutation TributaryWebhookSubscriptionCreate($topic: WebhookSubscriptionTopic!, $uri: String!) { webhookSubscriptionCreate(topic: $topic, webhookSubscription: {uri: $uri}) { webhookSubscription { id topic uri } userErrors { field message } } }",
    charge: Charge::Fixed(10.0),
};

/// An order's note and tags, read before a writeback so it only writes what is missing.
pub const ORDER_NOTE_AND_TAGS: Operation = Operation {
    name: "TributaryOrderNoteAndTags",
    document: "query TributaryOrderNoteAndTags($id: ID!) { order(id: $id) { id note tags } }",
    charge: Charge::Fixed(1.0),
};

pub const TAGS_ADD: Operation = Operation {
    name: "TributaryTagsAdd",
    document: "mutation TributaryTagsAdd($id: ID!, $tags: [String!]!) { tagsAdd(id: $id, tags: $tags) { node { id } userErrors { field message } } }",
    charge: Charge::Fixed(10.0),
};

pub const TAGS_REMOVE: Operation = Operation {
    name: "TributaryTagsRemove",
    document: "mutation TributaryTagsRemove($id: ID!, $tags: [String!]!) { tagsRemove(id: $id, tags: $tags) { node { id } userErrors { field message } } }",
    charge: Charge::Fixed(10.0),
};

pub const ORDER_UPDATE_NOTE: Operation = Operation {
    name: "TributaryOrderUpdateNote",
    document: "mutation TributaryOrderUpdateNote($id: ID!, $note: String!) { orderUpdate(input: {id: $id, note: $note}) { order { id } userErrors { field message } } }",
    charge: Charge::Fixed(10.0),
};

/// Which discount a code belongs to, if any: a code taken by the store's template is one an
/// earlier (interrupted) mint created.
pub const CODE_DISCOUNT_BY_CODE: Operation = Operation {
    name: "TributaryCodeDiscountByCode",
    document: "query TributaryCodeDiscountByCode($code: String!) { codeDiscountNodeByCode(code: $code) { id } }",
    charge: Charge::Fixed(1.0),
};

/// Adds up to 250 codes to a code discount; Shopify creates them asynchronously.
pub const REDEEM_CODE_BULK_ADD: Operation = Operation {
    name: "TributaryRedeemCodeBulkAdd",
    document: "mutation TributaryRedeemCodeBulkAdd($discountId: ID!, $codes: [DiscountRedeemCodeInput!]!) { discountRedeemCodeBulkAdd(discountId: $discountId, codes: $codes) { bulkCreation { id } userErrors { field message code } } }",
    charge: Charge::Fixed(10.0),
};

/// Polls a bulk creation; the codes' own errors are read once it is done.
pub const REDEEM_CODE_BULK_CREATION: Operation = Operation {
    name: "TributaryRedeemCodeBulkCreation",
    document: "query TributaryRedeemCodeBulkCreation($id: ID!, $first: Int!) { discountRedeemCodeBulkCreation(id: $id) { done codesCount importedCount failedCount codes(first: $first) { nodes { code errors { field message code } } } } }",
    charge: Charge::PerItem {
        base: 3.0,
        per: "first",
    },
};

/// The global id Shopify uses for an order.
pub fn order_gid(order_id: u64) -> String {
    format!("gid://shopify/Order/{order_id}")
}
