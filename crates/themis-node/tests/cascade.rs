//! Cascading read replicas between real `themis-node` processes: a chain of learners
//! streams the committed log from a follower (leader → follower → 4 → 5 → 6), the leader
//! sends them no entries; when a replica in the chain is killed (`SIGKILL`) the leader serves the
//! one below it directly, and hands it back once its upstream returns. Bad topologies
//! (a cycle, a voter, a non-member) are refused with the chain named, through the API.

mod common;

use std::fmt::Write as _;
use std::time::Duration;

use common::{Cluster, http, json};
use themis_node::Client;

fn doc(i: usize) -> Vec<u8> {
    format!(r#"{{"n":{i}}}"#).into_bytes()
}

/// Writes documents `range` through `client` (the leader), pipelined.
async fn fill(client: &std::sync::Arc<Client>, range: std::ops::Range<usize>) {
    let writes: Vec<_> = range
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.put("c", &format!("k{i}"), &doc(i)).await.unwrap() })
        })
        .collect();
    for w in writes {
        w.await.unwrap();
    }
}

async fn status(cluster: &Cluster, i: usize) -> serde_json::Value {
    cluster.client(i).await.status().await.unwrap()["status"].clone()
}

/// Polls node `i`'s status until `ok` holds (20 s at most).
async fn until(cluster: &Cluster, i: usize, what: &str, ok: impl Fn(&serde_json::Value) -> bool) {
    for _ in 0..400 {
        if let Ok(c) = Client::connect(cluster.nodes[i].client, &cluster.admin).await
            && let Ok(s) = c.status().await
            && ok(&s["status"])
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut all = String::new();
    for j in 0..cluster.nodes.len() {
        if let Ok(c) = Client::connect(cluster.nodes[j].client, &cluster.admin).await
            && let Ok(s) = c.status().await
        {
            let _ = write!(all, "\n  node {}: {}", cluster.nodes[j].id, s["status"]);
        }
    }
    panic!("{what} (node {}) within 20 s:{all}", cluster.nodes[i].id);
}

fn counter(s: &serde_json::Value, name: &str) -> u64 {
    s["counters"][name].as_u64().unwrap_or(0)
}

/// Node `i` holds documents `0..n`: the last through a session read that waits for it,
/// and a sample of the rest.
async fn holds(cluster: &Cluster, i: usize, token: Option<String>, n: usize) {
    let client = cluster.client(i).await;
    let last =
        common::read_local(&client, "c", &format!("k{}", n - 1), token.clone(), Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("node {} catches up within 20 s", cluster.nodes[i].id));
    assert_eq!(last, Some(doc(n - 1)));
    for k in (0..n).step_by(97) {
        let got =
            common::read_local(&client, "c", &format!("k{k}"), token.clone(), Duration::from_secs(5)).await;
        assert_eq!(got, Some(Some(doc(k))), "node {} key k{k}", cluster.nodes[i].id);
    }
}

/// Writes a document every 100 ms until every upstream in `upstreams` has forwarded one
/// of them and the leader serves no cascaded replica directly (20 s at most).
async fn settle(cluster: &Cluster, leader: usize, client: &Client, upstreams: &[(usize, &str)]) {
    let mut start = Vec::new();
    for (i, _) in upstreams {
        start.push(counter(&status(cluster, *i).await, "forwarded_entries"));
    }
    for round in 0..200 {
        client.put("warmup", &format!("w{round}"), b"{}").await.unwrap();
        let mut forwarding = status(cluster, leader).await["cascade_direct"] == serde_json::json!([]);
        for ((i, _), start) in upstreams.iter().zip(&start) {
            forwarding &= counter(&status(cluster, *i).await, "forwarded_entries") > *start;
        }
        if forwarding {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the chain never settled: leader {}", status(cluster, leader).await);
}

/// A cycle, a voter, a non-member and node 0 are refused through the API, naming the
/// problem, and nothing changes.
async fn refusals(cluster: &Cluster, leader: usize, f: u64) {
    let (code, text) = put_upstream(cluster, leader, 4, 6).await;
    assert_eq!(code, 422, "a cycle: {text}");
    assert!(text.contains("cycle") && text.contains("4 -> 6 -> 5 -> 4"), "{text}");
    let (code, text) = put_upstream(cluster, leader, f, 4).await;
    assert_eq!(code, 422, "{text}");
    assert!(text.contains("a voter"), "{text}");
    let (code, text) = put_upstream(cluster, leader, 6, 42).await;
    assert_eq!(code, 422, "{text}");
    assert!(text.contains("upstream 42 is not a member"), "{text}");
    let (code, text) = put_upstream(cluster, leader, 6, 0).await;
    assert_eq!(code, 400, "{text}");
}

async fn add(cluster: &mut Cluster, leader: usize, index: usize, upstream: Option<u64>) -> (u16, String) {
    cluster.restart(index);
    let node = &cluster.nodes[index];
    let upstream = upstream.map_or(String::new(), |u| format!(r#","upstream":{u}"#));
    let body = format!(
        r#"{{"id":{},"raft_addr":"{}","client_addr":"{}"{upstream}}}"#,
        node.id, node.raft, node.client
    );
    let (code, _, text) =
        http(cluster.nodes[leader].admin, &cluster.admin, "POST", "/v1/cluster/members", &[], &body).await;
    (code, text)
}

async fn put_upstream(cluster: &Cluster, leader: usize, replica: u64, upstream: u64) -> (u16, String) {
    let path = format!("/v1/cluster/cascade/{replica}");
    let body = format!(r#"{{"upstream":{upstream}}}"#);
    let (code, _, text) = http(cluster.nodes[leader].admin, &cluster.admin, "PUT", &path, &[], &body).await;
    (code, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_read_replicas_streams_from_a_follower_and_survives_a_link_in_it_dying() {
    let mut cluster = Cluster::start(3, 3);
    let leader = cluster.leader().await;
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let f = cluster.nodes[follower].id;
    let client = std::sync::Arc::new(cluster.client(leader).await);

    // Joined with an upstream: 4 streams from the follower, 5 from 4; 6 joins plain and
    // is then set to stream from 5 (a chain of four hops: 6 -> 5 -> 4 -> f).
    let (code, text) = add(&mut cluster, leader, 3, Some(f)).await;
    assert_eq!(code, 200, "{text}");
    let (code, text) = add(&mut cluster, leader, 4, Some(4)).await;
    assert_eq!(code, 200, "{text}");
    // Joining with an upstream that is not a member is refused before the node is added.
    let six = &cluster.nodes[5];
    let body =
        format!(r#"{{"id":6,"raft_addr":"{}","client_addr":"{}","upstream":42}}"#, six.raft, six.client);
    let (code, _, text) =
        http(cluster.nodes[leader].admin, &cluster.admin, "POST", "/v1/cluster/members", &[], &body).await;
    assert_eq!(code, 422, "{text}");
    assert!(text.contains("upstream 42 is not a member"), "{text}");
    assert!(!status(&cluster, leader).await["learners"].as_array().unwrap().contains(&serde_json::json!(6)));
    let (code, text) = add(&mut cluster, leader, 5, None).await;
    assert_eq!(code, 200, "{text}");
    let (code, text) = put_upstream(&cluster, leader, 6, 5).await;
    assert_eq!(code, 200, "{text}");

    refusals(&cluster, leader, f).await;

    let (code, _, text) =
        http(cluster.nodes[leader].admin, &cluster.admin, "GET", "/v1/cluster/cascade", &[], "").await;
    assert_eq!(code, 200, "{text}");
    let topology = json(&text);
    let six = topology["replicas"].as_array().unwrap().iter().find(|r| r["replica"] == 6).cloned();
    let six = six.unwrap_or_else(|| panic!("replica 6 listed: {topology}"));
    assert_eq!(six["chain"], serde_json::json!([6, 5, 4, f]), "{topology}");
    assert_eq!(six["hops"], 4);

    // Every node applies the topology; the leader leaves the chain to the follower.
    for i in 0..6 {
        until(&cluster, i, "the topology applied", |s| s["upstreams"]["6"] == 5 && s["upstreams"]["4"] == f)
            .await;
    }
    // New replicas are served by the leader until they hold the log, then handed over;
    // links between replicas come up once each knows the other from the log.
    let upstreams = [(follower, "the follower"), (3, "replica 4"), (4, "replica 5")];
    settle(&cluster, leader, &client, &upstreams).await;
    let mut before = Vec::new();
    for (i, _) in upstreams {
        before.push(counter(&status(&cluster, i).await, "forwarded_entries"));
    }
    let left_before = counter(&status(&cluster, leader).await, "appends_left_to_upstream");

    fill(&client, 0..600).await;
    let token = client.session_token();
    for i in 3..6 {
        holds(&cluster, i, token.clone(), 600).await;
    }
    let leading = status(&cluster, leader).await;
    assert!(counter(&leading, "appends_left_to_upstream") > left_before, "{leading}");
    // (Statuses are published once a tick: polled, not read once.)
    for ((i, name), before) in upstreams.into_iter().zip(before) {
        until(&cluster, i, &format!("{name} forwarded the 600 writes"), |s| {
            counter(s, "forwarded_entries") >= before + 600
        })
        .await;
    }
    // The leader measures the cascaded replicas' lag from their answers.
    until(&cluster, leader, "replica 6 is seen caught up", |s| {
        s["replicas"].as_array().is_some_and(|r| r.iter().any(|r| r["id"] == 6 && r["lag_lsns"] == 0))
    })
    .await;

    // SIGKILL replica 4: the leader serves 5 directly, and 6 still streams from 5.
    cluster.kill(3);
    until(&cluster, leader, "replica 5 taken back", |s| s["cascade_direct"] == serde_json::json!([5])).await;
    fill(&client, 600..900).await;
    let token = client.session_token();
    holds(&cluster, 4, token.clone(), 900).await;
    holds(&cluster, 5, token.clone(), 900).await;

    // Replica 4 returns and catches up from the follower; 5 goes back to it.
    cluster.restart(3);
    holds(&cluster, 3, token.clone(), 900).await;
    settle(&cluster, leader, &client, &upstreams).await;
    let before = counter(&status(&cluster, 3).await, "forwarded_entries");
    fill(&client, 900..1000).await;
    let token = client.session_token();
    for i in 3..6 {
        holds(&cluster, i, token.clone(), 1000).await;
    }
    until(&cluster, 3, "replica 4 forwards to 5 again", |s| counter(s, "forwarded_entries") >= before + 100)
        .await;

    // What the leader sends per write, cascaded (to two followers; the follower feeds the
    // chain) and, once every replica is cleared, direct (to two followers and three
    // replicas).
    let cascaded = leader_bytes_per_write(&cluster, leader, &client, 1000..1400).await;
    for id in [6, 5, 4] {
        let path = format!("/v1/cluster/cascade/{id}");
        let (code, _, text) =
            http(cluster.nodes[leader].admin, &cluster.admin, "DELETE", &path, &[], "").await;
        assert_eq!(code, 200, "{text}");
    }
    until(&cluster, leader, "the cascade cleared", |s| s["upstreams"] == serde_json::json!({})).await;
    let direct = leader_bytes_per_write(&cluster, leader, &client, 1400..1800).await;
    eprintln!(
        "leader payload bytes per write: cascaded {cascaded:.0}, direct {direct:.0} ({:.2}x)",
        direct / cascaded
    );
    assert!(
        direct > 1.5 * cascaded,
        "cascading spares the leader: {cascaded:.0} vs {direct:.0} bytes per write"
    );
}

/// Writes `range` and returns the payload bytes the leader sent per write meanwhile,
/// once every replica holds them.
async fn leader_bytes_per_write(
    cluster: &Cluster,
    leader: usize,
    client: &std::sync::Arc<Client>,
    range: std::ops::Range<usize>,
) -> f64 {
    let sent = |s: &serde_json::Value| counter(s, "sent_payload_bytes");
    let before = sent(&status(cluster, leader).await);
    let n = range.len();
    let last = range.end;
    fill(client, range).await;
    for i in 3..6 {
        holds(cluster, i, client.session_token(), last).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await; // a tick or two: statuses publish
    (sent(&status(cluster, leader).await) - before) as f64 / n as f64
}
