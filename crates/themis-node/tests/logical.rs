//! Logical replication slots end to end: real `themis-node` processes, the HTTP routes,
//! slots replicated through the log and served after the leader is killed (SIGKILL), a
//! node killed mid-stream and restarted, DDL, initial sync under concurrent writes, and
//! the bad paths.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use base64::Engine as _;
use common::{Cluster, http, json};
use serde_json::{Value, json};
use themis_node::Credentials;
use themis_node::admin_client::AdminClient;
use themis_node::auth::{Role, hs256_scoped_token};

fn with_before_images(mut text: String) -> String {
    text.push_str("\n[cdc]\nbefore_images = [\"orders\"]\n");
    text
}

fn admin(cluster: &Cluster) -> AdminClient {
    AdminClient::new(cluster.nodes.iter().map(|n| n.admin).collect(), cluster.admin.clone())
}

async fn call(client: &mut AdminClient, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let answer = client.request(method, path, body.as_ref()).await.unwrap();
    (answer.status, answer.json())
}

async fn ok(client: &mut AdminClient, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, body) = call(client, method, path, body).await;
    assert!((200..300).contains(&status), "{method} {path}: {status} {body}");
    body
}

/// Reads the slot until `want` changes arrived or a read comes back empty; returns
/// (collection/id keys, the last confirm LSN).
async fn drain(client: &mut AdminClient, slot: &str, max: usize, want: usize) -> (Vec<String>, u64) {
    let mut keys = Vec::new();
    let mut confirm = 0;
    for _ in 0..200 {
        let read = ok(client, "GET", &format!("/v1/slots/{slot}/changes?max={max}&wait_ms=500"), None).await;
        confirm = read["confirm_lsn"].as_u64().unwrap_or(confirm);
        let changes = read["changes"].as_array().unwrap();
        for c in changes {
            keys.push(format!(
                "{}:{}/{}",
                c["action"].as_str().unwrap(),
                c["collection"].as_str().unwrap(),
                c["id"].as_str().unwrap_or("")
            ));
        }
        if keys.len() >= want || changes.is_empty() {
            break;
        }
    }
    (keys, confirm)
}

async fn slot_on(cluster: &Cluster, node: usize, slot: &str) -> Option<Value> {
    let (status, _, body) =
        http(cluster.nodes[node].admin, &cluster.admin, "GET", &format!("/v1/slots/{slot}"), &[], "").await;
    (status == 200).then(|| json(&body))
}

