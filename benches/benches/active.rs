//! Active-active, measured with its baselines in the same run.
//!
//! Phase 1, the store (one thread): writes from another cluster applied in batches of
//! 512 as a link applies them, (a) concurrent with the version held, so each is a
//! last-writer-wins conflict settled and recorded, beside (b) causally later ones that
//! apply without a conflict and (c) this cluster's own writes: conflicts resolved per
//! second against the same apply without conflicts.
//!
//! Phase 2, two 3-node clusters (`us-west`, `us-east`: six node runtimes in this process
//! sharing the two cores), linked both ways over TLS. An open loop writes on `us-west` at
//! the offered rate (one-way: the baseline) and then on both sides at half the rate each
//! to overlapping keys (conflicts). Cross-cluster lag per change: the receiving cluster's
//! commit time of the applied write less the write's time at its origin (HLC
//! milliseconds; one machine, one clock), read from the receiver's change stream.
//!
//! `cargo bench -p themis-benches --bench active` (`THEMIS_BENCH_SECS`, default 5;
//! `THEMIS_BENCH_RATE`, default 10000). Under `cargo bench -- --test` it runs briefly.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use themis_node::active::Active;
use themis_node::admin_client::AdminClient;
use themis_node::auth::{Role, hs256_token};
use themis_node::stats::percentile;
use themis_node::store::DocStore;
use themis_node::{ChangeFeed, Client, Credentials, LocalCluster, Node, NodeConfig};
use themis_replication::clock::{NodeId, Timestamp};
use themis_replication::crdt::{AuditLog, ConflictResolver, Strategy};
use themis_replication::ship::StateMachine;
use themis_replication::wal::op::{Op, OpKind, Stamp};

const BATCH: usize = 512;
const KEYS: usize = 4096;
const CLIENTS: usize = 64;

fn store() -> DocStore {
    DocStore::with_active(Active::new(
        "us-west".into(),
        ConflictResolver::new(Strategy::LastWriterWins, AuditLog::new(10_000, None)),
    ))
}

