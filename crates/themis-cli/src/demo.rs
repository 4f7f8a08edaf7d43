//! `themis demo`: certificates in a temporary directory, a local cluster as separate
//! processes, a write workload with a progress bar, SIGKILL of the leader mid-run, the
//! failover time, a check that every acknowledged write is readable on every node left,
//! and the throughput, latency, lag and compression figures.

use std::cell::Cell;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use themis_node::{Client, Consistency};

use crate::cluster::{self, Procs};
use crate::workload::{self, Spec};

/// The demo's settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Seconds of writes (the leader dies halfway).
    pub seconds: f64,
    /// Cluster size (3 to 9).
    pub nodes: u64,
    /// `sync`, `semi_sync` or `async`.
    pub mode: String,
    /// Concurrent writers.
    pub clients: usize,
    /// Leave the cluster running afterwards (the killed node restarted) in this directory.
    pub keep: Option<PathBuf>,
}

/// Runs the demo, printing as it goes; the error says what failed.
pub fn run(exe: &std::path::Path, options: &DemoOptions) -> Result<(), String> {
    if options.nodes < 3 {
        return Err(format!("--nodes {}: the demo kills a node, so it needs at least 3", options.nodes));
    }
    let (dir, temporary) = match &options.keep {
        Some(dir) => (dir.clone(), false),
        None => (std::env::temp_dir().join(format!("themis-demo-{}", std::process::id())), true),
    };
    println!("themis demo: certificates, configurations and data in {}", dir.display());
    let (file, children) = cluster::start(exe, &dir, options.nodes, &options.mode, true)?;
    let mut procs = Procs(children.into_iter().map(Some).collect());
    for node in &file.nodes {
        println!(
            "  node {}: pid {}, raft {}, clients {}, admin https://{}",
            node.id, node.pid, node.raft, node.client, node.admin
        );
    }
    let credentials = file.credentials()?;
    let addrs: Vec<_> = file.nodes.iter().map(|n| n.client).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let result = runtime.block_on(async {
        let mut clients = connect_all(&addrs, &credentials).await;
        let first = wait_for_leader(&clients, Duration::from_secs(15))
            .await
            .ok_or("no leader was elected within 15 s")?;
        let spec = Spec {
            clients: options.clients,
            conns: options.clients.min(8),
            duration: Duration::from_secs_f64(options.seconds),
            value_bytes: 256,
            collection: "demo".into(),
            rate: None,
        };
        println!(
            "  node {} leads; {} clients write for {:.0} s ({}, fsync on); the leader dies halfway",
            first + 1,
            spec.clients,
            options.seconds,
            options.mode.to_uppercase()
        );
        let killed_at = Cell::new(None);
        let outcome = workload::run(&addrs, &credentials, &spec, || {
            procs.kill(first); // SIGKILL
            killed_at.set(Some(Instant::now()));
            println!("  SIGKILL node {} (the leader)", first + 1);
            Some(first)
        })
        .await;
        let killed_at = killed_at.get().ok_or("the leader was not killed")?;
        clients[first] = None;
        let failover = outcome.acked.iter().filter(|a| a.sent > killed_at).map(|a| a.done).min();
        let (Some(failover), Some((next, status))) = (failover, workload::leader_status(&clients).await)
        else {
            return Err("no write was acknowledged after the leader was killed".to_string());
        };
        let failover = failover - killed_at;
        println!(
            "  node {} took over: the first write after the kill was acknowledged {failover:.0?} after it",
            next + 1
        );
        println!("{}", outcome.report(&spec, workload::compression_ratio(&status)));
        for (i, client) in clients.iter().enumerate() {
            let Some(client) = client else { continue };
            verify(client, &outcome, i + 1).await?;
        }
        println!("verified: zero acknowledged writes lost across the failover");
        Ok::<usize, String>(first)
    });
    let first = match result {
        Ok(first) => first,
        Err(e) => {
            println!("  the cluster's files and logs are kept in {}", dir.display());
            return Err(e);
        }
    };
    if options.keep.is_some() {
        let node = &file.nodes[first];
        let child = cluster::spawn_node(exe, &node.config, &node.log, true)?;
        let mut kept = file.clone();
        kept.nodes[first].pid = child.id();
        kept.save(&dir)?;
        procs.0[first] = Some(child);
        // Hand every process over: they keep running after this program ends.
        drop(std::mem::take(&mut procs.0));
        println!(
            "  node {} restarted; the cluster keeps running. Try `themis status --dir {}`; stop it with `themis cluster down --dir {}`",
            first + 1,
            dir.display(),
            dir.display()
        );
    } else {
        drop(procs);
        if temporary {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    Ok(())
}

async fn wait_for_leader(clients: &[Option<Client>], limit: Duration) -> Option<usize> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Some((i, _)) = workload::leader_status(clients).await {
            return Some(i);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Checks that the node behind `client` holds every acknowledged write.
async fn verify(client: &Client, outcome: &workload::Outcome, node: usize) -> Result<(), String> {
    let acked = &outcome.acked;
    let top = acked.iter().map(|a| a.token).max().unwrap_or(0);
    for token in &outcome.sessions {
        client.set_session_token(token);
    }
    let started = Instant::now();
    // Wait until the node has applied the last acknowledged write: a session read in the
    // writers' session.
    client.get("demo", "-", Consistency::Session(None)).await.map_err(|e| format!("node {node}: {e}"))?;
    let caught_up = started.elapsed();
    let mut missing = 0usize;
    // Many reads in flight on one pipelined connection.
    for chunk in acked.chunks(256) {
        let reads = chunk.iter().map(|a| client.get("demo", &a.key, Consistency::Eventual));
        for read in futures_util::future::join_all(reads).await {
            if read.map_err(|e| format!("node {node}: {e}"))?.is_none() {
                missing += 1;
            }
        }
    }
    if missing > 0 {
        return Err(format!("node {node} is missing {missing} acknowledged writes"));
    }
    println!(
        "  node {node}: caught up to LSN {top} within {caught_up:.0?}; all {} acknowledged writes readable",
        acked.len()
    );
    Ok(())
}

/// A client of each node, `None` for one that does not answer.
async fn connect_all(
    addrs: &[std::net::SocketAddr],
    credentials: &themis_node::Credentials,
) -> Vec<Option<Client>> {
    let mut clients = Vec::new();
    for addr in addrs {
        clients.push(Client::connect(*addr, credentials).await.ok());
    }
    clients
}
