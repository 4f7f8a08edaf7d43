//! End to end with real processes: `themis-node` binaries on 127.0.0.1 with mutual TLS
//! between them, TLS clients, real fsyncs, and SIGKILL.
//!
//! `THEMIS_TEST_BUDGET=full` repeats the leader kill 10 times and prints the p99 failover.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use themis_node::{Client, Consistency, Credentials, Request};

mod common;

use common::{Cluster, http, json, metric};

fn doc(i: u64) -> Vec<u8> {
    format!(r#"{{"n":{i},"pad":"{}"}}"#, "x".repeat(200)).into_bytes()
}

/// Reads `key` from every running node at the session token, checking the value.
async fn read_everywhere(cluster: &Cluster, key: &str, token: Option<String>, value: &[u8]) {
    for node in cluster.nodes.iter().filter(|n| n.child.is_some()) {
        let client = Client::connect(node.client, &cluster.admin).await.unwrap();
        let got = common::read_local(&client, "e2e", key, token.clone(), Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("node {} did not catch up within 30 s", node.id));
        assert_eq!(got.as_deref(), Some(value), "node {} has {key}", node.id);
    }
}

/// Writers that keep writing through any live node; returns acknowledged (key, value,
/// session token, when the write was sent, when it was acknowledged).
type Acked = Arc<Mutex<Vec<(String, Vec<u8>, String, Instant, Instant)>>>;

fn start_writers(
    cluster: &Cluster,
    writers: usize,
    stop: &Arc<std::sync::atomic::AtomicBool>,
) -> (Acked, Vec<tokio::task::JoinHandle<()>>) {
    let acked: Acked = Arc::default();
    let addrs: Vec<SocketAddr> =
        cluster.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.client).collect();
    let handles = (0..writers)
        .map(|w| {
            let (acked, stop, addrs, ca) =
                (acked.clone(), stop.clone(), addrs.clone(), cluster.admin.clone());
            tokio::spawn(async move {
                let mut order = addrs.clone();
                order.rotate_left(w % addrs.len());
                let Ok(client) = Client::connect_any(&order, &ca).await else { return };
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = format!("w{w}-{n}");
                    let value = doc(n);
                    // Errors (a lost node, an unknown outcome) are not acknowledgements.
                    let sent = Instant::now();
                    if client.put("e2e", &key, &value).await.is_ok() {
                        let token = client.session_token().unwrap_or_default();
                        acked.lock().unwrap().push((key, value, token, sent, Instant::now()));
                    }
                    n += 1;
                }
            })
        })
        .collect();
    (acked, handles)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_in_every_mode_and_fail_over_after_sigkill_without_losing_acknowledged_writes()
{
    let mut cluster = Cluster::start(3, 0);
    let leader = cluster.leader().await;
    let client = cluster.client((leader + 1) % 3).await; // a follower: writes are redirected
    for (mode, min) in [("async", 0), ("sync", 1), ("semi_sync", 1)] {
        client.admin(Request::SetMode { mode: mode.into(), min_sync_replicas: min }).await.unwrap();
        let key = format!("mode-{mode}");
        client.put("e2e", &key, &doc(1)).await.unwrap();
        read_everywhere(&cluster, &key, client.session_token(), &doc(1)).await;
        for node in &cluster.nodes {
            let c = Client::connect(node.client, &cluster.admin).await.unwrap();
            let mode_seen = c.status().await.unwrap()["status"]["mode"].as_str().unwrap().to_string();
            assert!(mode_seen.starts_with(&mode.to_uppercase()), "node {} sees {mode_seen}", node.id);
        }
    }
    // A bad document and a bad mode are refused with the reason.
    let err = client.put("e2e", "bad", b"{not json").await.unwrap_err();
    assert!(err.to_string().contains("not JSON"), "{err}");
    let err = client.admin(Request::SetMode { mode: "sync".into(), min_sync_replicas: 0 }).await.unwrap_err();
    assert!(err.to_string().contains("min_sync_replicas"), "{err}");

    let kills = if std::env::var("THEMIS_TEST_BUDGET").as_deref() == Ok("full") { 10 } else { 1 };
    let mut failovers = Vec::new();
    for round in 0..kills {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (acked, writers) = start_writers(&cluster, 16, &stop);
        tokio::time::sleep(Duration::from_millis(700)).await;
        let leader = cluster.leader().await;
        let killed_at = Instant::now();
        cluster.kill(leader);
        // Wait for a write sent after the kill to be acknowledged: only a new leader can.
        let deadline = Instant::now() + Duration::from_secs(10);
        let first_after = loop {
            let after = acked.lock().unwrap().iter().filter(|a| a.3 > killed_at).map(|a| a.4).min();
            if let Some(t) = after {
                break t;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: no write acknowledged within 10 s of the kill"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let failover = first_after - killed_at;
        failovers.push(failover);
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in writers {
            w.await.unwrap();
        }
        // The killed node restarts and catches up; every acknowledged write is everywhere.
        cluster.restart(leader);
        let acked = acked.lock().unwrap().clone();
        assert!(acked.len() > 50, "round {round}: only {} writes acknowledged", acked.len());
        for node in &cluster.nodes {
            let c = Client::connect(node.client, &cluster.admin).await.unwrap();
            // The restarted node needs the leader's commit first: wait on the highest token.
            for (_, _, token, ..) in &acked {
                c.set_session_token(token);
            }
            common::read_local(&c, "e2e", "probe", c.session_token(), Duration::from_secs(30))
                .await
                .unwrap_or_else(|| panic!("round {round}: node {} did not catch up within 30 s", node.id));
            for (key, value, ..) in &acked {
                let got = c.get("e2e", key, Consistency::Eventual).await.unwrap();
                assert_eq!(
                    got.as_deref(),
                    Some(value.as_slice()),
                    "round {round}: node {} lost {key}",
                    node.id
                );
            }
        }
        eprintln!(
            "round {round}: failover {failover:?}, {} acknowledged writes verified on 3 nodes",
            acked.len()
        );
    }
    failovers.sort();
    let p99 = failovers[(failovers.len() * 99).div_ceil(100) - 1];
    eprintln!("failover after SIGKILL: {} kills, p99 {p99:?}, all {failovers:?}", failovers.len());
    assert!(p99 <= Duration::from_millis(1500), "failover p99 {p99:?} is above 1.5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_joins_catches_up_is_promoted_and_a_node_is_removed() {
    let mut cluster = Cluster::start(3, 1);
    let leader = cluster.leader().await;
    let client = cluster.client(leader).await;
    for i in 0..200 {
        client.put("e2e", &format!("k{i}"), &doc(i)).await.unwrap();
    }
    cluster.restart(3);
    let (raft, addr) = (cluster.nodes[3].raft, cluster.nodes[3].client);
    client
        .admin(Request::AddLearner { id: 4, raft_addr: raft.to_string(), client_addr: addr.to_string() })
        .await
        .unwrap();
    let learner = Client::connect(addr, &cluster.admin).await.unwrap();
    assert_eq!(
        common::read_local(&learner, "e2e", "k199", client.session_token(), Duration::from_secs(30))
            .await
            .unwrap(),
        Some(doc(199))
    );
    client.admin(Request::Promote { id: 4 }).await.unwrap();
    let mut promoted = false;
    for _ in 0..100 {
        let status = client.status().await.unwrap();
        if status["status"]["voters"].as_array().unwrap().iter().any(|v| v == 4)
            && status["status"]["learners"].as_array().unwrap().is_empty()
        {
            promoted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(promoted, "node 4 was not promoted");
    // Remove a follower that is not node 4; the cluster keeps writing with it gone.
    let victim = (0..3).find(|&i| i != leader).unwrap();
    client.admin(Request::Remove { id: cluster.nodes[victim].id }).await.unwrap();
    cluster.kill(victim);
    client.put("e2e", "after-remove", &doc(7)).await.unwrap();
    assert_eq!(
        common::read_local(&learner, "e2e", "after-remove", client.session_token(), Duration::from_secs(30))
            .await
            .unwrap(),
        Some(doc(7))
    );
}

#[test]
fn a_bad_config_exits_with_code_2_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        format!(
            "node_id = 1\ndata_dir = \"{}\"\nraft_addr = \"127.0.0.1:1\"\nclient_addr = \"127.0.0.1:2\"\ninsecure_plaintext = true\n\
             [replication]\nmode = \"sync\"\nmin_sync_replicas = 0\n[[peers]]\nid = 1\nraft_addr = \"127.0.0.1:1\"\nclient_addr = \"127.0.0.1:2\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_themis-node")).arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("min_sync_replicas = 0"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_themis-node")).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_client_on_the_tls_port_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cluster = Cluster::start(3, 0);
    let mut tcp = tokio::net::TcpStream::connect(cluster.nodes[0].client).await.unwrap();
    let mut frame = Vec::new();
    let body = postcard::to_stdvec(&Request::Status).unwrap();
    frame.extend_from_slice(&(body.len() as u32 + 8).to_le_bytes());
    frame.extend_from_slice(&1u64.to_le_bytes());
    frame.extend_from_slice(&body);
    tcp.write_all(&frame).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&answer).contains("requires TLS 1.3"), "{answer:?}");
    // One connection with far more requests in flight than the per-connection bound
    // (1,024): the node reads them as answers free room, and every one is answered.
    let client = Arc::new(cluster.client(0).await);
    let gets: Vec<_> = (0..3000)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.get("e2e", &format!("k{i}"), Consistency::Eventual).await })
        })
        .collect();
    for get in gets {
        assert_eq!(get.await.unwrap().unwrap(), None);
    }
    // A client without the CA cannot connect either.
    let other_ca = themis_replication::ship::tls::generate_ca("other").unwrap();
    let err =
        Client::connect(cluster.nodes[0].client, &Credentials::tls(other_ca.cert.clone())).await.unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_follower_raises_a_heartbeat_alert_within_two_intervals_and_recovers() {
    let cluster = Cluster::start(3, 0);
    let leader = cluster.leader().await;
    let client = cluster.client(leader).await;
    client.put("e2e", "before", &doc(1)).await.unwrap();
    let victim = (0..3).find(|&i| i != leader).unwrap();
    let victim_id = cluster.nodes[victim].id;
    let pid = cluster.nodes[victim].child.as_ref().unwrap().id().to_string();
    let alerts_for = |status: &serde_json::Value, kind: &str| {
        status["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["alert"][kind]["id"] == victim_id)
            .map(|a| a["alert"][kind].clone())
            .collect::<Vec<_>>()
    };
    // SIGSTOP: the follower's process stays, its answers stop (a stalled, lagging replica).
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let stopped = Instant::now();
    let alert = loop {
        let status = client.status().await.unwrap();
        if let Some(alert) = alerts_for(&status, "MissingHeartbeats").pop() {
            break alert;
        }
        assert!(stopped.elapsed() < Duration::from_secs(3), "no alert within 3 s: {status}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let seen = stopped.elapsed();
    // Raised at the first tick with two heartbeat intervals (200 ms, 4 ticks) of silence.
    // The wall-clock bound leaves room for polling and a loaded machine.
    let silent_ms = alert["silent_ms"].as_u64().unwrap();
    assert!((200..=250).contains(&silent_ms), "alert after {silent_ms} ms of silence");
    assert!(seen <= Duration::from_secs(1), "alert seen {seen:?} after SIGSTOP");
    // Writes go on with the other follower; after SIGCONT the replica recovers.
    client.put("e2e", "during", &doc(2)).await.unwrap();
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = client.status().await.unwrap();
        if !alerts_for(&status, "Recovered").is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the replica did not recover: {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("heartbeat alert {seen:?} after SIGSTOP ({silent_ms} ms of silence)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines, reason = "one cluster, every route checked in turn")]
async fn the_http_admin_api_serves_cluster_operations_documents_topology_and_metrics() {
    let cluster = Cluster::start(3, 0);
    let ca = cluster.admin.clone();
    let l = cluster.leader().await;
    let f = (l + 1) % 3;
    let (leader, follower) = (cluster.nodes[l].admin, cluster.nodes[f].admin);

    // Every documented route exists (nothing answers "no such route" or 405).
    for (method, path) in themis_node::admin::ROUTES {
        let mut path = path.replace("{collection}", "probe").replace("{id}", "9");
        if path == "/v1/cdc/events" {
            // From past the end of the log: answered (416) instead of streaming forever.
            path = format!("{path}?from_lsn={}", u64::MAX);
        }
        let (status, _, body) = http(leader, &ca, method, &path, &[], "").await;
        assert!(status != 405 && !body.contains("no such route"), "{method} {path}: {status} {body}");
    }
    let (status, _, body) = http(leader, &ca, "GET", "/v1/nothing", &[], "").await;
    assert_eq!((status, json(&body)["code"].as_str()), (404, Some("not_found")));

    // Documents: write on the leader, read it back on a follower with the session token.
    let doc = r#"{"name":"Ada","born":1815}"#;
    let (status, headers, body) = http(leader, &ca, "PUT", "/v1/collections/users/docs/ada", &[], doc).await;
    assert_eq!(status, 200, "{body}");
    let token = headers["x-themis-session-token"].to_str().unwrap().to_string();
    assert_eq!(json(&body)["session_token"].as_str(), Some(token.as_str()));
    let lsn = json(&body)["lsn"].as_u64().unwrap();
    assert!(token.starts_with("s1."), "{body}");
    let path = "/v1/collections/users/docs/ada?consistency=session";
    let (status, headers, body) =
        http(follower, &ca, "GET", path, &[("x-themis-session-token", &token)], "").await;
    assert_eq!((status, body.as_str()), (200, doc));
    assert!(headers["x-themis-applied-lsn"].to_str().unwrap().parse::<u64>().unwrap() >= lsn);
    let (status, _, body) = http(leader, &ca, "GET", "/v1/collections/users/docs/ada", &[], "").await;
    assert_eq!((status, body.as_str()), (200, doc), "strong read on the leader");
    // A write to a follower names the leader.
    let (status, _, body) = http(follower, &ca, "PUT", "/v1/collections/users/docs/bob", &[], "{}").await;
    assert_eq!(status, 421, "{body}");
    assert_eq!(json(&body)["leader"], cluster.nodes[l].id);
    assert_eq!(json(&body)["leader_client_addr"], cluster.nodes[l].client.to_string());
    // Bad requests say what was wrong.
    for (method, path, headers, body, needle) in [
        ("PUT", "/v1/collections/users/docs/x", vec![], "{not json", "is not JSON"),
        (
            "GET",
            "/v1/collections/users/docs/x?consistency=later",
            vec![],
            "",
            "expected one of strong, bounded, session, prefix, eventual",
        ),
        (
            "GET",
            "/v1/collections/users/docs/x?consistency=session",
            vec![("x-themis-session-token", "soon")],
            "",
            "session token \"soon\"",
        ),
        ("PUT", "/v1/cluster/mode", vec![], r#"{"mode":"eventually"}"#, "mode = \"eventually\""),
        ("PUT", "/v1/cluster/mode", vec![], r#"{"mood":"sync"}"#, "unknown field"),
        (
            "POST",
            "/v1/cluster/members",
            vec![],
            r#"{"id":4,"raft_addr":"x","client_addr":"y"}"#,
            "raft_addr = \"x\"",
        ),
        ("DELETE", "/v1/cluster/members/zero", vec![], "", "node id \"zero\""),
        ("POST", "/v1/cluster/transfer", vec![], "[]", "example"),
    ] {
        let (status, _, text) = http(leader, &ca, method, path, &headers, body).await;
        let err = json(&text);
        assert_eq!((status, err["code"].as_str()), (400, Some("bad_request")), "{method} {path}: {text}");
        assert!(err["message"].as_str().unwrap().contains(needle), "{needle}: {text}");
    }
    // Membership operations on nodes that are not what they need are refused, not made.
    for (method, path, needle) in [
        ("DELETE", "/v1/cluster/members/9", "node 9 is not a member"),
        ("POST", "/v1/cluster/members/9/promote", "node 9 is not a learner"),
        ("POST", &format!("/v1/cluster/members/{}/promote", cluster.nodes[f].id), "is not a learner"),
    ] {
        let (status, _, text) = http(leader, &ca, method, path, &[], "").await;
        assert_eq!((status, json(&text)["code"].as_str()), (409, Some("refused")), "{path}: {text}");
        assert!(text.contains(needle), "{needle}: {text}");
    }
    let (status, _, body) = http(leader, &ca, "GET", "/v1/collections/users/docs/nobody", &[], "").await;
    assert_eq!((status, json(&body)["code"].as_str()), (404, Some("not_found")));
    let (status, _, _) = http(leader, &ca, "DELETE", "/v1/collections/users/docs/ada", &[], "").await;
    assert_eq!(status, 200);

    // The mode changes at run time and every node reports it.
    let (status, _, body) =
        http(leader, &ca, "PUT", "/v1/cluster/mode", &[], r#"{"mode":"sync","min_sync_replicas":2}"#).await;
    assert_eq!(status, 200, "{body}");
    for node in &cluster.nodes {
        let mut seen = String::new();
        for _ in 0..50 {
            let (_, _, body) = http(node.admin, &ca, "GET", "/v1/cluster/status", &[], "").await;
            seen = json(&body)["status"]["mode"].as_str().unwrap().to_string();
            if seen.starts_with("SYNC") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(seen.starts_with("SYNC"), "node {}: {seen}", node.id);
    }

    // The topology names every node with its role, and the leader's links with their lag.
    let (status, _, body) = http(leader, &ca, "GET", "/v1/cluster/topology", &[], "").await;
    assert_eq!(status, 200);
    let topology = json(&body);
    assert_eq!(topology["complete"], true);
    assert_eq!(topology["leader"], cluster.nodes[l].id);
    assert_eq!(topology["nodes"].as_array().unwrap().len(), 3, "{topology}");
    assert_eq!(topology["links"].as_array().unwrap().len(), 2, "{topology}");
    let roles: Vec<&str> =
        topology["nodes"].as_array().unwrap().iter().map(|n| n["role"].as_str().unwrap()).collect();
    assert_eq!(roles.iter().filter(|r| **r == "leader").count(), 1, "{roles:?}");
    let version = topology["version"].as_u64().unwrap();

    // Metrics: LSNs, the fsync histogram, requests, per-replica lag, bytes shipped.
    let (status, headers, text) = http(leader, &ca, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    assert!(headers["content-type"].to_str().unwrap().contains("openmetrics"));
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    assert!(metric(&text, "themis_commit_lsn").unwrap() >= 3.0, "{text}");
    assert!(metric(&text, "themis_applied_lsn").unwrap() >= 1.0, "{text}");
    assert_eq!(metric(&text, "themis_is_leader"), Some(1.0));
    assert!(metric(&text, "themis_wal_fsync_seconds_count").unwrap() >= 1.0, "{text}");
    assert!(metric(&text, "themis_proposals_total").unwrap() >= 3.0, "{text}");
    assert!(
        metric(&text, "themis_client_requests_total{op=\"put\",outcome=\"ok\"}").unwrap() >= 1.0,
        "{text}"
    );
    assert!(metric(&text, "themis_shipped_wire_bytes_total").unwrap() > 0.0, "{text}");
    assert!(metric(&text, "themis_compression_ratio").unwrap() > 0.0, "{text}");
    let other = cluster.nodes[f].id;
    assert!(metric(&text, &format!("themis_replica_lag_lsns{{replica=\"{other}\"}}")).is_some(), "{text}");

    // Leadership moves by request; the topology version moves with it.
    let to = cluster.nodes[f].id;
    let (status, _, body) =
        http(leader, &ca, "POST", "/v1/cluster/transfer", &[], &format!(r#"{{"to":{to}}}"#)).await;
    assert_eq!(status, 200, "{body}");
    let mut moved = false;
    for _ in 0..100 {
        let (_, _, body) = http(follower, &ca, "GET", "/v1/cluster/status", &[], "").await;
        if json(&body)["status"]["role"] == "Leader" {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(moved, "node {to} did not take over within 5 s");
    let (_, _, body) = http(follower, &ca, "GET", "/v1/cluster/topology", &[], "").await;
    assert!(json(&body)["version"].as_u64().unwrap() >= 1);
    let (_, _, body) = http(leader, &ca, "GET", "/v1/cluster/topology", &[], "").await;
    assert!(json(&body)["version"].as_u64().unwrap() > version, "{body}");
    let (_, _, text) = http(follower, &ca, "GET", "/metrics", &[], "").await;
    assert!(metric(&text, "themis_failovers_total").unwrap() >= 2.0, "{text}");

    // A plaintext HTTP client on the TLS admin port gets no answer.
    let mut tcp = tokio::net::TcpStream::connect(leader).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut tcp, b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut buf),
    )
    .await;
    assert!(!String::from_utf8_lossy(&buf).contains("themis_"), "{read:?}");
}
