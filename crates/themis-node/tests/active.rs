//! Active-active between two real 3-node clusters, `us-west` and `us-east`, each its own
//! Raft group: each links to the other through the testkit's proxy (25 ms each way); writers on both sides
//! write overlapping keys while the links are cut and restored and both leaders are
//! killed. Afterwards both clusters hold the same documents, each key's value is the same
//! on both, every conflict was settled last-writer-wins and recorded with the value that
//! lost, and a link refuses what it must (a cluster that does not stamp its writes, a
//! link to itself).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Cluster, http, json};
use themis_node::auth::{Role, hs256_token};
use themis_node::{Client, Consistency};
use themis_testkit::proxy::{Fault, Proxy};

const KEYS: u64 = 40;
/// Increments each side makes to the shared counter.
const INCREMENTS: u64 = 60;

fn enabled(text: String) -> String {
    #![allow(clippy::needless_pass_by_value, reason = "the shape Cluster::start_named takes")]
    // `hits` holds counters: concurrent versions merge instead of one winning; `both`
    // keeps concurrent versions side by side.
    format!(
        "{text}\n[active_active]\nenabled = true\n[active_active.resolver.default]\nstrategy = \"last_writer_wins\"\n\
         [active_active.resolver.collections.hits]\nstrategy = \"crdt\"\ncrdt_type = \"g_counter\"\n\
         [active_active.resolver.collections.both]\nstrategy = \"keep_both\"\n"
    )
}

/// Files for reaching `remote` from the other cluster: its CA and an admin token of its
/// own (a link creates a slot on the remote to hold its log; reading needs only `read`).
fn remote_files(remote: &Cluster, dir: &std::path::Path, name: &str) -> (String, String) {
    let ca = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&ca, &remote.ca).unwrap();
    let secret = std::fs::read(&remote.jwt_secret_file).unwrap();
    let token = dir.join(format!("{name}.token"));
    std::fs::write(&token, hs256_token(&secret, "link", Role::Admin, 3600).unwrap()).unwrap();
    (ca.display().to_string(), token.display().to_string())
}

/// One way between the two regions: 25 ms (a 50 ms round trip).
const ONE_WAY: Duration = Duration::from_millis(25);

/// Proxies in front of `remote`'s admin APIs, 25 ms each way (so a link crosses a 50 ms
/// round trip, and the test can cut it).
async fn proxies(remote: &Cluster) -> Vec<Proxy> {
    let mut out = Vec::new();
    for node in &remote.nodes {
        let proxy = Proxy::start(node.admin).await.unwrap();
        proxy.set(Fault::Delay(ONE_WAY));
        out.push(proxy);
    }
    out
}

async fn link(
    local: &Cluster,
    leader: usize,
    remote: &str,
    addrs: &[Proxy],
    files: &(String, String),
) -> (u16, String) {
    let addrs: Vec<String> = addrs.iter().map(|p| p.addr().to_string()).collect();
    let body = serde_json::json!({
        "name": format!("from-{remote}"),
        "remote_cluster": remote,
        "addrs": addrs,
        "ca_file": files.0,
        "token_file": files.1,
    });
    let (code, _, text) =
        http(local.nodes[leader].admin, &local.admin, "POST", "/v1/links", &[], &body.to_string()).await;
    (code, text)
}

/// Links `west` and `east` both ways through proxies (25 ms each way); returns the
/// proxies in front of each and the directory holding the CA and token files.
async fn link_both(west: &Cluster, east: &Cluster) -> (Vec<Proxy>, Vec<Proxy>, tempfile::TempDir) {
    let (wl, el) = (west.leader().await, east.leader().await);
    let files_dir = tempfile::tempdir().unwrap();
    let (to_east, to_west) = (proxies(east).await, proxies(west).await);
    let (code, text) =
        link(west, wl, "us-east", &to_east, &remote_files(east, files_dir.path(), "east")).await;
    assert_eq!(code, 200, "{text}");
    let (code, text) =
        link(east, el, "us-west", &to_west, &remote_files(west, files_dir.path(), "west")).await;
    assert_eq!(code, 200, "{text}");
    (to_east, to_west, files_dir)
}

async fn links(cluster: &Cluster) -> serde_json::Value {
    for i in 0..cluster.nodes.len() {
        if cluster.nodes[i].child.is_none() {
            continue;
        }
        let (code, _, text) = http(cluster.nodes[i].admin, &cluster.admin, "GET", "/v1/links", &[], "").await;
        if code == 200 {
            let v = json(&text);
            if v["links"][0]["state"] != "standby" {
                return v;
            }
        }
    }
    serde_json::json!({})
}

