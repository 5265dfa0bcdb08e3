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
    /// `base` plus `each` per element of the array variable (or per unit of the integer
    /// variable) named `per`.
    PerItem {
        base: f64,
        per: &'static str,
        each: f64,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct Operation {
    /// The operation name, sent as `operationName` too.
    pub name: &'static str,
    pub document: &'static str,
    pub charge: Charge,
    /// Whether a call that may have been applied (a 5xx, a timeout) is sent again. Reads and
    /// writes that set a value are; a store credit is not, since a repeat would move money twice:
    /// its caller settles the doubt by reading the account.
    pub safe_to_repeat: bool,
}

impl Operation {
    pub fn estimated_cost(&self, variables: &Value) -> f64 {
        match self.charge {
            Charge::Fixed(cost) => cost,
            Charge::PerItem { base, per, each } => {
                let items = match variables.get(per) {
                    Some(Value::Array(items)) => items.len() as f64,
                    Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
                    _ => 0.0,
                };
                base + each * items
            }
        }
    }
}

/// The shop, the product count and the scopes granted to this app: the connection check.
pub const SHOP: Operation = Operation {
    name: "TributaryShop",
    document: "query TributaryShop { shop { name myshopifyDomain } productsCount { count } currentAppInstallation { accessScopes { handle } } }",
    charge: Charge::Fixed(3.0),
    safe_to_repeat: true,
};

pub const WEBHOOK_SUBSCRIPTIONS: Operation = Operation {
    name: "TributaryWebhookSubscriptions",
    document: "query TributaryWebhookSubscriptions { webhookSubscriptions(first: 100) { nodes { id topic uri } } }",
    charge: Charge::Fixed(102.0),
    safe_to_repeat: true,
};

pub const WEBHOOK_SUBSCRIPTION_CREATE: Operation = Operation {
    name: "TributaryWebhookSubscriptionCreate",
    document: "mutation TributaryWebhookSubscriptionCreate($topic: WebhookSubscriptionTopic!, $uri: String!) { webhookSubscriptionCreate(topic: $topic, webhookSubscription: {uri: $uri}) { webhookSubscription { id topic uri } userErrors { field message } } }",
    charge: Charge::Fixed(10.0),
    safe_to_repeat: true,
};

/// An order's note and tags, read before a writeback so it only writes what is missing.
pub const ORDER_NOTE_AND_TAGS: Operation = Operation {
    name: "TributaryOrderNoteAndTags",
    document: "query TributaryOrderNoteAndTags($id: ID!) { order(id: $id) { id note tags } }",
    charge: Charge::Fixed(1.0),
    safe_to_repeat: true,
};

pub const TAGS_ADD: Operation = Operation {
    name: "TributaryTagsAdd",
    document: "mutation TributaryTagsAdd($id: ID!, $tags: [String!]!) { tagsAdd(id: $id, tags: $tags) { node { id } userErrors { field message } } }",
    charge: Charge::Fixed(10.0),
    safe_to_repeat: true,
};

pub const TAGS_REMOVE: Operation = Operation {
    name: "TributaryTagsRemove",
    document: "mutation TributaryTagsRemove($id: ID!, $tags: [String!]!) { tagsRemove(id: $id, tags: $tags) { node { id } userErrors { field message } } }",
    charge: Charge::Fixed(10.0),
    safe_to_repeat: true,
};

pub const ORDER_UPDATE_NOTE: Operation = Operation {
    name: "TributaryOrderUpdateNote",
    document: "mutation TributaryOrderUpdateNote($id: ID!, $note: String!) { orderUpdate(input: {id: $id, note: $note}) { order { id } userErrors { field message } } }",
    charge: Charge::Fixed(10.0),
    safe_to_repeat: true,
};

/// Which discount a code belongs to, if any: a code taken by the store's template is one an
/// earlier (interrupted) mint created.
pub const CODE_DISCOUNT_BY_CODE: Operation = Operation {
    name: "TributaryCodeDiscountByCode",
    document: "query TributaryCodeDiscountByCode($code: String!) { codeDiscountNodeByCode(code: $code) { id } }",
    charge: Charge::Fixed(1.0),
    safe_to_repeat: true,
};

/// Adds up to 250 codes to a code discount; Shopify creates them asynchronously.
pub const REDEEM_CODE_BULK_ADD: Operation = Operation {
    name: "TributaryRedeemCodeBulkAdd",
    document: "mutation TributaryRedeemCodeBulkAdd($discountId: ID!, $codes: [DiscountRedeemCodeInput!]!) { discountRedeemCodeBulkAdd(discountId: $discountId, codes: $codes) { bulkCreation { id } userErrors { field message code } } }",
    charge: Charge::Fixed(10.0),
    safe_to_repeat: true,
};

/// Polls a bulk creation; the codes' own errors are read once it is done.
pub const REDEEM_CODE_BULK_CREATION: Operation = Operation {
    name: "TributaryRedeemCodeBulkCreation",
    document: "query TributaryRedeemCodeBulkCreation($id: ID!, $first: Int!) { discountRedeemCodeBulkCreation(id: $id) { done codesCount importedCount failedCount codes(first: $first) { nodes { code errors { field message code } } } } }",
    charge: Charge::PerItem {
        base: 3.0,
        per: "first",
        each: 1.0,
    },
    safe_to_repeat: true,
};

/// A customer found by email, with their store credit account in one currency (`$accounts` is
/// `currency_code:<code>`) and its newest transactions (`$first` of them, newest first): the state a
/// store credit push starts from and settles a doubt with. Shopify charges 1 for the customer, 2
/// for the accounts' connection, 1 for the account and 2 + `$first` for its transactions.
pub const CUSTOMER_STORE_CREDIT: Operation = Operation {
    name: "TributaryCustomerStoreCredit",
    document: "query TributaryCustomerStoreCredit($email: String!, $accounts: String!, $first: Int!) { customerByIdentifier(identifier: {emailAddress: $email}) { id storeCreditAccounts(first: 1, query: $accounts) { nodes { id balance { amount currencyCode } transactions(first: $first, reverse: true) { nodes { __typename amount { amount currencyCode } ... on Node { id } } } } } } }",
    charge: Charge::PerItem {
        base: 6.0,
        per: "first",
        each: 1.0,
    },
    safe_to_repeat: true,
};

/// Credits a customer's store credit account in a currency (Shopify opens it if needed).
pub const STORE_CREDIT_CREDIT: Operation = Operation {
    name: "TributaryStoreCreditCredit",
    document: "mutation TributaryStoreCreditCredit($id: ID!, $amount: Decimal!, $currency: CurrencyCode!) { storeCreditAccountCredit(id: $id, creditInput: {creditAmount: {amount: $amount, currencyCode: $currency}}) { storeCreditAccountTransaction { id amount { amount currencyCode } } userErrors { field message code } } }",
    charge: Charge::Fixed(10.0),
    safe_to_repeat: false,
};

/// Debits a store credit account.
pub const STORE_CREDIT_DEBIT: Operation = Operation {
    name: "TributaryStoreCreditDebit",
    document: "mutation TributaryStoreCreditDebit($id: ID!, $amount: Decimal!, $currency: CurrencyCode!) { storeCreditAccountDebit(id: $id, debitInput: {debitAmount: {amount: $amount, currencyCode: $currency}}) { storeCreditAccountTransaction { id amount { amount currencyCode } } userErrors { field message code } } }",
    charge: Charge::Fixed(10.0),
    safe_to_repeat: false,
};

/// An `Order` node's selection: what the reconciliation pull reads, mapped by the normalizer to
/// the same event as an order webhook (`processors::normalize`). `$refunds` refunds with up to 5
/// transactions each. Costs by Shopify's rule (an object 1, a connection 2 plus its nodes, a list
/// with `first` that many times its element): the order 1, two money bags 3 each, the customer 1,
/// the journey 2, and each refund 18 (1, its transactions' connection 2, and 5 transactions of 3).
macro_rules! order_node {
    ($refunds:literal) => {
        concat!(
            order_fields!(),
            "refunds(first: ",
            $refunds,
            ") { legacyResourceId transactions(first: 5) { nodes { ",
            refund_transaction_fields!(),
            " } } }"
        )
    };
}

/// An order's fields other than its refunds (see [`order_node`]).
macro_rules! order_fields {
    () => {
        concat!(
            "id legacyResourceId name createdAt updatedAt cancelledAt test sourceName tags email discountCodes displayFinancialStatus ",
            "currentTotalPriceSet { shopMoney { amount currencyCode } presentmentMoney { amount currencyCode } } ",
            "totalPriceSet { shopMoney { amount currencyCode } presentmentMoney { amount currencyCode } } ",
            "customer { legacyResourceId } ",
            "customerJourneySummary { ready firstVisit { landingPage } } "
        )
    };
}

macro_rules! refund_transaction_fields {
    () => {
        "kind status amountSet { shopMoney { amount currencyCode } }"
    };
}

/// What one order of [`RECONCILE_ORDERS`] costs: 1 + 3 + 3 + 1 + 2 + 5 refunds × 18.
pub const RECONCILE_ORDER_COST: f64 = 100.0;
/// Refunds one order of a [`RECONCILE_ORDERS`] page (or [`ORDER`]) lists at most; an order that
/// lists this many is read again alone with [`ORDER_ALL_REFUNDS`], which lists up to
/// [`ORDER_REFUNDS`].
pub const PAGE_REFUNDS: usize = 5;
/// Refunds [`ORDER_ALL_REFUNDS`] lists at most.
pub const ORDER_REFUNDS: usize = 50;

/// One page of the orders updated in a window, oldest update first: the reconciliation pull
/// (shopify.dev/docs/api/admin-graphql/latest/queries/orders, `sortKey: UPDATED_AT`, search
/// syntax `updated_at:>='…'`). `$first` is sized so the requested cost stays within Shopify's
/// 1,000 per query: 2 for the connection plus [`RECONCILE_ORDER_COST`] per order.
pub const RECONCILE_ORDERS: Operation = Operation {
    name: "TributaryReconcileOrders",
    document: concat!(
        "query TributaryReconcileOrders($first: Int!, $after: String, $query: String!) { orders(first: $first, after: $after, query: $query, sortKey: UPDATED_AT) { pageInfo { hasNextPage endCursor } nodes { ",
        order_node!(5),
        " } } }"
    ),
    charge: Charge::PerItem {
        base: 2.0,
        per: "first",
        each: RECONCILE_ORDER_COST,
    },
    safe_to_repeat: true,
};

/// One order by id, as a [`RECONCILE_ORDERS`] page holds it (an edited order read again).
/// Costs [`RECONCILE_ORDER_COST`].
pub const ORDER: Operation = Operation {
    name: "TributaryOrder",
    document: concat!(
        "query TributaryOrder($id: ID!) { order(id: $id) { ",
        order_node!(5),
        " } }"
    ),
    charge: Charge::Fixed(RECONCILE_ORDER_COST),
    safe_to_repeat: true,
};

/// One order by id with up to [`ORDER_REFUNDS`] refunds: an order that listed
/// [`PAGE_REFUNDS`] refunds (there may be more), read again. Costs 10 + 50 × 18.
pub const ORDER_ALL_REFUNDS: Operation = Operation {
    name: "TributaryOrderAllRefunds",
    document: concat!(
        "query TributaryOrderAllRefunds($id: ID!) { order(id: $id) { ",
        order_node!(50),
        " } }"
    ),
    charge: Charge::Fixed(910.0),
    safe_to_repeat: true,
};

/// The inner query of a bulk operation ([`BULK_OPERATION_RUN_QUERY`]) over every order whose
/// `updatedAt` matches `search` (the orders search syntax, as for [`RECONCILE_ORDERS`]): the same
/// fields as a page's order, and its refunds' ids only. A bulk query takes no `first` and pays no
/// query cost; its result is JSONL, one line per order. Shopify refuses a connection inside a list
/// field in a bulk query ("Queries that contain a connection field within a list field are not
/// currently supported"), and `Order.refunds` is a list while `Refund.transactions` is a
/// connection, so the transactions are read afterwards by refund id ([`REFUND_TRANSACTIONS`];
/// shopify.dev/docs/api/usage/bulk-operations/queries).
pub fn bulk_orders_query(search: &str) -> String {
    // A JSON string literal is a GraphQL string literal for the characters a search holds.
    let search = serde_json::Value::from(search).to_string();
    let node = concat!(order_fields!(), "refunds { id legacyResourceId }");
    format!(
        "{{ orders(query: {search}, sortKey: UPDATED_AT) {{ edges {{ node {{ {node} }} }} }} }}"
    )
}

/// Starts a bulk operation running `$query` (see [`bulk_orders_query`]); Shopify answers with the
/// operation's id, or user errors (an invalid query, too many operations running).
pub const BULK_OPERATION_RUN_QUERY: Operation = Operation {
    name: "TributaryBulkOperationRunQuery",
    document: "mutation TributaryBulkOperationRunQuery($query: String!) { bulkOperationRunQuery(query: $query) { bulkOperation { id status } userErrors { field message code } } }",
    charge: Charge::Fixed(10.0),
    // A repeat may start a second operation; the first is left to expire, unread.
    safe_to_repeat: true,
};

/// A bulk operation's progress and, once `COMPLETED`, the URL of its JSONL (`null` when it found
/// nothing). `bulkOperation(id:)` is in every version tributary targets (from 2026-01).
pub const BULK_OPERATION: Operation = Operation {
    name: "TributaryBulkOperation",
    document: "query TributaryBulkOperation($id: ID!) { bulkOperation(id: $id) { id status errorCode objectCount rootObjectCount url } }",
    charge: Charge::Fixed(1.0),
    safe_to_repeat: true,
};

/// Refunds [`REFUND_TRANSACTIONS`] reads at most: 18 points each requested (the refund 1, its
/// transactions' connection 2, 5 transactions of 3), within Shopify's 1,000 per query.
pub const REFUNDS_PER_READ: usize = 55;

/// Refunds by id (`nodes(ids:)`, at most [`REFUNDS_PER_READ`]) with up to 5 transactions each, as
/// a page's order lists them: the transactions of the refunds a bulk operation found.
pub const REFUND_TRANSACTIONS: Operation = Operation {
    name: "TributaryRefundTransactions",
    document: concat!(
        "query TributaryRefundTransactions($ids: [ID!]!) { nodes(ids: $ids) { ... on Refund { id transactions(first: 5) { nodes { ",
        refund_transaction_fields!(),
        " } } } } }"
    ),
    charge: Charge::PerItem {
        base: 0.0,
        per: "ids",
        each: 18.0,
    },
    safe_to_repeat: true,
};

/// The global id Shopify uses for an order.
pub fn order_gid(order_id: u64) -> String {
    format!("gid://shopify/Order/{order_id}")
}

/// Every operation tributary sends.
pub const ALL: [&Operation; 19] = [
    &SHOP,
    &RECONCILE_ORDERS,
    &BULK_OPERATION_RUN_QUERY,
    &BULK_OPERATION,
    &REFUND_TRANSACTIONS,
    &ORDER,
    &ORDER_ALL_REFUNDS,
    &WEBHOOK_SUBSCRIPTIONS,
    &WEBHOOK_SUBSCRIPTION_CREATE,
    &ORDER_NOTE_AND_TAGS,
    &TAGS_ADD,
    &TAGS_REMOVE,
    &ORDER_UPDATE_NOTE,
    &CODE_DISCOUNT_BY_CODE,
    &REDEEM_CODE_BULK_ADD,
    &REDEEM_CODE_BULK_CREATION,
    &CUSTOMER_STORE_CREDIT,
    &STORE_CREDIT_CREDIT,
    &STORE_CREDIT_DEBIT,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Shopify validates every document against the version's schema before running it; so do
    /// the tests, against the schema of the version tributary targets and of the one before it
    /// (a store may still be answered by it while an upgrade rolls out).
    #[test]
    fn every_document_is_valid_against_the_published_admin_schema() {
        assert_eq!(
            tributary_fakes::admin_schema::VERSIONS.last().copied(),
            Some(crate::admin::API_VERSION)
        );
        assert_eq!(
            tributary_fakes::admin_schema::VERSIONS,
            ["2026-01", "2026-04"]
        );
        let invalid: Vec<String> = ALL
            .iter()
            .flat_map(|op| {
                tributary_fakes::admin_schema::VERSIONS
                    .iter()
                    .filter_map(move |version| {
                        tributary_fakes::admin_schema::validate(version, op.document)
                            .err()
                            .map(|errors| format!("{} ({version}): {errors}", op.name))
                    })
            })
            .collect();
        assert!(invalid.is_empty(), "{}", invalid.join("\n"));
    }

    /// The bulk operation's inner query is a document of its own, validated by Shopify when the
    /// operation starts.
    #[test]
    fn the_bulk_orders_query_is_valid_and_quotes_its_search() {
        let query = bulk_orders_query("updated_at:>='2026-03-01T00:00:00Z' AND x:\"y\"");
        assert!(query.contains(r#"query: "updated_at:>='2026-03-01T00:00:00Z' AND x:\"y\"""#));
        for version in tributary_fakes::admin_schema::VERSIONS {
            tributary_fakes::admin_schema::validate(version, &query).unwrap();
            tributary_fakes::graphql::bulk_query_errors(version, &query).unwrap();
        }
    }
}
