//! How a stage takes part in its consumer group: the member's context (readiness, revocations,
//! start positions), static membership, pausing while a stage retries, and commits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

use crate::kafka::consumer_config;

/// The consumer context of a group member: it is ready once the group has given it its first
/// assignment (possibly empty), and it notes revoked partitions so their owner can drop state.
pub struct GroupMember {
    group: String,
    ready: Arc<AtomicBool>,
    revoked: Mutex<Vec<i32>>,
    /// How often each partition has been revoked from this member: a partition taken away and
    /// given back while a stage waited is not the same ownership, though `assignment()` shows it.
    revocations: Mutex<std::collections::HashMap<i32, u64>>,
}

impl GroupMember {
    pub fn new(group: &str, ready: Arc<AtomicBool>) -> Self {
        Self {
            group: group.to_owned(),
            ready,
            revoked: Mutex::new(Vec::new()),
            revocations: Mutex::default(),
        }
    }

    /// Partitions revoked since the last call.
    pub fn take_revoked(&self) -> Vec<i32> {
        std::mem::take(&mut *self.revoked.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// How many times `partition` has been revoked from this member so far.
    pub fn revocations(&self, partition: i32) -> u64 {
        self.revocations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&partition)
            .copied()
            .unwrap_or(0)
    }
}

impl ClientContext for GroupMember {}

impl ConsumerContext for GroupMember {
    /// librdkafka's rebalance, with one change: newly assigned partitions start at the group's
    /// committed offset, or at the beginning where the group never committed. Members run with
    /// `auto.offset.reset=error`, so a committed offset the log no longer holds is reported (see
    /// `stage::run`) instead of silently moved to the oldest record left.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        use rdkafka::consumer::RebalanceProtocol;
        use rdkafka::types::RDKafkaRespErr;
        let rebalance = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                start_positions(consumer, partitions);
                Rebalance::Assign(partitions)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => Rebalance::Revoke(partitions),
            other => {
                let code: RDKafkaErrorCode = other.into();
                tracing::error!(group = %self.group, %code, "rebalance failed");
                Rebalance::Error(rdkafka::error::KafkaError::Rebalance(code))
            }
        };
        self.pre_rebalance(consumer, &rebalance);
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let applied = match (&rebalance, cooperative) {
            (Rebalance::Assign(list), true) => consumer.incremental_assign(list),
            (Rebalance::Assign(list), false) => consumer.assign(list),
            (_, true) => consumer.incremental_unassign(partitions),
            (_, false) => consumer.unassign(),
        };
        if let Err(error) = applied {
            tracing::error!(group = %self.group, %error, "applying a rebalance failed");
        }
        self.post_rebalance(consumer, &rebalance);
    }

    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            // Counted per group: a member evicted for not polling shows here.
            metrics::counter!("tributary_group_revoked_partitions_total", "group" => self.group.clone())
                .increment(partitions.count() as u64);
            self.revoked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(partitions.elements().iter().map(|e| e.partition()));
            let mut revocations = self
                .revocations
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for element in partitions.elements() {
                *revocations.entry(element.partition()).or_default() += 1;
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(_) = rebalance {
            self.ready.store(true, Ordering::SeqCst);
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        _offsets: &TopicPartitionList,
    ) {
        // Harmless: the records after the last successful commit are replayed.
        if let Err(error) = result {
            tracing::warn!(%error, "offset commit failed; uncommitted records will be replayed");
        }
    }
}

/// Sets each partition of an assignment to start at the group's committed offset, or at the
/// beginning where there is none. Left as it is when the committed offsets cannot be read (the
/// consume loop then resolves a missing position itself).
fn start_positions<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    partitions: &mut TopicPartitionList,
) {
    let committed = match consumer.committed_offsets(partitions.clone(), Duration::from_secs(10)) {
        Ok(committed) => committed,
        Err(error) => {
            tracing::warn!(%error, "reading committed offsets at assignment failed");
            return;
        }
    };
    for element in committed.elements() {
        let start = match element.offset() {
            Offset::Offset(offset) => Offset::Offset(offset),
            _ => Offset::Beginning,
        };
        if let Err(error) =
            partitions.set_partition_offset(element.topic(), element.partition(), start)
        {
            tracing::warn!(%error, "setting a start position failed");
        }
    }
}

/// How a service's consumers take part in their groups (from `[kafka]` in the config file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// Static group membership (Kafka's KIP-345, `group.instance.id`): a member that restarts
    /// under the same id gets its partitions back at once, instead of after its predecessor's
    /// session times out. Each group's member id is `<instance_id>.<group>`, so the id must be
    /// unique per running process (a host or pod name) and stable across its restarts. `None`:
    /// dynamic membership.
    pub instance_id: Option<String>,
    /// librdkafka's `max.poll.interval.ms`: a member that does not poll for this long leaves its
    /// group. The stages keep polling while they retry, so it bounds only a stuck process.
    /// `None`: librdkafka's default (300,000).
    pub max_poll_interval_ms: Option<u64>,
}

/// The Kafka cluster a stage works with: where it is, and how the stage's consumers join their
/// groups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Brokers {
    pub bootstrap_servers: String,
    pub membership: Membership,
}

