//! Active-active links: this cluster takes another cluster's committed writes from its
//! change stream and applies them here, stamped with where they were first made, so both
//! clusters accept writes and converge (docs/active-active.md).
//!
//! A link is the internal document `_themis_links/<name>`: the remote cluster's name, the
//! addresses of its admin APIs, the files holding its CA and a bearer token for it, and
//! where the link stands: the last remote LSN applied here and what the remote's log had
//! shown of every cluster up to there ([`CausalMarks`]). The leader runs one task per
//! link. It reads the remote's `/v1/cdc/events` over TLS from the applied LSN, and turns
//! each whole entry's changes into stamped ops:
//!
//! - the remote's own writes are applied, stamped with the remote, their LSN and HLC
//!   there, and what the remote had seen of each cluster before them;
//! - writes the remote took from this cluster are not applied (they came from here) but
//!   mark how far the remote had seen this cluster; writes it took from a third cluster
//!   likewise, unless `replicate_foreign_changes`;
//! - internal collections do not cross; schema changes do, each in an entry of its own,
//!   settled against this cluster's (a drop keeps, and records, documents written here
//!   concurrently with it; a schema version only rises).
//!
//! Each batch and the link's new position go into **one** log entry, so after a restart
//! or a failover on either side the link resumes from the position the log holds: nothing
//! is applied twice or skipped. The store settles each write against the document's
//! stamp (`crate::active`). A write stamped too far ahead of this clock stops the link
//! with an error instead of winning every conflict.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response as HttpResponse};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use themis_replication::clock::Timestamp;
use themis_replication::geo::active::{CausalMarks, check_cluster_name, check_skew};
use themis_replication::wal::Lsn;
use themis_replication::wal::op::{Op, OpKind, Stamp, encode_batch};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::active::CONFLICTS_COLLECTION;
use crate::admin::{AdminState, bad_request, error};
use crate::client::Credentials;
use crate::feed::{ChangeFeed, FeedError, FeedEvent};
use crate::protocol::check_name;
use crate::server::Shared;
use crate::store::INTERNAL_PREFIX;

/// The internal collection of links.
pub const LINKS_COLLECTION: &str = "_themis_links";

/// Most changes applied in one log entry.
const MAX_BATCH: usize = 512;
/// How often the leader checks its links' tasks.
const SUPERVISE: Duration = Duration::from_millis(200);
/// How long a link that failed waits before it starts again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How often a link whose reads applied nothing (the remote's own bookkeeping, the
/// writes it took from here) records its position anyway. Not at once: two linked
/// clusters recording such positions would each give the other another entry to read.
const RECORD_IDLE_POSITION: Duration = Duration::from_secs(10);

/// What a link is: the remote cluster and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    /// The remote cluster's name (its `cluster` setting).
    pub remote_cluster: String,
    /// Admin API addresses of the remote's nodes.
    pub addrs: Vec<String>,
    /// The remote cluster's CA certificate (PEM), read on every node that leads.
    pub ca_file: PathBuf,
    /// A bearer token the remote accepts with at least the `read` role.
    pub token_file: PathBuf,
}

/// A link's record in the log: its spec and where it stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkRecord {
    #[serde(flatten)]
    spec: LinkSpec,
    /// The last remote LSN applied here (an entry's, whole).
    applied_lsn: Lsn,
    /// What the remote's log had shown of each cluster up to `applied_lsn`.
    marks: BTreeMap<String, Lsn>,
}

/// A link's state as the leader sees it (`SyncStatus`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct LinkStatus {
    /// `starting`, `streaming`, `error` or `standby` (this node does not lead).
    pub state: String,
    /// The remote's newest LSN this link has heard of (a change or a heartbeat).
    pub remote_lsn: Lsn,
    /// The last remote LSN whose changes are applied here (recorded in the log).
    pub applied_lsn: Lsn,
    /// The last remote LSN read and handled (applied, or nothing to apply).
    pub read_lsn: Lsn,
    /// This cluster's LSN of the last batch applied.
    pub local_lsn: Lsn,
    /// How far behind the remote's writes the link is, in ms (0 when caught up).
    pub lag_ms: u64,
    /// Remote writes applied (settled as conflicts included).
    pub applied_changes: u64,
    /// Changes read and not applied (this cluster's own, internal, DDL).
    pub skipped_changes: u64,
    /// The last error, while the link is failing.
    pub last_error: Option<String>,
    /// Whether a slot on the remote holds its log for this link.
    pub log_held: bool,
}

/// Every link's task and status, on the leader.
#[derive(Debug, Default)]
pub(crate) struct Links {
    statuses: Mutex<BTreeMap<String, LinkStatus>>,
}

