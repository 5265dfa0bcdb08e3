//! `tributary bench`: each stage's throughput on its own, then latency with every stage running.
//!
//! 1. **Ingest.** Only the receiver runs; a backlog of signed ~6 KB webhooks is sent as fast as
//!    `concurrency` allows. Measures webhooks/s and the ack latency (HTTP 200 means in Kafka).
//! 2. **Processor.** The processor starts on that backlog. Measures input records/s from the
//!    moment it has joined its group until its committed offsets reach the end of the topic;
//!    they only move once its outputs are acknowledged.
//! 3. **Sink.** The sink starts on the attributions the processor produced. Measures
//!    `tributary.attributions` records/s committed, each committed record being a row in ClickHouse.
//! 4. **Events.** The events stage starts on the same attributions. Measures attribution records/s
//!    until both its loops have committed everything (re-keyed by customer, then events emitted).
//! 5. **End to end.** With all four running, a second stream is sent at a steady order rate; each
//!    order's latency runs from sending its first webhook to its row being visible in ClickHouse
//!    (polled every 10 ms).
//!
//! 6. **Shopify.** Against the fake Shopify, for each of three cost buckets (Shopify's standard
//!    plan, Shopify Plus, unthrottled): the writeback service starts on the attributions and
//!    runs for at most [`SHOPIFY_WINDOW`]; measures attributed orders tagged and noted per second.
//!    Then 1,000 discount codes are minted; measures codes per second.
//!
//! Finally ClickHouse's per-advocate totals must equal the generator's for both streams, so a
//! fast but lossy run fails instead of reporting figures.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tributary_processors::attribution::Decision;
use tributary_processors::normalize::{normalize, Normalized};
use tributary_processors::state::PartitionState;
use tributary_runtime::kafka::EmbeddedBroker;
use tributary_runtime::secrets::MasterKey;
use tributary_schemas::topics;
use tributary_schemas::{AttributionSource, OrderEvent, Outcome};

use crate::app;
use crate::config::Config;
use crate::generate::{self, Plan, SendReport};
use crate::{replay, report};
use tributary_control::files::{self as control_files, StoreEntry};
use tributary_runtime::ops::{self, Readiness};
use tributary_sinks::clickhouse::queries;

#[derive(Debug, Clone, Copy)]
enum Service {
    Ingest,
    Processor,
    Sink,
    Events,
}

pub struct BenchPlan {
    /// Sent in stage 1 and drained by stages 2 and 3.
    pub backlog: Plan,
    /// Sent in stage 4 at `live_orders_per_second`.
    pub live: Plan,
    pub live_orders_per_second: f64,
    pub concurrency: usize,
    /// The stores the plans were made for.
    pub stores: Vec<StoreEntry>,
    pub advocates: std::path::PathBuf,
}

/// One stage's drain: records from the first to the last commit seen.
#[derive(Debug)]
pub struct Drain {
    pub records: i64,
    pub elapsed: Duration,
}

