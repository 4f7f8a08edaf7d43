//! Two regions on one machine: nodes 1 and 2 in `us-east`, node 3 in `eu-west`, every
//! peer link through a proxy that holds bytes 25 ms each way between the regions (50 ms
//! RTT) and 1 ms inside one. Clients in `eu-west` read at each level while a writer writes
//! through the leader, `eu-west` is cut off for a while and the leader is killed; then
//! each level's guarantee is checked on the recorded history:
//!
//! - STRONG: a read sees every write acknowledged before it began;
//! - BOUNDED: a read sees every write acknowledged more than the bound before it began;
//! - SESSION: a read sees the session's own last write and never goes back;
//! - PREFIX: a read never sees a write without the writes before it.
//!
//! A read may fail (a redirect with no leader, a timeout); it may not return less. A
//! second test measures ASYNC replication lag across the regions beside the lag inside
//! one, in the same run.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, Net};
use themis_node::{Client, Consistency, Credentials, Request};
use themis_testkit::proxy::Fault;

const ACROSS: Duration = Duration::from_millis(25);
const WITHIN: Duration = Duration::from_millis(1);
const BOUND_MS: u64 = 400;
const EU: usize = 2;

fn region(id: u64) -> &'static str {
    if id == 3 { "eu-west" } else { "us-east" }
}

fn regional_delays(net: &Net) {
    for a in 0..3 {
        for b in (a + 1)..3 {
            let across = (a == EU) != (b == EU);
            net.set_between(a, b, Fault::Delay(if across { ACROSS } else { WITHIN }));
        }
    }
}

/// Three nodes in two regions, the leader in `us-east`.
async fn two_regions(mode: &str) -> (Cluster, Net, usize) {
    let (cluster, net) = common::start_proxied(3, |text| {
        format!("{}\n[geo]\nread_wait_ms = 300\n", common::with_regions(&text, region))
    })
    .await;
    regional_delays(&net);
    let mut leader = cluster.leader().await;
    let client = cluster.client(leader).await;
    if leader == EU {
        client.admin(Request::Transfer { id: cluster.nodes[0].id }).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while leader == EU {
            assert!(Instant::now() < deadline, "leadership did not move to us-east");
            tokio::time::sleep(Duration::from_millis(100)).await;
            leader = cluster.leader_among(&[false; 3]).await.unwrap_or(EU);
        }
    }
    let client = cluster.client(leader).await;
    client
        .admin(Request::SetMode { mode: mode.into(), min_sync_replicas: u32::from(mode != "async") })
        .await
        .unwrap();
    (cluster, net, leader)
}

fn value(doc: Option<Vec<u8>>) -> u64 {
    doc.map_or(0, |d| serde_json::from_slice::<serde_json::Value>(&d).unwrap()["v"].as_u64().unwrap())
}

/// A write acknowledged: its value, when it was acknowledged.
type Acks = Arc<Mutex<Vec<(u64, Instant)>>>;

/// The largest value acknowledged before `t`.
fn acked_before(acks: &[(u64, Instant)], t: Instant) -> u64 {
    acks.iter().filter(|(_, at)| *at < t).map(|(v, _)| *v).max().unwrap_or(0)
}