impl Links {
    fn update(&self, name: &str, f: impl FnOnce(&mut LinkStatus)) {
        let mut statuses = self.statuses.lock().unwrap_or_else(PoisonError::into_inner);
        f(statuses.entry(name.to_string()).or_default());
    }

    /// A copy of every link's status.
    pub(crate) fn statuses(&self) -> BTreeMap<String, LinkStatus> {
        self.statuses.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

fn records(shared: &Shared) -> BTreeMap<String, LinkRecord> {
    let mut out = BTreeMap::new();
    for (key, value, _) in shared.store.internal_docs(LINKS_COLLECTION) {
        let name = String::from_utf8_lossy(&key).into_owned();
        match serde_json::from_slice::<LinkRecord>(&value) {
            Ok(record) => {
                out.insert(name, record);
            }
            Err(e) => tracing::warn!(link = %name, error = %e, "an undecodable link record; not run"),
        }
    }
    out
}

/// Runs each link on the leader: a task per link, started when this node leads and the
/// link exists, stopped when either ends, started again after a failure.
pub(crate) fn start(shared: &Arc<Shared>) {
    if shared.store.active().is_none() {
        return;
    }
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let mut tasks: BTreeMap<String, (LinkSpec, JoinHandle<()>)> = BTreeMap::new();
        let mut tick = tokio::time::interval(SUPERVISE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let leads = shared.manager.leadership().1;
            let wanted = if leads { records(&shared) } else { BTreeMap::new() };
            tasks.retain(|name, (spec, task)| {
                let keep = wanted.get(name).is_some_and(|r| r.spec == *spec) && !task.is_finished();
                if !keep {
                    task.abort();
                    shared.links.update(name, |s| s.state = if leads { "stopped" } else { "standby" }.into());
                }
                keep
            });
            if !leads {
                let names: Vec<String> = shared.links.statuses().keys().cloned().collect();
                for name in names.iter().filter(|n| !tasks.contains_key(*n)) {
                    shared.links.update(name, |s| s.state = "standby".into());
                }
            }
            for (name, record) in wanted {
                if tasks.contains_key(&name) {
                    continue;
                }
                let spec = record.spec.clone();
                let task = tokio::spawn(run(Arc::clone(&shared), name.clone(), record));
                tasks.insert(name, (spec, task));
            }
        }
    });
}

/// One run of a link until it fails (then the supervisor starts it again).
async fn run(shared: Arc<Shared>, name: String, record: LinkRecord) {
    shared.links.update(&name, |s| {
        s.state = "starting".into();
        s.applied_lsn = record.applied_lsn;
    });
    let failure = match stream(&shared, &name, record).await {
        Ok(()) => return,
        Err(e) => e,
    };
    tracing::warn!(link = %name, error = %failure, "active-active link failed; starting again");
    shared.links.update(&name, |s| {
        s.state = "error".into();
        s.last_error = Some(failure);
    });
    tokio::time::sleep(RETRY_AFTER).await;
}

