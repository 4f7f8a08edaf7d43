//! Replication analytics between real `themis-node` processes: each cause is injected for
//! real (a slowed link through the testkit proxy, slow fsyncs on one node, a follower
//! stopped with `SIGSTOP`) while a writer keeps the log moving, and the insight that names
//! it must fire within two heartbeat intervals of the cause becoming observable, then
//! close once the cause is gone. The lag history API answers for every replica.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Cluster, http, json, start_proxied_with_env};
use serde_json::Value;
use themis_testkit::proxy::Fault;

/// `replication.heartbeat_ms` of these clusters (the default).
const HEARTBEAT_MS: u64 = 100;
/// Scheduling slack on two loaded cores with debug builds, beyond the two heartbeats.
const SLACK_MS: u64 = 400;

fn now_ms() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

async fn insights(cluster: &Cluster, i: usize) -> Vec<Value> {
    let (code, _, body) =
        http(cluster.nodes[i].admin, &cluster.admin, "GET", "/v1/analytics/insights?since_ms=0", &[], "")
            .await;
    assert_eq!(code, 200, "{body}");
    json(&body)["insights"].as_array().unwrap().clone()
}

/// Waits up to 15 s for node `i` to report an insight of `kind` (about `replica`) that
/// started at or after `since`; returns it.
async fn fired(cluster: &Cluster, i: usize, kind: &str, replica: Option<u64>, since: u64) -> Value {
    for _ in 0..300 {
        let found = insights(cluster, i).await.into_iter().find(|x| {
            x["type"] == kind && x["replica"].as_u64() == replica && x["at_ms"].as_u64().unwrap() >= since
        });
        if let Some(found) = found {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "no {kind} insight for {replica:?} on node {} within 15 s: {:#?}",
        i + 1,
        insights(cluster, i).await
    );
}

/// Waits up to 15 s for insight `id` on node `i` to close.
async fn closed(cluster: &Cluster, i: usize, id: u64) {
    for _ in 0..300 {
        if insights(cluster, i).await.iter().any(|x| x["id"] == id && x["resolved_ms"].is_u64()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("insight {id} on node {} still open after 15 s", i + 1);
}

/// Asserts the insight started within `budget_ms` of `cause_ms`.
fn within(insight: &Value, cause_ms: u64, budget_ms: u64) {
    let at = insight["at_ms"].as_u64().unwrap();
    let took = at.saturating_sub(cause_ms);
    println!("{} fired {took} ms after its cause became observable (budget {budget_ms} ms)", insight["type"]);
    assert!(
        took <= budget_ms,
        "{} fired {took} ms after its cause (budget {budget_ms} ms): {insight}",
        insight["type"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_injected_cause_fires_its_insight_within_two_heartbeats() {
    let faults = tempfile::tempdir().unwrap();
    let fault_dir = faults.path().display().to_string();
    let (mut cluster, net) =
        start_proxied_with_env(3, |text| text, |_| vec![("THEMIS_FAULT_DIR".into(), fault_dir.clone())])
            .await;
    let delay_file = |i: usize| faults.path().join(format!("fsync-delay-ms.{}", i + 1));
    let leader = cluster.leader().await;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let (a, b) = (followers[0], followers[1]);
    let (a_id, b_id) = (cluster.nodes[a].id, cluster.nodes[b].id);

    // A steady writer: fsyncs happen and lag is measured all the time.
    let client = Arc::new(cluster.client(leader).await);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, stop) = (Arc::clone(&client), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let _ =
                    client.put("load", &format!("k{}", n % 100), format!(r#"{{"n":{n}}}"#).as_bytes()).await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // Enough calm seconds for each replica's usual round trip to be known.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        insights(&cluster, leader).await.iter().all(|x| x["type"] != "NETWORK_ISSUE"),
        "no network issue before one is injected"
    );

    // 1. A slowed link: 150 ms each way between the leader and follower a. The cause is
    // observable once a heartbeat has made the round trip (300 ms).
    let delay = Duration::from_millis(150);
    let t0 = now_ms();
    net.set_between(leader, a, Fault::Delay(delay));
    let insight = fired(&cluster, leader, "NETWORK_ISSUE", Some(a_id), t0).await;
    within(&insight, t0 + 2 * 150, 2 * HEARTBEAT_MS + SLACK_MS);
    assert!(insight["metadata"]["rtt_ms"].as_u64().unwrap() >= 250, "{insight}");
    let (_, _, body) =
        http(cluster.nodes[leader].admin, &cluster.admin, "GET", "/v1/analytics/bottlenecks", &[], "").await;
    let bottlenecks = json(&body)["bottlenecks"].as_array().unwrap().clone();
    let of_a =
        bottlenecks.iter().find(|x| x["replica"].as_u64() == Some(a_id)).expect("replica a's bottlenecks");
    assert_eq!(of_a["primary"], "network", "{of_a}");
    net.set_between(leader, a, Fault::Pass);
    closed(&cluster, leader, insight["id"].as_u64().unwrap()).await;

    // 2. Slow fsyncs on follower b: 120 ms each, above fsync_warn_ms (50). Observable at
    // the end of the first slow fsync, which the steady writer brings within milliseconds.
    std::fs::write(delay_file(b), "120").unwrap();
    let t0 = now_ms();
    let insight = fired(&cluster, b, "DISK_IO", None, t0).await;
    within(&insight, t0 + 50 + 120, 2 * HEARTBEAT_MS + SLACK_MS);
    let (_, _, body) =
        http(cluster.nodes[b].admin, &cluster.admin, "GET", "/v1/analytics/bottlenecks", &[], "").await;
    let own = json(&body)["bottlenecks"][0].clone();
    assert_eq!(own["primary"], "disk", "{own}");
    std::fs::write(delay_file(b), "0").unwrap();
    closed(&cluster, b, insight["id"].as_u64().unwrap()).await;

    // 3. A stopped follower: observable once it has been silent for two heartbeats.
    let t0 = now_ms();
    cluster.signal(a, nix::sys::signal::Signal::SIGSTOP);
    let insight = fired(&cluster, leader, "SLOW_REPLICA", Some(a_id), t0).await;
    within(&insight, t0 + 2 * HEARTBEAT_MS, 2 * HEARTBEAT_MS + SLACK_MS);
    cluster.signal(a, nix::sys::signal::Signal::SIGCONT);
    closed(&cluster, leader, insight["id"].as_u64().unwrap()).await;

    // The leader kept a second-by-second history of both replicas.
    for id in [a_id, b_id] {
        let path = format!("/v1/analytics/lag?replica={id}&duration=5m");
        let (code, _, body) = http(cluster.nodes[leader].admin, &cluster.admin, "GET", &path, &[], "").await;
        assert_eq!(code, 200, "{body}");
        let h = json(&body)["histories"][0].clone();
        assert!(h["samples"].as_u64().unwrap() >= 10, "{h}");
        assert!(
            h["max_ms"].as_u64() >= h["p99_ms"].as_u64() && h["p99_ms"].as_u64() >= h["p95_ms"].as_u64(),
            "{h}"
        );
        assert!(!h["points"].as_array().unwrap().is_empty(), "{h}");
    }
    // Bad requests are named.
    for (path, needle) in [
        ("/v1/analytics/lag?duration=8d", "1s to 7d"),
        ("/v1/analytics/lag?duration=soon", "duration"),
        ("/v1/analytics/lag?replica=x", "query"),
        ("/v1/analytics/insights?since_ms=-1", "since_ms"),
    ] {
        let (code, _, body) = http(cluster.nodes[leader].admin, &cluster.admin, "GET", path, &[], "").await;
        assert_eq!(code, 400, "{path}: {body}");
        assert!(body.contains(needle), "{path}: {body}");
    }
    let (code, _, body) =
        http(cluster.nodes[leader].admin, &cluster.admin, "GET", "/v1/analytics/lag?replica=99", &[], "")
            .await;
    assert_eq!(code, 404, "{body}");

    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    cluster.kill(a);
}
