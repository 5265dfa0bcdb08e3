//! The master key's lifecycle, for operators: `tributary keys init|rotate|reseal`.
//!
//! Only these commands create or change a key; services load it and refuse to start without one.
//! A rotation loses nothing: `rotate` puts a new key first in the ring and keeps the old one, so
//! both open; once every service has restarted with the ring, `reseal` seals every store's secrets
//! again under the new key and publishes them, and `--retire` then drops the old key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tributary_runtime::secrets::{access_token_purpose, webhook_secret_purpose, MasterKey};
use tributary_schemas::topics::{self, store_key};
use tributary_schemas::Store;

use crate::files::publish;
use tributary_runtime::control::follow_table;

/// Every store as last published, each secret sealed again under the ring's current key.
///
/// Errors: a secret that opens under no key of the ring (nothing is published then).
pub fn resealed(stores: Vec<Store>, key: &MasterKey) -> anyhow::Result<Vec<(String, Store)>> {
    stores
        .into_iter()
        .map(|mut store| {
            let domain = store.domain.clone();
            let purpose = webhook_secret_purpose(&domain);
            for sealed in &mut store.webhook_secrets_sealed {
                *sealed = key
                    .reseal(&purpose, sealed)
                    .with_context(|| format!("{domain}: a webhook secret"))?;
            }
            if let Some(admin) = &mut store.admin {
                admin.access_token_sealed = key
                    .reseal(&access_token_purpose(&domain), &admin.access_token_sealed)
                    .with_context(|| format!("{domain}: the Admin API access token"))?;
            }
            Ok((store_key(&domain), store))
        })
        .collect()
}

/// Reads the stores topic to its end, re-seals every store's secrets under `key`'s current key
/// and publishes them; returns how many stores were published.
pub async fn reseal_stores(bootstrap: &str, key: &MasterKey) -> anyhow::Result<usize> {
    let table: Arc<Mutex<HashMap<String, Store>>> = Arc::default();
    let writer = table.clone();
    let shutdown = CancellationToken::new();
    follow_table::<Store, _>(
        bootstrap,
        topics::STORES,
        &shutdown,
        move |key, store, _| {
            let mut table = writer.lock().unwrap_or_else(|p| p.into_inner());
            match store {
                Some(store) => table.insert(key.to_owned(), store),
                None => table.remove(key),
            };
        },
    )
    .await?;
    shutdown.cancel();
    let stores: Vec<Store> = std::mem::take(&mut *table.lock().unwrap_or_else(|p| p.into_inner()))
        .into_values()
        .collect();
    publish(bootstrap, topics::STORES, &resealed(stores, key)?).await
}
