//! Prometheus metrics (`GET /metrics`, text exposition format).
//!
//! Two kinds: instruments updated as things happen (the fsync latency histogram, client
//! requests by operation and outcome), and values read from the driver's status at each
//! scrape (LSNs, term, per-replica lag, proposals, elections, leader changes, bytes
//! shipped, compression ratio), so a scrape never sees a stale copy.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;

use themis_replication::cdc::CdcStream;
use themis_replication::logical::{LogicalReplicationManager, SlotInfo, WalStatus};
use themis_replication::raft::{DriverStatus, ReplicaStatus, ReplicationManager};

use crate::store::DocStore;

/// Labels of a client request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `put`, `get`, `delete`, `status` or `admin`.
    pub op: &'static str,
    /// `ok` or the error code (`not_leader`, `busy`, ...).
    pub outcome: &'static str,
}

/// Labels of a read counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadLabels {
    /// `strong`, `bounded`, `session`, `prefix` or `eventual`.
    pub level: &'static str,
    /// `ok`, `redirect`, or the error code (`bad_request` for a refused token, ...).
    pub outcome: &'static str,
}

/// The node's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    fsync: Histogram,
    requests: Family<RequestLabels, Counter>,
    reads: Family<ReadLabels, Counter>,
}

impl Metrics {
    /// Metrics for a node; the status collector is attached by [`Metrics::watch`].
    #[must_use]
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("themis");
        // 50 µs to ~1.6 s in doublings.
        let fsync = Histogram::new(exponential_buckets(50e-6, 2.0, 16));
        registry.register_with_unit(
            "wal_fsync",
            "Duration of each fdatasync of the WAL",
            prometheus_client::registry::Unit::Seconds,
            fsync.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "client_requests",
            "Client API requests by operation and outcome",
            requests.clone(),
        );
        let reads = Family::<ReadLabels, Counter>::default();
        registry.register(
            "reads",
            "Document reads by consistency level and outcome (redirects and refused tokens included)",
            reads.clone(),
        );
        Metrics { registry, fsync, requests, reads }
    }

    /// Reads the driver's status at every scrape.
    pub fn watch(&mut self, manager: ReplicationManager) {
        self.registry.register_collector(Box::new(StatusCollector { manager }));
    }

    /// Reads the change stream's queue and subscribers, and the store's label
    /// disagreements, at every scrape.
    pub fn watch_cdc(&mut self, cdc: CdcStream, store: Arc<DocStore>, sinks: crate::sink::Sinks) {
        self.registry.register_collector(Box::new(CdcCollector { cdc, store, sinks }));
    }

    /// Adds WAL archive metrics, read from `stats` at each scrape.
    pub fn watch_archive(&mut self, stats: Arc<crate::archive::ArchiveStats>) {
        self.registry.register_collector(Box::new(ArchiveCollector { stats }));
    }

    /// Adds staleness metrics: lag per region (from the leader's samples in `staleness`)
    /// and this node's own staleness (its safe time against `hlc`).
    pub fn watch_geo(
        &mut self,
        staleness: Arc<std::sync::Mutex<themis_replication::geo::StalenessTracker>>,
        manager: ReplicationManager,
        hlc: Arc<themis_replication::clock::Hlc>,
    ) {
        self.registry.register_collector(Box::new(GeoCollector { staleness, manager, hlc }));
    }

    /// Adds active-active metrics: each link's lag, position and changes applied (on the
    /// leader, which runs the links) and the conflicts this node's store settled.
    pub(crate) fn watch_links(
        &mut self,
        links: Arc<crate::links::Links>,
        store: Arc<crate::store::DocStore>,
    ) {
        self.registry.register_collector(Box::new(LinkCollector { links, store }));
    }

    /// Adds logical replication slot metrics, read from `slots` at each scrape.
    pub fn watch_slots(&mut self, slots: LogicalReplicationManager) {
        self.registry.register_collector(Box::new(SlotCollector { slots }));
    }

    /// The fsync histogram (a handle to the same one), for the WAL's sync observer.
    #[must_use]
    pub fn fsync_histogram(&self) -> Histogram {
        self.fsync.clone()
    }

    /// Counts one client request.
    pub fn count_request(&self, op: &'static str, outcome: &'static str) {
        self.requests.get_or_create(&RequestLabels { op, outcome }).inc();
    }

    /// Counts a read at `level` that ended in `outcome`.
    pub fn count_read(&self, level: &'static str, outcome: &'static str) {
        self.reads.get_or_create(&ReadLabels { level, outcome }).inc();
    }

    /// The text exposition.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[derive(Debug)]
