//! Operator files for control data: stores (TOML) and advocates (CSV), published to the control
//! topics. Webhook secrets are sealed with the master key before they leave this process.
//!
//! `stores.toml`:
//! ```toml
//! [[store]]
//! domain = "demo-outdoors.myshopify.com"
//! webhook_secrets = ["current", "previous-during-rotation"]
//! settle_delay_minutes = 0
//! excluded_channels = ["pos"]
//! excluded_tags = ["Exclude"]
//! excluded_codes = ["HOLIDAY"]
//! features = { order_attribution = true, attribution_rewards = true }
//! reward = { name = "Referral", basis = "per_unit", points = "0.1", auto_approve = false }
//! admin = { access_token = "shpat_...", tag_prefix = "tributary", code_pattern = "{{advocate_identifier}}-{{random_hex_4}}", discount_template_id = "gid://shopify/DiscountCodeNode/1" }
//! ```
//! `advocates.csv` columns: `shop_domain,id,identifier,first_name,email,status,codes`, with
//! `status` `active` or `inactive` and `codes` separated by `;`.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rdkafka::producer::FutureProducer;
use rdkafka::Message;
use serde::Deserialize;
use tributary_runtime::control::{normalize_code, normalize_identifier};
use tributary_runtime::credentials::seal_new;
use tributary_runtime::kafka::{now_ms, producer_config, publish_record, read_topic};
use tributary_runtime::secrets::{access_token_purpose, webhook_secret_purpose, MasterKey};
use tributary_schemas::topics::{self, advocate_key, store_key};
use tributary_schemas::{
    Advocate, AdvocateStatus, AvroRecord, Credential, CredentialGrant, OperatorCommand,
    RewardActivity, Store, StoreAdmin, StoreFeatures, StoreStatus, WebhookEnvelope,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoresFile {
    #[serde(default)]
    pub store: Vec<StoreEntry>,
}

/// One `[[store]]` of `stores.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreEntry {
    /// The shop's `*.myshopify.com` domain.
    pub domain: String,
    /// App secrets that sign webhooks: the current one first, the previous one during a rotation.
    pub webhook_secrets: Vec<String>,
    /// Minutes an order is held before it is attributed (0: at once).
    #[serde(default)]
    pub settle_delay_minutes: i32,
    /// `source_name` values whose orders are excluded (e.g. `pos`).
    #[serde(default)]
    pub excluded_channels: Vec<String>,
    /// Order tags that exclude an order (e.g. `Exclude`).
    #[serde(default)]
    pub excluded_tags: Vec<String>,
    /// Coupon codes that never attribute (site-wide, holiday codes).
    #[serde(default)]
    pub excluded_codes: Vec<String>,
    /// Feature toggles; all off unless set.
    #[serde(default)]
    pub features: StoreFeatures,
    /// The activity definition rewards are earned under (with `features.attribution_rewards`):
    /// `basis` `fixed` (`points` per order) or `per_unit` (`points` per unit of gross), and
    /// `auto_approve`.
    #[serde(default)]
    pub reward: Option<RewardActivity>,
    /// Admin API access, for writeback and code minting. Without it nothing is written to
    /// Shopify, whatever the toggles say.
    #[serde(default)]
    pub admin: Option<AdminEntry>,
    /// Set to true to disconnect the store.
    #[serde(default)]
    pub disconnected: bool,
}

/// A store's `admin = { ... }`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminEntry {
    /// The Admin API access token that does not expire; sealed before it leaves this process.
    /// Empty with an expiring credential (`client_id`).
    #[serde(default)]
    pub access_token: String,
    /// An access token that expires, from the app's `client_id` and `client_secret`: with
    /// `refresh_token`, Shopify's expiring offline token, refreshed with a refresh token that
    /// rotates on use; without, the client credentials grant (Dev Dashboard apps). Sealed into
    /// `tributary.control.credentials`; the first use refreshes (see
    /// `tributary_runtime::credentials`).
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub client_secret: Option<String>,
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// Writeback tags are `<prefix>` and `<prefix>:advocate:<identifier>`.
    #[serde(default = "default_tag_prefix")]
    pub tag_prefix: String,
    /// The pattern discount codes are minted from (see `tributary codes`).
    #[serde(default)]
    pub code_pattern: Option<String>,
    /// The code discount minted codes are added to.
    #[serde(default)]
    pub discount_template_id: Option<String>,
}

