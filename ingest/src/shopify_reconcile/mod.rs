//! The reconciliation pull: the orders Shopify never delivered, read through the Admin API.
//!
//! Shopify does not promise to deliver every webhook ("do not rely on webhooks alone; run
//! reconciliation jobs", shopify.dev/docs/apps/build/webhooks/best-practices). A pass over one store:
//!
//! 1. reads, oldest update first, every order whose `updatedAt` lies in
//!    `[watermark − overlap, now − lag]` (the first pass of a store: the last `backfill_days`), page
//!    by page ([`RECONCILE_ORDERS`]), each page as large as Shopify's 1,000-point query limit
//!    allows (`max_query_cost`), paced by the client's cost bucket; or, for a window longer than
//!    `bulk_after_hours` (a backfill), in one bulk operation ([`bulk`]);
//! 2. produces each order into `shopify.webhooks` as its own source
//!    ([`WebhookEnvelope::SOURCE_RECONCILE`], topic [`WebhookEnvelope::TOPIC_ADMIN_ORDER`]), keyed
//!    and so partitioned like the order's webhooks, with delivery id
//!    `reconcile-<order id>-<updatedAt ms>` and the order's `updatedAt` as its event time;
//! 3. once every page is read and every record acknowledged, records the new watermark in
//!    `tributary.control.reconciliation`. A pass that fails part way records nothing: the next
//!    one reads the same window again.
//!
//! The processor's dedup makes the overlap harmless: a reconciled copy of a version already seen
//! has the same `updatedAt` and an earlier trigger time, so it is stale; the same copy read twice
//! has the same delivery id. A reconciled order brings its refunds, cancellation and totals as any
//! version does; one nobody delivered settles like a webhook would have.
//!
//! When each is used, and the figures behind it: `docs/decisions.md`.
//!
//! [`edits`]: an `orders/edited` webhook makes the edited order be read again the same way.

pub mod bulk;
pub mod edits;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tributary_runtime::control::{follow_table, Control};
use tributary_runtime::kafka::{now_ms, publish_record, TopicError};
use tributary_schemas::time::{format_rfc3339_seconds, parse_rfc3339_ms};
use tributary_schemas::{topics, AvroRecord, Reconciliation, StoreStatus, WebhookEnvelope};
use tributary_shopify::oauth::{AccessTokenError, AccessTokens};
use tributary_shopify::operations::{
    order_gid, Operation, ORDER, ORDER_ALL_REFUNDS, PAGE_REFUNDS, RECONCILE_ORDERS,
    RECONCILE_ORDER_COST,
};
use tributary_shopify::{AdminClient, AdminError, StoreAccess};

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 24 * 60 * MINUTE_MS;

/// Configuration of the reconciliation pull (`[reconcile]` in the config file).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Minutes between scheduled passes over every active store with Admin access, the first at
    /// start (0: passes only on demand, `tributary reconcile`).
    pub interval_minutes: u64,
    /// Each pass starts this many minutes before the store's watermark: Shopify's `updated_at`
    /// has one-second granularity, clocks skew and its search index lags
    /// (`../shared/research/shopify-remaining.md` §1.5).
    pub overlap_minutes: u64,
    /// A pass reads orders updated up to this many seconds ago; later ones wait for the next pass
    /// (Shopify's search index may not show them yet).
    pub lag_seconds: u64,
    /// How far back the first pass of a store reads, in days. Shopify shows the last 60 days of
    /// orders unless the app has `read_all_orders`.
    pub backfill_days: u64,
    /// The largest requested cost of one page; Shopify refuses a query above 1,000
    /// (`MAX_COST_EXCEEDED`). Pages hold `(max_query_cost − 2) / 100` orders.
    pub max_query_cost: f64,
    /// An order whose customer journey Shopify has not built yet (`customerJourneySummary.ready`
    /// false) is left for a later pass, for at most this many minutes after it was created; then
    /// it is taken without its landing page.
    pub journey_wait_minutes: u64,
    /// A pass over a window longer than this many hours (a store's first backfill, a `--since`)
    /// reads it in one bulk operation instead of page by page ([`bulk`]); 0: always by page.
    pub bulk_after_hours: u64,
    /// Milliseconds between polls of a running bulk operation (at least 100).
    pub bulk_poll_ms: u64,
    /// Consumer group of the stage that reads an order again after its `orders/edited`
    /// ([`edits`]), on `shopify.webhooks`.
    pub edits_group_id: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            interval_minutes: 60,
            overlap_minutes: 10,
            lag_seconds: 60,
            backfill_days: 60,
            max_query_cost: 1_000.0,
            journey_wait_minutes: 60,
            bulk_after_hours: 24,
            bulk_poll_ms: 5_000,
            edits_group_id: "tributary-order-edits".into(),
        }
    }
}

