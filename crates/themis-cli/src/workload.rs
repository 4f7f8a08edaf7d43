//! A write workload for a duration, with a progress bar, replication-lag samples from the
//! leader, and a report (throughput, latency and lag percentiles, compression ratio, and
//! each local node's CPU, memory and bytes sent).
//!
//! - **Closed loop** (default): `clients` writers, each with one write in flight.
//! - **Open loop** (`rate`): writes are due at a fixed rate whatever the cluster does, and
//!   a write's latency runs from when it was due, not when it was sent, so a stall shows
//!   in the percentiles instead of slowing the load down (coordinated omission).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use themis_node::stats::{cpu_ticks, document, percentile};
use themis_node::{Client, Credentials};

/// A replica the leader has not heard from for this long is down, not lagging: its lag
/// is left out of the samples.
pub const IN_CONTACT_MS: u64 = 1000;

/// What to run.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Concurrent writers (closed loop: each waits for its write's acknowledgement).
    pub clients: usize,
    /// Connections the writers share, as tasks share one client in an application: each
    /// connection is pipelined and carries the writes of `clients / conns` writers (at
    /// least 1, at most `clients`).
    pub conns: usize,
    /// How long to write.
    pub duration: Duration,
    /// Bytes per document (JSON, at least 32).
    pub value_bytes: usize,
    /// The collection written.
    pub collection: String,
    /// Open loop: writes due per second (`None`: closed loop).
    pub rate: Option<u64>,
}

impl Spec {
    /// The connections used: `conns`, within 1 and `clients`.
    #[must_use]
    pub fn connections(&self) -> usize {
        self.conns.clamp(1, self.clients.max(1))
    }
}

/// One acknowledged write.
#[derive(Debug, Clone)]
pub struct Acked {
    /// Its document id.
    pub key: String,
    /// Its session token (LSN).
    pub token: u64,
    /// When it was sent.
    pub sent: Instant,
    /// When it was acknowledged.
    pub done: Instant,
}

/// What a run produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Every acknowledged write.
    pub acked: Vec<Acked>,
    /// Writes that failed (not acknowledged: an error or an unknown outcome).
    pub failed: u64,
    /// Replication lag samples (ms) of every replica the leader streams to and is in
    /// contact with, taken from the leader every 50 ms.
    pub lag_ms: Vec<u64>,
    /// How long it wrote.
    pub elapsed: Duration,
    /// Each connection's session token at the end: together they cover every
    /// acknowledged write.
    pub sessions: Vec<String>,
    /// Open loop: writes that fell due but were not sent, because [`MAX_IN_FLIGHT`] were
    /// already waiting (the cluster fell that far behind).
    pub not_sent: u64,
}

/// Open loop: the most writes waiting for their acknowledgement at once.
pub const MAX_IN_FLIGHT: usize = 100_000;

/// The figures a run is reported with.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Writers.
    pub clients: usize,
    /// Connections they shared.
    pub conns: usize,
    /// Bytes per document.
    pub value_bytes: usize,
    /// Seconds of writing.
    pub seconds: f64,
    /// Acknowledged writes.
    pub writes: usize,
    /// Failed writes.
    pub failed: u64,
    /// Acknowledged writes per second.
    pub writes_per_sec: f64,
    /// Write latency percentiles, ms.
    pub latency_ms: Percentiles,
    /// Replication lag percentiles, ms (from the leader's view of each replica).
    pub lag_ms: Percentiles,
    /// Payload bytes over wire bytes the leader sent its peers.
    pub compression_ratio: Option<f64>,
    /// Open loop: the writes per second offered (`None`: closed loop).
    pub offered_rate: Option<u64>,
    /// Open loop: writes due but not sent (too many in flight).
    pub not_sent: u64,
    /// Each node's resource use during the run (local nodes only).
    pub nodes: Vec<NodeUse>,
}

