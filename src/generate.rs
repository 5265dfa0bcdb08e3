//! A realistic stream of signed Shopify order webhooks, and what it should add up to.
//!
//! The expectation is computed here from the generator's own intent (which advocate each order was
//! made for, which version is delivered first), not by calling the processor's code, so the two
//! can disagree.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::{json, Value};
use tributary_ingest::shopify_webhooks::sign;
use tributary_schemas::time::format_rfc3339_ms;
use tributary_schemas::{
    ManualAttribution, OperatorCommand, RewardActivity, RewardApproval, RewardBasis,
};

use tributary_control::files::{AdvocateLine, StoreEntry};

use crate::report::AdvocateTotals;

/// One HTTP delivery of a webhook.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub shop: String,
    pub order_id: u64,
    pub topic: &'static str,
    pub webhook_id: String,
    pub event_id: String,
    pub triggered_at_ms: i64,
    pub body: Vec<u8>,
    pub secret: String,
}

impl Delivery {
    /// The envelope the receiver would write for this delivery (received now).
    pub fn envelope(&self) -> tributary_schemas::WebhookEnvelope {
        tributary_schemas::WebhookEnvelope {
            source: tributary_schemas::WebhookEnvelope::SOURCE_WEBHOOK.to_owned(),
            shop_domain: self.shop.clone(),
            topic: self.topic.to_owned(),
            webhook_id: self.webhook_id.clone(),
            event_id: Some(self.event_id.clone()),
            triggered_at_ms: self.triggered_at_ms,
            api_version: "2026-04".to_owned(),
            received_at_ms: tributary_runtime::kafka::now_ms(),
            body: self.body.clone(),
        }
    }

    pub fn request(&self, client: &reqwest::Client, url: &str) -> reqwest::RequestBuilder {
        client
            .post(url)
            .header("Content-Type", "application/json")
            .header("X-Shopify-Topic", self.topic)
            .header("X-Shopify-Hmac-Sha256", sign(&self.secret, &self.body))
            .header("X-Shopify-Shop-Domain", &self.shop)
            .header("X-Shopify-Webhook-Id", &self.webhook_id)
            .header("X-Shopify-Event-Id", &self.event_id)
            .header(
                "X-Shopify-Triggered-At",
                format_rfc3339_ms(self.triggered_at_ms),
            )
            .header("X-Shopify-Api-Version", "2026-04")
            .body(self.body.clone())
    }
}

/// The contract's reward arithmetic, written out here for the oracle: what an approved reward
/// leaves in the wallet once `refunded` of `gross` went back (nothing if the order was cancelled).
fn reward_balance(
    activity: &RewardActivity,
    gross: Decimal,
    refunded: Decimal,
    cancelled: bool,
) -> Decimal {
    let to_points =
        |d: Decimal| d.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
    let reward = to_points(match activity.basis {
        RewardBasis::Fixed => activity.points,
        RewardBasis::PerUnit => activity.points * gross,
    });
    if cancelled {
        return Decimal::ZERO;
    }
    let reversed = if gross > Decimal::ZERO {
        to_points(reward * refunded.min(gross) / gross).min(reward)
    } else {
        Decimal::ZERO
    };
    reward - reversed
}

/// What a generated stream must add up to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    /// By (shop, advocate identifier).
    pub per_advocate: BTreeMap<(String, String), AdvocateTotals>,
    pub unattributed_orders: u64,
    pub excluded_orders: u64,
}

impl Expected {
    /// Adds another stream's expectation to this one.
    pub fn add(&mut self, other: &Expected) {
        for (key, totals) in &other.per_advocate {
            self.per_advocate
                .entry(key.clone())
                .or_default()
                .add(totals);
        }
        self.unattributed_orders += other.unattributed_orders;
        self.excluded_orders += other.excluded_orders;
    }
}

pub struct Plan {
    /// Each order's deliveries, to be sent in this order (without the lost ones, see
    /// [`plan_with_losses`]).
    pub orders: Vec<Vec<Delivery>>,
    /// Orders with at least one version delivered: the ones the pipeline holds before a
    /// reconciliation pass.
    pub orders_delivered: usize,
    /// With losses: every order of a store with Admin access as Shopify shows it at the end (its
    /// newest version, every refund listed), an Admin GraphQL `Order` node by store, for the fake
    /// Shopify to answer the reconciliation pull with.
    pub order_nodes: Vec<(String, Value)>,
    /// Operators' commands (manual attributions, then reward approvals), (shop, command), to
    /// publish once their orders are sent.
    pub commands: Vec<(String, OperatorCommand)>,
    pub expected: Expected,
}

impl Plan {
    pub fn deliveries(&self) -> usize {
        self.orders.iter().map(Vec::len).sum()
    }

    /// The plan in `parts` consecutive pieces of whole orders, each with its orders' commands
    /// (for sending in chunks; the pieces carry no expectation).
    pub fn chunks(&self, parts: usize) -> Vec<Plan> {
        let size = self.orders.len().div_ceil(parts.max(1)).max(1);
        self.orders
            .chunks(size)
            .map(|orders| {
                let ids: std::collections::HashSet<u64> = orders
                    .iter()
                    .filter_map(|d| d.first().map(|d| d.order_id))
                    .collect();
                Plan {
                    orders: orders.to_vec(),
                    orders_delivered: 0,
                    order_nodes: Vec::new(),
                    commands: self
                        .commands
                        .iter()
                        .filter(|(_, c)| ids.contains(&c.order_id()))
                        .cloned()
                        .collect(),
                    expected: Expected::default(),
                }
            })
            .collect()
    }

