//! The attribution rules of the contract, as a pure function of the settled order, the store and
//! its advocates:
//!
//! 1. manual: an operator's command ([`manual`]), applied by the state when it arrives or when the
//!    order settles; it does not override an exclusion;
//! 2. the first code in `discount_codes` that belongs to an active advocate and is not one of the
//!    store's excluded codes (trimmed, uppercased);
//! 3. a share link in `landing_site`: `ref=<identifier>`, else `utm_campaign=<identifier>` with
//!    `utm_medium=advocate` (identifiers and the medium compare case-insensitively);
//! 4. unattributed.
//!
//! The advocate chosen by that precedence is then checked for self-referral: a buyer whose email
//! equals the advocate's (case-insensitive) earns nobody, and no lower rule is tried.

use tributary_schemas::{Advocate, AttributionSource, OrderEvent, Outcome, RewardActivity, Store};
use url::Url;

use crate::exclusions::exclusion_reason;
use tributary_runtime::control::{normalize_code, ShopAdvocates};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    pub source: AttributionSource,
    pub reason: String,
    pub advocate: Option<(String, String)>,
    pub code: Option<String>,
    /// What the attribution earns the advocate: the store's activity definition, when the store
    /// has rewards on and the order is attributed.
    pub reward: Option<RewardActivity>,
}

impl Decision {
    fn unattributed(outcome: Outcome, reason: String) -> Self {
        Self {
            outcome,
            source: AttributionSource::Unattributed,
            reason,
            advocate: None,
            code: None,
            reward: None,
        }
    }
}

/// The activity an attributed order of `store` earns under, if the store has rewards on.
fn reward_of(store: &Store) -> Option<RewardActivity> {
    store
        .reward_activity
        .clone()
        .filter(|_| store.features.attribution_rewards)
}

/// An operator's attribution of an order of `store` to `advocate`.
pub fn manual(advocate: &Advocate, requested_by: &str, store: &Store) -> Decision {
    Decision {
        outcome: Outcome::Attributed,
        source: AttributionSource::Manual,
        reason: format!("manual attribution by {requested_by}"),
        advocate: Some((advocate.id.clone(), advocate.identifier.clone())),
        code: None,
        reward: reward_of(store),
    }
}

pub fn decide(order: &OrderEvent, store: &Store, advocates: &ShopAdvocates) -> Decision {
    if let Some(reason) = exclusion_reason(order, store) {
        return Decision::unattributed(Outcome::Excluded, reason);
    }
    if !store.features.order_attribution {
        return Decision::unattributed(
            Outcome::Unattributed,
            "order attribution is off for this store".into(),
        );
    }
    let candidate = by_code(order, store, advocates)
        .map(|(advocate, code)| (advocate, AttributionSource::DiscountCode, Some(code)))
        .or_else(|| {
            by_share_link(order, advocates).map(|a| (a, AttributionSource::LandingSite, None))
        });
    let Some((advocate, source, code)) = candidate else {
        return Decision::unattributed(
            Outcome::Unattributed,
            "no advocate code or share link".into(),
        );
    };
    let buyer = order.email.as_deref().map(str::trim).unwrap_or_default();
    if !buyer.is_empty() && buyer.eq_ignore_ascii_case(advocate.email.trim()) {
        return Decision::unattributed(
            Outcome::SelfReferral,
            format!(
                "self-referral: the buyer is advocate {}",
                advocate.identifier
            ),
        );
    }
    let reason = match &code {
        Some(code) => format!("code {code}"),
        None => format!("share link {}", advocate.identifier),
    };
    Decision {
        outcome: Outcome::Attributed,
        source,
        reason,
        advocate: Some((advocate.id.clone(), advocate.identifier.clone())),
        code,
        reward: reward_of(store),
    }
}

fn by_code<'a>(
    order: &OrderEvent,
    store: &Store,
    advocates: &'a ShopAdvocates,
) -> Option<(&'a Advocate, String)> {
    order
        .discount_codes
        .iter()
        .map(|c| normalize_code(c))
        .find_map(|code| {
            let excluded = store
                .excluded_codes
                .iter()
                .any(|x| normalize_code(x) == code);
            (!excluded)
                .then(|| advocates.by_code(&code))
                .flatten()
                .map(|a| (a, code))
        })
}

