//! Connections, the control plane: teams, connecting a store, its status and feature toggles,
//! disconnecting it, and the health check. Served as an admin HTTP API by `tributary control`
//! (see [`router`]); the `tributary teams` and `tributary stores` commands call the same methods.
//!
//! Everything is kept in control topics, like the rest of tributary's control data: stores in
//! `tributary.control.stores` (secrets sealed), teams in `tributary.control.teams` (API keys as
//! SHA-256 digests only), alerts in `tributary.alerts`.
//!
//! Tenant isolation: every store operation is made *as a team*, and a store that is not the
//! team's answers exactly as a store that does not exist (404).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::RngCore;
use rdkafka::producer::FutureProducer;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tributary_runtime::control::Control;
use tributary_runtime::kafka::{now_ms, producer_config, publish_record};
use tributary_runtime::secrets::{access_token_purpose, webhook_secret_purpose, MasterKey};
use tributary_schemas::topics::{self, store_key};
use tributary_schemas::{
    Alert, AlertKind, AlertStatus, AvroRecord, Store, StoreAdmin, StoreFeatures, StoreStatus, Team,
};
use tributary_shopify::oauth::AccessTokens;
use tributary_shopify::operations::{SHOP, WEBHOOK_SUBSCRIPTIONS, WEBHOOK_SUBSCRIPTION_CREATE};
use tributary_shopify::{AdminClient, AdminError, StoreAccess};

/// What the control plane needs of tributary's configuration (`Config::control_plane` in the
/// binary gathers it).
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// `[connections]`.
    pub connections: ConnectionsConfig,
    /// `[shopify]`: how the Admin API is reached.
    pub shopify: tributary_shopify::AdminConfig,
    /// `[secrets] master_key_file`.
    pub master_key_file: std::path::PathBuf,
    /// `[http]`: limits of the admin API's endpoint.
    pub http: tributary_runtime::ops::HttpLimits,
}

/// `[connections]`: the control plane.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionsConfig {
    /// Where `tributary control` serves the admin API.
    pub listen: SocketAddr,
    /// The address Shopify delivers webhooks to (tributary's ingest), registered on connect.
    pub webhook_url: String,
    /// Seconds between health checks of every connected store (a day by default).
    pub health_interval_s: u64,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8082)),
            webhook_url: "http://127.0.0.1:8080/webhooks/shopify".into(),
            health_interval_s: 86_400,
        }
    }
}

/// The webhook topics every connected store is subscribed to. The privacy topics
/// (`customers/data_request`, `customers/redact`, `shop/redact`) are the app's mandatory
/// compliance webhooks, configured with the app in Shopify rather than through the API.
pub const WEBHOOK_TOPICS: [&str; 10] = [
    "ORDERS_CREATE",
    "ORDERS_UPDATED",
    "ORDERS_EDITED",
    "ORDERS_PAID",
    "ORDERS_FULFILLED",
    "ORDERS_CANCELLED",
    "REFUNDS_CREATE",
    "PRODUCTS_CREATE",
    "PRODUCTS_UPDATE",
    "APP_UNINSTALLED",
];

/// The access scopes the store's enabled features need.
pub fn needed_scopes(features: &StoreFeatures) -> Vec<&'static str> {
    let mut scopes = vec!["read_orders"];
    if features.order_notes || features.order_tags {
        scopes.push("write_orders");
    }
    if features.auto_mint_codes {
        scopes.push("write_discounts");
    }
    if features.reward_store_credit {
        scopes.extend([
            "read_customers",
            "read_store_credit_accounts",
            "read_store_credit_account_transactions",
            "write_store_credit_account_transactions",
        ]);
    }
    scopes
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("a valid team API key is required (Authorization: Bearer <key>)")]
    Unauthorized,
    #[error("no such store")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the store refused the access token")]
    TokenRefused,
    #[error("the store did not answer as expected: {0}")]
    Shopify(AdminError),
    #[error("the control topics are unavailable: {0}")]
    Kafka(String),
    /// A body the API cannot take: too large (413), not JSON by its content type (415), or not
    /// the request's shape (400, 422).
    #[error("{1}")]
    Body(StatusCode, String),
}

