//! Kafka sinks (`[[cdc.sinks]]`): the leader produces the change stream to Kafka.
//!
//! Every node runs each sink's task; only the leader produces. A record is the change's
//! JSON envelope (`crate::changes::envelope`), keyed by document id, with headers `lsn`,
//! `index` and `op`; a delete is followed by a tombstone (the key, no value) for
//! compacted topics. Topics are created on first use.
//!
//! Delivery is at-least-once, with duplicates detectable by LSN: the sink moves its
//! position only past records the broker acknowledged, and every `checkpoint_ms` writes
//! that position through the replicated log as the document `_themis_cdc_sinks/<name>`
//! (`{"lsn": N}`). A broker that fails or restarts is reconnected to and the sink resumes
//! from its acknowledged position; a new leader resumes from the last checkpoint (so it
//! may send again what the old leader sent after it). Every node holds its WAL from the
//! checkpoint on (a retention hold named `cdc-sink-<name>`), so the next leader can read
//! what the sink has not confirmed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;
use themis_replication::cdc::{CdcError, ChangeEvent, ChangeOp, Filter};
use themis_replication::wal::Lsn;

use crate::config::SinkSection;
use crate::server::Shared;

/// The collection sink checkpoints are written to.
pub const CHECKPOINT_COLLECTION: &str = "_themis_cdc_sinks";

/// Collections the node writes for itself; sinks never produce them.
fn internal(collection: &str) -> bool {
    collection.starts_with("_themis")
}

/// One sink's progress, for metrics.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Everything up to this LSN reached the broker (on the node that leads).
    pub acknowledged_lsn: AtomicU64,
    /// Records the broker acknowledged.
    pub records: AtomicU64,
    /// Failures (connect, produce, subscribe), each followed by a retry.
    pub errors: AtomicU64,
    /// 1 while this node's sink produces.
    pub active: AtomicU64,
}

/// Every sink of a node, by name.
pub type Sinks = BTreeMap<String, Arc<SinkStats>>;

/// Fresh stats for each configured sink.
pub(crate) fn stats(sinks: &[SinkSection]) -> Sinks {
    sinks.iter().map(|s| (s.name.clone(), Arc::new(SinkStats::default()))).collect()
}

/// Starts a task per configured sink, reporting into `stats`.
pub(crate) fn start(shared: &Arc<Shared>, sinks: &[SinkSection], stats: &Sinks) {
    for sink in sinks {
        tokio::spawn(run(Arc::clone(shared), sink.clone(), Arc::clone(&stats[&sink.name])));
    }
}

/// The replicated checkpoint of sink `name`: the LSN up to which it has delivered.
fn checkpoint(shared: &Shared, name: &str) -> Option<Lsn> {
    let (doc, _) = shared.store.get(CHECKPOINT_COLLECTION, name.as_bytes())?;
    serde_json::from_slice::<serde_json::Value>(&doc).ok()?["lsn"].as_u64()
}

fn hold_name(name: &str) -> String {
    format!("cdc-sink-{name}")
}

