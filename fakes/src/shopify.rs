//! A fake Shopify Admin GraphQL API, faithful to what Shopify documents for the parts tributary
//! uses:
//!
//! - `POST /<shop domain>/admin/api/<version>/graphql.json`, authenticated by
//!   `X-Shopify-Access-Token` (401 otherwise; 404 for a store it does not hold). Production puts
//!   the shop in the host name; a single local server puts it first in the path.
//! - Root fields: `shop`, `productsCount`, `currentAppInstallation`, `webhookSubscriptions`,
//!   `webhookSubscriptionCreate`, `order`, `orders` (held order nodes updated within the query's
//!   `updated_at` bounds, `sortKey: UPDATED_AT`, cursor pages of at most 250; answered with only
//!   the fields selected, see [`crate::graphql`]), `tagsAdd`, `tagsRemove`, `orderUpdate`,
//!   `codeDiscountNodeByCode`, `discountRedeemCodeBulkAdd` (at most 250 codes, asynchronous) and
//!   `discountRedeemCodeBulkCreation` (polled). Arguments are read from the request's variables.
//! - Costs as Shopify calculates them (mutation 10, object 1, connection 2 + nodes), charged from
//!   a per-store leaky bucket; a request that does not fit is answered HTTP 200 with a `THROTTLED`
//!   error, and every answer carries `extensions.cost.throttleStatus`.
//! - Customers found by email (`customerByIdentifier`) with store credit accounts (one per
//!   currency, opened by the first credit) and their transactions, newest first;
//!   `storeCreditAccountCredit` and `storeCreditAccountDebit` (refused below the balance), by
//!   customer or account id. Neither is idempotent, as in Shopify.
//! - Expiring tokens on demand ([`FakeShopify::enable_oauth`]): `POST
//!   /<shop>/admin/oauth/access_token` with the refresh token grant (the refresh token rotates;
//!   using a new one invalidates the one it replaced) or the client credentials grant; an access
//!   token it issued opens the Admin API until it expires (then 401). It counts stale refresh
//!   tokens and expired access tokens presented ([`OAuthStats`]).
//! - Bulk queries over orders: `bulkOperationRunQuery` validates its inner query against the
//!   request's version (user errors otherwise; at most 5 running per store, the 2026-01 limit),
//!   and `bulkOperation(id:)` finds it `CREATED`, then `RUNNING`, then (after
//!   [`BULK_RUN_TIME`], whether anyone polls or not) `COMPLETED` with a `url`
//!   (`null` when nothing matched) to its JSONL, served by `GET /<shop>/bulk/<n>.jsonl`: one line
//!   per order with only the fields selected, and one line per node of a nested connection (a
//!   refund's transactions) with `__parentId`, the id of the object holding it
//!   (shopify.dev/docs/api/usage/bulk-operations/queries). The result is the orders as they were
//!   when the operation started.
//! - Faults on demand: `THROTTLED`, 429 with `Retry-After`, 5xx, a hang, or a request applied
//!   whose answer is lost (a 503 after the write).
//! - Every mutation it accepts (no user errors) is counted, so tests can prove nothing was
//!   applied twice.
//!
//! The store holds every order tributary asks about (empty note, no tags) unless a test seeded
//! it: generated orders need no setup.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rust_decimal::Decimal;
use serde_json::{json, Value};

/// What a fake store starts with.
#[derive(Debug, Clone)]
pub struct ShopSetup {
    pub domain: String,
    pub access_token: String,
    pub scopes: Vec<String>,
    pub product_count: u64,
    /// The cost bucket: Shopify's standard plan is 1,000 points restoring 50 per second.
    pub bucket_size: f64,
    pub restore_rate: f64,
}

impl ShopSetup {
    pub fn new(domain: &str, access_token: &str) -> Self {
        Self {
            domain: domain.into(),
            access_token: access_token.into(),
            scopes: [
                "read_orders",
                "write_orders",
                "read_products",
                "read_customers",
                "write_discounts",
                "read_discounts",
                "read_store_credit_accounts",
                "read_store_credit_account_transactions",
                "write_store_credit_account_transactions",
            ]
            .map(String::from)
            .to_vec(),
            product_count: 42,
            bucket_size: 1000.0,
            restore_rate: 50.0,
        }
    }
}

/// A failure the fake answers the next request of a store with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 200 with a `THROTTLED` error, as when the bucket is empty.
    Throttled,
    /// HTTP 429 with `Retry-After: <seconds>`.
    TooManyRequests { retry_after_s: u32 },
    /// HTTP 503.
    ServerError,
    /// No answer for this long (then a 503); nothing is applied.
    Hang(Duration),
    /// The request is executed, then answered 503: the client cannot tell it was applied.
    AppliedAnswerLost,
    /// The request is executed, then no answer for this long (then a 503): time for the caller
    /// to die with the outcome unknown.
    AppliedThenHang(Duration),
}

/// A store credit account transaction: credits positive, debits negative.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeTransaction {
    pub id: String,
    pub amount: Decimal,
    pub currency: String,
}

struct CreditAccount {
    id: u64,
    customer_id: u64,
    currency: String,
    balance: Decimal,
    /// Oldest first.
    transactions: Vec<FakeTransaction>,
}

/// A store's app that uses expiring tokens (shopify.dev, "Offline access tokens" with expiry):
/// who may call the token endpoint and how long what it issues lives.
#[derive(Debug, Clone)]
pub struct OAuthSetup {
    pub client_id: String,
    pub client_secret: String,
    /// Seconds an issued access token lives (Shopify: 3,600 for expiring offline tokens, about
    /// 24 h for the client credentials grant).
    pub access_token_lifetime: Duration,
    /// How long the token endpoint takes to answer, after it has rotated (a kill in between
    /// loses the answer, not the rotation).
    pub answer_delay: Duration,
}

/// What the token endpoint saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OAuthStats {
    /// Access tokens issued.
    pub issued: u64,
    /// Refreshes with a refresh token already invalidated or never issued: a client that lost
    /// track of its rotation.
    pub stale_refreshes: u64,
    /// Admin API calls with an access token past its expiry.
    pub expired_calls: u64,
}

struct IssuedRefresh {
    /// The token this one was issued for; using this one invalidates it.
    parent: Option<String>,
    valid: bool,
}

struct OAuth {
    setup: OAuthSetup,
    refresh_tokens: HashMap<String, IssuedRefresh>,
    access_tokens: HashMap<String, Instant>,
    stats: OAuthStats,
    serial: u64,
}

impl OAuth {
    fn next(&mut self, prefix: &str) -> String {
        self.serial += 1;
        format!(
            "{prefix}_{:016x}",
            self.serial.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        )
    }
}