impl std::fmt::Debug for AdminEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminEntry")
            .field("tag_prefix", &self.tag_prefix)
            .finish_non_exhaustive()
    }
}

fn default_tag_prefix() -> String {
    "tributary".into()
}

impl StoresFile {
    /// Reads and parses `path`. A parse error names the line and column and what is wrong, but
    /// never quotes the file: its lines hold webhook secrets and Admin tokens, and the error goes
    /// to terminals and CI logs.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).map_err(|error| anyhow::anyhow!("parsing {}: {error}", path.display()))
    }

    /// The longest settle delay a store may set: a week, in minutes.
    pub const MAX_SETTLE_DELAY_MINUTES: i32 = 7 * 24 * 60;

    /// Every problem that makes the file unfit to load, by store: a domain that is not a
    /// `<name>.myshopify.com` (see [`topics::shop_domain`]) or appears twice, no webhook secret
    /// or a blank one, a settle delay outside 0 to a week, a blank Admin token, or a code pattern
    /// that [`codes::validate`](tributary_sinks::shopify::codes::validate) refuses. Never quotes a
    /// secret.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        let mut seen = HashSet::new();
        for (index, entry) in self.store.iter().enumerate() {
            let name = format!("store {} ({})", index + 1, entry.domain.trim());
            match topics::shop_domain(&entry.domain) {
                None => problems.push(format!(
                    "{name}: the domain must be the store's <name>.myshopify.com"
                )),
                Some(domain) if !seen.insert(domain.clone()) => {
                    problems.push(format!("{name}: {domain} appears twice"))
                }
                Some(_) => {}
            }
            if entry.webhook_secrets.is_empty()
                || entry.webhook_secrets.iter().any(|s| s.trim().is_empty())
            {
                problems.push(format!(
                    "{name}: webhook_secrets needs at least one secret, none blank"
                ));
            }
            if !(0..=Self::MAX_SETTLE_DELAY_MINUTES).contains(&entry.settle_delay_minutes) {
                problems.push(format!(
                    "{name}: settle_delay_minutes must be 0 to {} (a week), not {}",
                    Self::MAX_SETTLE_DELAY_MINUTES,
                    entry.settle_delay_minutes
                ));
            }
            if let Some(admin) = &entry.admin {
                let blank = |v: &Option<String>| v.as_deref().is_none_or(|v| v.trim().is_empty());
                let expiring = admin.client_id.is_some() || admin.client_secret.is_some();
                if expiring && (blank(&admin.client_id) || blank(&admin.client_secret)) {
                    problems.push(format!(
                        "{name}: admin.client_id and admin.client_secret go together, neither blank"
                    ));
                }
                if !expiring && admin.access_token.trim().is_empty() {
                    problems.push(format!(
                        "{name}: admin needs an access_token, or a client_id and client_secret"
                    ));
                }
                if let Some(pattern) = &admin.code_pattern {
                    if let Err(error) = tributary_sinks::shopify::codes::validate(pattern) {
                        problems.push(format!("{name}: admin.code_pattern: {error}"));
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Parses the text of a stores file; errors as [`StoresFile::read`] describes them.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|error: toml::de::Error| {
            let at = error.span().map_or_else(String::new, |span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("line {line}, column {column}: ")
            });
            format!("{at}{}", redact_quoted(error.message()))
        })
    }
}

