//! An order's reward ledger, kept in its [`Attribution`] record (so it is restored, replayed and
//! deduplicated with the order, and never applied twice).
//!
//! The rules, from the attribution contract:
//! - An attributed order creates a **request** for its advocate, from the store's activity
//!   definition: fixed points, or points per unit of gross (rounded to 2 decimals).
//! - **Approval** credits the request's points to the advocate's wallet; with auto-approve it
//!   follows the request at once, otherwise it waits for an operator's command.
//! - An approved request is **reversed** in proportion to refunded/gross (a cancelled order in
//!   full). The share is computed on the cumulative refund and each reversal is the difference to
//!   what was already reversed, so reversals never total more than the reward and rounding never
//!   drifts.
//! - When an order **moves** to another advocate (a manual attribution after settling), the old
//!   request is reversed for what it still credits and voided, and a new request follows the
//!   order.
//!
//! Every entry's id derives from the order and the entry's position in its ledger, so it is the
//! same in every run: see [`RewardEntry`].

use rust_decimal::prelude::*;
use tributary_schemas::topics::order_key;
use tributary_schemas::{Attribution, RewardActivity, RewardBasis, RewardEntry, RewardEntryKind};

const POINTS_DECIMALS: u32 = 2;

fn round_points(points: Decimal) -> Decimal {
    points.round_dp_with_strategy(POINTS_DECIMALS, RoundingStrategy::MidpointAwayFromZero)
}

/// What an order of `gross` earns under `activity`.
pub fn points_for(activity: &RewardActivity, gross: Decimal) -> Decimal {
    let points = match activity.basis {
        RewardBasis::Fixed => activity.points,
        RewardBasis::PerUnit => activity.points * gross,
    };
    round_points(points.max(Decimal::ZERO))
}

/// What must be reversed of `points` once `refunded` of `gross` went back (all of it when the
/// order is cancelled); never more than `points`.
pub fn reversal_target(
    points: Decimal,
    gross: Decimal,
    refunded: Decimal,
    cancelled: bool,
) -> Decimal {
    if cancelled {
        return points;
    }
    if gross <= Decimal::ZERO || refunded <= Decimal::ZERO {
        return Decimal::ZERO;
    }
    let share = refunded.min(gross) / gross;
    round_points(points * share).min(points)
}

/// The order's current request, folded from its ledger.
#[derive(Debug, Clone, PartialEq)]
struct Request {
    request_id: String,
    advocate_id: String,
    advocate_identifier: String,
    points: Decimal,
    approved: bool,
    reversed: Decimal,
    reversals: usize,
}

/// The newest request unless it was voided.
fn current_request(attribution: &Attribution) -> Option<Request> {
    let mut current: Option<Request> = None;
    for entry in &attribution.rewards {
        match entry.kind {
            RewardEntryKind::Request => {
                current = Some(Request {
                    request_id: entry.request_id.clone(),
                    advocate_id: entry.advocate_id.clone(),
                    advocate_identifier: entry.advocate_identifier.clone(),
                    points: entry.points,
                    approved: false,
                    reversed: Decimal::ZERO,
                    reversals: 0,
                })
            }
            RewardEntryKind::Approval => {
                if let Some(request) = current.as_mut() {
                    request.approved = true;
                }
            }
            RewardEntryKind::Reversal => {
                if let Some(request) = current.as_mut() {
                    request.reversed += entry.points;
                    request.reversals += 1;
                }
            }
            RewardEntryKind::Void => current = None,
        }
    }
    current
}

fn requests_so_far(attribution: &Attribution) -> usize {
    attribution
        .rewards
        .iter()
        .filter(|e| e.kind == RewardEntryKind::Request)
        .count()
}

fn push(
    attribution: &mut Attribution,
    request: &Request,
    kind: RewardEntryKind,
    entry_id: String,
    points: Decimal,
    reason: String,
    at_ms: i64,
) {
    attribution.rewards.push(RewardEntry {
        entry_id,
        request_id: request.request_id.clone(),
        kind,
        advocate_id: request.advocate_id.clone(),
        advocate_identifier: request.advocate_identifier.clone(),
        points,
        reason,
        at_ms,
    });
}