impl Config {
    /// Orders per page: as many as fit the cost limit, at least 1, at most Shopify's 250.
    pub fn page_size(&self) -> u64 {
        (((self.max_query_cost - 2.0) / RECONCILE_ORDER_COST).floor() as u64).clamp(1, 250)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("{shop}: order {order} as the Admin API gave it: {detail}")]
    Order {
        shop: String,
        order: String,
        detail: String,
    },
    #[error("{shop}: producing a reconciled order: {detail}")]
    Produce { shop: String, detail: String },
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error(transparent)]
    Token(#[from] AccessTokenError),
    #[error("{shop}: bulk operation: {detail}")]
    Bulk { shop: String, detail: String },
}

/// Where a pass starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// From the store's recorded watermark less the overlap, or the backfill window if it has none.
    Watermark(Option<i64>),
    /// From this time (ms), whatever the watermark: an operator's backfill.
    Since(i64),
}

/// A store and its sealed Admin API token: whose orders a pass reads, with which credential.
#[derive(Clone, Copy)]
pub struct Store<'a> {
    pub shop: &'a str,
    pub sealed: &'a str,
}

/// One Admin API call for `store`, its token taken now: a pass takes it again for every call,
/// so a long one outlives a token that expires.
async fn call<T: serde::de::DeserializeOwned>(
    admin: &AdminClient,
    tokens: &AccessTokens,
    store: Store<'_>,
    operation: &Operation,
    variables: Value,
) -> Result<T, ReconcileError> {
    let token = tokens.open(store.shop, store.sealed).await?;
    let access = StoreAccess {
        shop_domain: store.shop,
        access_token: token.expose(),
    };
    Ok(admin.run::<T>(access, operation, variables).await?)
}

/// Orders of a bulk result taken at a time: their refunds read together, then produced and
/// acknowledged.
const BULK_BATCH: usize = 1_000;

/// What a pass has taken so far, and what it left for a later one.
struct Taken {
    started: i64,
    journey_wait_ms: i64,
    read: u64,
    held_back: i64,
    earliest_held_back: Option<i64>,
}

impl Taken {
    /// Whether to produce the order now: not if Shopify has not built its customer journey yet
    /// and it is young enough to wait for it (then the watermark stays before it).
    fn take(&mut self, probe: &Probe) -> bool {
        let journey_pending = probe
            .customer_journey_summary
            .as_ref()
            .is_some_and(|j| !j.ready);
        if journey_pending && self.started - probe.created_ms < self.journey_wait_ms {
            self.held_back += 1;
            self.earliest_held_back = Some(
                self.earliest_held_back
                    .map_or(probe.updated_ms, |e| e.min(probe.updated_ms)),
            );
            return false;
        }
        self.read += 1;
        true
    }
}

/// The reconciliation pull of every store, through one Admin API client.
pub struct Reconciler {
    admin: Arc<AdminClient>,
    /// Downloads bulk operations' results (a signed URL, no token).
    http: reqwest::Client,
    producer: FutureProducer,
    config: Config,
}