/// `message` with every double-quoted part replaced by `"…"`: serde quotes the offending value
/// (`invalid type: string "…", expected a sequence`), which may be a secret.
fn redact_quoted(message: &str) -> String {
    let mut redacted = String::with_capacity(message.len());
    for (index, part) in message.split('"').enumerate() {
        redacted.push_str(if index % 2 == 1 { "\"…\"" } else { part });
    }
    redacted
}

#[derive(Debug, Clone, Deserialize)]
pub struct AdvocateLine {
    pub shop_domain: String,
    pub id: String,
    pub identifier: String,
    pub first_name: String,
    pub email: String,
    pub status: String,
    pub codes: String,
}

impl AdvocateLine {
    pub fn codes(&self) -> Vec<String> {
        self.codes
            .split(';')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect()
    }

    pub fn active(&self) -> bool {
        self.status.trim().eq_ignore_ascii_case("active")
    }
}

pub fn read_advocates(path: &Path) -> anyhow::Result<Vec<AdvocateLine>> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = Vec::new();
    for (index, line) in reader.deserialize().enumerate() {
        let line: AdvocateLine =
            line.with_context(|| format!("{} line {}", path.display(), index + 2))?;
        if !matches!(
            line.status.trim().to_ascii_lowercase().as_str(),
            "active" | "inactive"
        ) {
            anyhow::bail!(
                "{} line {}: status must be active or inactive",
                path.display(),
                index + 2
            );
        }
        lines.push(line);
    }
    Ok(lines)
}

pub fn store_record(entry: &StoreEntry, master_key: &MasterKey) -> Store {
    let domain = entry.domain.trim().to_ascii_lowercase();
    let purpose = webhook_secret_purpose(&domain);
    Store {
        webhook_secrets_sealed: entry
            .webhook_secrets
            .iter()
            .map(|s| master_key.seal(&purpose, s))
            .collect(),
        status: if entry.disconnected {
            StoreStatus::Disconnected
        } else {
            StoreStatus::Active
        },
        settle_delay_minutes: entry.settle_delay_minutes,
        excluded_channels: entry.excluded_channels.clone(),
        excluded_tags: entry.excluded_tags.clone(),
        excluded_codes: entry.excluded_codes.clone(),
        features: entry.features.clone(),
        reward_activity: entry.reward.clone(),
        admin: entry.admin.as_ref().map(|admin| StoreAdmin {
            access_token_sealed: master_key
                .seal(&access_token_purpose(&domain), &admin.access_token),
            tag_prefix: admin.tag_prefix.clone(),
            code_pattern: admin.code_pattern.clone(),
            discount_template_id: admin.discount_template_id.clone(),
            api_version: String::new(),
            product_count: 0,
            last_synced_at_ms: 0,
        }),
        team_id: None,
        updated_at_ms: now_ms(),
        domain,
    }
}

pub fn advocate_record(line: &AdvocateLine) -> Advocate {
    Advocate {
        shop_domain: line.shop_domain.trim().to_ascii_lowercase(),
        id: line.id.trim().to_owned(),
        identifier: line.identifier.trim().to_owned(),
        first_name: line.first_name.trim().to_owned(),
        email: line.email.trim().to_owned(),
        status: if line.active() {
            AdvocateStatus::Active
        } else {
            AdvocateStatus::Inactive
        },
        codes: line.codes(),
        updated_at_ms: now_ms(),
    }
}

/// Publishes records to a control topic and waits for every acknowledgement.
pub async fn publish<T: AvroRecord>(
    bootstrap: &str,
    topic: &str,
    records: &[(String, T)],
) -> anyhow::Result<usize> {
    let producer: FutureProducer = producer_config(bootstrap, Duration::from_secs(10)).create()?;
    for (key, record) in records {
        publish_record(&producer, topic, key, record)
            .await
            .with_context(|| format!("publishing to {topic}"))?;
    }
    Ok(records.len())
}

