//! `themis doctor check | repair | analyze-lag`: a cluster's health, its replicas'
//! agreement on the data, and their lag, over each node's admin API.
//!
//! **Agreement.** Every node splits its store into the same buckets by key hash and sums a
//! digest of each document version in each bucket, as of one LSN (the leader's applied
//! LSN when the check starts; documents written after it are left out). A replica whose
//! bucket differs from the leader's in three rounds in a row (each at a fresh LSN, so a
//! document rewritten during the check does not count) has diverged.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use themis_node::Credentials;
use themis_node::admin_client::AdminClient;

/// Everything is well.
pub const EXIT_HEALTHY: u8 = 0;
/// The cluster serves, but a node is unreachable or a replica unhealthy, or an insight is open.
pub const EXIT_DEGRADED: u8 = 1;
/// A replica's data differs from the leader's.
pub const EXIT_DIVERGED: u8 = 2;
/// No leader, or no node answered.
pub const EXIT_UNAVAILABLE: u8 = 3;

/// Rounds a bucket must differ in to count as diverged.
const ROUNDS: usize = 3;

/// What `doctor check` compares.
#[derive(Debug, Clone, Copy)]
pub struct CheckOptions {
    /// Buckets the key space is split into.
    pub buckets: u32,
    /// Compare the replicas' data (range hashes) too.
    pub hashes: bool,
}

/// One node as the check saw it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    /// Its admin address.
    pub addr: SocketAddr,
    /// Its id, when it answered.
    pub id: Option<u64>,
    /// `Leader`, `Follower`, ..., or `unreachable`.
    pub role: String,
    /// Its term.
    pub term: u64,
    /// The leader it knows.
    pub leader: Option<u64>,
    /// Its commit and applied LSNs.
    pub commit_lsn: u64,
    /// What it has applied.
    pub applied_lsn: u64,
    /// Insights open on it (`TYPE: description`).
    pub open_insights: Vec<String>,
    /// Why it could not be read.
    pub error: Option<String>,
}

/// Data agreement with the leader.
#[derive(Debug, Clone, Serialize)]
pub struct RangeReport {
    /// The LSN of the last round.
    pub at_lsn: u64,
    /// Buckets compared.
    pub buckets: u32,
    /// The leader's documents as of `at_lsn`.
    pub leader_docs: u64,
    /// Per replica id: buckets that differed in every round (empty: equal).
    pub diverged: BTreeMap<u64, Vec<u32>>,
    /// Replicas that could not be compared, and why.
    pub not_compared: BTreeMap<u64, String>,
}

/// What `doctor check` found.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    /// Every node given.
    pub nodes: Vec<NodeReport>,
    /// The leader (the highest term's).
    pub leader: Option<u64>,
    /// The leader's view of each replica.
    pub replicas: Vec<Value>,
    /// Why the cluster is not healthy, worst first.
    pub problems: Vec<String>,
    /// Data agreement, when compared.
    pub ranges: Option<RangeReport>,
    /// [`EXIT_HEALTHY`], [`EXIT_DEGRADED`], [`EXIT_DIVERGED`] or [`EXIT_UNAVAILABLE`].
    pub exit_code: u8,
    /// `healthy`, `degraded`, `diverged` or `unavailable`.
    pub verdict: String,
}

fn client(addr: SocketAddr, credentials: &Credentials) -> AdminClient {
    AdminClient::new(vec![addr], credentials.clone()).retry_for(Duration::from_secs(2))
}

async fn get(addr: SocketAddr, credentials: &Credentials, path: &str) -> Result<Value, String> {
    let answer = client(addr, credentials).request("GET", path, None).await.map_err(|e| e.to_string())?;
    if answer.ok() {
        Ok(answer.json())
    } else {
        Err(format!("{addr}: GET {path}: {} {}", answer.status, answer.message()))
    }
}