impl Drain {
    pub fn per_second(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The longest each writeback run of stage 6 lasts.
pub const SHOPIFY_WINDOW: Duration = Duration::from_secs(15);

/// Stage 6 under one cost bucket.
#[derive(Debug)]
pub struct ShopifyFigures {
    pub bucket: &'static str,
    /// Attributed orders tagged and noted, of those the store has.
    pub orders_written: u64,
    pub orders_attributed: u64,
    pub writeback_elapsed: Duration,
    /// Admin API requests the writeback made (reads and writes, retries included).
    pub requests: u64,
    pub codes_minted: usize,
    pub minting_elapsed: Duration,
}

/// Stage 6's store credit run: approved rewards and reversals pushed from a backlog.
#[derive(Debug)]
pub struct StoreCreditFigures {
    /// Credits and debits made, of the approvals and reversals the store's ledger holds.
    pub pushed: u64,
    pub to_push: u64,
    pub elapsed: Duration,
    /// Admin API requests made (account reads and mutations).
    pub requests: u64,
}

pub struct BenchReport {
    pub shopify: Vec<ShopifyFigures>,
    pub store_credit: StoreCreditFigures,
    pub ingest: SendReport,
    pub mean_body_bytes: usize,
    pub processor: Drain,
    pub sink: Drain,
    pub events: Drain,
    pub live: SendReport,
    /// Milliseconds from an order's first webhook to its row in ClickHouse, sorted.
    pub end_to_end_ms: Vec<f64>,
    pub peak_rss_mib: u64,
    /// Resident bytes per order held for its settle delay.
    pub held_order_bytes: f64,
    pub totals_table: String,
}

pub async fn run(mut config: Config, plan: BenchPlan) -> anyhow::Result<BenchReport> {
    // Separate database, embedded broker: the bench never touches an operator's data.
    config.clickhouse.database = "tributary_bench".into();
    config.kafka.bootstrap_servers = None;
    // The ingest stage measures a backlog with nothing consuming, so ingest's backpressure is off;
    // the bench compares ClickHouse with the generator and withholds its figures on a loss.
    config.ingest.max_unread_bytes = Some(u64::MAX);
    // The embedded broker keeps only the newest 5 MiB of each partition (docs/decisions.md); the
    // backlog's attribution records, each carrying its reward ledger, need more than 6 partitions.
    config.kafka.partitions = config.kafka.partitions.max(12);
    app::reset_database(&config).await?;
    let client = config.clickhouse.client();
    let broker = EmbeddedBroker::start(1, config.kafka.partitions)?;
    let bootstrap = broker.bootstrap_servers();
    let key = MasterKey::load_or_init_for_dev(&config.secrets.master_key_file)?;
    control_files::publish_stores(&bootstrap, &plan.stores, &key).await?;
    control_files::load_advocates(&bootstrap, &plan.advocates).await?;

    let shutdown = CancellationToken::new();
    let _stop_on_return = shutdown.clone().drop_guard();
    let readiness = Readiness::default();
    let metrics = ops::install_metrics()?;
    let mut services = tokio::task::JoinSet::new();
    // Each stage adds one service to the process.
    let start = |service: Service| {
        let (config, bootstrap, readiness, shutdown, metrics) = (
            config.clone(),
            bootstrap.clone(),
            readiness.clone(),
            shutdown.clone(),
            metrics.clone(),
        );
        async move {
            match service {
                Service::Ingest => {
                    app::run_ingest(&config, &bootstrap, readiness, metrics, shutdown).await
                }
                Service::Processor => {
                    app::run_processor(&config, &bootstrap, readiness, shutdown).await
                }
                Service::Sink => app::run_sink(&config, &bootstrap, readiness, shutdown).await,
                Service::Events => app::run_events(&config, &bootstrap, readiness, shutdown).await,
            }
            .with_context(|| format!("{service:?}"))
        }
    };

    println!(
        "stage 1/6: ingest only, {} deliveries",
        plan.backlog.deliveries()
    );
    services.spawn(start(Service::Ingest));
    let url = format!("http://{}/webhooks/shopify", config.ingest.listen);
    app::wait_ready(
        &format!("http://{}/readyz", config.ingest.listen),
        Duration::from_secs(30),
    )
    .await?;
    let ingest = generate::send_paced(
        &url,
        &plan.backlog,
        plan.concurrency,
        None,
        Some(crate::progress::bar(
            plan.backlog.deliveries(),
            "sending webhooks",
        )),
    )
    .await;
    anyhow::ensure!(
        ingest.failed == 0,
        "{} webhooks were refused",
        ingest.failed
    );
    plan.backlog.publish_commands(&bootstrap).await?;

    println!("stage 2/6: processor drains the backlog");
    services.spawn(start(Service::Processor));
    let processor = drain(
        &bootstrap,
        &config.processor.group_id,
        topics::WEBHOOKS,
        (&readiness, "processor"),
        &mut services,
    )
    .await?;
    println!(
        "  processor: {:.0} events/s ({} records in {:.2?})",
        processor.per_second(),
        processor.records,
        processor.elapsed
    );

    println!("stage 3/6: sink drains the attributions");
    services.spawn(start(Service::Sink));
    let sink = drain(
        &bootstrap,
        &config.clickhouse.group_id,
        topics::ATTRIBUTIONS,
        (&readiness, "sink"),
        &mut services,
    )
    .await?;

    println!("stage 4/6: events stage re-keys the attributions by customer and emits events");
    services.spawn(start(Service::Events));
    let repartitioned = drain(
        &bootstrap,
        &config.events.repartition_group_id,
        topics::ATTRIBUTIONS,
        (&readiness, "events-repartition"),
        &mut services,
    )
    .await?;
    let emitted = drain(
        &bootstrap,
        &config.events.group_id,
        topics::ORDERS_BY_CUSTOMER,
        (&readiness, "events"),
        &mut services,
    )
    .await?;
    // Both loops run at once; the stage is done when the second has caught up.
    let events = Drain {
        records: repartitioned.records,
        elapsed: repartitioned.elapsed + emitted.elapsed,
    };

    println!(
        "stage 5/6: end to end, {} orders at {} orders/s",
        plan.live.orders.len(),
        plan.live_orders_per_second
    );
    let watcher = tokio::spawn(watch_rows(client.clone(), order_ids(&plan.live)));
    let live = generate::send_paced(
        &url,
        &plan.live,
        plan.concurrency,
        Some(plan.live_orders_per_second),
        None,
    )
    .await;
    plan.live.publish_commands(&bootstrap).await?;
    let visible = watcher.await.context("the row watcher failed")??;
    let mut end_to_end_ms: Vec<f64> = live
        .first_sent
        .iter()
        .filter_map(|(order_id, sent)| {
            visible
                .get(order_id)
                .map(|seen| seen.saturating_duration_since(*sent).as_secs_f64() * 1e3)
        })
        .collect();
    end_to_end_ms.sort_by(f64::total_cmp);

    println!("stage 6/6: Shopify writeback and code minting against the fake Shopify");
    let shopify = shopify_stage(&config, &bootstrap, &plan.stores, &client, &key).await?;
    let store_credit = store_credit_stage(&config, &bootstrap, &plan, &client, &key).await?;

    let held_order_bytes = held_order_bytes(&plan.backlog);
    let mut expected = plan.backlog.expected.clone();
    expected.add(&plan.live.expected);
    // The live stream's manual attributions went out after its webhooks; let them land.
    let (totals_table, matched) =
        report::await_match(&client, &expected, Duration::from_secs(60)).await;
    anyhow::ensure!(
        matched,
        "ClickHouse does not match the generator; figures withheld\n{totals_table}"
    );
    // Stop every service while the broker is still up, so none is left talking to it.
    shutdown.cancel();
    while services.join_next().await.is_some() {}
    Ok(BenchReport {
        shopify,
        store_credit,
        mean_body_bytes: mean_body(&plan.backlog),
        ingest,
        processor,
        sink,
        events,
        live,
        end_to_end_ms,
        peak_rss_mib: peak_rss_kib() / 1024,
        held_order_bytes,
        totals_table,
    })
}

/// Stage 6: writeback and minting under Shopify's standard bucket, Shopify Plus's, and none.
async fn shopify_stage(
    config: &Config,
    bootstrap: &str,
    stores: &[StoreEntry],
    client: &clickhouse::Client,
    key: &MasterKey,
) -> anyhow::Result<Vec<ShopifyFigures>> {
    let Some(store) = stores.iter().find(|s| s.admin.is_some()) else {
        anyhow::bail!("no store with Admin API access to write back to");
    };
    let shop = store.domain.trim().to_ascii_lowercase();
    publish_for(bootstrap, stores, Measured::TagsAndNotes, key).await?;
    let stores = control_files::StoresFile {
        store: stores.to_vec(),
    };
    let orders_attributed = queries::attributed_order_count(client, &shop).await?;
    let mut figures = Vec::new();
    let buckets: [(&'static str, f64, f64); 3] = [
        ("standard (1,000 points, 50/s)", 1_000.0, 50.0),
        ("Plus (10,000 points, 500/s)", 10_000.0, 500.0),
        ("unthrottled", 1e12, 1e12),
    ];
    for (run, (bucket, size, rate)) in buckets.into_iter().enumerate() {
        let fake =
            crate::dev::start_fake_shopify(([127, 0, 0, 1], 0).into(), &stores, &[], size, rate)
                .await?;
        let mut config = config.clone();
        config.shopify.base_url = Some(fake.base_url());
        if rate > 1e9 {
            // Unthrottled: lift the request ceiling too, to show the writeback's own limit.
            config.shopify.requests_per_second = 1_000_000;
        }
        config.writeback.group_id = format!("tributary-bench-writeback-{run}");
        let stop = CancellationToken::new();
        let writeback = spawn_writeback(&config, bootstrap, &stop);
        let started = Instant::now();
        let written = |fake: &tributary_fakes::shopify::FakeShopify| {
            fake.writes(&shop).get("tagsAdd").copied().unwrap_or(0)
        };
        while started.elapsed() < SHOPIFY_WINDOW && written(&fake) < orders_attributed {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let writeback_elapsed = started.elapsed();
        let orders_written = written(&fake);
        let requests = fake.requests(&shop).0;
        stop.cancel();
        writeback.await??;

        // Minting: 1,000 advocates without a code, on the store's template, from a full bucket
        // (a fresh store: the writeback above emptied this one's).
        let fake =
            crate::dev::start_fake_shopify(([127, 0, 0, 1], 0).into(), &stores, &[], size, rate)
                .await?;
        config.shopify.base_url = Some(fake.base_url());
        let admin = tributary_shopify::AdminClient::new(config.shopify.clone())?;
        let access = store
            .admin
            .as_ref()
            .map(|a| a.access_token.clone())
            .unwrap_or_default();
        let template = store
            .admin
            .as_ref()
            .and_then(|a| a.discount_template_id.clone())
            .context("the store has no discount template")?;
        let advocates: Vec<tributary_schemas::Advocate> = (0..1_000)
            .map(|n| tributary_schemas::Advocate {
                shop_domain: shop.clone(),
                id: format!("bench-{n}"),
                identifier: format!("bench{n}"),
                first_name: format!("Bench {n}"),
                email: String::new(),
                status: tributary_schemas::AdvocateStatus::Active,
                codes: Vec::new(),
                updated_at_ms: 0,
            })
            .collect();
        let target = tributary_sinks::shopify::codes::MintTarget {
            store: tributary_shopify::StoreAccess {
                shop_domain: &shop,
                access_token: &access,
            },
            template_id: &template,
            pattern: "{{advocate_identifier}}-{{random_hex_6}}",
        };
        let started = Instant::now();
        let minted = tributary_sinks::shopify::codes::mint_codes(
            &admin,
            target,
            advocates,
            Default::default(),
            &|_| {},
        )
        .await?;
        figures.push(ShopifyFigures {
            bucket,
            orders_written,
            orders_attributed,
            writeback_elapsed,
            requests,
            codes_minted: minted.codes.len(),
            minting_elapsed: started.elapsed(),
        });
    }
    Ok(figures)
}

/// Runs the writeback service (tags and notes, store credit) until `stop`.
fn spawn_writeback(
    config: &Config,
    bootstrap: &str,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let (config, bootstrap, stop) = (config.clone(), bootstrap.to_owned(), stop.clone());
    tokio::spawn(async move {
        app::run_writeback(&config, &bootstrap, Readiness::default(), stop).await
    })
}

/// What a stage 6 run measures: tags and notes, or store credit (one at a time, so that each
/// figure is its own).
#[derive(Clone, Copy, PartialEq)]
enum Measured {
    TagsAndNotes,
    StoreCredit,
}

/// Republishes `stores` with only the writeback features of `measured` on.
async fn publish_for(
    bootstrap: &str,
    stores: &[StoreEntry],
    measured: Measured,
    key: &MasterKey,
) -> anyhow::Result<()> {
    let mut stores = stores.to_vec();
    for store in &mut stores {
        let features = &mut store.features;
        features.order_tags = measured == Measured::TagsAndNotes;
        features.order_notes = measured == Measured::TagsAndNotes;
        features.reward_store_credit = measured == Measured::StoreCredit;
    }
    control_files::publish_stores(bootstrap, &stores, key).await?;
    Ok(())
}

/// Stage 6, store credit: the writeback service pushes the backlog's approved rewards and
/// reversals to an unthrottled fake (the stage's own pace: one push at a time per consumer, each
/// an account read and a mutation around two changelog writes). Under a bucket the pace is the
/// bucket's: a push costs 17 points.
async fn store_credit_stage(
    config: &Config,
    bootstrap: &str,
    plan: &BenchPlan,
    client: &clickhouse::Client,
    key: &MasterKey,
) -> anyhow::Result<StoreCreditFigures> {
    let Some(store) = plan.stores.iter().find(|s| s.admin.is_some()) else {
        anyhow::bail!("no store with Admin API access to push store credit to");
    };
    let shop = store.domain.trim().to_ascii_lowercase();
    publish_for(bootstrap, &plan.stores, Measured::StoreCredit, key).await?;
    let to_push = queries::store_credit_movements(client, &shop).await?;
    let stores = control_files::StoresFile {
        store: plan.stores.clone(),
    };
    let advocates = control_files::read_advocates(&plan.advocates)?;
    let fake =
        crate::dev::start_fake_shopify(([127, 0, 0, 1], 0).into(), &stores, &advocates, 1e12, 1e12)
            .await?;
    let mut config = config.clone();
    config.shopify.base_url = Some(fake.base_url());
    config.shopify.requests_per_second = 1_000_000;
    config.store_credit.group_id = "tributary-bench-store-credit".into();
    let stop = CancellationToken::new();
    let service = spawn_writeback(&config, bootstrap, &stop);
    let started = Instant::now();
    let pushed = || {
        let writes = fake.writes(&shop);
        ["storeCreditAccountCredit", "storeCreditAccountDebit"]
            .iter()
            .filter_map(|field| writes.get(*field))
            .sum::<u64>()
    };
    while started.elapsed() < SHOPIFY_WINDOW && pushed() < to_push {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let figures = StoreCreditFigures {
        pushed: pushed(),
        to_push,
        elapsed: started.elapsed(),
        requests: fake.requests(&shop).0,
    };
    stop.cancel();
    service.await??;
    Ok(figures)
}

/// Waits until `group` has committed everything in `topic`, timing from the moment `service`
/// became ready, that is, had joined its group and been given its partitions.
async fn drain(
    bootstrap: &str,
    group: &str,
    topic: &'static str,
    (readiness, service): (&Readiness, &str),
    services: &mut tokio::task::JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<Drain> {
    let timed = async {
        while !readiness.is_ready(service) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let started = Instant::now();
        let records =
            replay::caught_up(bootstrap, group, topic, Duration::from_millis(5), None).await?;
        anyhow::Ok(Drain {
            records,
            elapsed: started.elapsed(),
        })
    };
    tokio::select! {
        drained = tokio::time::timeout(Duration::from_secs(600), timed) => {
            drained.map_err(|_| anyhow::anyhow!("{group} did not drain {topic} in time"))?
        }
        Some(stopped) = services.join_next() => {
            anyhow::bail!("a service stopped during the bench: {:?}", stopped?)
        }
    }
}

/// When each of `orders` first has a row in ClickHouse.
async fn watch_rows(
    client: clickhouse::Client,
    orders: Vec<u64>,
) -> anyhow::Result<HashMap<u64, Instant>> {
    let (Some(&low), Some(&high)) = (orders.iter().min(), orders.iter().max()) else {
        return Ok(HashMap::new());
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut seen = HashMap::with_capacity(orders.len());
    while seen.len() < orders.len() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {} orders reached ClickHouse",
            seen.len(),
            orders.len()
        );
        let rows = queries::orders_written_between(&client, low, high).await?;
        let now = Instant::now();
        for order_id in rows {
            seen.entry(order_id).or_insert(now);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(seen)
}

fn order_ids(plan: &Plan) -> Vec<u64> {
    plan.orders
        .iter()
        .filter_map(|deliveries| deliveries.first().map(|d| d.order_id))
        .collect()
}

fn mean_body(plan: &Plan) -> usize {
    plan.orders
        .iter()
        .flatten()
        .map(|d| d.body.len())
        .sum::<usize>()
        / plan.deliveries().max(1)
}

/// Each planned order's first version, normalized.
fn first_versions(plan: &Plan) -> impl Iterator<Item = Box<OrderEvent>> + '_ {
    plan.orders
        .iter()
        .filter_map(|deliveries| deliveries.first())
        .filter_map(|delivery| match normalize(&delivery.envelope()) {
            Ok(Normalized::Order(event)) => Some(event),
            _ => None,
        })
}

/// Holds each planned order's first version in one partition's state, as a store with a settle
/// delay does, and returns the growth of the resident set per held order.
fn held_order_bytes(plan: &Plan) -> f64 {
    let events: Vec<Box<OrderEvent>> = first_versions(plan).collect();
    let before = rss_kib("VmRSS:");
    let mut state = PartitionState::default();
    for (offset, event) in events.iter().enumerate() {
        // Held, never settled: nothing is read from disk, so nothing can fail.
        let _ = state.apply(event, offset as i64, i64::MAX / 2, never_asked);
    }
    let grown_kib = rss_kib("VmRSS:").saturating_sub(before);
    let held = state.held_len().max(1);
    drop(state);
    grown_kib as f64 * 1024.0 / held as f64
}

/// What `tributary bench --settled-orders N` measures: settled orders kept on disk.
#[derive(Debug)]
pub struct SettledStateReport {
    pub orders: usize,
    /// Orders written through the store, as a restore from the changelog writes them.
    pub write_orders_per_s: f64,
    /// Resident set growth per order while writing them (above redb's fixed page cache).
    pub disk_bytes_per_order: f64,
    /// The same orders' resident set growth per order in memory (no state_dir), on a sample.
    pub memory_bytes_per_order: f64,
    pub memory_sample: usize,
    /// Peak resident set of the process, KiB.
    pub peak_rss_kib: u64,
    /// A restart: opening the store, its changelog offset and a first order, ms.
    pub reopen_ms: f64,
    pub file_bytes: u64,
}

/// Writes `orders` settled orders (copies of one realistic attribution with distinct ids) into an
/// on-disk store in `dir` as a restore does, then reopens it as a restarted processor would.
pub fn settled_state(
    plan: &Plan,
    orders: usize,
    dir: &std::path::Path,
) -> anyhow::Result<SettledStateReport> {
    use tributary_processors::settled::{SettledOrders, StateStore, STORE_NAME};
    use tributary_processors::state::Applied;
    use tributary_runtime::state::Changelogged;
    let event = first_versions(plan)
        .next()
        .context("the plan has no order")?;
    let Applied::Changed(template) = PartitionState::default().apply(&event, 0, 0, never_asked)?
    else {
        anyhow::bail!("the order did not settle");
    };
    let copy = |i: usize| {
        let mut record = (*template).clone();
        record.order_id = 5_000_000_000_000_000_000 + i as u64;
        record
    };

    let sample = orders.min(100_000);
    let before = rss_kib("VmRSS:");
    let in_memory = PartitionState::restore((0..sample).map(copy), 0);
    let memory_bytes_per_order =
        rss_kib("VmRSS:").saturating_sub(before) as f64 * 1024.0 / sample.max(1) as f64;
    drop(in_memory);

    let store = StateStore::open(dir, STORE_NAME)?;
    let mut settled = SettledOrders::on_disk(store.clone(), 0);
    let before = rss_kib("VmRSS:");
    let started = Instant::now();
    for i in 0..orders {
        settled.absorb(copy(i))?;
        if settled.in_memory() >= 20_000 {
            settled.flush(i as i64 + 1)?;
        }
    }
    settled.flush(orders as i64)?;
    let write_orders_per_s = orders as f64 / started.elapsed().as_secs_f64();
    let disk_bytes_per_order =
        rss_kib("VmRSS:").saturating_sub(before) as f64 * 1024.0 / orders.max(1) as f64;
    drop((settled, store));

    let started = Instant::now();
    let store = StateStore::open(dir, STORE_NAME)?;
    let next = store.changelog_next(0)?;
    let mut settled = SettledOrders::on_disk(store, 0);
    let key =
        tributary_schemas::topics::order_key(&template.shop_domain, copy(orders / 2).order_id);
    let found = settled.get_mut(&key)?.is_some();
    let reopen_ms = started.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(
        found && next == Some(orders as i64),
        "the reopened store lost orders"
    );
    Ok(SettledStateReport {
        orders,
        write_orders_per_s,
        disk_bytes_per_order,
        memory_bytes_per_order,
        memory_sample: sample,
        peak_rss_kib: peak_rss_kib(),
        reopen_ms,
        file_bytes: std::fs::metadata(dir.join("settled.redb"))?.len(),
    })
}

/// `apply` judges an order only when it settles at once, never while holding it.
fn never_asked() -> Decision {
    Decision {
        outcome: Outcome::Unattributed,
        source: AttributionSource::Unattributed,
        reason: String::new(),
        advocate: None,
        code: None,
        reward: None,
    }
}

/// The process's peak resident set (VmHWM), in KiB.
fn peak_rss_kib() -> u64 {
    rss_kib("VmHWM:")
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with(field))
                .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The `p`-quantile of sorted values (nearest rank).
pub fn quantile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ack_us = self.ingest.latencies_us.clone();
        ack_us.sort_unstable();
        let ms = |us: u64| us as f64 / 1e3;
        writeln!(f, "\nbench (one process: embedded broker, ingest, processor, sink, events stage, generator; ClickHouse beside it)")?;
        writeln!(
            f,
            "  ingest:     {:>9.0} webhooks/s acknowledged ({} webhooks, mean body {} bytes)",
            self.ingest.sent as f64 / self.ingest.elapsed.as_secs_f64(),
            self.ingest.sent,
            self.mean_body_bytes
        )?;
        writeln!(
            f,
            "  ack latency: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            ms(quantile(&ack_us, 0.5)),
            ms(quantile(&ack_us, 0.9)),
            ms(quantile(&ack_us, 0.99)),
            ms(quantile(&ack_us, 1.0))
        )?;
        writeln!(
            f,
            "  processor:  {:>9.0} events/s ({} webhook records in {:.2?})",
            self.processor.per_second(),
            self.processor.records,
            self.processor.elapsed
        )?;
        writeln!(
            f,
            "  sink:       {:>9.0} rows/s ({} attribution rows in {:.2?})",
            self.sink.per_second(),
            self.sink.records,
            self.sink.elapsed
        )?;
        writeln!(
            f,
            "  events:     {:>9.0} attribution records/s re-keyed by customer and turned into events ({} records in {:.2?})",
            self.events.per_second(),
            self.events.records,
            self.events.elapsed
        )?;
        writeln!(
            f,
            "  end to end: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms, webhook sent to row visible ({} orders at a steady rate)",
            quantile(&self.end_to_end_ms, 0.5),
            quantile(&self.end_to_end_ms, 0.99),
            quantile(&self.end_to_end_ms, 1.0),
            self.end_to_end_ms.len()
        )?;
        writeln!(
            f,
            "  held order: {:.0} bytes resident per order waiting out its settle delay",
            self.held_order_bytes
        )?;
        for shopify in &self.shopify {
            writeln!(
                f,
                "  shopify, {} bucket: writeback {:.1} orders/s ({} of {} attributed orders tagged and noted in {:.1?}, {} Admin API requests); minting {:.0} codes/s ({} codes in {:.2?})",
                shopify.bucket,
                shopify.orders_written as f64 / shopify.writeback_elapsed.as_secs_f64().max(1e-9),
                shopify.orders_written,
                shopify.orders_attributed,
                shopify.writeback_elapsed,
                shopify.requests,
                shopify.codes_minted as f64 / shopify.minting_elapsed.as_secs_f64().max(1e-9),
                shopify.codes_minted,
                shopify.minting_elapsed,
            )?;
        }
        let credit = &self.store_credit;
        writeln!(
            f,
            "  shopify, unthrottled: store credit {:.1} pushes/s ({} of {} approvals and reversals in {:.1?}, {} Admin API requests)",
            credit.pushed as f64 / credit.elapsed.as_secs_f64().max(1e-9),
            credit.pushed,
            credit.to_push,
            credit.elapsed,
            credit.requests,
        )?;
        write!(f, "  peak RSS:   {} MiB", self.peak_rss_mib)
    }
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn nearest_rank_quantiles() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&values, 0.5), 50);
        assert_eq!(quantile(&values, 0.99), 99);
        assert_eq!(quantile(&values, 1.0), 100);
        assert_eq!(quantile(&[7u64], 0.5), 7);
        assert_eq!(quantile::<u64>(&[], 0.5), 0);
    }
}

/// One bucket's reconciliation throughput (`tributary bench --reconcile-orders N`).
#[derive(Debug)]
pub struct ReconcileFigures {
    pub bucket: &'static str,
    pub orders: i64,
    pub elapsed: Duration,
    pub requests: u64,
}

/// Reads `orders` orders of the first store with Admin access back through the reconciliation
/// pull, from a fake Shopify under Shopify's standard and Plus cost buckets (each starting empty,
/// so the figure is the sustained rate) and unthrottled (the pull's own limit: the fake, the
/// client and Kafka), into an embedded broker; then in one bulk operation under the standard
/// bucket, polled every 100 ms (the fake completes it 250 ms after it starts, so the figure is
/// tributary's side: download, reassembly, produce; Shopify's own running time is not modelled).
pub async fn reconcile_throughput(
    stores: &[StoreEntry],
    advocates: &[control_files::AdvocateLine],
    orders: usize,
    seed: u64,
) -> anyhow::Result<Vec<ReconcileFigures>> {
    let store = stores
        .iter()
        .find(|s| s.admin.is_some())
        .context("no store with Admin API access")?;
    let shop = store.domain.trim().to_ascii_lowercase();
    let key = MasterKey::generate();
    let sealed = key.seal(
        &tributary_runtime::secrets::access_token_purpose(&shop),
        store
            .admin
            .as_ref()
            .map(|a| a.access_token.as_str())
            .unwrap_or_default(),
    );
    let tokens = tributary_shopify::oauth::AccessTokens::sealed_only(key);
    let plan =
        generate::plan_with_losses(std::slice::from_ref(store), advocates, orders, seed, 100)?;
    // The embedded broker creates topics as they are first written.
    let broker = EmbeddedBroker::start(1, 4)?;
    let bootstrap = broker.bootstrap_servers();
    let producer: rdkafka::producer::FutureProducer =
        tributary_runtime::kafka::producer_config(&bootstrap, Duration::from_secs(30)).create()?;
    let stores_file = control_files::StoresFile {
        store: vec![store.clone()],
    };
    // Shopify's rate-limit page: standard 100 points/s, Plus 1,000/s; buckets as public
    // answers show them (`maximumAvailable` 2,000 and 20,000).
    let buckets: [(&'static str, f64, f64, bool); 4] = [
        (
            "pages, standard (2,000 points, 100/s)",
            2_000.0,
            100.0,
            false,
        ),
        (
            "pages, Plus (20,000 points, 1,000/s)",
            20_000.0,
            1_000.0,
            false,
        ),
        ("pages, unthrottled", 1e12, 1e12, false),
        ("bulk operation, standard", 2_000.0, 100.0, true),
    ];
    let mut figures = Vec::new();
    for (bucket, size, rate, bulk) in buckets {
        let fake = crate::dev::start_fake_shopify(
            ([127, 0, 0, 1], 0).into(),
            &stores_file,
            &[],
            size,
            rate,
        )
        .await?;
        for (_, node) in &plan.order_nodes {
            fake.put_order_node(&shop, node.clone());
        }
        // From an empty bucket: the sustained rate, not a burst the bucket's size pays for.
        fake.drain_bucket(&shop);
        let mut admin_config = tributary_shopify::AdminConfig {
            base_url: Some(fake.base_url()),
            ..Default::default()
        };
        if rate > 1e9 {
            admin_config.requests_per_second = 1_000_000;
        }
        let admin = std::sync::Arc::new(tributary_shopify::AdminClient::new(admin_config)?);
        let config = tributary_ingest::shopify_reconcile::Config {
            bulk_after_hours: if bulk { 24 } else { 0 },
            bulk_poll_ms: 100,
            ..Default::default()
        };
        let reconciler =
            tributary_ingest::shopify_reconcile::Reconciler::new(admin, producer.clone(), config);
        let started = Instant::now();
        let pass = reconciler
            .pass(
                &shop,
                &tokens,
                &sealed,
                tributary_ingest::shopify_reconcile::Start::Since(0),
                &|_| {},
            )
            .await?;
        figures.push(ReconcileFigures {
            bucket,
            orders: pass.orders_read,
            elapsed: started.elapsed(),
            requests: fake.requests(&shop).0,
        });
    }
    Ok(figures)
}