    /// Publishes the plan's operator commands; call it once the plan's webhooks are sent.
    pub async fn publish_commands(&self, bootstrap: &str) -> anyhow::Result<usize> {
        tributary_control::files::publish_commands(bootstrap, &self.commands).await
    }
}

#[derive(Clone, Copy, Debug)]
enum Scenario {
    Code,
    StackedAfterExcluded,
    TwoAdvocateCodes,
    ExcludedCodeOnly,
    ShareLinkRef,
    ShareLinkUtm,
    SelfReferral,
    Organic,
    Test,
    Pos,
    Tagged,
}

const SCENARIOS: [(Scenario, u32); 11] = [
    (Scenario::Code, 30),
    (Scenario::StackedAfterExcluded, 6),
    (Scenario::TwoAdvocateCodes, 6),
    (Scenario::ExcludedCodeOnly, 5),
    (Scenario::ShareLinkRef, 12),
    (Scenario::ShareLinkUtm, 8),
    (Scenario::SelfReferral, 4),
    (Scenario::Organic, 17),
    (Scenario::Test, 4),
    (Scenario::Pos, 4),
    (Scenario::Tagged, 4),
];

#[derive(Clone, Copy, Debug)]
enum Pattern {
    Once,
    Redelivered,
    EventResent,
    NewerFirst,
    UpdatesOutOfOrder,
    Cancelled,
}

const PATTERNS: [(Pattern, u32); 6] = [
    (Pattern::Once, 54),
    (Pattern::Cancelled, 6),
    (Pattern::Redelivered, 10),
    (Pattern::EventResent, 10),
    (Pattern::NewerFirst, 10),
    (Pattern::UpdatesOutOfOrder, 10),
];

fn pick<T: Copy>(rng: &mut StdRng, weighted: &[(T, u32)]) -> T {
    let total: u32 = weighted.iter().map(|(_, w)| w).sum();
    let mut roll = rng.gen_range(0..total);
    for (item, weight) in weighted {
        if roll < *weight {
            return *item;
        }
        roll -= weight;
    }
    weighted[0].0
}

/// Plans `orders` orders per store, deterministically from `seed`.
///
/// Beside the attribution scenarios and the delivery patterns (redeliveries, a newer version
/// first, updates out of order, cancellations), about one order in seven is refunded, and its
/// refunds exercise the contract's refund rules: delivered twice, before any version of their
/// order (one refunded order in three), given only in presentment money (half the refunds of an
/// order presented in EUR), pending at their webhook and shown succeeded by the order version
/// that lists them (that version comes for two refunded orders in three, its current total lowered
/// by the refunds). Send it with [`send`], which sends one store after another.
pub fn plan(
    stores: &[StoreEntry],
    advocates: &[AdvocateLine],
    orders: usize,
    seed: u64,
) -> anyhow::Result<Plan> {
    build(stores, advocates, orders, seed, None)
}

/// A plan in which each webhook of a store with Admin access (a version, a cancellation, a
/// refund, a redelivery) is lost with probability `lost_percent`%, as Shopify may never deliver
/// one; its expectation is what the pipeline must show once one reconciliation pass has read
/// [`Plan::order_nodes`]: an order none of whose versions came settles with its newest version
/// (`../shared/BRIEF.md`, the attribution contract), and every refund counts.
pub fn plan_with_losses(
    stores: &[StoreEntry],
    advocates: &[AdvocateLine],
    orders: usize,
    seed: u64,
    lost_percent: u32,
) -> anyhow::Result<Plan> {
    build(stores, advocates, orders, seed, Some(lost_percent))
}