async fn node_report(addr: SocketAddr, credentials: &Credentials) -> NodeReport {
    let mut report = NodeReport {
        addr,
        id: None,
        role: "unreachable".into(),
        term: 0,
        leader: None,
        commit_lsn: 0,
        applied_lsn: 0,
        open_insights: Vec::new(),
        error: None,
    };
    match get(addr, credentials, "/v1/cluster/status").await {
        Ok(full) => {
            let s = &full["status"];
            report.id = s["id"].as_u64();
            report.role = s["role"].as_str().unwrap_or("unknown").to_string();
            report.term = s["term"].as_u64().unwrap_or(0);
            report.leader = s["leader"].as_u64();
            report.commit_lsn = s["commit_lsn"].as_u64().unwrap_or(0);
            report.applied_lsn = s["applied_lsn"].as_u64().unwrap_or(0);
        }
        Err(e) => {
            report.error = Some(e);
            return report;
        }
    }
    if let Ok(insights) = get(addr, credentials, "/v1/analytics/insights").await {
        for i in insights["insights"].as_array().into_iter().flatten() {
            if i["resolved_ms"].is_null() {
                report.open_insights.push(format!(
                    "{}: {}",
                    i["type"].as_str().unwrap_or("?"),
                    i["description"].as_str().unwrap_or("")
                ));
            }
        }
    }
    report
}

/// The nodes' reports, and the leader's (its index) if one leads.
async fn survey(addrs: &[SocketAddr], credentials: &Credentials) -> (Vec<NodeReport>, Option<usize>) {
    let mut nodes = Vec::new();
    for &addr in addrs {
        nodes.push(node_report(addr, credentials).await);
    }
    let leader = nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.role == "Leader")
        .max_by_key(|(_, n)| n.term)
        .map(|(i, _)| i);
    (nodes, leader)
}

async fn hashes(
    addr: SocketAddr,
    credentials: &Credentials,
    buckets: u32,
    at_lsn: u64,
) -> Result<(Vec<String>, u64), String> {
    let path = format!("/v1/doctor/ranges?buckets={buckets}&at_lsn={at_lsn}");
    let answer =
        client(addr, credentials).retry_for(Duration::from_secs(15)).request("GET", &path, None).await;
    let answer = answer.map_err(|e| e.to_string())?;
    if !answer.ok() {
        return Err(format!("{addr}: {} {}", answer.status, answer.message()));
    }
    let v = answer.json();
    let list = v["hashes"].as_array().ok_or_else(|| format!("{addr}: no hashes in the answer"))?;
    Ok((
        list.iter().map(|h| h.as_str().unwrap_or_default().to_string()).collect(),
        v["docs"].as_u64().unwrap_or(0),
    ))
}

/// Compares every reachable replica's buckets with the leader's, in up to [`ROUNDS`]
/// rounds; `only` limits it to one replica.
async fn compare(
    nodes: &[NodeReport],
    leader: usize,
    credentials: &Credentials,
    buckets: u32,
    only: Option<u64>,
) -> RangeReport {
    let leader_node = &nodes[leader];
    let replicas: Vec<&NodeReport> = nodes
        .iter()
        .enumerate()
        .filter(|(i, n)| *i != leader && n.id.is_some() && only.is_none_or(|o| n.id == Some(o)))
        .map(|(_, n)| n)
        .collect();
    let mut report = RangeReport {
        at_lsn: 0,
        buckets,
        leader_docs: 0,
        diverged: BTreeMap::new(),
        not_compared: BTreeMap::new(),
    };
    // Per replica: the buckets that differed in every round so far (None: not yet compared).
    let mut suspects: BTreeMap<u64, Option<BTreeSet<u32>>> =
        replicas.iter().filter_map(|n| n.id).map(|id| (id, None)).collect();
    for _ in 0..ROUNDS {
        if suspects.values().all(|s| s.as_ref().is_some_and(BTreeSet::is_empty)) {
            break;
        }
        let at_lsn =
            node_report(leader_node.addr, credentials).await.applied_lsn.max(leader_node.applied_lsn);
        let (reference, docs) = match hashes(leader_node.addr, credentials, buckets, at_lsn).await {
            Ok(h) => h,
            Err(e) => {
                for r in &replicas {
                    report.not_compared.insert(r.id.unwrap_or(0), format!("the leader's hashes: {e}"));
                }
                return report;
            }
        };
        report.at_lsn = at_lsn;
        report.leader_docs = docs;
        for r in &replicas {
            let id = r.id.unwrap_or(0);
            if suspects.get(&id).is_some_and(|s| s.as_ref().is_some_and(BTreeSet::is_empty)) {
                continue;
            }
            match hashes(r.addr, credentials, buckets, at_lsn).await {
                Ok((theirs, _)) => {
                    let differing: BTreeSet<u32> = (0..buckets)
                        .filter(|&b| reference.get(b as usize) != theirs.get(b as usize))
                        .collect();
                    let entry = suspects.entry(id).or_insert(None);
                    *entry = Some(match entry.take() {
                        None => differing,
                        Some(before) => before.intersection(&differing).copied().collect(),
                    });
                    report.not_compared.remove(&id);
                }
                Err(e) => {
                    report.not_compared.insert(id, e);
                }
            }
        }
    }
    for (id, s) in suspects {
        if let Some(s) = s {
            report.diverged.insert(id, s.into_iter().collect());
        }
    }
    report
}

