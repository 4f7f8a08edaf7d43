//! `themis slot ...`, `themis ddl` and `themis subscribe`: logical replication slots
//! from the command line, and a logical replica that applies a slot into a store of its
//! own.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use themis_node::admin_client::{AdminAnswer, AdminClient};
use themis_node::{Client, Credentials, LocalCluster, Node, NodeConfig};

use crate::cluster::{ClusterFile, NodeEntry};

/// What `themis slot create` asks for.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Output plugin: json, json-txn, protobuf or avro.
    pub plugin: String,
    /// Collection patterns delivered.
    pub include: Vec<String>,
    /// Collection patterns never delivered.
    pub exclude: Vec<String>,
    /// A row predicate.
    pub predicate: Option<String>,
    /// Start with a snapshot of the matching documents.
    pub initial_sync: bool,
    /// Leave DDL out.
    pub no_ddl: bool,
    /// A transform (JSON: steps, collections, versions).
    pub transform: Option<Value>,
}

/// The body of `POST /v1/slots` for a slot `name`.
#[must_use]
pub fn slot_body(name: &str, o: &CreateOptions) -> Value {
    let mut body = json!({
        "name": name,
        "plugin": o.plugin,
        "include": o.include,
        "exclude": o.exclude,
        "replicate_ddl": !o.no_ddl,
        "initial_sync": o.initial_sync,
    });
    if let Some(p) = &o.predicate {
        body["predicate"] = json!(p);
    }
    if let Some(t) = &o.transform {
        body["transform"] = t.clone();
    }
    body
}

/// The answer's body when it is a success, else an error with its message.
pub fn expect_ok(answer: &AdminAnswer) -> Result<Value, String> {
    if answer.ok() {
        Ok(answer.json())
    } else {
        Err(format!("{} answered {}: {}", answer.addr, answer.status, answer.message()))
    }
}

/// Sends a request and keeps only a success.
pub async fn call(
    client: &mut AdminClient,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, String> {
    expect_ok(&client.request(method, path, body).await.map_err(|e| e.to_string())?)
}

/// One line per slot: name, plugin, confirmed LSN, lag, WAL status, paused.
#[must_use]
pub fn render_slots(listing: &Value) -> String {
    let mut out = String::from("slot                 plugin     confirmed        lag   wal_status  state\n");
    for slot in listing["slots"].as_array().into_iter().flatten() {
        let state = if slot["lost"] == true {
            "lost"
        } else if slot["paused"] == true {
            "paused"
        } else if slot["snapshot_lsn"].is_u64() {
            "initial sync"
        } else if slot["active"] == true {
            "reading"
        } else {
            "idle"
        };
        let _ = writeln!(
            out,
            "{:<20} {:<10} {:>9} {:>10}   {:<10}  {state}",
            slot["config"]["name"].as_str().unwrap_or("?"),
            slot["config"]["plugin"].as_str().unwrap_or("?"),
            slot["confirmed_flush_lsn"],
            slot["lag_lsn"],
            slot["wal_status"].as_str().unwrap_or("?"),
        );
    }
    out
}

/// The changes a read returned, one per line (JSON, or base64 for binary plugins).
#[must_use]
pub fn render_changes(read: &Value) -> Vec<String> {
    let records = read["changes"].as_array().or_else(|| read["records"].as_array());
    records.into_iter().flatten().map(|r| r.as_str().map_or_else(|| r.to_string(), str::to_string)).collect()
}

/// `themis subscribe`'s settings.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// The source cluster's admin addresses and credentials.
    pub source: AdminClient,
    /// The slot to apply.
    pub slot: String,
    /// Where the replica keeps its store (a one-node cluster of its own).
    pub data_dir: PathBuf,
    /// Changes per read.
    pub max: usize,
    /// How often lag is reported.
    pub report_every: Duration,
    /// Stop once the slot has nothing more to deliver (for scripts and tests).
    pub until_idle: bool,
}

/// The replica's own cluster in `dir`: written on first start, the same addresses after.
fn replica_config(dir: &Path) -> Result<(NodeConfig, ClusterFile), String> {
    let config_path = dir.join("node-1.toml");
    if !config_path.exists() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // One node: acknowledged once it is durable there.
        LocalCluster::write(dir, "themis-replica", 1, 0, "async")?;
    }
    let config = NodeConfig::load(&config_path).map_err(|e| format!("{}: {e}", config_path.display()))?;
    let admin = config.admin_addr().ok_or("the replica's configuration has no admin_addr")?;
    let file = ClusterFile {
        ca: dir.join("certs").join("ca.pem"),
        mode: "async".into(),
        nodes: vec![NodeEntry {
            id: 1,
            pid: std::process::id(),
            raft: config.raft_addr(),
            client: config.client_addr(),
            admin,
            config: config_path,
            log: dir.join("subscribe.log"),
        }],
    };
    Ok((config, file))
}

