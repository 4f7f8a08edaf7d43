//! `themis-node demo`: a local 3-node cluster as separate processes (this binary, run
//! again with `--config`), certificates in a temporary directory, a write workload,
//! SIGKILL of the leader mid-run, the failover time, and a check that every acknowledged
//! write is readable on the nodes left.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use themis_node::stats::percentile;
use themis_node::{Client, Consistency, LocalCluster};

type Acked = Arc<Mutex<Vec<(String, u64, Instant, Instant)>>>;

struct Procs(Vec<Option<Child>>);

impl Drop for Procs {
    fn drop(&mut self) {
        for child in self.0.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs the demo for `secs` seconds of writes; returns an error message on failure.
pub(crate) fn run(secs: f64) -> Result<(), String> {
    let err = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
    let dir = tempfile_dir()?;
    let cluster = LocalCluster::write(&dir, "demo", 3, 0, "semi_sync")?;
    let ca = cluster.ca_pem.clone();
    let exe = std::env::current_exe().map_err(|e| err("this program's path", &e))?;
    println!("themis demo: certificates and data in {}", dir.display());
    let mut procs = Procs(Vec::new());
    let mut client_addrs = Vec::new();
    for node in &cluster.nodes {
        let (id, config) = (node.id, &node.config);
        let mut child = Command::new(&exe)
            .arg("--config")
            .arg(config)
            .env("THEMIS_LOG", "error")
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| err("start a node", &e))?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            BufReader::new(out).read_line(&mut line).map_err(|e| err("node output", &e))?;
        }
        if !line.contains("listening") {
            return Err(format!("node {id} did not start"));
        }
        println!("  node {id}: pid {}, raft {}, clients {}", child.id(), node.raft, node.client);
        procs.0.push(Some(child));
        client_addrs.push(node.client);
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| err("runtime", &e))?;
    let result = runtime.block_on(workload(&mut procs, &client_addrs, &ca, secs));
    drop(procs);
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn tempfile_dir() -> Result<std::path::PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("themis-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

async fn leader(addrs: &[SocketAddr], alive: &[bool], ca: &str) -> Option<usize> {
    for _ in 0..100 {
        for (i, addr) in addrs.iter().enumerate() {
            if !alive[i] {
                continue;
            }
            if let Ok(c) = Client::connect(*addr, Some(ca)).await
                && let Ok(s) = c.status().await
                && s["status"]["role"] == "Leader"
            {
                return Some(i);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

async fn workload(procs: &mut Procs, addrs: &[SocketAddr], ca: &str, secs: f64) -> Result<(), String> {
    let mut alive = vec![true; 3];
    let first = leader(addrs, &alive, ca).await.ok_or("no leader was elected")?;
    println!("  node {} leads; writing with 32 clients for {secs:.0} s (SEMI_SYNC, fsync on)", first + 1);
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..32 {
        let (stop, acked, ca) = (stop.clone(), acked.clone(), ca.to_string());
        let mut order = addrs.to_vec();
        order.rotate_left(w % 3);
        tasks.push(tokio::spawn(async move {
            let Ok(client) = Client::connect_any(&order, Some(&ca)).await else { return };
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w{w}-{n}");
                let value = format!(r#"{{"writer":{w},"n":{n}}}"#);
                let sent = Instant::now();
                if let Ok(token) = client.put("demo", &key, value.as_bytes()).await {
                    acked.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((
                        key,
                        token,
                        sent,
                        Instant::now(),
                    ));
                }
                n += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs / 2.0)).await;
    let killed_at = Instant::now();
    if let Some(mut child) = procs.0[first].take() {
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
    }
    alive[first] = false;
    println!("  SIGKILL node {} (the leader)", first + 1);
    tokio::time::sleep(Duration::from_secs_f64(secs / 2.0)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let failover = acked.iter().filter(|a| a.2 > killed_at).map(|a| a.3).min().map(|t| t - killed_at);
    let next = leader(addrs, &alive, ca).await;
    match (failover, next) {
        (Some(f), Some(n)) => {
            println!("  node {} took over: first write acknowledged {f:?} after the kill", n + 1);
        }
        _ => return Err("no write was acknowledged after the leader was killed".into()),
    }
    let mut latencies: Vec<Duration> = acked.iter().map(|a| a.3 - a.2).collect();
    latencies.sort_unstable();
    println!(
        "  {} writes acknowledged, {:.0}/s; latency p50 {:?} p99 {:?} p999 {:?}",
        acked.len(),
        acked.len() as f64 / secs,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999)
    );
    let top = acked.iter().map(|a| a.1).max().unwrap_or(0);
    for (i, addr) in addrs.iter().enumerate().filter(|(i, _)| alive[*i]) {
        let client = Client::connect(*addr, Some(ca)).await.map_err(|e| e.to_string())?;
        let started = Instant::now();
        client.get("demo", "-", Consistency::Session(top)).await.map_err(|e| e.to_string())?;
        let lag = started.elapsed();
        let mut missing = 0;
        for (key, ..) in &acked {
            if client.get("demo", key, Consistency::Eventual).await.map_err(|e| e.to_string())?.is_none() {
                missing += 1;
            }
        }
        if missing > 0 {
            return Err(format!("node {} is missing {missing} acknowledged writes", i + 1));
        }
        println!(
            "  node {}: caught up to LSN {top} within {lag:?}; all {} acknowledged writes readable",
            i + 1,
            acked.len()
        );
    }
    println!("verified: zero acknowledged writes lost across the failover");
    Ok(())
}