/// One node's resource use over a run.
#[derive(Debug, Clone, Serialize)]
pub struct NodeUse {
    /// Its node id.
    pub id: u64,
    /// CPU used (user + system), percent of one core, averaged over the run.
    pub cpu_percent: f64,
    /// The highest resident memory sampled, MiB.
    pub rss_mib_max: f64,
    /// Bytes it sent to its peers (after compression), MiB.
    pub sent_mib: f64,
}

/// p50, p99 and p99.9.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl Percentiles {
    fn of(sorted: &[Duration]) -> Percentiles {
        Percentiles {
            p50: ms(percentile(sorted, 0.5)),
            p99: ms(percentile(sorted, 0.99)),
            p999: ms(percentile(sorted, 0.999)),
        }
    }
}

impl Outcome {
    /// The report of this run, with the compression ratio if known.
    #[must_use]
    pub fn report(&self, spec: &Spec, compression_ratio: Option<f64>) -> Report {
        let mut latencies: Vec<Duration> = self.acked.iter().map(|a| a.done - a.sent).collect();
        latencies.sort_unstable();
        let mut lag: Vec<Duration> = self.lag_ms.iter().map(|&m| Duration::from_millis(m)).collect();
        lag.sort_unstable();
        let seconds = self.elapsed.as_secs_f64();
        Report {
            clients: spec.clients,
            conns: spec.connections(),
            value_bytes: spec.value_bytes,
            seconds: (seconds * 100.0).round() / 100.0,
            writes: self.acked.len(),
            failed: self.failed,
            writes_per_sec: if seconds > 0.0 { (self.acked.len() as f64 / seconds).round() } else { 0.0 },
            latency_ms: Percentiles::of(&latencies),
            lag_ms: Percentiles::of(&lag),
            compression_ratio,
            offered_rate: spec.rate,
            not_sent: self.not_sent,
            nodes: Vec::new(),
        }
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (l, g) = (self.latency_ms, self.lag_ms);
        if let Some(rate) = self.offered_rate {
            writeln!(
                f,
                "  open loop: {rate} writes/s offered; latency runs from when each write was due ({} not sent: too many in flight)",
                self.not_sent
            )?;
        }
        let load = if self.offered_rate.is_some() {
            format!("{} connections", self.conns)
        } else {
            format!("{} clients over {} connections", self.clients, self.conns)
        };
        writeln!(
            f,
            "  {} writes acknowledged in {:.1} s: {:.0} writes/s ({load}, {}-byte documents, {} failed)",
            self.writes, self.seconds, self.writes_per_sec, self.value_bytes, self.failed
        )?;
        writeln!(f, "  write latency ms: p50 {} p99 {} p99.9 {}", l.p50, l.p99, l.p999)?;
        write!(f, "  replication lag ms (replicas streaming): p50 {} p99 {} p99.9 {}", g.p50, g.p99, g.p999)?;
        if let Some(r) = self.compression_ratio {
            write!(f, "\n  compression ratio (payload / wire bytes to peers): {r:.2}")?;
        }
        for n in &self.nodes {
            write!(
                f,
                "\n  node {}: CPU {:.0}% of a core, resident memory up to {:.0} MiB, {:.1} MiB sent to peers",
                n.id, n.cpu_percent, n.rss_mib_max, n.sent_mib
            )?;
        }
        Ok(())
    }
}

/// The leader's status among `addrs`, if one answers as leader.
pub async fn leader_status(clients: &[Option<Client>]) -> Option<(usize, serde_json::Value)> {
    for (i, client) in clients.iter().enumerate() {
        if let Some(c) = client
            && let Ok(s) = c.status().await
            && s["status"]["role"] == "Leader"
        {
            return Some((i, s));
        }
    }
    None
}

/// The leader's compression ratio so far (payload over wire bytes sent to peers).
#[must_use]
pub fn compression_ratio(status: &serde_json::Value) -> Option<f64> {
    let c = &status["status"]["counters"];
    let (payload, wire) = (c["sent_payload_bytes"].as_f64()?, c["sent_wire_bytes"].as_f64()?);
    (wire > 0.0).then(|| (payload / wire * 100.0).round() / 100.0)
}