/// What one applied read did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Documents written or deleted.
    pub changes: u64,
    /// DDL statements applied.
    pub ddl: u64,
}

/// Applies a `json`-plugin read to the replica: snapshot rows, inserts and updates are
/// puts, deletes are deletes, DDL runs on the replica (a create of a collection that
/// exists, or a drop of one that does not, is already applied).
pub async fn apply(read: &Value, client: &Client, admin: &mut AdminClient) -> Result<Applied, String> {
    let mut applied = Applied::default();
    for change in read["changes"].as_array().into_iter().flatten() {
        let collection = change["collection"].as_str().unwrap_or_default();
        let id = change["id"].as_str().unwrap_or_default();
        match change["action"].as_str() {
            Some("I" | "U" | "R") => {
                let doc = change["data"].to_string();
                client
                    .put(collection, id, doc.as_bytes())
                    .await
                    .map_err(|e| format!("put {collection}/{id}: {e}"))?;
                applied.changes += 1;
            }
            Some("D") => {
                client.delete(collection, id).await.map_err(|e| format!("delete {collection}/{id}: {e}"))?;
                applied.changes += 1;
            }
            Some("T") => {
                let statement = &change["ddl"]["statement"];
                let answer = admin
                    .request("POST", "/v1/ddl", Some(&json!({ "statement": statement })))
                    .await
                    .map_err(|e| e.to_string())?;
                if !answer.ok() && answer.status != 404 && answer.status != 409 {
                    return Err(format!("DDL {statement} on the replica: {}", answer.message()));
                }
                applied.ddl += 1;
            }
            other => {
                return Err(format!("a change with action {other:?}; the replica applies the json plugin's"));
            }
        }
    }
    Ok(applied)
}

/// Runs a logical replica: starts (or restarts) the replica's node in `data_dir`, then
/// reads the slot, applies each batch and confirms it, until stopped (or idle, with
/// `until_idle`). A restart resumes after the slot's confirmed LSN: what was applied and
/// not confirmed is applied again, which changes nothing.
pub async fn subscribe(
    mut o: SubscribeOptions,
    out: &mut (impl std::io::Write + Send),
) -> Result<(), String> {
    let info = call(&mut o.source, "GET", &format!("/v1/slots/{}", o.slot), None).await?;
    let plugin = info["config"]["plugin"].as_str().unwrap_or_default();
    if plugin != "json" {
        return Err(format!("slot {:?} uses the {plugin} plugin; a replica applies a json slot", o.slot));
    }
    let (config, file) = replica_config(&o.data_dir)?;
    let node = Node::start(&config).await.map_err(|e| format!("the replica's node: {e}"))?;
    file.save(&o.data_dir)?;
    let credentials = Credentials::admin_from_dir(&o.data_dir.join("certs"))?;
    let client = Client::connect_any(&[node.client_addr], &credentials).await.map_err(|e| e.to_string())?;
    let mut local_admin = AdminClient::new(node.admin_addr.into_iter().collect(), credentials);
    writeln!(
        out,
        "replica of slot {} serving at {} (data in {})",
        o.slot,
        node.client_addr,
        o.data_dir.display()
    )
    .map_err(|e| e.to_string())?;
    let mut confirmed = info["confirmed_flush_lsn"].as_u64().unwrap_or(0);
    let mut total = Applied::default();
    let mut last_report = Instant::now();
    let path = format!("/v1/slots/{}/changes?max={}&wait_ms=1000", o.slot, o.max);
    loop {
        let read = call(&mut o.source, "GET", &path, None).await?;
        let applied = apply(&read, &client, &mut local_admin).await?;
        total.changes += applied.changes;
        total.ddl += applied.ddl;
        let confirm = read["confirm_lsn"].as_u64();
        if let Some(lsn) = confirm.filter(|lsn| *lsn > confirmed) {
            let body = json!({ "lsn": lsn });
            call(&mut o.source, "POST", &format!("/v1/slots/{}/advance", o.slot), Some(&body)).await?;
            confirmed = lsn;
        }
        let idle = read["count"] == 0 && read["snapshot"] == false;
        if last_report.elapsed() >= o.report_every || (idle && o.until_idle) {
            last_report = Instant::now();
            let info = call(&mut o.source, "GET", &format!("/v1/slots/{}", o.slot), None).await?;
            writeln!(
                out,
                "applied {} changes and {} DDL; confirmed LSN {confirmed}; lag {} LSNs",
                total.changes, total.ddl, info["lag_lsn"]
            )
            .and_then(|()| out.flush())
            .map_err(|e| e.to_string())?;
        }
        if idle && o.until_idle {
            drop(client);
            node.shutdown().await.map_err(|e| e.to_string())?;
            return Ok(());
        }
    }
}