pub async fn load_stores(
    bootstrap: &str,
    path: &Path,
    master_key: &MasterKey,
) -> anyhow::Result<usize> {
    let file = StoresFile::read(path)?;
    if let Err(problems) = file.check() {
        anyhow::bail!(
            "{} refused, nothing published:\n  {}",
            path.display(),
            problems.join("\n  ")
        );
    }
    publish_stores(bootstrap, &file.store, master_key).await
}

/// Publishes store entries to the stores control topic, their secrets sealed with `master_key`.
pub async fn publish_stores(
    bootstrap: &str,
    entries: &[StoreEntry],
    master_key: &MasterKey,
) -> anyhow::Result<usize> {
    let records: Vec<(String, Store)> = entries
        .iter()
        .map(|entry| {
            let record = store_record(entry, master_key);
            (store_key(&record.domain), record)
        })
        .collect();
    // Expiring credentials first: a service that sees the store finds its credential. One that
    // works already is kept: its refresh token has rotated since the file was written, and the
    // file's would be refused (loading the file again must not lock the store). A locked one is
    // replaced: that is how a store is connected again.
    let expiring = entries
        .iter()
        .any(|e| e.admin.as_ref().is_some_and(|a| a.client_id.is_some()));
    let working: HashSet<String> = match expiring {
        true => read_credentials(bootstrap)
            .await?
            .into_iter()
            .filter(|c| c.failure.is_none())
            .map(|c| c.connection)
            .collect(),
        false => HashSet::new(),
    };
    let credentials: Vec<(String, Credential)> = entries
        .iter()
        .filter_map(|entry| {
            let admin = entry.admin.as_ref()?;
            let (id, secret) = (admin.client_id.as_ref()?, admin.client_secret.as_ref()?);
            let grant = match admin.refresh_token {
                Some(_) => CredentialGrant::RefreshToken,
                None => CredentialGrant::ClientCredentials,
            };
            let connection =
                tributary_shopify::oauth::connection(&entry.domain.trim().to_ascii_lowercase());
            if working.contains(&connection) {
                return None;
            }
            let record = seal_new(
                master_key,
                &connection,
                grant,
                id,
                secret,
                admin.refresh_token.as_deref(),
            );
            Some((connection, record))
        })
        .collect();
    publish(bootstrap, topics::CREDENTIALS, &credentials).await?;
    publish(bootstrap, topics::STORES, &records).await
}

/// The newest credential per connection in `tributary.control.credentials`.
async fn read_credentials(bootstrap: &str) -> anyhow::Result<Vec<Credential>> {
    let bootstrap = bootstrap.to_owned();
    tokio::task::spawn_blocking(move || {
        match newest_per_key::<Credential>(&bootstrap, topics::CREDENTIALS) {
            Ok(newest) => Ok(newest.into_values().collect()),
            // The first expiring credential of a deployment creates the topic.
            Err(tributary_runtime::kafka::TopicError::MissingTopic(_)) => Ok(Vec::new()),
            Err(error) => Err(error.into()),
        }
    })
    .await?
}

/// The newest record per key of a compacted topic (a tombstone removes its key; an unreadable
/// record is never a deletion: the last readable value stays). Blocking.
fn newest_per_key<T: AvroRecord>(
    bootstrap: &str,
    topic: &str,
) -> Result<HashMap<String, T>, tributary_runtime::kafka::TopicError> {
    let mut newest = HashMap::new();
    read_topic(bootstrap, topic, |m| {
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        match m.payload().map(T::from_avro) {
            Some(Ok(record)) => {
                newest.insert(key, record);
            }
            None => {
                newest.remove(&key);
            }
            Some(Err(_)) => {}
        }
    })?;
    Ok(newest)
}