fn credentials(spec: &LinkSpec) -> Result<(Vec<SocketAddr>, Credentials), String> {
    let read = |what: &str, path: &PathBuf| {
        std::fs::read_to_string(path).map_err(|e| format!("{what} {}: {e}", path.display()))
    };
    let ca = read("ca_file", &spec.ca_file)?;
    let token = read("token_file", &spec.token_file)?;
    let addrs = spec
        .addrs
        .iter()
        .map(|a| a.parse::<SocketAddr>().map_err(|e| format!("address {a:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((addrs, Credentials::tls(ca).with_token(token.trim())))
}

/// The logical slot on the remote that holds its log for this cluster's links: named
/// after this cluster, so every link from here to that remote shares it.
fn slot_name(local: &str) -> String {
    format!("themis_link_{}", local.replace('-', "_"))
}

/// Holds the remote's log for the link: a logical slot on the remote, created if missing
/// and moved to the link's recorded position now and then, so the remote does not compact
/// away entries the link has not applied. Best effort: without it (a token whose role
/// cannot create slots, a remote that refuses) the link still streams, and its status
/// says the log is not held.
struct Hold {
    admin: crate::admin_client::AdminClient,
    slot: String,
    held: bool,
    advanced_to: Lsn,
    advanced_at: std::time::Instant,
}

impl Hold {
    async fn open(addrs: Vec<SocketAddr>, creds: Credentials, local: &str) -> (Hold, Option<String>) {
        let mut admin = crate::admin_client::AdminClient::new(addrs, creds).retry_for(Duration::from_secs(5));
        let slot = slot_name(local);
        let body = json!({ "name": slot, "plugin": "json" });
        let problem = match admin.request("POST", "/v1/slots", Some(&body)).await {
            Ok(a) if a.ok() || a.status == 409 => None,
            Ok(a) => {
                Some(format!("the remote's log is not held for this link (slot {slot}: {})", a.message()))
            }
            Err(e) => Some(format!("the remote's log is not held for this link (slot {slot}: {e})")),
        };
        let hold = Hold {
            admin,
            slot,
            held: problem.is_none(),
            advanced_to: 0,
            advanced_at: std::time::Instant::now(),
        };
        (hold, problem)
    }

    /// Moves the slot to `lsn`, at most once a second.
    async fn advance(&mut self, lsn: Lsn) -> Option<String> {
        if !self.held || lsn <= self.advanced_to || self.advanced_at.elapsed() < Duration::from_secs(1) {
            return None;
        }
        self.advanced_at = std::time::Instant::now();
        let path = format!("/v1/slots/{}/advance", self.slot);
        match self.admin.request("POST", &path, Some(&json!({ "lsn": lsn }))).await {
            Ok(a) if a.ok() => {
                self.advanced_to = lsn;
                None
            }
            Ok(a) => Some(format!("moving slot {} on the remote: {}", self.slot, a.message())),
            Err(e) => Some(format!("moving slot {} on the remote: {e}", self.slot)),
        }
    }
}

/// Streams the remote's changes into this cluster's log until an error.
async fn stream(shared: &Arc<Shared>, name: &str, record: LinkRecord) -> Result<(), String> {
    let (addrs, creds) = credentials(&record.spec)?;
    let local = shared.store.active().map(|a| a.cluster().to_string()).unwrap_or_default();
    let (mut hold, problem) = Hold::open(addrs.clone(), creds.clone(), &local).await;
    shared.links.update(name, |s| s.log_held = problem.is_none());
    if let Some(problem) = problem {
        tracing::warn!(link = %name, "{problem}");
    }
    let mut feed =
        ChangeFeed::new(addrs, creds, "", "", Some(record.applied_lsn)).retry_for(Duration::from_secs(5));
    // The reader runs apart, so a batch is what has arrived while the last one applied.
    let (tx, mut rx) = mpsc::channel::<Result<FeedEvent, FeedError>>(4 * MAX_BATCH);
    let reader = tokio::spawn(async move {
        loop {
            let event = feed.next().await;
            let failed = event.is_err();
            if tx.send(event).await.is_err() || failed {
                return;
            }
        }
    });
    let _reader = AbortOnDrop(reader);
    let mut link = Applier::new(name, record, shared);
    shared.links.update(name, |s| s.state = "streaming".into());
    loop {
        let Some(first) = rx.recv().await else { return Err("the change stream ended".into()) };
        let mut events = vec![first.map_err(|e| e.to_string())?];
        while events.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(event) => events.push(event.map_err(|e| e.to_string())?),
                Err(_) => break,
            }
        }
        for event in events {
            // A schema change goes into a log entry of its own: what came before it is
            // applied first, and it is applied (with the position after it) before what
            // follows.
            let ddl = is_ddl(&event);
            if ddl {
                link.apply().await?;
            }
            link.take(&event)?;
            if ddl && event.id.is_some() {
                link.apply().await?;
            }
        }
        link.apply().await?;
        if let Some(problem) = hold.advance(link.record.applied_lsn).await {
            tracing::warn!(link = %name, "{problem}");
        }
    }
}

/// Whether `event` is a schema change (the envelope starts with its op).
fn is_ddl(event: &FeedEvent) -> bool {
    event.kind == "change" && event.data.starts_with(r#"{"op":"t""#)
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One change as the remote's stream gives it.
#[derive(Deserialize)]
struct ChangeIn<'a> {
    op: &'a str,
    #[serde(borrow)]
    after: Option<&'a RawValue>,
    source: SourceIn<'a>,
    stamp: Option<StampIn>,
    ddl: Option<DdlIn>,
}

#[derive(Deserialize)]
struct DdlIn {
    statement: String,
    schema_version: u64,
}

#[derive(Deserialize)]
struct SourceIn<'a> {
    #[serde(borrow)]
    collection: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    lsn: Lsn,
}

#[derive(Deserialize)]
struct StampIn {
    cluster: String,
    lsn: Lsn,
    hlc: String,
    #[serde(default)]
    seen: BTreeMap<String, Lsn>,
}

/// What a link knows when it reads a change: the two clusters, its settings and the time.
struct View<'a> {
    local: &'a str,
    remote: &'a str,
    replicate_foreign: bool,
    now_ms: u64,
    max_skew_ms: u64,
}

