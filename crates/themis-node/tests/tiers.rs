//! Write concerns and replication tiers on real `themis-node` processes: `ALL` waits for
//! every voter (and times out with one stopped) while the cluster runs ASYNC; a tier
//! assigned through the log reaches every node and applies to plain writes; automatic
//! tiering promotes a hot collection; bad input is refused by name.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, http, json};
use nix::sys::signal::Signal;
use themis_node::{ClientError, ErrorCode, Request};
use themis_replication::geo::WriteConcern;

fn timed_out(result: &Result<u64, ClientError>) -> bool {
    matches!(result, Err(ClientError::Server { code: ErrorCode::Timeout, .. }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_concerns_and_tiers_hold_writes_until_enough_replicas_have_them() {
    let cluster = Cluster::start(3, 0);
    let leader = cluster.leader().await;
    let client = cluster.client(leader).await;
    client.admin(Request::SetMode { mode: "async".into(), min_sync_replicas: 0 }).await.unwrap();

    // ALL: acknowledged once every voter holds the write.
    let lsn = client.put_with("c", "all", b"{}", WriteConcern::All).await.unwrap();
    let status = client.status().await.unwrap();
    for replica in status["status"]["replicas"].as_array().unwrap() {
        assert!(replica["match_lsn"].as_u64().unwrap() >= lsn, "{status}");
    }
    client.put_with("c", "majority", b"{}", WriteConcern::Majority).await.unwrap();

    // Tiers: assigned through the log, the same on every node.
    let admin = cluster.nodes[leader].admin;
    let (status, _, body) =
        http(admin, &cluster.admin, "PUT", "/v1/tiers/payments", &[], r#"{"tier":"tier1"}"#).await;
    assert_eq!(status, 200, "{body}");
    http(admin, &cluster.admin, "PUT", "/v1/tiers/logs", &[], r#"{"tier":"tier3"}"#).await;
    client.put("c", "barrier", b"{}").await.unwrap();
    for node in &cluster.nodes {
        let c = themis_node::Client::connect(node.client, &cluster.admin).await.unwrap();
        common::read_local(&c, "c", "barrier", client.session_token(), Duration::from_secs(10))
            .await
            .unwrap();
        let (_, _, body) = http(node.admin, &cluster.admin, "GET", "/v1/tiers", &[], "").await;
        let tiers = json(&body);
        let names: Vec<(&str, &str)> = tiers["tiers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["collection"].as_str().unwrap(), t["tier"].as_str().unwrap()))
            .collect();
        assert_eq!(names, [("logs", "tier3"), ("payments", "tier1")], "node {}: {body}", node.id);
    }

    // A follower stopped: ALL and tier1 writes wait (and time out); tier3 and unassigned
    // collections go on under the ASYNC mode.
    let stopped = (leader + 1) % 3;
    cluster.signal(stopped, Signal::SIGSTOP);
    let started = Instant::now();
    assert!(timed_out(&client.put("payments", "p1", b"{}").await), "a tier1 write without every voter");
    assert!(started.elapsed() >= Duration::from_secs(5), "it waited for the voter");
    client.put("logs", "l1", b"{}").await.unwrap();
    client.put("other", "o1", b"{}").await.unwrap();
    let (status, _, body) =
        http(admin, &cluster.admin, "PUT", "/v1/collections/c/docs/x?write_concern=all", &[], "{}").await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("write concern all"), "{body}");
    cluster.signal(stopped, Signal::SIGCONT);
    // Back: the tier1 write goes through once the voter has caught up.
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.put("payments", "p2", b"{}").await.is_err() {
        assert!(Instant::now() < deadline, "tier1 writes never resumed");
    }
    let (status, _, _) = http(admin, &cluster.admin, "DELETE", "/v1/tiers/payments", &[], "").await;
    assert_eq!(status, 200);

    // Bad input, by name.
    for (method, path, body, says) in [
        ("PUT", "/v1/tiers/payments", r#"{"tier":"gold"}"#, "tier \"gold\""),
        ("PUT", "/v1/tiers/payments", r#"{"level":"tier1"}"#, "expected {\"tier\""),
        ("PUT", "/v1/tiers/_themis_slots", r#"{"tier":"tier1"}"#, "internal collections have no tier"),
        ("PUT", "/v1/collections/c/docs/y?write_concern=two", "{}", "write concern \"two\""),
    ] {
        let (status, _, text) = http(admin, &cluster.admin, method, path, &[], body).await;
        assert_eq!(status, 400, "{path}: {text}");
        assert!(json(&text)["message"].as_str().unwrap().contains(says), "{path}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_tiering_promotes_a_hot_collection() {
    let cluster = Cluster::start_with(3, 0, |text| {
        format!(
            "{text}\n[geo]\nauto_tiering = true\nauto_tier_interval_secs = 1\nauto_promote_writes_per_sec = 5\n\
             auto_demote_writes_per_sec = 0\n"
        )
    });
    let leader = cluster.leader().await;
    let client = cluster.client(leader).await;
    let admin = cluster.nodes[leader].admin;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    loop {
        for _ in 0..20 {
            client.put("hot", &format!("k{n}"), b"{}").await.unwrap();
            n += 1;
        }
        let (_, _, body) = http(admin, &cluster.admin, "GET", "/v1/tiers", &[], "").await;
        let tiers = json(&body);
        let hot = tiers["tiers"].as_array().unwrap().iter().find(|t| t["collection"] == "hot").cloned();
        if let Some(hot) = hot {
            assert_eq!(
                (hot["tier"].as_str(), hot["automatic"].as_bool()),
                (Some("tier1"), Some(true)),
                "{body}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no promotion after {n} writes: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