/// Creates a request for the order's advocate (approved at once under auto-approve), then
/// reverses what refunds already took back. Call it when an order is attributed.
pub fn request(attribution: &mut Attribution, activity: &RewardActivity, at_ms: i64) {
    let (Some(advocate_id), Some(advocate_identifier)) = (
        attribution.advocate_id.clone(),
        attribution.advocate_identifier.clone(),
    ) else {
        return;
    };
    let number = requests_so_far(attribution) + 1;
    let request = Request {
        request_id: format!(
            "{}/reward/{number}",
            order_key(&attribution.shop_domain, attribution.order_id)
        ),
        advocate_id,
        advocate_identifier,
        points: points_for(activity, attribution.gross),
        approved: false,
        reversed: Decimal::ZERO,
        reversals: 0,
    };
    let reason = format!("{} for order {}", activity.name, attribution.order_name);
    push(
        attribution,
        &request,
        RewardEntryKind::Request,
        request.request_id.clone(),
        request.points,
        reason,
        at_ms,
    );
    if activity.auto_approve {
        // Cannot fail: the request was just created and is pending.
        let _ = approve(attribution, "auto-approve", at_ms);
    }
}

/// Approves the pending request; then reverses what refunds already took back.
pub fn approve(attribution: &mut Attribution, approved_by: &str, at_ms: i64) -> Result<(), String> {
    let Some(request) = current_request(attribution) else {
        return Err(format!(
            "order {} has no reward request to approve",
            attribution.order_id
        ));
    };
    if request.approved {
        return Err(format!(
            "reward request {} is already approved",
            request.request_id
        ));
    }
    push(
        attribution,
        &request,
        RewardEntryKind::Approval,
        format!("{}/approval", request.request_id),
        request.points,
        format!("approved by {approved_by}"),
        at_ms,
    );
    follow_refunds(attribution, at_ms);
    Ok(())
}

/// Brings the approved request's reversals up to the order's refunded share. Call it after a
/// refund or a cancellation.
pub fn follow_refunds(attribution: &mut Attribution, at_ms: i64) {
    let Some(request) = current_request(attribution).filter(|r| r.approved) else {
        return;
    };
    let target = reversal_target(
        request.points,
        attribution.gross,
        attribution.refunded,
        attribution.cancelled,
    );
    let due = target - request.reversed;
    if due > Decimal::ZERO {
        let reason = if attribution.cancelled {
            "order cancelled".to_owned()
        } else {
            format!("refunded {} of {}", attribution.refunded, attribution.gross)
        };
        push(
            attribution,
            &request,
            RewardEntryKind::Reversal,
            format!("{}/reversal/{}", request.request_id, request.reversals + 1),
            due,
            reason,
            at_ms,
        );
    }
}

