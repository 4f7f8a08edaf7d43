//! Snapshots in chunks between real `themis-node` processes: learners join a store of
//! thousands of 1 KiB chunks, and transfers cut by SIGKILL of the receiver or of the
//! sender complete (the receiver's resumes from its part file).

mod common;

use std::time::Duration;

use common::Cluster;
use themis_node::{Client, Request};

/// Small chunks and frequent snapshots, so a few MB of documents are thousands of chunks.
fn small_chunks(text: &str) -> String {
    text.replace("[replication]\n", "[replication]\nsnapshot_entries = 64\nsnapshot_chunk_bytes = 1024\n")
}

fn doc(i: usize) -> Vec<u8> {
    format!(r#"{{"n":{i},"pad":"{}"}}"#, "x".repeat(1000)).into_bytes()
}

/// Writes `n` documents through the leader, pipelined; returns the last session token.
async fn fill(client: &std::sync::Arc<Client>, n: usize) -> u64 {
    let writes: Vec<_> = (0..n)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.put("big", &format!("k{i}"), &doc(i)).await.unwrap() })
        })
        .collect();
    let mut token = 0;
    for w in writes {
        token = token.max(w.await.unwrap());
    }
    token
}

async fn status(client: &Client) -> serde_json::Value {
    client.status().await.unwrap()["status"].clone()
}

/// Polls `client`'s status until `ok` holds (20 s at most), every 10 ms (a transfer in
/// progress lasts well under a second on loopback).
async fn until(client: &Client, what: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    for _ in 0..2000 {
        if let Ok(s) = client.status().await
            && ok(&s["status"])
        {
            return s["status"].clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} within 20 s: {}", status(client).await);
}

fn receiving(s: &serde_json::Value, at_least: u64) -> bool {
    s["snapshot_transfers"].as_array().is_some_and(|t| {
        t.iter().any(|t| t["direction"] == "receive" && t["bytes_done"].as_u64().unwrap_or(0) >= at_least)
    })
}

async fn add_learner(cluster: &mut Cluster, leader: &Client, index: usize) -> Client {
    cluster.restart(index);
    let node = &cluster.nodes[index];
    leader
        .admin(Request::AddLearner {
            id: node.id,
            raft_addr: node.raft.to_string(),
            client_addr: node.client.to_string(),
        })
        .await
        .unwrap();
    Client::connect(node.client, &cluster.admin).await.unwrap()
}

/// Three voters and a spare node, 3,000 documents written and the leader's log compacted
/// past half of them: the leader's index, a client on it, the last write's token.
async fn compacted_store() -> (Cluster, usize, std::sync::Arc<Client>, u64) {
    let cluster = Cluster::start_with(3, 1, |t| small_chunks(&t));
    let leader = cluster.leader().await;
    let client = std::sync::Arc::new(cluster.client(leader).await);
    let token = fill(&client, 3000).await;
    until(&client, "a snapshot of most of the store", |s| s["snapshot_lsn"].as_u64() > Some(1500)).await;
    (cluster, leader, client, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_killed_mid_snapshot_resumes_from_its_part_file() {
    let (mut cluster, _, client, _) = compacted_store().await;

    let learner = add_learner(&mut cluster, &client, 3).await;
    until(&learner, "a transfer under way", |s| receiving(s, 100_000)).await;
    cluster.kill(3); // SIGKILL, mid-transfer
    let part = cluster.dir.path().join("data-4/raft").join(themis_replication::raft::transfer::PART_FILE);
    assert!(part.exists(), "the part file outlives the process: {}", part.display());
    cluster.restart(3);
    let learner = Client::connect(cluster.nodes[3].client, &cluster.admin).await.unwrap();
    let got = common::read_local(&learner, "big", "k2999", client.session_token(), Duration::from_secs(30))
        .await
        .expect("the learner catches up within 30 s");
    assert_eq!(got, Some(doc(2999)));
    let s = status(&learner).await;
    let counters = &s["counters"];
    assert!(counters["snapshot_bytes_resumed"].as_u64() >= Some(100_000), "resumed: {s}");
    assert!(counters["snapshots_received"].as_u64() >= Some(1), "{s}");
    assert!(!part.exists(), "the part file is removed once installed");
    eprintln!(
        "learner: {} chunks received, {} bytes resumed after SIGKILL",
        counters["snapshot_chunks_received"], counters["snapshot_bytes_resumed"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_mid_snapshot_is_replaced_and_the_learner_completes() {
    let (mut cluster, leader, client, _) = compacted_store().await;
    // Every voter snapshots on its own; wait for the others too, so the next leader also
    // has to send one.
    for i in (0..3).filter(|&i| i != leader) {
        let c = cluster.client(i).await;
        until(&c, "a follower's snapshot", |s| s["snapshot_lsn"].as_u64() > Some(1500)).await;
    }
    let learner = add_learner(&mut cluster, &client, 3).await;
    until(&learner, "a transfer under way", |s| receiving(s, 100_000)).await;
    cluster.kill(leader); // SIGKILL of the sender, mid-transfer
    let got = common::read_local(&learner, "big", "k2999", client.session_token(), Duration::from_secs(30))
        .await
        .expect("the learner catches up from the next leader within 30 s");
    assert_eq!(got, Some(doc(2999)));
    let s = status(&learner).await;
    assert!(s["counters"]["snapshots_received"].as_u64() >= Some(1), "{s}");
    assert_ne!(s["leader"].as_u64(), Some(cluster.nodes[leader].id), "{s}");
}