/// The longest access token or app secret taken, in bytes: Shopify's are under 100.
pub const MAX_CREDENTIAL_BYTES: usize = 512;
/// The largest request body the admin API reads, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

impl ConnectionError {
    fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::TokenRefused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Shopify(_) => StatusCode::BAD_GATEWAY,
            Self::Kafka(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Body(status, _) => *status,
        }
    }
}

impl IntoResponse for ConnectionError {
    fn into_response(self) -> Response {
        (self.status(), Json(json!({ "error": self.to_string() }))).into_response()
    }
}

impl From<AdminError> for ConnectionError {
    fn from(error: AdminError) -> Self {
        match error {
            AdminError::Unauthorized { .. } => Self::TokenRefused,
            other => Self::Shopify(other),
        }
    }
}

/// `POST /api/stores`. The secrets are sealed the moment they are read and never returned.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectRequest {
    pub domain: String,
    pub access_token: String,
    pub app_secret: String,
}

/// `PATCH /api/stores/{domain}`: the toggles to change, and the code settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreChanges {
    pub auto_mint_codes: Option<bool>,
    pub order_attribution: Option<bool>,
    pub order_notes: Option<bool>,
    pub order_tags: Option<bool>,
    pub attribution_rewards: Option<bool>,
    pub reward_store_credit: Option<bool>,
    pub code_pattern: Option<String>,
    pub discount_template_id: Option<String>,
}

/// What a team sees of a store: never a secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoreView {
    pub domain: String,
    pub connected: bool,
    /// `active`, `locked` or `disconnected`.
    pub status: String,
    /// RFC 3339, or null before the first check.
    pub last_synced_at: Option<String>,
    pub product_count: i64,
    pub api_version: String,
    pub features: BTreeMap<String, bool>,
}

impl StoreView {
    fn of(store: &Store) -> Self {
        let admin = store.admin.as_ref();
        let features = &store.features;
        Self {
            domain: store.domain.clone(),
            connected: store.status != StoreStatus::Disconnected && admin.is_some(),
            status: tributary_schemas::enum_label(&store.status).to_ascii_lowercase(),
            last_synced_at: admin
                .map(|a| a.last_synced_at_ms)
                .filter(|ms| *ms > 0)
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(|t| t.to_rfc3339()),
            product_count: admin.map_or(0, |a| a.product_count),
            api_version: admin.map(|a| a.api_version.clone()).unwrap_or_default(),
            features: [
                ("auto_mint_codes", features.auto_mint_codes),
                ("order_attribution", features.order_attribution),
                ("order_notes", features.order_notes),
                ("order_tags", features.order_tags),
                ("attribution_rewards", features.attribution_rewards),
                ("reward_store_credit", features.reward_store_credit),
            ]
            .into_iter()
            .map(|(name, on)| (name.to_owned(), on))
            .collect(),
        }
    }
}

/// The outcome of a health check.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HealthReport {
    pub domain: String,
    pub healthy: bool,
    pub problems: Vec<String>,
    pub store: StoreView,
}