/// Takes the reward away from the request's advocate: reverses what it still credits and voids it.
/// Call it before the order moves to another advocate.
pub fn withdraw(attribution: &mut Attribution, reason: &str, at_ms: i64) {
    let Some(request) = current_request(attribution) else {
        return;
    };
    let credited = request.points - request.reversed;
    if request.approved && credited > Decimal::ZERO {
        push(
            attribution,
            &request,
            RewardEntryKind::Reversal,
            format!("{}/reversal/{}", request.request_id, request.reversals + 1),
            credited,
            reason.to_owned(),
            at_ms,
        );
    }
    push(
        attribution,
        &request,
        RewardEntryKind::Void,
        format!("{}/void", request.request_id),
        Decimal::ZERO,
        reason.to_owned(),
        at_ms,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;
    use tributary_schemas::{AttributionSource, Outcome, RefundStatus};

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn activity(basis: RewardBasis, points: &str, auto_approve: bool) -> RewardActivity {
        RewardActivity {
            name: "Referral".into(),
            basis,
            points: dec(points),
            auto_approve,
            store_credit_per_point: Decimal::ONE,
        }
    }

    fn order(gross: &str) -> Attribution {
        Attribution {
            shop_domain: "s".into(),
            order_id: 7,
            revision: 1,
            order_name: "#7".into(),
            created_at_ms: 0,
            latest_updated_at_ms: 0,
            latest_triggered_at_ms: 0,
            settled_updated_at_ms: 0,
            financial_status: None,
            cancelled: false,
            outcome: Outcome::Attributed,
            source: AttributionSource::DiscountCode,
            reason: String::new(),
            advocate_id: Some("1".into()),
            advocate_identifier: Some("anna".into()),
            code: None,
            customer_email: None,
            customer_id: None,
            currency: "USD".into(),
            gross: dec(gross),
            presentment_currency: "USD".into(),
            presentment_gross: dec(gross),
            refunded: Decimal::ZERO,
            net: dec(gross),
            refund_status: RefundStatus::None,
            refund_ids: vec![],
            recent_delivery_ids: vec![],
            input_offset: 0,
            rewards: vec![],
            changed_at_ms: 0,
        }
    }

    /// The wallet movement of each entry: approvals credit, reversals debit.
    fn balance_change(entry: &RewardEntry) -> Decimal {
        match entry.kind {
            RewardEntryKind::Approval => entry.points,
            RewardEntryKind::Reversal => -entry.points,
            RewardEntryKind::Request | RewardEntryKind::Void => Decimal::ZERO,
        }
    }

    fn balances(a: &Attribution) -> std::collections::BTreeMap<String, Decimal> {
        let mut out = std::collections::BTreeMap::new();
        for entry in &a.rewards {
            *out.entry(entry.advocate_identifier.clone()).or_default() += balance_change(entry);
        }
        out
    }

    #[test]
    fn points_per_unit_round_to_cents_and_fixed_points_ignore_gross() {
        assert_eq!(
            points_for(&activity(RewardBasis::PerUnit, "0.1", true), dec("123.45")),
            dec("12.35")
        );
        assert_eq!(
            points_for(&activity(RewardBasis::Fixed, "50", true), dec("0.01")),
            dec("50")
        );
    }

    #[test]
    fn partial_refunds_reverse_proportionally_and_never_more_than_the_reward() {
        let mut a = order("100.00");
        request(&mut a, &activity(RewardBasis::Fixed, "10", true), 1);
        a.refunded = dec("33.33");
        follow_refunds(&mut a, 2);
        a.refunded = dec("66.66");
        follow_refunds(&mut a, 3);
        follow_refunds(&mut a, 3);
        assert_eq!(balances(&a)["anna"], dec("3.33"), "10 - round(10 * 0.6666)");
        a.refunded = dec("150");
        follow_refunds(&mut a, 4);
        assert_eq!(balances(&a)["anna"], Decimal::ZERO);
        let ids: Vec<&str> = a.rewards.iter().map(|e| e.entry_id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "s/7/reward/1",
                "s/7/reward/1/approval",
                "s/7/reward/1/reversal/1",
                "s/7/reward/1/reversal/2",
                "s/7/reward/1/reversal/3"
            ]
        );
    }

    #[test]
    fn pending_requests_wait_for_approval_which_catches_up_with_refunds() {
        let mut a = order("80");
        request(&mut a, &activity(RewardBasis::PerUnit, "0.5", false), 1);
        assert!(balances(&a).values().all(|b| b.is_zero()));
        a.refunded = dec("20");
        follow_refunds(&mut a, 2);
        assert!(
            balances(&a).values().all(|b| b.is_zero()),
            "nothing to reverse yet"
        );
        approve(&mut a, "ops", 3).unwrap();
        assert_eq!(balances(&a)["anna"], dec("30"));
        assert!(approve(&mut a, "ops", 4).is_err(), "approved once");
    }

    #[test]
    fn a_moved_order_takes_its_reward_to_the_new_advocate() {
        let rule = activity(RewardBasis::Fixed, "10", true);
        let mut a = order("100");
        request(&mut a, &rule, 1);
        a.refunded = dec("50");
        follow_refunds(&mut a, 2);
        withdraw(&mut a, "moved to ben", 3);
        a.advocate_id = Some("2".into());
        a.advocate_identifier = Some("ben".into());
        request(&mut a, &rule, 3);
        follow_refunds(&mut a, 3);
        let b = balances(&a);
        assert_eq!((b["anna"], b["ben"]), (Decimal::ZERO, dec("5")));
        assert_eq!(current_request(&a).unwrap().request_id, "s/7/reward/2");
        a.cancelled = true;
        follow_refunds(&mut a, 4);
        assert_eq!(
            balances(&a)["ben"],
            Decimal::ZERO,
            "a cancelled order earns nothing"
        );
    }
}
