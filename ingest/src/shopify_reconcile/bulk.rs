//! A long window read in one bulk operation instead of page by page.
//!
//! A page-by-page pull reads about `restore rate / cost per order` orders a second (7.9 under
//! Shopify's standard bucket), so a first backfill of a busy store would take most of a day. A bulk
//! query is not charged by cost: Shopify runs the query in the background and gives a URL to its
//! JSONL (shopify.dev/docs/api/usage/bulk-operations/queries). The pull:
//!
//! 1. starts the operation (`bulkOperationRunQuery` with [`bulk_orders_query`]: every order field
//!    a page reads, and the refunds' ids only, since Shopify refuses a connection, the refunds'
//!    transactions, inside a list, the refunds);
//! 2. polls `bulkOperation(id:)` every `reconcile.bulk_poll_ms` until `COMPLETED` (any other final
//!    status fails the pass, which the next one repeats);
//! 3. downloads the JSONL to a temporary file, so memory holds one batch of orders at a time;
//! 4. reads the transactions of each batch's refunds by id ([`REFUND_TRANSACTIONS`], 55 refunds a
//!    call, charged by cost: about one order in seven has refunds) and puts them in the orders, in
//!    the shape a page gives them;
//! 5. checks the file holds as many lines and orders as Shopify counted (`objectCount`,
//!    `rootObjectCount`): a result cut short, or a completed operation with objects and no URL,
//!    fails the pass rather than moving the watermark past orders it never read.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncSeekExt, AsyncWriteExt, BufReader, Lines};
use tributary_shopify::oauth::AccessTokens;
use tributary_shopify::operations::{
    bulk_orders_query, BULK_OPERATION, BULK_OPERATION_RUN_QUERY, REFUNDS_PER_READ,
    REFUND_TRANSACTIONS,
};
use tributary_shopify::AdminClient;

use super::{call, ReconcileError, Store};

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
    /// `UnsignedInt64`, a string in JSON: lines of the result.
    #[serde(default)]
    object_count: Option<String>,
    /// Lines of the result that are orders.
    #[serde(default)]
    root_object_count: Option<String>,
}

#[derive(Deserialize)]
struct NodesData {
    nodes: Vec<Value>,
}

/// The orders of a completed bulk query, read from its downloaded JSONL.
pub struct BulkOrders {
    lines: Option<Lines<BufReader<tokio::fs::File>>>,
    /// Lines and orders Shopify counted, and those read so far.
    expected: (u64, u64),
    read: (u64, u64),
    shop: String,
}

/// The HTTP client that downloads bulk results (a signed URL, no token): one that gives up on a
/// stalled connection rather than holding the pass forever.
pub fn download_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(120))
        .build()
        .unwrap_or_default()
}