/// Writes `value(n)` to a key drawn from `seed` until `stop`, through `client` (which
/// follows the leader); returns every write tried (acknowledged or not: one whose answer
/// was lost may have committed) and whether it was acknowledged.
async fn writer(
    client: Arc<Client>,
    side: &'static str,
    seed: u64,
    until: Instant,
) -> Vec<(String, String, bool)> {
    let mut rng = seed;
    let mut done = Vec::new();
    let mut n = 0;
    while Instant::now() < until {
        rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let key = format!("k{}", (rng >> 33) % KEYS);
        let value = format!(r#"{{"side":"{side}","seed":{seed},"n":{n}}}"#);
        n += 1;
        let ok = client.put("shared", &key, value.as_bytes()).await.is_ok();
        done.push((key, value, ok));
        if !ok {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    done
}

/// Counts `side`'s slot of the counter `hits/h` up to `n`, one increment at a time (read,
/// raise its own slot, write; a write whose answer is lost is tried again with the same
/// count, so each increment counts once).
async fn incrementer(client: Arc<Client>, side: &'static str, n: u64) {
    for i in 1..=n {
        loop {
            let current = client.get("hits", "h", Consistency::Strong).await;
            let Ok(current) = current else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let mut counts: BTreeMap<String, u64> =
                current.map(|v| serde_json::from_slice(&v).unwrap()).unwrap_or_default();
            counts.insert(side.to_string(), i);
            if client.put("hits", "h", &serde_json::to_vec(&counts).unwrap()).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Each key holds a value a client tried to write to it; a key with an acknowledged
/// write exists (nothing deletes).
fn check_values(
    held: &BTreeMap<String, Option<String>>,
    written: &BTreeMap<String, BTreeSet<String>>,
    acked: &BTreeSet<String>,
) {
    for (k, v) in held {
        match (v, written.get(k)) {
            (Some(v), Some(values)) => assert!(values.contains(v), "{k} holds {v}, which no client wrote"),
            (Some(v), None) => panic!("{k} holds {v}, but no client wrote {k}"),
            (None, _) => assert!(!acked.contains(k), "{k} had an acknowledged write, so it exists"),
        }
    }
}

/// Every key's value on `cluster`, read from its leader.
async fn contents(cluster: &Cluster) -> BTreeMap<String, Option<String>> {
    let leader = cluster.leader().await;
    let client = cluster.client(leader).await;
    let mut out = BTreeMap::new();
    for k in 0..KEYS {
        let key = format!("k{k}");
        let value = client.get("shared", &key, Consistency::Strong).await.unwrap();
        out.insert(key, value.map(|v| String::from_utf8(v).unwrap()));
    }
    out
}

/// Writes in turn, each side waiting to see the other's before writing over it: each
/// follows the last, so none is a conflict.
async fn writes_in_turn(west: &Cluster, wl: usize, east: &Cluster, el: usize) {
    let (wc, ec) = (west.client(wl).await, east.client(el).await);
    for round in 0..6 {
        let (writer, reader, side) = if round % 2 == 0 { (&wc, &ec, "west") } else { (&ec, &wc, "east") };
        let value = format!(r#"{{"turn":{round},"side":"{side}"}}"#);
        writer.put("turns", "t", value.as_bytes()).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while reader.get("turns", "t", Consistency::Strong).await.unwrap().as_deref()
            != Some(value.as_bytes())
        {
            assert!(Instant::now() < deadline, "turn {round} did not cross within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for cluster in [west, east] {
        assert_eq!(links(cluster).await["conflicts_total"], 0, "writes in turn never conflict");
    }
}

/// Waits (30 s at most) until both links say they are synchronized and both clusters
/// hold the same documents.
async fn converge(west: &Cluster, east: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (w, e) = (links(west).await, links(east).await);
        let synced = |v: &serde_json::Value| v["links"][0]["is_synchronized"] == true;
        if synced(&w) && synced(&e) && contents(west).await == contents(east).await {
            break;
        }
        if Instant::now() >= deadline {
            let (cw, ce) = (contents(west).await, contents(east).await);
            let differ: Vec<_> = cw
                .iter()
                .filter(|(k, v)| ce.get(*k) != Some(v))
                .map(|(k, v)| (k, v, &ce[k]))
                .take(5)
                .collect();
            panic!("not converged within 30 s:\nwest {w}\neast {e}\ndiffer: {differ:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every conflict on `clusters` was settled last-writer-wins, and its loser, a value a
/// client wrote, is in the record; returns how many there were.
async fn check_conflicts(clusters: &[&Cluster], written: &BTreeMap<String, BTreeSet<String>>) -> usize {
    let mut conflicts = 0;
    for cluster in clusters {
        let leader = cluster.leader().await;
        let (code, _, text) = http(
            cluster.nodes[leader].admin,
            &cluster.admin,
            "GET",
            "/v1/links/conflicts?limit=10000",
            &[],
            "",
        )
        .await;
        assert_eq!(code, 200, "{text}");
        for r in json(&text)["conflicts"].as_array().unwrap() {
            conflicts += 1;
            if r["collection"] == "hits" {
                assert_eq!(
                    (r["strategy"].as_str(), r["winner"].as_str()),
                    (Some("crdt:g_counter"), Some("merged")),
                    "{r}"
                );
                continue;
            }
            assert_eq!(r["strategy"], "last_writer_wins", "{r}");
            let hlc = |side: &str| {
                r[side]["hlc"].as_str().unwrap().parse::<themis_replication::clock::Timestamp>().unwrap()
            };
            let (local, remote) = (hlc("local"), hlc("remote"));
            let later = if local.physical_ms() != remote.physical_ms() || local.logical() != remote.logical()
            {
                if (local.physical_ms(), local.logical()) > (remote.physical_ms(), remote.logical()) {
                    "local"
                } else {
                    "remote"
                }
            } else {
                r["winner"].as_str().unwrap()
            };
            assert_eq!(r["winner"], later, "the later write wins: {r}");
            let loser = if later == "local" { "remote" } else { "local" };
            let lost = r[loser]["value"].as_str().unwrap();
            let key = r["id"].as_str().unwrap();
            assert!(written[key].contains(lost), "the lost value {lost} is one a client wrote to {key}");
        }
    }
    conflicts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_accept_writes_on_both_sides_and_converge_through_cuts_and_failovers() {
    let mut west = Cluster::start_named("us-west", 3, enabled);
    let mut east = Cluster::start_named("us-east", 3, enabled);
    let (wl, el) = (west.leader().await, east.leader().await);
    let files_dir = tempfile::tempdir().unwrap();
    let (to_east, to_west) = (proxies(&east).await, proxies(&west).await);
    let east_files = remote_files(&east, files_dir.path(), "east");
    let west_files = remote_files(&west, files_dir.path(), "west");

    // Bad links first: to itself, and to a cluster name that is not one.
    let (code, text) = link(&west, wl, "us-west", &to_west, &west_files).await;
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("is this cluster"), "{text}");
    let (code, text) = link(&west, wl, "US East", &to_east, &east_files).await;
    assert_eq!(code, 400, "{text}");

    let (code, text) = link(&west, wl, "us-east", &to_east, &east_files).await;
    assert_eq!(code, 200, "{text}");
    let (code, text) = link(&east, el, "us-west", &to_west, &west_files).await;
    assert_eq!(code, 200, "{text}");

    writes_in_turn(&west, wl, &east, el).await;

    // Writers on both sides, over overlapping keys, for a few seconds; meanwhile the
    // links are cut and restored and each side's leader is killed.
    let start = Instant::now();
    let until = start + Duration::from_secs(6);
    let mut tasks = Vec::new();
    let mut counters = Vec::new();
    for (i, (cluster, side)) in [(&west, "west"), (&east, "east")].into_iter().enumerate() {
        let addrs: Vec<_> = cluster.nodes.iter().map(|n| n.client).collect();
        let client = Arc::new(Client::connect_any(&addrs, &cluster.admin).await.unwrap());
        for w in 0..2u64 {
            tasks.push(tokio::spawn(writer(Arc::clone(&client), side, (i as u64) * 10 + w + 1, until)));
        }
        counters.push(tokio::spawn(incrementer(Arc::clone(&client), side, INCREMENTS)));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for p in to_east.iter().chain(&to_west) {
        p.set(Fault::Blackhole);
        p.cut();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    west.kill(wl);
    east.kill(el);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for p in to_east.iter().chain(&to_west) {
        p.set(Fault::Delay(ONE_WAY));
    }
    west.restart(wl);
    east.restart(el);
    for c in counters {
        c.await.unwrap();
    }
    let mut written: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut acked = BTreeSet::new();
    let mut count = 0;
    for t in tasks {
        for (k, v, ok) in t.await.unwrap() {
            if ok {
                acked.insert(k.clone());
            }
            written.entry(k).or_default().insert(v);
            count += usize::from(ok);
        }
    }
    assert!(count > 100, "only {count} writes were acknowledged");

    converge(&west, &east).await;
    let (w, e) = (contents(&west).await, contents(&east).await);
    assert_eq!(w, e, "both clusters hold the same documents");
    check_values(&w, &written, &acked);

    let conflicts = check_conflicts(&[&west, &east], &written).await;
    // Each link's remote holds its log for it in a slot named after the linking cluster.
    for (cluster, slot) in [(&west, "themis_link_us_east"), (&east, "themis_link_us_west")] {
        let leader = cluster.leader().await;
        let (code, _, text) =
            http(cluster.nodes[leader].admin, &cluster.admin, "GET", "/v1/slots", &[], "").await;
        assert_eq!(code, 200, "{text}");
        assert!(text.contains(slot), "slot {slot} on the remote: {text}");
    }
    assert_eq!(links(&west).await["links"][0]["log_held"], true);
    // The links' figures are metrics too.
    let leader = west.leader().await;
    let (code, _, text) = http(west.nodes[leader].admin, &west.admin, "GET", "/metrics", &[], "").await;
    assert_eq!(code, 200);
    for series in [
        "themis_link_lag_ms{link=\"from-us-east\"}",
        "themis_link_applied_changes_total{link=\"from-us-east\"}",
    ] {
        assert!(common::metric(&text, series).is_some(), "{series} in:\n{text}");
    }
    assert!(common::metric(&text, "themis_conflicts_total").unwrap() > 0.0);
    // The counter holds every increment of both sides, on both.
    for cluster in [&west, &east] {
        let leader = cluster.leader().await;
        let h = cluster.client(leader).await.get("hits", "h", Consistency::Strong).await.unwrap().unwrap();
        let counts: BTreeMap<String, u64> = serde_json::from_slice(&h).unwrap();
        assert_eq!(counts.values().sum::<u64>(), 2 * INCREMENTS, "{counts:?}");
    }
    eprintln!("{count} acknowledged writes on two clusters; {conflicts} conflicts settled and recorded");
    assert!(conflicts > 0, "concurrent writes to {KEYS} keys from both sides conflicted at least once");
    drop((to_east, to_west));
}

/// Three clusters in a mesh (each links to the other two): writes on all three converge,
/// each origin's changes reach each cluster once (from their origin; what a cluster took
/// from a third is not passed on), and once the writers stop nothing more crosses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_of_three_converges_and_nothing_loops() {
    let names = ["eu", "us", "ap"];
    let clusters: Vec<Cluster> = names.iter().map(|n| Cluster::start_named(n, 3, enabled)).collect();
    let files_dir = tempfile::tempdir().unwrap();
    let mut proxies_of = Vec::new();
    for c in &clusters {
        proxies_of.push(proxies(c).await);
    }
    for (i, c) in clusters.iter().enumerate() {
        let leader = c.leader().await;
        for (j, remote) in clusters.iter().enumerate().filter(|(j, _)| *j != i) {
            let files = remote_files(remote, files_dir.path(), &format!("{}-for-{}", names[j], names[i]));
            let (code, text) = link(c, leader, names[j], &proxies_of[j], &files).await;
            assert_eq!(code, 200, "{text}");
        }
    }
    let until = Instant::now() + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for (i, c) in clusters.iter().enumerate() {
        let addrs: Vec<_> = c.nodes.iter().map(|n| n.client).collect();
        let client = Arc::new(Client::connect_any(&addrs, &c.admin).await.unwrap());
        tasks.push(tokio::spawn(writer(client, names[i], i as u64 + 1, until)));
    }
    let mut written: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut acked = BTreeSet::new();
    for t in tasks {
        for (k, v, ok) in t.await.unwrap() {
            if ok {
                acked.insert(k.clone());
            }
            written.entry(k).or_default().insert(v);
        }
    }
    // Converged: every pair of clusters holds the same documents, each a value a client
    // wrote.
    let deadline = Instant::now() + Duration::from_secs(30);
    let all = loop {
        let mut all = Vec::new();
        for c in &clusters {
            all.push(contents(c).await);
        }
        if all.windows(2).all(|w| w[0] == w[1]) {
            break all;
        }
        assert!(Instant::now() < deadline, "the mesh did not converge within 30 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    check_values(&all[0], &written, &acked);
    // Quiet: with the writers stopped, a second later no link applies anything more.
    let applied = |v: &serde_json::Value| -> u64 {
        v["links"].as_array().unwrap().iter().map(|l| l["applied_changes"].as_u64().unwrap()).sum()
    };
    let mut before = Vec::new();
    for c in &clusters {
        before.push(applied(&links(c).await));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (i, c) in clusters.iter().enumerate() {
        let now = links(c).await;
        assert_eq!(applied(&now), before[i], "{} applied more with nothing written: {now}", names[i]);
        for l in now["links"].as_array().unwrap() {
            assert_eq!(l["state"], "streaming", "{l}");
        }
    }
    drop(proxies_of);
}

/// Waits (10 s at most) until `cluster` holds `want` at `both/x`.
async fn holds(cluster: &Cluster, want: &str) {
    let leader = cluster.leader().await;
    let client = cluster.client(leader).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = client
            .get("both", "x", Consistency::Strong)
            .await
            .unwrap()
            .map(|v| String::from_utf8(v).unwrap());
        if got.as_deref() == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{want} never arrived; holds {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `keep_both` collection keeps two concurrent versions as siblings on both clusters
/// until someone picks one; and a link to a cluster that does not stamp its writes stops
/// with an error that says so, applying nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn siblings_are_kept_then_resolved_by_hand_and_an_unstamped_origin_is_refused() {
    let west = Cluster::start_named("us-west", 3, enabled);
    let east = Cluster::start_named("us-east", 3, enabled);
    let plain = Cluster::start_named("plain", 3, |t| t);
    let (wl, el) = (west.leader().await, east.leader().await);
    let (to_east, to_west, files_dir) = link_both(&west, &east).await;
    let to_plain = proxies(&plain).await;

    // Cut apart, each side writes both/x; joined again, both hold both versions.
    for p in to_east.iter().chain(&to_west) {
        p.set(Fault::Blackhole);
        p.cut();
    }
    west.client(wl).await.put("both", "x", br#"{"v":"west"}"#).await.unwrap();
    east.client(el).await.put("both", "x", br#"{"v":"east"}"#).await.unwrap();
    for p in to_east.iter().chain(&to_west) {
        p.set(Fault::Delay(ONE_WAY));
    }
    let leader = west.leader().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let siblings = loop {
        let w = west.client(leader).await.get("both", "x", Consistency::Strong).await.unwrap().unwrap();
        let e = east
            .client(east.leader().await)
            .await
            .get("both", "x", Consistency::Strong)
            .await
            .unwrap()
            .unwrap();
        if w == e && w.starts_with(b"{\"_siblings\"") {
            break String::from_utf8(w).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no siblings: west {:?}, east {:?}",
            String::from_utf8_lossy(&w),
            String::from_utf8_lossy(&e)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(siblings.contains(r#"{"v":"west"}"#) && siblings.contains(r#"{"v":"east"}"#), "{siblings}");
    // Picked by hand on one side; the choice crosses to the other.
    let v: serde_json::Value = serde_json::from_str(&siblings).unwrap();
    let chosen = v["_siblings"][1].to_string();
    let body = r#"{"collection":"both","id":"x","winner":1}"#;
    let (code, _, text) =
        http(west.nodes[leader].admin, &west.admin, "POST", "/v1/links/conflicts/resolve", &[], body).await;
    assert_eq!(code, 200, "{text}");
    holds(&west, &chosen).await;
    holds(&east, &chosen).await;
    let (code, _, text) =
        http(west.nodes[leader].admin, &west.admin, "POST", "/v1/links/conflicts/resolve", &[], body).await;
    assert_eq!(code, 409, "nothing left to resolve: {text}");
    let bad = r#"{"collection":"both","id":"x","winner":"first"}"#;
    let (code, _, _) =
        http(west.nodes[leader].admin, &west.admin, "POST", "/v1/links/conflicts/resolve", &[], bad).await;
    assert_eq!(code, 400);

    // A cluster without [active_active] does not stamp its writes: refused, not guessed.
    let (code, text) =
        link(&west, leader, "plain", &to_plain, &remote_files(&plain, files_dir.path(), "plain")).await;
    assert_eq!(code, 200, "{text}");
    plain.client(plain.leader().await).await.put("both", "y", b"{}").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, _, text) =
            http(west.nodes[leader].admin, &west.admin, "GET", "/v1/links/from-plain", &[], "").await;
        assert_eq!(code, 200, "{text}");
        let l = json(&text);
        if l["state"] == "error" || l["last_error"].is_string() {
            assert!(l["last_error"].as_str().unwrap().contains("carries no stamp"), "{l}");
            assert_eq!(l["applied_changes"], 0, "{l}");
            break;
        }
        assert!(Instant::now() < deadline, "the link never refused: {l}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(west.client(leader).await.get("both", "y", Consistency::Strong).await.unwrap(), None);
    drop((to_east, to_west, to_plain));
}

/// Waits (20 s at most) until `cluster`'s leader holds `want` at `orders/id`.
async fn order_is(cluster: &Cluster, id: &str, want: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let client = cluster.client(cluster.leader().await).await;
        let got = client
            .get("orders", id, Consistency::Strong)
            .await
            .unwrap()
            .map(|v| String::from_utf8(v).unwrap());
        if got.as_deref() == want {
            return;
        }
        assert!(Instant::now() < deadline, "orders/{id}: wanted {want:?}, holds {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ddl(cluster: &Cluster, statement: &str) {
    let leader = cluster.leader().await;
    let body = serde_json::json!({ "statement": statement }).to_string();
    let (code, _, text) =
        http(cluster.nodes[leader].admin, &cluster.admin, "POST", "/v1/ddl", &[], &body).await;
    assert_eq!(code, 200, "{statement}: {text}");
}

/// Schema changes cross links: a collection created on one cluster exists on the other,
/// and a drop racing writes on the other cluster removes what the dropping cluster had
/// seen, keeps what was written concurrently, and records each kept document; both
/// clusters end the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_crosses_links_and_a_drop_racing_writes_is_reported() {
    let west = Cluster::start_named("us-west", 3, enabled);
    let east = Cluster::start_named("us-east", 3, enabled);
    let (wl, el) = (west.leader().await, east.leader().await);
    let (to_east, to_west, _files) = link_both(&west, &east).await;

    ddl(&west, "CREATE COLLECTION orders").await;
    west.client(wl).await.put("orders", "o1", br#"{"v":1}"#).await.unwrap();
    order_is(&east, "o1", Some(r#"{"v":1}"#)).await;
    let (code, _, text) = http(east.nodes[el].admin, &east.admin, "GET", "/v1/collections", &[], "").await;
    assert_eq!(code, 200);
    assert!(text.contains(r#""name":"orders""#), "the create crossed: {text}");

    // Apart: west drops orders; east, not knowing, writes o2 and changes o1.
    for p in to_east.iter().chain(&to_west) {
        p.set(Fault::Blackhole);
        p.cut();
    }
    ddl(&west, "DROP COLLECTION orders").await;
    let east_client = east.client(el).await;
    east_client.put("orders", "o2", br#"{"v":2}"#).await.unwrap();
    east_client.put("orders", "o1", br#"{"v":11}"#).await.unwrap();
    for p in to_east.iter().chain(&to_west) {
        p.set(Fault::Delay(ONE_WAY));
    }
    // Both end with east's concurrent writes, which the drop did not know.
    for cluster in [&west, &east] {
        order_is(cluster, "o2", Some(r#"{"v":2}"#)).await;
        order_is(cluster, "o1", Some(r#"{"v":11}"#)).await;
    }
    // East reports what the drop kept, once the drop has crossed.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leader = east.leader().await;
        let (code, _, text) =
            http(east.nodes[leader].admin, &east.admin, "GET", "/v1/links/conflicts", &[], "").await;
        assert_eq!(code, 200, "{text}");
        let records = json(&text)["conflicts"].as_array().unwrap().clone();
        let kept: BTreeSet<String> = records
            .iter()
            .filter(|r| r["kind"] == "ddl" && r["statement"] == "DROP COLLECTION orders")
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        if !kept.is_empty() {
            assert_eq!(kept, BTreeSet::from(["o1".to_string(), "o2".to_string()]), "{records:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the drop never reached us-east: {records:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And it removed nothing the other side wrote: both still hold both.
    for cluster in [&west, &east] {
        order_is(cluster, "o2", Some(r#"{"v":2}"#)).await;
        order_is(cluster, "o1", Some(r#"{"v":11}"#)).await;
    }
    drop((to_east, to_west));
}
