//! Jepsen-style: a 3- and a 5-node cluster of real `themis-node` processes whose peer links
//! all pass through fault-injecting proxies (one per directed pair), clients doing strong
//! reads and writes on a few keys, and a nemesis that SIGKILLs, SIGSTOPs, partitions
//! (both ways, one way, a minority-side leader), delays, pauses and cuts links. Then the
//! client history must be linearizable (writes whose outcome is unknown may or may not
//! have happened) and every node must end with the same documents.
//!
//! Budget per cluster size: 6 s of faults under a plain `cargo test`, 20 s under
//! `cargo xtask ci` (`THEMIS_TEST_BUDGET=ci`), 120 s under `--full`. The nemesis schedule
//! and the clients' choices come from one seed, printed at the start;
//! `THEMIS_JEPSEN_SEED=S` runs them again (timing, and so the interleaving, still varies).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, Net};
use themis_node::{Client, Consistency, Credentials};
use themis_testkit::linearizability::{Op, OpKind, check};
use themis_testkit::proxy::Fault;

const KEYS: u64 = 3;
const CLIENTS: u64 = 4;
const OP_TIMEOUT: Duration = Duration::from_secs(3);

fn budget() -> Duration {
    Duration::from_secs(match std::env::var("THEMIS_TEST_BUDGET").as_deref() {
        Ok("ci") => 20,
        Ok("full") => 120,
        _ => 6,
    })
}

fn seed(nodes: usize) -> u64 {
    let seed = std::env::var("THEMIS_JEPSEN_SEED").map_or_else(
        |_| {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new().build_hasher().finish() % 1_000_000_000
        },
        |s| s.parse().expect("THEMIS_JEPSEN_SEED is a number"),
    );
    eprintln!("jepsen, {nodes} nodes: seed {seed} (THEMIS_JEPSEN_SEED={seed} replays the schedule)");
    seed
}

fn value(doc: &[u8]) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(doc).expect("a JSON document");
    v["v"].as_u64().expect("a value")
}

#[derive(Default)]
struct Tally {
    writes_ok: AtomicU64,
    writes_unknown: AtomicU64,
    reads_ok: AtomicU64,
    reads_failed: AtomicU64,
}

/// What the clients share: the clock, the next unique value, the history and the tally.
struct Shared {
    epoch: Instant,
    next_value: AtomicU64,
    history: Mutex<Vec<Op>>,
    tally: Tally,
    stop: AtomicBool,
}

