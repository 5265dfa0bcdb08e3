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
        // less the last version's 3 minutes: nothing settles until the idle tick at the end, so
        // every order settles with its newest version, whatever order the deliveries race in.
        // (A refund in the hold window still counts: refunds wait with their held order.)
        let store_start_ms = start_ms + store_index as i64 * 30 * 86_400_000;
        let delay_ms = i64::from(store.settle_delay_minutes.max(0)) * 60_000;
        let reward = store
            .reward
            .as_ref()
            .filter(|_| store.features.attribution_rewards);
        let spacing_ms = if delay_ms == 0 {
            1_500
        } else {
            // Versions come up to 3 minutes and refunds up to 5 minutes after an order.
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
            orders_delivered += usize::from(!deliveries.is_empty());
            // With no delay the first delivered version settles; with one, the newest; with none
            // delivered, the newest version, as reconciliation reads it.
            let settled = if delay_ms == 0 {
                deliveries.first()
            } else {
                deliveries.iter().max_by_key(|(d, _)| d.triggered_at_ms)
            };
            let newest = newest_version(&order, pattern);
            let gross = settled.map_or(newest.total, |(_, total)| *total);
            let mut refunds = refunds(&mut rng, &order, gross, &secret);
            // Every refund counts, delivered or read back by reconciliation.
            let refunded: Decimal = refunds.iter().map(|(_, amount)| *amount).sum();
            if let Some(percent) = lost_percent {
                order_nodes.push((domain.clone(), order.node(&newest, &refunds)));
                refunds.retain(|_| rng.gen_range(0..100) >= percent);
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
            deliveries.extend(refunds);
            planned.push(deliveries.into_iter().map(|(d, _)| d).collect());
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
    /// refunds (each `(delivery, amount)` of [`refunds`]; a redelivery has amount 0), which it
    /// lists; updated at the last of them. Times are UTC at second precision, as GraphQL gives them.
    fn node(&self, newest: &Newest, refunds: &[(Delivery, Decimal)]) -> Value {
        let given: Vec<(u64, i64, Decimal)> = refunds
            .iter()
            .filter(|(_, amount)| !amount.is_zero())
            .enumerate()
            .map(|(k, (_, amount))| {
                let at_ms = self.created_ms + 4 * 60_000 + k as i64 * 30_000;
                (self.id * 10 + k as u64, at_ms, *amount)
            })
            .collect();
        let refunded: Decimal = given.iter().map(|(_, _, amount)| *amount).sum();
        let updated_ms = given
            .iter()
            .map(|(_, at_ms, _)| *at_ms)
            .fold(newest.updated_ms, i64::max);
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
            "refunds": given.iter().map(|(id, at_ms, amount)| json!({
                "legacyResourceId": id.to_string(), "createdAt": time(*at_ms),
                "transactions": {"nodes": [
                    {"kind": "REFUND", "status": "SUCCESS", "amountSet": {"shopMoney": {"amount": amount.to_string(), "currencyCode": "USD"}}},
                    {"kind": "REFUND", "status": "FAILURE", "amountSet": {"shopMoney": {"amount": "1.00", "currencyCode": "USD"}}}]}
            })).collect::<Vec<_>>(),
        })
    }

    /// A realistic Shopify REST order payload (about 3–7 KB).
    fn body(&self, updated_ms: i64, total: Decimal, financial_status: &str) -> Vec<u8> {
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
            "fulfillments": [], "refunds": [], "tax_lines": [], "discount_applications": []
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
                body: order.body(updated, total, status),
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

/// Refunds for about one order in seven: partial, full, or two partials; a refund is sometimes
/// delivered twice. Each comes with the amount it refunds (counted once).
fn refunds(
    rng: &mut StdRng,
    order: &OrderSpec,
    gross: Decimal,
    secret: &str,
) -> Vec<(Delivery, Decimal)> {
    let cents = |fraction_percent: i64| (gross * Decimal::new(fraction_percent, 2)).round_dp(2);
    let amounts: Vec<Decimal> = match rng.gen_range(0..100) {
        0..=6 => vec![cents(rng.gen_range(10..60))],
        7..=10 => vec![gross],
        11..=13 => vec![cents(rng.gen_range(5..30)), cents(rng.gen_range(5..30))],
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    for (k, amount) in amounts.into_iter().enumerate() {
        let refund_id = order.id * 10 + k as u64;
        let at_ms = order.created_ms + 4 * 60_000 + k as i64 * 30_000;
        let body = serde_json::to_vec(&json!({
            "id": refund_id, "order_id": order.id, "created_at": format_rfc3339_ms(at_ms),
            "note": "Customer returned an item", "restock": true, "user_id": null,
            "processed_at": format_rfc3339_ms(at_ms), "refund_line_items": [], "order_adjustments": [],
            "transactions": [
                {"id": refund_id + 1, "order_id": order.id, "kind": "refund", "gateway": "shopify_payments",
                 "status": "success", "amount": amount.to_string(), "currency": "USD",
                 "amount_set": {"shop_money": {"amount": amount.to_string(), "currency_code": "USD"},
                                "presentment_money": {"amount": amount.to_string(), "currency_code": "USD"}}},
                {"id": refund_id + 2, "order_id": order.id, "kind": "refund", "gateway": "shopify_payments",
                 "status": "failure", "amount": "1.00", "currency": "USD"}
            ]
        }))
        .expect("json! values serialize");
        let delivery = Delivery {
            shop: order.shop.clone(),
            order_id: order.id,
            topic: "refunds/create",
            webhook_id: format!("wh-refund-{refund_id:x}"),
            event_id: format!("evt-refund-{refund_id:x}"),
            triggered_at_ms: at_ms + 200,
            body,
            secret: secret.to_owned(),
        };
        if rng.gen_range(0..4) == 0 {
            out.push((delivery.clone(), Decimal::ZERO)); // redelivered: counts once
        }
        out.push((delivery, amount));
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
    // Owned items: a stream over borrowed ones cannot be moved into a spawned task.
    let results: Vec<OrderSent> = stream::iter(plan.orders.iter().cloned().enumerate())
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
