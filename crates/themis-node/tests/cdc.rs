//! Change data capture end to end: real `themis-node` processes serving
//! `GET /v1/cdc/events`, read with the crate's SSE client. Labels and before-images,
//! filters, authentication and scopes, bad input, metrics, and a leader killed (SIGKILL) while a
//! feed follows the cluster.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{Cluster, http, json, metric};
use themis_node::auth::{Role, hs256_scoped_token, hs256_token};
use themis_node::{ChangeFeed, Credentials, FeedError, FeedEvent};

fn with_before_images(mut text: String) -> String {
    text.push_str("\n[cdc]\nbefore_images = [\"orders*\"]\nheartbeat_ms = 200\n");
    text
}

fn admin_addrs(cluster: &Cluster) -> Vec<std::net::SocketAddr> {
    cluster.nodes.iter().map(|n| n.admin).collect()
}

/// Reads change events (heartbeats skipped) until `n` have arrived.
async fn changes(feed: &mut ChangeFeed, n: usize) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let event: FeedEvent =
            tokio::time::timeout(Duration::from_secs(20), feed.next()).await.expect("no stall").unwrap();
        if event.kind == "change" {
            out.push(json(&event.data));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_become_labeled_events_with_before_images_on_every_node() {
    let cluster = Cluster::start_with(3, 0, with_before_images);
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let client = cluster.client(leader).await;
    // One feed on a follower for everything, one on the leader for orders updates only.
    let mut all =
        ChangeFeed::new(vec![cluster.nodes[follower].admin], cluster.admin.clone(), "", "", Some(0));
    let mut updates = ChangeFeed::new(
        vec![cluster.nodes[leader].admin],
        cluster.admin.clone(),
        "orders*",
        "update",
        Some(0),
    );
    let l1 = client.put("orders", "o1", br#"{"total":1}"#).await.unwrap();
    let l2 = client.put("orders", "o1", br#"{"total":2}"#).await.unwrap();
    let l3 = client.put("users", "ada", br#"{"n":"Ada"}"#).await.unwrap();
    let l4 = client.put("users", "ada", br#"{"n":"Ada L"}"#).await.unwrap();
    let l5 = client.delete("orders", "o1").await.unwrap();
    let l6 = client.delete("orders", "never-existed").await.unwrap();
    let l7 = client.put("orders", "o2", br#"{"total":7}"#).await.unwrap();
    let got = changes(&mut all, 6).await;
    let summary: Vec<(String, String, String, u64)> = got
        .iter()
        .map(|e| {
            (
                e["op"].as_str().unwrap().to_string(),
                e["source"]["collection"].as_str().unwrap().to_string(),
                e["source"]["id"].as_str().unwrap().to_string(),
                e["source"]["lsn"].as_u64().unwrap(),
            )
        })
        .collect();
    let s = |op: &str, c: &str, id: &str, lsn: u64| (op.to_string(), c.to_string(), id.to_string(), lsn);
    assert_eq!(
        summary,
        [
            s("c", "orders", "o1", l1),
            s("u", "orders", "o1", l2),
            s("c", "users", "ada", l3),
            s("u", "users", "ada", l4),
            s("d", "orders", "o1", l5),
            s("c", "orders", "o2", l7),
        ],
        "a delete of a missing document ({l6}) yields no event"
    );
    // Before-images where the collection asks for them, documents as JSON, provenance.
    assert_eq!(got[1]["before"], serde_json::json!({"total": 1}));
    assert_eq!(got[1]["after"], serde_json::json!({"total": 2}));
    assert_eq!(got[4]["before"], serde_json::json!({"total": 2}));
    assert!(got[4]["after"].is_null());
    assert!(got[3]["before"].is_null(), "users does not log before-images");
    let leader_id = cluster.nodes[leader].id;
    assert!(got.iter().all(|e| e["source"]["origin"] == leader_id), "origin is the node that took the write");
    assert!(got.iter().all(|e| e["source"]["node"] == cluster.nodes[follower].id));
    assert!(got.iter().all(|e| e["source"]["ts_ms"].as_u64().unwrap() > 1_600_000_000_000));
    let only = changes(&mut updates, 1).await;
    assert_eq!((only[0]["op"].as_str(), only[0]["source"]["lsn"].as_u64()), (Some("u"), Some(l2)));
    // The stream's metrics.
    let (_, _, text) = http(cluster.nodes[follower].admin, &cluster.admin, "GET", "/metrics", &[], "").await;
    assert!(metric(&text, "themis_cdc_subscribers_live").unwrap() >= 1.0, "{text}");
    assert!(metric(&text, "themis_cdc_resolved_lsn").unwrap() >= l7 as f64);
    assert!(metric(&text, "themis_cdc_events_delivered_total").unwrap() >= 6.0);
    assert_eq!(metric(&text, "themis_cdc_label_mismatches_total"), Some(0.0));
    assert!(text.contains("themis_cdc_subscriber_lag_lsns{subscriber="), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_filters_positions_and_credentials_are_refused_with_their_reason() {
    let cluster = Cluster::start(3, 0);
    let node = cluster.nodes[0].admin;
    let get = |path: &'static str, credentials: Credentials| async move {
        let (status, _, body) = http(node, &credentials, "GET", path, &[], "").await;
        (status, body)
    };
    let (status, body) = get("/v1/cdc/events?collections=tenant_%7Bacme", cluster.admin.clone()).await;
    assert_eq!(status, 400);
    assert!(body.contains("tenant_{acme") && body.contains("position 7"), "{body}");
    let (status, body) = get("/v1/cdc/events?ops=insert,upsert", cluster.admin.clone()).await;
    assert_eq!(status, 400);
    assert!(body.contains("upsert"), "{body}");
    let (status, body) = get("/v1/cdc/events?from_lsn=abc", cluster.admin.clone()).await;
    assert_eq!(status, 400);
    assert!(body.contains("from_lsn"), "{body}");
    let (status, body) = get("/v1/cdc/events?from_lsn=999999999", cluster.admin.clone()).await;
    assert_eq!(status, 416, "{body}");
    assert!(body.contains("beyond"), "{body}");
    // No credentials: 401. A token whose collections do not cover the request: 403.
    let (status, _) = get("/v1/cdc/events", Credentials::tls(cluster.ca.clone())).await;
    assert_eq!(status, 401);
    let secret = std::fs::read(&cluster.jwt_secret_file).unwrap();
    let scoped = |collections: &[&str]| {
        let token = hs256_scoped_token(
            &secret,
            "acme-reader",
            Role::Read,
            600,
            Some(collections.iter().map(|s| (*s).to_string()).collect()),
        )
        .unwrap();
        Credentials::tls(cluster.ca.clone()).with_token(token)
    };
    let acme = scoped(&["tenant_acme.*"]);
    for refused in [
        "/v1/cdc/events",
        "/v1/cdc/events?collections=tenant_globex.orders",
        "/v1/cdc/events?collections=tenant_*",
    ] {
        let (status, body) = get(refused, acme.clone()).await;
        assert_eq!(status, 403, "{refused}: {body}");
        assert!(body.contains("acme-reader"), "{body}");
    }
    // Covered requests stream (checked by reading the first heartbeat).
    for allowed in ["tenant_acme.orders", "tenant_acme.*"] {
        let mut feed = ChangeFeed::new(vec![node], acme.clone(), allowed, "", None);
        let event = tokio::time::timeout(Duration::from_secs(10), feed.next()).await.unwrap().unwrap();
        assert_eq!(event.kind, "heartbeat", "{allowed}");
    }
    // A client that drops its connection mid-stream frees its subscription and slot.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tls = common::tls(&cluster.admin, node).await.unwrap();
        let request = format!("GET /v1/cdc/events?from_lsn=0 HTTP/1.1\r\nhost: {node}\r\n\r\n");
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut head = [0u8; 256];
        let n = tls.read(&mut head).await.unwrap();
        assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"), "the stream opened");
        let live = |text: &str| metric(text, "themis_cdc_subscribers_live").unwrap_or(-1.0);
        let (_, _, text) = http(node, &cluster.admin, "GET", "/metrics", &[], "").await;
        assert!(live(&text) >= 1.0, "{text}");
        drop(tls);
        let mut freed = false;
        for _ in 0..100 {
            let (_, _, text) = http(node, &cluster.admin, "GET", "/metrics", &[], "").await;
            if live(&text) == 0.0 {
                freed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(freed, "the dropped stream's subscription was released");
    }
    // A feed refused by the node returns the refusal instead of retrying.
    let read =
        Credentials::tls(cluster.ca.clone()).with_token(hs256_token(&secret, "r", Role::Read, 600).unwrap());
    let mut bad = ChangeFeed::new(vec![node], read, "a{", "", None);
    assert!(matches!(bad.next().await, Err(FeedError::Refused { status: 400, .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_follows_the_cluster_through_a_leader_sigkill_and_misses_no_acknowledged_write() {
    let mut cluster = Cluster::start_with(3, 0, with_before_images);
    let leader = cluster.leader().await;
    // The feed starts on the leader, so killing it cuts the stream mid-flow.
    let mut addrs = admin_addrs(&cluster);
    addrs.rotate_left(leader);
    let mut feed = ChangeFeed::new(addrs, cluster.admin.clone(), "orders*", "", Some(0));
    let writer = {
        let addrs: Vec<_> = cluster.nodes.iter().map(|n| n.client).collect();
        let admin = cluster.admin.clone();
        tokio::spawn(async move {
            let client = themis_node::Client::connect_any(&addrs, &admin).await.unwrap();
            let mut acked = BTreeMap::new();
            for i in 0..400u64 {
                let doc = format!("{{\"i\":{i}}}");
                // Writes during the failover may fail or have unknown outcomes; only
                // acknowledged ones must appear.
                if let Ok(Ok(lsn)) = tokio::time::timeout(
                    Duration::from_secs(5),
                    client.put("orders", &format!("k{}", i % 50), doc.as_bytes()),
                )
                .await
                {
                    acked.insert(lsn, i);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            acked
        })
    };
    let first = changes(&mut feed, 20).await;
    cluster.kill(leader);
    let acked = writer.await.unwrap();
    let last_acked = *acked.keys().last().unwrap();
    let mut seen: Vec<(u64, u64)> = first
        .iter()
        .map(|e| (e["source"]["lsn"].as_u64().unwrap(), e["source"]["index"].as_u64().unwrap()))
        .collect();
    while seen.last().is_none_or(|(lsn, _)| *lsn < last_acked) {
        for e in changes(&mut feed, 1).await {
            seen.push((e["source"]["lsn"].as_u64().unwrap(), e["source"]["index"].as_u64().unwrap()));
        }
    }
    // Deduplicated by (LSN, index), the feed is in log order and holds every acknowledged write.
    let unique: BTreeSet<(u64, u64)> = seen.iter().copied().collect();
    let deduped: Vec<(u64, u64)> = {
        let mut v = seen.clone();
        v.dedup();
        v
    };
    assert_eq!(deduped.len(), unique.len(), "after de-duplication the feed is in log order");
    let lsns: BTreeSet<u64> = unique.iter().map(|(l, _)| *l).collect();
    let missing: Vec<_> = acked.keys().filter(|l| !lsns.contains(l)).collect();
    assert!(missing.is_empty(), "acknowledged writes missing from the feed: {missing:?}");
    assert_ne!(feed.node(), Some(cluster.nodes[leader].admin), "the feed moved to a live node");
}