/// One client: strong reads and unique writes on the keys until `stop`.
async fn client(addrs: Vec<std::net::SocketAddr>, credentials: Credentials, seed: u64, shared: Arc<Shared>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut conn: Option<Client> = None;
    while !shared.stop.load(Ordering::Relaxed) {
        let Some(c) = conn.as_ref() else {
            match tokio::time::timeout(OP_TIMEOUT, Client::connect_any(&addrs, &credentials)).await {
                Ok(Ok(c)) => conn = Some(c),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            continue;
        };
        let key = rng.u64(0..KEYS);
        let keep = if rng.bool() { write(c, key, &shared).await } else { read(c, key, &shared).await };
        if !keep {
            conn = None;
        }
    }
}

fn micros(shared: &Shared) -> u64 {
    u64::try_from(shared.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Writes a unique value to `key`; an unanswered write goes into the history as of
/// unknown outcome. Returns whether the connection is worth keeping.
async fn write(c: &Client, key: u64, shared: &Shared) -> bool {
    let v = shared.next_value.fetch_add(1, Ordering::Relaxed);
    let doc = format!(r#"{{"v":{v}}}"#);
    let invoke = micros(shared);
    let done = tokio::time::timeout(OP_TIMEOUT, c.put("jepsen", &format!("k{key}"), doc.as_bytes())).await;
    let ret = matches!(done, Ok(Ok(_))).then(|| micros(shared));
    let counter = if ret.is_some() { &shared.tally.writes_ok } else { &shared.tally.writes_unknown };
    counter.fetch_add(1, Ordering::Relaxed);
    shared.history.lock().unwrap().push(Op { key, kind: OpKind::Write(v), invoke, ret });
    ret.is_some()
}

/// A strong read of `key`; a failed one constrains nothing and is left out.
async fn read(c: &Client, key: u64, shared: &Shared) -> bool {
    let invoke = micros(shared);
    let got =
        tokio::time::timeout(OP_TIMEOUT, c.get("jepsen", &format!("k{key}"), Consistency::Strong)).await;
    let Ok(Ok(doc)) = got else {
        shared.tally.reads_failed.fetch_add(1, Ordering::Relaxed);
        return false;
    };
    let ret = Some(micros(shared));
    shared.tally.reads_ok.fetch_add(1, Ordering::Relaxed);
    let read = doc.as_deref().map(value);
    shared.history.lock().unwrap().push(Op { key, kind: OpKind::Read(read), invoke, ret });
    true
}

/// Runs the nemesis for the budget, then heals everything; returns the faults injected.
async fn nemesis(cluster: &mut Cluster, net: &Net, rng: &mut fastrand::Rng) -> BTreeMap<&'static str, u64> {
    let n = cluster.nodes.len();
    let mut stopped = vec![false; n];
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let deadline = Instant::now() + budget();
    let pause = |rng: &mut fastrand::Rng, lo: u64, hi: u64| Duration::from_millis(rng.u64(lo..hi));
    while Instant::now() < deadline {
        let lead = cluster.leader_among(&stopped).await;
        let target = match lead {
            Some(l) if rng.bool() => l,
            _ => rng.usize(0..n),
        };
        let kind = rng.u8(0..8);
        let name = match kind {
            0 => {
                tokio::task::block_in_place(|| cluster.kill(target));
                tokio::time::sleep(pause(rng, 500, 2000)).await;
                tokio::task::block_in_place(|| cluster.restart(target));
                "sigkill"
            }
            1 => {
                cluster.signal(target, nix::sys::signal::Signal::SIGSTOP);
                stopped[target] = true;
                tokio::time::sleep(pause(rng, 800, 2000)).await;
                cluster.signal(target, nix::sys::signal::Signal::SIGCONT);
                stopped[target] = false;
                "sigstop"
            }
            2 => {
                // The leader (or a node) alone: a minority-side leader keeps its office
                // until check-quorum steps it down, while the majority elects another.
                net.split(&[target], Fault::Blackhole);
                tokio::time::sleep(pause(rng, 1000, 3000)).await;
                net.all(Fault::Pass);
                "partition"
            }
            3 => {
                // One way: the node hears everyone, nobody hears it.
                net.set_from(target, Fault::Blackhole);
                tokio::time::sleep(pause(rng, 1000, 3000)).await;
                net.all(Fault::Pass);
                "one-way partition"
            }
            4 => {
                // The other way: everyone hears it, it hears nobody.
                net.set_to(target, Fault::Blackhole);
                tokio::time::sleep(pause(rng, 1000, 3000)).await;
                net.all(Fault::Pass);
                "one-way partition (inbound)"
            }
            5 => {
                // A majority/minority split through the cluster (two nodes of five).
                let mut group = vec![target];
                if n >= 5 {
                    group.push((target + 1 + rng.usize(0..n - 1)) % n);
                }
                net.split(&group, Fault::Blackhole);
                tokio::time::sleep(pause(rng, 1000, 3000)).await;
                net.all(Fault::Pass);
                "minority split"
            }
            6 => {
                net.all(Fault::Delay(pause(rng, 20, 120)));
                tokio::time::sleep(pause(rng, 1000, 2500)).await;
                net.all(Fault::Pass);
                "delay"
            }
            _ => {
                if rng.bool() {
                    net.set_to(target, Fault::Pause);
                    tokio::time::sleep(pause(rng, 300, 1500)).await;
                    net.all(Fault::Pass);
                    "paused link"
                } else {
                    net.cut(target);
                    "cut connections"
                }
            }
        };
        *faults.entry(name).or_default() += 1;
        tokio::time::sleep(pause(rng, 300, 1000)).await;
    }
    net.all(Fault::Pass);
    faults
}

async fn run(n: u64) {
    let seed = seed(n as usize);
    let (mut cluster, net) = common::start_proxied(n, |text| text).await;
    let _ = cluster.leader().await;
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        next_value: AtomicU64::new(1),
        history: Mutex::new(Vec::new()),
        tally: Tally::default(),
        stop: AtomicBool::new(false),
    });
    let addrs: Vec<_> = cluster.nodes.iter().map(|node| node.client).collect();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            tokio::spawn(client(
                addrs.clone(),
                cluster.admin.clone(),
                seed ^ (c + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                shared.clone(),
            ))
        })
        .collect();
    let mut rng = fastrand::Rng::with_seed(seed);
    let faults = nemesis(&mut cluster, &net, &mut rng).await;
    // A little quiet traffic after the last fault, then stop the clients.
    tokio::time::sleep(Duration::from_secs(2)).await;
    shared.stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let history = shared.history.lock().unwrap().clone();

    // Every node ends with the same documents: a last write, read at its session token on
    // every node, then each key read locally everywhere.
    // Leadership may still move as the last faults settle: retry until a write sticks.
    let mut token = None;
    for _ in 0..20 {
        let _ = cluster.leader().await;
        if let Ok(writer) = Client::connect_any(&addrs, &cluster.admin).await
            && writer.put("jepsen", "final", b"{\"v\":0}").await.is_ok()
        {
            token = writer.session_token();
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let token = token.unwrap_or_else(|| panic!("seed {seed}: no write succeeded after the faults healed"));
    let mut states = Vec::new();
    eprintln!("faults injected: {faults:?}");
    for node in &cluster.nodes {
        let c = Client::connect(node.client, &cluster.admin).await.unwrap();
        // A node restarted by the last fault may still be catching up: 30 s at most.
        let caught_up =
            common::read_local(&c, "jepsen", "final", Some(token.clone()), Duration::from_secs(30))
                .await
                .is_some();
        if !caught_up {
            for n in &cluster.nodes {
                let c = Client::connect(n.client, &cluster.admin).await.unwrap();
                eprintln!("node {}: {}", n.id, c.status().await.unwrap()["status"]);
            }
            panic!("seed {seed}: node {} did not apply LSN {token} within 30 s", node.id);
        }
        let mut docs = Vec::new();
        for key in 0..KEYS {
            docs.push(
                c.get("jepsen", &format!("k{key}"), Consistency::Eventual).await.unwrap().map(|d| value(&d)),
            );
        }
        states.push(docs);
    }
    let t = &shared.tally;
    let (ok_w, unknown_w, ok_r, failed_r) = (
        t.writes_ok.load(Ordering::Relaxed),
        t.writes_unknown.load(Ordering::Relaxed),
        t.reads_ok.load(Ordering::Relaxed),
        t.reads_failed.load(Ordering::Relaxed),
    );
    let injected: u64 = faults.values().sum();
    eprintln!(
        "jepsen, {n} nodes, seed {seed}: {} operations ({ok_w} writes acknowledged, {unknown_w} of unknown outcome, \
         {ok_r} strong reads, {failed_r} reads failed), {injected} faults {faults:?}; final state {:?}",
        history.len(),
        states[0]
    );
    assert!(states.iter().all(|s| *s == states[0]), "seed {seed}: the nodes differ: {states:?}");
    if let Err(violation) = check(&history) {
        panic!("seed {seed}: {violation}");
    }
    assert!(ok_w >= 10 && ok_r >= 10, "seed {seed}: too few operations completed to mean anything");
    assert!(injected >= 2, "seed {seed}: too few faults injected");
    // Every last value is one a client wrote (or none).
    let written: std::collections::HashSet<u64> = history
        .iter()
        .filter_map(|op| match op.kind {
            OpKind::Write(v) => Some(v),
            OpKind::Read(_) => None,
        })
        .collect();
    assert!(states[0].iter().flatten().all(|v| written.contains(v)), "seed {seed}: {:?}", states[0]);
}

/// The two sizes one after the other: run side by side, eight processes on the test
/// machine's two cores would measure the machine more than the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_and_five_nodes_under_kills_stops_and_partitions_stay_linearizable() {
    run(3).await;
    run(5).await;
}
