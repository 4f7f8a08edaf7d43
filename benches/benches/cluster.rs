//! A 3-node cluster on this machine (three `themis-node` runtimes in one process sharing
//! the cores, each with its own WAL and fsync, mutual TLS between them), driven through
//! the TLS client API by closed-loop clients, and beside it the baseline: the same
//! 256-byte writes appended by as many threads straight to one themis-wal with group
//! commit (the most one node's disk allows, with no replication at all).
//!
//! Phase 1: 64 closed-loop clients, `SEMI_SYNC` (`min_sync_replicas = 1`): throughput and
//! latency percentiles. Phase 2: an open loop at 10,000 writes/s: replication lag, from
//! the leader's acknowledgement to each follower having applied the write. Phase 3: the
//! closed loop again with 8 change-stream subscribers (`GET /v1/cdc/events` over TLS,
//! each decoding every event) on the leader, between two runs without them: the write
//! throughput they leave, against the DESIGN.md target of 95 %.
//!
//! `cargo bench -p themis-benches --bench cluster` (`THEMIS_BENCH_SECS`, default 5).
//! Under `cargo bench -- --test` (CI's bench build check) it runs for half a second.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use themis_node::stats::percentile;
use themis_node::{ChangeFeed, Client, Credentials, LocalCluster, Node, NodeConfig};
use themis_replication::clock::Timestamp;
use themis_replication::wal::{NewEntry, Wal, WalConfig};

const CLIENTS: usize = 64;
const VALUE_BYTES: usize = 256;

fn value(i: u64) -> Vec<u8> {
    themis_node::stats::document(0, i, VALUE_BYTES)
}

async fn start_cluster(dir: &std::path::Path) -> (Vec<Node>, Credentials) {
    let cluster = LocalCluster::write(dir, "bench", 3, 0, "semi_sync").expect("cluster files");
    let mut nodes = Vec::new();
    for node in &cluster.nodes {
        let config = NodeConfig::load(&node.config).expect("bench config");
        nodes.push(Node::start(&config).await.expect("node starts"));
    }
    (nodes, cluster.admin)
}

async fn leader(nodes: &[Node]) -> usize {
    for _ in 0..500 {
        if let Some(i) = nodes.iter().position(|n| n.manager.status().role == "Leader") {
            return i;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no leader");
}

/// Closed loop: every client writes, waits for the acknowledgement, writes again.
async fn closed_loop(nodes: &[Node], credentials: &Credentials, secs: f64) -> (f64, Vec<Duration>) {
    let lead = leader(nodes).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let client = Client::connect(nodes[lead].client_addr, credentials).await.expect("connect");
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("c{c}-{i}");
                let t0 = Instant::now();
                client.put("bench", &key, &value(i)).await.expect("write");
                lat.push(t0.elapsed());
                i += 1;
            }
            lat
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    (all.len() as f64 / elapsed, all)
}

/// Open loop at `rate` writes/s: for each acknowledged write, the time until each
/// follower has applied it.
async fn lag_at(nodes: &[Node], credentials: &Credentials, rate: f64, secs: f64) -> (f64, Vec<Duration>) {
    let lead = leader(nodes).await;
    let followers: Vec<_> =
        (0..nodes.len()).filter(|&i| i != lead).map(|i| nodes[i].manager.clone()).collect();
    let per_client = rate / CLIENTS as f64;
    let mut tasks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    for c in 0..CLIENTS {
        let client = Client::connect(nodes[lead].client_addr, credentials).await.expect("connect");
        let followers = followers.clone();
        tasks.push(tokio::spawn(async move {
            let mut lags = Vec::new();
            let mut sent = 0u64;
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / per_client));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            while Instant::now() < deadline {
                ticker.tick().await;
                let token = client.put("lag", &format!("c{c}-{sent}"), &value(sent)).await.expect("write");
                sent += 1;
                let acked = Instant::now();
                for f in &followers {
                    f.wait_applied(token).await.expect("applied");
                    lags.push(acked.elapsed());
                }
            }
            (sent, lags)
        }));
    }
    let started = Instant::now();
    let mut total = 0;
    let mut lags = Vec::new();
    for t in tasks {
        let (sent, l) = t.await.unwrap();
        total += sent;
        lags.extend(l);
    }
    lags.sort_unstable();
    (total as f64 / started.elapsed().as_secs_f64(), lags)
}

/// CPU seconds this process has used.
fn cpu_secs() -> f64 {
    themis_benches::process_cpu_secs()
}

/// One run of [`with_subscribers`].
struct SubscriberRun {
    writes_per_sec: f64,
    events: u64,
    /// CPU seconds the process used per wall second (2.0: both cores busy).
    cores_busy: f64,
    /// CPU seconds used in all.
    cpu: f64,
    writes: f64,
}