#[derive(Deserialize)]
struct OrdersData {
    orders: OrdersPage,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrdersPage {
    page_info: PageInfo,
    nodes: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PageInfo {
    has_next_page: bool,
    end_cursor: Option<String>,
}

#[derive(Deserialize)]
struct OrderData {
    order: Option<Value>,
}

/// What the pull reads of a node before producing it whole.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeProbe {
    legacy_resource_id: String,
    created_at: String,
    updated_at: String,
    customer_journey_summary: Option<JourneyProbe>,
    #[serde(default)]
    refunds: Vec<Value>,
}

#[derive(Deserialize)]
struct JourneyProbe {
    ready: bool,
}

impl Reconciler {
    pub fn new(admin: Arc<AdminClient>, producer: FutureProducer, config: Config) -> Self {
        Self {
            admin,
            http: bulk::download_client(),
            producer,
            config,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Where a pass from the store's `watermark` starts reading at `now` (ms): the watermark less
    /// the overlap, or the backfill window for a store never reconciled. A backfill `--since` a
    /// later time does not cover what lies before it, so its pass must not be kept as the
    /// store's watermark.
    pub fn watermark_start(&self, watermark: Option<i64>, now: i64) -> i64 {
        match watermark {
            Some(watermark) => watermark - self.config.overlap_minutes as i64 * MINUTE_MS,
            None => now - self.config.backfill_days as i64 * DAY_MS,
        }
    }

    /// One complete pass over `shop` from `start`, with the store's token from `tokens`
    /// (`sealed`: the store record's own), taken again for every call so a long backfill
    /// outlives a token that expires; `progress` is told the orders read so far after each page
    /// (each thousand orders of a bulk operation).
    /// Returns the record to keep (see [`Self::record`]); nothing is recorded here, so a pass
    /// that fails part way leaves the watermark where it was.
    pub async fn pass(
        &self,
        shop: &str,
        tokens: &AccessTokens,
        sealed: &str,
        start: Start,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Reconciliation, ReconcileError> {
        let started = now_ms();
        let to_ms = (started - self.config.lag_seconds as i64 * 1000).div_euclid(1000) * 1000;
        let from_ms = match start {
            Start::Since(ms) => ms,
            Start::Watermark(watermark) => self.watermark_start(watermark, started),
        };
        let query = format!(
            "updated_at:>='{}' AND updated_at:<='{}'",
            format_rfc3339_seconds(from_ms),
            format_rfc3339_seconds(to_ms)
        );
        let mut taken = Taken {
            started,
            journey_wait_ms: self.config.journey_wait_minutes as i64 * MINUTE_MS,
            read: 0,
            held_back: 0,
            earliest_held_back: None,
        };
        let bulk_after_ms = self.config.bulk_after_hours as i64 * 60 * MINUTE_MS;
        let store = Store { shop, sealed };
        if bulk_after_ms > 0 && to_ms - from_ms > bulk_after_ms {
            self.bulk_pass(store, tokens, &query, &mut taken, progress)
                .await?;
        } else {
            self.paged_pass(store, tokens, &query, &mut taken, progress)
                .await?;
        }
        let Taken {
            read,
            held_back,
            earliest_held_back,
            ..
        } = taken;
        // Every order updated up to `to_ms` is read, except those left for later: the next pass
        // starts before the earliest of them.
        let watermark_ms = match earliest_held_back {
            Some(held) => to_ms.min(held - 1000),
            None => to_ms,
        };
        Ok(Reconciliation {
            shop_domain: shop.to_owned(),
            watermark_ms,
            pass_started_at_ms: started,
            completed_at_ms: now_ms(),
            orders_read: read as i64,
            held_back,
        })
    }

    /// The window's orders page by page, each page as large as the cost limit allows.
    async fn paged_pass(
        &self,
        store: Store<'_>,
        tokens: &AccessTokens,
        query: &str,
        taken: &mut Taken,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), ReconcileError> {
        let shop = store.shop;
        let mut after: Option<String> = None;
        loop {
            let variables =
                json!({"first": self.config.page_size(), "after": after, "query": query});
            let page = call::<OrdersData>(&self.admin, tokens, store, &RECONCILE_ORDERS, variables)
                .await?
                .orders;
            let mut deliveries = Vec::with_capacity(page.nodes.len());
            for mut node in page.nodes {
                let probe = probe(shop, &node)?;
                if !taken.take(&probe) {
                    continue;
                }
                if probe.refunds >= PAGE_REFUNDS {
                    let id = json!({"id": order_gid(probe.order_id)});
                    node = call::<OrderData>(&self.admin, tokens, store, &ORDER_ALL_REFUNDS, id)
                        .await?
                        .order
                        .ok_or_else(|| ReconcileError::Order {
                            shop: shop.into(),
                            order: probe.order_id.to_string(),
                            detail: "no longer in the store".into(),
                        })?;
                }
                deliveries.push(self.produce(shop, &node, taken.started)?);
            }
            self.acknowledged(shop, deliveries).await?;
            progress(taken.read);
            match (page.page_info.has_next_page, page.page_info.end_cursor) {
                (true, Some(cursor)) => after = Some(cursor),
                _ => return Ok(()),
            }
        }
    }

    /// The window's orders in one bulk operation (every refund and transaction included).
    async fn bulk_pass(
        &self,
        store: Store<'_>,
        tokens: &AccessTokens,
        query: &str,
        taken: &mut Taken,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), ReconcileError> {
        let shop = store.shop;
        let poll = Duration::from_millis(self.config.bulk_poll_ms);
        let mut orders =
            bulk::read_orders(&self.admin, &self.http, tokens, store, query, poll).await?;
        let mut batch = Vec::with_capacity(BULK_BATCH);
        loop {
            let next = orders.next().await?;
            let end = next.is_none();
            if let Some(node) = next {
                // A node it cannot read fails the pass: the watermark never passes it.
                if taken.take(&probe(shop, &node)?) {
                    batch.push(node);
                }
            }
            if batch.len() >= BULK_BATCH || (end && !batch.is_empty()) {
                bulk::add_refund_transactions(&self.admin, tokens, store, &mut batch).await?;
                let deliveries = batch
                    .drain(..)
                    .map(|node| self.produce(shop, &node, taken.started))
                    .collect::<Result<Vec<_>, _>>()?;
                self.acknowledged(shop, deliveries).await?;
                progress(taken.read);
            }
            if end {
                return Ok(());
            }
        }
    }

    /// Waits until the broker has every one of `deliveries`.
    async fn acknowledged(
        &self,
        shop: &str,
        deliveries: Vec<impl std::future::Future<Output = Result<(), String>>>,
    ) -> Result<(), ReconcileError> {
        for delivery in futures::future::join_all(deliveries).await {
            delivery.map_err(|detail| ReconcileError::Produce {
                shop: shop.into(),
                detail,
            })?;
        }
        Ok(())
    }

    /// Sends one order into `shopify.webhooks`; the future resolves once the broker has it.
    fn produce(
        &self,
        shop: &str,
        node: &Value,
        now: i64,
    ) -> Result<impl std::future::Future<Output = Result<(), String>>, ReconcileError> {
        let (key, payload) = admin_order_record(shop, node, self.admin.api_version(), now)?;
        let producer = self.producer.clone();
        Ok(async move {
            producer
                .send(
                    FutureRecord::to(topics::WEBHOOKS)
                        .key(&key)
                        .payload(&payload),
                    Duration::from_secs(30),
                )
                .await
                .map(|_| ())
                .map_err(|(error, _)| error.to_string())
        })
    }

    /// Keeps a completed pass: its watermark in `tributary.control.reconciliation`, and the
    /// store's gauges.
    pub async fn record(&self, pass: &Reconciliation) -> Result<(), ReconcileError> {
        publish_record(
            &self.producer,
            topics::RECONCILIATION,
            &topics::store_key(&pass.shop_domain),
            pass,
        )
        .await?;
        observe(pass);
        Ok(())
    }

    /// One pass over every active store with Admin access, each from its watermark; a store that
    /// fails is logged and counted, and the others go on. Returns the passes kept.
    pub async fn pass_all(
        &self,
        control: &RwLock<Control>,
        tokens: &AccessTokens,
        watermarks: &Watermarks,
    ) -> Vec<Reconciliation> {
        let mut kept = Vec::new();
        for (shop, sealed) in reconcilable(control) {
            let start = Start::Watermark(watermarks.get(&shop));
            let outcome = match self.pass(&shop, tokens, &sealed, start, &|_| {}).await {
                Ok(pass) => self.record(&pass).await.map(|()| pass),
                Err(error) => Err(error),
            };
            match outcome {
                Ok(pass) => {
                    tracing::info!(%shop, orders = pass.orders_read, held_back = pass.held_back,
                        watermark_ms = pass.watermark_ms, "reconciliation pass complete");
                    watermarks.set(pass.clone());
                    kept.push(pass);
                }
                Err(error) => {
                    metrics::counter!("tributary_reconcile_failed_passes_total", "shop" => shop.clone())
                        .increment(1);
                    tracing::warn!(%shop, %error, "reconciliation pass failed; the next one reads the same window");
                }
            }
        }
        kept
    }

    /// Passes every `interval_minutes`, the first at once, until `shutdown`.
    pub async fn run_scheduled(
        &self,
        control: Arc<RwLock<Control>>,
        tokens: AccessTokens,
        watermarks: Watermarks,
        shutdown: CancellationToken,
    ) {
        if self.config.interval_minutes == 0 {
            return;
        }
        let mut every =
            tokio::time::interval(Duration::from_secs(self.config.interval_minutes * 60));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.pass_all(&control, &tokens, &watermarks) => {}
            }
        }
    }
}

/// One order node by id (`None`: not in the store) through `operation` ([`ORDER`] or
/// [`ORDER_ALL_REFUNDS`]).
async fn read_order(
    admin: &AdminClient,
    store: StoreAccess<'_>,
    order_id: u64,
    operation: &Operation,
) -> Result<Option<Value>, AdminError> {
    Ok(admin
        .run::<OrderData>(store, operation, json!({"id": order_gid(order_id)}))
        .await?
        .order)
}

/// An order read again alone (after its `orders/edited`): with every refund, at the cost of a
/// page's order unless it lists [`PAGE_REFUNDS`] or more.
pub async fn read_order_again(
    admin: &AdminClient,
    store: StoreAccess<'_>,
    order_id: u64,
) -> Result<Option<Value>, AdminError> {
    let node = read_order(admin, store, order_id, &ORDER).await?;
    let listed = node
        .as_ref()
        .and_then(|n| n.get("refunds"))
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if listed >= PAGE_REFUNDS {
        return read_order(admin, store, order_id, &ORDER_ALL_REFUNDS).await;
    }
    Ok(node)
}

/// An order node as a record of `shopify.webhooks`: (key, encoded envelope), read at `now` with
/// Admin API `api_version`. The delivery id is `reconcile-<order id>-<updatedAt ms>` and the event
/// time the order's `updatedAt`, so the same state read twice is one delivery.
pub fn admin_order_record(
    shop: &str,
    node: &Value,
    api_version: &str,
    now: i64,
) -> Result<(String, Vec<u8>), ReconcileError> {
    let probe = probe(shop, node)?;
    let failed = |detail: String| ReconcileError::Produce {
        shop: shop.into(),
        detail,
    };
    let envelope = WebhookEnvelope {
        source: WebhookEnvelope::SOURCE_RECONCILE.into(),
        shop_domain: shop.to_owned(),
        topic: WebhookEnvelope::TOPIC_ADMIN_ORDER.into(),
        webhook_id: format!("reconcile-{}-{}", probe.order_id, probe.updated_ms),
        event_id: None,
        triggered_at_ms: probe.updated_ms,
        api_version: api_version.to_owned(),
        received_at_ms: now,
        body: serde_json::to_vec(node).map_err(|e| failed(e.to_string()))?,
    };
    let payload = envelope.to_avro().map_err(|e| failed(e.to_string()))?;
    Ok((topics::order_key(shop, probe.order_id), payload))
}

/// The stores a pass covers: active (neither locked by a failed health check nor disconnected)
/// and with Admin access; with their sealed token.
pub fn reconcilable(control: &RwLock<Control>) -> Vec<(String, String)> {
    let control = control.read().unwrap_or_else(|e| e.into_inner());
    let mut stores: Vec<(String, String)> = control
        .stores()
        .filter_map(|s| admin_token(s).map(|sealed| (s.domain.clone(), sealed)))
        .collect();
    stores.sort();
    stores
}

/// The store's sealed Admin API token if the Admin API sources read it: active (neither locked
/// nor disconnected) and with Admin access.
pub fn admin_token(store: &tributary_schemas::Store) -> Option<String> {
    store
        .admin
        .as_ref()
        .filter(|_| store.status == StoreStatus::Active)
        .map(|a| a.access_token_sealed.clone())
}

fn observe(pass: &Reconciliation) {
    observe_watermark(pass);
    let shop = pass.shop_domain.clone();
    metrics::gauge!("tributary_reconcile_held_back_orders", "shop" => shop.clone())
        .set(pass.held_back as f64);
    metrics::counter!("tributary_reconcile_orders_total", "shop" => shop.clone())
        .increment(pass.orders_read.max(0) as u64);
    metrics::counter!("tributary_reconcile_passes_total", "shop" => shop).increment(1);
}

/// An order node's id and times, as the pull needs them.
struct Probe {
    order_id: u64,
    created_ms: i64,
    updated_ms: i64,
    customer_journey_summary: Option<JourneyProbe>,
    refunds: usize,
}

fn probe(shop: &str, node: &Value) -> Result<Probe, ReconcileError> {
    let bad = |detail: String| ReconcileError::Order {
        shop: shop.into(),
        order: node
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned(),
        detail,
    };
    let read: NodeProbe = serde_json::from_value(node.clone()).map_err(|e| bad(e.to_string()))?;
    let time = |field: &str, text: &str| {
        parse_rfc3339_ms(text).ok_or_else(|| bad(format!("{field} {text:?} is not a time")))
    };
    Ok(Probe {
        order_id: read
            .legacy_resource_id
            .parse()
            .map_err(|_| bad(format!("legacyResourceId {:?}", read.legacy_resource_id)))?,
        created_ms: time("createdAt", &read.created_at)?,
        updated_ms: time("updatedAt", &read.updated_at)?,
        customer_journey_summary: read.customer_journey_summary,
        refunds: read.refunds.len(),
    })
}

/// Each store's last kept pass, followed from `tributary.control.reconciliation`.
#[derive(Clone, Default)]
pub struct Watermarks(Arc<RwLock<HashMap<String, Reconciliation>>>);

impl Watermarks {
    /// Follows the topic in the background; returns once caught up.
    pub async fn follow(bootstrap: &str, shutdown: &CancellationToken) -> Result<Self, TopicError> {
        let watermarks = Self::default();
        let table = watermarks.clone();
        follow_table::<Reconciliation, _>(
            bootstrap,
            topics::RECONCILIATION,
            shutdown,
            move |key, record, _| match record {
                Some(record) => {
                    observe_watermark(&record);
                    table.set(record);
                }
                None => {
                    table
                        .0
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(key);
                }
            },
        )
        .await?;
        Ok(watermarks)
    }