fn build(
    stores: &[StoreEntry],
    advocates: &[AdvocateLine],
    orders: usize,
    seed: u64,
    lost_percent: Option<u32>,
) -> anyhow::Result<Plan> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut orders_delivered = 0;
    let mut order_nodes = Vec::new();
    let mut expected = Expected::default();
    let mut planned = Vec::new();
    let mut commands = Vec::new();
    // Midnight 150 to 349 days ago (by seed): the five stores' months end at least a month in the
    // past, since the processor takes an event time far ahead of its receive time as the receive
    // time, and the oldest order is inside the processor's default 400-day state horizon whatever
    // day the plan is built (an idle tick carries today's time).
    const DAY_MS: i64 = 86_400_000;
    let today_ms = tributary_runtime::kafka::now_ms().div_euclid(DAY_MS) * DAY_MS;
    let start_ms = today_ms - (150 + seed as i64 % 200) * DAY_MS;
    for (store_index, store) in stores.iter().enumerate() {
        let secret = store
            .webhook_secrets
            .first()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("{} has no secret", store.domain))?;
        let domain = store.domain.to_ascii_lowercase();
        let active: Vec<&AdvocateLine> = advocates
            .iter()
            .filter(|a| {
                a.shop_domain.eq_ignore_ascii_case(&domain) && a.active() && !a.codes().is_empty()
            })
            .collect();
        anyhow::ensure!(
            active.len() >= 2,
            "{domain} needs at least two active advocates with codes"
        );
        let excluded_code = store
            .excluded_codes
            .first()
            .cloned()
            .unwrap_or_else(|| "SITEWIDE".into());
        // Each store's orders lie in their own month, so one store's event times never settle
        // another's orders. A store with a settle delay gets its whole stream inside the delay
        // less the 6 minutes an order's last record comes after it: nothing settles until the idle
        // tick at the end, so every order settles with its newest version, whatever order the
        // deliveries race in. (A refund in the hold window still counts: refunds wait with their
        // held order.)
        let store_start_ms = start_ms + store_index as i64 * 30 * 86_400_000;
        let delay_ms = i64::from(store.settle_delay_minutes.max(0)) * 60_000;
        let reward = store
            .reward
            .as_ref()
            .filter(|_| store.features.attribution_rewards);
        let spacing_ms = if delay_ms == 0 {
            1_500
        } else {
            // Versions come up to 3 minutes after an order, refunds up to 5 and the version
            // listing them up to 6.
            let span_ms = (delay_ms - 6 * 60_000).max(0);
            (span_ms / orders.max(1) as i64).min(1_500)
        };
        for n in 0..orders {
            let order_id: u64 =
                (1u64 << 53) + (seed << 24) + ((store_index as u64) << 20) + n as u64 * 7 + 1;
            let created_ms = store_start_ms + n as i64 * spacing_ms;
            let scenario = pick(&mut rng, &SCENARIOS);
            let advocate = *active.choose(&mut rng).expect("non-empty");
            let other = *active
                .iter()
                .find(|a| a.id != advocate.id)
                .expect("two advocates");
            let mut order = OrderSpec::new(&mut rng, order_id, n, created_ms, &domain);
            let code = |a: &AdvocateLine, rng: &mut StdRng| messy_case(rng, &a.codes()[0]);
            let credited = match scenario {
                Scenario::Code => {
                    order.codes = vec![code(advocate, &mut rng)];
                    Credit::To(advocate)
                }
                Scenario::StackedAfterExcluded => {
                    order.codes = vec![excluded_code.to_lowercase(), code(advocate, &mut rng)];
                    Credit::To(advocate)
                }
                Scenario::TwoAdvocateCodes => {
                    order.codes = vec![code(advocate, &mut rng), code(other, &mut rng)];
                    Credit::To(advocate)
                }
                Scenario::ExcludedCodeOnly => {
                    order.codes = vec![excluded_code.clone()];
                    Credit::Nobody
                }
                Scenario::ShareLinkRef => {
                    order.landing_site = format!(
                        "/products/trail-runner-2?variant=4471&ref={}",
                        advocate.identifier.to_uppercase()
                    );
                    Credit::To(advocate)
                }
                Scenario::ShareLinkUtm => {
                    order.landing_site = format!(
                        "https://{domain}/?utm_source=instagram&utm_medium=advocate&utm_campaign={}",
                        advocate.identifier
                    );
                    Credit::To(advocate)
                }
                Scenario::SelfReferral => {
                    order.codes = vec![code(advocate, &mut rng)];
                    order.email = advocate.email.to_uppercase();
                    Credit::Nobody
                }
                Scenario::Organic => Credit::Nobody,
                Scenario::Test => {
                    order.codes = vec![code(advocate, &mut rng)];
                    order.test = true;
                    Credit::Excluded
                }
                Scenario::Pos => {
                    order.codes = vec![code(advocate, &mut rng)];
                    order.source_name = "pos".into();
                    Credit::Excluded
                }
                Scenario::Tagged => {
                    order.landing_site = format!("/?ref={}", advocate.identifier);
                    order.tags = "wholesale, Exclude".into();
                    Credit::Excluded
                }
            };
            let pattern = pick(&mut rng, &PATTERNS);
            let mut deliveries = deliveries(&mut rng, &order, pattern, &secret);
            // Only a store with Admin access can get back what was lost.
            let lost_percent = lost_percent.filter(|_| store.admin.is_some());
            if let Some(percent) = lost_percent {
                deliveries.retain(|_| rng.gen_range(0..100) >= percent);
            }
            let newest = newest_version(&order, pattern);
            // About one order in seven is refunded; Shopify then sends, in two cases in three,
            // an `orders/updated` listing the refunds, its current total lowered by them.
            let shares = refund_shares(&mut rng);
            let listing_delivered = !shares.is_empty()
                && rng.gen_range(0..3) < 2
                && lost_percent.is_none_or(|percent| rng.gen_range(0..100) >= percent);
            orders_delivered += usize::from(!deliveries.is_empty() || listing_delivered);
            // With no delay the first delivered version settles; with one, the newest (the
            // listing version, when delivered, which comes last); with none delivered, the newest
            // version, as reconciliation reads it. The listing version's gross is the newest
            // total: its current total plus the refunds it lists.
            let settled = if delay_ms == 0 {
                deliveries.first().map(|(_, total)| *total)
            } else if listing_delivered {
                Some(newest.total)
            } else {
                deliveries
                    .iter()
                    .max_by_key(|(d, _)| d.triggered_at_ms)
                    .map(|(_, total)| *total)
            };
            let gross = settled.unwrap_or(newest.total);
            let refunds = plan_refunds(&mut rng, &order, gross, &shares, listing_delivered);
            // Every refund counts, delivered or read back by reconciliation.
            let refunded: Decimal = refunds.iter().map(|r| r.shop).sum();
            let mut refund_deliveries = refund_deliveries(&mut rng, &order, &refunds, &secret);
            if let Some(percent) = lost_percent {
                order_nodes.push((domain.clone(), order.node(&newest, &refunds)));
                refund_deliveries.retain(|_| rng.gen_range(0..100) >= percent);
            }
            // A cancelled order nets to zero (its cancellation is its newest version).
            let net = if matches!(pattern, Pattern::Cancelled) {
                Decimal::ZERO
            } else {
                (gross - refunded).max(Decimal::ZERO)
            };
            // About one order in thirty is attributed by hand, after all its webhooks; that
            // wins over every rule except an exclusion.
            let credited = match credited {
                Credit::Excluded => Credit::Excluded,
                _ if rng.gen_range(0..30) == 0 => {
                    let chosen = *active.choose(&mut rng).expect("non-empty");
                    commands.push((
                        domain.clone(),
                        OperatorCommand::Attribute(ManualAttribution {
                            order_id,
                            advocate_identifier: messy_case(&mut rng, &chosen.identifier),
                            requested_by: "generator".into(),
                        }),
                    ));
                    Credit::To(chosen)
                }
                credited => credited,
            };
            match credited {
                Credit::To(a) => {
                    // Without auto-approve, an operator approves two rewards in three, once the
                    // order has settled (so only where orders settle at once).
                    let approved = reward.is_some_and(|r| {
                        r.auto_approve || (delay_ms == 0 && rng.gen_range(0..3) < 2)
                    });
                    let balance = match reward {
                        Some(activity) if approved => {
                            if !activity.auto_approve {
                                commands.push((
                                    domain.clone(),
                                    OperatorCommand::ApproveReward(RewardApproval {
                                        order_id,
                                        approved_by: "generator".into(),
                                    }),
                                ));
                            }
                            let cancelled = matches!(pattern, Pattern::Cancelled);
                            reward_balance(activity, gross, refunded, cancelled)
                        }
                        _ => Decimal::ZERO,
                    };
                    expected
                        .per_advocate
                        .entry((domain.clone(), a.identifier.clone()))
                        .or_default()
                        .add(&AdvocateTotals {
                            orders: 1,
                            gross,
                            net,
                            balance,
                        });
                }
                Credit::Nobody => expected.unattributed_orders += 1,
                Credit::Excluded => expected.excluded_orders += 1,
            }
            let mut sent: Vec<Delivery> = deliveries.into_iter().map(|(d, _)| d).collect();
            // One refunded order in three has its refunds delivered before any version of it
            // (Shopify guarantees no order of delivery): they wait for the order.
            if rng.gen_range(0..3) == 0 {
                sent.splice(0..0, refund_deliveries);
            } else {
                sent.extend(refund_deliveries);
            }
            if listing_delivered {
                sent.push(order.listing_version(&newest, &refunds, &secret));
            }
            planned.push(sent);
        }
    }
    Ok(Plan {
        orders: planned,
        orders_delivered,
        order_nodes,
        commands,
        expected,
    })
}

