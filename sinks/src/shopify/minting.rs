//! Codes for a store's active advocates who have none: the bulk mint (`tributary codes mint`) and
//! auto-mint (in the writeback service, for stores with `features.auto_mint_codes`) are this one
//! step.
//!
//! Minted codes are published as the advocates' new records on the advocates control topic, so
//! the processor attributes orders with them at once. An advocate who gets no code raises a
//! `CODE_NOT_MINTED` alert; a later successful mint archives it. Running it again creates
//! nothing for advocates who have a code, and recognises codes an interrupted run created.

use std::collections::HashSet;
use std::sync::RwLock;

use rdkafka::producer::FutureProducer;
use tributary_runtime::control::Control;
use tributary_runtime::kafka::{now_ms, publish_record};
use tributary_schemas::topics::{self, advocate_key};
use tributary_schemas::{Advocate, AdvocateStatus, Alert, AlertKind, AlertStatus, StoreStatus};
use tributary_shopify::oauth::{AccessTokenError, AccessTokens};
use tributary_shopify::{AdminClient, StoreAccess};

use super::codes::{mint_codes, MintError, MintTarget};

#[derive(Debug, thiserror::Error)]
pub enum MintingError {
    #[error("{0}: no such store")]
    UnknownStore(String),
    #[error("{0}: the store is not active")]
    Inactive(String),
    #[error("{0}: the store has no Admin API access, code pattern or discount template")]
    NotConfigured(String),
    #[error(transparent)]
    Token(#[from] AccessTokenError),
    #[error(transparent)]
    Mint(#[from] MintError),
    #[error("publishing: {0}")]
    Publish(#[from] tributary_runtime::kafka::TopicError),
}

/// A store's code coverage: active advocates with a code, and without one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CodeStats {
    pub with_code: usize,
    pub without_code: usize,
}

pub fn code_stats(control: &Control, shop: &str) -> CodeStats {
    let mut stats = CodeStats::default();
    for advocate in control
        .advocates(shop)
        .all()
        .filter(|a| a.status == AdvocateStatus::Active)
    {
        if advocate.codes.is_empty() {
            stats.without_code += 1;
        } else {
            stats.with_code += 1;
        }
    }
    stats
}

/// What one run did.
#[derive(Debug, Default)]
pub struct MintSummary {
    pub minted: usize,
    /// Advocates skipped, with the reason (each also raised an alert).
    pub skipped: Vec<(String, String)>,
}

/// Mints codes for `shop`'s active advocates without one, publishes them and the alerts.
/// `on_start(n)` is told how many advocates need a code; `progress(k)` how many are settled.
pub async fn mint_missing(
    admin: &AdminClient,
    control: &RwLock<Control>,
    tokens: &AccessTokens,
    producer: &FutureProducer,
    shop: &str,
    on_start: &(dyn Fn(usize) + Sync),
    progress: &(dyn Fn(usize) + Sync),
) -> Result<MintSummary, MintingError> {
    let (sealed, template_id, pattern, needing, held) = {
        let control = control.read().unwrap_or_else(|e| e.into_inner());
        let store = control
            .store(shop)
            .ok_or_else(|| MintingError::UnknownStore(shop.into()))?;
        if store.status != StoreStatus::Active {
            return Err(MintingError::Inactive(shop.into()));
        }
        let admin_access = store.admin.as_ref();
        let (Some(access), Some(template), Some(pattern)) = (
            admin_access,
            admin_access.and_then(|a| a.discount_template_id.clone()),
            admin_access.and_then(|a| a.code_pattern.clone()),
        ) else {
            return Err(MintingError::NotConfigured(shop.into()));
        };
        let sealed = access.access_token_sealed.clone();
        let advocates = control.advocates(shop);
        let held: HashSet<String> = advocates
            .all()
            .flat_map(|a| a.codes.iter().map(|c| c.trim().to_uppercase()))
            .collect();
        let mut needing: Vec<Advocate> = advocates
            .all()
            .filter(|a| a.status == AdvocateStatus::Active && a.codes.is_empty())
            .cloned()
            .collect();
        // A stable order: a re-run meets the advocates as the first run did.
        needing.sort_by(|a, b| a.id.cmp(&b.id));
        (sealed, template, pattern, needing, held)
    };
    let token = tokens.open(shop, &sealed).await?;
    on_start(needing.len());
    if needing.is_empty() {
        return Ok(MintSummary::default());
    }
    let target = MintTarget {
        store: StoreAccess {
            shop_domain: shop,
            access_token: token.expose(),
        },
        template_id: &template_id,
        pattern: &pattern,
    };
    let minted = mint_codes(admin, target, needing, held, progress).await?;
    let now = now_ms();
    let mut summary = MintSummary::default();
    for (mut advocate, code) in minted.codes {
        advocate.codes = vec![code];
        advocate.updated_at_ms = now;
        publish_record(
            producer,
            topics::ADVOCATES,
            &advocate_key(shop, &advocate.id),
            &advocate,
        )
        .await?;
        let archived = alert(
            shop,
            &advocate.id,
            AlertStatus::Archived,
            "a code was minted",
            now,
        );
        publish_record(producer, topics::ALERTS, &archived.alert_id, &archived).await?;
        summary.minted += 1;
    }
    for (advocate, reason) in minted.skipped {
        let message = reason.to_string();
        tracing::warn!(
            shop,
            advocate = advocate.id,
            reason = message,
            "no code minted"
        );
        let open = alert(shop, &advocate.id, AlertStatus::Open, &message, now);
        publish_record(producer, topics::ALERTS, &open.alert_id, &open).await?;
        summary.skipped.push((advocate.identifier, message));
    }
    metrics::counter!("tributary_codes_minted_total").increment(summary.minted as u64);
    Ok(summary)
}

fn alert(shop: &str, advocate_id: &str, status: AlertStatus, message: &str, now: i64) -> Alert {
    Alert {
        alert_id: format!("{shop}/CODE_NOT_MINTED/{advocate_id}"),
        shop_domain: shop.into(),
        kind: AlertKind::CodeNotMinted,
        status,
        message: message.into(),
        raised_at_ms: now,
        updated_at_ms: now,
    }
}