/// What one change of the remote's stream becomes.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Nothing (an internal collection).
    Skip,
    /// Not applied, but the remote's log showed it had applied `cluster`'s LSN `lsn`
    /// (a write from here, or from a third cluster taken from its origin instead).
    Mark { cluster: String, lsn: Lsn },
    /// Applied here, so stamped.
    Apply { kind: OpKind, stamp: Stamp },
}

/// Reads one change (its SSE envelope): refuses one without a stamp, from an origin
/// that is not a cluster name, or stamped more than `max_skew_ms` ahead; the remote's own
/// writes carry what its log had shown before them (`marks`), a forwarded one what its
/// origin had seen.
fn step(data: &str, view: &View<'_>, marks: &CausalMarks) -> Result<Step, String> {
    let change: ChangeIn<'_> = serde_json::from_str(data)
        .map_err(|e| format!("an undecodable change from the remote ({e}): {data}"))?;
    let collection = change.source.collection.as_ref();
    let at = change.source.lsn;
    if collection.starts_with(INTERNAL_PREFIX) {
        return Ok(Step::Skip);
    }
    let Some(stamp) = change.stamp else {
        return Err(format!(
            "the remote's change at LSN {at} carries no stamp: is [active_active] enabled on cluster {}?",
            view.remote
        ));
    };
    check_cluster_name(&stamp.cluster)
        .map_err(|e| format!("a change from an unknown origin at remote LSN {at}: {e}"))?;
    let hlc: Timestamp = stamp
        .hlc
        .parse()
        .map_err(|e| format!("the change at remote LSN {at} has a bad HLC {:?}: {e}", stamp.hlc))?;
    let own = stamp.cluster == view.remote;
    if !own && (stamp.cluster == view.local || !view.replicate_foreign) {
        return Ok(Step::Mark { cluster: stamp.cluster, lsn: stamp.lsn });
    }
    let stamp = Stamp {
        cluster: stamp.cluster,
        lsn: stamp.lsn,
        hlc,
        seen: if own { marks.seen() } else { stamp.seen.into_iter().collect() },
    };
    check_skew(&stamp, view.now_ms, view.max_skew_ms).map_err(|e| e.to_string())?;
    let key = Bytes::from(change.source.id.as_bytes().to_vec());
    let kind = match (change.op, change.after) {
        ("t", _) => {
            let ddl =
                change.ddl.ok_or_else(|| format!("a DDL change without its statement at remote LSN {at}"))?;
            OpKind::Ddl { statement: ddl.statement, schema_version: ddl.schema_version }
        }
        ("c" | "u" | "r", Some(after)) => OpKind::Upsert {
            collection: collection.to_string(),
            key,
            value: Bytes::from(after.get().as_bytes().to_vec()),
        },
        ("d", _) => OpKind::Delete { collection: collection.to_string(), key, before: None },
        (op, _) => return Err(format!("a change of kind {op:?} without a document at remote LSN {at}")),
    };
    Ok(Step::Apply { kind, stamp })
}

/// Turns a link's events into batches and applies them.
struct Applier<'a> {
    name: &'a str,
    record: LinkRecord,
    marks: CausalMarks,
    shared: &'a Arc<Shared>,
    /// Ops of whole entries not applied yet, and of the entry under way.
    ops: Vec<Op>,
    partial: Vec<Op>,
    /// The last whole entry read.
    through: Lsn,
    /// The newest remote HLC among the ops waiting.
    newest_ms: u64,
    skipped: u64,
    /// When the position was last written to the log.
    recorded_at: std::time::Instant,
}