/// Writes `a = i` then `b = i` for i = 1, 2, ... through any node until `stop`.
fn writer(addrs: Vec<std::net::SocketAddr>, credentials: Credentials, stop: Arc<AtomicBool>, acks: Acks) {
    tokio::spawn(async move {
        let mut i = 0;
        let mut client = None;
        while !stop.load(Ordering::Relaxed) {
            if client.is_none() {
                client =
                    tokio::time::timeout(Duration::from_secs(2), Client::connect_any(&addrs, &credentials))
                        .await
                        .ok()
                        .and_then(Result::ok);
                if client.is_none() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
            let c = client.as_ref().unwrap();
            i += 1;
            let doc = format!("{{\"v\":{i}}}");
            let a = tokio::time::timeout(Duration::from_secs(3), c.put("geo", "a", doc.as_bytes())).await;
            if !matches!(a, Ok(Ok(_))) {
                client = None;
                continue;
            }
            acks.lock().unwrap().push((i, Instant::now()));
            let _ = tokio::time::timeout(Duration::from_secs(3), c.put("geo", "b", doc.as_bytes())).await;
        }
    });
}

#[derive(Default)]
struct History {
    strong: Vec<(Instant, u64)>,
    bounded: Vec<(Instant, u64)>,
    /// (the session's last write, the value read, the previous value read).
    session: Vec<(u64, u64, u64)>,
    /// (b read first, then a).
    prefix: Vec<(u64, u64)>,
    failed: usize,
}

/// Clients in eu-west reading at every level in turn until `stop`, into `history`.
fn spawn_readers(
    eu: std::net::SocketAddr,
    addrs: Vec<std::net::SocketAddr>,
    credentials: Credentials,
    stop: &Arc<AtomicBool>,
    history: &Arc<Mutex<History>>,
) -> tokio::task::JoinHandle<()> {
    let (stop, history) = (stop.clone(), history.clone());
    tokio::spawn(async move {
        let reader = Client::connect(eu, &credentials).await.unwrap();
        // One session: its writes through any node, its reads on eu-west. The reader
        // keeps the newest token it was given or answered with.
        let session_writer = Client::connect_any(&addrs, &credentials).await.unwrap();
        let session_reader = Client::connect(eu, &credentials).await.unwrap();
        let mut own = 0;
        let mut last = 0;
        let quick = Duration::from_secs(3);
        while !stop.load(Ordering::Relaxed) {
            // STRONG, asked of the eu-west node (it confirms through the leader).
            let t0 = Instant::now();
            match tokio::time::timeout(quick, reader.get("geo", "a", Consistency::Strong)).await {
                Ok(Ok(doc)) => history.lock().unwrap().strong.push((t0, value(doc))),
                _ => history.lock().unwrap().failed += 1,
            }
            // The strong read may have moved the connection to the leader; the other
            // levels are asked of the eu-west node on their own connection.
            let Ok(local) = Client::connect(eu, &credentials).await else {
                history.lock().unwrap().failed += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let t0 = Instant::now();
            let bounded = Consistency::Bounded { max_staleness_ms: BOUND_MS, max_versions: None };
            match tokio::time::timeout(quick, local.get("geo", "a", bounded)).await {
                Ok(Ok(doc)) => history.lock().unwrap().bounded.push((t0, value(doc))),
                _ => history.lock().unwrap().failed += 1,
            }
            // SESSION: write the session's own key, read it back in eu-west.
            if let Ok(Ok(_)) = tokio::time::timeout(
                quick,
                session_writer.put("geo", "s", format!("{{\"v\":{}}}", own + 1).as_bytes()),
            )
            .await
            {
                own += 1;
                session_reader.set_session_token(&session_writer.session_token().unwrap());
            }
            match tokio::time::timeout(quick, session_reader.get("geo", "s", Consistency::Session(None)))
                .await
            {
                Ok(Ok(doc)) => {
                    let v = value(doc);
                    history.lock().unwrap().session.push((own, v, last));
                    last = last.max(v);
                }
                _ => history.lock().unwrap().failed += 1,
            }
            // PREFIX: b, then a.
            let b = tokio::time::timeout(quick, local.get("geo", "b", Consistency::Prefix)).await;
            let a = tokio::time::timeout(quick, local.get("geo", "a", Consistency::Prefix)).await;
            match (b, a) {
                (Ok(Ok(b)), Ok(Ok(a))) => history.lock().unwrap().prefix.push((value(b), value(a))),
                _ => history.lock().unwrap().failed += 1,
            }
        }
    })
}

/// Each level's guarantee over the reads recorded, against the writes acknowledged.
fn check(h: &History, acks: &[(u64, Instant)]) {
    eprintln!(
        "{} writes acknowledged; reads: {} strong, {} bounded, {} session, {} prefix, {} failed",
        acks.len(),
        h.strong.len(),
        h.bounded.len(),
        h.session.len(),
        h.prefix.len(),
        h.failed
    );
    assert!(acks.len() > 20, "too few writes to judge");
    assert!(h.strong.len() > 5 && h.bounded.len() > 5, "too few strong or bounded reads");
    for &(t0, v) in &h.strong {
        let due = acked_before(acks, t0);
        assert!(v >= due, "a strong read saw {v}, but {due} was acknowledged before it began");
    }
    for &(t0, v) in &h.bounded {
        let due = t0.checked_sub(Duration::from_millis(BOUND_MS)).map_or(0, |t| acked_before(acks, t));
        assert!(
            v >= due,
            "a bounded ({BOUND_MS} ms) read saw {v}, but {due} was acknowledged more than the bound before it"
        );
    }
    assert!(h.session.len() > 5, "too few session reads");
    for &(own, v, previous) in &h.session {
        assert!(v >= own, "read-your-writes: the session wrote {own} and read {v}");
        assert!(v >= previous, "monotonic reads: the session read {previous}, then {v}");
    }
    assert!(h.prefix.len() > 5, "too few prefix reads");
    for &(b, a) in &h.prefix {
        assert!(a >= b, "consistent prefix: b = {b} was visible before a = {b} (a read {a})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_level_holds_across_regions_through_a_partition_and_a_leader_kill() {
    let (mut cluster, net, leader) = two_regions("semi_sync").await;
    let addrs: Vec<_> = cluster.nodes.iter().map(|n| n.client).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acks: Acks = Arc::default();
    writer(addrs.clone(), cluster.admin.clone(), stop.clone(), acks.clone());

    let history = Arc::new(Mutex::new(History::default()));
    let readers =
        spawn_readers(cluster.nodes[EU].client, addrs.clone(), cluster.admin.clone(), &stop, &history);

    // Faults: eu-west cut off for 2 s, then the leader killed and brought back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    net.split(&[EU], Fault::Blackhole);
    tokio::time::sleep(Duration::from_secs(2)).await;
    regional_delays(&net);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.kill(leader);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    tokio::task::block_in_place(|| cluster.restart(leader));
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    readers.await.unwrap();

    let acks = acks.lock().unwrap().clone();
    check(&history.lock().unwrap(), &acks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_replication_lag_across_regions_beside_the_lag_inside_one() {
    let (cluster, _net, leader) = two_regions("async").await;
    let client = cluster.client(leader).await;
    let near = (0..3).find(|&i| i != leader && i != EU).unwrap();
    let (near_id, eu_id) = (cluster.nodes[near].id, cluster.nodes[EU].id);
    let stop = Arc::new(AtomicBool::new(false));
    // 200 writes/s, paced.
    let writes = {
        let stop = stop.clone();
        let client = cluster.client(leader).await;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                i += 1;
                let _ = client.put("lag", &format!("k{}", i % 1000), b"{\"pad\":\"0123456789abcdef\"}").await;
            }
            i
        })
    };
    let (mut near_lag, mut eu_lag) = (Vec::new(), Vec::new());
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    while started.elapsed() < Duration::from_secs(6) {
        let status = client.status().await.unwrap();
        for r in status["status"]["replicas"].as_array().unwrap() {
            let lag = r["lag_ms"].as_u64().unwrap();
            if r["id"] == near_id {
                near_lag.push(lag);
            } else if r["id"] == eu_id {
                eu_lag.push(lag);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let written = writes.await.unwrap();
    let p = |v: &mut Vec<u64>, q: usize| {
        v.sort_unstable();
        v[(q * v.len()).div_ceil(100).clamp(1, v.len()) - 1]
    };
    let (near_p50, near_p99) = (p(&mut near_lag, 50), p(&mut near_lag, 99));
    let (eu_p50, eu_p99) = (p(&mut eu_lag, 50), p(&mut eu_lag, 99));
    eprintln!(
        "ASYNC, {written} writes in 6 s, lag sampled every 20 ms from the leader: inside us-east p50 {near_p50} ms \
         p99 {near_p99} ms ({} samples); across to eu-west (25 ms one way) p50 {eu_p50} ms p99 {eu_p99} ms ({} samples)",
        near_lag.len(),
        eu_lag.len()
    );
    // The spec's bound; the aim is under 80 ms.
    assert!(eu_p99 <= 200, "cross-region lag p99 {eu_p99} ms is above 200 ms");
}