struct StatusCollector {
    manager: ReplicationManager,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    replica: u64,
}

fn gauge(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: i64) -> std::fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn counter(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The running totals of a driver's status: proposals, elections, votes refused, peer
/// messages and snapshot transfers.
fn encode_totals(encoder: &mut DescriptorEncoder<'_>, s: &DriverStatus) -> std::fmt::Result {
    let c = s.counters;
    counter(encoder, "proposals", "Entries this node proposed as leader", c.proposals)?;
    counter(encoder, "elections", "Elections this node started", c.elections)?;
    counter(encoder, "failovers", "Changes of leader this node saw", c.leader_changes)?;
    counter(encoder, "peer_messages_sent", "Messages sent to peers", c.sent_msgs)?;
    counter(encoder, "snapshot_chunks_sent", "Snapshot chunks sent to followers", c.snapshot_chunks_sent)?;
    counter(encoder, "snapshot_chunks_received", "Snapshot chunks received", c.snapshot_chunks_received)?;
    counter(encoder, "snapshots_sent", "Snapshots a follower received whole and verified", c.snapshots_sent)?;
    counter(encoder, "snapshots_received", "Snapshots received whole and verified", c.snapshots_received)?;
    counter(
        encoder,
        "snapshot_resumed_bytes",
        "Snapshot bytes a transfer found already received when it resumed after a restart",
        c.snapshot_bytes_resumed,
    )?;
    counter(
        encoder,
        "cascade_forwarded_entries",
        "Entries this node passed on to read replicas streaming from it (cascading)",
        c.forwarded_entries,
    )?;
    counter(
        encoder,
        "cascade_appends_left_to_upstream",
        "Leader: appends left to a cascaded replica's upstream instead of sent",
        c.appends_left_to_upstream,
    )?;
    gauge(
        encoder,
        "cascade_direct_replicas",
        "Leader: cascaded replicas it serves directly for now (upstream silent, or the replica stalled)",
        signed(s.cascade_direct.len() as u64),
    )?;
    gauge(
        encoder,
        "snapshot_transfers",
        "Snapshot transfers in progress",
        signed(s.snapshot_transfers.len() as u64),
    )?;
    let rejected = ConstCounter::new(0u64);
    let mut family = encoder.encode_descriptor(
        "votes_rejected",
        "Vote requests and answers refused by signature checks, by reason",
        None,
        rejected.metric_type(),
    )?;
    for (reason, n) in
        [("unsigned", c.votes_unsigned), ("invalid", c.votes_invalid), ("replayed", c.votes_replayed)]
    {
        ConstCounter::new(n).encode(family.encode_family(&[("reason", reason)])?)?;
    }
    counter(
        encoder,
        "shipped_payload_bytes",
        "Replication bytes sent to peers before compression",
        c.sent_payload_bytes,
    )?;
    counter(
        encoder,
        "shipped_wire_bytes",
        "Replication bytes that crossed the links (after compression, frame headers included)",
        c.sent_wire_bytes,
    )?;
    Ok(())
}

impl Collector for StatusCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let s: DriverStatus = self.manager.status();
        let c = s.counters;
        gauge(&mut encoder, "term", "The current Raft term", signed(s.term))?;
        gauge(&mut encoder, "is_leader", "1 when this node leads", i64::from(s.role == "Leader"))?;
        gauge(&mut encoder, "last_lsn", "The last LSN in this node's log", signed(s.last_lsn))?;
        gauge(&mut encoder, "commit_lsn", "The commit LSN", signed(s.commit_lsn))?;
        gauge(&mut encoder, "applied_lsn", "The LSN the state machine has applied", signed(s.applied_lsn))?;
        gauge(&mut encoder, "voters", "Voting members", signed(s.voters.len() as u64))?;
        gauge(&mut encoder, "learners", "Learners", signed(s.learners.len() as u64))?;
        encode_totals(&mut encoder, &s)?;
        let ratio =
            if c.sent_wire_bytes == 0 { 1.0 } else { c.sent_payload_bytes as f64 / c.sent_wire_bytes as f64 };
        let metric = ConstGauge::new(ratio);
        metric.encode(encoder.encode_descriptor(
            "compression_ratio",
            "Payload bytes over wire bytes sent to peers (above 1: compression saved bytes)",
            None,
            metric.metric_type(),
        )?)?;
        if !s.replicas.is_empty() {
            type Field = fn(&ReplicaStatus) -> i64;
            let fields: [(&str, &str, Field); 4] = [
                ("replica_lag_lsns", "LSNs a replica is behind the leader's last (leader only)", |r| {
                    signed(r.lag_lsns)
                }),
                ("replica_lag_ms", "Age of the oldest entry a replica lacks, ms (leader only)", |r| {
                    signed(r.lag_ms)
                }),
                ("replica_match_lsn", "The highest LSN known to match the leader's log", |r| {
                    signed(r.match_lsn)
                }),
                ("replica_healthy", "1 when a replica answers heartbeats within the lag bounds", |r| {
                    i64::from(r.healthy)
                }),
            ];
            for (name, help, value) in fields {
                let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                for replica in &s.replicas {
                    let labels = ReplicaLabels { replica: replica.id.0 };
                    ConstGauge::new(value(replica)).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct CdcCollector {
    cdc: CdcStream,
    store: Arc<DocStore>,
    sinks: crate::sink::Sinks,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubscriberLabels {
    subscriber: u64,
}

impl Collector for CdcCollector {
    #[allow(clippy::too_many_lines, reason = "one entry per metric, each short")]
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let s = self.cdc.stats();
        let e = &mut encoder;
        gauge(
            e,
            "cdc_queue_depth",
            "Committed data entries in the live CDC queue",
            signed(s.queue_depth as u64),
        )?;
        gauge(
            e,
            "cdc_resolved_lsn",
            "Everything up to this LSN has been published to CDC",
            signed(s.resolved_lsn),
        )?;
        let catching_up = s.subscribers.iter().filter(|x| x.catching_up).count() as u64;
        gauge(
            e,
            "cdc_subscribers_live",
            "CDC subscribers reading the live queue",
            signed(s.subscribers.len() as u64 - catching_up),
        )?;
        gauge(
            e,
            "cdc_subscribers_catching_up",
            "CDC subscribers reading the WAL because they fell behind the queue",
            signed(catching_up),
        )?;
        counter(
            e,
            "cdc_events_delivered",
            "Change events (heartbeats included) handed to subscribers",
            s.delivered,
        )?;
        counter(
            e,
            "cdc_queue_evicted",
            "Entries dropped from the full live queue (subscribers that needed them read the WAL)",
            s.evicted,
        )?;
        counter(
            e,
            "cdc_label_mismatches",
            "Writes whose insert/update label or before-image disagreed with the document as applied",
            self.store.label_mismatches(),
        )?;
        if !self.sinks.is_empty() {
            use std::sync::atomic::Ordering::Relaxed;
            type Field = fn(&crate::sink::SinkStats, u64) -> u64;
            let gauges: [(&str, &str, Field); 3] = [
                (
                    "cdc_sink_acknowledged_lsn",
                    "Everything up to this LSN reached the sink's broker",
                    |x, _| x.acknowledged_lsn.load(Relaxed),
                ),
                (
                    "cdc_sink_lag_lsns",
                    "LSNs published past what the sink's broker acknowledged (0 where the sink is idle)",
                    |x, resolved| {
                        if x.active.load(Relaxed) == 1 {
                            resolved.saturating_sub(x.acknowledged_lsn.load(Relaxed))
                        } else {
                            0
                        }
                    },
                ),
                ("cdc_sink_active", "1 while this node's sink produces (it leads)", |x, _| {
                    x.active.load(Relaxed)
                }),
            ];
            let counters: [(&str, &str, Field); 2] = [
                ("cdc_sink_records", "Records the sink's broker acknowledged", |x, _| {
                    x.records.load(Relaxed)
                }),
                ("cdc_sink_errors", "Sink failures (connect, produce, subscribe), each retried", |x, _| {
                    x.errors.load(Relaxed)
                }),
            ];
            for (name, help, value) in gauges {
                let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                for (sink, stats) in &self.sinks {
                    let labels = SinkLabels { sink: sink.clone() };
                    ConstGauge::new(signed(value(stats, s.resolved_lsn)))
                        .encode(family.encode_family(&labels)?)?;
                }
            }
            for (name, help, value) in counters {
                let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                for (sink, stats) in &self.sinks {
                    let labels = SinkLabels { sink: sink.clone() };
                    ConstCounter::new(value(stats, s.resolved_lsn)).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        if !s.subscribers.is_empty() {
            type Field = fn(&themis_replication::cdc::SubscriberStats) -> i64;
            let fields: [(&str, &str, Field); 2] = [
                ("cdc_subscriber_lag_lsns", "LSNs published past a subscriber's position", |x| {
                    signed(x.lag_lsn)
                }),
                (
                    "cdc_subscriber_lag_ms",
                    "Commit-time distance from a subscriber's position to the newest entry, ms",
                    |x| signed(x.lag_ms),
                ),
            ];
            for (name, help, value) in fields {
                let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                for sub in &s.subscribers {
                    ConstGauge::new(value(sub))
                        .encode(family.encode_family(&SubscriberLabels { subscriber: sub.id })?)?;
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct SlotCollector {
    slots: LogicalReplicationManager,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SlotLabels {
    slot: String,
}

impl Collector for SlotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        type Field = fn(&SlotInfo) -> u64;
        let stats = self.slots.get_stats();
        gauge(
            &mut encoder,
            "logical_slots",
            "Logical replication slots on this node",
            signed(stats.slots.len() as u64),
        )?;
        if stats.slots.is_empty() {
            return Ok(());
        }
        let gauges: [(&str, &str, Field); 5] = [
            (
                "logical_slot_confirmed_lsn",
                "Everything up to this LSN was confirmed by the slot's consumer",
                |x| x.record.confirmed_flush_lsn,
            ),
            (
                "logical_slot_lag_lsns",
                "Log entries after what the slot has confirmed (see docs/logical.md)",
                |x| x.lag_lsn,
            ),
            ("logical_slot_held_bytes", "WAL bytes the slot's retention hold keeps", |x| x.held_bytes),
            ("logical_slot_wal_status", "How the slot holds its WAL: 0 reserved, 1 extended, 2 lost", |x| {
                match x.wal_status {
                    WalStatus::Reserved => 0,
                    WalStatus::Extended => 1,
                    WalStatus::Lost => 2,
                }
            }),
            ("logical_slot_paused", "1 while the slot is paused", |x| u64::from(x.record.paused)),
        ];
        let counters: [(&str, &str, Field); 3] = [
            ("logical_slot_changes_sent", "Changes this node delivered from the slot", |x| {
                x.stats.changes_sent
            }),
            ("logical_slot_bytes_sent", "Encoded bytes this node delivered from the slot", |x| {
                x.stats.bytes_sent
            }),
            ("logical_slot_changes_filtered", "Changes the slot's filter, predicate or hook kept out", |x| {
                x.stats.changes_filtered
            }),
        ];
        for (name, help, value) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for slot in &stats.slots {
                let labels = SlotLabels { slot: slot.record.config.name.clone() };
                ConstGauge::new(signed(value(slot))).encode(family.encode_family(&labels)?)?;
            }
        }
        for (name, help, value) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for slot in &stats.slots {
                let labels = SlotLabels { slot: slot.record.config.name.clone() };
                ConstCounter::new(value(slot)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct GeoCollector {
    staleness: Arc<std::sync::Mutex<themis_replication::geo::StalenessTracker>>,
    manager: ReplicationManager,
    hlc: Arc<themis_replication::clock::Hlc>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegionLabels {
    region: String,
}

impl Collector for GeoCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let safe_ms = self.manager.safe_time_ms();
        if safe_ms > 0 {
            let now_ms = self.hlc.now().physical_ms();
            gauge(
                &mut encoder,
                "staleness_ms",
                "How far behind this node may be: now less its safe time (see docs/consistency.md)",
                signed(now_ms.saturating_sub(safe_ms)),
            )?;
        }
        let tracker = self.staleness.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let regions = tracker.regions();
        if regions.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "region_lag_ms",
            "Lag of each region's freshest replica, sampled by the leader each second",
            None,
            MetricType::Gauge,
        )?;
        for region in regions {
            if let Some(r) = tracker.get_staleness(&region) {
                ConstGauge::new(signed(r.min_lag_ms))
                    .encode(family.encode_family(&RegionLabels { region })?)?;
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct LinkCollector {
    links: Arc<crate::links::Links>,
    store: Arc<crate::store::DocStore>,
}

/// A link metric: name, help, type, and its value in a status.
type LinkRow = (&'static str, &'static str, MetricType, fn(&crate::links::LinkStatus) -> u64);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LinkLabels {
    link: String,
}

impl Collector for LinkCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        counter(
            &mut encoder,
            "conflicts",
            "Conflicts between clusters this node's store settled and recorded",
            self.store.conflicts(),
        )?;
        let statuses = self.links.statuses();
        let rows: [LinkRow; 4] = [
            ("link_lag_ms", "How far behind its remote's writes each link is", MetricType::Gauge, |s| {
                s.lag_ms
            }),
            ("link_read_lsn", "The remote LSN each link has read and handled", MetricType::Gauge, |s| {
                s.read_lsn
            }),
            ("link_remote_lsn", "The newest remote LSN each link has heard of", MetricType::Gauge, |s| {
                s.remote_lsn
            }),
            ("link_applied_changes", "Remote writes each link applied here", MetricType::Counter, |s| {
                s.applied_changes
            }),
        ];
        for (name, help, kind, value) in rows {
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for (link, status) in &statuses {
                let labels = LinkLabels { link: link.clone() };
                if matches!(kind, MetricType::Counter) {
                    ConstCounter::new(value(status)).encode(family.encode_family(&labels)?)?;
                } else {
                    ConstGauge::new(signed(value(status))).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct ArchiveCollector {
    stats: Arc<crate::archive::ArchiveStats>,
}

impl Collector for ArchiveCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.stats;
        let e = &mut encoder;
        gauge(
            e,
            "archive_archived_lsn",
            "Everything up to this LSN is in the WAL archive",
            signed(s.archived_lsn.load(Relaxed)),
        )?;
        gauge(
            e,
            "archive_base_lsn",
            "The LSN of the newest base backup in the archive",
            signed(s.base_lsn.load(Relaxed)),
        )?;
        gauge(
            e,
            "archive_lag_lsns",
            "Committed LSNs not archived yet (on the leader)",
            signed(s.lag_lsns.load(Relaxed)),
        )?;
        gauge(
            e,
            "archive_lag_ms",
            "How long the oldest unarchived committed entry has waited, ms",
            signed(s.lag_ms.load(Relaxed)),
        )?;
        gauge(
            e,
            "archive_lag_segments",
            "WAL segments holding unarchived committed entries (on the leader)",
            signed(s.lag_segments.load(Relaxed)),
        )?;
        gauge(
            e,
            "archive_lag_bytes",
            "Bytes of those WAL segments on disk",
            signed(s.lag_bytes.load(Relaxed)),
        )?;
        gauge(
            e,
            "archive_failing",
            "1 while archiving fails",
            i64::from(s.failing.lock().map_or(true, |f| f.is_some())),
        )?;
        counter(e, "archive_objects", "Archive objects this node wrote", s.objects.load(Relaxed))?;
        counter(
            e,
            "archive_errors",
            "Archive failures (list, put, read), each retried",
            s.errors.load(Relaxed),
        )
    }
}
