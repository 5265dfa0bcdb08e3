//! A mirror of Shopify's GraphQL cost bucket for one store.
//!
//! Shopify meters the Admin GraphQL API per app and store as a leaky bucket of points: each
//! request is charged its query cost, and the bucket refills at `restoreRate` points per second up
//! to `maximumAvailable`. Every response reports the bucket in `extensions.cost.throttleStatus`.
//! The client keeps this mirror so that it waits *before* a request that would not fit, instead
//! of spending a round trip on a `THROTTLED` answer.

use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

/// `extensions.cost.throttleStatus` as Shopify reports it.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThrottleStatus {
    pub maximum_available: f64,
    pub currently_available: f64,
    pub restore_rate: f64,
}

/// The bucket as last reported, plus what this client has reserved since.
#[derive(Debug, Clone, Copy)]
pub struct CostBucket {
    status: ThrottleStatus,
    observed_at: Instant,
}

impl CostBucket {
    /// Before the first response: Shopify's standard plan (1,000 points, 50 per second).
    pub fn standard(now: Instant) -> Self {
        Self {
            status: ThrottleStatus {
                maximum_available: 1000.0,
                currently_available: 1000.0,
                restore_rate: 50.0,
            },
            observed_at: now,
        }
    }

    /// Points available at `now`, counting the refill since the last observation.
    pub fn available(&self, now: Instant) -> f64 {
        let refilled = now
            .saturating_duration_since(self.observed_at)
            .as_secs_f64()
            * self.status.restore_rate;
        (self.status.currently_available + refilled).min(self.status.maximum_available)
    }

    /// Takes `cost` points now if they are there; otherwise says how long until they are.
    /// A cost above the bucket's size is never granted by Shopify, so it is only capped here to
    /// let the request go and be refused with a clear error.
    pub fn reserve(&mut self, cost: f64, now: Instant) -> Result<(), Duration> {
        let cost = cost.min(self.status.maximum_available);
        let available = self.available(now);
        if available >= cost {
            self.status.currently_available = available - cost;
            self.observed_at = now;
            Ok(())
        } else {
            let rate = self.status.restore_rate.max(1.0);
            Err(Duration::from_secs_f64((cost - available) / rate))
        }
    }

    /// Adopts what Shopify reported; its view wins over the local estimate.
    pub fn observe(&mut self, status: ThrottleStatus, now: Instant) {
        self.status = status;
        self.observed_at = now;
    }

    /// How long until `cost` points are back, from the last observation.
    pub fn wait_for(&self, cost: f64, now: Instant) -> Duration {
        let missing = cost.min(self.status.maximum_available) - self.available(now);
        if missing <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(missing / self.status.restore_rate.max(1.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_the_refill_a_request_needs_and_adopts_what_shopify_reports() {
        let start = Instant::now();
        let mut bucket = CostBucket::standard(start);
        bucket.observe(
            ThrottleStatus {
                maximum_available: 100.0,
                currently_available: 15.0,
                restore_rate: 10.0,
            },
            start,
        );
        assert_eq!(bucket.reserve(10.0, start), Ok(()));
        // 5 left; 10 more needs 0.5 s of refill.
        assert_eq!(bucket.reserve(10.0, start), Err(Duration::from_millis(500)));
        let later = start + Duration::from_millis(500);
        assert_eq!(bucket.reserve(10.0, later), Ok(()));
        // The refill never exceeds the bucket.
        assert_eq!(bucket.available(later + Duration::from_secs(60)), 100.0);
        assert_eq!(
            bucket.wait_for(30.0, later),
            Duration::from_secs(3),
            "0 left, 30 at 10/s"
        );
    }
}
