//! Rust types for every topic's records. Field names and order follow the `.avsc` files.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::avro_record;

/// The name an enum value has in the topics (e.g. `ATTRIBUTED`), for tables and events.
pub fn enum_label<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// One Shopify webhook delivery as received (topic `shopify.webhooks`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEnvelope {
    pub source: String,
    pub shop_domain: String,
    pub topic: String,
    pub webhook_id: String,
    pub event_id: Option<String>,
    pub triggered_at_ms: i64,
    pub api_version: String,
    pub received_at_ms: i64,
    #[serde(with = "apache_avro::serde_avro_bytes")]
    pub body: Vec<u8>,
}
avro_record!(WebhookEnvelope, "webhook_envelope");

impl WebhookEnvelope {
    pub const SOURCE_WEBHOOK: &'static str = "shopify_webhook";
    /// An order read through the Admin API by the reconciliation pull (or re-read after an
    /// `orders/edited`); its topic is [`Self::TOPIC_ADMIN_ORDER`].
    pub const SOURCE_RECONCILE: &'static str = "shopify_reconcile";
    /// The topic of a reconciled order: its body is the Admin GraphQL API's `Order` node as
    /// Shopify answered it (`tributary_shopify::operations::RECONCILE_ORDERS`), camelCase with
    /// gid ids, which the normalizer maps to the same event as an order webhook.
    pub const TOPIC_ADMIN_ORDER: &'static str = "admin_api/order";
    /// The processor's own record: it carries only an event time, written into a partition that
    /// holds orders but has been idle, so that they settle (see `processors::state`).
    pub const SOURCE_IDLE_TICK: &'static str = "tributary_idle_tick";

    pub fn idle_tick(partition: i32, now_ms: i64) -> Self {
        Self {
            source: Self::SOURCE_IDLE_TICK.into(),
            shop_domain: String::new(),
            topic: String::new(),
            webhook_id: format!("tick-{partition}-{now_ms}"),
            event_id: None,
            triggered_at_ms: now_ms,
            api_version: String::new(),
            received_at_ms: now_ms,
            body: Vec::new(),
        }
    }

    pub fn is_idle_tick(&self) -> bool {
        self.source == Self::SOURCE_IDLE_TICK
    }

    /// Whether the trigger time is the shop's event time, which moves a partition's watermark.
    /// An operator's command carries the operator's wall clock instead.
    pub fn carries_event_time(&self) -> bool {
        self.source != Self::SOURCE_MANUAL
    }

    /// An operator's command, written into the order's own partition so that it is ordered with
    /// the order's events and a replay applies it at the same point.
    pub const SOURCE_MANUAL: &'static str = "tributary_manual";

    pub fn operator_command(shop_domain: &str, command: &OperatorCommand, now_ms: i64) -> Self {
        let (topic, body) = match command {
            OperatorCommand::Attribute(body) => {
                (OperatorCommand::ATTRIBUTE, serde_json::to_vec(body))
            }
            OperatorCommand::ApproveReward(body) => {
                (OperatorCommand::APPROVE_REWARD, serde_json::to_vec(body))
            }
        };
        Self {
            source: Self::SOURCE_MANUAL.into(),
            shop_domain: shop_domain.to_owned(),
            topic: topic.into(),
            webhook_id: format!("{}-{}-{now_ms}", command.label(), command.order_id()),
            event_id: None,
            triggered_at_ms: now_ms,
            api_version: String::new(),
            received_at_ms: now_ms,
            body: body.unwrap_or_default(),
        }
    }
}

/// An operator's command about one order; the envelope's `topic` names the kind and its body is
/// the JSON of the variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorCommand {
    Attribute(ManualAttribution),
    ApproveReward(RewardApproval),
}

impl OperatorCommand {
    pub const ATTRIBUTE: &'static str = "tributary/manual_attribution";
    pub const APPROVE_REWARD: &'static str = "tributary/reward_approval";

    /// Short name, for ids and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Attribute(_) => "manual",
            Self::ApproveReward(_) => "approval",
        }
    }

    pub fn order_id(&self) -> u64 {
        match self {
            Self::Attribute(c) => c.order_id,
            Self::ApproveReward(c) => c.order_id,
        }
    }
}

/// The body of a manual-attribution command: this order goes to this advocate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManualAttribution {
    pub order_id: u64,
    pub advocate_identifier: String,
    /// Who asked, for the record's reason.
    pub requested_by: String,
}