/// An order as the fake store holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeOrder {
    pub note: Option<String>,
    pub tags: BTreeSet<String>,
}

#[derive(Debug)]
struct Bucket {
    size: f64,
    available: f64,
    restore_rate: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.available = (self.available + elapsed * self.restore_rate).min(self.size);
        self.at = now;
    }

    fn status(&self) -> Value {
        json!({
            "maximumAvailable": self.size,
            "currentlyAvailable": self.available.floor(),
            "restoreRate": self.restore_rate,
        })
    }
}

struct BulkCreation {
    discount_id: String,
    /// Each code with the errors it met.
    codes: Vec<(String, Vec<Value>)>,
    polls: u32,
}

/// How long a bulk query runs in the fake (the first fifth of it `CREATED`).
pub const BULK_RUN_TIME: Duration = Duration::from_millis(250);

/// A bulk query, answered when it starts and revealed once it has run.
struct BulkQuery {
    started: Instant,
    /// Ends `FAILED` (`INTERNAL_SERVER_ERROR`) instead of `COMPLETED`.
    fails: bool,
    jsonl: String,
    objects: u64,
    roots: u64,
}

impl BulkQuery {
    fn done(&self) -> bool {
        self.started.elapsed() >= BULK_RUN_TIME
    }
}

struct Shop {
    setup: ShopSetup,
    /// Where its bulk results are downloaded from: `<base>/<shop>/bulk/<n>.jsonl`.
    base_url: String,
    bulk_queries: Vec<BulkQuery>,
    /// Bulk queries still to start that will fail.
    bulk_failures: usize,
    bucket: Bucket,
    /// Each fault with the root field it waits for (`None`: the next request).
    faults: VecDeque<(Option<String>, Fault)>,
    orders: BTreeMap<u64, FakeOrder>,
    /// Orders as the Admin GraphQL API's `Order` nodes (every field tributary reads), by id,
    /// with their `updatedAt` in ms: what `orders` and `order` answer from.
    order_nodes: BTreeMap<u64, (i64, Value)>,
    webhooks: Vec<(String, String, String)>,
    /// Code (uppercased, as Shopify compares them) to the discount that holds it.
    codes: HashMap<String, String>,
    discounts: BTreeSet<String>,
    bulk_creations: Vec<BulkCreation>,
    /// Customer id by email, lowercased.
    customers: BTreeMap<String, u64>,
    credit_accounts: Vec<CreditAccount>,
    transactions_made: u64,
    writes: BTreeMap<String, u64>,
    /// Writes that changed nothing: tags already there, a note already as written.
    redundant_writes: u64,
    requests: u64,
    throttled: u64,
    oauth: Option<OAuth>,
}

#[derive(Default)]
struct Stores {
    shops: HashMap<String, Shop>,
}

