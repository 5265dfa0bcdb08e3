//! Stores and advocates as the processors see them, indexed for attribution. Fed by the control
//! topics through [`tributary_schemas::control::follow`].

use std::collections::HashMap;

use tributary_schemas::{Advocate, AdvocateStatus, Store, StoreStatus};

/// Codes compare after trimming and uppercasing.
pub fn normalize_code(code: &str) -> String {
    code.trim().to_uppercase()
}

/// Identifiers (share links) compare case-insensitively.
pub fn normalize_identifier(identifier: &str) -> String {
    identifier.trim().to_lowercase()
}

#[derive(Debug, Default)]
pub struct ShopAdvocates {
    by_id: HashMap<String, Advocate>,
    id_by_code: HashMap<String, String>,
    id_by_identifier: HashMap<String, String>,
}

impl ShopAdvocates {
    fn upsert(&mut self, advocate: Advocate) {
        self.remove(&advocate.id.clone());
        for code in &advocate.codes {
            self.id_by_code
                .insert(normalize_code(code), advocate.id.clone());
        }
        self.id_by_identifier.insert(
            normalize_identifier(&advocate.identifier),
            advocate.id.clone(),
        );
        self.by_id.insert(advocate.id.clone(), advocate);
    }

    fn remove(&mut self, id: &str) {
        if let Some(old) = self.by_id.remove(id) {
            for code in &old.codes {
                self.id_by_code.remove(&normalize_code(code));
            }
            self.id_by_identifier
                .remove(&normalize_identifier(&old.identifier));
        }
    }

    fn active(&self, id: Option<&String>) -> Option<&Advocate> {
        id.and_then(|id| self.by_id.get(id))
            .filter(|a| a.status == AdvocateStatus::Active)
    }

    /// The active advocate owning `code` (any case, surrounding spaces ignored).
    pub fn by_code(&self, code: &str) -> Option<&Advocate> {
        self.active(self.id_by_code.get(&normalize_code(code)))
    }

    /// The active advocate whose identifier is `identifier` (any case).
    pub fn by_identifier(&self, identifier: &str) -> Option<&Advocate> {
        self.active(self.id_by_identifier.get(&normalize_identifier(identifier)))
    }
}

#[derive(Debug, Default)]
pub struct Control {
    stores: HashMap<String, Store>,
    advocates: HashMap<String, ShopAdvocates>,
    empty: ShopAdvocates,
}

impl Control {
    pub fn apply_store(&mut self, key: &str, store: Option<Store>) {
        match store {
            Some(store) => self.stores.insert(key.to_ascii_lowercase(), store),
            None => self.stores.remove(&key.to_ascii_lowercase()),
        };
    }

    /// Applies an advocate record; a tombstone's key is `<shop>/<advocate id>`.
    pub fn apply_advocate(&mut self, key: &str, advocate: Option<Advocate>) {
        match advocate {
            Some(advocate) => self
                .advocates
                .entry(advocate.shop_domain.to_ascii_lowercase())
                .or_default()
                .upsert(advocate),
            None => {
                if let Some((shop, id)) = key.rsplit_once('/') {
                    if let Some(shop) = self.advocates.get_mut(&shop.to_ascii_lowercase()) {
                        shop.remove(id);
                    }
                }
            }
        }
    }

    /// A store whose webhooks are processed: connected and not disconnected.
    pub fn active_store(&self, domain: &str) -> Option<&Store> {
        self.stores
            .get(domain)
            .filter(|s| s.status != StoreStatus::Disconnected)
    }

    pub fn advocates(&self, domain: &str) -> &ShopAdvocates {
        self.advocates.get(domain).unwrap_or(&self.empty)
    }
}