/// `themis doctor check`: who leads, every replica's health and open insights, and (with
/// `hashes`) whether every replica holds the leader's data.
pub async fn check_cluster(
    addrs: &[SocketAddr],
    credentials: &Credentials,
    options: CheckOptions,
) -> ClusterReport {
    let (nodes, leader) = survey(addrs, credentials).await;
    let mut problems = Vec::new();
    let mut exit = EXIT_HEALTHY;
    let worse = |code: u8, exit: &mut u8| *exit = (*exit).max(code);
    let reachable = nodes.iter().filter(|n| n.id.is_some()).count();
    for n in nodes.iter().filter(|n| n.id.is_none()) {
        problems.push(format!("node at {} is unreachable: {}", n.addr, n.error.as_deref().unwrap_or("")));
        worse(EXIT_DEGRADED, &mut exit);
    }
    let mut replicas = Vec::new();
    let mut ranges = None;
    match leader {
        None => {
            problems.insert(0, format!("no leader among the {reachable} nodes that answered"));
            worse(EXIT_UNAVAILABLE, &mut exit);
        }
        Some(l) => {
            let leader_id = nodes[l].id;
            for n in nodes.iter().filter(|n| n.id.is_some() && n.id != leader_id) {
                if n.leader != leader_id {
                    problems.push(format!(
                        "node {} follows {:?}, not the leader {}",
                        n.id.unwrap_or(0),
                        n.leader,
                        leader_id.unwrap_or(0)
                    ));
                    worse(EXIT_DEGRADED, &mut exit);
                }
            }
            if let Ok(full) = get(nodes[l].addr, credentials, "/v1/cluster/status").await {
                for r in full["status"]["replicas"].as_array().into_iter().flatten() {
                    if r["healthy"] == false {
                        problems.push(format!(
                            "replica {} is unhealthy: {} LSNs ({} ms) behind, last answered {} ms ago",
                            r["id"], r["lag_lsns"], r["lag_ms"], r["last_contact_ms"]
                        ));
                        worse(EXIT_DEGRADED, &mut exit);
                    }
                    replicas.push(r.clone());
                }
            }
            if options.hashes {
                let report = compare(&nodes, l, credentials, options.buckets, None).await;
                for (id, buckets) in &report.diverged {
                    if !buckets.is_empty() {
                        problems.insert(
                            0,
                            format!(
                                "replica {id} differs from the leader in {} of {} key ranges (e.g. bucket {}); \
                                 `themis doctor repair --replica {id}` resyncs them",
                                buckets.len(),
                                report.buckets,
                                buckets[0]
                            ),
                        );
                        worse(EXIT_DIVERGED, &mut exit);
                    }
                }
                for (id, why) in &report.not_compared {
                    problems.push(format!("replica {id}'s data could not be compared: {why}"));
                    worse(EXIT_DEGRADED, &mut exit);
                }
                ranges = Some(report);
            }
        }
    }
    for n in &nodes {
        for insight in &n.open_insights {
            problems.push(format!("node {}: {insight}", n.id.unwrap_or(0)));
            worse(EXIT_DEGRADED, &mut exit);
        }
    }
    let verdict = match exit {
        EXIT_HEALTHY => "healthy",
        EXIT_DEGRADED => "degraded",
        EXIT_DIVERGED => "diverged",
        _ => "unavailable",
    };
    ClusterReport {
        leader: leader.and_then(|l| nodes[l].id),
        nodes,
        replicas,
        problems,
        ranges,
        exit_code: exit,
        verdict: verdict.into(),
    }
}