impl<'a> Applier<'a> {
    fn new(name: &'a str, record: LinkRecord, shared: &'a Arc<Shared>) -> Applier<'a> {
        let mut marks = CausalMarks::default();
        for (cluster, lsn) in &record.marks {
            marks.observe(cluster, *lsn);
        }
        let through = record.applied_lsn;
        Applier {
            name,
            record,
            marks,
            shared,
            ops: Vec::new(),
            partial: Vec::new(),
            through,
            newest_ms: 0,
            skipped: 0,
            recorded_at: std::time::Instant::now(),
        }
    }

    /// Reads one event: a change joins the entry under way; an entry's end (an `id:`)
    /// makes the entry whole.
    fn take(&mut self, event: &FeedEvent) -> Result<(), String> {
        match event.kind.as_str() {
            "heartbeat" => {
                if let Some(lsn) = event.id {
                    self.shared.links.update(self.name, |s| s.remote_lsn = s.remote_lsn.max(lsn));
                }
                return Ok(());
            }
            "change" => self.change(&event.data)?,
            other => {
                return Err(format!("the remote's stream sent an event of kind {other:?}: {}", event.data));
            }
        }
        if let Some(lsn) = event.id {
            self.through = lsn;
            self.ops.append(&mut self.partial);
            self.shared.links.update(self.name, |s| s.remote_lsn = s.remote_lsn.max(lsn));
        }
        Ok(())
    }

    fn change(&mut self, data: &str) -> Result<(), String> {
        let active = self.shared.store.active().ok_or("active-active is off")?;
        let view = View {
            local: active.cluster(),
            remote: &self.record.spec.remote_cluster,
            replicate_foreign: self.shared.active_active.replicate_foreign_changes,
            now_ms: self.shared.hlc.now().physical_ms(),
            max_skew_ms: self.shared.active_active.max_clock_skew_ms,
        };
        match step(data, &view, &self.marks)? {
            Step::Skip => self.skipped += 1,
            Step::Mark { cluster, lsn } => {
                self.marks.observe(&cluster, lsn);
                self.skipped += 1;
            }
            Step::Apply { kind, stamp } => {
                // This clock moves past every remote write it applies, so a later write
                // here is later on every clock (last-writer-wins then agrees with
                // causality).
                let _ = self.shared.hlc.update(stamp.hlc);
                self.newest_ms = self.newest_ms.max(stamp.hlc.physical_ms());
                self.partial.push(Op {
                    origin: self.shared.writes.origin(),
                    txn: 0,
                    kind,
                    stamp: Some(stamp),
                });
            }
        }
        Ok(())
    }

    /// Writes the whole entries read, with the link's new position, as one log entry.
    /// Reads that applied nothing move the position in memory only, and reach the log
    /// with the next batch or after [`RECORD_IDLE_POSITION`].
    async fn apply(&mut self) -> Result<(), String> {
        let skipped = std::mem::take(&mut self.skipped);
        self.shared.links.update(self.name, |s| {
            s.read_lsn = self.through;
            s.skipped_changes += skipped;
        });
        if self.ops.is_empty()
            && (self.through == self.record.applied_lsn || self.recorded_at.elapsed() < RECORD_IDLE_POSITION)
        {
            return Ok(());
        }
        self.recorded_at = std::time::Instant::now();
        let count = self.ops.len() as u64;
        self.record.applied_lsn = self.through;
        self.record.marks = self.marks.seen().into_iter().collect();
        let value = Bytes::from(serde_json::to_vec(&self.record).expect("a link record serializes"));
        let mut ops = std::mem::take(&mut self.ops);
        ops.push(Op::new(
            self.shared.writes.origin(),
            0,
            OpKind::Upsert {
                collection: LINKS_COLLECTION.into(),
                key: Bytes::from(self.name.to_string()),
                value,
            },
        ));
        let payload = encode_batch(&ops).map_err(|e| format!("encoding a batch: {e}"))?;
        let lsn = tokio::time::timeout(
            Duration::from_secs(10),
            self.shared.writes.propose_exclusive(&self.shared.manager, payload),
        )
        .await
        .map_err(|_| "applying a batch timed out".to_string())?
        .map_err(|e| format!("applying a batch: {e}"))?;
        let now_ms = self.shared.hlc.now().physical_ms();
        let newest = std::mem::take(&mut self.newest_ms);
        self.shared.links.update(self.name, |s| {
            s.applied_lsn = self.record.applied_lsn;
            s.local_lsn = lsn;
            s.applied_changes += count;
            s.lag_ms = if newest == 0 { 0 } else { now_ms.saturating_sub(newest) };
            s.state = "streaming".into();
            s.last_error = None;
        });
        Ok(())
    }
}

/// The body of `POST /v1/links`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBody {
    name: String,
    #[serde(flatten)]
    spec: LinkSpec,
}

