//! `tributary reconcile`: a reconciliation pass on demand (a backfill with `--since`), with a
//! progress bar, and the stores' watermarks (`--status`). The scheduled passes run in the ingest
//! service (see [`crate::app::run_ingest`]); both go through
//! [`tributary_ingest::shopify_reconcile`].

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tributary_ingest::shopify_reconcile::{reconcilable, Reconciler, Start, Watermarks};
use tributary_runtime::control::follow_stores_and_advocates;
use tributary_runtime::kafka::{now_ms, producer_config};
use tributary_runtime::ops::Readiness;
use tributary_runtime::secrets::MasterKey;
use tributary_schemas::time::{format_rfc3339_ms, parse_rfc3339_ms};
use tributary_schemas::Reconciliation;
use tributary_shopify::oauth::AccessTokens;
use tributary_shopify::AdminClient;

use crate::config::Config;

/// What to pass over.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// One store (its domain), or every active store with Admin access.
    pub shop: Option<String>,
    /// Read from this RFC 3339 time instead of the watermark (a backfill).
    pub since: Option<String>,
    /// Draw a progress bar (the command does; tests do not).
    pub progress: bool,
}

/// Runs one pass over each store asked for and keeps each complete one (a `--since` later than
/// the store's own start is not kept); returns them. A store that fails stops the command with
/// its error (the passes before it are kept).
pub async fn run(
    config: &Config,
    bootstrap: &str,
    request: &Request,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<Reconciliation>> {
    let since = request
        .since
        .as_deref()
        .map(|text| {
            parse_rfc3339_ms(text)
                .with_context(|| format!("--since {text:?} is not an RFC 3339 time"))
        })
        .transpose()?;
    let master_key = MasterKey::load(&config.secrets.master_key_file)?;
    let control = follow_stores_and_advocates(bootstrap, shutdown, &Readiness::default()).await?;
    let tokens = AccessTokens::follow(bootstrap, &config.shopify, master_key, shutdown).await?;
    let watermarks = Watermarks::follow(bootstrap, shutdown).await?;
    let producer = producer_config(bootstrap, Duration::from_secs(30)).create()?;
    let admin = Arc::new(AdminClient::new(config.shopify.clone())?);
    let reconciler = Reconciler::new(admin, producer, config.reconcile.clone());
    let wanted = request
        .shop
        .as_deref()
        .map(|s| s.trim().to_ascii_lowercase());
    let stores: Vec<(String, String)> = reconcilable(&control)
        .into_iter()
        .filter(|(shop, _)| wanted.as_ref().is_none_or(|w| w == shop))
        .collect();
    if let (Some(shop), true) = (&wanted, stores.is_empty()) {
        anyhow::bail!("{shop} is not an active store with Admin access");
    }
    let mut kept = Vec::new();
    for (shop, sealed) in stores {
        let watermark = watermarks.get(&shop);
        let start = match since {
            Some(ms) => Start::Since(ms),
            None => Start::Watermark(watermark),
        };
        // A backfill from later than the store's own start covers only part of what the
        // watermark stands for: it is not kept.
        let keep = since.is_none_or(|ms| ms <= reconciler.watermark_start(watermark, now_ms()));
        let bar = request
            .progress
            .then(|| crate::progress::bar(0, &format!("{shop}: orders read")));
        let started = std::time::Instant::now();
        let pass = reconciler
            .pass(&shop, &tokens, &sealed, start, &|read| {
                if let Some(bar) = &bar {
                    bar.set_length(read);
                    bar.set_position(read);
                }
            })
            .await
            .with_context(|| format!("reconciling {shop}"))?;
        if keep {
            reconciler.record(&pass).await?;
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let elapsed = started.elapsed().as_secs_f64().max(1e-9);
        if request.progress {
            println!(
                "{shop}: {} order(s) in {elapsed:.1} s ({:.1} orders/s), {} left for a later pass; watermark {}",
                pass.orders_read,
                pass.orders_read as f64 / elapsed,
                pass.held_back,
                format_rfc3339_ms(pass.watermark_ms)
            );
        }
        kept.push(pass);
    }
    Ok(kept)
}

/// Prints each store's watermark and last pass.
pub async fn status(bootstrap: &str, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let control = follow_stores_and_advocates(bootstrap, shutdown, &Readiness::default()).await?;
    let watermarks = Watermarks::follow(bootstrap, shutdown).await?;
    println!(
        "{:<36} {:<26} {:<26} {:>8} {:>10}",
        "store", "watermark", "last pass completed", "orders", "held back"
    );
    for (shop, _) in reconcilable(&control) {
        match watermarks.last(&shop) {
            Some(pass) => println!(
                "{shop:<36} {:<26} {:<26} {:>8} {:>10}",
                format_rfc3339_ms(pass.watermark_ms),
                format_rfc3339_ms(pass.completed_at_ms),
                pass.orders_read,
                pass.held_back
            ),
            None => println!("{shop:<36} never reconciled"),
        }
    }
    Ok(())
}