/// An order's newest version: what Shopify shows once every webhook has fired.
struct Newest {
    updated_ms: i64,
    total: Decimal,
    cancelled: bool,
}

/// The newest of the versions [`deliveries`] sends for `pattern`.
fn newest_version(order: &OrderSpec, pattern: Pattern) -> Newest {
    let (minutes, total, cancelled) = match pattern {
        Pattern::Once | Pattern::Redelivered | Pattern::EventResent => (0, order.total, false),
        Pattern::NewerFirst => (2, order.upsell_total(), false),
        Pattern::Cancelled => (2, order.total, true),
        Pattern::UpdatesOutOfOrder => (3, order.upsell_total(), false),
    };
    Newest {
        updated_ms: order.created_ms + minutes * 60_000,
        total,
        cancelled,
    }
}

enum Credit<'a> {
    To(&'a AdvocateLine),
    Nobody,
    Excluded,
}

fn messy_case(rng: &mut StdRng, code: &str) -> String {
    match rng.gen_range(0..3) {
        0 => code.to_owned(),
        1 => code.to_lowercase(),
        _ => format!(" {} ", code.to_lowercase()),
    }
}

/// The order a shopper placed; versions differ only by updated_at, total and status.
struct OrderSpec {
    id: u64,
    number: usize,
    created_ms: i64,
    shop: String,
    email: String,
    codes: Vec<String>,
    landing_site: String,
    source_name: String,
    tags: String,
    test: bool,
    total: Decimal,
    presentment_currency: &'static str,
    lines: Vec<(String, Decimal, u32)>,
}

const PRODUCTS: [(&str, &str); 8] = [
    ("Trail Runner 2", "89.00"),
    ("Merino Crew Sock", "18.50"),
    ("Packable Rain Shell", "149.99"),
    ("Insulated Bottle 750ml", "34.95"),
    ("Headlamp 400lm", "42.00"),
    ("Ultralight Tent 2P", "389.00"),
    ("Camp Mug", "12.75"),
    ("Trekking Poles", "119.00"),
];

impl OrderSpec {
    /// Shoppers come back: every three consecutive orders of a store share a customer.
    fn customer_id(&self) -> u64 {
        6_000_000_000 + ((self.id >> 20) & 0xf) * 1_000_000 + self.number as u64 / 3
    }

    fn new(rng: &mut StdRng, id: u64, number: usize, created_ms: i64, shop: &str) -> Self {
        let lines: Vec<(String, Decimal, u32)> = (0..rng.gen_range(1..=4))
            .map(|_| {
                let (title, price) = PRODUCTS[rng.gen_range(0..PRODUCTS.len())];
                (
                    title.to_owned(),
                    price.parse().expect("literal price"),
                    rng.gen_range(1..=3),
                )
            })
            .collect();
        let total = lines
            .iter()
            .map(|(_, p, q)| *p * Decimal::from(*q))
            .sum::<Decimal>()
            + Decimal::new(599, 2);
        Self {
            id,
            number,
            created_ms,
            shop: shop.to_owned(),
            email: format!("shopper{}@example.net", rng.gen_range(1..5000)),
            codes: vec![],
            landing_site: "/".into(),
            source_name: "web".into(),
            tags: String::new(),
            test: false,
            total,
            presentment_currency: if rng.gen_bool(0.2) { "EUR" } else { "USD" },
            lines,
        }
    }

    /// `amount` (USD, the shop's money) in the order's presentment currency: EUR at 0.92.
    fn presentment(&self, amount: Decimal) -> Decimal {
        if self.presentment_currency == "EUR" {
            (amount * Decimal::new(92, 2)).round_dp(2)
        } else {
            amount
        }
    }