/// A progress bar over `duration` (hidden when stderr is not a terminal).
#[must_use]
pub fn progress(duration: Duration) -> ProgressBar {
    let bar = ProgressBar::new(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
    bar.set_style(
        ProgressStyle::with_template("  [{bar:40}] {elapsed:>3} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

/// Runs `spec` against the nodes at `addrs`. Halfway through, `halfway` is called (the
/// demo kills the leader there); it returns the addresses still to sample lag from.
#[allow(clippy::too_many_lines, reason = "one run: connect, write, sample lag, stop, collect")]
pub async fn run(
    addrs: &[SocketAddr],
    credentials: &Credentials,
    spec: &Spec,
    halfway: impl FnOnce() -> Option<usize>,
) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let failed = Arc::new(AtomicU64::new(0));
    // Connections first, each starting at another node (followers redirect to the
    // leader), so connecting is not timed.
    let mut conns = Vec::new();
    for c in 0..spec.connections() {
        let mut order = addrs.to_vec();
        order.rotate_left(c % addrs.len().max(1));
        conns.push(Client::connect_any(&order, credentials).await.ok().map(Arc::new));
    }
    let mut writers = Vec::new();
    let not_sent = Arc::new(AtomicU64::new(0));
    if let Some(rate) = spec.rate {
        writers.push(tokio::spawn(open_loop(
            rate,
            conns.clone(),
            spec.clone(),
            (stop.clone(), acked.clone(), failed.clone(), not_sent.clone()),
        )));
    }
    // Closed loop: one writer per client; the open loop above replaces them.
    let closed_writers = if spec.rate.is_some() { 0 } else { spec.clients };
    for w in 0..closed_writers {
        let (stop, acked, failed) = (stop.clone(), acked.clone(), failed.clone());
        let spec = spec.clone();
        let conn = conns[w % conns.len()].clone();
        writers.push(tokio::spawn(async move {
            let Some(client) = conn else {
                failed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w{w}-{n}");
                let value = document(w, n, spec.value_bytes);
                let sent = Instant::now();
                match client.put(&spec.collection, &key, &value).await {
                    Ok(token) => acked.lock().unwrap_or_else(PoisonError::into_inner).push(Acked {
                        key,
                        token,
                        sent,
                        done: Instant::now(),
                    }),
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                n += 1;
            }
        }));
    }
    // Lag samples from whichever node leads.
    let lag: Arc<Mutex<Vec<u64>>> = Arc::default();
    let dead: Arc<Mutex<Option<usize>>> = Arc::default();
    let sampler = {
        let (stop, lag, dead) = (stop.clone(), lag.clone(), dead.clone());
        let (addrs, credentials) = (addrs.to_vec(), credentials.clone());
        tokio::spawn(async move {
            let mut clients = Vec::new();
            for addr in &addrs {
                clients.push(Client::connect(*addr, &credentials).await.ok());
            }
            while !stop.load(Ordering::Relaxed) {
                if let Some(i) = *dead.lock().unwrap_or_else(PoisonError::into_inner) {
                    clients[i] = None;
                }
                if let Some((_, s)) = leader_status(&clients).await
                    && let Some(replicas) = s["status"]["replicas"].as_array()
                {
                    let mut samples = lag.lock().unwrap_or_else(PoisonError::into_inner);
                    // The leader's own row (if any) is not a replica. Only replicas the
                    // leader streams to (`Replicate`: it knows their match LSN) and has heard
                    // from within a second are measured: one it still probes (a new leader's
                    // first moments) or cannot reach (the demo's killed node) has no lag to
                    // speak of, only an unknown position.
                    let leader = s["status"]["id"].as_u64();
                    samples.extend(
                        replicas
                            .iter()
                            .filter(|r| r["id"].as_u64() != leader && r["state"] == "Replicate")
                            .filter(|r| r["last_contact_ms"].as_u64().is_some_and(|ms| ms < IN_CONTACT_MS))
                            .filter_map(|r| r["lag_ms"].as_u64()),
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let bar = progress(spec.duration);
    let started = Instant::now();
    let ticker = {
        let (bar, acked, stop) = (bar.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n = acked.lock().unwrap_or_else(PoisonError::into_inner).len();
                let secs = started.elapsed().as_secs_f64().max(0.001);
                bar.set_position(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
                bar.set_message(format!("{n} writes, {:.0}/s", n as f64 / secs));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(spec.duration / 2).await;
    *dead.lock().unwrap_or_else(PoisonError::into_inner) = halfway();
    tokio::time::sleep(spec.duration.saturating_sub(started.elapsed())).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    for w in writers {
        let _ = w.await;
    }
    let _ = sampler.await;
    let _ = ticker.await;
    bar.finish_and_clear();
    let sessions = conns.iter().flatten().filter_map(|c| c.session_token()).collect();
    Outcome {
        acked: take(&acked),
        failed: failed.load(Ordering::Relaxed),
        lag_ms: take(&lag),
        elapsed,
        sessions,
        not_sent: not_sent.load(Ordering::Relaxed),
    }
}

/// What the open loop shares with the run: stop, acknowledged, failed, not sent.
type Shared = (Arc<AtomicBool>, Arc<Mutex<Vec<Acked>>>, Arc<AtomicU64>, Arc<AtomicU64>);

/// Sends writes at `rate` a second over `conns` (round robin) until `stop`, each in its own
/// task, and times each from when it was due.
async fn open_loop(rate: u64, conns: Vec<Option<Arc<Client>>>, spec: Spec, shared: Shared) {
    let (stop, acked, failed, not_sent) = shared;
    let conns: Vec<Arc<Client>> = conns.into_iter().flatten().collect();
    if conns.is_empty() || rate == 0 {
        failed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let in_flight = Arc::new(AtomicU64::new(0));
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    let mut n = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let now = Instant::now();
        // Every write due by now goes out, however late the generator itself woke.
        loop {
            let due = start + interval.mul_f64(n as f64);
            if due > now {
                break;
            }
            if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT as u64 {
                not_sent.fetch_add(1, Ordering::Relaxed);
                n += 1;
                continue;
            }
            let client = Arc::clone(&conns[usize::try_from(n).unwrap_or(0) % conns.len()]);
            let (acked, failed, in_flight) = (acked.clone(), failed.clone(), Arc::clone(&in_flight));
            let (collection, value) = (spec.collection.clone(), document(0, n, spec.value_bytes));
            let key = format!("o-{n}");
            in_flight.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                match client.put(&collection, &key, &value).await {
                    Ok(token) => acked.lock().unwrap_or_else(PoisonError::into_inner).push(Acked {
                        key,
                        token,
                        sent: due,
                        done: Instant::now(),
                    }),
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                in_flight.fetch_sub(1, Ordering::Relaxed);
            });
            n += 1;
        }
    }
    // The writes still in flight finish (or fail) before the run is counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    while in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// CPU and memory of local node processes, read from `/proc` (Linux), and the bytes each
/// node sent, from its status.
#[derive(Debug)]
pub struct ResourceProbe {
    nodes: Vec<(u64, u32, Option<Client>)>,
    start: Instant,
    before: Vec<(Option<u64>, Option<u64>)>,
    rss_max: Arc<Mutex<Vec<u64>>>,
    stop: Arc<AtomicBool>,
    sampler: tokio::task::JoinHandle<()>,
}

/// Resident memory of process `pid`, KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn sent_bytes(client: Option<&Client>) -> Option<u64> {
    client?.status().await.ok()?["status"]["counters"]["sent_wire_bytes"].as_u64()
}

impl ResourceProbe {
    /// Starts measuring the nodes `(id, pid, client address)`.
    pub async fn start(nodes: &[(u64, u32, SocketAddr)], credentials: &Credentials) -> ResourceProbe {
        let mut probed = Vec::new();
        let mut before = Vec::new();
        for &(id, pid, addr) in nodes {
            let client = Client::connect(addr, credentials).await.ok();
            before.push((cpu_ticks(Some(pid)), sent_bytes(client.as_ref()).await));
            probed.push((id, pid, client));
        }
        let pids: Vec<u32> = nodes.iter().map(|n| n.1).collect();
        let rss_max = Arc::new(Mutex::new(vec![0u64; pids.len()]));
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (rss_max, stop) = (Arc::clone(&rss_max), Arc::clone(&stop));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    {
                        let mut max = rss_max.lock().unwrap_or_else(PoisonError::into_inner);
                        for (i, pid) in pids.iter().enumerate() {
                            max[i] = max[i].max(rss_kib(*pid).unwrap_or(0));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            })
        };
        ResourceProbe { nodes: probed, start: Instant::now(), before, rss_max, stop, sampler }
    }

    /// Each node's use since [`start`](Self::start).
    pub async fn finish(self) -> Vec<NodeUse> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.sampler.await;
        let secs = self.start.elapsed().as_secs_f64().max(0.001);
        let rss = take(&self.rss_max);
        let mut out = Vec::new();
        for (i, (id, pid, client)) in self.nodes.iter().enumerate() {
            let (cpu0, sent0) = self.before[i];
            let cpu = match (cpu0, cpu_ticks(Some(*pid))) {
                (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 100.0 / secs * 100.0,
                _ => 0.0,
            };
            let sent = match (sent0, sent_bytes(client.as_ref()).await) {
                (Some(a), Some(b)) => b.saturating_sub(a) as f64 / f64::from(1u32 << 20),
                _ => 0.0,
            };
            out.push(NodeUse {
                id: *id,
                cpu_percent: (cpu * 10.0).round() / 10.0,
                rss_mib_max: (rss.get(i).copied().unwrap_or(0) as f64 / 1024.0 * 10.0).round() / 10.0,
                sent_mib: (sent * 100.0).round() / 100.0,
            });
        }
        out
    }
}

/// Empties a shared buffer.
fn take<T: Default>(shared: &Mutex<T>) -> T {
    std::mem::take(&mut *shared.lock().unwrap_or_else(PoisonError::into_inner))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_hold_percentiles_and_ratio() {
        let now = Instant::now();
        let acked = (1..=100u64)
            .map(|i| Acked { key: i.to_string(), token: i, sent: now, done: now + Duration::from_millis(i) })
            .collect();
        let outcome = Outcome {
            acked,
            failed: 2,
            lag_ms: vec![1, 2, 3, 4],
            elapsed: Duration::from_secs(2),
            sessions: vec![],
            not_sent: 0,
        };
        let spec = Spec {
            clients: 4,
            conns: 2,
            duration: Duration::from_secs(2),
            value_bytes: 256,
            collection: "c".into(),
            rate: None,
        };
        let report = outcome.report(&spec, Some(1.5));
        assert_eq!((report.writes, report.failed, report.writes_per_sec), (100, 2, 50.0));
        assert!((report.latency_ms.p50 - 50.0).abs() < 1e-9 && (report.latency_ms.p99 - 99.0).abs() < 1e-9);
        assert!((report.lag_ms.p99 - 4.0).abs() < 1e-9);
        let text = report.to_string();
        assert!(text.contains("50 writes/s") && text.contains("compression ratio"), "{text}");
        assert!(report.conns == 2 && text.contains("4 clients over 2 connections"), "{text}");
        for (conns, used) in [(0, 1), (3, 3), (9, 4)] {
            assert_eq!(Spec { conns, ..spec.clone() }.connections(), used);
        }
        let status =
            serde_json::json!({"status": {"counters": {"sent_payload_bytes": 300, "sent_wire_bytes": 200}}});
        assert_eq!(compression_ratio(&status), Some(1.5));
        assert_eq!(compression_ratio(&serde_json::json!({})), None);
    }
}