/// Publishes an advocates file, after [`check_advocates`] against the stores and advocates already
/// in their topics; nothing is published if any line is refused.
pub async fn load_advocates(bootstrap: &str, path: &Path) -> anyhow::Result<usize> {
    let loaded: Vec<Advocate> = read_advocates(path)?.iter().map(advocate_record).collect();
    let (stores, current) = read_stores_and_advocates(bootstrap).await?;
    if let Err(problems) = check_advocates(&stores, &current, &loaded) {
        anyhow::bail!(
            "{} refused, nothing published:\n  {}",
            path.display(),
            problems.join("\n  ")
        );
    }
    let records: Vec<(String, Advocate)> = loaded
        .into_iter()
        .map(|record| (advocate_key(&record.shop_domain, &record.id), record))
        .collect();
    publish(bootstrap, topics::ADVOCATES, &records).await
}

/// The stores and advocates their control topics hold now (the newest record per key).
pub async fn read_stores_and_advocates(
    bootstrap: &str,
) -> anyhow::Result<(HashMap<String, Store>, Vec<Advocate>)> {
    let bootstrap = bootstrap.to_owned();
    tokio::task::spawn_blocking(move || {
        // Store keys are domains, written lowercased.
        let stores = newest_per_key::<Store>(&bootstrap, topics::STORES)?
            .into_iter()
            .map(|(key, store)| (key.to_ascii_lowercase(), store))
            .collect();
        let advocates = newest_per_key::<Advocate>(&bootstrap, topics::ADVOCATES)?;
        Ok((stores, advocates.into_values().collect()))
    })
    .await?
}