/// Waits until node `node` holds slot `slot` confirmed at `lsn` at least.
async fn wait_confirmed(cluster: &Cluster, node: usize, slot: &str, lsn: u64) -> Value {
    for _ in 0..200 {
        if let Some(info) = slot_on(cluster, node, slot).await
            && info["confirmed_flush_lsn"].as_u64().unwrap() >= lsn
        {
            return info;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("node {node} did not reach slot {slot} confirmed at {lsn}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_are_replicated_and_the_new_leader_resumes_after_the_confirmed_lsn() {
    let mut cluster = Cluster::start_with(3, 0, with_before_images);
    let leader = cluster.leader().await;
    let mut admin = admin(&cluster);
    let config = json!({"name": "tenant_acme", "plugin": "json", "include": ["orders"],
        "predicate": "tenant == 'acme'"});
    let (status, created) = call(&mut admin, "POST", "/v1/slots", Some(config.clone())).await;
    assert_eq!(status, 201, "{created}");
    let (status, body) = call(&mut admin, "POST", "/v1/slots", Some(config)).await;
    assert_eq!(status, 409, "{body}");
    // Every node holds the slot, with a WAL hold.
    for node in 0..3 {
        wait_confirmed(&cluster, node, "tenant_acme", 0).await;
    }
    let client = cluster.client(leader).await;
    for i in 0..40 {
        let tenant = if i % 2 == 0 { "acme" } else { "globex" };
        client
            .put("orders", &format!("o{i:02}"), format!(r#"{{"tenant":"{tenant}","i":{i}}}"#).as_bytes())
            .await
            .unwrap();
    }
    client.put("users", "u1", br#"{"tenant":"acme"}"#).await.unwrap();
    // Moving a document out of the predicate (a before-image is logged) is a delete.
    client.put("orders", "o00", br#"{"tenant":"globex"}"#).await.unwrap();

    let (first, confirm) = drain(&mut admin, "tenant_acme", 8, 8).await;
    assert_eq!(first.len(), 8);
    assert!(first.iter().all(|k| k.starts_with("I:orders/")), "{first:?}");
    ok(&mut admin, "POST", "/v1/slots/tenant_acme/advance", Some(json!({"lsn": confirm}))).await;
    // Read more without confirming, then kill the leader.
    let (unconfirmed, _) = drain(&mut admin, "tenant_acme", 5, 5).await;
    assert_eq!(unconfirmed.len(), 5);
    for node in 0..3 {
        wait_confirmed(&cluster, node, "tenant_acme", confirm).await;
    }
    cluster.kill(leader);
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    // The new leader starts after the confirmed LSN: nothing confirmed comes again, the
    // unconfirmed reads do, and nothing is missing.
    let (rest, last) = drain(&mut admin, "tenant_acme", 100, 100).await;
    assert_eq!(rest[..5], unconfirmed[..], "what was read and not confirmed is delivered again");
    let mut all: Vec<String> = first.clone();
    all.extend(rest.iter().cloned());
    let inserts: BTreeSet<&String> = all.iter().filter(|k| k.starts_with("I:")).collect();
    assert_eq!(inserts.len(), 20, "every acme order exactly once: {all:?}");
    assert_eq!(all.len(), 21, "{all:?}");
    assert_eq!(all.last().unwrap(), "D:orders/o00");
    ok(&mut admin, "POST", "/v1/slots/tenant_acme/advance", Some(json!({"lsn": last}))).await;

    // The killed node comes back and catches up on the slot's position.
    cluster.restart(leader);
    let info = wait_confirmed(&cluster, leader, "tenant_acme", last).await;
    assert_eq!(info["wal_status"], "reserved");
    // Drop: gone on every node, the WAL hold with it.
    ok(&mut admin, "DELETE", "/v1/slots/tenant_acme", None).await;
    for node in 0..3 {
        for _ in 0..100 {
            if slot_on(&cluster, node, "tenant_acme").await.is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(slot_on(&cluster, node, "tenant_acme").await.is_none(), "node {node} still holds it");
    }
    let (status, _) = call(&mut admin, "DELETE", "/v1/slots/tenant_acme", None).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_stream_restarts_with_its_slot_and_loses_nothing() {
    let mut cluster = Cluster::start(1, 0);
    cluster.leader().await;
    let mut admin = admin(&cluster);
    ok(&mut admin, "POST", "/v1/slots", Some(json!({"name": "all", "plugin": "json"}))).await;
    let client = cluster.client(0).await;
    for i in 0..30 {
        client.put("c", &format!("{i:02}"), b"{}").await.unwrap();
    }
    let (first, confirm) = drain(&mut admin, "all", 10, 10).await;
    assert!(first.len() >= 10, "{first:?}");
    ok(&mut admin, "POST", "/v1/slots/all/advance", Some(json!({"lsn": confirm}))).await;
    drain(&mut admin, "all", 5, 5).await;
    let state_dir = cluster.dir.path().join("data-1");
    let files: Vec<_> =
        walk(&state_dir).into_iter().filter(|p| p.ends_with("logical_slots/all.slot")).collect();
    assert_eq!(files.len(), 1, "the slot's state file lies under the WAL directory");
    cluster.kill(0);
    cluster.restart(0);
    cluster.leader().await;
    let info = wait_confirmed(&cluster, 0, "all", confirm).await;
    assert_eq!(info["confirmed_flush_lsn"], confirm);
    for i in 30..35 {
        cluster.client(0).await.put("c", &format!("{i:02}"), b"{}").await.unwrap();
    }
    let (rest, _) = drain(&mut admin, "all", 100, 25).await;
    let mut keys: Vec<String> = first.into_iter().chain(rest).collect();
    let expected: Vec<String> = (0..35).map(|i| format!("I:c/{i:02}")).collect();
    keys.sort();
    assert_eq!(keys, expected, "after the restart the slot goes on from its confirmed LSN");

    // Idle, a consumer that keeps reading and confirming, and the leader's upkeep, do not
    // grow the log: a confirmation over nothing for the slot is not written through it.
    let last_lsn = |status: Value| status["status"]["last_lsn"].as_u64().unwrap();
    let (_, confirm) = drain(&mut admin, "all", 100, 100).await;
    ok(&mut admin, "POST", "/v1/slots/all/advance", Some(json!({"lsn": confirm}))).await;
    // The restart began a WAL segment: the leader's upkeep writes the slot's position
    // once, so followers could free the old one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = last_lsn(ok(&mut admin, "GET", "/v1/cluster/status", None).await);
    for _ in 0..10 {
        let read = ok(&mut admin, "GET", "/v1/slots/all/changes?max=10", None).await;
        assert_eq!(read["count"], 0, "{read}");
        let lsn = read["confirm_lsn"].as_u64().unwrap();
        ok(&mut admin, "POST", "/v1/slots/all/advance", Some(json!({"lsn": lsn}))).await;
    }
    tokio::time::sleep(Duration::from_secs(7)).await;
    let after = last_lsn(ok(&mut admin, "GET", "/v1/cluster/status", None).await);
    assert_eq!(after, before, "an idle slot wrote to the log");
    assert_eq!(ok(&mut admin, "GET", "/v1/slots/all", None).await["lag_lsn"], 0);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_is_replicated_applied_and_delivered_and_bad_requests_are_refused() {
    let cluster = Cluster::start(3, 0);
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let mut admin = admin(&cluster);
    ok(
        &mut admin,
        "POST",
        "/v1/slots",
        Some(json!({"name": "orders_only", "plugin": "json", "include": ["orders"]})),
    )
    .await;
    ok(
        &mut admin,
        "POST",
        "/v1/slots",
        Some(json!({"name": "no_ddl", "plugin": "json", "replicate_ddl": false})),
    )
    .await;
    let created =
        ok(&mut admin, "POST", "/v1/ddl", Some(json!({"statement": "create collection users"}))).await;
    assert_eq!(created["statement"], "CREATE COLLECTION users");
    let client = cluster.client(leader).await;
    client.put("users", "u1", b"{}").await.unwrap();
    client.put("users", "u2", b"{}").await.unwrap();
    ok(
        &mut admin,
        "POST",
        "/v1/ddl",
        Some(json!({"statement": "ALTER COLLECTION users SET SCHEMA VERSION 2"})),
    )
    .await;
    client.put("orders", "o1", b"{}").await.unwrap();
    ok(&mut admin, "POST", "/v1/ddl", Some(json!({"statement": "DROP COLLECTION users"}))).await;
    // The drop removed the collection's documents on every node.
    for node in 0..3 {
        let c = cluster.client(node).await;
        for _ in 0..100 {
            if c.get("users", "u1", themis_node::Consistency::Eventual).await.unwrap().is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            c.get("users", "u1", themis_node::Consistency::Eventual).await.unwrap().is_none(),
            "node {node}"
        );
    }
    let (keys, _) = drain(&mut admin, "orders_only", 100, 4).await;
    assert_eq!(keys, ["T:users/", "T:users/", "I:orders/o1", "T:users/"], "DDL passes the collection filter");
    let (keys, _) = drain(&mut admin, "no_ddl", 100, 3).await;
    assert_eq!(keys, ["I:users/u1", "I:users/u2", "I:orders/o1"]);
    let listed = ok(&mut admin, "GET", "/v1/collections", None).await;
    assert_eq!(listed["collections"], json!([]), "users was dropped");
    // Slot changes carry the schema version in force.
    ok(&mut admin, "POST", "/v1/ddl", Some(json!({"statement": "CREATE COLLECTION orders"}))).await;
    ok(
        &mut admin,
        "POST",
        "/v1/ddl",
        Some(json!({"statement": "ALTER COLLECTION orders SET SCHEMA VERSION 4"})),
    )
    .await;
    client.put("orders", "o2", b"{}").await.unwrap();
    let read = ok(&mut admin, "GET", "/v1/slots/orders_only/changes?max=10&wait_ms=1000", None).await;
    let last = read["changes"].as_array().unwrap().last().unwrap().clone();
    assert_eq!((last["id"].clone(), last["schema_version"].clone()), (json!("o2"), json!(4)), "{read}");

    bad_requests_are_refused(&cluster, &mut admin, leader, follower).await;
}

/// Bad requests: each refused with a status and a message that says why; pause, schemas
/// and token scopes.
async fn bad_requests_are_refused(
    cluster: &Cluster,
    admin: &mut AdminClient,
    leader: usize,
    follower: usize,
) {
    let a = cluster.nodes[leader].admin;
    let f = cluster.nodes[follower].admin;
    let creds = &cluster.admin;
    let cases: Vec<(std::net::SocketAddr, &str, &str, &str, u16, &str)> = vec![
        (a, "POST", "/v1/slots", r#"{"name":"x","plugin":"json","predicate":"a = 1"}"#, 400, "column 3"),
        (a, "POST", "/v1/slots", r#"{"name":"Bad-Name","plugin":"json"}"#, 400, "a-z"),
        (a, "POST", "/v1/slots", r#"{"name":"x","plugin":"yaml"}"#, 400, "slot configuration"),
        (a, "POST", "/v1/slots", r#"{"name":"x","plugin":"json","include":["a{"]}"#, 400, "a{"),
        (a, "POST", "/v1/slots", r#"{"name":"x","plugin":"json","transform":{"hook":"h"}}"#, 400, "hooks"),
        (a, "POST", "/v1/slots", r#"{"name":"x","plugin":"json","surprise":1}"#, 400, "surprise"),
        (a, "GET", "/v1/slots/nope", "", 404, "nope"),
        (a, "GET", "/v1/slots/orders_only/changes?max=0", "", 400, "max = 0"),
        (a, "GET", "/v1/slots/orders_only/changes?wait_ms=99999", "", 400, "wait_ms"),
        (f, "GET", "/v1/slots/orders_only/changes", "", 421, "leader"),
        (f, "POST", "/v1/slots/orders_only/pause", "", 421, "leader"),
        (a, "POST", "/v1/slots/orders_only/advance", r#"{"lsn":999999999}"#, 416, "cannot advance"),
        (a, "POST", "/v1/slots/orders_only/advance", r#"{"lsn":"x"}"#, 400, "lsn"),
        (a, "POST", "/v1/ddl", r#"{"statement":"TRUNCATE COLLECTION x"}"#, 400, "expected CREATE"),
        (a, "POST", "/v1/ddl", r#"{"statement":"CREATE COLLECTION orders"}"#, 409, "exists"),
        (a, "POST", "/v1/ddl", r#"{"statement":"DROP COLLECTION ghosts"}"#, 404, "never created"),
        (a, "POST", "/v1/ddl", r#"{"statement":"CREATE COLLECTION _themis_slots"}"#, 400, "node's own"),
        (a, "GET", "/v1/logical/schemas/ids/7", "", 404, "no schema"),
    ];
    for (addr, method, path, body, status, fragment) in cases {
        let (got, _, text) =
            http(addr, creds, method, path, &[("content-type", "application/json")], body).await;
        assert_eq!(got, status, "{method} {path} {body}: {text}");
        assert!(text.contains(fragment), "{method} {path} {body}: {text}");
    }
    // Pause: reads refused, the WAL still held; resume: reads again.
    ok(admin, "POST", "/v1/slots/orders_only/pause", None).await;
    let (status, body) = call(admin, "GET", "/v1/slots/orders_only/changes", None).await;
    assert_eq!(status, 409, "{body}");
    ok(admin, "POST", "/v1/slots/orders_only/resume", None).await;
    // Schemas for the binary plugins.
    let (_, _, avro) = http(a, creds, "GET", "/v1/logical/schemas/ids/1", &[], "").await;
    assert!(json(&avro)["schema"].as_str().unwrap().contains("ChangeRecord"));
    let (_, _, proto) = http(a, creds, "GET", "/v1/logical/schemas/protobuf", &[], "").await;
    assert!(proto.contains("message ChangeMessage"));
    // A token scoped to other collections may not read a slot of orders.
    let secret = std::fs::read(&cluster.jwt_secret_file).unwrap();
    let token =
        hs256_scoped_token(&secret, "acme-reader", Role::Write, 300, Some(vec!["users".into()])).unwrap();
    let scoped = Credentials::tls(cluster.ca.clone()).with_token(&token);
    let (status, _, body) = http(a, &scoped, "GET", "/v1/slots/orders_only/changes", &[], "").await;
    assert_eq!(status, 403, "{body}");
    let (status, _, body) =
        http(a, &scoped, "POST", "/v1/slots", &[], r#"{"name":"y","plugin":"json"}"#).await;
    assert_eq!(status, 403, "creating slots takes the admin role: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_sync_under_concurrent_writes_builds_an_equal_replica_and_binary_plugins_decode() {
    let cluster = Cluster::start(3, 0);
    let leader = cluster.leader().await;
    let client = cluster.client(leader).await;
    for i in 0..500 {
        client.put("items", &format!("k{i:03}"), format!(r#"{{"v":{i}}}"#).as_bytes()).await.unwrap();
    }
    let mut admin = admin(&cluster);
    let created = ok(
        &mut admin,
        "POST",
        "/v1/slots",
        Some(json!({"name": "replica", "plugin": "json", "initial_sync": true})),
    )
    .await;
    assert!(created["snapshot_lsn"].is_u64(), "{created}");
    ok(
        &mut admin,
        "POST",
        "/v1/slots",
        Some(json!({"name": "proto", "plugin": "protobuf", "include": ["items"]})),
    )
    .await;
    // Writers keep changing the same documents during the snapshot.
    let writers = {
        let client = cluster.client(leader).await;
        tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(5);
            for step in 0..400u32 {
                let key = format!("k{:03}", rng.u32(0..520));
                if rng.u8(0..5) == 0 {
                    client.delete("items", &key).await.unwrap();
                } else {
                    client.put("items", &key, format!(r#"{{"v":"w{step}"}}"#).as_bytes()).await.unwrap();
                }
            }
        })
    };
    let mut replica: BTreeMap<String, Value> = BTreeMap::new();
    let mut snapshot_rows = 0;
    let mut done_writing = false;
    for _ in 0..1000 {
        let read = ok(&mut admin, "GET", "/v1/slots/replica/changes?max=50&wait_ms=300", None).await;
        for c in read["changes"].as_array().unwrap() {
            let id = c["id"].as_str().unwrap().to_string();
            match c["action"].as_str().unwrap() {
                "D" => {
                    replica.remove(&id);
                }
                "R" => {
                    snapshot_rows += 1;
                    replica.insert(id, c["data"].clone());
                }
                _ => {
                    replica.insert(id, c["data"].clone());
                }
            }
        }
        if let Some(lsn) = read["confirm_lsn"].as_u64() {
            ok(&mut admin, "POST", "/v1/slots/replica/advance", Some(json!({"lsn": lsn}))).await;
        }
        done_writing = done_writing || writers.is_finished();
        if done_writing && read["count"] == 0 && read["snapshot"] == false {
            break;
        }
    }
    writers.await.unwrap();
    assert!(snapshot_rows >= 400, "{snapshot_rows}");
    let mut source = BTreeMap::new();
    for i in 0..520 {
        let key = format!("k{i:03}");
        if let Some(doc) = client.get("items", &key, themis_node::Consistency::Strong).await.unwrap() {
            source.insert(key, serde_json::from_slice::<Value>(&doc).unwrap());
        }
    }
    assert_eq!(replica, source, "the replica built from the slot equals the source, document by document");
    let info = ok(&mut admin, "GET", "/v1/slots/replica", None).await;
    assert!(info["snapshot_lsn"].is_null(), "{info}");

    // The protobuf slot's records are base64 ChangeMessages.
    let read = ok(&mut admin, "GET", "/v1/slots/proto/changes?max=5", None).await;
    let records = read["records"].as_array().unwrap();
    assert_eq!(records.len(), 5);
    for r in records {
        let bytes = base64::engine::general_purpose::STANDARD.decode(r.as_str().unwrap()).unwrap();
        let m: themis_replication::logical::ChangeMessage = prost::Message::decode(&bytes[..]).unwrap();
        assert_eq!(m.collection, "items");
        assert!(m.data_json.is_some() || m.action == "D");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_past_max_slot_wal_keep_size_is_lost_on_every_node_and_its_reader_told() {
    // Snapshots every 64 entries compact the log past an unread slot; the WAL it then
    // holds (a 64 MiB segment) is over the 1 MiB bound.
    let cluster = Cluster::start_with(3, 0, |text| {
        let text = text.replace("[replication]\n", "[replication]\nsnapshot_entries = 64\n");
        format!("{text}\n[logical]\nmax_slot_wal_keep_size_mb = 1\n")
    });
    let leader = cluster.leader().await;
    let mut admin = admin(&cluster);
    ok(&mut admin, "POST", "/v1/slots", Some(json!({"name": "slow", "plugin": "json"}))).await;
    let info = ok(&mut admin, "GET", "/v1/slots/slow", None).await;
    assert_eq!(info["wal_status"], "reserved", "{info}");
    let client = cluster.client(leader).await;
    for i in 0..200 {
        client.put("c", &format!("{i}"), b"{}").await.unwrap();
    }
    for node in 0..3 {
        let mut lost = None;
        for _ in 0..100 {
            if let Some(info) = slot_on(&cluster, node, "slow").await
                && info["wal_status"] == "lost"
            {
                lost = Some(info);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let info = lost.unwrap_or_else(|| panic!("node {node} did not mark the slot lost"));
        assert_eq!(info["lost"], true, "{info}");
    }
    let (status, body) = call(&mut admin, "GET", "/v1/slots/slow/changes", None).await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["code"], "slot_lost");
    assert!(body["message"].as_str().unwrap().contains("max_slot_wal_keep_size"), "{body}");
    let (_, _, metrics) = http(cluster.nodes[leader].admin, &cluster.admin, "GET", "/metrics", &[], "").await;
    assert!(metrics.contains("themis_logical_slot_wal_status{slot=\"slow\"} 2"), "{metrics}");
}
