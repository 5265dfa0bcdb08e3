//! What every service process serves beside its work: readiness, health and metrics routes
//! (`/readyz`, `/healthz`, `/metrics`), and the one HTTP server every endpoint runs on, with
//! limits so that stalled or slow clients never exhaust the process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("binding {listen}: {source}")]
    Bind {
        listen: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("installing the Prometheus recorder: {0}")]
    Metrics(String),
}

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
pub fn install_metrics() -> Result<PrometheusHandle, OpsError> {
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
        .map_err(|e| OpsError::Metrics(e.to_string()))?;
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
) -> Result<(), OpsError> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| OpsError::Bind { listen, source })?;
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
            // Never closed: the semaphore lives here.
            Ok(permit) = permits.clone().acquire_owned() => permit,
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
