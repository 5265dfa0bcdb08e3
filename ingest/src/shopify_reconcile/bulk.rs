//! A long window read in one bulk operation instead of page by page.
//!
//! A page-by-page pull reads about `restore rate / cost per order` orders a second (7.9 under
//! Shopify's standard bucket), so a first backfill of a busy store would take most of a day. A bulk
//! query is not charged by cost: Shopify runs the query in the background and gives a URL to its
//! JSONL (shopify.dev/docs/api/usage/bulk-operations/queries). The pull:
//!
//! 1. starts the operation (`bulkOperationRunQuery` with [`bulk_orders_query`]);
//! 2. polls `bulkOperation(id:)` every `reconcile.bulk_poll_ms` until `COMPLETED` (any other final
//!    status fails the pass, which the next one repeats);
//! 3. downloads the JSONL to a temporary file, so memory holds only the refund transactions;
//! 4. puts each order back in the shape a page gives it: the transactions of a refund are lines of
//!    their own carrying `__parentId`, the refund's `id`, and need not follow their order
//!    immediately, so a first reading of the file gathers them and a second yields the orders;
//! 5. checks the file holds as many orders as Shopify counted (`rootObjectCount`): a result cut
//!    short, or a completed operation with objects and no URL, fails the pass rather than moving
//!    the watermark past orders it never read.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncSeekExt, AsyncWriteExt, BufReader, Lines};
use tributary_shopify::oauth::AccessTokens;
use tributary_shopify::operations::{bulk_orders_query, BULK_OPERATION, BULK_OPERATION_RUN_QUERY};
use tributary_shopify::{AdminClient, StoreAccess};

use super::ReconcileError;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunData {
    bulk_operation_run_query: RunPayload,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunPayload {
    bulk_operation: Option<BulkOperation>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PollData {
    bulk_operation: Option<BulkOperation>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BulkOperation {
    id: String,
    status: String,
    #[serde(default)]
    error_code: Option<String>,
    #[serde(default)]
    url: Option<String>,
    /// `UnsignedInt64`, a string in JSON.
    #[serde(default)]
    root_object_count: Option<String>,
}

/// The orders of a completed bulk query, read from its downloaded JSONL.
pub struct BulkOrders {
    lines: Option<Lines<BufReader<tokio::fs::File>>>,
    /// Orders Shopify counted, and those read so far.
    expected: u64,
    read: u64,
    /// A refund's transactions by the refund's id.
    transactions: HashMap<String, Vec<Value>>,
    shop: String,
}

/// Runs a bulk query over the orders matching `search` for `shop` (its token from `tokens`,
/// `sealed` the store record's own, taken again for every call) and downloads the result.
/// Errors: the Admin API's, a token's, and [`ReconcileError::Bulk`] for an operation that ends
/// other than `COMPLETED` or a download that fails.
pub async fn read_orders(
    admin: &AdminClient,
    http: &reqwest::Client,
    tokens: &AccessTokens,
    (shop, sealed): (&str, &str),
    search: &str,
    poll: Duration,
) -> Result<BulkOrders, ReconcileError> {
    let failed = |detail: String| ReconcileError::Bulk {
        shop: shop.into(),
        detail,
    };
    let token = tokens.open(shop, sealed).await?;
    let store = StoreAccess {
        shop_domain: shop,
        access_token: token.expose(),
    };
    let variables = json!({"query": bulk_orders_query(search)});
    let started = admin
        .run::<RunData>(store, &BULK_OPERATION_RUN_QUERY, variables)
        .await?
        .bulk_operation_run_query
        .bulk_operation
        .ok_or_else(|| failed("Shopify started no operation".into()))?;
    let (url, expected) = loop {
        tokio::time::sleep(poll).await;
        let token = tokens.open(shop, sealed).await?;
        let store = StoreAccess {
            shop_domain: shop,
            access_token: token.expose(),
        };
        let operation = admin
            .run::<PollData>(store, &BULK_OPERATION, json!({"id": started.id}))
            .await?
            .bulk_operation
            .ok_or_else(|| failed(format!("{} is not known to Shopify", started.id)))?;
        match operation.status.as_str() {
            "CREATED" | "RUNNING" => continue,
            "COMPLETED" => {
                let count = operation.root_object_count.as_deref().unwrap_or("0");
                let expected = count
                    .parse::<u64>()
                    .map_err(|_| failed(format!("rootObjectCount {count:?}")))?;
                break (operation.url, expected);
            }
            status => {
                return Err(failed(format!(
                    "{} ended {status} ({})",
                    operation.id,
                    operation.error_code.as_deref().unwrap_or("no error code")
                )))
            }
        }
    };
    let file = tempfile::tempfile().map_err(|e| failed(format!("a temporary file: {e}")))?;
    let mut file = tokio::fs::File::from_std(file);
    // Shopify gives no URL when nothing matched.
    if url.is_none() && expected > 0 {
        return Err(failed(format!(
            "{} completed with {expected} orders and no result URL",
            started.id
        )));
    }
    if let Some(url) = url {
        let mut response = http
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| failed(format!("downloading the result: {e}")))?;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| failed(format!("downloading the result: {e}")))?
        {
            file.write_all(&chunk)
                .await
                .map_err(|e| failed(format!("writing the result: {e}")))?;
        }
        file.flush()
            .await
            .map_err(|e| failed(format!("writing the result: {e}")))?;
    }
    BulkOrders::read(file, shop, expected).await
}

impl BulkOrders {
    /// Gathers the transactions (first reading) and readies the orders (second).
    async fn read(
        mut file: tokio::fs::File,
        shop: &str,
        expected: u64,
    ) -> Result<Self, ReconcileError> {
        let failed = |e: std::io::Error| ReconcileError::Bulk {
            shop: shop.into(),
            detail: format!("reading the result: {e}"),
        };
        file.rewind().await.map_err(failed)?;
        let again = file.try_clone().await.map_err(failed)?;
        let mut transactions: HashMap<String, Vec<Value>> = HashMap::new();
        let mut lines = BufReader::new(file).lines();
        while let Some(line) = lines.next_line().await.map_err(failed)? {
            if !line.contains("__parentId") {
                continue;
            }
            let mut value = parse(shop, &line)?;
            if let Some(parent) = value.as_object_mut().and_then(|v| v.remove("__parentId")) {
                let parent = parent.as_str().unwrap_or_default().to_owned();
                transactions.entry(parent).or_default().push(value);
            }
        }
        let mut again = again;
        again.rewind().await.map_err(failed)?;
        Ok(Self {
            lines: Some(BufReader::new(again).lines()),
            expected,
            read: 0,
            transactions,
            shop: shop.into(),
        })
    }

    /// The next order, with its refunds' transactions as a page gives them
    /// (`transactions { nodes }`); `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Value>, ReconcileError> {
        let shop = self.shop.clone();
        let Some(lines) = self.lines.as_mut() else {
            return Ok(None);
        };
        while let Some(line) = lines.next_line().await.map_err(|e| ReconcileError::Bulk {
            shop: shop.clone(),
            detail: format!("reading the result: {e}"),
        })? {
            let mut order = parse(&shop, &line)?;
            if order.get("__parentId").is_some() {
                continue;
            }
            if let Some(refunds) = order.get_mut("refunds").and_then(Value::as_array_mut) {
                for refund in refunds {
                    let id = refund["id"].as_str().unwrap_or_default().to_owned();
                    let nodes = self.transactions.remove(&id).unwrap_or_default();
                    refund["transactions"] = json!({ "nodes": nodes });
                }
            }
            self.read += 1;
            return Ok(Some(order));
        }
        self.lines = None;
        if self.read != self.expected {
            return Err(ReconcileError::Bulk {
                shop,
                detail: format!(
                    "the result holds {} orders where Shopify counted {}",
                    self.read, self.expected
                ),
            });
        }
        Ok(None)
    }
}