fn op(key: usize, cluster: &str, lsn: u64, ms: u64, seen: u64) -> Op {
    Op {
        origin: NodeId(1),
        txn: 0,
        kind: OpKind::Upsert {
            collection: "c".into(),
            key: Bytes::from(format!("k{key}")),
            value: Bytes::from(format!(r#"{{"key":{key},"from":"{cluster}","lsn":{lsn}}}"#)),
        },
        stamp: Some(Stamp {
            cluster: cluster.into(),
            lsn,
            hlc: Timestamp::from_parts(ms, 0, NodeId(1)).expect("a time"),
            seen: vec![("us-west".into(), seen)],
        }),
    }
}

/// Applies `rounds` batches to a store whose every key holds a local version written at
/// local LSN `key + 1`; `make(key, round)` builds each op. Returns ops per second.
fn apply_rate(rounds: usize, make: impl Fn(usize, usize) -> Op) -> (f64, u64) {
    let s = store();
    let local: Vec<Op> = (0..KEYS).map(|k| op(k, "us-west", 0, 1_000, 0)).collect();
    for (k, o) in local.iter().enumerate() {
        s.apply(k as u64 + 1, std::slice::from_ref(o)).expect("apply");
    }
    let batches: Vec<Vec<Op>> =
        (0..rounds).map(|r| (0..BATCH).map(|i| make((r * BATCH + i) % KEYS, r)).collect()).collect();
    let started = Instant::now();
    for (r, batch) in batches.iter().enumerate() {
        s.apply(KEYS as u64 + 1 + r as u64, batch).expect("apply");
    }
    ((rounds * BATCH) as f64 / started.elapsed().as_secs_f64(), s.conflicts())
}

fn phase_store(quick: bool) {
    let rounds = if quick { 4 } else { 200 };
    // Each round's writes are later than the last on their origin (LSN and HLC rise).
    let lsn = |key: usize, round: usize| (round * KEYS + key) as u64 + 1;
    // Conflicting: each round from another cluster that had seen none of the others, so
    // every write is concurrent with the version held.
    let (conflicting, n) = apply_rate(rounds, |k, r| op(k, &format!("c{r}"), lsn(k, r), 2_000 + r as u64, 0));
    let (clean, clean_n) = apply_rate(rounds, |k, r| op(k, "us-east", lsn(k, r), 2_000 + r as u64, u64::MAX));
    let (local, _) = apply_rate(rounds, |k, _| op(k, "us-west", 0, 3_000, 0));
    println!(
        "active/conflicts: {conflicting:.0} conflicting remote writes applied/s ({n} settled last-writer-wins and \
         recorded); baseline without conflicts {clean:.0}/s ({clean_n} conflicts), local writes {local:.0}/s; \
         conflicting / clean = {:.2}",
        conflicting / clean
    );
}

async fn start(dir: &std::path::Path, name: &str) -> (Vec<Node>, LocalCluster) {
    let layout = LocalCluster::write(dir, name, 3, 0, "semi_sync").expect("cluster files");
    let mut nodes = Vec::new();
    for node in &layout.nodes {
        let text = std::fs::read_to_string(&node.config).expect("config");
        std::fs::write(&node.config, format!("{text}\n[active_active]\nenabled = true\n")).expect("config");
        let config = NodeConfig::load(&node.config).expect("bench config");
        nodes.push(Node::start(&config).await.expect("node starts"));
    }
    (nodes, layout)
}

fn admin_addrs(nodes: &[Node]) -> Vec<std::net::SocketAddr> {
    nodes.iter().filter_map(|n| n.admin_addr).collect()
}

/// Links `local` to `remote` (the remote's CA and a read token of its own in `dir`).
async fn link(
    local: (&[Node], &LocalCluster),
    remote: (&[Node], &LocalCluster, &str),
    dir: &std::path::Path,
) {
    let (remote_nodes, remote_layout, remote_name) = remote;
    let ca = dir.join(format!("{remote_name}-ca.pem"));
    std::fs::write(&ca, &remote_layout.ca_pem).expect("ca");
    let secret = std::fs::read(&remote_layout.jwt_secret_file).expect("secret");
    let token = dir.join(format!("{remote_name}.token"));
    std::fs::write(&token, hs256_token(&secret, "bench", Role::Read, 3600).expect("token")).expect("token");
    let body = serde_json::json!({
        "name": format!("from-{remote_name}"),
        "remote_cluster": remote_name,
        "addrs": admin_addrs(remote_nodes).iter().map(ToString::to_string).collect::<Vec<_>>(),
        "ca_file": ca,
        "token_file": token,
    });
    let mut admin = AdminClient::new(admin_addrs(local.0), local.1.admin.clone());
    let answer = admin.request("POST", "/v1/links", Some(&body)).await.expect("link");
    assert!(answer.ok(), "link: {}", answer.message());
}

/// Open loop: `CLIENTS / sides.len()` writers per side, `rate` writes/s in all, each write
/// to key `k<n mod keys>` of `shared`, for `secs`. Returns writes acknowledged.
async fn open_loop(sides: &[(&[Node], &Credentials, &'static str)], rate: f64, secs: f64) -> u64 {
    let per_client = rate / CLIENTS as f64;
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (nodes, creds, side) = sides[c % sides.len()];
        let addrs: Vec<_> = nodes.iter().map(|n| n.client_addr).collect();
        let client = Client::connect_any(&addrs, creds).await.expect("connect");
        tasks.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / per_client));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut done = 0u64;
            let mut n = c as u64;
            while Instant::now() < deadline {
                ticker.tick().await;
                let value = format!(r#"{{"side":"{side}","n":{n}}}"#);
                // Keys mixed so both sides' writers hit the same ones.
                let key = (n.wrapping_mul(2_654_435_761) >> 7) % 1000;
                if client.put("shared", &format!("k{key}"), value.as_bytes()).await.is_ok() {
                    done += 1;
                }
                n += CLIENTS as u64;
            }
            done
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("writer");
    }
    total
}

/// Lags of the writes from `origin` that `receiver` applied, read from its change stream
/// from `from_lsn` until `secs` pass with the stream quiet for 500 ms at the end.
async fn lags(
    receiver: &[Node],
    creds: &Credentials,
    origin: &str,
    from_lsn: u64,
    until: Instant,
) -> Vec<Duration> {
    let mut feed = ChangeFeed::new(admin_addrs(receiver), creds.clone(), "shared", "", Some(from_lsn));
    let mut out = Vec::new();
    loop {
        let Ok(Ok(event)) = tokio::time::timeout(Duration::from_millis(500), feed.next()).await else {
            if Instant::now() >= until {
                return out;
            }
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&event.data) else { continue };
        if v["stamp"]["cluster"] != origin {
            continue;
        }
        let written =
            v["stamp"]["hlc"].as_str().and_then(|t| t.parse::<Timestamp>().ok()).map(Timestamp::physical_ms);
        if let (Some(written), Some(applied)) = (written, v["source"]["ts_ms"].as_u64()) {
            out.push(Duration::from_millis(applied.saturating_sub(written)));
        }
    }
}

fn last_lsn(nodes: &[Node]) -> u64 {
    nodes.iter().map(|n| n.manager.status().commit_lsn).max().unwrap_or(0)
}

async fn phase_clusters(secs: f64, rate: f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (west, west_layout) = start(&dir.path().join("west"), "us-west").await;
    let (east, east_layout) = start(&dir.path().join("east"), "us-east").await;
    link((&west, &west_layout), (&east, &east_layout, "us-east"), dir.path()).await;
    link((&east, &east_layout), (&west, &west_layout, "us-west"), dir.path()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // One-way: only us-west writes.
    let from = last_lsn(&east);
    let creds = east_layout.admin.clone();
    let until = Instant::now() + Duration::from_secs_f64(secs) + Duration::from_secs(2);
    let lag_task = lags(&east, &creds, "us-west", from, until);
    let west_only = [(&west[..], &west_layout.admin, "west")];
    let (written, mut one_way) = tokio::join!(open_loop(&west_only, rate, secs), lag_task);
    one_way.sort_unstable();
    println!(
        "active/lag_one_way: offered {rate:.0} writes/s on us-west, acknowledged {:.0}/s; cross-cluster lag \
         (origin write to applied on us-east) over {} writes: p50 {:?} p99 {:?} max {:?}",
        written as f64 / secs,
        one_way.len(),
        percentile(&one_way, 0.50),
        percentile(&one_way, 0.99),
        one_way.last().copied().unwrap_or_default(),
    );

    // Both ways, overlapping keys: conflicts.
    let conflicts_before: u64 = east[0].store.conflicts() + west[0].store.conflicts();
    let from = last_lsn(&east);
    let until = Instant::now() + Duration::from_secs_f64(secs) + Duration::from_secs(2);
    let lag_task = lags(&east, &east_layout.admin, "us-west", from, until);
    let started = Instant::now();
    let sides = [(&west[..], &west_layout.admin, "west"), (&east[..], &east_layout.admin, "east")];
    let (written, mut both) = tokio::join!(open_loop(&sides, rate, secs), lag_task);
    let conflicts = east[0].store.conflicts() + west[0].store.conflicts() - conflicts_before;
    both.sort_unstable();
    println!(
        "active/lag_both_ways: offered {rate:.0} writes/s split over both clusters to 1000 shared keys, \
         acknowledged {:.0}/s; lag p50 {:?} p99 {:?} (one-way p99 {:?}); {conflicts} conflicts settled, {:.0}/s",
        written as f64 / secs,
        percentile(&both, 0.50),
        percentile(&both, 0.99),
        percentile(&one_way, 0.99),
        conflicts as f64 / started.elapsed().as_secs_f64(),
    );
    let mut statuses = BTreeMap::new();
    for (name, nodes) in [("us-west", &west), ("us-east", &east)] {
        statuses.insert(name, nodes.iter().map(|n| n.manager.status().commit_lsn).max());
    }
    println!("active/commit_lsns: {statuses:?}");
    for node in west.into_iter().chain(east) {
        let _ = node.shutdown().await;
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test");
    let secs = themis_benches::bench_secs(0.5, 5.0);
    let rate: f64 = std::env::var("THEMIS_BENCH_RATE").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000.0);
    phase_store(quick);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(phase_clusters(secs, rate));
}
