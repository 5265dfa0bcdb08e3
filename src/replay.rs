//! Operator replays: move a consumer group's offsets and watch it work through them, and send
//! dead letters back to where they came from.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use tributary_runtime::dead_letter::{dlq_headers, DeadLetterStage};
use tributary_runtime::kafka::{producer_config, read_topic, reset_group, GroupProgress, ResetTo};
use tributary_schemas::{topics, AvroRecord, DeadLetter};

/// The consumer groups of `config`'s stages that read `topic`: the only groups a replay moves.
pub fn groups_reading<'c>(config: &'c crate::config::Config, topic: &str) -> Vec<&'c str> {
    match topic {
        topics::WEBHOOKS => vec![
            config.processor.group_id.as_str(),
            config.reconcile.edits_group_id.as_str(),
        ],
        topics::ATTRIBUTIONS => vec![
            config.clickhouse.group_id.as_str(),
            config.writeback.group_id.as_str(),
            config.events.repartition_group_id.as_str(),
        ],
        topics::ORDERS_BY_CUSTOMER => vec![config.events.group_id.as_str()],
        topics::REWARDS_BY_ADVOCATE => vec![config.store_credit.group_id.as_str()],
        _ => Vec::new(),
    }
}

/// Moves `group`'s offsets on `topic` (the group must be stopped) and returns the new offsets.
pub async fn reset(
    bootstrap: &str,
    group: &str,
    topic: &str,
    to: ResetTo,
) -> anyhow::Result<Vec<(i32, i64)>> {
    let (bootstrap, group_name, topic_name) =
        (bootstrap.to_owned(), group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || reset_group(&bootstrap, &group_name, &topic_name, to))
        .await?
        .with_context(|| format!("resetting {group} on {topic}"))
}

/// Shows a progress bar while `group` works through `topic` up to its current end; returns once
/// the group's commits reach it.
pub async fn follow(bootstrap: &str, group: &str, topic: &str) -> anyhow::Result<()> {
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg} {bar:40} {pos}/{len} records {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("{group} on {topic}"));
    caught_up(
        bootstrap,
        group,
        topic,
        Duration::from_millis(200),
        Some(&bar),
    )
    .await?;
    bar.finish();
    Ok(())
}

/// Waits until `group`'s commits on `topic` reach the topic's end as read at the start, polling
/// every `poll`, and returns how many records that was. `bar`, if any, shows the way.
pub async fn caught_up(
    bootstrap: &str,
    group: &str,
    topic: &str,
    poll: Duration,
    bar: Option<&indicatif::ProgressBar>,
) -> anyhow::Result<i64> {
    let progress = Arc::new(GroupProgress::new(bootstrap, group, topic)?);
    let read = || {
        let progress = progress.clone();
        async move {
            anyhow::Ok(tokio::task::spawn_blocking(move || progress.committed_and_end()).await??)
        }
    };
    let (start, end) = read().await?;
    if let Some(bar) = bar {
        bar.set_length(end.saturating_sub(start).max(0) as u64);
    }
    let mut committed = start;
    while committed < end {
        tokio::time::sleep(poll).await;
        committed = read().await?.0;
        if let Some(bar) = bar {
            bar.set_position(committed.saturating_sub(start).max(0) as u64);
        }
    }
    Ok(end - start)
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct DeadLetterReplay {
    pub replayed: usize,
    pub skipped: usize,
    /// Letters whose payload was cut to fit (`tributary.payload.truncated`): replaying them would
    /// send a broken record; their reason names the source record.
    pub cut: usize,
    /// Where the next replay should start (`--from-offset`): the dead-letter topic's end as read.
    pub next_offset: i64,
}

/// Produces each dead letter's original record (same key, same partition) back to its source
/// topic, from `from_offset` of the (single-partition) dead-letter topic, optionally only those of
/// one `stage`.
/// What is replayed is judged again: a refund whose order has arrived now counts, once.
pub async fn replay_dead_letters(
    bootstrap: &str,
    from_offset: i64,
    stage: Option<DeadLetterStage>,
) -> anyhow::Result<DeadLetterReplay> {
    let letters = {
        let bootstrap = bootstrap.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut letters = Vec::new();
            read_topic(&bootstrap, topics::DEAD_LETTERS, |message| {
                let cut = message.headers().is_some_and(|headers| {
                    headers
                        .iter()
                        .any(|h| h.key == dlq_headers::PAYLOAD_TRUNCATED)
                });
                letters.push((
                    message.offset(),
                    message.payload().map(DeadLetter::from_avro),
                    cut,
                ));
            })?;
            anyhow::Ok(letters)
        })
        .await??
    };
    let producer: FutureProducer = producer_config(bootstrap, Duration::from_secs(30)).create()?;
    let bar = indicatif::ProgressBar::new(letters.len() as u64);
    let mut report = DeadLetterReplay::default();
    for (offset, letter, cut) in letters {
        bar.inc(1);
        report.next_offset = offset + 1;
        let letter = match letter {
            Some(Ok(letter)) if offset >= from_offset => letter,
            _ => {
                report.skipped += 1;
                continue;
            }
        };
        if cut {
            report.cut += 1;
            report.skipped += 1;
            continue;
        }
        // A writeback letter's source is the attributions changelog: producing an old revision
        // there again would make it the order's newest. Such letters are redone by replaying the
        // writeback group instead (docs/decisions.md, Writeback).
        if stage.is_some_and(|stage| stage.as_str() != letter.stage)
            || letter.source_topic == topics::ATTRIBUTIONS
        {
            report.skipped += 1;
            continue;
        }
        let mut record = FutureRecord::to(&letter.source_topic)
            .partition(letter.source_partition)
            .payload(&letter.payload);
        if let Some(key) = &letter.source_key {
            record = record.key(key);
        }
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(error, _)| anyhow::anyhow!("replaying a dead letter: {error}"))?;
        report.replayed += 1;
    }
    bar.finish_and_clear();
    report.next_offset = report.next_offset.max(from_offset);
    Ok(report)
}