fn parse(shop: &str, line: &str) -> Result<Value, ReconcileError> {
    serde_json::from_str(line).map_err(|e| ReconcileError::Bulk {
        shop: shop.into(),
        detail: format!("a line of the result is not JSON: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn transactions_go_back_to_their_refund_wherever_their_line_is() {
        let jsonl = [
            json!({"id": "gid://shopify/Order/1", "refunds": [{"id": "gid://shopify/Refund/10"}, {"id": "gid://shopify/Refund/11"}]}),
            json!({"id": "gid://shopify/Order/2", "refunds": []}),
            json!({"kind": "REFUND", "amount": "2", "__parentId": "gid://shopify/Refund/11"}),
            json!({"kind": "REFUND", "amount": "1", "__parentId": "gid://shopify/Refund/10"}),
            json!({"kind": "REFUND", "amount": "3", "__parentId": "gid://shopify/Refund/11"}),
        ]
        .iter()
        .map(|line| format!("{line}\n"))
        .collect::<String>();
        let mut file = tokio::fs::File::from_std(tempfile::tempfile().unwrap());
        file.write_all(jsonl.as_bytes()).await.unwrap();
        let mut orders = BulkOrders::read(file, "s.myshopify.com", 2).await.unwrap();
        let first = orders.next().await.unwrap().unwrap();
        assert_eq!(
            first["refunds"],
            json!([
                {"id": "gid://shopify/Refund/10", "transactions": {"nodes": [{"kind": "REFUND", "amount": "1"}]}},
                {"id": "gid://shopify/Refund/11", "transactions": {"nodes": [{"kind": "REFUND", "amount": "2"}, {"kind": "REFUND", "amount": "3"}]}},
            ])
        );
        assert_eq!(
            orders.next().await.unwrap().unwrap()["id"],
            "gid://shopify/Order/2"
        );
        assert!(orders.next().await.unwrap().is_none());
        assert!(orders.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_result_with_fewer_orders_than_shopify_counted_fails_the_pass() {
        let mut file = tokio::fs::File::from_std(tempfile::tempfile().unwrap());
        file.write_all(b"{\"id\": \"gid://shopify/Order/1\"}\n")
            .await
            .unwrap();
        let mut orders = BulkOrders::read(file, "s.myshopify.com", 3).await.unwrap();
        assert!(orders.next().await.unwrap().is_some());
        let error = orders.next().await.unwrap_err();
        assert!(
            error
                .to_string()
                .contains("holds 1 orders where Shopify counted 3"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_line_that_is_not_json_fails_the_pass() {
        let mut file = tokio::fs::File::from_std(tempfile::tempfile().unwrap());
        file.write_all(b"{\"id\": 1}\n{\"__parentId\": not json\n")
            .await
            .unwrap();
        let error = BulkOrders::read(file, "s.myshopify.com", 1)
            .await
            .err()
            .unwrap();
        assert!(error.to_string().contains("not JSON"), "{error}");
    }
}