/// The fake, serving on a local port until dropped.
pub struct FakeShopify {
    stores: Arc<Mutex<Stores>>,
    pub address: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeShopify {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeShopify {
    /// Serves on `listen` (port 0 picks a free one).
    pub async fn start(listen: SocketAddr) -> std::io::Result<Self> {
        let stores = Arc::new(Mutex::new(Stores::default()));
        let app = Router::new()
            .route("/{shop}/admin/api/{version}/graphql.json", post(graphql))
            .route("/{shop}/admin/oauth/access_token", post(access_token))
            .route("/{shop}/bulk/{file}", get(bulk_result))
            .with_state(stores.clone());
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let address = listener.local_addr()?;
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "fake Shopify stopped");
            }
        });
        Ok(Self {
            stores,
            address,
            server,
        })
    }

    /// The base URL to give tributary's Admin API config.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    fn lock(&self) -> MutexGuard<'_, Stores> {
        self.stores.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add_shop(&self, setup: ShopSetup) {
        let bucket = Bucket {
            size: setup.bucket_size,
            available: setup.bucket_size,
            restore_rate: setup.restore_rate,
            at: Instant::now(),
        };
        self.lock().shops.insert(
            setup.domain.clone(),
            Shop {
                setup,
                base_url: self.base_url(),
                bulk_queries: Vec::new(),
                bulk_failures: 0,
                bucket,
                faults: VecDeque::new(),
                orders: BTreeMap::new(),
                order_nodes: BTreeMap::new(),
                webhooks: Vec::new(),
                codes: HashMap::new(),
                discounts: BTreeSet::new(),
                bulk_creations: Vec::new(),
                customers: BTreeMap::new(),
                credit_accounts: Vec::new(),
                transactions_made: 0,
                writes: BTreeMap::new(),
                redundant_writes: 0,
                requests: 0,
                throttled: 0,
                oauth: None,
            },
        );
    }

    fn with_shop<T>(&self, shop: &str, f: impl FnOnce(&mut Shop) -> T) -> T {
        let mut stores = self.lock();
        let shop = stores
            .shops
            .get_mut(shop)
            .unwrap_or_else(|| panic!("the fake holds no store {shop}"));
        f(shop)
    }

    /// Answers the store's next `times` requests with `fault`.
    pub fn inject(&self, shop: &str, fault: Fault, times: usize) {
        self.with_shop(shop, |s| {
            s.faults.extend(std::iter::repeat_n((None, fault), times))
        });
    }

    /// Answers the store's next `times` requests for root field `field` (e.g.
    /// `storeCreditAccountCredit`) with `fault`.
    pub fn inject_for(&self, shop: &str, field: &str, fault: Fault, times: usize) {
        self.with_shop(shop, |s| {
            s.faults
                .extend(std::iter::repeat_n((Some(field.to_owned()), fault), times))
        });
    }

    /// Turns on expiring tokens for the store's app; returns the first refresh token, as the
    /// install's token exchange would hand it out.
    pub fn enable_oauth(&self, shop: &str, setup: OAuthSetup) -> String {
        self.with_shop(shop, |s| {
            let mut oauth = OAuth {
                setup,
                refresh_tokens: HashMap::new(),
                access_tokens: HashMap::new(),
                stats: OAuthStats::default(),
                serial: 0,
            };
            let first = oauth.next("shprt");
            oauth.refresh_tokens.insert(
                first.clone(),
                IssuedRefresh {
                    parent: None,
                    valid: true,
                },
            );
            s.oauth = Some(oauth);
            first
        })
    }

    pub fn oauth_stats(&self, shop: &str) -> OAuthStats {
        self.with_shop(shop, |s| {
            s.oauth.as_ref().map(|o| o.stats).unwrap_or_default()
        })
    }

    pub fn set_scopes(&self, shop: &str, scopes: &[&str]) {
        self.with_shop(shop, |s| {
            s.setup.scopes = scopes.iter().map(|s| s.to_string()).collect()
        });
    }

    pub fn set_access_token(&self, shop: &str, token: &str) {
        self.with_shop(shop, |s| s.setup.access_token = token.into());
    }

    /// Empties the store's bucket, as another app's burst would.
    pub fn drain_bucket(&self, shop: &str) {
        self.with_shop(shop, |s| {
            s.bucket.refill(Instant::now());
            s.bucket.available = 0.0;
        });
    }

    /// Seeds an order, e.g. with the merchant's own note.
    pub fn put_order(&self, shop: &str, order_id: u64, order: FakeOrder) {
        self.with_shop(shop, |s| s.orders.insert(order_id, order));
    }

    /// The next `times` bulk queries of `shop` end `FAILED` with `INTERNAL_SERVER_ERROR`.
    pub fn fail_bulk_queries(&self, shop: &str, times: usize) {
        self.with_shop(shop, |s| s.bulk_failures += times);
    }

    /// Holds `node`, an Admin GraphQL `Order` with every field (`legacyResourceId` and
    /// `updatedAt` required; refunds' transactions as `{"nodes": [...]}`), replacing the order's
    /// earlier state: the order as Shopify shows it now. Its refunds are found by their `id` too
    /// (`nodes(ids:)`).
    pub fn put_order_node(&self, shop: &str, node: Value) {
        let id = node
            .get("legacyResourceId")
            .and_then(Value::as_str)
            .and_then(|id| id.parse::<u64>().ok())
            .expect("an order node has a legacyResourceId");
        let updated_ms = node
            .get("updatedAt")
            .and_then(Value::as_str)
            .and_then(tributary_schemas::time::parse_rfc3339_ms)
            .expect("an order node has an updatedAt");
        self.with_shop(shop, |s| s.order_nodes.insert(id, (updated_ms, node)));
    }

    pub fn order(&self, shop: &str, order_id: u64) -> Option<FakeOrder> {
        self.with_shop(shop, |s| s.orders.get(&order_id).cloned())
    }

    /// Creates a code discount (a minting template) with this id.
    pub fn add_code_discount(&self, shop: &str, id: &str) {
        self.with_shop(shop, |s| s.discounts.insert(id.to_owned()));
    }

    /// Puts `code` on a discount, e.g. to plant a collision.
    pub fn take_code(&self, shop: &str, code: &str, discount_id: &str) {
        self.with_shop(shop, |s| {
            s.codes
                .insert(code.to_ascii_uppercase(), discount_id.to_owned())
        });
    }

    /// Every code the store holds, with its discount.
    pub fn codes(&self, shop: &str) -> BTreeMap<String, String> {
        self.with_shop(shop, |s| s.codes.clone().into_iter().collect())
    }

    /// Adds a customer the store can find by `email`.
    pub fn add_customer(&self, shop: &str, customer_id: u64, email: &str) {
        self.with_shop(shop, |s| {
            s.customers.insert(email.to_ascii_lowercase(), customer_id)
        });
    }

    /// The customer the store finds by `email`.
    pub fn customer_id(&self, shop: &str, email: &str) -> Option<u64> {
        self.with_shop(shop, |s| {
            s.customers.get(&email.to_ascii_lowercase()).copied()
        })
    }

    /// A customer's store credit balance by currency.
    pub fn store_credit(&self, shop: &str, customer_id: u64) -> BTreeMap<String, Decimal> {
        self.with_shop(shop, |s| {
            s.credit_accounts
                .iter()
                .filter(|a| a.customer_id == customer_id)
                .map(|a| (a.currency.clone(), a.balance))
                .collect()
        })
    }

    /// The customer pays `amount` of an order with store credit, as at checkout.
    pub fn spend_store_credit(
        &self,
        shop: &str,
        customer_id: u64,
        currency: &str,
        amount: Decimal,
    ) {
        self.with_shop(shop, |s| {
            s.transactions_made += 1;
            let id = format!(
                "gid://shopify/StoreCreditAccountDebitTransaction/{}",
                s.transactions_made
            );
            let account = s
                .credit_accounts
                .iter_mut()
                .find(|a| a.customer_id == customer_id && a.currency == currency)
                .unwrap_or_else(|| panic!("customer {customer_id} has no {currency} account"));
            account.balance -= amount;
            account.transactions.push(FakeTransaction {
                id,
                amount: -amount,
                currency: currency.into(),
            });
        });
    }

    /// A customer's store credit transactions, oldest first.
    pub fn store_credit_transactions(&self, shop: &str, customer_id: u64) -> Vec<FakeTransaction> {
        self.with_shop(shop, |s| {
            s.credit_accounts
                .iter()
                .filter(|a| a.customer_id == customer_id)
                .flat_map(|a| a.transactions.clone())
                .collect()
        })
    }

    pub fn webhook_topics(&self, shop: &str) -> BTreeSet<String> {
        self.with_shop(shop, |s| s.webhooks.iter().map(|w| w.1.clone()).collect())
    }

    /// Accepted mutations (executed without user errors) by root field, e.g. `tagsAdd`.
    pub fn writes(&self, shop: &str) -> BTreeMap<String, u64> {
        self.with_shop(shop, |s| s.writes.clone())
    }

    /// Writes that changed nothing (tags that were there, a note as it was): a writer that reads
    /// before it writes makes none, even across crashes.
    pub fn redundant_writes(&self, shop: &str) -> u64 {
        self.with_shop(shop, |s| s.redundant_writes)
    }

    /// Requests received, and how many of them were answered `THROTTLED` because the bucket was
    /// short (injected faults not counted).
    pub fn requests(&self, shop: &str) -> (u64, u64) {
        self.with_shop(shop, |s| (s.requests, s.throttled))
    }
}

const INVALID_TOKEN: &str =
    "[API] Invalid API key or access token (unrecognized login or wrong password)";

