//! Wiring: each service with its control data, health and metrics, and a shared shutdown.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::producer::FutureProducer;
use tokio_util::sync::CancellationToken;
use tributary_ingest::shopify_reconcile::edits::OrderEdits;
use tributary_ingest::shopify_reconcile::{Reconciler, Watermarks};
use tributary_ingest::shopify_webhooks::{self, StoreSecrets};
use tributary_processors::customer_events::EventsStage;
use tributary_processors::runner::Processor;
use tributary_runtime::control::{follow_stores_and_advocates, follow_table};
use tributary_runtime::kafka::producer_config;
use tributary_runtime::ops::{install_metrics, ops_router, serve_with, Readiness};
use tributary_runtime::secrets::MasterKey;
use tributary_schemas::{topics, Store};
use tributary_shopify::oauth::AccessTokens;
use tributary_shopify::AdminClient;
use tributary_sinks::clickhouse::ClickHouseSink;
use tributary_sinks::shopify::store_credit::StoreCreditStage;
use tributary_sinks::shopify::writeback::WritebackSink;

use crate::config::Config;

/// The webhook receiver, serving the ops routes beside it.
pub async fn run_ingest(
    config: &Config,
    bootstrap: &str,
    readiness: Readiness,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let ready = readiness.flag("ingest");
    let master_key = MasterKey::load(&config.secrets.master_key_file)?;
    let stores = StoreSecrets::default();
    let table = stores.clone();
    let followed = follow_table::<Store, _>(
        bootstrap,
        topics::STORES,
        &shutdown,
        move |key, store, _| table.apply(key, store, &master_key),
    )
    .await?;
    // A receiver whose broker is gone answers every delivery 503: not ready.
    readiness.track("stores topic", followed);
    let timeout = Duration::from_millis(config.ingest.produce_timeout_ms);
    let producer: FutureProducer = producer_config(bootstrap, timeout).create()?;
    // The embedded broker keeps about 5 MiB per partition (docs/decisions.md).
    let embedded = config.kafka.bootstrap_servers.is_none();
    let max_unread_bytes = config
        .ingest
        .max_unread_bytes
        .or(embedded.then_some(4 * 1024 * 1024));
    let backpressure = shopify_webhooks::Backpressure::watch(
        bootstrap,
        &config.processor.group_id,
        max_unread_bytes,
        shutdown.clone(),
    );
    let router = shopify_webhooks::router(&config.ingest, producer, stores, backpressure)
        .merge(ops_router(readiness.clone(), metrics));
    let reconcile = run_reconcile(config, bootstrap, &readiness, shutdown.clone());
    ready.store(true, Ordering::SeqCst);
    let (served, reconciled) = tokio::join!(
        serve_with(config.ingest.listen, router, &config.http, shutdown),
        reconcile
    );
    served?;
    reconciled
}

/// The sources that read Shopify's Admin API, beside the webhook receiver (all three produce
/// into `shopify.webhooks`): the scheduled reconciliation passes (`reconcile.interval_minutes`; 0:
/// none) and the re-read of edited orders.
async fn run_reconcile(
    config: &Config,
    bootstrap: &str,
    readiness: &Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let edits_ready = readiness.flag("order-edits");
    let master_key = MasterKey::load(&config.secrets.master_key_file)?;
    let control = follow_stores_and_advocates(bootstrap, &shutdown, readiness).await?;
    let tokens = AccessTokens::follow(bootstrap, &config.shopify, master_key, &shutdown).await?;
    let watermarks = Watermarks::follow(bootstrap, &shutdown).await?;
    let producer = producer_config(bootstrap, Duration::from_secs(30)).create()?;
    let admin = Arc::new(AdminClient::new(config.shopify.clone())?);
    let mut edits = OrderEdits::new(
        &config.kafka.brokers(bootstrap),
        config.reconcile.clone(),
        admin.clone(),
        control.clone(),
        tokens.clone(),
    );
    let reconciler = Reconciler::new(admin, producer, config.reconcile.clone());
    let (edited, ()) = tokio::join!(
        edits.run(edits_ready, shutdown.clone()),
        reconciler.run_scheduled(control, tokens, watermarks, shutdown)
    );
    Ok(edited?)
}

pub async fn run_processor(
    config: &Config,
    bootstrap: &str,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let ready = readiness.flag("processor");
    let control = follow_stores_and_advocates(bootstrap, &shutdown, &readiness).await?;
    Processor::new(
        &config.kafka.brokers(bootstrap),
        config.processor.clone(),
        control,
    )
    .run(ready, shutdown)
    .await?;
    Ok(())
}