fn by_share_link<'a>(order: &OrderEvent, advocates: &'a ShopAdvocates) -> Option<&'a Advocate> {
    let landing = order.landing_site.as_deref()?.trim();
    // A relative landing_site ("/products/x?ref=anna") is resolved against a placeholder origin.
    let url = Url::parse(landing)
        .or_else(|_| Url::parse("https://shop.invalid/")?.join(landing))
        .ok()?;
    let param = |name: &str| {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    if let Some(advocate) = param("ref").and_then(|id| advocates.by_identifier(&id)) {
        return Some(advocate);
    }
    let medium_is_advocate =
        param("utm_medium").is_some_and(|m| m.eq_ignore_ascii_case("advocate"));
    param("utm_campaign")
        .filter(|_| medium_is_advocate)
        .and_then(|id| advocates.by_identifier(&id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_runtime::control::Control;
    use tributary_schemas::{AdvocateStatus, OrderEventKind, StoreFeatures, StoreStatus};

    fn store() -> Store {
        Store {
            domain: "s.myshopify.com".into(),
            status: StoreStatus::Active,
            webhook_secrets_sealed: vec![],
            settle_delay_minutes: 0,
            excluded_channels: vec!["pos".into()],
            excluded_tags: vec!["Exclude".into()],
            excluded_codes: vec!["HOLIDAY".into()],
            features: StoreFeatures {
                order_attribution: true,
                ..Default::default()
            },
            reward_activity: None,
            admin: None,
            team_id: None,
            updated_at_ms: 0,
        }
    }

    fn control() -> Control {
        let mut control = Control::default();
        for (id, identifier, code, status) in [
            ("1", "anna", "ANNA10", AdvocateStatus::Active),
            ("2", "Bob", "BOB-5", AdvocateStatus::Active),
            ("3", "cleo", "CLEO", AdvocateStatus::Inactive),
        ] {
            control.apply_advocate(
                "",
                Some(Advocate {
                    shop_domain: "s.myshopify.com".into(),
                    id: id.into(),
                    identifier: identifier.into(),
                    first_name: identifier.into(),
                    email: format!("{identifier}@example.com"),
                    status,
                    codes: vec![code.into()],
                    updated_at_ms: 0,
                }),
            );
        }
        control
    }

    fn order(codes: &[&str], landing: Option<&str>) -> OrderEvent {
        OrderEvent {
            kind: OrderEventKind::Placed,
            shop_domain: "s.myshopify.com".into(),
            order_id: 1,
            webhook_id: "w".into(),
            event_id: None,
            triggered_at_ms: 0,
            created_at_ms: 0,
            updated_at_ms: 0,
            name: "#1".into(),
            email: Some("buyer@example.com".into()),
            customer_id: None,
            currency: "USD".into(),
            current_total_price: 10.into(),
            presentment_currency: "USD".into(),
            current_total_price_presentment: 10.into(),
            discount_codes: codes.iter().map(|c| c.to_string()).collect(),
            landing_site: landing.map(str::to_owned),
            source_name: Some("web".into()),
            tags: vec![],
            test: false,
            financial_status: None,
            fulfillment_status: None,
            cancelled_at_ms: None,
            refunds: vec![],
        }
    }

    fn who(order: &OrderEvent) -> (Outcome, AttributionSource, Option<String>) {
        let control = control();
        let d = decide(order, &store(), control.advocates("s.myshopify.com"));
        (
            d.outcome,
            d.source,
            d.advocate.map(|(_, identifier)| identifier),
        )
    }

    #[test]
    fn codes_by_precedence_case_and_exclusion() {
        let code = |codes: &[&str]| who(&order(codes, Some("/?ref=Bob")));
        assert_eq!(
            code(&[" anna10 "]),
            (
                Outcome::Attributed,
                AttributionSource::DiscountCode,
                Some("anna".into())
            )
        );
        assert_eq!(code(&["HOLIDAY", "bob-5", "ANNA10"]).2, Some("Bob".into()));
        assert_eq!(
            code(&["CLEO"]).1,
            AttributionSource::LandingSite,
            "an inactive advocate's code falls through"
        );
        assert_eq!(
            code(&["holiday"]).1,
            AttributionSource::LandingSite,
            "an excluded code never attributes"
        );
    }

    #[test]
    fn share_links_by_ref_and_utm() {
        let link = |l: &str| who(&order(&[], Some(l))).2;
        assert_eq!(link("https://s.example/p?ref=ANNA"), Some("anna".into()));
        assert_eq!(
            link("/products/x?utm_source=ig&utm_medium=Advocate&utm_campaign=bob"),
            Some("Bob".into())
        );
        assert_eq!(link("/products/x?utm_medium=email&utm_campaign=bob"), None);
        assert_eq!(link("/?ref=nobody"), None);
        assert_eq!(link("::not a url::"), None);
    }

    #[test]
    fn self_referral_exclusions_and_toggle() {
        let mut own = order(&["ANNA10"], None);
        own.email = Some("ANNA@example.com ".into());
        assert_eq!(who(&own).0, Outcome::SelfReferral);

        let control = control();
        let advocates = control.advocates("s.myshopify.com");
        let mut pos = order(&["ANNA10"], None);
        pos.source_name = Some("POS".into());
        assert_eq!(
            decide(&pos, &store(), advocates).reason,
            "excluded: channel POS"
        );
        let mut tagged = order(&["ANNA10"], None);
        tagged.tags = vec!["exclude".into()];
        assert_eq!(
            decide(&tagged, &store(), advocates).outcome,
            Outcome::Excluded
        );
        let mut test = order(&["ANNA10"], None);
        test.test = true;
        assert_eq!(
            decide(&test, &store(), advocates).reason,
            "excluded: test order"
        );
        let mut off = store();
        off.features.order_attribution = false;
        assert_eq!(
            decide(&order(&["ANNA10"], None), &off, advocates).outcome,
            Outcome::Unattributed
        );
    }
}