async fn graphql(
    State(stores): State<Arc<Mutex<Stores>>>,
    Path((shop, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let token = headers
        .get("x-shopify-access-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let fault = {
        let mut stores = stores.lock().unwrap_or_else(|e| e.into_inner());
        let Some(store) = stores.shops.get_mut(&shop) else {
            return (StatusCode::NOT_FOUND, Json(json!({"errors": "Not Found"}))).into_response();
        };
        let issued = store.oauth.as_mut().and_then(|oauth| {
            let expires = *oauth.access_tokens.get(&token)?;
            let live = Instant::now() < expires;
            if !live {
                oauth.stats.expired_calls += 1;
            }
            Some(live)
        });
        if !(store.setup.access_token == token || issued == Some(true)) {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({ "errors": INVALID_TOKEN })),
            )
                .into_response();
        }
        store.requests += 1;
        let requested = body
            .as_ref()
            .ok()
            .and_then(|Json(b)| b.get("query").and_then(Value::as_str))
            .and_then(root_fields)
            .map(|(_, fields)| fields)
            .unwrap_or_default();
        let due = store
            .faults
            .iter()
            .position(|(field, _)| field.as_ref().is_none_or(|f| requested.contains(f)));
        due.and_then(|i| store.faults.remove(i))
            .map(|(_, fault)| fault)
    };
    match fault {
        Some(Fault::Throttled) => {
            let stores = stores.lock().unwrap_or_else(|e| e.into_inner());
            let status = stores.shops.get(&shop).map(|s| s.bucket.status());
            return Json(throttled(10.0, status.unwrap_or(Value::Null))).into_response();
        }
        Some(Fault::TooManyRequests { retry_after_s }) => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("Retry-After", retry_after_s.to_string())],
                Json(json!({"errors": "Exceeded 2 calls per second for api client. Reduce request rates to resume uninterrupted service."})),
            )
                .into_response()
        }
        Some(Fault::ServerError) => {
            return (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable").into_response()
        }
        Some(Fault::Hang(duration)) => {
            tokio::time::sleep(duration).await;
            return (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable").into_response();
        }
        Some(Fault::AppliedAnswerLost | Fault::AppliedThenHang(_)) | None => {}
    }
    let Ok(Json(body)) = body else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"errors": {"query": "Required parameter missing or invalid"}})),
        )
            .into_response();
    };
    let document = body
        .get("query")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let variables = body.get("variables").cloned().unwrap_or(Value::Null);
    // Shopify validates a document before running it and answers 200 with the errors.
    if let Err(errors) = crate::admin_schema::validate(&version, document) {
        let errors: Vec<Value> = errors.lines().map(|m| json!({"message": m})).collect();
        return Json(json!({ "errors": errors })).into_response();
    }
    let Some((is_mutation, fields)) = root_fields(document) else {
        return Json(json!({"errors": [{"message": "syntax error: could not read the document"}]}))
            .into_response();
    };
    let request = Request {
        version: &version,
        document,
        is_mutation,
        fields: &fields,
        variables: &variables,
    };
    let response = charge_and_execute(&stores, &shop, &request);
    match fault {
        Some(Fault::AppliedAnswerLost) => {
            (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable").into_response()
        }
        Some(Fault::AppliedThenHang(duration)) => {
            tokio::time::sleep(duration).await;
            (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable").into_response()
        }
        _ => response,
    }
}

/// A validated request.
struct Request<'a> {
    version: &'a str,
    document: &'a str,
    is_mutation: bool,
    fields: &'a [String],
    variables: &'a Value,
}

/// Root fields answered from stored nodes: their selection decides the answer and its cost
/// (see [`crate::graphql`]).
const SELECTED_FIELDS: [&str; 3] = ["orders", "order", "nodes"];

/// `POST /{shop}/admin/oauth/access_token`: the refresh token grant (JSON) and the client
/// credentials grant (form or JSON). A refresh token rotates on use: the answer carries a new one,
/// and using that one invalidates the one it replaced (Shopify's rule since 2026-08-28: the old
/// token works until its successor is first used). Refusals are OAuth's: 400 `invalid_grant`,
/// 401 `invalid_client`.
async fn access_token(
    State(stores): State<Arc<Mutex<Stores>>>,
    Path(shop): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let form: HashMap<String, String> = serde_json::from_slice(&body)
        .ok()
        .or_else(|| {
            std::str::from_utf8(&body).ok().map(|text| {
                text.split('&')
                    .filter_map(|pair| pair.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.replace("%2F", "/").replace('+', " ")))
                    .collect()
            })
        })
        .unwrap_or_default();
    let field = |name: &str| form.get(name).cloned().unwrap_or_default();
    let refusal = |status: StatusCode, error: &str, description: &str| {
        (
            status,
            Json(json!({"error": error, "error_description": description})),
        )
            .into_response()
    };
    let (answer, delay) = {
        let mut stores = stores.lock().unwrap_or_else(|e| e.into_inner());
        let Some(oauth) = stores.shops.get_mut(&shop).and_then(|s| s.oauth.as_mut()) else {
            return (StatusCode::NOT_FOUND, Json(json!({"errors": "Not Found"}))).into_response();
        };
        if field("client_id") != oauth.setup.client_id
            || field("client_secret") != oauth.setup.client_secret
        {
            return refusal(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "Client authentication failed",
            );
        }
        let lifetime = oauth.setup.access_token_lifetime;
        let refresh_token = match field("grant_type").as_str() {
            "refresh_token" => {
                let used = field("refresh_token");
                let Some(parent) = oauth
                    .refresh_tokens
                    .get(&used)
                    .filter(|t| t.valid)
                    .map(|t| t.parent.clone())
                else {
                    oauth.stats.stale_refreshes += 1;
                    return refusal(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "The refresh token is invalid, expired or revoked",
                    );
                };
                if let Some(parent) = parent.and_then(|p| oauth.refresh_tokens.get_mut(&p)) {
                    parent.valid = false;
                }
                let next = oauth.next("shprt");
                oauth.refresh_tokens.insert(
                    next.clone(),
                    IssuedRefresh {
                        parent: Some(used),
                        valid: true,
                    },
                );
                Some(next)
            }
            "client_credentials" => None,
            other => {
                return refusal(StatusCode::BAD_REQUEST, "unsupported_grant_type", other);
            }
        };
        let access = oauth.next("shpat");
        oauth
            .access_tokens
            .insert(access.clone(), Instant::now() + lifetime);
        oauth.stats.issued += 1;
        let mut answer = json!({"access_token": access, "scope": "read_orders,write_orders", "expires_in": lifetime.as_secs()});
        if let Some(next) = refresh_token {
            answer["refresh_token"] = json!(next);
            answer["refresh_token_expires_in"] = json!(90 * 86_400);
        }
        (answer, oauth.setup.answer_delay)
    };
    tokio::time::sleep(delay).await;
    Json(answer).into_response()
}

