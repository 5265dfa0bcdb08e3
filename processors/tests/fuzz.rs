//! Property-based fuzzing of what a stranger controls: the webhook's body and topic (through
//! normalization) and its time header. Whatever arrives, nothing panics, and what normalization
//! accepts stays inside the topic contract (ids that Avro carries, times ClickHouse holds).
//!
//! CI runs 20,000 cases per property; the long run is
//! `TRIBUTARY_FUZZ_CASES=10000000 cargo test --release -p tributary-processors --test fuzz`.

use proptest::prelude::*;
use serde_json::{json, Value};
use tributary_processors::normalize::{normalize, Normalized, MAX_ID, MAX_TIME_MS};
use tributary_schemas::time::parse_rfc3339_ms;
use tributary_schemas::{OperatorCommand, WebhookEnvelope};

fn cases() -> u32 {
    std::env::var("TRIBUTARY_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// Numbers at and around every edge the contract has.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        Just(Value::from(i64::MAX as u64 + 1)),
        Just(Value::from(-1)),
        any::<f64>().prop_map(|f| json!(f)),
    ]
}

/// Strings a sender might put anywhere: times, money, junk.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("2025-11-28T12:00:00Z".to_owned()),
        Just("9999-12-31T23:59:59Z".to_owned()),
        Just("1969-12-31T23:59:59Z".to_owned()),
        Just("2025-11-28T12:00:00+14:00".to_owned()),
        Just("12.34".to_owned()),
        Just("-0.00".to_owned()),
        Just("79228162514264337593543950336".to_owned()),
        Just("1e400".to_owned()),
        Just(String::new()),
        "\\PC{0,24}",
        any::<String>(),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        number(),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Either a plausible value for a field or anything at all (or the field missing).
fn field(plausible: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        4 => plausible.prop_map(Some),
        1 => value().prop_map(Some),
        1 => Just(None),
    ]
    .boxed()
}

/// An order or refund body with the fields normalization reads, each plausible or hostile.
fn shaped_body() -> impl Strategy<Value = Vec<u8>> {
    let money = || text().prop_map(Value::from);
    let time = || text().prop_map(Value::from);
    let transactions = prop::collection::vec(
        (money(), text(), text()).prop_map(|(amount, kind, status)| {
            json!({"amount": amount, "kind": kind, "status": status, "currency": "EUR"})
        }),
        0..3,
    )
    .prop_map(Value::from);
    let fields = vec![
        ("id", field(number())),
        ("order_id", field(number())),
        ("created_at", field(time())),
        ("updated_at", field(time())),
        ("current_total_price", field(money())),
        ("total_price", field(money())),
        ("currency", field(Just(json!("USD")))),
        (
            "discount_codes",
            field(prop::collection::vec(value(), 0..3).prop_map(Value::from)),
        ),
        ("customer", field(value())),
        ("cancelled_at", field(time())),
        ("transactions", field(transactions)),
    ];
    let (names, strategies): (Vec<&str>, Vec<_>) = fields.into_iter().unzip();
    strategies.prop_map(move |values| {
        let body: serde_json::Map<String, Value> = names
            .iter()
            .zip(values)
            .filter_map(|(name, value)| value.map(|v| ((*name).to_owned(), v)))
            .collect();
        serde_json::to_vec(&Value::Object(body)).unwrap_or_default()
    })
}

fn envelope() -> impl Strategy<Value = WebhookEnvelope> {
    let topic = prop_oneof![
        Just("orders/create".to_owned()),
        Just("orders/updated".to_owned()),
        Just("orders/paid".to_owned()),
        Just("orders/cancelled".to_owned()),
        Just("refunds/create".to_owned()),
        Just(OperatorCommand::ATTRIBUTE.to_owned()),
        Just(OperatorCommand::APPROVE_REWARD.to_owned()),
        any::<String>(),
    ];
    let source = prop_oneof![
        Just(WebhookEnvelope::SOURCE_WEBHOOK.to_owned()),
        Just(WebhookEnvelope::SOURCE_MANUAL.to_owned()),
    ];
    let body = prop_oneof![
        3 => shaped_body(),
        1 => value().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ];
    (topic, source, body, any::<i64>()).prop_map(|(topic, source, body, triggered_at_ms)| {
        WebhookEnvelope {
            source,
            shop_domain: "fuzz.myshopify.com".into(),
            topic,
            webhook_id: "w".into(),
            event_id: None,
            triggered_at_ms,
            api_version: "2025-10".into(),
            received_at_ms: 0,
            body,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn normalization_never_panics_and_keeps_what_it_accepts_inside_the_contract(envelope in envelope()) {
        match normalize(&envelope) {
            Ok(Normalized::Order(order)) => {
                prop_assert!(order.order_id <= MAX_ID);
                prop_assert!(order.customer_id.is_none_or(|id| id <= MAX_ID));
                prop_assert!((0..=MAX_TIME_MS).contains(&order.created_at_ms));
                prop_assert!((0..=MAX_TIME_MS).contains(&order.updated_at_ms));
                prop_assert!(order.cancelled_at_ms.is_none_or(|t| (0..=MAX_TIME_MS).contains(&t)));
            }
            Ok(Normalized::Refund(refund)) => {
                prop_assert!(refund.order_id <= MAX_ID && refund.refund.refund_id <= MAX_ID);
            }
            Ok(_) | Err(_) => {}
        }
    }

    #[test]
    fn a_time_header_never_panics(text in any::<String>()) {
        let _ = parse_rfc3339_ms(&text);
    }
}
