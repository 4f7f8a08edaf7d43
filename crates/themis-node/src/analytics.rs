//! Replication analytics: lag history per replica, insights, and bottlenecks.
//!
//! A task samples the driver's status every heartbeat interval and hands it, with this
//! node's fsync and CPU figures for the interval, to [`Analytics::observe`], which is pure
//! (the time comes in as an argument) so tests drive it sample by sample.
//!
//! - **History.** Per replica (on the leader), one sample a second: the highest lag seen in
//!   that second, in a ring of `analytics.history_secs` samples (24 h by default, 16 bytes
//!   each). [`Analytics::history`] answers `getLagHistory(replica, duration)` with avg,
//!   p95, p99 and max, and at most [`MAX_POINTS`] points for a graph.
//! - **Insights.** Each detector opens an insight when its condition starts and closes it
//!   (`resolved_ms`) when the condition ends, so a condition that lasts an hour is one
//!   insight, not 36,000. The newest [`MAX_INSIGHTS`] are kept.
//!
//! | Insight | Condition (checked every heartbeat) |
//! |---|---|
//! | `SLOW_REPLICA` | a replica answered nothing for two heartbeat intervals, or is further behind than `replication.lag_alert_ms` |
//! | `LAG_SPIKE` | a replica's lag is above `analytics.lag_spike_ms` and three times its average of the last minute |
//! | `NETWORK_ISSUE` | a replica's heartbeat round trip is above `analytics.rtt_warn_ms` and three times its usual (the median of up to five minutes of per-second samples, once five are known) |
//! | `DISK_IO` | an fsync of this node's WAL took longer than `analytics.fsync_warn_ms` |
//! | `CPU` | this process used more than `analytics.cpu_warn_percent` of the machine's cores over a second |
//! | `APPLY_BACKLOG` | this node's state machine has been more than `analytics.apply_backlog_warn` LSNs behind its commit LSN for 2 s (a restart's replay is not one) |
//!
//! **Bottlenecks.** Each cause has a severity in 0..=1 from its measure `v` against its
//! threshold `w`: `clamp((v / w - 0.5) / 1.5, 0, 1)`: 0 up to half the threshold, 1/3 at
//! it, 1 at twice it. Network is per replica (the leader's round trips); disk, CPU and
//! apply are this node's own, since each node is a replica that measures itself.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use themis_replication::raft::DriverStatus;

use crate::stats::percentile;

/// Insights kept (oldest dropped first).
pub const MAX_INSIGHTS: usize = 1_000;
/// Points in a history answer at most (each the highest lag of its span).
pub const MAX_POINTS: usize = 300;
/// Round-trip samples (one a second) the usual round trip is taken from.
const RTT_BASELINE_SECS: usize = 300;
/// Round-trip samples needed before a `NETWORK_ISSUE` can be judged.
const MIN_RTT_BASELINE: usize = 5;
/// How long an apply backlog must last before it is an insight: a node replaying its log
/// after a restart is behind for a moment, as it should be.
const APPLY_BACKLOG_FOR_MS: u64 = 2_000;
/// Seconds of history a lag spike is measured against.
const SPIKE_WINDOW_SECS: usize = 60;

/// `[analytics]`: history size and the thresholds of the insights.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyticsSection {
    /// Seconds of lag history kept per replica, at one sample a second (default 86400;
    /// 60 to 604800).
    pub history_secs: u64,
    /// `LAG_SPIKE` floor, in ms (default 100; at least 1).
    pub lag_spike_ms: u64,
    /// `NETWORK_ISSUE` floor for a heartbeat round trip, in ms (default 50; at least 1).
    pub rtt_warn_ms: u64,
    /// `DISK_IO` threshold for one fsync, in ms (default 50; at least 1).
    pub fsync_warn_ms: u64,
    /// `CPU` threshold, percent of all cores (default 90; 1 to 100).
    pub cpu_warn_percent: u64,
    /// `APPLY_BACKLOG` threshold, in LSNs committed and not applied (default 10000; at
    /// least 1).
    pub apply_backlog_warn: u64,
}

impl Default for AnalyticsSection {
    fn default() -> Self {
        AnalyticsSection {
            history_secs: 86_400,
            lag_spike_ms: 100,
            rtt_warn_ms: 50,
            fsync_warn_ms: 50,
            cpu_warn_percent: 90,
            apply_backlog_warn: 10_000,
        }
    }
}

impl AnalyticsSection {
    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !(60..=604_800).contains(&self.history_secs) {
            return Err(format!("analytics.history_secs = {}: must be 60 to 604800", self.history_secs));
        }
        for (key, v) in [
            ("lag_spike_ms", self.lag_spike_ms),
            ("rtt_warn_ms", self.rtt_warn_ms),
            ("fsync_warn_ms", self.fsync_warn_ms),
            ("apply_backlog_warn", self.apply_backlog_warn),
        ] {
            if v == 0 {
                return Err(format!("analytics.{key} = 0: must be at least 1"));
            }
        }
        if !(1..=100).contains(&self.cpu_warn_percent) {
            return Err(format!("analytics.cpu_warn_percent = {}: must be 1 to 100", self.cpu_warn_percent));
        }
        Ok(())
    }
}

/// The kinds of insight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InsightKind {
    /// A replica's lag jumped well above its recent average.
    LagSpike,
    /// A replica does not answer, or is behind the lag bound.
    SlowReplica,
    /// A replica's round trip is well above its usual.
    NetworkIssue,
    /// This node's fsyncs are slow.
    DiskIo,
    /// This process is short of CPU.
    Cpu,
    /// This node's state machine is behind its commit LSN.
    ApplyBacklog,
}