/// The body of a reward approval: the order's pending reward request is approved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardApproval {
    pub order_id: u64,
    /// Who approved, for the ledger entry's reason.
    pub approved_by: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderEventKind {
    Placed,
    Updated,
    Edited,
    Paid,
    Fulfilled,
    Cancelled,
    Refunded,
}

/// A typed order event (topic `tributary.orders`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderEvent {
    pub kind: OrderEventKind,
    pub shop_domain: String,
    pub order_id: u64,
    pub webhook_id: String,
    pub event_id: Option<String>,
    pub triggered_at_ms: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub name: String,
    pub email: Option<String>,
    pub customer_id: Option<u64>,
    pub currency: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub current_total_price: Decimal,
    pub presentment_currency: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub current_total_price_presentment: Decimal,
    pub discount_codes: Vec<String>,
    pub landing_site: Option<String>,
    pub source_name: Option<String>,
    pub tags: Vec<String>,
    pub test: bool,
    pub financial_status: Option<String>,
    pub fulfillment_status: Option<String>,
    pub cancelled_at_ms: Option<i64>,
    /// The refunds this version already lists (the payload's `refunds`), which Shopify has
    /// already taken off its `current_total_price`.
    pub refunds: Vec<ListedRefund>,
}

/// A refund as an order version lists it: its successful `refund` transactions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedRefund {
    pub refund_id: u64,
    /// The transactions given in shop money.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    /// The transactions given only in a named currency (the order's presentment currency).
    pub in_currency: Vec<CurrencyAmount>,
}

/// An amount in a named currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrencyAmount {
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
}
avro_record!(OrderEvent, "order_event");

impl OrderEvent {
    /// The contract's version order: payload `updated_at`, then `X-Shopify-Triggered-At`.
    pub fn version(&self) -> OrderVersion {
        OrderVersion {
            updated_at_ms: self.updated_at_ms,
            triggered_at_ms: self.triggered_at_ms,
        }
    }
}

/// Orders of one order's versions: a newer `updated_at` wins; ties go to the later trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OrderVersion {
    pub updated_at_ms: i64,
    pub triggered_at_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    Attributed,
    Unattributed,
    SelfReferral,
    Excluded,
}

/// Where an attribution came from; the names analysts see are [`AttributionSource::label`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AttributionSource {
    DiscountCode,
    LandingSite,
    Manual,
    Unattributed,
}

impl AttributionSource {
    pub fn label(self) -> &'static str {
        match self {
            Self::DiscountCode => "Discount Code",
            Self::LandingSite => "Landing Site",
            Self::Manual => "Manual",
            Self::Unattributed => "Unattributed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RefundStatus {
    None,
    Partial,
    Full,
}

/// The attribution processor's state for one order and its output (topic `tributary.attributions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribution {
    pub shop_domain: String,
    pub order_id: u64,
    pub revision: u64,
    pub order_name: String,
    pub created_at_ms: i64,
    pub latest_updated_at_ms: i64,
    pub latest_triggered_at_ms: i64,
    pub settled_updated_at_ms: i64,
    pub financial_status: Option<String>,
    pub cancelled: bool,
    pub outcome: Outcome,
    pub source: AttributionSource,
    pub reason: String,
    pub advocate_id: Option<String>,
    pub advocate_identifier: Option<String>,
    pub code: Option<String>,
    pub customer_email: Option<String>,
    pub customer_id: Option<u64>,
    pub currency: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub gross: Decimal,
    pub presentment_currency: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub presentment_gross: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub refunded: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub net: Decimal,
    pub refund_status: RefundStatus,
    /// The refunds counted in `refunded`, so each is counted once.
    pub refund_ids: Vec<String>,
    pub recent_delivery_ids: Vec<String>,
    pub input_offset: i64,
    /// The order's reward ledger: every request, approval, reversal and void, in order.
    pub rewards: Vec<RewardEntry>,
    /// The partition's watermark (event time, ms) when this revision was made: the clock of the
    /// order's expiry (`processor.expire_after_days`). 0 in records written before it existed.
    pub changed_at_ms: i64,
}
avro_record!(Attribution, "attribution");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RewardEntryKind {
    /// Points requested for the order's advocate; moves no balance until approved.
    Request,
    /// Credits the request's points to the advocate's wallet.
    Approval,
    /// Debits points of an approved request (refund, cancellation, the order moved away).
    Reversal,
    /// Closes a request: it is no longer pending and earns nothing more.
    Void,
}

