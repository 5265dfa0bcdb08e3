//! Raw Shopify webhook envelopes → typed order events.
//!
//! Handled topics: `orders/create` (PLACED), `orders/updated` (UPDATED), `orders/paid` (PAID),
//! `orders/fulfilled` (FULFILLED), `orders/cancelled` (CANCELLED); each carries the full order.
//! An order read through the Admin API (topic [`WebhookEnvelope::TOPIC_ADMIN_ORDER`], the
//! reconciliation pull) is an UPDATED event built from the same fields by their GraphQL names
//! (`../shared/research/shopify-remaining.md` §1.4).
//! `refunds/create` becomes a [`RefundEvent`]: the sum of its successful refund transactions.
//! Every other topic (`orders/edited`, products, privacy, …) is skipped and
//! counted in `tributary_normalize_skipped_total{topic}`; the envelope stays in `shopify.webhooks`
//! for the stages that will read it. A payload that is not the JSON an order topic promises is an
//! error, which the runner dead-letters.

use rust_decimal::{Decimal, RoundingStrategy};
use serde::Deserialize;
use tributary_schemas::time::parse_rfc3339_ms;
use tributary_schemas::{
    CurrencyAmount, ListedRefund, ManualAttribution, OperatorCommand, OrderEvent, OrderEventKind,
    RewardApproval, WebhookEnvelope,
};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NormalizeError {
    #[error("body is not a Shopify order: {0}")]
    Json(String),
    #[error("field {field} is not an RFC 3339 time: {value:?}")]
    Time { field: &'static str, value: String },
    #[error("order {0} has no current_total_price")]
    MissingTotal(u64),
    #[error("body is not a Shopify refund: {0}")]
    RefundJson(String),
    #[error("body is not a {topic} command: {message}")]
    CommandJson { topic: String, message: String },
    #[error("unknown operator command {0}")]
    UnknownCommand(String),
    #[error("{field} {value} is out of range: ids are at most 2^63 - 1 (Avro's long)")]
    IdOutOfRange { field: &'static str, value: u64 },
    #[error("{field} {value:?} is outside 1970-01-01 to 2106-02-07, the times the analysts' tables hold")]
    TimeOutOfRange { field: &'static str, value: String },
}

/// The largest id the topic contract carries: records encode ids as Avro `long`, which is
/// signed. Shopify's ids are far below it.
pub const MAX_ID: u64 = i64::MAX as u64;
/// The latest time ClickHouse's `DateTime` holds (2106-02-07T06:28:15Z), in ms.
pub const MAX_TIME_MS: i64 = u32::MAX as i64 * 1_000;

/// `value` of `field` if the contract can carry it.
fn id(field: &'static str, value: u64) -> Result<u64, NormalizeError> {
    if value > MAX_ID {
        return Err(NormalizeError::IdOutOfRange { field, value });
    }
    Ok(value)
}

/// An RFC 3339 time of `field`, in ms, within what the analysts' tables hold.
fn time(field: &'static str, value: &str) -> Result<i64, NormalizeError> {
    let ms = parse_rfc3339_ms(value).ok_or_else(|| NormalizeError::Time {
        field,
        value: value.to_owned(),
    })?;
    if !(0..=MAX_TIME_MS).contains(&ms) {
        return Err(NormalizeError::TimeOutOfRange {
            field,
            value: value.to_owned(),
        });
    }
    Ok(ms)
}

#[derive(Debug, PartialEq)]
pub enum Normalized {
    Order(Box<OrderEvent>),
    Refund(RefundEvent),
    Manual(ManualCommand),
    Approval(ApprovalCommand),
    Skipped,
}

/// An operator's command about one order (see [`WebhookEnvelope::operator_command`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Command<T> {
    pub shop_domain: String,
    /// The envelope's id: a command is applied once.
    pub command_id: String,
    /// The operator's clock when the command was issued; the same in every replay.
    pub issued_at_ms: i64,
    pub body: T,
}

pub type ManualCommand = Command<ManualAttribution>;
pub type ApprovalCommand = Command<RewardApproval>;

/// One `refunds/create`: money returned to the buyer.
#[derive(Debug, Clone, PartialEq)]
pub struct RefundEvent {
    pub shop_domain: String,
    pub order_id: u64,
    /// The refund's id and its successful `refund` transactions.
    pub refund: ListedRefund,
    pub webhook_id: String,
    pub triggered_at_ms: i64,
}

/// A refund in the order's shop money: transactions already in shop money as they are; one in
/// another currency (the order's presentment currency) at the order's own rate,
/// `shop_total / presentment_total`, rounded half away from zero to the cent (the attribution
/// contract; Shopify's REST refund gives `amount` in the transaction's `currency`, and
/// `amount_set` only on newer payloads).
pub fn shop_amount(
    refund: &ListedRefund,
    shop_currency: &str,
    shop_total: Decimal,
    presentment_total: Decimal,
) -> Decimal {
    let converted: Decimal = refund
        .in_currency
        .iter()
        .map(|CurrencyAmount { amount, currency }| {
            if currency.eq_ignore_ascii_case(shop_currency) || presentment_total.is_zero() {
                *amount
            } else {
                (*amount * shop_total / presentment_total)
                    .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
            }
        })
        .sum();
    refund.amount + converted
}

pub fn kind_of(topic: &str) -> Option<OrderEventKind> {
    Some(match topic {
        "orders/create" => OrderEventKind::Placed,
        "orders/updated" => OrderEventKind::Updated,
        "orders/paid" => OrderEventKind::Paid,
        "orders/fulfilled" => OrderEventKind::Fulfilled,
        "orders/cancelled" => OrderEventKind::Cancelled,
        _ => return None,
    })
}

pub fn normalize(envelope: &WebhookEnvelope) -> Result<Normalized, NormalizeError> {
    if envelope.source == WebhookEnvelope::SOURCE_MANUAL {
        return normalize_command(envelope);
    }
    if envelope.topic == "refunds/create" {
        return normalize_refund(envelope);
    }
    let (kind, order) = if envelope.topic == WebhookEnvelope::TOPIC_ADMIN_ORDER {
        let node: AdminOrder = serde_json::from_slice(&envelope.body)
            .map_err(|e| NormalizeError::Json(e.to_string()))?;
        (OrderEventKind::Updated, node.into_rest()?)
    } else {
        let Some(kind) = kind_of(&envelope.topic) else {
            metrics::counter!("tributary_normalize_skipped_total", "topic" => envelope.topic.clone())
                .increment(1);
            return Ok(Normalized::Skipped);
        };
        let order: ShopifyOrder = serde_json::from_slice(&envelope.body)
            .map_err(|e| NormalizeError::Json(e.to_string()))?;
        (kind, order)
    };
    let order_id = id("order id", order.id)?;
    let customer_id = order
        .customer
        .as_ref()
        .map(|c| id("customer id", c.id))
        .transpose()?;
    let shop_money = order
        .current_total_price_set
        .as_ref()
        .map(|set| &set.shop_money);
    let current_total_price = order
        .current_total_price
        .or(shop_money.map(|m| m.amount))
        .or(order.total_price)
        .ok_or(NormalizeError::MissingTotal(order.id))?;
    let presentment = order
        .current_total_price_set
        .as_ref()
        .map(|set| &set.presentment_money);
    let currency = order.currency.clone();
    // The refunds this version lists, in shop money at the order's own rate: its current totals,
    // or its original ones once a full refund has brought the current ones to zero.
    let rate = [&order.current_total_price_set, &order.total_price_set]
        .into_iter()
        .flatten()
        .map(|set| (set.shop_money.amount, set.presentment_money.amount))
        .find(|(shop, presentment)| !shop.is_zero() && !presentment.is_zero());
    let refunds = order
        .refunds
        .iter()
        .map(|r| {
            let mut refund = listed(r.id, &r.transactions)?;
            if let Some((shop, presentment)) = rate {
                refund.amount = shop_amount(&refund, &currency, shop, presentment);
                refund.in_currency.clear();
            }
            Ok(refund)
        })
        .collect::<Result<Vec<ListedRefund>, NormalizeError>>()?;
    Ok(Normalized::Order(Box::new(OrderEvent {
        kind,
        shop_domain: envelope.shop_domain.clone(),
        order_id,
        webhook_id: envelope.webhook_id.clone(),
        event_id: envelope.event_id.clone(),
        triggered_at_ms: envelope.triggered_at_ms,
        created_at_ms: time("created_at", &order.created_at)?,
        updated_at_ms: time("updated_at", &order.updated_at)?,
        name: order.name.unwrap_or_else(|| format!("#{}", order.id)),
        email: order
            .email
            .or(order.contact_email)
            .or(order.customer.as_ref().and_then(|c| c.email.clone())),
        customer_id,
        current_total_price,
        presentment_currency: presentment
            .map(|m| m.currency_code.clone())
            .or(order.presentment_currency)
            .unwrap_or_else(|| currency.clone()),
        current_total_price_presentment: presentment
            .map(|m| m.amount)
            .unwrap_or(current_total_price),
        currency,
        discount_codes: order.discount_codes.into_iter().map(|d| d.code).collect(),
        landing_site: order.landing_site,
        source_name: order.source_name,
        tags: order
            .tags
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        test: order.test,
        financial_status: order.financial_status,
        fulfillment_status: order.fulfillment_status,
        cancelled_at_ms: order
            .cancelled_at
            .as_deref()
            .map(|t| time("cancelled_at", t))
            .transpose()?,
        refunds,
    })))
}

fn normalize_command(envelope: &WebhookEnvelope) -> Result<Normalized, NormalizeError> {
    fn command<T: serde::de::DeserializeOwned>(
        envelope: &WebhookEnvelope,
    ) -> Result<Command<T>, NormalizeError> {
        let body =
            serde_json::from_slice(&envelope.body).map_err(|e| NormalizeError::CommandJson {
                topic: envelope.topic.clone(),
                message: e.to_string(),
            })?;
        Ok(Command {
            shop_domain: envelope.shop_domain.clone(),
            command_id: envelope.webhook_id.clone(),
            issued_at_ms: envelope.triggered_at_ms,
            body,
        })
    }
    match envelope.topic.as_str() {
        OperatorCommand::ATTRIBUTE => Ok(Normalized::Manual(command(envelope)?)),
        OperatorCommand::APPROVE_REWARD => Ok(Normalized::Approval(command(envelope)?)),
        other => Err(NormalizeError::UnknownCommand(other.to_owned())),
    }
}

fn normalize_refund(envelope: &WebhookEnvelope) -> Result<Normalized, NormalizeError> {
    let refund: ShopifyRefund = serde_json::from_slice(&envelope.body)
        .map_err(|e| NormalizeError::RefundJson(e.to_string()))?;
    Ok(Normalized::Refund(RefundEvent {
        shop_domain: envelope.shop_domain.clone(),
        order_id: id("order id", refund.order_id)?,
        refund: listed(refund.id, &refund.transactions)?,
        webhook_id: envelope.webhook_id.clone(),
        triggered_at_ms: envelope.triggered_at_ms,
    }))
}

/// A refund's successful `refund` transactions: in shop money where the payload gives it
/// (`amount_set.shop_money`, or an `amount` without a currency), else with their currency.
fn listed(
    refund_id: u64,
    transactions: &[RefundTransaction],
) -> Result<ListedRefund, NormalizeError> {
    let (mut amount, mut in_currency) = (Decimal::ZERO, Vec::new());
    for t in transactions
        .iter()
        .filter(|t| t.kind == "refund" && t.status == "success")
    {
        match (&t.amount_set, &t.currency) {
            (Some(set), _) => amount += set.shop_money.amount,
            (None, Some(currency)) => in_currency.push(CurrencyAmount {
                amount: t.amount,
                currency: currency.clone(),
            }),
            (None, None) => amount += t.amount,
        }
    }
    Ok(ListedRefund {
        refund_id: id("refund id", refund_id)?,
        amount,
        in_currency,
    })
}

/// The fields of Shopify's REST refund payload that tributary reads.
#[derive(Deserialize)]
struct ShopifyRefund {
    id: u64,
    order_id: u64,
    #[serde(default)]
    transactions: Vec<RefundTransaction>,
}

/// A refund as an order payload lists it (its `refunds`).
#[derive(Deserialize)]
struct OrderRefund {
    id: u64,
    #[serde(default)]
    transactions: Vec<RefundTransaction>,
}

#[derive(Deserialize)]
struct RefundTransaction {
    kind: String,
    status: String,
    #[serde(with = "rust_decimal::serde::str")]
    amount: Decimal,
    /// The currency of `amount`: the shop's, or the order's presentment currency.
    currency: Option<String>,
    amount_set: Option<ShopMoneySet>,
}

#[derive(Deserialize)]
struct ShopMoneySet {
    shop_money: Money,
}

/// The fields of Shopify's REST order payload that tributary reads. Money is a JSON string;
/// a number there is refused rather than read through a float.
#[derive(Deserialize)]
struct ShopifyOrder {
    id: u64,
    name: Option<String>,
    email: Option<String>,
    contact_email: Option<String>,
    created_at: String,
    updated_at: String,
    currency: String,
    #[serde(default, with = "rust_decimal::serde::str_option")]
    current_total_price: Option<Decimal>,
    #[serde(default, with = "rust_decimal::serde::str_option")]
    total_price: Option<Decimal>,
    presentment_currency: Option<String>,
    current_total_price_set: Option<MoneySet>,
    /// The order's totals before edits and refunds: its rate when the current ones are zero.
    total_price_set: Option<MoneySet>,
    #[serde(default)]
    discount_codes: Vec<DiscountCode>,
    landing_site: Option<String>,
    source_name: Option<String>,
    #[serde(default)]
    tags: String,
    #[serde(default)]
    test: bool,
    financial_status: Option<String>,
    fulfillment_status: Option<String>,
    cancelled_at: Option<String>,
    /// The refunds this version already lists.
    #[serde(default)]
    refunds: Vec<OrderRefund>,
    customer: Option<Customer>,
}

#[derive(Deserialize)]
struct MoneySet {
    shop_money: Money,
    presentment_money: Money,
}

#[derive(Deserialize)]
struct Money {
    #[serde(with = "rust_decimal::serde::str")]
    amount: Decimal,
    currency_code: String,
}

#[derive(Deserialize)]
struct DiscountCode {
    code: String,
}

/// The fields of an Admin GraphQL `Order` node that tributary reads
/// (`tributary_shopify::operations::RECONCILE_ORDERS`): camelCase, ids as strings, money as
/// `MoneyBag`s, enums in capitals.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdminOrder {
    /// `UnsignedInt64`: a JSON string of digits.
    legacy_resource_id: String,
    name: Option<String>,
    email: Option<String>,
    created_at: String,
    updated_at: String,
    cancelled_at: Option<String>,
    #[serde(default)]
    test: bool,
    source_name: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    discount_codes: Vec<String>,
    display_financial_status: Option<String>,
    current_total_price_set: AdminMoneyBag,
    total_price_set: Option<AdminMoneyBag>,
    customer: Option<AdminCustomer>,
    customer_journey_summary: Option<AdminJourney>,
    #[serde(default)]
    refunds: Vec<AdminRefund>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdminMoneyBag {
    shop_money: AdminMoney,
    presentment_money: AdminMoney,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdminMoney {
    #[serde(with = "rust_decimal::serde::str")]
    amount: Decimal,
    currency_code: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdminCustomer {
    legacy_resource_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdminJourney {
    first_visit: Option<AdminVisit>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdminVisit {
    landing_page: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdminRefund {
    legacy_resource_id: String,
    transactions: AdminTransactions,
}

#[derive(Deserialize)]
struct AdminTransactions {
    nodes: Vec<AdminTransaction>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdminTransaction {
    kind: String,
    status: String,
    amount_set: AdminShopMoney,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdminShopMoney {
    shop_money: AdminMoney,
}

impl From<AdminMoney> for Money {
    fn from(m: AdminMoney) -> Self {
        Money {
            amount: m.amount,
            currency_code: m.currency_code,
        }
    }
}

impl From<AdminMoneyBag> for MoneySet {
    fn from(bag: AdminMoneyBag) -> Self {
        MoneySet {
            shop_money: bag.shop_money.into(),
            presentment_money: bag.presentment_money.into(),
        }
    }
}

/// A `legacyResourceId`: digits in a string.
fn legacy_id(field: &'static str, text: &str) -> Result<u64, NormalizeError> {
    text.parse()
        .map_err(|_| NormalizeError::Json(format!("{field} {text:?} is not a number")))
}

impl AdminOrder {
    /// The order as its webhook would carry it: the one reading of an order's fields
    /// (`REST ↔ GraphQL` map, `../shared/research/shopify-remaining.md` §1.4). Transactions come
    /// with their shop money; statuses and kinds are compared in lower case as in REST.
    fn into_rest(self) -> Result<ShopifyOrder, NormalizeError> {
        let refunds = self
            .refunds
            .into_iter()
            .map(|r| {
                Ok(OrderRefund {
                    id: legacy_id("refund legacyResourceId", &r.legacy_resource_id)?,
                    transactions: r
                        .transactions
                        .nodes
                        .into_iter()
                        .map(|t| RefundTransaction {
                            kind: t.kind.to_ascii_lowercase(),
                            status: t.status.to_ascii_lowercase(),
                            amount: t.amount_set.shop_money.amount,
                            currency: None,
                            amount_set: Some(ShopMoneySet {
                                shop_money: t.amount_set.shop_money.into(),
                            }),
                        })
                        .collect(),
                })
            })
            .collect::<Result<Vec<_>, NormalizeError>>()?;
        let customer = self
            .customer
            .map(|c| {
                Ok::<_, NormalizeError>(Customer {
                    id: legacy_id("customer legacyResourceId", &c.legacy_resource_id)?,
                    email: None,
                })
            })
            .transpose()?;
        let current = MoneySet::from(self.current_total_price_set);
        Ok(ShopifyOrder {
            id: legacy_id("order legacyResourceId", &self.legacy_resource_id)?,
            name: self.name,
            email: self.email,
            contact_email: None,
            created_at: self.created_at,
            updated_at: self.updated_at,
            currency: current.shop_money.currency_code.clone(),
            current_total_price: Some(current.shop_money.amount),
            total_price: None,
            presentment_currency: Some(current.presentment_money.currency_code.clone()),
            current_total_price_set: Some(current),
            total_price_set: self.total_price_set.map(MoneySet::from),
            discount_codes: self
                .discount_codes
                .into_iter()
                .map(|code| DiscountCode { code })
                .collect(),
            landing_site: self
                .customer_journey_summary
                .and_then(|j| j.first_visit)
                .and_then(|v| v.landing_page),
            source_name: self.source_name,
            tags: self.tags.join(", "),
            test: self.test,
            financial_status: self
                .display_financial_status
                .map(|s| s.to_ascii_lowercase()),
            fulfillment_status: None,
            cancelled_at: self.cancelled_at,
            refunds,
            customer,
        })
    }
}

#[derive(Deserialize)]
struct Customer {
    id: u64,
    email: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn envelope(topic: &str, body: &str) -> WebhookEnvelope {
        WebhookEnvelope {
            source: WebhookEnvelope::SOURCE_WEBHOOK.into(),
            shop_domain: "s.myshopify.com".into(),
            topic: topic.into(),
            webhook_id: "w".into(),
            event_id: None,
            triggered_at_ms: 0,
            api_version: "2025-10".into(),
            received_at_ms: 0,
            body: body.as_bytes().to_vec(),
        }
    }

    const ORDER: &str = r##"{"id": 9007199254740993, "name": "#1001", "email": "Buyer@Example.com",
        "created_at": "2025-11-28T10:00:00-05:00", "updated_at": "2025-11-28T10:00:01-05:00",
        "currency": "USD", "current_total_price": "100.10", "total_price": "120.00",
        "current_total_price_set": {"shop_money": {"amount": "100.10", "currency_code": "USD"},
                                    "presentment_money": {"amount": "92.35", "currency_code": "EUR"}},
        "discount_codes": [{"code": "anna10", "amount": "10.00", "type": "percentage"}],
        "landing_site": "/?ref=anna", "source_name": "web", "tags": "vip, Exclude ,",
        "test": false, "financial_status": "paid", "cancelled_at": null,
        "customer": {"id": 207119551, "email": "buyer@example.com"}}"##;

    #[test]
    fn listed_refunds_are_shop_money_at_the_orders_rate_even_once_fully_refunded() {
        // 134.10 USD for 107.28 EUR, refunded in full in EUR: the current totals are zero, so the
        // original ones give the rate.
        let order = ORDER
            .replace(
                r#""current_total_price": "100.10""#,
                r#""current_total_price": "0.00""#,
            )
            .replace(
                r#""current_total_price_set": {"shop_money": {"amount": "100.10", "currency_code": "USD"},
                                    "presentment_money": {"amount": "92.35", "currency_code": "EUR"}},"#,
                r#""current_total_price_set": {"shop_money": {"amount": "0.00", "currency_code": "USD"},
                                    "presentment_money": {"amount": "0.00", "currency_code": "EUR"}},
        "total_price_set": {"shop_money": {"amount": "134.10", "currency_code": "USD"},
                            "presentment_money": {"amount": "107.28", "currency_code": "EUR"}},
        "refunds": [{"id": 7, "transactions": [
            {"kind": "refund", "status": "success", "amount": "107.28", "currency": "EUR"}]}],"#,
            );
        let Normalized::Order(event) = normalize(&envelope("orders/updated", &order)).unwrap()
        else {
            panic!("{order}")
        };
        assert_eq!(
            event.refunds,
            vec![ListedRefund {
                refund_id: 7,
                amount: Decimal::from_str("134.10").unwrap(),
                in_currency: vec![],
            }]
        );
    }

    /// The Admin API's `Order` node of an order reads as the webhook of the same order does.
    #[test]
    fn an_admin_api_order_reads_as_its_webhook_does() {
        let node = r##"{"id": "gid://shopify/Order/9007199254740993", "legacyResourceId": "9007199254740993",
            "name": "#1001", "createdAt": "2025-11-28T15:00:00Z", "updatedAt": "2025-11-28T15:00:01Z",
            "cancelledAt": null, "test": false, "sourceName": "web", "tags": ["vip", "Exclude"],
            "email": "Buyer@Example.com", "discountCodes": ["anna10"], "displayFinancialStatus": "PARTIALLY_REFUNDED",
            "currentTotalPriceSet": {"shopMoney": {"amount": "100.10", "currencyCode": "USD"},
                                     "presentmentMoney": {"amount": "92.35", "currencyCode": "EUR"}},
            "totalPriceSet": {"shopMoney": {"amount": "120.00", "currencyCode": "USD"},
                              "presentmentMoney": {"amount": "110.70", "currencyCode": "EUR"}},
            "customer": {"legacyResourceId": "207119551"},
            "customerJourneySummary": {"ready": true, "firstVisit": {"landingPage": "https://s.myshopify.com/?ref=anna"}},
            "refunds": [{"legacyResourceId": "509562969", "transactions": {"nodes": [
                {"kind": "REFUND", "status": "SUCCESS", "amountSet": {"shopMoney": {"amount": "19.90", "currencyCode": "USD"}}},
                {"kind": "REFUND", "status": "PENDING", "amountSet": {"shopMoney": {"amount": "5.00", "currencyCode": "USD"}}}]}}]}"##;
        let mut read = envelope(WebhookEnvelope::TOPIC_ADMIN_ORDER, node);
        read.source = WebhookEnvelope::SOURCE_RECONCILE.into();
        let Normalized::Order(admin) = normalize(&read).unwrap() else {
            panic!()
        };
        let Normalized::Order(webhook) = normalize(&envelope("orders/updated", ORDER)).unwrap()
        else {
            panic!()
        };
        assert_eq!(admin.kind, OrderEventKind::Updated);
        assert_eq!(
            (admin.order_id, admin.created_at_ms, admin.updated_at_ms),
            (
                webhook.order_id,
                webhook.created_at_ms,
                webhook.updated_at_ms
            )
        );
        assert_eq!(
            (
                &admin.currency,
                admin.current_total_price,
                &admin.presentment_currency,
                admin.current_total_price_presentment
            ),
            (
                &webhook.currency,
                webhook.current_total_price,
                &webhook.presentment_currency,
                webhook.current_total_price_presentment
            )
        );
        assert_eq!(
            (
                &admin.discount_codes,
                &admin.tags,
                admin.customer_id,
                &admin.source_name
            ),
            (
                &webhook.discount_codes,
                &webhook.tags,
                webhook.customer_id,
                &webhook.source_name
            )
        );
        assert_eq!(
            admin.landing_site.as_deref(),
            Some("https://s.myshopify.com/?ref=anna")
        );
        // Only the successful transaction counts; the pending one waits for a later record.
        assert_eq!(
            admin.refunds,
            vec![ListedRefund {
                refund_id: 509_562_969,
                amount: Decimal::from_str("19.90").unwrap(),
                in_currency: vec![],
            }]
        );
        let bad_id = node.replace(
            r#""legacyResourceId": "9007199254740993""#,
            r#""legacyResourceId": "x""#,
        );
        assert!(matches!(
            normalize(&envelope(WebhookEnvelope::TOPIC_ADMIN_ORDER, &bad_id)),
            Err(NormalizeError::Json(_))
        ));
    }

    #[test]
    fn reads_a_shopify_order_exactly() {
        let Normalized::Order(event) = normalize(&envelope("orders/create", ORDER)).unwrap() else {
            panic!()
        };
        assert_eq!(event.order_id, 9_007_199_254_740_993);
        assert_eq!(event.kind, OrderEventKind::Placed);
        assert_eq!(
            event.current_total_price,
            Decimal::from_str("100.10").unwrap()
        );
        assert_eq!(event.presentment_currency, "EUR");
        assert_eq!(
            event.current_total_price_presentment,
            Decimal::from_str("92.35").unwrap()
        );
        assert_eq!(event.discount_codes, vec!["anna10"]);
        assert_eq!(event.tags, vec!["vip", "Exclude"]);
        assert_eq!(event.created_at_ms, 1_764_342_000_000);
        assert_eq!(event.customer_id, Some(207_119_551));
    }

    #[test]
    fn a_refund_counts_only_its_successful_refund_transactions_in_shop_money() {
        let refund = r#"{"id": 509562969, "order_id": 9007199254740993, "created_at": "2025-11-29T10:00:00-05:00",
            "transactions": [
              {"id": 1, "kind": "refund", "status": "success", "amount": "41.94", "currency": "EUR",
               "amount_set": {"shop_money": {"amount": "45.10", "currency_code": "USD"},
                              "presentment_money": {"amount": "41.94", "currency_code": "EUR"}}},
              {"id": 2, "kind": "refund", "status": "failure", "amount": "10.00"},
              {"id": 3, "kind": "refund", "status": "success", "amount": "0.05"},
              {"id": 4, "kind": "sale", "status": "success", "amount": "99.00"}]}"#;
        let Normalized::Refund(event) = normalize(&envelope("refunds/create", refund)).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (event.order_id, event.refund.refund_id, event.refund.amount),
            (
                9_007_199_254_740_993,
                509_562_969,
                Decimal::from_str("45.15").unwrap()
            )
        );
        // Given only in a currency: kept with it, converted at the order's rate when applied.
        let presentment = refund.replace(
            r#"{"id": 3, "kind": "refund", "status": "success", "amount": "0.05"}"#,
            r#"{"id": 3, "kind": "refund", "status": "success", "amount": "40.00", "currency": "EUR"}"#,
        );
        let Normalized::Refund(event) =
            normalize(&envelope("refunds/create", &presentment)).unwrap()
        else {
            panic!()
        };
        let dec = |s: &str| Decimal::from_str(s).unwrap();
        let eur = |amount: &str| CurrencyAmount {
            amount: dec(amount),
            currency: "EUR".into(),
        };
        assert_eq!(
            (event.refund.amount, event.refund.in_currency.clone()),
            (dec("45.10"), vec![eur("40.00")])
        );
        // A USD shop, the order presented in EUR: 134.10 USD for 107.28 EUR, so 40.00 EUR is
        // 50.00 USD; in the shop's own currency it is taken as it is.
        assert_eq!(
            shop_amount(&event.refund, "USD", dec("134.10"), dec("107.28")),
            dec("95.10")
        );
        assert_eq!(
            shop_amount(&event.refund, "EUR", dec("134.10"), dec("107.28")),
            dec("85.10")
        );
        // Half away from zero to the cent: 10.00 × 1.005 = 10.05, 0.01 × 0.5 = 0.005 → 0.01.
        let cent = ListedRefund {
            refund_id: 1,
            amount: Decimal::ZERO,
            in_currency: vec![eur("0.01")],
        };
        assert_eq!(shop_amount(&cent, "USD", dec("1"), dec("2")), dec("0.01"));
        let float = refund.replace("\"0.05\"", "0.05");
        assert!(matches!(
            normalize(&envelope("refunds/create", &float)),
            Err(NormalizeError::RefundJson(_))
        ));
    }

    #[test]
    fn skips_topics_it_does_not_handle_and_refuses_bad_bodies() {
        assert_eq!(
            normalize(&envelope("products/update", "{}")),
            Ok(Normalized::Skipped)
        );
        assert!(matches!(
            normalize(&envelope("orders/create", "{not json")),
            Err(NormalizeError::Json(_))
        ));
        let float_money = ORDER.replace("\"100.10\", \"total_price\"", "100.1, \"total_price\"");
        assert!(matches!(
            normalize(&envelope("orders/create", &float_money)),
            Err(NormalizeError::Json(_))
        ));
        let bad_time = ORDER.replace("2025-11-28T10:00:00-05:00", "yesterday");
        assert!(matches!(
            normalize(&envelope("orders/paid", &bad_time)),
            Err(NormalizeError::Time { .. })
        ));
    }
}
