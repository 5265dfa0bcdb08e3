//! Wiring: each service with its control data, health and metrics, and a shared shutdown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use rdkafka::producer::FutureProducer;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tributary_ingest::shopify_webhooks::{self, StoreSecrets};
use tributary_processors::customer_events::EventsStage;
use tributary_processors::runner::Processor;
use tributary_runtime::control::follow;
use tributary_runtime::control::Control;
use tributary_runtime::kafka::producer_config;
use tributary_runtime::secrets::MasterKey;
use tributary_schemas::{topics, Advocate, Store};
use tributary_shopify::AdminClient;
use tributary_sinks::clickhouse::ClickHouseSink;
use tributary_sinks::shopify::minting;
use tributary_sinks::shopify::store_credit::StoreCreditStage;
use tributary_sinks::shopify::writeback::WritebackSink;

use crate::config::Config;

/// Each service's name and whether it is ready.
type ReadyFlags = Vec<(&'static str, Arc<AtomicBool>)>;

/// Readiness of the services in this process; `/readyz` is 200 once all are ready.
#[derive(Clone, Default)]
pub struct Readiness(Arc<RwLock<ReadyFlags>>);

impl Readiness {
    pub fn flag(&self, service: &'static str) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        self.track(service, flag.clone());
        flag
    }

    /// Counts `flag` (a control topic follower's health, say) among what must be true.
    pub fn track(&self, service: &'static str, flag: Arc<AtomicBool>) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push((service, flag));
    }

    /// Whether `service` has registered and is ready.
    pub fn is_ready(&self, service: &str) -> bool {
        let flags = self.0.read().unwrap_or_else(|p| p.into_inner());
        flags
            .iter()
            .any(|(name, f)| *name == service && f.load(Ordering::SeqCst))
    }

    fn not_ready(&self) -> Vec<&'static str> {
        let flags = self.0.read().unwrap_or_else(|p| p.into_inner());
        flags
            .iter()
            .filter(|(_, f)| !f.load(Ordering::SeqCst))
            .map(|(name, _)| *name)
            .collect()
    }
}

/// The process's Prometheus recorder, installed on first use.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    // A Mutex, not just a OnceLock: two pipelines starting at once (tests run
    // in parallel) must not both try to install the global recorder.
    static HANDLE: std::sync::Mutex<Option<PrometheusHandle>> = std::sync::Mutex::new(None);
    let mut slot = HANDLE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(handle) = slot.as_ref() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .context("installing the Prometheus recorder")?;
    *slot = Some(handle.clone());
    Ok(handle)
}

/// `/healthz` (the process is up), `/readyz` (every service is ready) and `/metrics`.
pub fn ops_router(readiness: Readiness, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let waiting = readiness.not_ready();
                async move {
                    if waiting.is_empty() {
                        (axum::http::StatusCode::OK, "ready".to_owned())
                    } else {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            format!("waiting for: {}", waiting.join(", ")),
                        )
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        )
}

/// What any of tributary's HTTP endpoints allows one client, so that stalled or slow clients can
/// never exhaust the process (file descriptors, memory) and starve the rest, `/healthz` included.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpLimits {
    /// Connections served at once; further ones wait in the listen backlog until one closes.
    /// Keep it well below the process's file descriptor limit (`ulimit -n`, often 1,024).
    pub max_connections: usize,
    /// A connection whose request headers are not complete this long after it opened (or after
    /// its previous request) is closed, in ms.
    pub header_read_timeout_ms: u64,
    /// A request not answered this long after its headers arrived (a body that stalls, say) gets
    /// 408 and its connection is closed, in ms.
    pub request_timeout_ms: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            header_read_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
        }
    }
}

/// Serves `router` on `listen` with `limits` until `shutdown`, then lets requests in progress
/// finish (at most 10 s).
pub async fn serve_with(
    listen: std::net::SocketAddr,
    router: Router,
    limits: &HttpLimits,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(%listen, ?limits, "serving http");
    let router = router.layer(tower_http::timeout::TimeoutLayer::with_status_code(
        axum::http::StatusCode::REQUEST_TIMEOUT,
        Duration::from_millis(limits.request_timeout_ms),
    ));
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => permit?,
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    tracing::warn!(%listen, %error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let connection = http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // Errors here are one client's (a timeout, a reset): nothing to do but close.
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(%listen, "connections still open after 10 s; closing them");
    }
    Ok(())
}