impl Brokers {
    /// A cluster joined with dynamic membership and librdkafka's defaults.
    pub fn new(bootstrap_servers: &str) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.to_owned(),
            membership: Membership::default(),
        }
    }

    /// A member of `group` subscribed to `topic`; `ready` turns true once the group has given
    /// it its partitions (possibly none).
    pub fn member(
        &self,
        group: &str,
        topic: &str,
        ready: Arc<AtomicBool>,
    ) -> rdkafka::error::KafkaResult<Arc<StreamConsumer<GroupMember>>> {
        let mut config = consumer_config(&self.bootstrap_servers, group);
        // Never jump over records silently: see `GroupMember::rebalance`.
        config.set("auto.offset.reset", "error");
        if let Some(instance) = &self.membership.instance_id {
            config.set("group.instance.id", format!("{instance}.{group}"));
        }
        if let Some(interval) = self.membership.max_poll_interval_ms {
            config.set("max.poll.interval.ms", interval.to_string());
        }
        let consumer: StreamConsumer<GroupMember> =
            config.create_with_context(GroupMember::new(group, ready))?;
        consumer.subscribe(&[topic])?;
        Ok(Arc::new(consumer))
    }
}

/// A member's partitions paused while its stage retries (ClickHouse down, Shopify throttling):
/// the stage keeps polling through [`PausedMember::wait`], so the group never takes the member
/// for wedged and evicts it (`max.poll.interval.ms`) while it still works on its partitions.
/// Records that were already fetched arrive anyway; they are dropped and each partition is
/// rewound to its first dropped record on [`PausedMember::resume`], so nothing is skipped.
pub struct PausedMember<'a> {
    consumer: &'a StreamConsumer<GroupMember>,
    paused: TopicPartitionList,
    /// The first record dropped per (topic, partition), with the partition's revocation count
    /// when it was dropped.
    rewind: std::collections::HashMap<(String, i32), (i64, u64)>,
}

impl<'a> PausedMember<'a> {
    /// Pauses every partition assigned to `consumer`.
    pub fn pause(consumer: &'a StreamConsumer<GroupMember>) -> Self {
        let paused = consumer.assignment().unwrap_or_default();
        if let Err(error) = consumer.pause(&paused) {
            tracing::warn!(%error, "pausing partitions failed; records read while retrying are rewound");
        }
        Self {
            consumer,
            paused,
            rewind: std::collections::HashMap::new(),
        }
    }

    /// Waits `duration` while polling the consumer.
    pub async fn wait(&mut self, duration: Duration) {
        let sleep = tokio::time::sleep(duration);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return,
                received = self.consumer.recv() => {
                    if let Some(message) = received_or_warn(received) {
                        let revocations = self.consumer.context().revocations(message.partition());
                        let first = self
                            .rewind
                            .entry((message.topic().to_owned(), message.partition()))
                            .or_insert((message.offset(), revocations));
                        // Revoked and given back meanwhile: the new assignment starts at the
                        // group's commit, and only what it delivered since is to be rewound.
                        if first.1 != revocations {
                            *first = (message.offset(), revocations);
                        }
                    }
                }
            }
        }
    }

    /// Resumes the paused partitions and rewinds those that delivered records meanwhile.
    pub fn resume(self) {
        if let Err(error) = self.consumer.resume(&self.paused) {
            tracing::warn!(%error, "resuming partitions failed");
        }
        for ((topic, partition), (offset, revocations)) in self.rewind {
            if self.consumer.context().revocations(partition) != revocations {
                // Revoked since: its new assignment reads from the group's commit.
                continue;
            }
            if let Err(error) = self.consumer.seek(
                &topic,
                partition,
                Offset::Offset(offset),
                Duration::from_secs(10),
            ) {
                // Only a partition revoked meanwhile cannot be rewound; its new owner reads it
                // from the last commit.
                tracing::warn!(%topic, partition, offset, %error, "rewinding a partition failed");
            }
        }
    }
}

/// Whether a consumer loop is running or stopping when it commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitWhen {
    /// In the background: a blocking commit inside the loop can wait without end on a group
    /// coordinator that is busy, and stop the loop with it. The result is logged by
    /// [`GroupMember`].
    Running,
    /// Synchronously, but at most ten seconds, so that a clean stop replays nothing.
    Stopping,
}

/// Commits `offsets` for the consumer's group.
pub async fn commit_offsets<C: ConsumerContext + 'static>(
    consumer: &Arc<StreamConsumer<C>>,
    offsets: TopicPartitionList,
    when: CommitWhen,
) {
    let result = match when {
        CommitWhen::Running => consumer.commit(&offsets, CommitMode::Async),
        CommitWhen::Stopping => {
            let consumer = consumer.clone();
            let commit =
                tokio::task::spawn_blocking(move || consumer.commit(&offsets, CommitMode::Sync));
            match tokio::time::timeout(Duration::from_secs(10), commit).await {
                Ok(Ok(result)) => result,
                _ => {
                    tracing::warn!("the final offset commit did not finish; the next run replays a little more");
                    Ok(())
                }
            }
        }
    };
    // A commit refused after a rebalance is harmless: the new owner replays from the last commit.
    if let Err(error) = result {
        tracing::warn!(%error, "offset commit refused; uncommitted records will be replayed");
    }
}

/// The message a consumer received, or `None` after logging its error: consumer errors are
/// transient (a broker away, a rebalance), and the loop goes on.
fn received_or_warn<M>(received: rdkafka::error::KafkaResult<M>) -> Option<M> {
    match received {
        Ok(message) => Some(message),
        Err(error) => {
            tracing::warn!(%error, "consumer error; continuing");
            None
        }
    }
}