pub struct ControlPlane {
    config: ConnectionsConfig,
    admin: AdminClient,
    master_key: MasterKey,
    /// Each store's Admin API token, refreshed where it expires.
    tokens: AccessTokens,
    control: Arc<RwLock<Control>>,
    teams: Arc<RwLock<HashMap<String, Team>>>,
    producer: FutureProducer,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ShopData {
    shop: ShopInfo,
    products_count: Count,
    current_app_installation: Installation,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ShopInfo {
    myshopify_domain: String,
}

#[derive(Deserialize)]
struct Count {
    count: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Installation {
    access_scopes: Vec<Scope>,
}

#[derive(Deserialize)]
struct Scope {
    handle: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Subscriptions {
    webhook_subscriptions: SubscriptionNodes,
}

#[derive(Deserialize)]
struct SubscriptionNodes {
    nodes: Vec<Subscription>,
}

#[derive(Deserialize)]
struct Subscription {
    topic: String,
    #[serde(default)]
    uri: Option<String>,
}

/// A team's API key: shown once, kept as its digest.
pub fn api_key_digest(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn normalize_domain(domain: &str) -> Result<String, ConnectionError> {
    tributary_schemas::topics::shop_domain(domain).ok_or_else(|| {
        ConnectionError::Invalid("domain must be the store's <name>.myshopify.com".into())
    })
}

impl ControlPlane {
    /// Follows the stores, advocates and teams topics; returns once they are read.
    pub async fn start(
        config: &ControlPlaneConfig,
        bootstrap: &str,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Self> {
        // First: without its key the control plane cannot seal what it is given.
        let master_key = MasterKey::load(&config.master_key_file)?;
        let control = tributary_runtime::control::follow_stores_and_advocates(
            bootstrap,
            shutdown,
            &tributary_runtime::ops::Readiness::default(),
        )
        .await?;
        let teams = Arc::new(RwLock::new(HashMap::new()));
        let table = teams.clone();
        tributary_runtime::control::follow_table::<Team, _>(
            bootstrap,
            topics::TEAMS,
            shutdown,
            move |key, team, _| {
                let mut teams = table.write().unwrap_or_else(|p| p.into_inner());
                match team {
                    Some(team) => teams.insert(key.to_owned(), team),
                    None => teams.remove(key),
                };
            },
        )
        .await?;
        let tokens =
            AccessTokens::follow(bootstrap, &config.shopify, master_key.clone(), shutdown).await?;
        Ok(Self {
            config: config.connections.clone(),
            admin: AdminClient::new(config.shopify.clone())?,
            master_key,
            tokens,
            control,
            teams,
            producer: producer_config(bootstrap, Duration::from_secs(10)).create()?,
        })
    }

    /// Creates a team; returns it with its API key, which is not kept anywhere.
    pub async fn create_team(&self, name: &str) -> Result<(Team, String), ConnectionError> {
        let mut bytes = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut bytes);
        let key = format!(
            "trb_{}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let team = Team {
            team_id: format!("team-{}", &api_key_digest(&key)[..12]),
            name: name.trim().to_owned(),
            api_key_sha256: api_key_digest(&key),
            created_at_ms: now_ms(),
        };
        self.publish(topics::TEAMS, &team.team_id, &team).await?;
        self.teams
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(team.team_id.clone(), team.clone());
        Ok((team, key))
    }

    /// The team whose API key this is.
    pub fn team_for_key(&self, key: &str) -> Result<String, ConnectionError> {
        let digest = api_key_digest(key.trim());
        self.teams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .find(|t| t.api_key_sha256 == digest)
            .map(|t| t.team_id.clone())
            .ok_or(ConnectionError::Unauthorized)
    }

    /// The team's store, or [`ConnectionError::NotFound`] (also when it is another team's).
    fn own_store(&self, team: &str, domain: &str) -> Result<Store, ConnectionError> {
        let domain = normalize_domain(domain).map_err(|_| ConnectionError::NotFound)?;
        self.control
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .store(&domain)
            .filter(|s| s.team_id.as_deref() == Some(team))
            .cloned()
            .ok_or(ConnectionError::NotFound)
    }

    pub fn list(&self, team: &str) -> Vec<StoreView> {
        let control = self.control.read().unwrap_or_else(|p| p.into_inner());
        let mut views: Vec<StoreView> = control
            .stores()
            .filter(|s| s.team_id.as_deref() == Some(team))
            .map(StoreView::of)
            .collect();
        views.sort_by(|a, b| a.domain.cmp(&b.domain));
        views
    }

    pub fn status(&self, team: &str, domain: &str) -> Result<StoreView, ConnectionError> {
        self.own_store(team, domain).map(|s| StoreView::of(&s))
    }

    /// Verifies the token against the store, registers the webhooks that are missing, and
    /// saves the store with its secrets sealed and every feature off. Connecting again (a new
    /// token, say) keeps the toggles and creates no second subscription.
    pub async fn connect(
        &self,
        team: &str,
        request: ConnectRequest,
    ) -> Result<StoreView, ConnectionError> {
        // Everything about the request is checked before anything is done in Shopify.
        let domain = normalize_domain(&request.domain)?;
        if request.access_token.trim().is_empty() || request.app_secret.trim().is_empty() {
            return Err(ConnectionError::Invalid(
                "access_token and app_secret are required".into(),
            ));
        }
        if request.access_token.len() > MAX_CREDENTIAL_BYTES
            || request.app_secret.len() > MAX_CREDENTIAL_BYTES
        {
            return Err(ConnectionError::Invalid(format!(
                "access_token and app_secret are at most {MAX_CREDENTIAL_BYTES} bytes"
            )));
        }
        let access = StoreAccess {
            shop_domain: &domain,
            access_token: request.access_token.trim(),
        };
        // The token first: only a team holding the store's token learns whether another team
        // has connected it.
        let shop: ShopData = self.admin.run(access, &SHOP, json!({})).await?;
        if !shop.shop.myshopify_domain.eq_ignore_ascii_case(&domain) {
            return Err(ConnectionError::Invalid(
                "the token belongs to a different store".into(),
            ));
        }
        let existing = self
            .control
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .store(&domain)
            .cloned();
        if let Some(other) = existing
            .as_ref()
            .filter(|s| s.team_id.as_deref() != Some(team))
            .filter(|s| s.status != StoreStatus::Disconnected)
        {
            tracing::warn!(
                domain = other.domain,
                team,
                "connect refused: another team's store"
            );
            return Err(ConnectionError::Conflict(
                "the store is connected by another team".into(),
            ));
        }
        self.subscribe_webhooks(access).await?;
        let previous = existing.filter(|s| s.status != StoreStatus::Disconnected);
        let admin_previous = previous.as_ref().and_then(|s| s.admin.clone());
        let store = Store {
            domain: domain.clone(),
            status: StoreStatus::Active,
            webhook_secrets_sealed: vec![self
                .master_key
                .seal(&webhook_secret_purpose(&domain), request.app_secret.trim())],
            settle_delay_minutes: previous.as_ref().map_or(10, |s| s.settle_delay_minutes),
            excluded_channels: previous
                .as_ref()
                .map_or_else(Vec::new, |s| s.excluded_channels.clone()),
            excluded_tags: previous
                .as_ref()
                .map_or_else(Vec::new, |s| s.excluded_tags.clone()),
            excluded_codes: previous
                .as_ref()
                .map_or_else(Vec::new, |s| s.excluded_codes.clone()),
            features: previous
                .as_ref()
                .map(|s| s.features.clone())
                .unwrap_or_default(),
            reward_activity: previous.as_ref().and_then(|s| s.reward_activity.clone()),
            admin: Some(StoreAdmin {
                access_token_sealed: self
                    .master_key
                    .seal(&access_token_purpose(&domain), request.access_token.trim()),
                tag_prefix: admin_previous
                    .as_ref()
                    .map_or_else(|| "tributary".into(), |a| a.tag_prefix.clone()),
                code_pattern: admin_previous.as_ref().and_then(|a| a.code_pattern.clone()),
                discount_template_id: admin_previous
                    .as_ref()
                    .and_then(|a| a.discount_template_id.clone()),
                api_version: self.admin.api_version().to_owned(),
                product_count: shop.products_count.count,
                last_synced_at_ms: now_ms(),
            }),
            team_id: Some(team.to_owned()),
            updated_at_ms: now_ms(),
        };
        tracing::info!(domain, team, "store connected");
        self.save(&store).await?;
        Ok(StoreView::of(&store))
    }

    /// Lists the store's subscriptions, then creates those missing for tributary's address.
    async fn subscribe_webhooks(&self, access: StoreAccess<'_>) -> Result<(), ConnectionError> {
        let existing: Subscriptions = self
            .admin
            .run(access, &WEBHOOK_SUBSCRIPTIONS, json!({}))
            .await?;
        let uri = &self.config.webhook_url;
        for topic in WEBHOOK_TOPICS {
            let present = existing
                .webhook_subscriptions
                .nodes
                .iter()
                .any(|s| s.topic == topic && s.uri.as_deref() == Some(uri.as_str()));
            if !present {
                self.admin
                    .run::<serde_json::Value>(
                        access,
                        &WEBHOOK_SUBSCRIPTION_CREATE,
                        json!({"topic": topic, "uri": uri}),
                    )
                    .await?;
            }
        }
        Ok(())
    }

    pub async fn change(
        &self,
        team: &str,
        domain: &str,
        changes: StoreChanges,
    ) -> Result<StoreView, ConnectionError> {
        let mut store = self.own_store(team, domain)?;
        if store.status == StoreStatus::Disconnected {
            return Err(ConnectionError::Conflict(
                "the store is disconnected".into(),
            ));
        }
        let features = &mut store.features;
        for (slot, value) in [
            (&mut features.auto_mint_codes, changes.auto_mint_codes),
            (&mut features.order_attribution, changes.order_attribution),
            (&mut features.order_notes, changes.order_notes),
            (&mut features.order_tags, changes.order_tags),
            (
                &mut features.attribution_rewards,
                changes.attribution_rewards,
            ),
            (
                &mut features.reward_store_credit,
                changes.reward_store_credit,
            ),
        ] {
            if let Some(value) = value {
                *slot = value;
            }
        }
        if let Some(admin) = store.admin.as_mut() {
            if let Some(pattern) = changes.code_pattern {
                tributary_sinks::shopify::codes::validate(&pattern)
                    .map_err(|e| ConnectionError::Invalid(e.to_string()))?;
                admin.code_pattern = Some(pattern);
            }
            if let Some(template) = changes.discount_template_id {
                admin.discount_template_id = Some(template);
            }
        }
        store.updated_at_ms = now_ms();
        self.save(&store).await?;
        Ok(StoreView::of(&store))
    }

    /// Stops processing for the store at once (every stage skips a disconnected store) and
    /// forgets its credentials. Codes already in Shopify stay there.
    pub async fn disconnect(&self, team: &str, domain: &str) -> Result<StoreView, ConnectionError> {
        let mut store = self.own_store(team, domain)?;
        store.status = StoreStatus::Disconnected;
        store.webhook_secrets_sealed.clear();
        store.admin = None;
        store.updated_at_ms = now_ms();
        tracing::info!(domain = store.domain, team, "store disconnected");
        self.save(&store).await?;
        Ok(StoreView::of(&store))
    }

    /// Checks the connection, the scopes the enabled features need and the webhook
    /// subscriptions. A failure locks the store and opens an alert; a recovery unlocks it and
    /// archives the alert.
    pub async fn check_health(&self, domain: &str) -> Result<HealthReport, ConnectionError> {
        let domain = normalize_domain(domain)?;
        let mut store = self
            .control
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .store(&domain)
            .cloned()
            .filter(|s| s.status != StoreStatus::Disconnected && s.admin.is_some())
            .ok_or(ConnectionError::NotFound)?;
        let mut problems = Vec::new();
        let sealed = store
            .admin
            .as_ref()
            .map(|a| a.access_token_sealed.clone())
            .unwrap_or_default();
        // A credential refused for good fails the check: the store is locked with an alert.
        match self.tokens.open(&domain, &sealed).await {
            Ok(token) => {
                let access = StoreAccess {
                    shop_domain: &domain,
                    access_token: token.expose(),
                };
                match self.admin.run::<ShopData>(access, &SHOP, json!({})).await {
                    Ok(shop) => {
                        let granted: Vec<String> = shop
                            .current_app_installation
                            .access_scopes
                            .into_iter()
                            .map(|s| s.handle)
                            .collect();
                        let missing: Vec<&str> = needed_scopes(&store.features)
                            .into_iter()
                            .filter(|s| !granted.iter().any(|g| g == s))
                            .collect();
                        if !missing.is_empty() {
                            problems.push(format!("missing scopes: {}", missing.join(", ")));
                        }
                        if let Some(admin) = store.admin.as_mut() {
                            admin.product_count = shop.products_count.count;
                            admin.api_version = self.admin.api_version().to_owned();
                        }
                        match self
                            .admin
                            .run::<Subscriptions>(access, &WEBHOOK_SUBSCRIPTIONS, json!({}))
                            .await
                        {
                            Ok(found) => {
                                let absent: Vec<&str> = WEBHOOK_TOPICS
                                    .into_iter()
                                    .filter(|t| {
                                        !found
                                            .webhook_subscriptions
                                            .nodes
                                            .iter()
                                            .any(|s| s.topic == *t)
                                    })
                                    .collect();
                                if !absent.is_empty() {
                                    problems.push(format!(
                                        "webhooks not subscribed: {}",
                                        absent.join(", ")
                                    ));
                                }
                            }
                            Err(error) => problems.push(ConnectionError::from(error).to_string()),
                        }
                    }
                    Err(error) => problems.push(ConnectionError::from(error).to_string()),
                }
            }
            Err(error) => problems.push(error.to_string()),
        }
        let now = now_ms();
        let alert = |status: AlertStatus, message: String| Alert {
            alert_id: format!("{domain}/CONNECTION_UNHEALTHY/connection"),
            shop_domain: domain.clone(),
            kind: AlertKind::ConnectionUnhealthy,
            status,
            message,
            raised_at_ms: now,
            updated_at_ms: now,
        };
        if problems.is_empty() {
            if store.status == StoreStatus::Locked {
                tracing::info!(domain, "health check passed; store unlocked");
                let archived = alert(AlertStatus::Archived, "the connection recovered".into());
                self.publish(topics::ALERTS, &archived.alert_id, &archived)
                    .await?;
            }
            store.status = StoreStatus::Active;
            if let Some(admin) = store.admin.as_mut() {
                admin.last_synced_at_ms = now;
            }
        } else {
            tracing::warn!(
                domain,
                problems = problems.join("; "),
                "health check failed; store locked"
            );
            store.status = StoreStatus::Locked;
            let open = alert(AlertStatus::Open, problems.join("; "));
            self.publish(topics::ALERTS, &open.alert_id, &open).await?;
        }
        store.updated_at_ms = now;
        self.save(&store).await?;
        Ok(HealthReport {
            domain,
            healthy: problems.is_empty(),
            problems,
            store: StoreView::of(&store),
        })
    }

    /// Checks every connected store (active or locked).
    pub async fn check_all(&self) -> Vec<Result<HealthReport, ConnectionError>> {
        let domains: Vec<String> = self
            .control
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .stores()
            .filter(|s| s.status != StoreStatus::Disconnected && s.admin.is_some())
            .map(|s| s.domain.clone())
            .collect();
        let mut reports = Vec::new();
        for domain in domains {
            reports.push(self.check_health(&domain).await);
        }
        reports
    }

    /// Publishes the store and applies it here at once, so this process reads its own write.
    async fn save(&self, store: &Store) -> Result<(), ConnectionError> {
        let key = store_key(&store.domain);
        let (_, offset) = self.publish(topics::STORES, &key, store).await?;
        self.control
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .apply_store(&key, Some(store.clone()), offset);
        Ok(())
    }

    async fn publish<T: AvroRecord>(
        &self,
        topic: &str,
        key: &str,
        record: &T,
    ) -> Result<(i32, i64), ConnectionError> {
        publish_record(&self.producer, topic, key, record)
            .await
            .map_err(|e| ConnectionError::Kafka(e.to_string()))
    }

    pub fn health_interval(&self) -> Duration {
        Duration::from_secs(self.config.health_interval_s.max(1))
    }
}

/// The admin API. Every route needs `Authorization: Bearer <team API key>`.
///
/// | method | path | |
/// |---|---|---|
/// | GET | `/api/stores` | the team's stores |
/// | POST | `/api/stores` | connect `{domain, access_token, app_secret}` |
/// | GET | `/api/stores/{domain}` | status |
/// | PATCH | `/api/stores/{domain}` | toggles and code settings |
/// | DELETE | `/api/stores/{domain}` | disconnect |
/// | POST | `/api/stores/{domain}/health` | run the health check now |
pub fn router(plane: Arc<ControlPlane>) -> Router {
    Router::new()
        .route("/api/stores", get(list_stores).post(connect_store))
        .route(
            "/api/stores/{domain}",
            get(store_status)
                .patch(change_store)
                .delete(disconnect_store),
        )
        .route("/api/stores/{domain}/health", post(store_health))
        .route("/healthz", get(|| async { "ok" }))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(plane)
}

fn team(plane: &ControlPlane, headers: &HeaderMap) -> Result<String, ConnectionError> {
    let key = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        // The scheme is case-insensitive (RFC 9110, section 11.1).
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim())
        .ok_or(ConnectionError::Unauthorized)?;
    plane.team_for_key(key)
}

fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ConnectionError> {
    // The rejection's text names the problem (a missing field, bad JSON), never the values.
    body.map(|Json(b)| b).map_err(|e| {
        // 422 means a refused token in this API; a body of the wrong shape is a 400.
        let status = match e.status() {
            StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
            other => other,
        };
        ConnectionError::Body(status, e.body_text())
    })
}

async fn list_stores(
    State(plane): State<Arc<ControlPlane>>,
    headers: HeaderMap,
) -> Result<Json<Vec<StoreView>>, ConnectionError> {
    let team = team(&plane, &headers)?;
    Ok(Json(plane.list(&team)))
}

async fn connect_store(
    State(plane): State<Arc<ControlPlane>>,
    headers: HeaderMap,
    request: Result<Json<ConnectRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<StoreView>), ConnectionError> {
    let team = team(&plane, &headers)?;
    let view = plane.connect(&team, body(request)?).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn store_status(
    State(plane): State<Arc<ControlPlane>>,
    headers: HeaderMap,
    Path(domain): Path<String>,
) -> Result<Json<StoreView>, ConnectionError> {
    let team = team(&plane, &headers)?;
    plane.status(&team, &domain).map(Json)
}

async fn change_store(
    State(plane): State<Arc<ControlPlane>>,
    headers: HeaderMap,
    Path(domain): Path<String>,
    changes: Result<Json<StoreChanges>, JsonRejection>,
) -> Result<Json<StoreView>, ConnectionError> {
    let team = team(&plane, &headers)?;
    plane.change(&team, &domain, body(changes)?).await.map(Json)
}

async fn disconnect_store(
    State(plane): State<Arc<ControlPlane>>,
    headers: HeaderMap,
    Path(domain): Path<String>,
) -> Result<Json<StoreView>, ConnectionError> {
    let team = team(&plane, &headers)?;
    plane.disconnect(&team, &domain).await.map(Json)
}

async fn store_health(
    State(plane): State<Arc<ControlPlane>>,
    headers: HeaderMap,
    Path(domain): Path<String>,
) -> Result<Json<HealthReport>, ConnectionError> {
    let team = team(&plane, &headers)?;
    plane.own_store(&team, &domain)?;
    plane.check_health(&domain).await.map(Json)
}

/// `tributary control`: the admin API, and the health check of every store each interval.
pub async fn run_control(
    config: &ControlPlaneConfig,
    bootstrap: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let plane = Arc::new(ControlPlane::start(config, bootstrap, &shutdown).await?);
    let checker = plane.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(checker.health_interval()) => {}
            }
            for report in checker.check_all().await {
                if let Err(error) = report {
                    tracing::warn!(%error, "health check did not run");
                }
            }
        }
    });
    Ok(tributary_runtime::ops::serve_with(
        config.connections.listen,
        router(plane),
        &config.http,
        shutdown,
    )
    .await?)
}