/// `POST /v1/links`: creates a link (through the log); the leader starts it.
pub(crate) async fn create(State(state): State<Arc<AdminState>>, bytes: Bytes) -> HttpResponse {
    let example = r#"{"name":"from-east","remote_cluster":"us-east","addrs":["10.0.1.1:9000"],"ca_file":"/etc/themis/east-ca.pem","token_file":"/etc/themis/east.token"}"#;
    let body: CreateBody = match serde_json::from_slice(&bytes) {
        Ok(b) => b,
        Err(e) => return bad_request(&format!("the body is not a link ({e}); example: {example}")),
    };
    let Some(active) = state.shared.store.active() else {
        return error(
            StatusCode::CONFLICT,
            "active_active_off",
            "links need [active_active] enabled = true on this cluster",
        );
    };
    if let Err(m) = check_name("link", &body.name) {
        return bad_request(&m);
    }
    if let Err(e) = check_cluster_name(&body.spec.remote_cluster) {
        return bad_request(&format!("remote_cluster: {e}"));
    }
    if body.spec.remote_cluster == active.cluster() {
        return bad_request(&format!(
            "remote_cluster = {:?} is this cluster: a link joins two clusters with different names",
            body.spec.remote_cluster
        ));
    }
    if body.spec.addrs.is_empty() {
        return bad_request("addrs: give the remote's admin addresses");
    }
    if let Err(e) = credentials(&body.spec) {
        return bad_request(&e);
    }
    let taken = records(&state.shared);
    if let Some((other, _)) =
        taken.iter().find(|(n, r)| **n != body.name && r.spec.remote_cluster == body.spec.remote_cluster)
    {
        return error(
            StatusCode::CONFLICT,
            "conflict",
            &format!("link {other:?} already takes cluster {}'s changes", body.spec.remote_cluster),
        );
    }
    let record = LinkRecord {
        applied_lsn: taken.get(&body.name).map_or(0, |r| r.applied_lsn),
        marks: taken.get(&body.name).map(|r| r.marks.clone()).unwrap_or_default(),
        spec: body.spec,
    };
    let value = Bytes::from(serde_json::to_vec(&record).expect("a link record serializes"));
    match crate::admin::write_internal(&state.shared, LINKS_COLLECTION, &body.name, Some(value), "link").await
    {
        Ok(lsn) => axum::Json(json!({ "name": body.name, "lsn": lsn })).into_response(),
        Err(r) => r,
    }
}

fn describe(
    shared: &Shared,
    name: &str,
    record: &LinkRecord,
    status: Option<&LinkStatus>,
    hour_ago_ms: u64,
) -> Value {
    let status =
        status.cloned().unwrap_or_else(|| LinkStatus { state: "standby".into(), ..LinkStatus::default() });
    let conflicts = conflicts_with(shared, &record.spec.remote_cluster, hour_ago_ms);
    let synchronized = status.state == "streaming" && status.read_lsn >= status.remote_lsn;
    json!({
        "name": name,
        "remote_cluster": record.spec.remote_cluster,
        "addrs": record.spec.addrs,
        "applied_lsn": record.applied_lsn.max(status.applied_lsn),
        "read_lsn": status.read_lsn,
        "remote_lsn": status.remote_lsn,
        "local_lsn": status.local_lsn,
        "lag_ms": status.lag_ms,
        "state": status.state,
        "applied_changes": status.applied_changes,
        "skipped_changes": status.skipped_changes,
        "conflicts_last_hour": conflicts,
        "is_synchronized": synchronized,
        "log_held": status.log_held,
        "last_error": status.last_error,
    })
}

/// Conflict records with `cluster` on the remote side whose remote write is newer than
/// `since_ms`.
fn conflicts_with(shared: &Shared, cluster: &str, since_ms: u64) -> u64 {
    shared
        .store
        .internal_docs(CONFLICTS_COLLECTION)
        .iter()
        .filter_map(|(_, v, _)| serde_json::from_slice::<Value>(v).ok())
        .filter(|r| r["remote"]["cluster"] == cluster)
        .filter(|r| {
            r["remote"]["hlc"]
                .as_str()
                .and_then(|t| t.parse::<Timestamp>().ok())
                .is_some_and(|t| t.physical_ms() >= since_ms)
        })
        .count() as u64
}

/// `GET /v1/links`: every link with its `SyncStatus` (the leader's view; another node
/// reports the links with state `standby`).
pub(crate) async fn list(State(state): State<Arc<AdminState>>) -> HttpResponse {
    let shared = &state.shared;
    let statuses = shared.links.statuses();
    let hour_ago = shared.hlc.now().physical_ms().saturating_sub(3_600_000);
    let links: Vec<Value> = records(shared)
        .iter()
        .map(|(name, record)| describe(shared, name, record, statuses.get(name), hour_ago))
        .collect();
    axum::Json(json!({ "links": links, "cluster": shared.store.active().map(crate::active::Active::cluster), "conflicts_total": shared.store.conflicts() })).into_response()
}