/// The events stage: Placed Order, Received Refund, first and repeat purchase.
pub async fn run_events(
    config: &Config,
    bootstrap: &str,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let repartition_ready = readiness.flag("events-repartition");
    let emit_ready = readiness.flag("events");
    EventsStage::new(&config.kafka.brokers(bootstrap), config.events.clone())
        .run(repartition_ready, emit_ready, shutdown)
        .await?;
    Ok(())
}

pub async fn run_sink(
    config: &Config,
    bootstrap: &str,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let ready = readiness.flag("sink");
    ClickHouseSink::new(&config.kafka.brokers(bootstrap), config.clickhouse.clone())
        .run(ready, shutdown)
        .await?;
    Ok(())
}

/// The Shopify writeback service: tags and notes on attributed orders, rewards as store credit,
/// and auto-mint for the stores that turned it on.
pub async fn run_writeback(
    config: &Config,
    bootstrap: &str,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let ready = readiness.flag("writeback");
    let store_credit_ready = readiness.flag("store-credit");
    let master_key = MasterKey::load(&config.secrets.master_key_file)?;
    let control = follow_stores_and_advocates(bootstrap, &shutdown, &readiness).await?;
    let admin = Arc::new(AdminClient::new(config.shopify.clone())?);
    let tokens = AccessTokens::follow(bootstrap, &config.shopify, master_key, &shutdown).await?;
    let auto_mint = tributary_control::jobs::auto_mint(
        Duration::from_millis(config.writeback.auto_mint_interval_ms),
        bootstrap,
        admin.clone(),
        control.clone(),
        tokens.clone(),
        shutdown.clone(),
    );
    let store_credit = StoreCreditStage::new(
        &config.kafka.brokers(bootstrap),
        config.store_credit.clone(),
        admin.clone(),
        control.clone(),
        tokens.clone(),
    );
    let sink = WritebackSink::new(
        &config.kafka.brokers(bootstrap),
        config.writeback.clone(),
        admin,
        control,
        tokens,
    );
    let (sink, store_credit, auto_mint) = tokio::join!(
        sink.run(ready, shutdown.clone()),
        store_credit.run(store_credit_ready, shutdown),
        auto_mint
    );
    sink?;
    store_credit?;
    auto_mint
}

/// Drops the configured ClickHouse database (the demo and the bench start empty).
pub async fn reset_database(config: &Config) -> anyhow::Result<()> {
    config
        .clickhouse
        .drop_database()
        .await
        .context("ClickHouse is not reachable; start it with scripts/clickhouse.sh start")
}

/// Polls a `/readyz` URL until it answers 200.
pub async fn wait_ready(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if client
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("{url} did not become ready within {timeout:?}")
}

/// Cancels `token` on Ctrl-C or SIGTERM.
pub fn shutdown_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(term) => term,
                    Err(_) => return,
                };
            tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down");
        token.cancel();
    });
}

/// Ingest, processor, events stage, ClickHouse sink and Shopify writeback in this process. The first to fail stops the others;
/// each still finishes its own clean stop (final commit) before this returns.
pub async fn run_all(
    config: &Config,
    bootstrap: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let readiness = Readiness::default();
    let metrics = install_metrics()?;
    let stop_all_on_error = |name: &'static str, service: anyhow::Result<()>| {
        if service.is_err() {
            shutdown.cancel();
        }
        service.context(name)
    };
    let (r, s) = (&readiness, &shutdown);
    let (ingest, processor, events, sink, writeback) = tokio::join!(
        async {
            stop_all_on_error(
                "ingest",
                run_ingest(config, bootstrap, r.clone(), metrics, s.clone()).await,
            )
        },
        async {
            stop_all_on_error(
                "processor",
                run_processor(config, bootstrap, r.clone(), s.clone()).await,
            )
        },
        async {
            stop_all_on_error(
                "events",
                run_events(config, bootstrap, r.clone(), s.clone()).await,
            )
        },
        async {
            stop_all_on_error(
                "sink",
                run_sink(config, bootstrap, r.clone(), s.clone()).await,
            )
        },
        async {
            stop_all_on_error(
                "writeback",
                run_writeback(config, bootstrap, r.clone(), s.clone()).await,
            )
        },
    );
    ingest.and(processor).and(events).and(sink).and(writeback)
}
