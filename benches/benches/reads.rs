//! Follower reads scale-out (issue #25): read throughput with 1, 2 and 4 read replicas
//! (learners) beside leader-only reads, in the same run. Three voters and four learners
//! run as `themis-node` runtimes in this process, sharing its cores, each with its own WAL;
//! 32 closed-loop readers read 256-byte documents at EVENTUAL through a `ReadRouter`
//! (round-robin) over the replicas of each configuration, or through the leader alone.
//!
//! On one machine every replica shares the same cores, so the ceiling is the CPU, not the
//! leader: the bench prints the CPU used per wall second beside each figure, and the reads
//! per CPU second, which is what more replicas on more machines would multiply.
//!
//! `cargo bench -p themis-benches --bench reads` (`THEMIS_BENCH_SECS`, default 3 per
//! configuration). Under `cargo bench -- --test` it runs for a quarter of a second each.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use themis_node::router::{ReadRouter, RouterConfig};
use themis_node::{Client, Consistency, LocalCluster, Node, NodeConfig, Request};
use themis_replication::geo::Strategy;

const READERS: usize = 32;
const DOCS: u64 = 1_000;

/// CPU seconds this process has used.
fn cpu_secs() -> f64 {
    themis_benches::process_cpu_secs()
}

/// Reads per second through `router` for `secs`, and the CPU seconds used per wall second.
async fn read_rate(router: Arc<ReadRouter>, secs: f64) -> (f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let (cpu0, started) = (cpu_secs(), Instant::now());
    let tasks: Vec<_> = (0..READERS)
        .map(|r| {
            let (router, stop, done) = (router.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = r as u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("d{}", i % DOCS);
                    if router.get("reads", &key, Consistency::Eventual).await.is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 7;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let wall = started.elapsed().as_secs_f64();
    (done.load(Ordering::Relaxed) as f64 / wall, (cpu_secs() - cpu0) / wall)
}

fn main() {
    let secs = themis_benches::bench_secs(0.25, 3.0);
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let layout = LocalCluster::write(dir.path(), "reads", 3, 4, "semi_sync").expect("cluster files");
        let mut nodes: Vec<Node> = Vec::new();
        for node in layout.nodes.iter().filter(|n| !n.join) {
            nodes.push(Node::start(&NodeConfig::load(&node.config).expect("config")).await.expect("node starts"));
        }
        let addrs: Vec<_> = nodes.iter().map(|n| n.client_addr).collect();
        let client = Client::connect_any(&addrs, &layout.admin).await.expect("connect");
        for i in 0..DOCS {
            client.put("reads", &format!("d{i}"), &themis_node::stats::document(0, i, 256)).await.expect("write");
        }
        let leader = loop {
            if let Some(n) = nodes.iter().find(|n| n.manager.status().role == "Leader") {
                break n.client_addr;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        // The read replicas: learners that join and catch up.
        let mut replicas = Vec::new();
        for node in layout.nodes.iter().filter(|n| n.join) {
            let started = Node::start(&NodeConfig::load(&node.config).expect("config")).await.expect("learner starts");
            let add = Request::AddLearner {
                id: node.id,
                raft_addr: node.raft.to_string(),
                client_addr: started.client_addr.to_string(),
            };
            client.admin(add).await.expect("add learner");
            let learner = Client::connect(started.client_addr, &layout.admin).await.expect("connect learner");
            let caught_up = Request::Get {
                collection: "reads".into(),
                id: "d0".into(),
                consistency: Consistency::Session(client.session_token()),
            };
            let deadline = Instant::now() + Duration::from_mins(1);
            while !matches!(learner.call(caught_up.clone()).await, Ok(themis_node::Response::Value { .. })) {
                assert!(Instant::now() < deadline, "learner {} did not catch up", node.id);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            replicas.push(started.client_addr);
            nodes.push(started);
        }
        let mut figures = Vec::new();
        for (name, targets) in [
            ("leader only", vec![leader]),
            ("1 read replica", replicas[..1].to_vec()),
            ("2 read replicas", replicas[..2].to_vec()),
            ("4 read replicas", replicas[..4].to_vec()),
        ] {
            let mut config = RouterConfig::new(Strategy::RoundRobin);
            config.pool_size = 4;
            let router = Arc::new(ReadRouter::connect(&targets, &layout.admin, config).await.expect("router"));
            let (rate, cores) = read_rate(router, secs).await;
            figures.push((name, rate, cores));
        }
        let base = figures[0].1.max(1.0);
        println!("reads/follower_scaling: {READERS} closed-loop readers, EVENTUAL, 256-byte documents, {secs} s each");
        for (name, rate, cores) in &figures {
            println!(
                "  {name:<16} {rate:>9.0} reads/s  x{:.2} of leader-only  {cores:.2} cores busy  {:.0} reads per CPU second",
                rate / base,
                rate / cores.max(0.01)
            );
        }
        for node in nodes {
            let _ = node.shutdown().await;
        }
    });
}