    /// The store's watermark, in ms.
    pub fn get(&self, shop: &str) -> Option<i64> {
        self.last(shop).map(|r| r.watermark_ms)
    }

    /// The store's last kept pass.
    pub fn last(&self, shop: &str) -> Option<Reconciliation> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(shop)
            .cloned()
    }

    /// Keeps `pass` unless a later watermark is held (two passes may race).
    fn set(&self, pass: Reconciliation) {
        let mut table = self.0.write().unwrap_or_else(|e| e.into_inner());
        let newer = table
            .get(&pass.shop_domain)
            .is_none_or(|held| held.watermark_ms <= pass.watermark_ms);
        if newer {
            table.insert(pass.shop_domain.clone(), pass);
        }
    }
}

fn observe_watermark(pass: &Reconciliation) {
    metrics::gauge!("tributary_reconcile_watermark_seconds", "shop" => pass.shop_domain.clone())
        .set(pass.watermark_ms as f64 / 1000.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_fit_shopifys_cost_limit() {
        let config = Config::default();
        assert_eq!(config.page_size(), 9);
        assert!(2.0 + config.page_size() as f64 * RECONCILE_ORDER_COST <= 1_000.0);
        let tiny = Config {
            max_query_cost: 50.0,
            ..Config::default()
        };
        assert_eq!(tiny.page_size(), 1);
    }

    #[test]
    fn a_node_without_an_id_or_a_time_is_an_error_not_a_panic() {
        let node = json!({"id": "gid://shopify/Order/1", "legacyResourceId": "1",
            "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "yesterday"});
        let error = probe("s.myshopify.com", &node).err().map(|e| e.to_string());
        assert!(error.is_some_and(|e| e.contains("updatedAt")));
        let node = json!({"id": "gid://shopify/Order/1", "legacyResourceId": "x1",
            "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z"});
        assert!(probe("s.myshopify.com", &node).is_err());
    }
}