/// Something worth an operator's attention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Insight {
    /// Numbers insights on this node, from 1.
    pub id: u64,
    /// What kind.
    #[serde(rename = "type")]
    pub kind: InsightKind,
    /// What was seen, with the figures.
    pub description: String,
    /// What to look at or do.
    pub recommendation: String,
    /// When it started (Unix ms).
    pub at_ms: u64,
    /// When the condition ended (Unix ms); `None` while it lasts.
    pub resolved_ms: Option<u64>,
    /// The replica, for a per-replica insight.
    pub replica: Option<u64>,
    /// The measures behind it.
    pub metadata: Value,
}

/// This node's own measures over one sampling interval.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NodeSample {
    /// Fsyncs in the interval.
    pub fsyncs: u64,
    /// Their mean, in µs.
    pub fsync_mean_us: u64,
    /// The slowest, in µs.
    pub fsync_max_us: u64,
    /// CPU used by this process over the last whole second, percent of all cores (None
    /// until measured).
    pub cpu_percent: Option<f64>,
}

/// One second of one replica's lag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Sample {
    at_s: u64,
    lag_ms: u32,
    lag_lsns: u32,
}

#[derive(Debug, Default)]
struct Track {
    ring: VecDeque<Sample>,
    /// The second being gathered (the highest values seen in it).
    current: Option<Sample>,
    /// Round trips, one a second (the highest in it), outside `NETWORK_ISSUE` episodes.
    rtts: VecDeque<u32>,
    rtt_current: Option<(u64, u32)>,
    /// The latest figures, for bottlenecks.
    rtt_ms: f64,
    lag_ms: u64,
}

/// Replica lag history for a span: `getLagHistory(replica, duration)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LagHistory {
    /// The replica.
    pub replica: u64,
    /// The span asked for, in seconds.
    pub duration_secs: u64,
    /// Seconds per sample.
    pub resolution_secs: u64,
    /// Samples in the span (a node that did not lead for part of it has fewer).
    pub samples: usize,
    /// Mean lag, ms.
    pub avg_ms: f64,
    /// 95th percentile lag, ms.
    pub p95_ms: u64,
    /// 99th percentile lag, ms.
    pub p99_ms: u64,
    /// Highest lag, ms.
    pub max_ms: u64,
    /// `[unix_seconds, lag_ms]`, oldest first, each the highest of its span.
    pub points: Vec<(u64, u64)>,
}

/// A replica's or this node's causes, each with a severity in 0..=1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bottleneck {
    /// The replica (`None`: this node).
    pub replica: Option<u64>,
    /// Severity by cause: `network`, `disk`, `cpu`, `apply`.
    pub severity: BTreeMap<String, f64>,
    /// The cause with the highest severity, when any is above zero.
    pub primary: Option<String>,
    /// The measures: `rtt_ms`, `lag_ms`, `fsync_max_ms`, `cpu_percent`, `apply_backlog`.
    pub measures: BTreeMap<String, f64>,
}

/// Severity of `value` against threshold `warn`: 0 up to half of it, 1/3 at it, 1 at twice.
#[must_use]
pub fn severity(value: f64, warn: f64) -> f64 {
    if warn <= 0.0 {
        return 0.0;
    }
    ((value / warn - 0.5) / 1.5).clamp(0.0, 1.0)
}

#[derive(Debug, Default)]
struct State {
    tracks: BTreeMap<u64, Track>,
    insights: VecDeque<Insight>,
    /// Open insights by kind and replica: their id.
    open: BTreeMap<(InsightKind, Option<u64>), u64>,
    /// When an apply backlog began (it must last [`APPLY_BACKLOG_FOR_MS`] to count).
    backlog_since: Option<u64>,
    next_id: u64,
    node: NodeSample,
    apply_backlog: u64,
    /// The heartbeat interval, from the last observation's caller.
    heartbeat_ms: u64,
}

/// The analytics of one node.
#[derive(Debug)]
pub struct Analytics {
    config: AnalyticsSection,
    lag_alert_ms: u64,
    state: Mutex<State>,
}

fn clamp_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