/// Runs a bulk query over the orders matching `search` for `store` (its token from `tokens`,
/// taken again for every call) and downloads the result, polling every `poll` (at least 100 ms).
/// Errors: the Admin API's, a token's, and [`ReconcileError::Bulk`] for an operation that ends
/// other than `COMPLETED` or a download that fails.
pub async fn read_orders(
    admin: &AdminClient,
    http: &reqwest::Client,
    tokens: &AccessTokens,
    store: Store<'_>,
    search: &str,
    poll: Duration,
) -> Result<BulkOrders, ReconcileError> {
    let shop = store.shop;
    let failed = |detail: String| ReconcileError::Bulk {
        shop: shop.into(),
        detail,
    };
    let variables = json!({"query": bulk_orders_query(search)});
    let started = call::<RunData>(admin, tokens, store, &BULK_OPERATION_RUN_QUERY, variables)
        .await?
        .bulk_operation_run_query
        .bulk_operation
        .ok_or_else(|| failed("Shopify started no operation".into()))?;
    let (url, expected) = loop {
        tokio::time::sleep(poll.max(Duration::from_millis(100))).await;
        let operation = call::<PollData>(
            admin,
            tokens,
            store,
            &BULK_OPERATION,
            json!({"id": started.id}),
        )
        .await?
        .bulk_operation
        .ok_or_else(|| failed(format!("{} is not known to Shopify", started.id)))?;
        match operation.status.as_str() {
            "CREATED" | "RUNNING" => continue,
            "COMPLETED" => {
                let count = |text: &Option<String>| {
                    let text = text.as_deref().unwrap_or("0");
                    text.parse::<u64>()
                        .map_err(|_| failed(format!("an object count {text:?}")))
                };
                let expected = (
                    count(&operation.object_count)?,
                    count(&operation.root_object_count)?,
                );
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
    if url.is_none() && expected.0 > 0 {
        return Err(failed(format!(
            "{} completed with {} objects and no result URL",
            started.id, expected.0
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

/// Puts into each of `orders` (Admin `Order` nodes from a bulk result) its refunds' transactions
/// (up to 5 each, as a page lists them), read by refund id. Errors: the Admin API's, a token's,
/// and [`ReconcileError::Bulk`] for a refund without an id or one Shopify no longer has.
pub async fn add_refund_transactions(
    admin: &AdminClient,
    tokens: &AccessTokens,
    store: Store<'_>,
    orders: &mut [Value],
) -> Result<(), ReconcileError> {
    let failed = |detail: String| ReconcileError::Bulk {
        shop: store.shop.into(),
        detail,
    };
    let mut ids = Vec::new();
    for order in orders.iter() {
        for refund in order["refunds"].as_array().into_iter().flatten() {
            let id = refund["id"]
                .as_str()
                .ok_or_else(|| failed(format!("a refund without an id in {}", order["id"])))?;
            ids.push(id.to_owned());
        }
    }
    let mut transactions: HashMap<String, Value> = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(REFUNDS_PER_READ) {
        let nodes = call::<NodesData>(
            admin,
            tokens,
            store,
            &REFUND_TRANSACTIONS,
            json!({ "ids": chunk }),
        )
        .await?
        .nodes;
        for (id, node) in chunk.iter().zip(nodes) {
            let found = node
                .get("transactions")
                .cloned()
                .ok_or_else(|| failed(format!("refund {id} is not in the store")))?;
            transactions.insert(id.clone(), found);
        }
    }
    for order in orders.iter_mut() {
        let refunds = order.get_mut("refunds").and_then(Value::as_array_mut);
        for refund in refunds.into_iter().flatten() {
            let id = refund["id"].as_str().unwrap_or_default().to_owned();
            if let (Some(refund), Some(found)) = (refund.as_object_mut(), transactions.remove(&id))
            {
                refund.insert("transactions".into(), found);
            }
        }
    }
    Ok(())
}

impl BulkOrders {
    async fn read(
        mut file: tokio::fs::File,
        shop: &str,
        expected: (u64, u64),
    ) -> Result<Self, ReconcileError> {
        file.rewind().await.map_err(|e| ReconcileError::Bulk {
            shop: shop.into(),
            detail: format!("reading the result: {e}"),
        })?;
        Ok(Self {
            lines: Some(BufReader::new(file).lines()),
            expected,
            read: (0, 0),
            shop: shop.into(),
        })
    }

    /// The next order (lines of nested objects, which tributary's query has none of, are
    /// skipped); `None` at the end, once the counts are checked.
    pub async fn next(&mut self) -> Result<Option<Value>, ReconcileError> {
        let shop = self.shop.clone();
        let failed = |detail: String| ReconcileError::Bulk {
            shop: shop.clone(),
            detail,
        };
        let Some(lines) = self.lines.as_mut() else {
            return Ok(None);
        };
        while let Some(line) = lines
            .next_line()
            .await
            .map_err(|e| failed(format!("reading the result: {e}")))?
        {
            self.read.0 += 1;
            let order: Value = serde_json::from_str(&line)
                .map_err(|e| failed(format!("a line of the result is not JSON: {e}")))?;
            if !order.is_object() {
                return Err(failed(format!(
                    "a line of the result is not an object: {line}"
                )));
            }
            if order.get("__parentId").is_some() {
                continue;
            }
            self.read.1 += 1;
            return Ok(Some(order));
        }
        self.lines = None;
        if self.read != self.expected {
            return Err(failed(format!(
                "the result holds {} lines and {} orders where Shopify counted {} and {}",
                self.read.0, self.read.1, self.expected.0, self.expected.1
            )));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn result(text: &str, expected: (u64, u64)) -> BulkOrders {
        let mut file = tokio::fs::File::from_std(tempfile::tempfile().unwrap());
        file.write_all(text.as_bytes()).await.unwrap();
        BulkOrders::read(file, "s.myshopify.com", expected)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn orders_come_in_file_order_and_nested_lines_are_counted_not_yielded() {
        let text = concat!(
            "{\"id\": \"gid://shopify/Order/1\", \"refunds\": [{\"id\": \"gid://shopify/Refund/10\"}]}\n",
            "{\"id\": \"gid://shopify/LineItem/5\", \"__parentId\": \"gid://shopify/Order/1\"}\n",
            "{\"id\": \"gid://shopify/Order/2\", \"refunds\": []}\n"
        );
        let mut orders = result(text, (3, 2)).await;
        let ids: Vec<Value> = [
            orders.next().await.unwrap().unwrap()["id"].clone(),
            orders.next().await.unwrap().unwrap()["id"].clone(),
        ]
        .to_vec();
        assert_eq!(
            ids,
            [
                json!("gid://shopify/Order/1"),
                json!("gid://shopify/Order/2")
            ]
        );
        assert!(orders.next().await.unwrap().is_none());
        assert!(orders.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_result_shorter_than_shopify_counted_fails_the_pass() {
        let mut orders = result("{\"id\": \"gid://shopify/Order/1\"}\n", (3, 3)).await;
        assert!(orders.next().await.unwrap().is_some());
        let error = orders.next().await.unwrap_err();
        assert!(
            error
                .to_string()
                .contains("holds 1 lines and 1 orders where Shopify counted 3 and 3"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_line_that_is_not_a_json_object_fails_the_pass() {
        for bad in ["not json\n", "[1, 2]\n"] {
            let mut orders = result(bad, (1, 1)).await;
            let error = orders.next().await.unwrap_err().to_string();
            assert!(
                error.contains("not JSON") || error.contains("not an object"),
                "{error}"
            );
        }
    }
}