/// Charges the request's cost, executes its root fields, and refunds what the answer did not
/// cost.
fn charge_and_execute(stores: &Mutex<Stores>, shop: &str, request: &Request) -> Response {
    let mut stores = stores.lock().unwrap_or_else(|e| e.into_inner());
    let Some(store) = stores.shops.get_mut(shop) else {
        return (StatusCode::NOT_FOUND, Json(json!({"errors": "Not Found"}))).into_response();
    };
    let selected: BTreeMap<&str, apollo_compiler::Node<apollo_compiler::executable::Field>> =
        request
            .fields
            .iter()
            .filter(|f| !request.is_mutation && SELECTED_FIELDS.contains(&f.as_str()))
            .filter_map(|f| {
                crate::graphql::root_field(request.version, request.document, f)
                    .map(|node| (f.as_str(), node))
            })
            .collect();
    let cost: f64 = request
        .fields
        .iter()
        .map(|f| match selected.get(f.as_str()) {
            Some(field) => crate::graphql::requested_cost(field, request.variables),
            None => cost_of(f, request.is_mutation, request.variables),
        })
        .sum();
    store.bucket.refill(Instant::now());
    if cost > crate::graphql::MAX_QUERY_COST {
        return Json(json!({
            "errors": [{"message": format!("Query cost is {cost}, which exceeds the single query max cost limit ({}).", crate::graphql::MAX_QUERY_COST),
                        "extensions": {"code": "MAX_COST_EXCEEDED", "cost": cost, "maxCost": crate::graphql::MAX_QUERY_COST}}],
            "extensions": {"cost": {"requestedQueryCost": cost, "actualQueryCost": null, "throttleStatus": store.bucket.status()}}
        }))
        .into_response();
    }
    if cost > store.bucket.available {
        store.throttled += 1;
        return Json(throttled(cost, store.bucket.status())).into_response();
    }
    store.bucket.available -= cost;
    let mut actual = 0.0;
    let mut data = serde_json::Map::new();
    for field in request.fields {
        match store.execute(field, request.variables, request.version) {
            Ok(value) => {
                let refused = value
                    .get("userErrors")
                    .and_then(Value::as_array)
                    .is_some_and(|errors| !errors.is_empty());
                if request.is_mutation && !refused {
                    *store.writes.entry(field.clone()).or_default() += 1;
                }
                let value = match selected.get(field.as_str()) {
                    Some(selection) => {
                        let answer = crate::graphql::project(selection, &value, request.variables);
                        actual += crate::graphql::actual_cost(selection, &answer);
                        answer
                    }
                    None => {
                        actual += cost_of(field, request.is_mutation, request.variables);
                        value
                    }
                };
                data.insert(field.clone(), value);
            }
            Err(message) => {
                return Json(json!({"errors": [{"message": message}], "extensions": {"cost": cost_extension(cost, cost, &store.bucket)}}))
                    .into_response();
            }
        }
    }
    // Shopify charges the requested cost up front and refunds what the answer did not use.
    store.bucket.available = (store.bucket.available + cost - actual).min(store.bucket.size);
    Json(json!({"data": data, "extensions": {"cost": cost_extension(cost, actual, &store.bucket)}}))
        .into_response()
}

fn throttled(cost: f64, status: Value) -> Value {
    json!({
        "errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED", "documentation": "https://shopify.dev/api/usage/rate-limits"}}],
        "extensions": {"cost": {"requestedQueryCost": cost, "actualQueryCost": null, "throttleStatus": status}}
    })
}

fn cost_extension(requested: f64, actual: f64, bucket: &Bucket) -> Value {
    json!({"requestedQueryCost": requested, "actualQueryCost": actual, "throttleStatus": bucket.status()})
}

/// Shopify's calculated cost of one root field.
fn cost_of(field: &str, is_mutation: bool, variables: &Value) -> f64 {
    if is_mutation {
        return 10.0;
    }
    match field {
        "webhookSubscriptions" => 2.0 + 100.0,
        // The customer, the accounts' connection, one account and its transactions.
        "customerByIdentifier" => {
            1.0 + 2.0
                + 1.0
                + 2.0
                + variables
                    .get("first")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0)
        }
        "discountRedeemCodeBulkCreation" => {
            1.0 + 2.0
                + variables
                    .get("first")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0)
        }
        _ => 1.0,
    }
}

/// Whether the document is a mutation, and the names of its root fields.
fn root_fields(document: &str) -> Option<(bool, Vec<String>)> {
    let open = document.find('{')?;
    let is_mutation = document[..open].trim_start().starts_with("mutation");
    let mut fields = Vec::new();
    let (mut depth, mut parens) = (0usize, 0usize);
    let mut word = String::new();
    for c in document[open..].chars() {
        match c {
            '(' => parens += 1,
            ')' => parens = parens.saturating_sub(1),
            _ if parens > 0 => {}
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            c if depth == 1 && (c.is_alphanumeric() || c == '_') => {
                word.push(c);
                continue;
            }
            _ => {}
        }
        if !word.is_empty() {
            fields.push(std::mem::take(&mut word));
        }
    }
    (!fields.is_empty()).then_some((is_mutation, fields))
}

fn order_id(variables: &Value) -> Result<u64, String> {
    let gid = variables
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default();
    gid.strip_prefix("gid://shopify/Order/")
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| format!("Invalid global id '{gid}'"))
}