    /// The total after the post-purchase upsell some patterns add.
    fn upsell_total(&self) -> Decimal {
        self.total + Decimal::new(1800, 2)
    }

    /// The order as the Admin GraphQL API shows it at the end: its `newest` version, less the
    /// `refunds`, which it lists (every transaction succeeded by then); updated when the version
    /// listing them was. Times are UTC at second precision, as GraphQL gives them.
    fn node(&self, newest: &Newest, refunds: &[PlannedRefund]) -> Value {
        let refunded: Decimal = refunds.iter().map(|r| r.shop).sum();
        let updated_ms = self.updated_with_refunds(newest, refunds);
        let money = |amount: Decimal| {
            json!({"shopMoney": {"amount": amount.to_string(), "currencyCode": "USD"},
                   "presentmentMoney": {"amount": self.presentment(amount).to_string(), "currencyCode": self.presentment_currency}})
        };
        let time = tributary_schemas::time::format_rfc3339_seconds;
        json!({
            "id": format!("gid://shopify/Order/{}", self.id), "legacyResourceId": self.id.to_string(),
            "name": format!("#{}", 1000 + self.number), "createdAt": time(self.created_ms),
            "updatedAt": time(updated_ms), "cancelledAt": newest.cancelled.then(|| time(newest.updated_ms)),
            "test": self.test, "sourceName": self.source_name,
            "tags": self.tags.split(',').map(str::trim).filter(|t| !t.is_empty()).collect::<Vec<_>>(),
            "email": self.email, "discountCodes": self.codes,
            "displayFinancialStatus": if newest.cancelled { "VOIDED" } else if refunded.is_zero() { "PAID" } else { "PARTIALLY_REFUNDED" },
            "currentTotalPriceSet": money((newest.total - refunded).max(Decimal::ZERO)),
            "totalPriceSet": money(newest.total),
            "customer": {"legacyResourceId": self.customer_id().to_string()},
            "customerJourneySummary": {"ready": true, "firstVisit": {"landingPage": self.landing_site}},
            "refunds": refunds.iter().map(|r| json!({
                "id": format!("gid://shopify/Refund/{}", r.id), "legacyResourceId": r.id.to_string(), "createdAt": time(r.at_ms),
                "transactions": {"nodes": [
                    {"kind": "REFUND", "status": "SUCCESS", "amountSet": {"shopMoney": {"amount": r.shop.to_string(), "currencyCode": "USD"}}},
                    {"kind": "REFUND", "status": "FAILURE", "amountSet": {"shopMoney": {"amount": "1.00", "currencyCode": "USD"}}}]}
            })).collect::<Vec<_>>(),
        })
    }

    /// When the order was last updated: its newest version, or the version listing its refunds
    /// (a minute after the last of them).
    fn updated_with_refunds(&self, newest: &Newest, refunds: &[PlannedRefund]) -> i64 {
        refunds
            .iter()
            .map(|r| r.at_ms + 60_000)
            .fold(newest.updated_ms, i64::max)
    }

    /// A refund's successful transaction as REST gives it: `amount` in the transaction's
    /// (presentment) currency, `amount_set` in shop and presentment money.
    fn rest_refund_transaction(&self, refund: &PlannedRefund) -> Value {
        json!({"id": refund.id + 1, "order_id": self.id, "kind": "refund", "gateway": "shopify_payments",
               "status": "success", "amount": refund.presentment.to_string(), "currency": self.presentment_currency,
               "amount_set": {"shop_money": {"amount": refund.shop.to_string(), "currency_code": "USD"},
                              "presentment_money": {"amount": refund.presentment.to_string(), "currency_code": self.presentment_currency}}})
    }

    /// The `orders/updated` Shopify sends once the order is refunded: its newest version with its
    /// current total lowered by the `refunds`, which it lists, every transaction succeeded.
    fn listing_version(
        &self,
        newest: &Newest,
        refunds: &[PlannedRefund],
        secret: &str,
    ) -> Delivery {
        let refunded: Decimal = refunds.iter().map(|r| r.shop).sum();
        let current = (newest.total - refunded).max(Decimal::ZERO);
        let status = if newest.cancelled {
            "voided"
        } else if current.is_zero() {
            "refunded"
        } else {
            "partially_refunded"
        };
        let listed: Vec<Value> = refunds
            .iter()
            .map(|r| {
                json!({"id": r.id, "order_id": self.id, "created_at": format_rfc3339_ms(r.at_ms),
                       "transactions": [self.rest_refund_transaction(r)]})
            })
            .collect();
        let updated_ms = self.updated_with_refunds(newest, refunds);
        Delivery {
            shop: self.shop.clone(),
            order_id: self.id,
            topic: "orders/updated",
            webhook_id: format!("wh-refunded-{:x}", self.id),
            event_id: format!("evt-refunded-{:x}", self.id),
            triggered_at_ms: updated_ms + 200,
            body: self.body(updated_ms, current, status, &listed),
            secret: secret.to_owned(),
        }
    }