impl ClusterReport {
    /// The report as text.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let _ = writeln!(
                out,
                "node {:>3} {:<22} {:<11} term {:<4} commit {:<10} applied {}",
                n.id.map_or_else(|| "?".to_string(), |id| id.to_string()),
                n.addr,
                n.role,
                n.term,
                n.commit_lsn,
                n.applied_lsn
            );
        }
        if let Some(r) = &self.ranges {
            let equal = r.diverged.values().filter(|b| b.is_empty()).count();
            let _ = writeln!(
                out,
                "data: {equal} of {} replicas hold the leader's {} documents as of LSN {}, compared in {} key ranges",
                r.diverged.len() + r.not_compared.len(),
                r.leader_docs,
                r.at_lsn,
                r.buckets
            );
        }
        for p in &self.problems {
            let _ = writeln!(out, "problem: {p}");
        }
        let _ = write!(out, "{} (exit {})", self.verdict, self.exit_code);
        out
    }
}

/// What `doctor repair` did.
#[derive(Debug, Clone, Serialize)]
pub struct RepairReport {
    /// The replica.
    pub replica: u64,
    /// Buckets resynced.
    pub buckets_repaired: usize,
    /// Buckets compared.
    pub buckets: u32,
    /// Documents written on the replica.
    pub written: u64,
    /// Documents removed from it.
    pub removed: u64,
    /// Whether a check afterwards found it equal to the leader.
    pub equal_after: bool,
}

/// `themis doctor repair --replica N`: finds the key ranges where replica `replica`
/// differs from the leader (or takes every range, `full`) and resyncs only those from the
/// leader's documents.
pub async fn repair(
    addrs: &[SocketAddr],
    credentials: &Credentials,
    replica: u64,
    buckets: u32,
    full: bool,
) -> Result<RepairReport, String> {
    let (nodes, leader) = survey(addrs, credentials).await;
    let l = leader.ok_or("no leader: the leader's data is what a replica is repaired from")?;
    if nodes[l].id == Some(replica) {
        return Err(format!("node {replica} leads: repair a replica from it, not it"));
    }
    let target = nodes
        .iter()
        .find(|n| n.id == Some(replica))
        .ok_or_else(|| format!("node {replica} is not among the nodes that answered"))?;
    let to_fix: Vec<u32> = if full {
        (0..buckets).collect()
    } else {
        let report = compare(&nodes, l, credentials, buckets, Some(replica)).await;
        if let Some(why) = report.not_compared.get(&replica) {
            return Err(format!("replica {replica} could not be compared: {why}"));
        }
        report.diverged.get(&replica).cloned().unwrap_or_default()
    };
    let (mut written, mut removed) = (0, 0);
    let mut leader_client = client(nodes[l].addr, credentials).retry_for(Duration::from_secs(15));
    let mut replica_client = client(target.addr, credentials).retry_for(Duration::from_secs(15));
    for &bucket in &to_fix {
        let path = format!("/v1/doctor/ranges/{bucket}?buckets={buckets}");
        let answer = leader_client.request("GET", &path, None).await.map_err(|e| e.to_string())?;
        if !answer.ok() {
            return Err(format!("the leader's bucket {bucket}: {} {}", answer.status, answer.message()));
        }
        let docs = answer.json();
        let body = json!({
            "buckets": buckets, "bucket": bucket, "at_lsn": docs["applied_lsn"], "docs": docs["docs"],
        });
        let answer = replica_client
            .request("POST", "/v1/doctor/repair", Some(&body))
            .await
            .map_err(|e| e.to_string())?;
        if !answer.ok() {
            return Err(format!(
                "repairing bucket {bucket} on node {replica}: {} {}",
                answer.status,
                answer.message()
            ));
        }
        let done = answer.json();
        written += done["written"].as_u64().unwrap_or(0);
        removed += done["removed"].as_u64().unwrap_or(0);
    }
    let after = compare(&nodes, l, credentials, buckets, Some(replica)).await;
    let equal_after =
        after.not_compared.is_empty() && after.diverged.get(&replica).is_some_and(Vec::is_empty);
    Ok(RepairReport { replica, buckets_repaired: to_fix.len(), buckets, written, removed, equal_after })
}

impl RepairReport {
    /// The report as text.
    #[must_use]
    pub fn render(&self) -> String {
        format!(
            "replica {}: {} of {} key ranges resynced from the leader ({} documents written, {} removed); {}",
            self.replica,
            self.buckets_repaired,
            self.buckets,
            self.written,
            self.removed,
            if self.equal_after {
                "it now holds the leader's data"
            } else {
                "it still differs: run it again"
            }
        )
    }
}