/// One entry of an order's reward ledger. Ids are deterministic (`<shop>/<order>/reward/<n>` for
/// the n-th request, with `/approval`, `/reversal/<k>` or `/void` after it), so an entry written
/// twice is one entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewardEntry {
    pub entry_id: String,
    pub request_id: String,
    pub kind: RewardEntryKind,
    pub advocate_id: String,
    pub advocate_identifier: String,
    /// Never negative; the kind says which way it moves the wallet.
    #[serde(with = "rust_decimal::serde::str")]
    pub points: Decimal,
    pub reason: String,
    /// Event time of the record that caused the entry (replays give the same time).
    pub at_ms: i64,
}

/// What an attributed order earns its advocate (a store's activity definition).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardActivity {
    /// Shown in ledger reasons, e.g. "Referral".
    pub name: String,
    pub basis: RewardBasis,
    /// Points per order (`fixed`) or per unit of gross in shop currency (`per_unit`).
    #[serde(with = "rust_decimal::serde::str")]
    pub points: Decimal,
    /// Credit the wallet at once; otherwise requests wait for `tributary rewards approve`.
    pub auto_approve: bool,
    /// What one point is worth as Shopify store credit, in shop currency (with
    /// `features.reward_store_credit`).
    #[serde(with = "rust_decimal::serde::str", default = "one")]
    pub store_credit_per_point: Decimal,
}