/// Follows a control topic in the background; returns once it has caught up.
pub async fn follow_control<T, F>(
    bootstrap: &str,
    topic: &'static str,
    shutdown: &CancellationToken,
    apply: F,
) -> anyhow::Result<Arc<AtomicBool>>
where
    T: tributary_schemas::AvroRecord + 'static,
    F: FnMut(&str, Option<T>, i64) + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let bootstrap = bootstrap.to_owned();
    let shutdown = shutdown.clone();
    let healthy = Arc::new(AtomicBool::new(false));
    let health = healthy.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            Err(error) = follow::<T, F>(&bootstrap, topic, apply, tx, health) => {
                tracing::error!(topic, %error, "control topic reader could not start");
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(60), rx)
        .await
        .with_context(|| format!("reading {topic} timed out"))?
        .with_context(|| format!("reading {topic} failed"))?;
    Ok(healthy)
}

/// Stores and advocates, followed in the background; returns once both have caught up. Both
/// followers count in `readiness`.
pub async fn follow_stores_and_advocates(
    bootstrap: &str,
    shutdown: &CancellationToken,
    readiness: &Readiness,
) -> anyhow::Result<Arc<RwLock<Control>>> {
    let control = Arc::new(RwLock::new(Control::default()));
    let stores = control.clone();
    let stores_followed = follow_control::<Store, _>(
        bootstrap,
        topics::STORES,
        shutdown,
        move |key, store, offset| {
            stores
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .apply_store(key, store, offset);
        },
    )
    .await?;
    readiness.track("stores topic", stores_followed);
    let advocates = control.clone();
    let advocates_followed = follow_control::<Advocate, _>(
        bootstrap,
        topics::ADVOCATES,
        shutdown,
        move |key, advocate, _| {
            advocates
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .apply_advocate(key, advocate)
        },
    )
    .await?;
    readiness.track("advocates topic", advocates_followed);
    Ok(control)
}

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
    let followed = follow_control::<Store, _>(
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
        .merge(ops_router(readiness, metrics));
    ready.store(true, Ordering::SeqCst);
    serve_with(config.ingest.listen, router, &config.http, shutdown).await
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
    let auto_mint = auto_mint(
        config,
        bootstrap,
        admin.clone(),
        control.clone(),
        master_key.clone(),
        shutdown.clone(),
    );
    let store_credit = StoreCreditStage::new(
        &config.kafka.brokers(bootstrap),
        config.store_credit.clone(),
        admin.clone(),
        control.clone(),
        master_key.clone(),
    );
    let sink = WritebackSink::new(
        &config.kafka.brokers(bootstrap),
        config.writeback.clone(),
        admin,
        control,
        master_key,
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

/// Every `auto_mint_interval_ms`, mints codes for the active advocates without one of each store
/// with `features.auto_mint_codes`.
async fn auto_mint(
    config: &Config,
    bootstrap: &str,
    admin: Arc<AdminClient>,
    control: Arc<RwLock<Control>>,
    master_key: MasterKey,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let producer: FutureProducer = producer_config(bootstrap, Duration::from_secs(30)).create()?;
    let interval = Duration::from_millis(config.writeback.auto_mint_interval_ms.max(100));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(interval) => {}
        }
        let shops: Vec<String> = control
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .stores()
            .filter(|s| s.features.auto_mint_codes && s.admin.is_some())
            .map(|s| s.domain.clone())
            .collect();
        for shop in shops {
            let minting = minting::mint_missing(
                &admin,
                &control,
                &master_key,
                &producer,
                &shop,
                &|_| {},
                &|_| {},
            );
            let result = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                result = minting => result,
            };
            match result {
                Ok(summary) if summary.minted + summary.skipped.len() > 0 => {
                    tracing::info!(
                        shop,
                        minted = summary.minted,
                        skipped = summary.skipped.len(),
                        "auto-mint"
                    );
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(shop, %error, "auto-mint failed; retried next round"),
            }
        }
    }
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
