//! `tributary.toml`, with environment overrides: `TRIBUTARY_<SECTION>__<KEY>`, e.g.
//! `TRIBUTARY_KAFKA__BOOTSTRAP_SERVERS=broker:9092`. Unknown keys are rejected.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use tributary_runtime::member::{Brokers, Membership};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub ingest: IngestSection,
    #[serde(default)]
    pub processor: ProcessorSection,
    #[serde(default)]
    pub events: EventsSection,
    #[serde(default)]
    pub clickhouse: ClickHouseSection,
    /// `[shopify]`: how the Admin API is reached (version, timeouts, a fake's address).
    #[serde(default)]
    pub shopify: tributary_shopify::AdminConfig,
    /// `[writeback]`: tags and notes written back to Shopify.
    #[serde(default)]
    pub writeback: tributary_sinks::shopify::writeback::WritebackConfig,
    /// `[store_credit]`: approved rewards pushed to the advocates' Shopify store credit.
    #[serde(default)]
    pub store_credit: tributary_sinks::shopify::store_credit::StoreCreditConfig,
    /// `[reconcile]`: the reconciliation pull (scheduled in the ingest service, and
    /// `tributary reconcile`).
    #[serde(default)]
    pub reconcile: tributary_ingest::shopify_reconcile::Config,
    /// `[connections]`: the control plane (`tributary control`).
    #[serde(default)]
    pub connections: tributary_control::connections::ConnectionsConfig,
    #[serde(default)]
    pub secrets: SecretsConfig,
    #[serde(default)]
    pub ops: OpsConfig,
    /// `[http]`: limits of every HTTP endpoint the process serves (webhooks, the control plane's
    /// API, ops): connections at once and read timeouts.
    #[serde(default)]
    pub http: tributary_runtime::ops::HttpLimits,
}

/// `[kafka]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Brokers to use. Unset: `tributary run` starts the embedded broker (librdkafka's mock
    /// cluster) in process; the other services refuse to start.
    #[serde(default)]
    pub bootstrap_servers: Option<String>,
    /// Partitions of each partitioned topic (`tributary topics create`).
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor of each topic.
    #[serde(default = "default_replication")]
    pub replication: i32,
    /// Static group membership: a name unique to this process and stable across its restarts (a
    /// host or pod name). A restarted service then gets its partitions back at once instead of
    /// after its predecessor's session timeout. Unset: dynamic membership. See
    /// `tributary_runtime::member::Membership`.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// How long a consumer may go without polling before its group evicts it (librdkafka's
    /// `max.poll.interval.ms`; unset: 300,000). Stages keep polling while they retry.
    #[serde(default)]
    pub max_poll_interval_ms: Option<u64>,
}

impl KafkaConfig {
    /// The cluster at `bootstrap_servers`, joined as this config says.
    pub fn brokers(&self, bootstrap_servers: &str) -> Brokers {
        Brokers {
            bootstrap_servers: bootstrap_servers.to_owned(),
            membership: Membership {
                instance_id: self.instance_id.clone(),
                max_poll_interval_ms: self.max_poll_interval_ms,
            },
        }
    }
}

fn default_partitions() -> i32 {
    6
}
fn default_replication() -> i32 {
    1
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: None,
            partitions: default_partitions(),
            replication: default_replication(),
            instance_id: None,
            max_poll_interval_ms: None,
        }
    }
}

/// `[secrets]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// File holding the base64 AES-256 master key; `TRIBUTARY_MASTER_KEY` takes precedence.
    /// Generated on first use when missing.
    #[serde(default = "default_master_key_file")]
    pub master_key_file: PathBuf,
}

fn default_master_key_file() -> PathBuf {
    PathBuf::from(".tributary/master.key")
}

impl Default for SecretsConfig {
    fn default() -> Self {
        Self {
            master_key_file: default_master_key_file(),
        }
    }
}

/// `[ops]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    /// Where `/healthz`, `/readyz` and `/metrics` are served for `process` and `sink` (ingest
    /// serves them beside the webhook route).
    #[serde(default = "default_ops_listen")]
    pub listen: std::net::SocketAddr,
}

fn default_ops_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 9100))
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            listen: default_ops_listen(),
        }
    }
}

// The library config structs are re-exported so their doc comments document the file.
pub type IngestSection = tributary_ingest::shopify_webhooks::Config;
pub type ProcessorSection = tributary_processors::runner::Config;
pub type EventsSection = tributary_processors::customer_events::Config;
pub type ClickHouseSection = tributary_sinks::clickhouse::Config;

impl Config {
    /// What `tributary control` needs of the configuration.
    pub fn control_plane(&self) -> tributary_control::connections::ControlPlaneConfig {
        tributary_control::connections::ControlPlaneConfig {
            connections: self.connections.clone(),
            shopify: self.shopify.clone(),
            master_key_file: self.secrets.master_key_file.clone(),
            http: self.http.clone(),
        }
    }

    /// Defaults, then the file (if any), then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) if !path.exists() => {
                anyhow::bail!("config file {} not found", path.display())
            }
            Some(path) => figment = figment.merge(Toml::file(path)),
            None if Path::new("tributary.toml").exists() => {
                figment = figment.merge(Toml::file("tributary.toml"))
            }
            None => {}
        }
        // Only section-qualified variables are config; TRIBUTARY_CONFIG, TRIBUTARY_MASTER_KEY and
        // the scripts' own variables are not.
        figment = figment.merge(
            Env::prefixed("TRIBUTARY_")
                .filter(|key| key.as_str().contains("__"))
                .split("__"),
        );
        let config: Config = figment.extract()?;
        config.ingest.validate().map_err(anyhow::Error::msg)?;
        Ok(config)
    }
}
