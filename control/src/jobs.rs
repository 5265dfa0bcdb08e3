//! Jobs the control plane runs on a schedule.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::producer::FutureProducer;
use tokio_util::sync::CancellationToken;
use tributary_runtime::control::Control;
use tributary_runtime::kafka::producer_config;
use tributary_shopify::oauth::AccessTokens;
use tributary_shopify::AdminClient;
use tributary_sinks::shopify::minting;

/// Every `auto_mint_interval_ms`, mints codes for the active advocates without one of each store
/// with `features.auto_mint_codes`.
pub async fn auto_mint(
    interval: Duration,
    bootstrap: &str,
    admin: Arc<AdminClient>,
    control: Arc<RwLock<Control>>,
    tokens: AccessTokens,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let producer: FutureProducer = producer_config(bootstrap, Duration::from_secs(30)).create()?;
    let interval = interval.max(Duration::from_millis(100));
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
                &tokens,
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