/// `GET /v1/links/{name}`.
pub(crate) async fn get_link(State(state): State<Arc<AdminState>>, Path(name): Path<String>) -> HttpResponse {
    let shared = &state.shared;
    let hour_ago = shared.hlc.now().physical_ms().saturating_sub(3_600_000);
    match records(shared).get(&name) {
        Some(record) => {
            axum::Json(describe(shared, &name, record, shared.links.statuses().get(&name), hour_ago))
                .into_response()
        }
        None => error(StatusCode::NOT_FOUND, "not_found", &format!("no link {name:?}")),
    }
}

/// `DELETE /v1/links/{name}`: stops the link (its position is forgotten).
pub(crate) async fn drop_link(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
) -> HttpResponse {
    if !records(&state.shared).contains_key(&name) {
        return error(StatusCode::NOT_FOUND, "not_found", &format!("no link {name:?}"));
    }
    let record = records(&state.shared).remove(&name);
    let lsn = match crate::admin::write_internal(&state.shared, LINKS_COLLECTION, &name, None, "link").await {
        Ok(lsn) => lsn,
        Err(r) => return r,
    };
    // The slot that held the remote's log for this cluster goes too, unless another
    // link to that remote still uses it; a remote that cannot be reached is named.
    let mut slot = Value::Null;
    if let (Some(record), Some(active)) = (record, state.shared.store.active())
        && !records(&state.shared).values().any(|r| r.spec.remote_cluster == record.spec.remote_cluster)
        && let Ok((addrs, creds)) = credentials(&record.spec)
    {
        let name = slot_name(active.cluster());
        let mut admin = crate::admin_client::AdminClient::new(addrs, creds).retry_for(Duration::from_secs(5));
        slot = match admin.request("DELETE", &format!("/v1/slots/{name}"), None).await {
            Ok(a) if a.ok() || a.status == 404 => json!({ "name": name, "dropped": true }),
            Ok(a) => json!({ "name": name, "dropped": false, "error": a.message() }),
            Err(e) => json!({ "name": name, "dropped": false, "error": e.to_string() }),
        };
    }
    axum::Json(json!({ "name": name, "lsn": lsn, "remote_slot": slot })).into_response()
}

/// The body of `POST /v1/links/conflicts/resolve`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResolveBody {
    collection: String,
    id: String,
    /// Which sibling to keep (0: the older).
    winner: usize,
}

/// `POST /v1/links/conflicts/resolve` with `{"collection", "id", "winner"}`: settles a
/// document that a `keep_both` collection holds as siblings (`{"_siblings": [...]}`) by
/// writing the chosen one, as any write: it follows both, so every linked cluster takes
/// it.
pub(crate) async fn resolve(State(state): State<Arc<AdminState>>, bytes: Bytes) -> HttpResponse {
    let body: ResolveBody = match serde_json::from_slice(&bytes) {
        Ok(b) => b,
        Err(e) => {
            return bad_request(&format!(
                r#"expected {{"collection": "...", "id": "...", "winner": 0}}: {e}"#
            ));
        }
    };
    let shared = &state.shared;
    let Some((current, _)) = shared.store.get(&body.collection, body.id.as_bytes()) else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no document {}/{}", body.collection, body.id),
        );
    };
    let siblings: Option<Vec<Box<RawValue>>> =
        serde_json::from_slice::<BTreeMap<String, Vec<Box<RawValue>>>>(&current)
            .ok()
            .and_then(|mut m| m.remove("_siblings"));
    let Some(siblings) = siblings else {
        return error(
            StatusCode::CONFLICT,
            "conflict",
            &format!("{}/{} holds no siblings: nothing to resolve", body.collection, body.id),
        );
    };
    let Some(chosen) = siblings.get(body.winner) else {
        return bad_request(&format!(
            "winner = {}: the document holds {} siblings",
            body.winner,
            siblings.len()
        ));
    };
    let value = Bytes::from(chosen.get().as_bytes().to_vec());
    let write = shared.writes.write(
        &shared.manager,
        &shared.store,
        body.collection.clone(),
        Bytes::from(body.id.clone().into_bytes()),
        Some(value),
    );
    match tokio::time::timeout(Duration::from_secs(10), write).await {
        Ok(Ok(lsn)) => {
            axum::Json(json!({ "collection": body.collection, "id": body.id, "lsn": lsn })).into_response()
        }
        Ok(Err(e)) => crate::admin::reply(crate::server::driver_error(e)),
        Err(_) => error(StatusCode::GATEWAY_TIMEOUT, "timeout", "the resolving write timed out"),
    }
}

/// The query of `GET /v1/links/conflicts`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConflictsQuery {
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    100
}