fn string_list(variables: &Value, name: &str) -> Vec<String> {
    variables
        .get(name)
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn user_error(field: &[&str], message: &str) -> Value {
    json!([{"field": field, "message": message}])
}

impl Shop {
    fn execute(&mut self, field: &str, variables: &Value, version: &str) -> Result<Value, String> {
        let text = |name: &str| {
            variables
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        Ok(match field {
            "shop" => {
                json!({"name": self.setup.domain.split('.').next(), "myshopifyDomain": self.setup.domain})
            }
            "productsCount" => json!({"count": self.setup.product_count}),
            "currentAppInstallation" => json!({
                "accessScopes": self.setup.scopes.iter().map(|h| json!({"handle": h})).collect::<Vec<_>>()
            }),
            "webhookSubscriptions" => {
                json!({"nodes": self.webhooks.iter().map(|(id, topic, uri)| json!({"id": id, "topic": topic, "uri": uri})).collect::<Vec<_>>()})
            }
            "webhookSubscriptionCreate" => {
                let (topic, uri) = (text("topic"), text("uri"));
                if self.webhooks.iter().any(|w| w.1 == topic && w.2 == uri) {
                    json!({"webhookSubscription": null, "userErrors": user_error(&["webhookSubscription", "callbackUrl"], "Address for this topic has already been taken")})
                } else {
                    let id = format!(
                        "gid://shopify/WebhookSubscription/{}",
                        self.webhooks.len() + 1
                    );
                    self.webhooks.push((id.clone(), topic.clone(), uri.clone()));
                    json!({"webhookSubscription": {"id": id, "topic": topic, "uri": uri}, "userErrors": []})
                }
            }
            "order" => {
                let id = order_id(variables)?;
                let order = self.orders.entry(id).or_default();
                let mut node = match self.order_nodes.get(&id) {
                    Some((_, node)) => node.clone(),
                    None => json!({}),
                };
                // The order's own tags, with those written since (writeback's).
                let mut tags: BTreeSet<String> = node["tags"]
                    .as_array()
                    .map(|t| {
                        t.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
                tags.extend(order.tags.iter().cloned());
                node["id"] = json!(format!("gid://shopify/Order/{id}"));
                node["note"] = json!(order.note);
                node["tags"] = json!(tags);
                node
            }
            "orders" => self.orders_page(variables)?,
            "bulkOperationRunQuery" => self.run_bulk_query(&text("query"), version),
            "nodes" => {
                let ids = string_list(variables, "ids");
                if ids.len() > 250 {
                    return Err(format!(
                        "The ids argument of nodes may not hold more than 250 ids (got {})",
                        ids.len()
                    ));
                }
                Value::Array(ids.iter().map(|id| self.node(id)).collect())
            }
            "bulkOperation" => self.poll_bulk_query(&text("id")),
            "tagsAdd" | "tagsRemove" => {
                let id = order_id(variables)?;
                let order = self.orders.entry(id).or_default();
                let mut changed = false;
                for tag in string_list(variables, "tags") {
                    changed |= if field == "tagsAdd" {
                        order.tags.insert(tag.trim().to_owned())
                    } else {
                        order.tags.remove(tag.trim())
                    };
                }
                if !changed {
                    self.redundant_writes += 1;
                }
                json!({"node": {"id": format!("gid://shopify/Order/{id}")}, "userErrors": []})
            }
            "orderUpdate" => {
                let id = order_id(variables)?;
                let note = text("note");
                if note.chars().count() > 5000 {
                    json!({"order": null, "userErrors": user_error(&["note"], "Note is too long (maximum is 5000 characters)")})
                } else {
                    let order = self.orders.entry(id).or_default();
                    if order.note.as_deref() == Some(note.as_str()) {
                        self.redundant_writes += 1;
                    }
                    order.note = Some(note);
                    json!({"order": {"id": format!("gid://shopify/Order/{id}")}, "userErrors": []})
                }
            }
            "codeDiscountNodeByCode" => match self.codes.get(&text("code").to_ascii_uppercase()) {
                Some(discount) => json!({"id": discount}),
                None => Value::Null,
            },
            "discountRedeemCodeBulkAdd" => {
                let discount_id = text("discountId");
                let codes: Vec<String> = variables
                    .get("codes")
                    .and_then(Value::as_array)
                    .map(|items| {
                        items
                            .iter()
                            .filter_map(|c| c.get("code").and_then(Value::as_str))
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
                if !self.discounts.contains(&discount_id) {
                    json!({"bulkCreation": null, "userErrors": [{"field": ["discountId"], "message": "Code discount does not exist.", "code": "INVALID"}]})
                } else if codes.is_empty() || codes.len() > 250 {
                    json!({"bulkCreation": null, "userErrors": [{"field": ["codes"], "message": "Codes must contain between 1 and 250 codes.", "code": "TOO_MANY_ARGUMENTS"}]})
                } else {
                    let id = format!(
                        "gid://shopify/DiscountRedeemCodeBulkCreation/{}",
                        self.bulk_creations.len() + 1
                    );
                    self.bulk_creations.push(BulkCreation {
                        discount_id,
                        codes: codes.into_iter().map(|c| (c, Vec::new())).collect(),
                        polls: 0,
                    });
                    json!({"bulkCreation": {"id": id}, "userErrors": []})
                }
            }
            "discountRedeemCodeBulkCreation" => {
                let id = text("id");
                let index = id
                    .rsplit('/')
                    .next()
                    .and_then(|n| n.parse::<usize>().ok())
                    .and_then(|n| n.checked_sub(1))
                    .filter(|&n| n < self.bulk_creations.len());
                let Some(index) = index else {
                    return Ok(Value::Null);
                };
                let first = variables.get("first").and_then(Value::as_u64).unwrap_or(0) as usize;
                // Asynchronous, as in Shopify: the first poll finds it still running; the codes are
                // created when it completes.
                let job = &mut self.bulk_creations[index];
                job.polls += 1;
                if job.polls == 2 {
                    let discount_id = job.discount_id.clone();
                    for (code, errors) in &mut job.codes {
                        match self.codes.entry(code.to_ascii_uppercase()) {
                            std::collections::hash_map::Entry::Occupied(_) => errors.push(json!({"field": ["code"], "message": "Code must be unique. Please try a different code.", "code": "TAKEN"})),
                            std::collections::hash_map::Entry::Vacant(slot) => {
                                slot.insert(discount_id.clone());
                            }
                        }
                    }
                }
                let done = job.polls >= 2;
                let failed = job.codes.iter().filter(|(_, e)| !e.is_empty()).count();
                json!({
                    "done": done,
                    "codesCount": job.codes.len(),
                    "importedCount": if done { job.codes.len() - failed } else { 0 },
                    "failedCount": if done { failed } else { 0 },
                    "codes": {"nodes": job.codes.iter().take(first).map(|(code, errors)| json!({"code": code, "errors": errors})).collect::<Vec<_>>()},
                })
            }
            "customerByIdentifier" => {
                let email = text("email").to_ascii_lowercase();
                match self.customers.get(&email) {
                    None => Value::Null,
                    Some(&customer_id) => {
                        let first =
                            variables.get("first").and_then(Value::as_u64).unwrap_or(0) as usize;
                        // The search syntax tributary uses: `currency_code:<code>`, or nothing.
                        let accounts_query = text("accounts");
                        let currency = accounts_query.strip_prefix("currency_code:");
                        let accounts: Vec<Value> = self
                            .credit_accounts
                            .iter()
                            .filter(|a| a.customer_id == customer_id)
                            .filter(|a| currency.is_none_or(|c| a.currency.eq_ignore_ascii_case(c)))
                            .take(1)
                            .map(|a| json!({
                                "id": format!("gid://shopify/StoreCreditAccount/{}", a.id),
                                "balance": money(a.balance, &a.currency),
                                "transactions": {"nodes": a.transactions.iter().rev().take(first).map(|t| json!({
                                    "__typename": if t.amount.is_sign_negative() { "StoreCreditAccountDebitTransaction" } else { "StoreCreditAccountCreditTransaction" },
                                    "id": t.id,
                                    "amount": money(t.amount, &t.currency),
                                })).collect::<Vec<_>>()},
                            }))
                            .collect();
                        json!({"id": format!("gid://shopify/Customer/{customer_id}"), "storeCreditAccounts": {"nodes": accounts}})
                    }
                }
            }
            "storeCreditAccountCredit" | "storeCreditAccountDebit" => {
                self.move_store_credit(field == "storeCreditAccountCredit", variables)
            }
            other => return Err(format!("Field '{other}' doesn't exist on type 'QueryRoot'")),
        })
    }

    /// A credit or a debit, as Shopify answers it: the transaction, or user errors with codes.
    /// `orders(first:, after:, query:, sortKey: UPDATED_AT)`: the held order nodes whose
    /// `updatedAt` is within the query's `updated_at` bounds, oldest update first (ties by id),
    /// after the cursor. `first` above 250 is refused, as Shopify does.
    fn orders_page(&self, variables: &Value) -> Result<Value, String> {
        let first = variables.get("first").and_then(Value::as_u64).unwrap_or(0) as usize;
        if first > 250 {
            return Err(format!(
                "The first argument of orders may not be greater than 250 (got {first})"
            ));
        }
        let query = variables
            .get("query")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let within = updated_at_bounds(query)?;
        let after = match variables.get("after").and_then(Value::as_str) {
            Some(cursor) => Some(decode_cursor(cursor)?),
            None => None,
        };
        let mut matching: Vec<(i64, u64, &Value)> = self
            .order_nodes
            .iter()
            .filter(|(_, (updated_ms, _))| within(*updated_ms))
            .map(|(id, (updated_ms, node))| (*updated_ms, *id, node))
            .filter(|(updated_ms, id, _)| after.is_none_or(|a| (*updated_ms, *id) > a))
            .collect();
        matching.sort_by_key(|(updated_ms, id, _)| (*updated_ms, *id));
        let page: Vec<&(i64, u64, &Value)> = matching.iter().take(first).collect();
        let end_cursor = page
            .last()
            .map(|(updated_ms, id, _)| format!("{updated_ms:x}.{id:x}"));
        Ok(json!({
            "pageInfo": {"hasNextPage": matching.len() > page.len(), "endCursor": end_cursor},
            "nodes": page.iter().map(|(_, _, node)| (*node).clone()).collect::<Vec<_>>(),
        }))
    }

    /// A held order, or a refund one lists, by global id (`null` if none).
    fn node(&self, id: &str) -> Value {
        let orders = self.order_nodes.values().map(|(_, node)| node);
        let refunds = orders
            .clone()
            .filter_map(|node| node["refunds"].as_array())
            .flatten();
        orders
            .chain(refunds)
            .find(|node| node["id"] == id)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// `bulkOperationRunQuery(query:)`: the inner query must be valid for `version` and read
    /// `orders` (all the fake bulk-queries); its JSONL is made now.
    fn run_bulk_query(&mut self, query: &str, version: &str) -> Value {
        let refuse = |message: String, code: &str| json!({"bulkOperation": null, "userErrors": [{"field": ["query"], "message": message, "code": code}]});
        if let Err(errors) = crate::graphql::bulk_query_errors(version, query) {
            return refuse(errors, "INVALID");
        }
        let running = self.bulk_queries.iter().filter(|q| !q.done()).count();
        if running >= 5 {
            return refuse(
                "A bulk query operation for this app and shop is already in progress: 5 at a time."
                    .into(),
                "OPERATION_IN_PROGRESS",
            );
        }
        let Some(orders) = crate::graphql::root_field(version, query, "orders") else {
            return refuse("The fake bulk-queries only orders.".into(), "INVALID");
        };
        let search = crate::graphql::string_argument(&orders, "query").unwrap_or_default();
        let within = match updated_at_bounds(&search) {
            Ok(within) => within,
            Err(message) => return refuse(message, "INVALID"),
        };
        let Some(node) = crate::graphql::connection_node(&orders) else {
            return refuse(
                "A bulk query selects edges { node } or nodes.".into(),
                "INVALID",
            );
        };
        let mut matching: Vec<&(i64, Value)> = self
            .order_nodes
            .values()
            .filter(|(updated_ms, _)| within(*updated_ms))
            .collect();
        matching
            .sort_by_key(|(updated_ms, node)| (*updated_ms, node["legacyResourceId"].to_string()));
        let mut lines = Vec::new();
        for (_, stored) in &matching {
            let order = crate::graphql::project(&node, &with_edges(stored), &Value::Null);
            lines.extend(crate::graphql::jsonl_lines(order));
        }
        let mut jsonl = String::new();
        for line in &lines {
            jsonl.push_str(&line.to_string());
            jsonl.push('\n');
        }
        let fails = self.bulk_failures > 0;
        self.bulk_failures = self.bulk_failures.saturating_sub(1);
        self.bulk_queries.push(BulkQuery {
            started: Instant::now(),
            fails,
            jsonl,
            objects: lines.len() as u64,
            roots: matching.len() as u64,
        });
        let id = format!("gid://shopify/BulkOperation/{}", self.bulk_queries.len());
        json!({"bulkOperation": {"id": id, "status": "CREATED"}, "userErrors": []})
    }

    /// `bulkOperation(id:)`: `CREATED`, `RUNNING`, then `COMPLETED` (or `FAILED`) once it has
    /// run.
    fn poll_bulk_query(&self, id: &str) -> Value {
        let index = id
            .strip_prefix("gid://shopify/BulkOperation/")
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| n.checked_sub(1))
            .filter(|&n| n < self.bulk_queries.len());
        let Some(index) = index else {
            return Value::Null;
        };
        let url = format!(
            "{}/{}/bulk/{}.jsonl",
            self.base_url,
            self.setup.domain,
            index + 1
        );
        let query = &self.bulk_queries[index];
        let (status, url, error) = match query.started.elapsed() {
            t if t < BULK_RUN_TIME / 5 => ("CREATED", None, None),
            t if t < BULK_RUN_TIME => ("RUNNING", None, None),
            _ if query.fails => ("FAILED", None, Some("INTERNAL_SERVER_ERROR")),
            _ => ("COMPLETED", (query.objects > 0).then_some(url), None),
        };
        json!({"id": id, "status": status, "errorCode": error, "url": url,
               "objectCount": query.objects.to_string(), "rootObjectCount": query.roots.to_string()})
    }

    fn move_store_credit(&mut self, credit: bool, variables: &Value) -> Value {
        let refuse = |field: &str, code: &str, message: &str| json!({"storeCreditAccountTransaction": null, "userErrors": [{"field": [field], "message": message, "code": code}]});
        let id = variables
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let currency = variables
            .get("currency")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let amount = variables
            .get("amount")
            .and_then(Value::as_str)
            .and_then(|a| a.parse::<Decimal>().ok());
        let Some(amount) = amount.filter(|a| *a > Decimal::ZERO) else {
            return refuse(
                "amount",
                "NEGATIVE_OR_ZERO_AMOUNT",
                "A positive amount must be used.",
            );
        };
        let number = |prefix: &str| id.strip_prefix(prefix).and_then(|n| n.parse::<u64>().ok());
        let account = if let Some(customer_id) = number("gid://shopify/Customer/") {
            if !self.customers.values().any(|&c| c == customer_id) {
                return refuse("id", "ACCOUNT_NOT_FOUND", "Owner does not exist.");
            }
            match self
                .credit_accounts
                .iter()
                .position(|a| a.customer_id == customer_id && a.currency == currency)
            {
                Some(index) => index,
                None if credit => {
                    self.credit_accounts.push(CreditAccount {
                        id: self.credit_accounts.len() as u64 + 1,
                        customer_id,
                        currency: currency.clone(),
                        balance: Decimal::ZERO,
                        transactions: Vec::new(),
                    });
                    self.credit_accounts.len() - 1
                }
                None => {
                    return refuse(
                        "id",
                        "ACCOUNT_NOT_FOUND",
                        "Store credit account does not exist.",
                    )
                }
            }
        } else if let Some(account_id) = number("gid://shopify/StoreCreditAccount/") {
            match self.credit_accounts.iter().position(|a| a.id == account_id) {
                Some(index) if self.credit_accounts[index].currency == currency => index,
                Some(_) => return refuse("amount", "MISMATCHING_CURRENCY", "The currency provided does not match the currency of the store credit account."),
                None => return refuse("id", "ACCOUNT_NOT_FOUND", "Store credit account does not exist."),
            }
        } else {
            return refuse(
                "id",
                "ACCOUNT_NOT_FOUND",
                "Store credit account does not exist.",
            );
        };
        let account = &mut self.credit_accounts[account];
        if !credit && account.balance < amount {
            return refuse(
                "amount",
                "INSUFFICIENT_FUNDS",
                "The store credit account does not have sufficient funds.",
            );
        }
        self.transactions_made += 1;
        let (kind, signed) = if credit {
            ("StoreCreditAccountCreditTransaction", amount)
        } else {
            ("StoreCreditAccountDebitTransaction", -amount)
        };
        let transaction = FakeTransaction {
            id: format!("gid://shopify/{kind}/{}", self.transactions_made),
            amount: signed,
            currency: currency.clone(),
        };
        account.balance += signed;
        account.transactions.push(transaction.clone());
        json!({"storeCreditAccountTransaction": {"id": transaction.id, "amount": money(signed, &currency)}, "userErrors": []})
    }
}

/// The `updated_at` terms of an orders search query (`updated_at:>='2026-03-01T10:00:00Z'`,
/// with `>=`, `>`, `<=` or `<`, joined by spaces or `AND`), as a predicate on ms. Any other term
/// is refused: the fake answers only what it can answer faithfully.
fn updated_at_bounds(query: &str) -> Result<impl Fn(i64) -> bool, String> {
    let (mut from, mut to) = (i64::MIN, i64::MAX);
    for term in query.split_whitespace().filter(|t| *t != "AND") {
        let condition = term.strip_prefix("updated_at:").ok_or_else(|| {
            format!("the fake's orders search takes only updated_at terms: {term}")
        })?;
        let (op, value) = [">=", "<=", ">", "<"]
            .iter()
            .find_map(|op| condition.strip_prefix(op).map(|v| (*op, v)))
            .ok_or_else(|| format!("unsupported updated_at comparison: {term}"))?;
        let ms = tributary_schemas::time::parse_rfc3339_ms(
            value.trim_matches(|c| c == '\'' || c == '"'),
        )
        .ok_or_else(|| format!("not a time: {value}"))?;
        match op {
            ">=" => from = from.max(ms),
            ">" => from = from.max(ms.saturating_add(1)),
            "<=" => to = to.min(ms),
            _ => to = to.min(ms.saturating_sub(1)),
        }
    }
    Ok(move |ms: i64| (from..=to).contains(&ms))
}

/// `GET /<shop>/bulk/<n>.jsonl`: a completed bulk query's result (as Shopify's signed URL, no
/// token needed).
async fn bulk_result(
    State(stores): State<Arc<Mutex<Stores>>>,
    Path((shop, file)): Path<(String, String)>,
) -> Response {
    let stores = stores.lock().unwrap_or_else(|e| e.into_inner());
    let found = file
        .strip_suffix(".jsonl")
        .and_then(|n| n.parse::<usize>().ok())
        .and_then(|n| n.checked_sub(1))
        .and_then(|n| stores.shops.get(&shop)?.bulk_queries.get(n))
        .filter(|q| q.done() && !q.fails);
    match found {
        Some(query) => query.jsonl.clone().into_response(),
        None => (StatusCode::NOT_FOUND, "NoSuchKey").into_response(),
    }
}

/// A stored order node with each connection (`{"nodes": [...]}`) also given as `edges`, the form
/// bulk queries select.
fn with_edges(stored: &Value) -> Value {
    match stored {
        Value::Object(map) => {
            let mut out: serde_json::Map<String, Value> = map
                .iter()
                .map(|(k, v)| (k.clone(), with_edges(v)))
                .collect();
            if let Some(Value::Array(nodes)) = map.get("nodes") {
                let edges = nodes
                    .iter()
                    .map(|n| json!({"node": with_edges(n)}))
                    .collect();
                out.insert("edges".into(), Value::Array(edges));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(with_edges).collect()),
        other => other.clone(),
    }
}

fn decode_cursor(cursor: &str) -> Result<(i64, u64), String> {
    let invalid = || format!("Invalid cursor '{cursor}'");
    let (updated, id) = cursor.split_once('.').ok_or_else(invalid)?;
    Ok((
        i64::from_str_radix(updated, 16).map_err(|_| invalid())?,
        u64::from_str_radix(id, 16).map_err(|_| invalid())?,
    ))
}

fn money(amount: Decimal, currency: &str) -> Value {
    json!({"amount": amount.to_string(), "currencyCode": currency})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_fields_skip_arguments_and_nested_selections() {
        assert_eq!(
            root_fields("query A { shop { name } productsCount { count } currentAppInstallation { accessScopes { handle } } }"),
            Some((false, vec!["shop".into(), "productsCount".into(), "currentAppInstallation".into()]))
        );
        assert_eq!(
            root_fields(
                "mutation B($id: ID!) { orderUpdate(input: {id: $id, note: $n}) { order { id } } }"
            ),
            Some((true, vec!["orderUpdate".into()]))
        );
        assert_eq!(root_fields("nonsense"), None);
    }
}