/// `themis doctor analyze-lag --duration D`: each replica's lag over the span (the
/// leader's history), the insights of the span, and where each replica's bottleneck is.
pub async fn analyze_lag(
    addrs: &[SocketAddr],
    credentials: &Credentials,
    duration: &str,
) -> Result<Value, String> {
    let span = themis_node::analytics::parse_span(duration)?;
    let (nodes, leader) = survey(addrs, credentials).await;
    let l = leader.ok_or("no leader: replica lag history is kept by the leader")?;
    let addr = nodes[l].addr;
    let lag = get(addr, credentials, &format!("/v1/analytics/lag?duration={}s", span.as_secs())).await?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let since = now_ms.saturating_sub(u64::try_from(span.as_millis()).unwrap_or(u64::MAX));
    let mut insights = Vec::new();
    let mut bottlenecks = Vec::new();
    for n in nodes.iter().filter(|n| n.id.is_some()) {
        if let Ok(v) = get(n.addr, credentials, &format!("/v1/analytics/insights?since_ms={since}")).await {
            for i in v["insights"].as_array().into_iter().flatten() {
                let mut i = i.clone();
                i["node"] = json!(n.id);
                insights.push(i);
            }
        }
        if let Ok(v) = get(n.addr, credentials, "/v1/analytics/bottlenecks").await {
            for b in v["bottlenecks"].as_array().into_iter().flatten() {
                // Each node's own causes, and the leader's view of each replica's network.
                if b["replica"].is_null() || Some(l) == nodes.iter().position(|x| x.id == n.id) {
                    let mut b = b.clone();
                    b["node"] = json!(n.id);
                    bottlenecks.push(b);
                }
            }
        }
    }
    let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
    for i in &insights {
        *by_type.entry(i["type"].as_str().unwrap_or("?").to_string()).or_default() += 1;
    }
    Ok(json!({
        "leader": nodes[l].id,
        "duration_secs": span.as_secs(),
        "histories": lag["histories"],
        "insights": insights,
        "insights_by_type": by_type,
        "bottlenecks": bottlenecks,
    }))
}

/// [`analyze_lag`]'s answer as text.
#[must_use]
pub fn render_lag(v: &Value) -> String {
    let mut out = String::new();
    let _ =
        writeln!(out, "replica lag over the last {} s (leader: node {}):", v["duration_secs"], v["leader"]);
    for h in v["histories"].as_array().into_iter().flatten() {
        let n = |k: &str| h[k].as_u64().unwrap_or(0);
        let _ = writeln!(
            out,
            "  replica {}: avg {:.1} ms, p95 {} ms, p99 {} ms, max {} ms ({} samples)",
            n("replica"),
            h["avg_ms"].as_f64().unwrap_or(0.0),
            n("p95_ms"),
            n("p99_ms"),
            n("max_ms"),
            n("samples")
        );
    }
    let by_type = v["insights_by_type"].as_object().cloned().unwrap_or_default();
    if by_type.is_empty() {
        let _ = writeln!(out, "insights: none");
    } else {
        let list: Vec<String> = by_type.iter().map(|(k, n)| format!("{k} x{n}")).collect();
        let _ = writeln!(out, "insights: {}", list.join(", "));
    }
    for i in v["insights"].as_array().into_iter().flatten().rev().take(10) {
        let _ = writeln!(
            out,
            "  node {} {}: {}",
            i["node"],
            i["type"].as_str().unwrap_or("?"),
            i["description"].as_str().unwrap_or("")
        );
    }
    let _ = write!(out, "bottlenecks:");
    for b in v["bottlenecks"].as_array().into_iter().flatten() {
        let who = if b["replica"].is_null() {
            format!("node {}", b["node"])
        } else {
            format!("replica {} (as node {} sees it)", b["replica"], b["node"])
        };
        let primary = b["primary"].as_str().unwrap_or("none");
        let _ = write!(out, "\n  {who}: {primary}");
        if let Some(sev) = b["severity"].as_object() {
            let list: Vec<String> =
                sev.iter().map(|(k, s)| format!("{k} {:.2}", s.as_f64().unwrap_or(0.0))).collect();
            let _ = write!(out, " ({})", list.join(", "));
        }
    }
    out
}
