//! The receiver's view of connected stores: domain → opened webhook secrets, fed by the stores
//! control topic.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tributary_runtime::secrets::{webhook_secret_purpose, MasterKey, Secret};
use tributary_schemas::{Store, StoreStatus};

#[derive(Clone, Default)]
pub struct StoreSecrets {
    by_domain: Arc<RwLock<HashMap<String, Vec<Secret>>>>,
}

impl StoreSecrets {
    /// Applies one control record: an active or locked store's secrets are opened and kept (a
    /// locked store still receives webhooks; locking stops writeback, not ingestion); a disconnected
    /// store or a tombstone is removed at once.
    pub fn apply(&self, key: &str, store: Option<Store>, master_key: &MasterKey) {
        let secrets = store.filter(|s| s.status != StoreStatus::Disconnected).map(|s| {
            let purpose = webhook_secret_purpose(&s.domain);
            s.webhook_secrets_sealed
                .iter()
                .filter_map(|sealed| match master_key.open(&purpose, sealed) {
                    Ok(secret) => Some(secret),
                    Err(error) => {
                        tracing::error!(store = %s.domain, %error, "webhook secret does not open; check the master key");
                        None
                    }
                })
                .collect::<Vec<_>>()
        });
        let mut map = self.by_domain.write().unwrap_or_else(|p| p.into_inner());
        match secrets {
            Some(secrets) => map.insert(key.to_ascii_lowercase(), secrets),
            None => map.remove(&key.to_ascii_lowercase()),
        };
    }

    pub fn secrets_for(&self, domain: &str) -> Option<Vec<Secret>> {
        self.by_domain
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(domain)
            .cloned()
    }
}