    /// A realistic Shopify REST order payload (about 3–7 KB) listing `refunds` (REST refunds).
    fn body(
        &self,
        updated_ms: i64,
        total: Decimal,
        financial_status: &str,
        refunds: &[Value],
    ) -> Vec<u8> {
        let money = |amount: Decimal| {
            json!({"shop_money": {"amount": amount.to_string(), "currency_code": "USD"},
                   "presentment_money": {"amount": self.presentment(amount).to_string(), "currency_code": self.presentment_currency}})
        };
        let line_items: Vec<Value> = self
            .lines
            .iter()
            .enumerate()
            .map(|(i, (title, price, quantity))| {
                json!({"id": self.id * 10 + i as u64, "admin_graphql_api_id": format!("gid://shopify/LineItem/{}", self.id * 10 + i as u64),
                       "title": title, "name": title, "quantity": quantity, "price": price.to_string(), "price_set": money(*price),
                       "sku": format!("SKU-{}", title.len() * 97), "vendor": "Tributary Outdoors", "product_id": 7_000_000_000u64 + title.len() as u64,
                       "variant_id": 44_000_000_000u64 + i as u64, "requires_shipping": true, "taxable": true, "gift_card": false,
                       "fulfillment_service": "manual", "grams": 450, "total_discount": "0.00", "total_discount_set": money(Decimal::ZERO),
                       "fulfillable_quantity": quantity, "fulfillment_status": null, "product_exists": true, "variant_inventory_management": "shopify",
                       "properties": [], "tax_lines": [{"title": "State Tax", "price": "0.00", "rate": 0.06, "price_set": money(Decimal::ZERO)}],
                       "discount_allocations": [], "duties": []})
            })
            .collect();
        let address = json!({"first_name": "Sam", "last_name": "Rivera", "address1": "123 Alder St", "address2": "", "city": "Portland",
                             "province": "Oregon", "country": "United States", "zip": "97205", "phone": "555-0100", "company": null,
                             "latitude": 45.52, "longitude": -122.68, "country_code": "US", "province_code": "OR", "name": "Sam Rivera"});
        let created = format_rfc3339_ms(self.created_ms);
        let cancelled = financial_status == "voided";
        let order = json!({
            "id": self.id, "admin_graphql_api_id": format!("gid://shopify/Order/{}", self.id),
            "app_id": 580111, "browser_ip": "203.0.113.7", "buyer_accepts_marketing": false,
            "cancel_reason": cancelled.then_some("customer"), "cancelled_at": cancelled.then(|| format_rfc3339_ms(updated_ms)),
            "cart_token": format!("c1-{:x}", self.id), "checkout_id": self.id + 3, "checkout_token": format!("{:x}", self.id * 31),
            "confirmation_number": format!("K{:08X}", self.id % 99_999_999), "confirmed": true, "contact_email": self.email,
            "created_at": created, "currency": "USD", "current_subtotal_price": total.to_string(),
            "current_total_price": total.to_string(), "current_total_price_set": money(total), "current_total_tax": "0.00",
            "customer_locale": "en-US", "discount_codes": self.codes.iter().map(|c| json!({"code": c, "amount": "10.00", "type": "percentage"})).collect::<Vec<_>>(),
            "email": self.email, "estimated_taxes": false, "financial_status": financial_status, "fulfillment_status": null,
            "landing_site": self.landing_site, "landing_site_ref": null, "name": format!("#{}", 1000 + self.number), "note": null,
            "note_attributes": [], "number": self.number, "order_number": 1000 + self.number,
            "order_status_url": format!("https://{}/orders/{:x}/authenticate", self.shop, self.id),
            "payment_gateway_names": ["shopify_payments"], "presentment_currency": self.presentment_currency,
            "processed_at": created, "referring_site": "https://www.instagram.com/", "source_name": self.source_name,
            "subtotal_price": self.total.to_string(), "subtotal_price_set": money(self.total), "tags": self.tags, "taxes_included": false,
            "test": self.test, "token": format!("{:x}", self.id * 17), "total_discounts": "0.00", "total_discounts_set": money(Decimal::ZERO),
            "total_line_items_price": self.total.to_string(), "total_price": self.total.to_string(), "total_price_set": money(self.total),
            "total_shipping_price_set": money(Decimal::new(599, 2)), "total_tax": "0.00", "total_weight": 1350,
            "updated_at": format_rfc3339_ms(updated_ms), "billing_address": address, "shipping_address": address,
            "customer": {"id": self.customer_id(), "email": self.email, "first_name": "Sam", "last_name": "Rivera",
                         "state": "enabled", "verified_email": true, "tags": "", "currency": "USD", "accepts_marketing": false,
                         "default_address": address},
            "line_items": line_items,
            "shipping_lines": [{"id": self.id + 5, "title": "Standard", "price": "5.99", "code": "STANDARD", "source": "shopify",
                                "price_set": money(Decimal::new(599, 2)), "discount_allocations": [], "tax_lines": []}],
            "fulfillments": [], "refunds": refunds, "tax_lines": [], "discount_applications": []
        });
        serde_json::to_vec(&order).expect("json! values serialize")
    }
}

/// Each delivery with the total its payload carries.
fn deliveries(
    rng: &mut StdRng,
    order: &OrderSpec,
    pattern: Pattern,
    secret: &str,
) -> Vec<(Delivery, Decimal)> {
    let upsell = order.upsell_total();
    let version = |topic: &'static str, n: i64, total: Decimal, status: &str, id: &str| {
        let updated = order.created_ms + n * 60_000;
        (
            Delivery {
                shop: order.shop.clone(),
                order_id: order.id,
                topic,
                webhook_id: format!("{id}-{:x}", order.id),
                event_id: format!("evt-{}-{:x}", n, order.id),
                triggered_at_ms: updated + 200,
                body: order.body(updated, total, status, &[]),
                secret: secret.to_owned(),
            },
            total,
        )
    };
    let created = version("orders/create", 0, order.total, "paid", "wh-create");
    match pattern {
        Pattern::Once => vec![created],
        Pattern::Redelivered => vec![created.clone(), created],
        Pattern::EventResent => {
            let mut again = created.clone();
            again.0.webhook_id = format!("wh-retry-{}-{:x}", rng.gen::<u16>(), order.id);
            vec![created, again]
        }
        Pattern::NewerFirst => vec![
            version("orders/updated", 2, upsell, "paid", "wh-upd2"),
            created,
        ],
        Pattern::Cancelled => vec![
            created,
            version("orders/cancelled", 2, order.total, "voided", "wh-cancel2"),
        ],
        Pattern::UpdatesOutOfOrder => vec![
            created,
            version("orders/fulfilled", 3, upsell, "paid", "wh-ful3"),
            version("orders/updated", 2, upsell, "paid", "wh-upd2"),
        ],
    }
}

