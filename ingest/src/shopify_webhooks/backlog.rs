//! Backpressure before retention: ingest refuses deliveries (503, so Shopify retries later) while
//! the processor's group has fallen so far behind that the broker is about to delete webhooks it
//! has not read. An acknowledged webhook is never lost to retention this way, on any broker: the
//! embedded broker keeps only about 5 MiB per partition, a real one deletes by size or age.
//!
//! Two rules, either refuses, per partition of `shopify.webhooks`:
//! - **near retention** ([`PartitionProgress::near_retention`]): the group's committed offset
//!   lies in the oldest quarter of the log the broker still holds, and the group is behind. This
//!   needs no knowledge of the broker's retention, but acts only once the broker has started
//!   deleting;
//! - **unread bytes** (`ingest.max_unread_bytes`): the records the group has not read, times the
//!   average size of what ingest produced, exceed the budget. On by default with the embedded
//!   broker (4 MiB, uncompressed, under its 5 MiB of compressed batches), so the first deletion
//!   never reaches an unread record.
//!
//! While ingest refuses, nothing new arrives, so the log start stops advancing; once the
//! processor reads on (or an operator resets the group), deliveries are taken again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tributary_runtime::kafka::{GroupProgress, PartitionProgress};
use tributary_schemas::topics;

/// How often the group's position is compared with the log's bounds.
const CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Whether ingest refuses deliveries for now; see the module doc.
#[derive(Clone, Default)]
pub struct Backpressure {
    refusing: Arc<AtomicBool>,
    /// Bytes (key and value) and records ingest has produced, for the average record size.
    produced_bytes: Arc<AtomicU64>,
    produced_records: Arc<AtomicU64>,
}

impl Backpressure {
    pub fn refusing(&self) -> bool {
        self.refusing.load(Ordering::SeqCst)
    }

    /// Counts one produced record of `bytes`.
    pub fn produced(&self, bytes: usize) {
        self.produced_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        self.produced_records.fetch_add(1, Ordering::Relaxed);
    }

    fn average_record_bytes(&self) -> u64 {
        let records = self.produced_records.load(Ordering::Relaxed).max(1);
        self.produced_bytes.load(Ordering::Relaxed) / records
    }

    /// Watches `group` on `shopify.webhooks` until `shutdown`, refusing past `max_unread_bytes`
    /// (if set) or near retention. A failed check keeps the last answer (a broker that is away
    /// refuses deliveries anyway).
    pub fn watch(
        bootstrap: &str,
        group: &str,
        max_unread_bytes: Option<u64>,
        shutdown: CancellationToken,
    ) -> Self {
        let backpressure = Self::default();
        let this = backpressure.clone();
        let flag = backpressure.refusing.clone();
        let (bootstrap, group) = (bootstrap.to_owned(), group.to_owned());
        tokio::spawn(async move {
            let mut progress: Option<Arc<GroupProgress>> = None;
            while !shutdown.is_cancelled() {
                if progress.is_none() {
                    progress = GroupProgress::new(&bootstrap, &group, topics::WEBHOOKS)
                        .map(Arc::new)
                        .inspect_err(|error| tracing::warn!(%error, "backpressure: reading the processor's progress failed"))
                        .ok();
                }
                if let Some(progress) = progress.clone() {
                    let checked = tokio::task::spawn_blocking(move || progress.partitions()).await;
                    if let Ok(Ok(partitions)) = checked {
                        let average = this.average_record_bytes();
                        let over_budget = |p: &PartitionProgress| {
                            let unread = p.unread() as u64;
                            max_unread_bytes.is_some_and(|max| unread.saturating_mul(average) > max)
                        };
                        let near: Vec<&PartitionProgress> = partitions
                            .iter()
                            .filter(|p| p.near_retention() || over_budget(p))
                            .collect();
                        let refusing = !near.is_empty();
                        if refusing != flag.swap(refusing, Ordering::SeqCst) {
                            if refusing {
                                tracing::warn!(group, partitions = ?near, "the processor is about to lose unread webhooks to retention; refusing deliveries (503) until it reads on");
                            } else {
                                tracing::info!(
                                    group,
                                    "the processor has read on; taking deliveries again"
                                );
                            }
                        }
                        metrics::gauge!("tributary_ingest_backpressure")
                            .set(f64::from(u8::from(refusing)));
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(CHECK_INTERVAL) => {}
                }
            }
        });
        backpressure
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(committed: Option<i64>, log_start: i64, log_end: i64) -> PartitionProgress {
        PartitionProgress {
            partition: 0,
            committed,
            read: None,
            log_start,
            log_end,
        }
    }

    #[test]
    fn only_a_group_behind_in_the_oldest_quarter_of_a_trimmed_log_is_near_retention() {
        // Nothing deleted yet, caught up, or in the newer part of the log: fine.
        assert!(!partition(Some(0), 0, 10_000).near_retention());
        assert!(!partition(Some(10_000), 6_000, 10_000).near_retention());
        assert!(!partition(Some(9_000), 6_000, 10_000).near_retention());
        assert!(!partition(None, 0, 10_000).near_retention());
        // Behind, with the log start closing in; a group that never committed starts at 0.
        assert!(partition(Some(6_500), 6_000, 10_000).near_retention());
        assert!(partition(None, 6_000, 10_000).near_retention());
    }
}