impl Analytics {
    /// Analytics under `config`; `lag_alert_ms` is `replication.lag_alert_ms`.
    #[must_use]
    pub fn new(config: AnalyticsSection, lag_alert_ms: u64) -> Analytics {
        Analytics { config, lag_alert_ms, state: Mutex::new(State::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one sample: the driver's `status`, this node's `node` measures since the last
    /// call, at `now_ms` (Unix ms), with heartbeats every `heartbeat_ms`.
    pub fn observe(&self, now_ms: u64, heartbeat_ms: u64, status: &DriverStatus, node: NodeSample) {
        let mut st = self.lock();
        st.heartbeat_ms = heartbeat_ms;
        let second = now_ms / 1000;
        let leading = status.role == "Leader";
        if !leading {
            // Per-replica figures are the leader's: close what a past leadership opened.
            let open: Vec<_> = st.open.keys().filter(|(_, r)| r.is_some()).copied().collect();
            for key in open {
                self.close(&mut st, key, now_ms);
            }
        }
        for r in status.replicas.iter().filter(|_| leading) {
            let id = r.id.0;
            let capacity = usize::try_from(self.config.history_secs).unwrap_or(usize::MAX);
            let track = st.tracks.entry(id).or_default();
            track.lag_ms = r.lag_ms;
            track.rtt_ms = r.rtt_us as f64 / 1000.0;
            let sample =
                Sample { at_s: second, lag_ms: clamp_u32(r.lag_ms), lag_lsns: clamp_u32(r.lag_lsns) };
            match &mut track.current {
                Some(cur) if cur.at_s == second => {
                    cur.lag_ms = cur.lag_ms.max(sample.lag_ms);
                    cur.lag_lsns = cur.lag_lsns.max(sample.lag_lsns);
                }
                cur => {
                    if let Some(done) = cur.take() {
                        if track.ring.len() >= capacity {
                            track.ring.pop_front();
                        }
                        track.ring.push_back(done);
                    }
                    *cur = Some(sample);
                }
            }
            // The average the spike is measured against: the last minute before this second.
            let recent: Vec<u32> =
                track.ring.iter().rev().take(SPIKE_WINDOW_SECS).map(|s| s.lag_ms).collect();
            let avg = if recent.is_empty() {
                0.0
            } else {
                recent.iter().map(|&v| f64::from(v)).sum::<f64>() / recent.len() as f64
            };
            let mut rtts: Vec<u32> = track.rtts.iter().copied().collect();
            rtts.sort_unstable();
            let usual_rtt = (rtts.len() >= MIN_RTT_BASELINE).then(|| u64::from(percentile(&rtts, 0.5)));
            let rtt_ms = r.rtt_us / 1000;
            self.replica_insights(&mut st, now_ms, r, avg, usual_rtt, rtt_ms);
            let in_episode = st.open.contains_key(&(InsightKind::NetworkIssue, Some(id)));
            let track = st.tracks.entry(id).or_default();
            match &mut track.rtt_current {
                Some((s, v)) if *s == second => *v = (*v).max(clamp_u32(rtt_ms)),
                cur => {
                    if let Some((_, v)) = cur.take()
                        && !in_episode
                    {
                        if track.rtts.len() >= RTT_BASELINE_SECS {
                            track.rtts.pop_front();
                        }
                        track.rtts.push_back(v);
                    }
                    *cur = Some((second, clamp_u32(rtt_ms)));
                }
            }
        }
        // Replicas no longer members: their open insights end; their history stays.
        let members: Vec<u64> = status.replicas.iter().map(|r| r.id.0).collect();
        let gone: Vec<_> =
            st.open.keys().filter(|(_, r)| r.is_some_and(|r| !members.contains(&r))).copied().collect();
        for key in gone {
            self.close(&mut st, key, now_ms);
        }
        self.node_insights(&mut st, now_ms, status, node);
    }

    fn replica_insights(
        &self,
        st: &mut State,
        now_ms: u64,
        r: &themis_replication::raft::ReplicaStatus,
        avg_lag_ms: f64,
        usual_rtt: Option<u64>,
        rtt_ms: u64,
    ) {
        let id = r.id.0;
        let known_rtt = usual_rtt.is_some();
        let usual_rtt_ms = usual_rtt.unwrap_or(0);
        let silent_ms = 2 * st.heartbeat_ms;
        let silent = r.last_contact_ms >= silent_ms;
        let behind = r.lag_ms > self.lag_alert_ms;
        if silent || behind {
            let (description, recommendation) = if silent {
                (
                    format!(
                        "replica {id} has not answered for {} ms ({} LSNs behind)",
                        r.last_contact_ms, r.lag_lsns
                    ),
                    "check that the replica's process runs and that the network reaches it; \
                     `themis doctor check` lists every node's state",
                )
            } else {
                (
                    format!(
                        "replica {id} is {} ms ({} LSNs) behind, above replication.lag_alert_ms = {}",
                        r.lag_ms, r.lag_lsns, self.lag_alert_ms
                    ),
                    "look at the replica's bottlenecks (disk, CPU, apply) and its round trip; \
                     `themis doctor analyze-lag` shows its history",
                )
            };
            let meta = json!({
                "last_contact_ms": r.last_contact_ms, "lag_ms": r.lag_ms, "lag_lsns": r.lag_lsns,
                "state": r.state,
            });
            self.open(st, InsightKind::SlowReplica, Some(id), now_ms, description, recommendation, meta);
        } else {
            self.close(st, (InsightKind::SlowReplica, Some(id)), now_ms);
        }
        let spike_floor = self.config.lag_spike_ms;
        #[allow(clippy::cast_precision_loss, reason = "lags are far below 2^52 ms")]
        let spiking = r.lag_ms > spike_floor && r.lag_ms as f64 > 3.0 * avg_lag_ms;
        if spiking {
            let description = format!(
                "replica {id}'s lag jumped to {} ms (average of the last minute {avg_lag_ms:.0} ms)",
                r.lag_ms
            );
            let meta = json!({ "lag_ms": r.lag_ms, "avg_lag_ms": avg_lag_ms, "lag_lsns": r.lag_lsns });
            self.open(
                st,
                InsightKind::LagSpike,
                Some(id),
                now_ms,
                description,
                "a burst of writes or a stall on the replica or its link; if it repeats, see its bottlenecks",
                meta,
            );
        } else if r.lag_ms <= spike_floor {
            self.close(st, (InsightKind::LagSpike, Some(id)), now_ms);
        }
        // Until a replica's usual round trip is known, a long one may be its distance.
        let rtt_floor = self.config.rtt_warn_ms.max(3 * usual_rtt_ms);
        if !silent && known_rtt && rtt_ms > rtt_floor {
            let description =
                format!("replica {id}'s heartbeat round trip is {rtt_ms} ms (usually {usual_rtt_ms} ms)");
            let meta = json!({ "rtt_ms": rtt_ms, "usual_rtt_ms": usual_rtt_ms, "threshold_ms": rtt_floor });
            self.open(
                st,
                InsightKind::NetworkIssue,
                Some(id),
                now_ms,
                description,
                "the link to the replica is slow or lossy (or the replica waits on its disk before it answers): \
                 check the path's latency and loss",
                meta,
            );
        } else if rtt_ms <= rtt_floor {
            self.close(st, (InsightKind::NetworkIssue, Some(id)), now_ms);
        }
    }

    fn node_insights(&self, st: &mut State, now_ms: u64, status: &DriverStatus, node: NodeSample) {
        let warn_us = self.config.fsync_warn_ms * 1000;
        if node.fsyncs > 0 {
            st.node.fsyncs = node.fsyncs;
            st.node.fsync_mean_us = node.fsync_mean_us;
            st.node.fsync_max_us = node.fsync_max_us;
            if node.fsync_max_us > warn_us {
                let description = format!(
                    "an fsync of this node's WAL took {} ms (mean {} ms over {} fsyncs), above analytics.fsync_warn_ms = {}",
                    node.fsync_max_us / 1000,
                    node.fsync_mean_us / 1000,
                    node.fsyncs,
                    self.config.fsync_warn_ms
                );
                let meta = json!({
                    "fsync_max_ms": node.fsync_max_us as f64 / 1000.0,
                    "fsync_mean_ms": node.fsync_mean_us as f64 / 1000.0, "fsyncs": node.fsyncs,
                });
                self.open(
                    st,
                    InsightKind::DiskIo,
                    None,
                    now_ms,
                    description,
                    "the WAL's disk is slow or shared: check its latency (iostat), move the WAL to its own device, \
                     or raise group commit",
                    meta,
                );
            } else {
                self.close(st, (InsightKind::DiskIo, None), now_ms);
            }
        }
        if let Some(cpu) = node.cpu_percent {
            st.node.cpu_percent = Some(cpu);
            #[allow(clippy::cast_precision_loss, reason = "a percentage")]
            let warn = self.config.cpu_warn_percent as f64;
            if cpu > warn {
                let description =
                    format!("this node's process used {cpu:.0}% of the machine's cores over the last second");
                self.open(
                    st,
                    InsightKind::Cpu,
                    None,
                    now_ms,
                    description,
                    "the node is short of CPU: give it more cores, or move other work off the machine",
                    json!({ "cpu_percent": cpu }),
                );
            } else {
                self.close(st, (InsightKind::Cpu, None), now_ms);
            }
        }
        let backlog = status.commit_lsn.saturating_sub(status.applied_lsn);
        st.apply_backlog = backlog;
        let since = if backlog > self.config.apply_backlog_warn {
            *st.backlog_since.get_or_insert(now_ms)
        } else {
            st.backlog_since = None;
            now_ms
        };
        if backlog > self.config.apply_backlog_warn && now_ms.saturating_sub(since) >= APPLY_BACKLOG_FOR_MS {
            let description = format!(
                "this node's state machine is {backlog} LSNs behind its commit LSN {} (applied {})",
                status.commit_lsn, status.applied_lsn
            );
            let meta = json!({ "backlog": backlog, "commit_lsn": status.commit_lsn, "applied_lsn": status.applied_lsn });
            self.open(
                st,
                InsightKind::ApplyBacklog,
                None,
                now_ms,
                description,
                "applying is slower than committing: raise replication.apply_workers, or look for hot keys \
                 that serialize the apply",
                meta,
            );
        } else {
            self.close(st, (InsightKind::ApplyBacklog, None), now_ms);
        }
    }

    #[allow(
        clippy::too_many_arguments,
        clippy::unused_self,
        reason = "one insight's fields; a method so detectors read as self.open(..)"
    )]
    fn open(
        &self,
        st: &mut State,
        kind: InsightKind,
        replica: Option<u64>,
        now_ms: u64,
        description: String,
        recommendation: &str,
        metadata: Value,
    ) {
        if let Some(&id) = st.open.get(&(kind, replica)) {
            // Still on: keep its figures current.
            if let Some(insight) = st.insights.iter_mut().rev().find(|i| i.id == id) {
                insight.metadata = metadata;
            }
            return;
        }
        st.next_id += 1;
        let id = st.next_id;
        tracing::warn!(?kind, ?replica, %description, "replication insight");
        if st.insights.len() >= MAX_INSIGHTS {
            st.insights.pop_front();
        }
        st.insights.push_back(Insight {
            id,
            kind,
            description,
            recommendation: recommendation.to_string(),
            at_ms: now_ms,
            resolved_ms: None,
            replica,
            metadata,
        });
        st.open.insert((kind, replica), id);
    }

    #[allow(clippy::unused_self, reason = "a method beside open, for symmetry at the call sites")]
    fn close(&self, st: &mut State, key: (InsightKind, Option<u64>), now_ms: u64) {
        if let Some(id) = st.open.remove(&key)
            && let Some(insight) = st.insights.iter_mut().rev().find(|i| i.id == id)
        {
            insight.resolved_ms = Some(now_ms);
        }
    }

    /// Insights that started at or after `since_ms`, or are still open, oldest first.
    #[must_use]
    pub fn insights(&self, since_ms: u64) -> Vec<Insight> {
        let st = self.lock();
        st.insights.iter().filter(|i| i.at_ms >= since_ms || i.resolved_ms.is_none()).cloned().collect()
    }

    /// `getLagHistory(replica, duration)`: the replica's lag over the last `duration`
    /// before `now_ms`; `None` for a replica this node never led.
    #[must_use]
    pub fn history(&self, replica: u64, duration: Duration, now_ms: u64) -> Option<LagHistory> {
        let st = self.lock();
        let track = st.tracks.get(&replica)?;
        let since = (now_ms / 1000).saturating_sub(duration.as_secs());
        let samples: Vec<&Sample> =
            track.ring.iter().chain(track.current.iter()).filter(|s| s.at_s >= since).collect();
        let mut lags: Vec<u32> = samples.iter().map(|s| s.lag_ms).collect();
        let avg_ms = if lags.is_empty() {
            0.0
        } else {
            lags.iter().map(|&v| f64::from(v)).sum::<f64>() / lags.len() as f64
        };
        let points = samples
            .chunks(samples.len().div_ceil(MAX_POINTS).max(1))
            .map(|c| (c[0].at_s, c.iter().map(|s| u64::from(s.lag_ms)).max().unwrap_or(0)))
            .collect();
        lags.sort_unstable();
        Some(LagHistory {
            replica,
            duration_secs: duration.as_secs(),
            resolution_secs: 1,
            samples: lags.len(),
            avg_ms,
            p95_ms: u64::from(percentile(&lags, 0.95)),
            p99_ms: u64::from(percentile(&lags, 0.99)),
            max_ms: lags.last().map_or(0, |&v| u64::from(v)),
            points,
        })
    }

    /// Replicas with history on this node.
    #[must_use]
    pub fn replicas(&self) -> Vec<u64> {
        self.lock().tracks.keys().copied().collect()
    }

    /// This node's own causes first, then each replica's network (on the leader).
    #[must_use]
    pub fn bottlenecks(&self) -> Vec<Bottleneck> {
        let st = self.lock();
        #[allow(clippy::cast_precision_loss, reason = "thresholds and figures are small")]
        let own = {
            let fsync_ms = st.node.fsync_max_us as f64 / 1000.0;
            let cpu = st.node.cpu_percent.unwrap_or(0.0);
            let backlog = st.apply_backlog as f64;
            let severity = BTreeMap::from([
                ("disk".to_string(), severity(fsync_ms, self.config.fsync_warn_ms as f64)),
                ("cpu".to_string(), severity(cpu, self.config.cpu_warn_percent as f64)),
                ("apply".to_string(), severity(backlog, self.config.apply_backlog_warn as f64)),
            ]);
            let measures = BTreeMap::from([
                ("fsync_max_ms".to_string(), fsync_ms),
                ("cpu_percent".to_string(), cpu),
                ("apply_backlog".to_string(), backlog),
            ]);
            bottleneck(None, severity, measures)
        };
        let mut out = vec![own];
        for (id, track) in &st.tracks {
            if !st.open.keys().any(|(_, r)| *r == Some(*id)) && track.lag_ms == 0 && track.rtt_ms == 0.0 {
                continue;
            }
            let mut rtts: Vec<u32> = track.rtts.iter().copied().collect();
            rtts.sort_unstable();
            #[allow(clippy::cast_precision_loss, reason = "ms figures")]
            let warn = self.config.rtt_warn_ms.max(3 * u64::from(percentile(&rtts, 0.5))) as f64;
            let severity = BTreeMap::from([("network".to_string(), severity(track.rtt_ms, warn))]);
            #[allow(clippy::cast_precision_loss, reason = "ms figures")]
            let measures = BTreeMap::from([
                ("rtt_ms".to_string(), track.rtt_ms),
                ("lag_ms".to_string(), track.lag_ms as f64),
            ]);
            out.push(bottleneck(Some(*id), severity, measures));
        }
        out
    }
}

fn bottleneck(
    replica: Option<u64>,
    severity: BTreeMap<String, f64>,
    measures: BTreeMap<String, f64>,
) -> Bottleneck {
    let primary =
        severity.iter().filter(|(_, s)| **s > 0.0).max_by(|a, b| a.1.total_cmp(b.1)).map(|(k, _)| k.clone());
    Bottleneck { replica, severity, primary, measures }
}

/// This node's fsyncs over an interval: the WAL's sync observer adds, the sampler takes.
#[derive(Debug, Default)]
pub struct FsyncWindow {
    count: AtomicU64,
    total_us: AtomicU64,
    max_us: AtomicU64,
}

impl FsyncWindow {
    /// One fsync that took `took`.
    pub fn observe(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.total_us.fetch_add(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// The fsyncs since the last take: count, mean µs, max µs.
    pub fn take(&self) -> (u64, u64, u64) {
        let count = self.count.swap(0, Ordering::Relaxed);
        let total = self.total_us.swap(0, Ordering::Relaxed);
        let max = self.max_us.swap(0, Ordering::Relaxed);
        (count, total.checked_div(count).unwrap_or(0), max)
    }
}

/// This process's CPU use from `/proc/self/stat` (Linux; `None` elsewhere).
#[derive(Debug, Default)]
struct CpuMeter {
    last: Option<(std::time::Instant, u64)>,
    percent: Option<f64>,
}

impl CpuMeter {
    /// The share of all cores used over the last whole second or more.
    fn sample(&mut self, cores: f64) -> Option<f64> {
        let now = std::time::Instant::now();
        let ticks = crate::stats::cpu_ticks(None)?;
        match self.last {
            Some((at, before)) if now.duration_since(at) >= Duration::from_secs(1) => {
                #[allow(clippy::cast_precision_loss, reason = "tick counts are small")]
                let used = (ticks.saturating_sub(before)) as f64 / 100.0;
                self.percent = Some(100.0 * used / now.duration_since(at).as_secs_f64() / cores);
                self.last = Some((now, ticks));
            }
            Some(_) => {}
            None => self.last = Some((now, ticks)),
        }
        self.percent
    }
}

/// Samples `manager`'s status into `analytics` every heartbeat until the manager stops.
pub(crate) fn spawn_sampler(
    analytics: Arc<Analytics>,
    fsync: Arc<FsyncWindow>,
    manager: themis_replication::raft::ReplicationManager,
    heartbeat: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut cpu = CpuMeter::default();
        #[allow(clippy::cast_precision_loss, reason = "a core count")]
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as f64;
        let heartbeat_ms = u64::try_from(heartbeat.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut ticker = tokio::time::interval(heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let status = manager.status();
            if status.role == themis_replication::raft::driver::STOPPED_ROLE {
                return;
            }
            let (fsyncs, fsync_mean_us, fsync_max_us) = fsync.take();
            let node = NodeSample { fsyncs, fsync_mean_us, fsync_max_us, cpu_percent: cpu.sample(cores) };
            analytics.observe(unix_ms(), heartbeat_ms, &status, node);
        }
    })
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The longest span a history request may ask for: a week.
pub const MAX_SPAN: Duration = Duration::from_hours(7 * 24);

/// Parses a span such as `90s`, `15m`, `24h` or `1h 30m`: 1 s to [`MAX_SPAN`].
pub fn parse_span(text: &str) -> Result<Duration, String> {
    let span = humantime::parse_duration(text.trim())
        .map_err(|e| format!("duration {:?}: {e} (write e.g. 90s, 15m, 24h)", truncate(text)))?;
    if span < Duration::from_secs(1) || span > MAX_SPAN {
        return Err(format!("duration {:?}: must be 1s to 7d", truncate(text)));
    }
    Ok(span)
}

fn truncate(text: &str) -> String {
    text.chars().take(32).collect()
}

/// `GET /v1/analytics/lag` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LagQuery {
    replica: Option<u64>,
    duration: Option<String>,
}

/// `GET /v1/analytics/lag?replica=N&duration=24h`: `getLagHistory` for one replica, or
/// every replica with history here when `replica` is left out.
pub(crate) async fn lag(
    axum::extract::State(state): axum::extract::State<Arc<crate::admin::AdminState>>,
    query: Result<axum::extract::Query<LagQuery>, axum::extract::rejection::QueryRejection>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Ok(axum::extract::Query(query)) = query else {
        return crate::admin::bad_request("query: expected replica=<id> and duration=<span such as 24h>");
    };
    let span = match query.duration.as_deref().map_or(Ok(Duration::from_hours(1)), parse_span) {
        Ok(span) => span,
        Err(e) => return crate::admin::bad_request(&e),
    };
    let analytics = &state.shared.analytics;
    let now = unix_ms();
    let replicas = match query.replica {
        Some(id) => vec![id],
        None => analytics.replicas(),
    };
    let mut out = Vec::new();
    for id in replicas {
        match analytics.history(id, span, now) {
            Some(h) => out.push(h),
            None if query.replica.is_some() => {
                return crate::admin::error(
                    axum::http::StatusCode::NOT_FOUND,
                    "not_found",
                    &format!("no lag history for replica {id} on this node (history is kept by the leader)"),
                );
            }
            None => {}
        }
    }
    axum::Json(json!({ "node": state.shared.manager.id().0, "histories": out })).into_response()
}

/// `GET /v1/analytics/insights` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InsightQuery {
    since_ms: Option<u64>,
}

/// `GET /v1/analytics/insights?since_ms=T`: insights that started at or after `T` (Unix
/// ms; default the last hour) and those still open.
pub(crate) async fn insights(
    axum::extract::State(state): axum::extract::State<Arc<crate::admin::AdminState>>,
    query: Result<axum::extract::Query<InsightQuery>, axum::extract::rejection::QueryRejection>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Ok(axum::extract::Query(query)) = query else {
        return crate::admin::bad_request("query: expected since_ms=<Unix ms>");
    };
    let since = query.since_ms.unwrap_or_else(|| unix_ms().saturating_sub(3_600_000));
    axum::Json(
        json!({ "node": state.shared.manager.id().0, "insights": state.shared.analytics.insights(since) }),
    )
    .into_response()
}

/// `GET /v1/analytics/bottlenecks`: this node's causes, and each replica's on the leader.
pub(crate) async fn bottlenecks(
    axum::extract::State(state): axum::extract::State<Arc<crate::admin::AdminState>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    axum::Json(
        json!({ "node": state.shared.manager.id().0, "bottlenecks": state.shared.analytics.bottlenecks() }),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use themis_replication::clock::NodeId;
    use themis_replication::raft::ReplicaStatus;

    fn status(replicas: &[(u64, u64, u64, u64)]) -> DriverStatus {
        DriverStatus {
            role: "Leader".into(),
            replicas: replicas
                .iter()
                .map(|&(id, lag_ms, contact_ms, rtt_ms)| ReplicaStatus {
                    id: NodeId(id),
                    learner: false,
                    match_lsn: 0,
                    lag_lsns: lag_ms / 10,
                    lag_ms,
                    last_contact_ms: contact_ms,
                    rtt_us: rtt_ms * 1000,
                    state: "Replicate".into(),
                    healthy: true,
                })
                .collect(),
            ..DriverStatus::default()
        }
    }

    fn kinds(a: &Analytics) -> Vec<(InsightKind, Option<u64>, bool)> {
        a.insights(0).iter().map(|i| (i.kind, i.replica, i.resolved_ms.is_none())).collect()
    }

    const HB: u64 = 100;

    /// Ten seconds of calm: 2 ms lag, 1 ms round trips.
    fn calm(a: &Analytics, from_ms: u64) -> u64 {
        let mut t = from_ms;
        for _ in 0..100 {
            a.observe(t, HB, &status(&[(2, 2, 0, 1), (3, 2, 0, 1)]), NodeSample::default());
            t += HB;
        }
        t
    }

    #[test]
    fn history_keeps_the_highest_lag_of_each_second_and_answers_percentiles() {
        let a = Analytics::new(AnalyticsSection { history_secs: 60, ..AnalyticsSection::default() }, 10_000);
        // 120 s at 10 samples a second; second s has lags s*10+0..9 ms.
        for s in 0..120u64 {
            for k in 0..10 {
                a.observe(
                    1_000_000 + s * 1000 + k * 100,
                    HB,
                    &status(&[(2, s * 10 + k, 0, 1)]),
                    NodeSample::default(),
                );
            }
        }
        let h = a.history(2, Duration::from_hours(1), 1_000_000 + 120_000).unwrap();
        assert_eq!(h.samples, 61, "60 kept in the ring, plus the second being gathered");
        assert_eq!(h.max_ms, 119 * 10 + 9);
        assert_eq!(h.p99_ms, 119 * 10 + 9);
        assert!(h.points.iter().all(|(_, lag)| lag % 10 == 9), "each point is its second's highest");
        let h = a.history(2, Duration::from_secs(10), 1_000_000 + 120_000).unwrap();
        assert_eq!(h.samples, 10);
        assert_eq!(h.points.len(), 10);
        assert!((h.avg_ms - 1154.0).abs() < 1e-9, "{}", h.avg_ms);
        assert!(a.history(9, Duration::from_secs(10), 0).is_none());
    }

    #[test]
    fn a_silent_replica_is_slow_within_two_heartbeats_and_the_insight_closes_when_it_answers() {
        let a = Analytics::new(AnalyticsSection::default(), 1000);
        let t = calm(&a, 0);
        assert!(kinds(&a).is_empty(), "{:?}", a.insights(0));
        a.observe(t, HB, &status(&[(2, 2, 100, 1), (3, 2, 0, 1)]), NodeSample::default());
        assert!(kinds(&a).is_empty(), "one heartbeat of silence is normal");
        a.observe(t + HB, HB, &status(&[(2, 2, 200, 1), (3, 2, 0, 1)]), NodeSample::default());
        assert_eq!(kinds(&a), vec![(InsightKind::SlowReplica, Some(2), true)]);
        a.observe(t + 2 * HB, HB, &status(&[(2, 2, 300, 1), (3, 2, 0, 1)]), NodeSample::default());
        assert_eq!(a.insights(0).len(), 1, "one insight per episode");
        a.observe(t + 3 * HB, HB, &status(&[(2, 2, 0, 1), (3, 2, 0, 1)]), NodeSample::default());
        assert_eq!(kinds(&a), vec![(InsightKind::SlowReplica, Some(2), false)]);
        assert_eq!(a.insights(0)[0].resolved_ms, Some(t + 3 * HB));
    }

    #[test]
    fn a_slow_link_is_a_network_issue_against_the_usual_round_trip() {
        let a = Analytics::new(AnalyticsSection::default(), 10_000);
        let t = calm(&a, 0);
        a.observe(t, HB, &status(&[(2, 2, 0, 49), (3, 2, 0, 1)]), NodeSample::default());
        assert!(kinds(&a).is_empty(), "below the 50 ms floor");
        a.observe(t + HB, HB, &status(&[(2, 2, 0, 220), (3, 2, 0, 1)]), NodeSample::default());
        assert_eq!(kinds(&a), vec![(InsightKind::NetworkIssue, Some(2), true)]);
        let b = a.bottlenecks();
        let two = b.iter().find(|b| b.replica == Some(2)).unwrap();
        assert_eq!(two.primary.as_deref(), Some("network"));
        assert!((two.severity["network"] - 1.0).abs() < 1e-9, "{two:?}");
        let three = b.iter().find(|b| b.replica == Some(3)).unwrap();
        assert_eq!(three.primary, None);
        // A geo link whose round trip is always 80 ms is not an issue; four times it is.
        let geo = Analytics::new(AnalyticsSection::default(), 10_000);
        let mut t = 0;
        for _ in 0..100 {
            geo.observe(t, HB, &status(&[(2, 2, 0, 80)]), NodeSample::default());
            t += HB;
        }
        assert!(kinds(&geo).is_empty());
        geo.observe(t, HB, &status(&[(2, 2, 0, 320)]), NodeSample::default());
        assert_eq!(kinds(&geo), vec![(InsightKind::NetworkIssue, Some(2), true)]);
    }

    #[test]
    fn a_lag_spike_is_measured_against_the_last_minute() {
        let a = Analytics::new(AnalyticsSection::default(), 10_000);
        let t = calm(&a, 0);
        a.observe(t, HB, &status(&[(2, 90, 0, 1)]), NodeSample::default());
        assert!(kinds(&a).is_empty(), "below the floor");
        a.observe(t + HB, HB, &status(&[(2, 400, 0, 1)]), NodeSample::default());
        assert_eq!(kinds(&a), vec![(InsightKind::LagSpike, Some(2), true)]);
        a.observe(t + 2 * HB, HB, &status(&[(2, 3, 0, 1)]), NodeSample::default());
        assert_eq!(kinds(&a), vec![(InsightKind::LagSpike, Some(2), false)]);
    }

    #[test]
    fn slow_fsyncs_cpu_and_an_apply_backlog_are_this_nodes_own() {
        let a = Analytics::new(AnalyticsSection::default(), 10_000);
        let mut s = status(&[]);
        let slow =
            NodeSample { fsyncs: 3, fsync_mean_us: 30_000, fsync_max_us: 80_000, cpu_percent: Some(20.0) };
        a.observe(0, HB, &s, slow);
        assert_eq!(kinds(&a), vec![(InsightKind::DiskIo, None, true)]);
        assert_eq!(a.bottlenecks()[0].primary.as_deref(), Some("disk"));
        // No fsync in an interval says nothing about the disk: the insight stays open.
        a.observe(HB, HB, &s, NodeSample { cpu_percent: Some(20.0), ..NodeSample::default() });
        assert_eq!(kinds(&a), vec![(InsightKind::DiskIo, None, true)]);
        let fast = NodeSample { fsyncs: 3, fsync_mean_us: 900, fsync_max_us: 1_000, cpu_percent: Some(95.0) };
        s.commit_lsn = 20_000;
        s.applied_lsn = 5_000;
        a.observe(2 * HB, HB, &s, fast);
        assert_eq!(kinds(&a), vec![(InsightKind::DiskIo, None, false), (InsightKind::Cpu, None, true)]);
        // A backlog counts once it has lasted two seconds (a restart's replay does not).
        a.observe(2 * HB + APPLY_BACKLOG_FOR_MS - 1, HB, &s, fast);
        assert_eq!(kinds(&a).len(), 2);
        a.observe(2 * HB + APPLY_BACKLOG_FOR_MS, HB, &s, fast);
        assert_eq!(
            kinds(&a),
            vec![
                (InsightKind::DiskIo, None, false),
                (InsightKind::Cpu, None, true),
                (InsightKind::ApplyBacklog, None, true)
            ]
        );
        let own = &a.bottlenecks()[0];
        assert_eq!(own.replica, None);
        assert_eq!(own.primary.as_deref(), Some("apply"));
        assert!(own.severity["cpu"] > 0.3 && own.severity["disk"] == 0.0, "{own:?}");
    }

    #[test]
    fn a_follower_closes_what_its_leadership_opened_and_insights_are_bounded() {
        let a = Analytics::new(AnalyticsSection::default(), 10_000);
        a.observe(0, HB, &status(&[(2, 0, 500, 1)]), NodeSample::default());
        assert_eq!(kinds(&a), vec![(InsightKind::SlowReplica, Some(2), true)]);
        a.observe(
            HB,
            HB,
            &DriverStatus { role: "Follower".into(), ..DriverStatus::default() },
            NodeSample::default(),
        );
        assert_eq!(kinds(&a), vec![(InsightKind::SlowReplica, Some(2), false)]);
        for i in 0..(2 * MAX_INSIGHTS as u64 + 10) {
            let sample = NodeSample {
                fsyncs: 1,
                fsync_mean_us: 1,
                fsync_max_us: if i % 2 == 0 { 90_000 } else { 1 },
                cpu_percent: None,
            };
            a.observe(2 * HB + i, HB, &DriverStatus::default(), sample);
        }
        assert_eq!(a.insights(0).len(), MAX_INSIGHTS);
    }

    #[test]
    fn severity_is_a_third_at_the_threshold_and_one_at_twice_it() {
        assert!(severity(10.0, 50.0).abs() < 1e-9);
        assert!((severity(50.0, 50.0) - 1.0 / 3.0).abs() < 1e-9);
        assert!((severity(100.0, 50.0) - 1.0).abs() < 1e-9);
        assert!((severity(1e9, 50.0) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn spans_parse_and_bad_ones_are_named() {
        assert_eq!(parse_span("24h").unwrap(), Duration::from_hours(24));
        assert_eq!(parse_span("1h 30m").unwrap(), Duration::from_mins(90));
        for bad in ["", "0s", "8d", "soon", "-5m"] {
            assert!(parse_span(bad).unwrap_err().contains("duration"), "{bad}");
        }
    }

    #[test]
    fn bad_settings_are_named() {
        AnalyticsSection::default().validate().unwrap();
        for (section, key) in [
            (AnalyticsSection { history_secs: 59, ..AnalyticsSection::default() }, "history_secs"),
            (AnalyticsSection { rtt_warn_ms: 0, ..AnalyticsSection::default() }, "rtt_warn_ms"),
            (AnalyticsSection { cpu_warn_percent: 101, ..AnalyticsSection::default() }, "cpu_warn_percent"),
            (AnalyticsSection { apply_backlog_warn: 0, ..AnalyticsSection::default() }, "apply_backlog_warn"),
        ] {
            let err = section.validate().unwrap_err();
            assert!(err.contains(key), "{err}");
        }
    }
}