fn one() -> Decimal {
    Decimal::ONE
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RewardBasis {
    #[serde(alias = "fixed")]
    Fixed,
    #[serde(alias = "per_unit")]
    PerUnit,
}

impl Attribution {
    pub fn latest_version(&self) -> OrderVersion {
        OrderVersion {
            updated_at_ms: self.latest_updated_at_ms,
            triggered_at_ms: self.latest_triggered_at_ms,
        }
    }

    /// When the order last changed, in event time: `changed_at_ms`, or for a record written
    /// before that field existed, its latest version's trigger time.
    pub fn last_changed_ms(&self) -> i64 {
        if self.changed_at_ms > 0 {
            self.changed_at_ms
        } else {
            self.latest_triggered_at_ms
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StoreStatus {
    Active,
    Locked,
    Disconnected,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFeatures {
    /// Mint a discount code when an advocate is activated.
    #[serde(default)]
    pub auto_mint_codes: bool,
    /// Attribute orders to advocates. Off: orders are recorded as unattributed.
    #[serde(default)]
    pub order_attribution: bool,
    /// Write an attribution note on the order in Shopify.
    #[serde(default)]
    pub order_notes: bool,
    /// Tag attributed orders in Shopify.
    #[serde(default)]
    pub order_tags: bool,
    /// Create reward requests for attributed orders.
    #[serde(default)]
    pub attribution_rewards: bool,
    /// Push approved rewards to the advocate's Shopify store credit (and take reversals back).
    #[serde(default)]
    pub reward_store_credit: bool,
}

/// Control record for a store (topic `tributary.control.stores`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Store {
    pub domain: String,
    pub status: StoreStatus,
    /// AES-256-GCM sealed (see `tributary_runtime::secrets`); current secret first.
    pub webhook_secrets_sealed: Vec<String>,
    pub settle_delay_minutes: i32,
    pub excluded_channels: Vec<String>,
    pub excluded_tags: Vec<String>,
    pub excluded_codes: Vec<String>,
    pub features: StoreFeatures,
    /// What attributed orders earn, when `features.attribution_rewards` is on.
    pub reward_activity: Option<RewardActivity>,
    /// Admin API access, for writeback and code minting.
    pub admin: Option<StoreAdmin>,
    /// The team that connected the store; only its admins read or change it.
    pub team_id: Option<String>,
    pub updated_at_ms: i64,
}
avro_record!(Store, "store");

/// How tributary reaches a store's Admin API, and what it writes there.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreAdmin {
    /// AES-256-GCM sealed (see `tributary_runtime::secrets`).
    pub access_token_sealed: String,
    pub tag_prefix: String,
    pub code_pattern: Option<String>,
    pub discount_template_id: Option<String>,
    /// The Admin API version the store was last checked with.
    pub api_version: String,
    /// Products in the store at the last check.
    pub product_count: i64,
    /// When the connection was last verified (0: never).
    pub last_synced_at_ms: i64,
}

impl std::fmt::Debug for StoreAdmin {
    // Sealed, but a token's ciphertext has no business in a log either.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreAdmin")
            .field("tag_prefix", &self.tag_prefix)
            .field("code_pattern", &self.code_pattern)
            .field("discount_template_id", &self.discount_template_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AdvocateStatus {
    Active,
    Inactive,
}

/// Control record for an advocate (topic `tributary.control.advocates`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advocate {
    pub shop_domain: String,
    pub id: String,
    pub identifier: String,
    pub first_name: String,
    pub email: String,
    pub status: AdvocateStatus,
    pub codes: Vec<String>,
    pub updated_at_ms: i64,
}
avro_record!(Advocate, "advocate");

/// A team of store admins (topic `tributary.control.teams`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Team {
    pub team_id: String,
    pub name: String,
    /// Hex SHA-256 of the team's API key; the key itself is shown once, at creation.
    pub api_key_sha256: String,
    pub created_at_ms: i64,
}
avro_record!(Team, "team");

impl std::fmt::Debug for Team {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Team")
            .field("team_id", &self.team_id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlertKind {
    /// An advocate got no discount code: every attempt was taken, or Shopify refused it.
    CodeNotMinted,
    /// The health check failed: token refused, scopes missing or webhooks not subscribed.
    ConnectionUnhealthy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlertStatus {
    Open,
    Archived,
}

/// Something a store's team admins must act on (topic `tributary.alerts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// `<shop>/<kind>/<subject>`: one alert per problem, archived by a later record.
    pub alert_id: String,
    pub shop_domain: String,
    pub kind: AlertKind,
    pub status: AlertStatus,
    pub message: String,
    pub raised_at_ms: i64,
    pub updated_at_ms: i64,
}
avro_record!(Alert, "alert");

/// A store's reconciliation watermark (topic `tributary.control.reconciliation`), written after
/// each complete pass of the reconciliation pull (`tributary_ingest::shopify_reconcile`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconciliation {
    pub shop_domain: String,
    /// Every order updated (Shopify's `Order.updatedAt`) at or before this time, in ms, has been
    /// read by a complete pass; the next pass reads from here less the overlap.
    pub watermark_ms: i64,
    pub pass_started_at_ms: i64,
    pub completed_at_ms: i64,
    /// Orders the pass read and produced.
    pub orders_read: i64,
    /// Orders left for a later pass (their customer journey was not ready).
    pub held_back: i64,
}
avro_record!(Reconciliation, "reconciliation");

/// How a credential that expires is renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CredentialGrant {
    /// A refresh token that rotates on use (Shopify's expiring offline tokens, TikTok Shop).
    RefreshToken,
    /// A new token from the app's client id and secret (Shopify's Dev Dashboard apps).
    ClientCredentials,
}

/// A connection's credential that expires (topic `tributary.control.credentials`, keyed by
/// connection, e.g. `shopify/<shop domain>`), written when the connection is made and after every
/// refresh, before the new token is used (see `tributary_runtime::credentials`). Every secret is
/// sealed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub connection: String,
    pub grant: CredentialGrant,
    pub client_id: String,
    pub client_secret_sealed: String,
    pub access_token_sealed: Option<String>,
    pub access_expires_at_ms: i64,
    pub refresh_token_sealed: Option<String>,
    pub refresh_token_expires_at_ms: Option<i64>,
    /// Refreshes so far; 0 when connected.
    pub generation: i64,
    pub refreshed_at_ms: i64,
    /// Why the platform refused the grant for good; the connection is locked until connected again.
    pub failure: Option<String>,
}
avro_record!(Credential, "credential");

impl std::fmt::Debug for Credential {
    // Sealed, but ciphertext has no business in a log either.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("connection", &self.connection)
            .field("grant", &self.grant)
            .field("access_expires_at_ms", &self.access_expires_at_ms)
            .field("generation", &self.generation)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StoreCreditDirection {
    /// An approval: the account grows.
    Credit,
    /// A reversal: the account shrinks.
    Debit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StoreCreditState {
    /// About to be sent: if no later record follows, Shopify may or may not have applied it.
    Pending,
    Applied,
    /// Shopify refused it, or there is no customer to credit; dead-lettered with the reason.
    Refused,
}

/// One reward entry pushed to an advocate's Shopify store credit (topic
/// `tributary.store_credits`, keyed by `entry_id`): the store credit stage's changelog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreCreditPush {
    /// The reward ledger entry (an approval or a reversal).
    pub entry_id: String,
    pub shop_domain: String,
    pub advocate_id: String,
    pub order_id: u64,
    pub direction: StoreCreditDirection,
    pub state: StoreCreditState,
    /// In `currency`; never negative.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    /// The Shopify customer whose account moves.
    pub customer_gid: Option<String>,
    /// `Pending`: the account's newest transaction before the call (`None`: none yet).
    pub account_cursor: Option<String>,
    /// `Applied`: Shopify's transaction.
    pub transaction_id: Option<String>,
    /// `Refused`: why; otherwise empty.
    pub reason: String,
    pub at_ms: i64,
}
avro_record!(StoreCreditPush, "store_credit_push");

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CustomerEventKind {
    PlacedOrder,
    FirstPurchase,
    RepeatPurchase,
    ReceivedRefund,
}

/// An event for downstream destinations (topic `tributary.events`), emitted once per id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerEvent {
    pub event_id: String,
    pub kind: CustomerEventKind,
    pub shop_domain: String,
    pub customer_id: Option<u64>,
    pub order_id: u64,
    pub order_name: String,
    pub outcome: String,
    pub advocate_identifier: Option<String>,
    pub currency: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub order_refunded: Decimal,
    pub refund_ids: Vec<String>,
    pub customer_order_number: u64,
    pub occurred_at_ms: i64,
}
avro_record!(CustomerEvent, "customer_event");

/// A record a stage could not process (topic `tributary.dlq`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub stage: String,
    pub error: String,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    #[serde(with = "apache_avro::serde_avro_bytes_opt")]
    pub source_key: Option<Vec<u8>>,
    #[serde(with = "apache_avro::serde_avro_bytes")]
    pub payload: Vec<u8>,
    pub failed_at_ms: i64,
}
avro_record!(DeadLetter, "dead_letter");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{AvroRecord, CodecError};
    use std::str::FromStr;

    /// Round-trips `record`, then reads the golden bytes of every shipped version of its schema
    /// (`avro/golden/<stem>/v<N>.bin`): each decodes with nothing it held lost (written back with
    /// its own schema, the same bytes).
    /// `TRIBUTARY_BLESS_GOLDEN=1` writes the golden file of a new version; existing ones are never
    /// rewritten, since they stand for what a shipped release wrote.
    fn round_trip<T: AvroRecord + PartialEq + std::fmt::Debug>(record: T) {
        let bytes = record.to_avro().expect("encodes");
        assert_eq!(&bytes[..2], &[0xC3, 0x01]);
        assert_eq!(T::from_avro(&bytes).expect("decodes"), record);

        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("avro/golden")
            .join(T::SCHEMA_FILE);
        let history = crate::codec::HISTORY
            .iter()
            .filter(|(stem, _, _)| *stem == T::SCHEMA_FILE);
        for (_, version, text) in history {
            let writer = apache_avro::Schema::parse_str(text).unwrap();
            let write = |value: apache_avro::types::Value| {
                let mut out = vec![0xC3, 0x01];
                out.extend(crate::codec::fingerprint(&writer));
                out.extend(apache_avro::to_avro_datum(&writer, value).unwrap());
                out
            };
            let path = dir.join(format!("v{version}.bin"));
            if !path.exists() && std::env::var_os("TRIBUTARY_BLESS_GOLDEN").is_some() {
                let value = apache_avro::to_value(&record)
                    .unwrap()
                    .resolve(&writer)
                    .unwrap();
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, write(value)).unwrap();
            }
            let golden = std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (run the tests once with TRIBUTARY_BLESS_GOLDEN=1)",
                    path.display()
                )
            });
            let decoded = T::from_avro(&golden)
                .unwrap_or_else(|e| panic!("{} no longer decodes: {e}", path.display()));
            let back = apache_avro::to_value(&decoded)
                .unwrap()
                .resolve(&writer)
                .unwrap();
            assert_eq!(
                write(back),
                golden,
                "{} lost data on the way to {}",
                path.display(),
                T::NAME
            );
        }
    }

    pub fn sample_order_event() -> OrderEvent {
        OrderEvent {
            kind: OrderEventKind::Placed,
            shop_domain: "a.myshopify.com".into(),
            order_id: 9_007_199_254_740_993, // 2^53 + 1: not representable as f64
            webhook_id: "w1".into(),
            event_id: Some("e1".into()),
            triggered_at_ms: 1_700_000_000_000,
            created_at_ms: 1_700_000_000_000,
            updated_at_ms: 1_700_000_000_001,
            name: "#1001".into(),
            email: None,
            customer_id: Some(u64::MAX >> 1),
            currency: "USD".into(),
            current_total_price: Decimal::from_str("1234567.89").unwrap(),
            presentment_currency: "EUR".into(),
            current_total_price_presentment: Decimal::from_str("0.10").unwrap(),
            discount_codes: vec!["ANNA10".into(), "SALE".into()],
            landing_site: Some("/?ref=anna".into()),
            source_name: Some("web".into()),
            tags: vec![],
            test: false,
            financial_status: Some("paid".into()),
            fulfillment_status: None,
            cancelled_at_ms: None,
            refunds: vec![ListedRefund {
                refund_id: 509_562_969,
                amount: Decimal::from_str("14.13").unwrap(),
                in_currency: vec![CurrencyAmount {
                    amount: Decimal::from_str("40.00").unwrap(),
                    currency: "EUR".into(),
                }],
            }],
        }
    }

    #[test]
    fn every_record_round_trips() {
        round_trip(WebhookEnvelope {
            source: WebhookEnvelope::SOURCE_WEBHOOK.into(),
            shop_domain: "a.myshopify.com".into(),
            topic: "orders/create".into(),
            webhook_id: "w".into(),
            event_id: None,
            triggered_at_ms: 1,
            api_version: "2025-10".into(),
            received_at_ms: 2,
            body: b"{\"id\":1}\xff".to_vec(),
        });
        round_trip(sample_order_event());
        round_trip(Team {
            team_id: "t1".into(),
            name: "Outdoors".into(),
            api_key_sha256: "00".into(),
            created_at_ms: 1,
        });
        round_trip(Reconciliation {
            shop_domain: "a.myshopify.com".into(),
            watermark_ms: 1_780_000_000_000,
            pass_started_at_ms: 1_780_000_060_000,
            completed_at_ms: 1_780_000_065_000,
            orders_read: 250,
            held_back: 1,
        });
        round_trip(Credential {
            connection: "shopify/a.myshopify.com".into(),
            grant: CredentialGrant::RefreshToken,
            client_id: "id".into(),
            client_secret_sealed: "c2VhbGVk".into(),
            access_token_sealed: Some("dG9rZW4=".into()),
            access_expires_at_ms: 1_780_000_000_000,
            refresh_token_sealed: Some("cmVmcmVzaA==".into()),
            refresh_token_expires_at_ms: Some(1_787_776_000_000),
            generation: 7,
            refreshed_at_ms: 1_779_996_400_000,
            failure: None,
        });
        round_trip(Alert {
            alert_id: "a.myshopify.com/CODE_NOT_MINTED/7".into(),
            shop_domain: "a.myshopify.com".into(),
            kind: AlertKind::CodeNotMinted,
            status: AlertStatus::Open,
            message: "taken".into(),
            raised_at_ms: 1,
            updated_at_ms: 2,
        });
        round_trip(Attribution {
            shop_domain: "a.myshopify.com".into(),
            order_id: u64::MAX >> 1,
            revision: 3,
            order_name: "#1".into(),
            created_at_ms: 1,
            latest_updated_at_ms: 2,
            latest_triggered_at_ms: 3,
            settled_updated_at_ms: 2,
            financial_status: None,
            cancelled: false,
            outcome: Outcome::SelfReferral,
            source: AttributionSource::Unattributed,
            reason: "self-referral".into(),
            advocate_id: Some("7".into()),
            advocate_identifier: None,
            code: None,
            customer_email: Some("x@y.z".into()),
            customer_id: None,
            currency: "USD".into(),
            gross: Decimal::from_str("10.00").unwrap(),
            presentment_currency: "USD".into(),
            presentment_gross: Decimal::from_str("10.00").unwrap(),
            refunded: Decimal::from_str("4.00").unwrap(),
            net: Decimal::from_str("6.00").unwrap(),
            refund_status: RefundStatus::Partial,
            refund_ids: vec!["509562969".into()],
            recent_delivery_ids: vec!["a".into(), "b".into()],
            input_offset: 42,
            rewards: vec![RewardEntry {
                entry_id: "a.myshopify.com/1/reward/1".into(),
                request_id: "a.myshopify.com/1/reward/1".into(),
                kind: RewardEntryKind::Request,
                advocate_id: "7".into(),
                advocate_identifier: "anna".into(),
                points: Decimal::from_str("12.50").unwrap(),
                reason: "Referral".into(),
                at_ms: 4,
            }],
            changed_at_ms: 5,
        });
        round_trip(Store {
            domain: "a.myshopify.com".into(),
            status: StoreStatus::Locked,
            webhook_secrets_sealed: vec!["sealed".into()],
            settle_delay_minutes: 0,
            excluded_channels: vec!["pos".into()],
            excluded_tags: vec!["Exclude".into()],
            excluded_codes: vec!["HOLIDAY".into()],
            features: StoreFeatures {
                order_attribution: true,
                ..Default::default()
            },
            admin: Some(StoreAdmin {
                access_token_sealed: "sealed".into(),
                tag_prefix: "tributary".into(),
                code_pattern: Some("{{advocate_identifier}}".into()),
                discount_template_id: None,
                api_version: "2025-10".into(),
                product_count: 3,
                last_synced_at_ms: 4,
            }),
            team_id: Some("t1".into()),
            reward_activity: Some(RewardActivity {
                name: "Referral".into(),
                basis: RewardBasis::PerUnit,
                points: Decimal::from_str("0.5").unwrap(),
                auto_approve: false,
                store_credit_per_point: Decimal::from_str("0.25").unwrap(),
            }),
            updated_at_ms: 5,
        });
        round_trip(Advocate {
            shop_domain: "a.myshopify.com".into(),
            id: "1".into(),
            identifier: "anna".into(),
            first_name: "Anna".into(),
            email: "anna@example.com".into(),
            status: AdvocateStatus::Active,
            codes: vec!["ANNA10".into()],
            updated_at_ms: 1,
        });
        round_trip(StoreCreditPush {
            entry_id: "a.myshopify.com/1/reward/1/approval".into(),
            shop_domain: "a.myshopify.com".into(),
            advocate_id: "7".into(),
            order_id: u64::MAX >> 1,
            direction: StoreCreditDirection::Debit,
            state: StoreCreditState::Applied,
            amount: Decimal::from_str("0.26").unwrap(),
            currency: "USD".into(),
            customer_gid: Some("gid://shopify/Customer/1".into()),
            account_cursor: None,
            transaction_id: Some("gid://shopify/StoreCreditAccountDebitTransaction/9".into()),
            reason: String::new(),
            at_ms: 5,
        });
        round_trip(CustomerEvent {
            event_id: "a.myshopify.com/1/refund/509562969".into(),
            kind: CustomerEventKind::ReceivedRefund,
            shop_domain: "a.myshopify.com".into(),
            customer_id: Some(u64::MAX >> 2),
            order_id: u64::MAX >> 1,
            order_name: "#1".into(),
            outcome: "ATTRIBUTED".into(),
            advocate_identifier: Some("anna".into()),
            currency: "USD".into(),
            amount: Decimal::from_str("4.00").unwrap(),
            order_refunded: Decimal::from_str("4.00").unwrap(),
            refund_ids: vec!["509562969".into()],
            customer_order_number: 2,
            occurred_at_ms: 6,
        });
        round_trip(DeadLetter {
            stage: "normalize".into(),
            error: "bad".into(),
            source_topic: "t".into(),
            source_partition: 1,
            source_offset: 2,
            source_key: Some(b"k".to_vec()),
            payload: vec![0, 1, 2],
            failed_at_ms: 3,
        });
    }

    #[test]
    fn refuses_foreign_and_truncated_records() {
        let bytes = sample_order_event().to_avro().unwrap();
        assert!(matches!(
            Advocate::from_avro(&bytes),
            Err(CodecError::UnknownSchema { .. })
        ));
        assert!(matches!(
            OrderEvent::from_avro(b"{\"id\":1}"),
            Err(CodecError::NotSingleObject)
        ));
        let truncated = OrderEvent::from_avro(&bytes[..bytes.len() - 3]);
        assert!(
            matches!(truncated, Err(CodecError::Invalid { .. })),
            "{truncated:?}"
        );
    }

    #[test]
    fn versions_order_by_updated_then_triggered() {
        let v = |u, t| OrderVersion {
            updated_at_ms: u,
            triggered_at_ms: t,
        };
        assert!(v(2, 0) > v(1, 9));
        assert!(v(1, 2) > v(1, 1));
    }
}