async fn run(shared: Arc<Shared>, sink: SinkSection, stats: Arc<SinkStats>) {
    let filter = match sink.filter() {
        Ok(f) => f,
        Err(e) => {
            // Validated at load; kept as an error line rather than a panic.
            tracing::error!(sink = %sink.name, error = %e, "the sink's filter does not compile; the sink is off");
            return;
        }
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        // Hold the WAL from the checkpoint on, on every node, so whichever leads next
        // can read what the sink has not confirmed.
        let from = checkpoint(&shared, &sink.name).unwrap_or(0);
        shared.wal.set_hold(&hold_name(&sink.name), from + 1);
        if !shared.manager.leadership().1 {
            stats.active.store(0, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        stats.active.store(1, Ordering::Relaxed);
        match lead(&shared, &sink, &filter, from, &stats).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(sink = %sink.name, error = %e, retry_in = ?backoff, "the Kafka sink failed; it resumes from its acknowledged LSN");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// A Kafka topic name for `collection` under `template`.
fn topic(template: &str, collection: &str) -> String {
    let cleaned: String = collection
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' })
        .collect();
    template.replace("{collection}", &cleaned)
}

fn partition_of(key: &[u8], partitions: i32) -> i32 {
    // The same key always lands on the same partition, across nodes and restarts.
    let count = u64::try_from(partitions.max(1)).unwrap_or(1);
    i32::try_from(crate::store::document_hash("", key) % count).unwrap_or(0)
}

/// A connection to the brokers with the partitions it has used.
struct Producer {
    client: Client,
    created: HashSet<String>,
    partitions: HashMap<(String, i32), PartitionClient>,
    count: i32,
}

impl Producer {
    async fn connect(sink: &SinkSection) -> Result<Producer, String> {
        let backoff = rskafka::BackoffConfig {
            deadline: Some(Duration::from_secs(5)),
            ..rskafka::BackoffConfig::default()
        };
        let client = tokio::time::timeout(
            Duration::from_secs(10),
            ClientBuilder::new(sink.brokers.clone())
                .client_id("themis-cdc-sink")
                .backoff_config(backoff)
                .build(),
        )
        .await
        .map_err(|_| format!("connecting to {:?} timed out", sink.brokers))?
        .map_err(|e| format!("connecting to {:?}: {e}", sink.brokers))?;
        Ok(Producer { client, created: HashSet::new(), partitions: HashMap::new(), count: sink.partitions })
    }

    async fn partition(&mut self, topic: &str, partition: i32) -> Result<&PartitionClient, String> {
        if !self.created.contains(topic) {
            let controller = self.client.controller_client().map_err(|e| format!("controller: {e}"))?;
            match controller.create_topic(topic, self.count, 1, 5_000).await {
                Ok(())
                | Err(rskafka::client::error::Error::ServerError {
                    protocol_error: rskafka::client::error::ProtocolError::TopicAlreadyExists,
                    ..
                }) => {}
                Err(e) => return Err(format!("creating topic {topic}: {e}")),
            }
            self.created.insert(topic.to_string());
        }
        let key = (topic.to_string(), partition);
        if !self.partitions.contains_key(&key) {
            let client = self
                .client
                .partition_client(topic, partition, UnknownTopicHandling::Retry)
                .await
                .map_err(|e| format!("topic {topic} partition {partition}: {e}"))?;
            self.partitions.insert(key.clone(), client);
        }
        Ok(&self.partitions[&key])
    }
}

fn records(event: &ChangeEvent, node: u64, tombstones: bool) -> Vec<Record> {
    let header = |k: &str, v: String| (k.to_string(), v.into_bytes());
    let headers = BTreeMap::from([
        header("lsn", event.lsn.to_string()),
        header("index", event.index.to_string()),
        header("op", event.op.debezium().to_string()),
    ]);
    let timestamp =
        rskafka::chrono::DateTime::from_timestamp_millis(i64::try_from(event.hlc.physical_ms()).unwrap_or(0))
            .unwrap_or_default();
    let key = Some(event.key.to_vec());
    let mut out = vec![Record {
        key: key.clone(),
        value: Some(crate::changes::envelope(event, node).into_bytes()),
        headers: headers.clone(),
        timestamp,
    }];
    if tombstones && event.op == ChangeOp::Delete {
        out.push(Record { key, value: None, headers, timestamp });
    }
    out
}

/// Produces from `from` while this node leads; returns when it stops leading, or the
/// first failure.
async fn lead(
    shared: &Shared,
    sink: &SinkSection,
    filter: &Filter,
    from: Lsn,
    stats: &SinkStats,
) -> Result<(), String> {
    let mut producer = Producer::connect(sink).await?;
    let mut subscription = shared.cdc.subscribe(filter.clone(), from).map_err(|e| match e {
        CdcError::Gone { .. } => format!("{e}: changes after LSN {from} are lost to this sink"),
        e => e.to_string(),
    })?;
    let node = shared.manager.id().0;
    let mut position = from;
    let checkpoint_every = Duration::from_millis(sink.checkpoint_ms);
    // Everything up to here is covered by the last checkpoint, the checkpoint's own entry
    // included: reaching that entry (by a heartbeat, say) is no progress to record, so an
    // idle sink stops writing checkpoints instead of checkpointing its checkpoints.
    let mut checkpointed = from;
    let mut next_checkpoint = tokio::time::Instant::now() + checkpoint_every;
    stats.acknowledged_lsn.store(position, Ordering::Relaxed);
    loop {
        if !shared.manager.leadership().1 {
            return Ok(());
        }
        // A batch: the first event (a heartbeat at the latest), then whatever is ready.
        let mut batch = vec![subscription.next().await.map_err(|e| e.to_string())?];
        while batch.len() < sink.max_batch {
            match subscription.next().now_or_never() {
                Some(Ok(event)) => batch.push(event),
                Some(Err(e)) => return Err(e.to_string()),
                None => break,
            }
        }
        // Records by partition, in log order within each.
        let mut groups: BTreeMap<(String, i32), Vec<Record>> = BTreeMap::new();
        let mut upto = position;
        for event in &batch {
            if event.op != ChangeOp::Heartbeat && !internal(&event.collection) {
                let name = topic(&sink.topic, &event.collection);
                let part = partition_of(&event.key, sink.partitions);
                groups.entry((name, part)).or_default().extend(records(event, node, sink.tombstones));
            }
            if event.entry_end {
                upto = upto.max(event.lsn);
            }
        }
        for ((name, part), records) in groups {
            let n = records.len() as u64;
            let client = producer.partition(&name, part).await?;
            client
                .produce(records, Compression::NoCompression)
                .await
                .map_err(|e| format!("producing to {name}/{part}: {e}"))?;
            stats.records.fetch_add(n, Ordering::Relaxed);
        }
        position = upto;
        stats.acknowledged_lsn.store(position, Ordering::Relaxed);
        if position > checkpointed && tokio::time::Instant::now() >= next_checkpoint {
            let doc = Bytes::from(serde_json::json!({ "lsn": position }).to_string());
            let write = shared.writes.write(
                &shared.manager,
                &shared.store,
                CHECKPOINT_COLLECTION.to_string(),
                Bytes::copy_from_slice(sink.name.as_bytes()),
                Some(doc),
            );
            // A checkpoint that fails is retried at the next one; the sink goes on.
            match tokio::time::timeout(Duration::from_secs(10), write).await {
                Ok(Ok(lsn)) => {
                    checkpointed = position.max(lsn);
                    shared.wal.set_hold(&hold_name(&sink.name), position + 1);
                }
                Ok(Err(e)) => tracing::debug!(sink = %sink.name, error = %e, "checkpoint not written"),
                Err(_) => tracing::debug!(sink = %sink.name, "checkpoint timed out"),
            }
            next_checkpoint = tokio::time::Instant::now() + checkpoint_every;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_partitions_are_stable_and_kafka_safe() {
        assert_eq!(topic("themis.{collection}", "orders"), "themis.orders");
        assert_eq!(topic("cdc", "orders"), "cdc");
        assert_eq!(topic("t.{collection}", "tenant acme/x"), "t.tenant_acme_x");
        assert_eq!(partition_of(b"k1", 8), partition_of(b"k1", 8));
        assert!((0..8).contains(&partition_of(b"anything", 8)));
        assert_eq!(partition_of(b"x", 1), 0);
        assert!(internal("_themis_cdc_sinks") && !internal("orders"));
    }
}