/// A refund as the generator plans it: its id, when it was made, and its amount in shop money
/// (and in presentment money), with how its `refunds/create` webhook shows it.
#[derive(Debug, Clone)]
struct PlannedRefund {
    id: u64,
    at_ms: i64,
    /// What it refunds in shop money (USD): what Shopify lists for it and what it counts for.
    shop: Decimal,
    /// The same in the order's presentment currency.
    presentment: Decimal,
    /// Its webhook gives the transaction only in presentment money (`amount` and `currency`,
    /// no `amount_set`), which the pipeline converts at the order's own rate.
    presentment_only: bool,
    /// Its webhook shows the transaction `pending`; the order version listing it shows it
    /// succeeded.
    pending: bool,
}

/// How an order is refunded, as shares of its gross (`None` is the whole gross): about one order
/// in seven, partially, in full, or in two partials.
fn refund_shares(rng: &mut StdRng) -> Vec<Option<i64>> {
    match rng.gen_range(0..100) {
        0..=6 => vec![Some(rng.gen_range(10..60))],
        7..=10 => vec![None],
        11..=13 => vec![Some(rng.gen_range(5..30)), Some(rng.gen_range(5..30))],
        _ => Vec::new(),
    }
}

/// The refunds of `shares` of `gross` (the settled gross). For an order presented in EUR, half the
/// refunds are given only in EUR: the shop amount is then what the attribution contract converts
/// that to (the order's own rate, gross over presentment gross, half away from zero to the cent),
/// as Shopify converts at the order's rate. A refund is pending at its webhook one time in four
/// when a version listing it as succeeded is delivered (`listed`).
fn plan_refunds(
    rng: &mut StdRng,
    order: &OrderSpec,
    gross: Decimal,
    shares: &[Option<i64>],
    listed: bool,
) -> Vec<PlannedRefund> {
    shares
        .iter()
        .enumerate()
        .map(|(k, share)| {
            let amount = share.map_or(gross, |percent| {
                (gross * Decimal::new(percent, 2)).round_dp(2)
            });
            let presentment = order.presentment(amount);
            let presentment_only = order.presentment_currency != "USD" && rng.gen_bool(0.5);
            let shop = if presentment_only {
                (presentment * gross / order.presentment(gross))
                    .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
            } else {
                amount
            };
            PlannedRefund {
                id: order.id * 10 + k as u64,
                at_ms: order.created_ms + 4 * 60_000 + k as i64 * 30_000,
                shop,
                presentment,
                presentment_only,
                pending: listed && rng.gen_range(0..4) == 0,
            }
        })
        .collect()
}

/// The `refunds/create` webhooks of `refunds`, one each, and sometimes a second delivery of one
/// (it counts once).
fn refund_deliveries(
    rng: &mut StdRng,
    order: &OrderSpec,
    refunds: &[PlannedRefund],
    secret: &str,
) -> Vec<Delivery> {
    let mut out = Vec::new();
    for refund in refunds {
        let mut paid = order.rest_refund_transaction(refund);
        if refund.pending {
            paid["status"] = json!("pending");
        }
        if let Some(paid) = paid.as_object_mut().filter(|_| refund.presentment_only) {
            paid.remove("amount_set");
        }
        let body = serde_json::to_vec(&json!({
            "id": refund.id, "order_id": order.id, "created_at": format_rfc3339_ms(refund.at_ms),
            "note": "Customer returned an item", "restock": true, "user_id": null,
            "processed_at": format_rfc3339_ms(refund.at_ms), "refund_line_items": [], "order_adjustments": [],
            "transactions": [
                paid,
                {"id": refund.id + 2, "order_id": order.id, "kind": "refund", "gateway": "shopify_payments",
                 "status": "failure", "amount": "1.00", "currency": "USD"}
            ]
        }))
        .expect("json! values serialize");
        let delivery = Delivery {
            shop: order.shop.clone(),
            order_id: order.id,
            topic: "refunds/create",
            webhook_id: format!("wh-refund-{:x}", refund.id),
            event_id: format!("evt-refund-{:x}", refund.id),
            triggered_at_ms: refund.at_ms + 200,
            body,
            secret: secret.to_owned(),
        };
        if rng.gen_range(0..4) == 0 {
            out.push(delivery.clone()); // redelivered: counts once
        }
        out.push(delivery);
    }
    out
}

#[derive(Debug, Default)]
pub struct SendReport {
    pub sent: usize,
    pub failed: usize,
    pub latencies_us: Vec<u64>,
    /// When each order's first delivery was sent, by order id.
    pub first_sent: Vec<(u64, Instant)>,
    pub elapsed: Duration,
}

/// Sends every order's deliveries in order; different orders go concurrently.
pub async fn send(
    url: &str,
    plan: &Plan,
    concurrency: usize,
    progress: Option<indicatif::ProgressBar>,
) -> SendReport {
    send_paced(url, plan, concurrency, None, progress).await
}