/// Refuses what would make a store's advocates ambiguous or unusable, naming every problem: a
/// line for a store that is not in the stores topic; an active advocate with a code the store
/// excludes (no order with it could ever be attributed); and a code or identifier held by two
/// active advocates of a store, counting those already loaded (a line replaces the loaded
/// advocate with its id), with both advocates named. Codes compare as attribution compares them
/// (trimmed, any case); identifiers in any case.
pub fn check_advocates(
    stores: &HashMap<String, Store>,
    current: &[Advocate],
    loaded: &[Advocate],
) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let replaced: HashSet<(&str, &str)> = loaded
        .iter()
        .map(|a| (a.shop_domain.as_str(), a.id.as_str()))
        .collect();
    let kept = current
        .iter()
        .filter(|a| !replaced.contains(&(a.shop_domain.as_str(), a.id.as_str())));
    // (shop, "code"/"identifier", value) → the first active advocate holding it.
    let mut holders: HashMap<(&str, &str, String), &Advocate> = HashMap::new();
    for advocate in kept.chain(loaded) {
        if advocate.status != AdvocateStatus::Active {
            continue;
        }
        let shop = advocate.shop_domain.as_str();
        let claims = advocate
            .codes
            .iter()
            .map(|c| ("code", normalize_code(c)))
            .chain([("identifier", normalize_identifier(&advocate.identifier))]);
        for (kind, value) in claims {
            match holders.entry((shop, kind, value)) {
                Entry::Occupied(held) if held.get().id != advocate.id => {
                    let ((_, _, value), other) = (held.key(), held.get());
                    problems.push(format!(
                        "{shop}: {kind} {value} is both advocate {} ({}) and advocate {} ({})'s; one {kind} belongs to one active advocate",
                        other.id, other.identifier, advocate.id, advocate.identifier
                    ));
                }
                Entry::Occupied(_) => {}
                Entry::Vacant(slot) => {
                    slot.insert(advocate);
                }
            }
        }
    }
    for advocate in loaded {
        let shop = advocate.shop_domain.as_str();
        let Some(store) = stores.get(shop) else {
            problems.push(format!(
                "advocate {}: store {shop} is not loaded (`tributary stores load` or connect it first)",
                advocate.id
            ));
            continue;
        };
        if advocate.status != AdvocateStatus::Active {
            continue;
        }
        for code in &advocate.codes {
            let code = normalize_code(code);
            if store
                .excluded_codes
                .iter()
                .any(|excluded| normalize_code(excluded) == code)
            {
                problems.push(format!(
                    "{shop}: advocate {}'s code {code} is one of the store's excluded codes; no order with it would be attributed",
                    advocate.id
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Queues operators' commands (manual attributions, reward approvals), (shop, command) each:
/// command records in their orders' own partitions of `shopify.webhooks`, so the processor applies
/// each in order with its order's events (and a replay applies it at the same point). Returns once
/// the broker has them.
pub async fn publish_commands(
    bootstrap: &str,
    commands: &[(String, OperatorCommand)],
) -> anyhow::Result<usize> {
    let (stores, _) = read_stores_and_advocates(bootstrap).await?;
    for (shop, _) in commands {
        if !stores
            .get(shop)
            .is_some_and(|s| s.status != tributary_schemas::StoreStatus::Disconnected)
        {
            anyhow::bail!("store {shop} is not connected; nothing was queued");
        }
    }
    let now = now_ms();
    let records: Vec<(String, WebhookEnvelope)> = commands
        .iter()
        .map(|(shop, command)| {
            let key = topics::order_key(shop, command.order_id());
            (key, WebhookEnvelope::operator_command(shop, command, now))
        })
        .collect();
    publish(bootstrap, topics::WEBHOOKS, &records).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_stores_file_never_quotes_its_secrets() {
        let text =
            "[[store]]\ndomain = \"a.myshopify.com\"\nwebhook_secrets = \"PLANTED-SECRET\"\n";
        let error = StoresFile::parse(text).expect_err("a string is not a list");
        assert!(!error.contains("PLANTED-SECRET"), "{error}");
        assert!(error.contains("expected a sequence"), "{error}");
        assert!(error.starts_with("line 3, column 19: "), "{error}");
    }

    #[test]
    fn an_expiring_credential_needs_its_client_id_and_secret_and_no_static_token() {
        let file = |admin: &str| {
            StoresFile::parse(&format!(
                "[[store]]\ndomain = \"a.myshopify.com\"\nwebhook_secrets = [\"s\"]\nadmin = {admin}\n"
            ))
            .unwrap()
            .check()
        };
        assert_eq!(
            file(r#"{ client_id = "id", client_secret = "secret", refresh_token = "r" }"#),
            Ok(())
        );
        assert_eq!(
            file(r#"{ client_id = "id", client_secret = "secret" }"#),
            Ok(())
        );
        assert_eq!(
            file(r#"{ client_id = "id" }"#),
            Err(vec![
                "store 1 (a.myshopify.com): admin.client_id and admin.client_secret go together, neither blank".to_owned()
            ])
        );
        assert_eq!(
            file("{ }"),
            Err(vec![
                "store 1 (a.myshopify.com): admin needs an access_token, or a client_id and client_secret".to_owned()
            ])
        );
    }

    #[test]
    fn a_stores_file_with_foreign_domains_no_secrets_or_a_negative_delay_is_refused() {
        let text = r#"
[[store]]
domain = "evil.com"
webhook_secrets = ["s"]
[[store]]
domain = "a.myshopify.com"
webhook_secrets = []
settle_delay_minutes = -5
[[store]]
domain = "A.myshopify.com"
webhook_secrets = ["s"]
admin = { access_token = "t", code_pattern = "SAME-FOR-ALL" }
"#;
        let problems = StoresFile::parse(text).unwrap().check().unwrap_err();
        assert_eq!(
            problems,
            vec![
                "store 1 (evil.com): the domain must be the store's <name>.myshopify.com",
                "store 2 (a.myshopify.com): webhook_secrets needs at least one secret, none blank",
                "store 2 (a.myshopify.com): settle_delay_minutes must be 0 to 10080 (a week), not -5",
                "store 3 (A.myshopify.com): a.myshopify.com appears twice",
                "store 3 (A.myshopify.com): admin.code_pattern: the code pattern has no {{advocate_identifier}} and no random variable: advocates would share codes",
            ]
        );
        let demo = StoresFile::read(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/demo/stores.toml"
        )))
        .unwrap();
        assert_eq!(demo.check(), Ok(()));
    }
}