/// `GET /v1/links/conflicts?limit=N`: the newest conflict records, newest first.
pub(crate) async fn conflicts(
    State(state): State<Arc<AdminState>>,
    Query(q): Query<ConflictsQuery>,
) -> HttpResponse {
    if !(1..=crate::active::MAX_CONFLICT_RECORDS).contains(&q.limit) {
        return bad_request(&format!(
            "limit = {}: must be 1 to {}",
            q.limit,
            crate::active::MAX_CONFLICT_RECORDS
        ));
    }
    let records: Vec<Value> = state
        .shared
        .store
        .internal_docs(CONFLICTS_COLLECTION)
        .iter()
        .rev()
        .take(q.limit)
        .filter_map(|(id, v, _)| {
            let mut r: Value = serde_json::from_slice(v).ok()?;
            r["record"] = json!(String::from_utf8_lossy(id));
            Some(r)
        })
        .collect();
    axum::Json(json!({ "conflicts": records, "total": state.shared.store.conflicts() })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(replicate_foreign: bool) -> View<'static> {
        View { local: "us-west", remote: "us-east", replicate_foreign, now_ms: 1_000_000, max_skew_ms: 5_000 }
    }

    fn change(cluster: &str, lsn: Lsn, ms: u64) -> String {
        format!(
            r#"{{"op":"u","after":{{"n":1}},"source":{{"collection":"c","id":"k","lsn":90}},"stamp":{{"cluster":"{cluster}","lsn":{lsn},"hlc":"{ms}.0@1","seen":{{"ap":3}}}}}}"#
        )
    }

    #[test]
    fn the_remotes_writes_apply_with_its_marks_and_the_rest_only_marks() {
        let mut marks = CausalMarks::default();
        marks.observe("us-west", 41);
        let Step::Apply { kind, stamp } = step(&change("us-east", 7, 999_000), &view(false), &marks).unwrap()
        else {
            panic!("the remote's own write applies")
        };
        assert!(matches!(kind, OpKind::Upsert { ref value, .. } if value.as_ref() == br#"{"n":1}"#));
        assert_eq!(
            (stamp.cluster.as_str(), stamp.lsn, stamp.seen),
            ("us-east", 7, vec![("us-west".to_string(), 41)])
        );
        // Our own write echoed back, and a third cluster's: marks only.
        assert_eq!(
            step(&change("us-west", 41, 999_000), &view(false), &marks).unwrap(),
            Step::Mark { cluster: "us-west".into(), lsn: 41 }
        );
        assert_eq!(
            step(&change("ap", 3, 999_000), &view(false), &marks).unwrap(),
            Step::Mark { cluster: "ap".into(), lsn: 3 }
        );
        // Unless forwarding is on: then the third cluster's write applies with its own seen.
        let Step::Apply { stamp, .. } = step(&change("ap", 3, 999_000), &view(true), &marks).unwrap() else {
            panic!("forwarded")
        };
        assert_eq!(stamp.seen, vec![("ap".to_string(), 3)]);
        // Internal collections never cross.
        let internal =
            change("us-east", 8, 999_000).replace(r#""collection":"c""#, r#""collection":"_themis_links""#);
        assert_eq!(step(&internal, &view(false), &marks).unwrap(), Step::Skip);
    }

    #[test]
    fn skew_unknown_origins_missing_stamps_and_damage_are_refused_by_name() {
        let marks = CausalMarks::default();
        let err = step(&change("us-east", 7, 1_006_000), &view(false), &marks).unwrap_err();
        assert!(err.contains("6000 ms ahead") && err.contains("cluster us-east at LSN 7"), "{err}");
        step(&change("us-east", 7, 1_004_000), &view(false), &marks).unwrap();
        let err = step(&change("US East!", 7, 999_000), &view(false), &marks).unwrap_err();
        assert!(err.contains("unknown origin at remote LSN 90"), "{err}");
        let unstamped = r#"{"op":"c","after":{},"source":{"collection":"c","id":"k","lsn":5}}"#;
        let err = step(unstamped, &view(false), &marks).unwrap_err();
        assert!(err.contains("carries no stamp") && err.contains("us-east"), "{err}");
        let bad_hlc = change("us-east", 7, 1).replace("1.0@1", "soon");
        assert!(step(&bad_hlc, &view(false), &marks).unwrap_err().contains("bad HLC"));
        assert!(step("{not json", &view(false), &marks).unwrap_err().contains("undecodable"));
        let no_doc = change("us-east", 7, 999_000).replace(r#""after":{"n":1}"#, r#""after":null"#);
        assert!(step(&no_doc, &view(false), &marks).unwrap_err().contains("without a document"));
    }
}