/// [`send`], starting at most `orders_per_second` orders per second when given.
pub async fn send_paced(
    url: &str,
    plan: &Plan,
    concurrency: usize,
    orders_per_second: Option<f64>,
    progress: Option<indicatif::ProgressBar>,
) -> SendReport {
    // Shopify gives up on a webhook after 5 s and retries it later; so does the generator.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default();
    let progress = Arc::new(progress);
    let started = Instant::now();
    let spacing = orders_per_second
        .filter(|rate| *rate > 0.0)
        .map(|rate| Duration::from_secs_f64(1.0 / rate));
    // One store after another: each store's orders lie in their own month of event time (see
    // [`plan`]), so a store's deliveries must all be in before the next store's first moves the
    // partitions' watermark a month on, past the wait of a refund still waiting for its order.
    let mut results: Vec<OrderSent> = Vec::with_capacity(plan.orders.len());
    let mut first_index = 0;
    let shop = |order: &Vec<Delivery>| order.first().map(|d| d.shop.clone());
    for store in plan.orders.chunk_by(|a, b| shop(a) == shop(b)) {
        let indexes = first_index..first_index + store.len();
        first_index += store.len();
        // Owned items: a stream over borrowed ones cannot be moved into a spawned task.
        let sent: Vec<OrderSent> = stream::iter(indexes.zip(store.iter().cloned()))
            .map(|(index, deliveries)| {
                let client = client.clone();
                let progress = progress.clone();
                async move {
                    if let Some(spacing) = spacing {
                        tokio::time::sleep_until((started + spacing * index as u32).into()).await;
                    }
                    let mut order = OrderSent {
                        sent: 0,
                        failed: 0,
                        latencies_us: Vec::with_capacity(deliveries.len()),
                        first_sent: (deliveries.first().map_or(0, |d| d.order_id), Instant::now()),
                    };
                    for delivery in &deliveries {
                        // Retry as Shopify would, so a 503 during a broker hiccup is not a loss.
                        for attempt in 0..8u32 {
                            let t = Instant::now();
                            let result = delivery.request(&client, url).send().await;
                            order.latencies_us.push(t.elapsed().as_micros() as u64);
                            match result {
                                Ok(r) if r.status().is_success() => {
                                    order.sent += 1;
                                    break;
                                }
                                _ if attempt == 7 => order.failed += 1,
                                // 0.2 s doubling to 5 s: about 16 s in all, time for a pipeline
                                // that refuses while it catches up.
                                _ => {
                                    tokio::time::sleep(
                                        Duration::from_millis(200 << attempt)
                                            .min(Duration::from_secs(5)),
                                    )
                                    .await
                                }
                            }
                        }
                        if let Some(bar) = progress.as_ref() {
                            bar.inc(1);
                        }
                    }
                    order
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        results.extend(sent);
    }
    let mut report = SendReport {
        elapsed: started.elapsed(),
        ..Default::default()
    };
    for order in results {
        report.sent += order.sent;
        report.failed += order.failed;
        report.latencies_us.extend(order.latencies_us);
        report.first_sent.push(order.first_sent);
    }
    report
}

struct OrderSent {
    sent: usize,
    failed: usize,
    latencies_us: Vec<u64>,
    first_sent: (u64, Instant),
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_control::files::{read_advocates, StoresFile};

    fn demo_plan(orders: usize, seed: u64) -> Plan {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let stores = StoresFile::read(&root.join("deploy/demo/stores.toml")).expect("stores");
        let advocates = read_advocates(&root.join("deploy/demo/advocates.csv")).expect("advocates");
        plan(&stores.store, &advocates, orders, seed).expect("plan")
    }

    fn body(delivery: &Delivery) -> Value {
        serde_json::from_slice(&delivery.body).expect("generated JSON")
    }

    /// The demo, the crash test and the bench cover the contract's refund rules only if the
    /// stream carries each case; this counts them in a demo-sized plan.
    #[test]
    fn the_stream_carries_every_kind_of_refund_the_contract_names() {
        let plan = demo_plan(400, 7);
        let (mut before_order, mut presentment_only, mut pending, mut listing) = (0, 0, 0, 0);
        for order in &plan.orders {
            let first_version = order.iter().position(|d| d.topic != "refunds/create");
            let refunds = order
                .iter()
                .enumerate()
                .filter(|(_, d)| d.topic == "refunds/create");
            for (at, delivery) in refunds {
                before_order += usize::from(first_version.is_some_and(|v| at < v));
                let paid = body(delivery)["transactions"][0].clone();
                presentment_only += usize::from(paid.get("amount_set").is_none());
                pending += usize::from(paid["status"] == "pending");
            }
            for version in order.iter().filter(|d| d.topic == "orders/updated") {
                let listed = body(version)["refunds"].as_array().map_or(0, Vec::len);
                if listed > 0 {
                    listing += 1;
                    // Shopify lowers the current total by the refunds it lists.
                    let json = body(version);
                    let current: Decimal = json["current_total_price"]
                        .as_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    assert!(current >= Decimal::ZERO);
                }
            }
        }
        // Two demo stores, 800 orders, about 115 refunded; counted in deliveries (redeliveries too).
        for (case, count) in [
            ("refund delivered before its order", before_order),
            ("refund only in presentment money", presentment_only),
            ("refund pending at its webhook", pending),
            ("order version listing its refunds", listing),
        ] {
            eprintln!("{case}: {count}");
            assert!(count >= 10, "{case}: {count}");
        }
        // A plan is the same from the same seed.
        let again = demo_plan(400, 7);
        assert_eq!(again.expected, plan.expected);
        assert_eq!(again.deliveries(), plan.deliveries());
    }
}