/// The closed loop with `subscribers` SSE change streams open on the leader, each reading
/// every event; the write rate, the change events the subscribers received, and the CPU the
/// process used meanwhile.
async fn with_subscribers(
    nodes: &[Node],
    credentials: &Credentials,
    subscribers: usize,
    secs: f64,
) -> SubscriberRun {
    let lead = leader(nodes).await;
    let admin = nodes[lead].admin_addr.expect("the bench cluster serves the admin API");
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..subscribers {
        let mut feed = ChangeFeed::new(vec![admin], credentials.clone(), "", "", None);
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let mut events = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(200), feed.next()).await {
                    Ok(Ok(event)) if event.kind == "change" => events += 1,
                    Ok(Ok(_)) | Err(_) => {}
                    Ok(Err(e)) => panic!("change stream: {e}"),
                }
            }
            events
        }));
    }
    // Let every stream open before the writes start.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (cpu0, t0) = (cpu_secs(), Instant::now());
    let (rate, lat) = closed_loop(nodes, credentials, secs).await;
    let (cpu, wall) = (cpu_secs() - cpu0, t0.elapsed().as_secs_f64());
    stop.store(true, Ordering::Relaxed);
    let mut events = 0;
    for r in readers {
        events += r.await.unwrap();
    }
    SubscriberRun { writes_per_sec: rate, events, cores_busy: cpu / wall, cpu, writes: lat.len() as f64 }
}

/// The baseline: CLIENTS threads appending the same values to one WAL, group commit on.
fn wal_baseline(dir: &std::path::Path, secs: f64) -> f64 {
    let (wal, _) = Wal::open(dir.join("baseline-wal"), WalConfig::default()).expect("wal");
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (wal, stop) = (wal.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    wal.append(&[NewEntry::data(Timestamp::ZERO, Bytes::from(value(n)))]).expect("append");
                    n += 1;
                }
                n
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let n: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    n as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let secs = themis_benches::bench_secs(0.5, 5.0);
    let dir = tempfile::tempdir().expect("tempdir");
    let baseline = wal_baseline(dir.path(), secs);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let (nodes, ca) = start_cluster(dir.path()).await;
        let (rate, lat) = closed_loop(&nodes, &ca, secs).await;
        println!(
            "cluster/semi_sync_64_clients: {rate:.0} acknowledged writes/s (target 35000: {}), \
             latency p50 {:?} p99 {:?} (target 10 ms: {}) p999 {:?}",
            if rate >= 35_000.0 { "MET" } else { "MISSED" },
            percentile(&lat, 0.50),
            percentile(&lat, 0.99),
            if percentile(&lat, 0.99) <= Duration::from_millis(10) { "MET" } else { "MISSED" },
            percentile(&lat, 0.999),
        );
        println!(
            "baseline/wal_group_commit_64_writers: {baseline:.0} appends/s on one node, no replication; \
             cluster / baseline = {:.2}",
            rate / baseline
        );
        let (achieved, lags) = lag_at(&nodes, &ca, 10_000.0, secs).await;
        println!(
            "cluster/lag_at_10k: offered 10000 writes/s, achieved {achieved:.0}; replication lag \
             (leader ack to follower applied) p50 {:?} p99 {:?} (target 5 ms: {}) max {:?}",
            percentile(&lags, 0.50),
            percentile(&lags, 0.99),
            if percentile(&lags, 0.99) <= Duration::from_millis(5) { "MET" } else { "MISSED" },
            lags.last().copied().unwrap_or_default(),
        );
        // Without, with, and again without subscribers, so drift over the run shows.
        let before = with_subscribers(&nodes, &ca, 0, secs).await;
        let with = with_subscribers(&nodes, &ca, 8, secs).await;
        let after = with_subscribers(&nodes, &ca, 0, secs).await;
        let without = f64::midpoint(before.writes_per_sec, after.writes_per_sec);
        let ratio = with.writes_per_sec / without;
        // The ceiling on this machine: with both cores busy in every phase, the writers get
        // what the subscribers' path leaves. CPU per write from the runs without, CPU per
        // delivered event from the run with; 8 events per write.
        let per_write = (before.cpu + after.cpu) / (before.writes + after.writes);
        let per_event = (with.cpu - with.writes * per_write).max(0.0) / (with.events.max(1) as f64);
        let ceiling = 1.0 / (1.0 + 8.0 * per_event / per_write);
        println!(
            "cluster/cdc_8_subscribers: {:.0} writes/s with 8 SSE subscribers ({} events delivered, {:.2} cores busy), \
             {without:.0} without ({:.0} before, {:.0} after; {:.2} and {:.2} cores busy); ratio {ratio:.3} \
             (target 0.95: {}); CPU per write {:.1} us, per delivered event {:.1} us (server encode + TLS + the \
             bench's SSE clients), so on these saturated cores the ratio's ceiling is {ceiling:.3}",
            with.writes_per_sec,
            with.events,
            with.cores_busy,
            before.writes_per_sec,
            after.writes_per_sec,
            before.cores_busy,
            after.cores_busy,
            if ratio >= 0.95 { "MET" } else { "MISSED" },
            per_write * 1e6,
            per_event * 1e6,
        );
        for node in nodes {
            let _ = node.shutdown().await;
        }
    });
}
