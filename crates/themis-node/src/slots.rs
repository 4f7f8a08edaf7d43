//! Logical replication slots served by the node: replicated through the log, held on
//! every node, read on the leader.
//!
//! A slot's record ([`SlotRecord`]: its configuration, confirmed LSN, paused and lost
//! flags) is the document `_themis_slots/<name>`; a dropped slot's document becomes the
//! tombstone `{"dropped": true}`, so a node that catches up from a snapshot drops it too.
//! Creating, advancing, pausing, resuming and dropping a slot are writes of that document
//! through the leader; every node applies the record to its
//! [`LogicalReplicationManager`] (which keeps the slot's state file under
//! `<wal_dir>/logical_slots` and its WAL retention hold), so after a failover the new
//! leader serves every slot from the position confirmed through the log. Only the
//! leader reads a slot; a node that becomes leader starts its readers again from the
//! confirmed LSN.
//!
//! Every second each node checks its slots' WAL against `max_slot_wal_keep_size`; the
//! leader also moves idle slots past log entries they do not deliver and writes the
//! new positions (and slots it found lost) through the log.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response as HttpResponse};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use themis_replication::cdc::CdcStream;
use themis_replication::logical::{
    AVRO_SCHEMA, AVRO_SCHEMA_ID, DdlStatement, LogicalError, LogicalReplicationManager, PROTO_SCHEMA,
    SlotConfig, SlotRecord, SnapshotDoc, SnapshotProvider, SnapshotSource,
};
use themis_replication::raft::driver::ReplicationManager;
use themis_replication::wal::op::{Op, OpKind, encode_batch};
use themis_replication::wal::{Lsn, Wal};

use crate::admin::{AdminState, Caller, bad_request, error};
use crate::auth::Identity;
use crate::config::NodeConfig;
use crate::server::{Shared, driver_error};
use crate::store::{COLLECTIONS_COLLECTION, DocStore, INTERNAL_PREFIX};

/// The collection slot records are written to.
pub const SLOTS_COLLECTION: &str = "_themis_slots";

/// How long a slot operation waits for its write and for this node to apply it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle slot's position moved by the leader is written through the log at most this
/// often.
const IDLE_WRITE_INTERVAL: Duration = Duration::from_secs(5);
/// The most changes one read returns.
pub const MAX_READ: usize = 10_000;
/// The longest a read waits for a first change, ms.
pub const MAX_WAIT_MS: u64 = 30_000;

/// Opens the node's slot manager over its log and change stream.
pub(crate) fn open(
    config: &NodeConfig,
    wal: &Wal,
    cdc: &CdcStream,
) -> Result<LogicalReplicationManager, LogicalError> {
    LogicalReplicationManager::open(
        wal.dir().join("logical_slots"),
        cdc.clone(),
        Some(wal.clone()),
        config.logical_config(),
    )
}

/// Initial syncs read the store a shard at a time.
#[derive(Debug)]
struct StoreSnapshots {
    store: Arc<DocStore>,
    manager: ReplicationManager,
}

impl SnapshotProvider for StoreSnapshots {
    fn open(&self, at_least: Lsn) -> Result<Box<dyn SnapshotSource>, String> {
        let applied = self.manager.applied_lsn();
        if applied < at_least {
            return Err(format!("the store has applied LSN {applied}; the snapshot needs {at_least}; retry"));
        }
        Ok(Box::new(StoreSnapshot { store: Arc::clone(&self.store), shard: 0, buffer: VecDeque::new() }))
    }
}

struct StoreSnapshot {
    store: Arc<DocStore>,
    shard: usize,
    buffer: VecDeque<SnapshotDoc>,
}

impl SnapshotSource for StoreSnapshot {
    fn next_batch(&mut self, max: usize) -> Result<Vec<SnapshotDoc>, String> {
        while self.buffer.len() < max && self.shard < DocStore::SHARDS {
            self.buffer.extend(self.store.shard_docs(self.shard, &|c| !c.starts_with(INTERNAL_PREFIX)));
            self.shard += 1;
        }
        let take = max.min(self.buffer.len());
        Ok(self.buffer.drain(..take).collect())
    }
}

/// A slot document: a record, or the tombstone of a dropped slot.
enum Stored {
    Live(Box<SlotRecord>),
    Dropped,
}

fn stored(doc: &[u8]) -> Result<Stored, String> {
    let value: Value = serde_json::from_slice(doc).map_err(|e| e.to_string())?;
    if value.get("dropped") == Some(&Value::Bool(true)) {
        return Ok(Stored::Dropped);
    }
    serde_json::from_value(value).map(|r| Stored::Live(Box::new(r))).map_err(|e| e.to_string())
}

fn stored_records(store: &DocStore) -> BTreeMap<String, Stored> {
    let mut out = BTreeMap::new();
    for (key, doc, lsn) in store.internal_docs(SLOTS_COLLECTION) {
        let name = String::from_utf8_lossy(&key).into_owned();
        match stored(&doc) {
            Ok(s) => {
                out.insert(name, s);
            }
            // Only the node writes these; one that does not parse is reported, not guessed at.
            Err(e) => {
                tracing::error!(slot = %name, lsn, error = %e, "a slot record does not parse; left alone");
            }
        }
    }
    out
}

/// Brings this node's slots in line with the replicated records, and records the DDL the
/// store applied in the slots' schema catalog.
fn reconcile(shared: &Shared) {
    for (statement, version, lsn) in shared.store.take_ddl() {
        if let Err(e) = shared.logical.record_ddl(&statement, version, lsn) {
            tracing::error!(lsn, error = %e, "recording a DDL change in the slot catalog failed");
        }
    }
    for (name, record) in stored_records(&shared.store) {
        let result = match record {
            Stored::Live(record) => shared.logical.apply_record(*record),
            Stored::Dropped => match shared.logical.drop_slot(&name) {
                Err(LogicalError::NoSlot(_)) => Ok(()),
                other => other,
            },
        };
        if let Err(e) = result {
            tracing::error!(slot = %name, error = %e, "applying a replicated slot record failed");
        }
    }
}

async fn reconcile_now(shared: &Arc<Shared>) {
    let shared = Arc::clone(shared);
    let _ = tokio::task::spawn_blocking(move || reconcile(&shared)).await;
}

/// Starts the tasks every node runs for its slots.
pub(crate) fn start(shared: &Arc<Shared>) {
    shared.logical.set_snapshot_provider(Arc::new(StoreSnapshots {
        store: Arc::clone(&shared.store),
        manager: shared.manager.clone(),
    }));
    tokio::spawn(follow_records(Arc::clone(shared)));
    tokio::spawn(maintain(Arc::clone(shared)));
}

/// Restarts the slot readers (from each slot's confirmed LSN) when this node leads in a
/// term they have not served yet; returns the term they serve now (0 when it does not
/// lead). Both the poller and every read call it, so a read that reaches a new leader
/// before the poller has looked is not served by a reader the poller resets a moment later
/// (which would deliver the same changes twice).
fn sync_readers(shared: &Shared) -> u64 {
    let (now, leads) = shared.manager.leadership();
    let now = if leads { now } else { 0 };
    let mut served = shared.slot_readers_term.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if now != 0 && now != *served {
        shared.logical.reset_readers();
    }
    *served = now;
    now
}

/// Applies slot records as the store changes, and restarts readers on a new term.
async fn follow_records(shared: Arc<Shared>) {
    let mut seen = u64::MAX;
    loop {
        // A DDL change always writes an internal document (the collection's metadata).
        let version = shared.store.internal_version();
        if version != seen {
            seen = version;
            reconcile_now(&shared).await;
        }
        sync_readers(&shared);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Retention on every node; idle advance and lost slots written through the log on the
/// leader.
async fn maintain(shared: Arc<Shared>) {
    let mut last_write: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let floor = shared.manager.status().snapshot_lsn + 1;
        let logical = shared.logical.clone();
        let lost = tokio::task::spawn_blocking(move || logical.enforce_retention(floor)).await;
        let lost = match lost {
            Ok(Ok(lost)) => lost,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "checking slot retention failed");
                Vec::new()
            }
            Err(_) => Vec::new(),
        };
        for name in &lost {
            tracing::warn!(slot = %name, "the slot's WAL would exceed logical.max_slot_wal_keep_size_mb; it is lost");
        }
        if !shared.manager.leadership().1 {
            continue;
        }
        if let Err(e) = shared.logical.tick().await {
            tracing::debug!(error = %e, "an idle slot could not scan ahead");
        }
        let stored = stored_records(&shared.store);
        for info in shared.logical.get_stats().slots {
            let name = info.record.config.name.clone();
            let Some(Stored::Live(record)) = stored.get(&name) else { continue };
            // Written only when followers would release a segment by it: each write is
            // itself a log entry the idle slot then passes, which must not call for
            // another write.
            let moved = info.record.confirmed_flush_lsn > record.confirmed_flush_lsn
                && segment_of(&shared.wal, info.record.restart_lsn())
                    > segment_of(&shared.wal, record.restart_lsn())
                && last_write.get(&name).is_none_or(|at| at.elapsed() >= IDLE_WRITE_INTERVAL);
            if moved || (info.record.lost && !record.lost) {
                last_write.insert(name.clone(), Instant::now());
                let mut next = (**record).clone();
                next.confirmed_flush_lsn = next.confirmed_flush_lsn.max(info.record.confirmed_flush_lsn);
                next.snapshot_lsn = info.record.snapshot_lsn;
                next.lost |= info.record.lost;
                if let Err(e) = write_record(&shared, &name, Some(&next)).await {
                    tracing::debug!(slot = %name, status = %e.status(), "writing an idle slot's position failed");
                }
            }
        }
    }
}

/// The index of the WAL segment holding `lsn` (segments are numbered from the oldest held).
fn segment_of(wal: &Wal, lsn: Lsn) -> usize {
    wal.segments().partition_point(|(_, first)| *first <= lsn)
}

/// Writes slot `name`'s record (none: its tombstone) through the leader, waits until this
/// node has applied it, and applies it to the manager.
async fn write_record(
    shared: &Arc<Shared>,
    name: &str,
    record: Option<&SlotRecord>,
) -> Result<Lsn, HttpResponse> {
    let doc = match record {
        Some(r) => serde_json::to_vec(r).expect("a record serializes"),
        None => serde_json::to_vec(&json!({"dropped": true})).expect("serializes"),
    };
    let lsn =
        crate::admin::write_internal(shared, SLOTS_COLLECTION, name, Some(Bytes::from(doc)), "slot").await?;
    reconcile_now(shared).await;
    Ok(lsn)
}

/// The HTTP form of a slot error.
pub(crate) fn slot_error(e: &LogicalError) -> HttpResponse {
    let (status, code) = match e {
        LogicalError::NoSlot(_) => (StatusCode::NOT_FOUND, "not_found"),
        LogicalError::SlotExists(_) | LogicalError::Busy(_) | LogicalError::Paused(_) => {
            (StatusCode::CONFLICT, "conflict")
        }
        LogicalError::Lost { .. } => (StatusCode::GONE, "slot_lost"),
        LogicalError::Cdc { source: themis_replication::cdc::CdcError::Gone { .. }, .. } => {
            (StatusCode::GONE, "gone")
        }
        LogicalError::AdvanceBeyond { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, "beyond_log"),
        LogicalError::Transform { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "transform_failed"),
        LogicalError::Snapshot { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        LogicalError::Io { .. } | LogicalError::State { .. } | LogicalError::Encode { .. } => {
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        }
        _ => (StatusCode::BAD_REQUEST, "bad_request"),
    };
    error(status, code, &e.to_string())
}

/// A follower answers 421 naming the leader: only the leader reads slots.
async fn require_leader(shared: &Shared) -> Result<(), HttpResponse> {
    if shared.manager.leadership().1 {
        return Ok(());
    }
    // A follower refuses the empty batch, naming the leader; a leader whose status lags
    // appends it harmlessly.
    match shared.manager.propose(encode_batch(&[]).expect("empty")).await {
        Ok(_) => Ok(()),
        Err(e) => Err(crate::admin::reply(driver_error(e))),
    }
}

fn info_json(shared: &Shared, name: &str) -> HttpResponse {
    match shared.logical.slot_info(name) {
        Ok(info) => axum::Json(info).into_response(),
        Err(e) => slot_error(&e),
    }
}

/// `GET /v1/slots`.
pub(crate) async fn list(State(state): State<Arc<AdminState>>) -> HttpResponse {
    axum::Json(state.shared.logical.get_stats()).into_response()
}

/// `GET /v1/slots/{name}`.
pub(crate) async fn get_slot(State(state): State<Arc<AdminState>>, Path(name): Path<String>) -> HttpResponse {
    info_json(&state.shared, &name)
}

/// `POST /v1/slots`: the body is a slot configuration.
pub(crate) async fn create(State(state): State<Arc<AdminState>>, bytes: Bytes) -> HttpResponse {
    let shared = &state.shared;
    let example =
        r#"{"name":"tenant_acme","plugin":"json","include":["orders"],"predicate":"tenant == 'acme'"}"#;
    let config: SlotConfig = match serde_json::from_slice(&bytes) {
        Ok(c) => c,
        Err(e) => {
            return bad_request(&format!("the body is not a slot configuration ({e}); example: {example}"));
        }
    };
    if let Err(e) = config.compile() {
        return slot_error(&e);
    }
    if config.transform.as_ref().is_some_and(|t| t.hook.is_some()) {
        return bad_request(
            "transform.hook: hooks are registered in code by an embedding program; a node has none",
        );
    }
    let _writer = shared.slot_writes.lock().await;
    if let Some(Stored::Live(_)) = stored_records(&shared.store).get(&config.name) {
        return slot_error(&LogicalError::SlotExists(config.name));
    }
    if shared.logical.get_stats().slots.len() >= shared.logical_max_slots {
        return slot_error(&LogicalError::Config(format!(
            "logical.max_slots is {}; drop a slot first",
            shared.logical_max_slots
        )));
    }
    // The slot starts after what this node (the leader, or the write fails) has
    // published; an initial sync snapshots the store at or after that point.
    let record = SlotRecord::new(config, shared.cdc.resolved().0, crate::changes::now_ms());
    let name = record.config.name.clone();
    if let Err(r) = write_record(shared, &name, Some(&record)).await {
        return r;
    }
    let mut out = info_json(shared, &name);
    if out.status() == StatusCode::OK {
        *out.status_mut() = StatusCode::CREATED;
    }
    out
}

/// Changes one slot's record through the log.
async fn update(
    state: &AdminState,
    name: &str,
    change: impl FnOnce(&mut SlotRecord) -> Result<bool, LogicalError>,
) -> HttpResponse {
    let shared = &state.shared;
    let _writer = shared.slot_writes.lock().await;
    let Some(Stored::Live(mut record)) = stored_records(&shared.store).remove(name) else {
        return slot_error(&LogicalError::NoSlot(name.to_string()));
    };
    match change(&mut record) {
        Ok(true) => {
            if let Err(r) = write_record(shared, name, Some(&record)).await {
                return r;
            }
        }
        Ok(false) => {}
        Err(e) => return slot_error(&e),
    }
    info_json(shared, name)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdvanceBody {
    lsn: Lsn,
}

/// `POST /v1/slots/{name}/advance` with `{"lsn": N}`.
pub(crate) async fn advance(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> HttpResponse {
    let body: AdvanceBody = match serde_json::from_slice(&bytes) {
        Ok(b) => b,
        Err(e) => return bad_request(&format!("the body is not {{\"lsn\": N}} ({e})")),
    };
    let shared = &state.shared;
    let end = shared.cdc.resolved().0;
    // An advance over entries that held nothing for the slot (the consumer confirming a
    // read that only passed other collections, or the slot's own confirmations) moves the
    // slot here and is written through the log only when followers would release a WAL
    // segment by it: writing each one would be an entry the next read passes, and the
    // consumer would confirm that, forever. A new leader re-scans such a range and finds
    // nothing to deliver in it.
    if let (Ok(info), Some(Stored::Live(stored))) =
        (shared.logical.slot_info(&name), stored_records(&shared.store).remove(&name))
        && shared.manager.leadership().1
        && body.lsn <= end
        && body.lsn > stored.confirmed_flush_lsn
        && stored.snapshot_lsn.is_none()
        && info.sent_lsn <= stored.confirmed_flush_lsn
        && segment_of(&shared.wal, body.lsn + 1) <= segment_of(&shared.wal, stored.restart_lsn())
    {
        return match shared.logical.advance_slot(&name, body.lsn) {
            Ok(info) => axum::Json(info).into_response(),
            Err(e) => slot_error(&e),
        };
    }
    update(&state, &name, |record| {
        if body.lsn > end {
            return Err(LogicalError::AdvanceBeyond { slot: name.clone(), lsn: body.lsn, last: end });
        }
        Ok(record.confirm(body.lsn))
    })
    .await
}

/// `POST /v1/slots/{name}/pause`.
pub(crate) async fn pause(State(state): State<Arc<AdminState>>, Path(name): Path<String>) -> HttpResponse {
    update(&state, &name, |record| Ok(!std::mem::replace(&mut record.paused, true))).await
}

/// `POST /v1/slots/{name}/resume`.
pub(crate) async fn resume(State(state): State<Arc<AdminState>>, Path(name): Path<String>) -> HttpResponse {
    update(&state, &name, |record| Ok(std::mem::replace(&mut record.paused, false))).await
}

/// `DELETE /v1/slots/{name}`.
pub(crate) async fn drop_slot(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
) -> HttpResponse {
    let shared = &state.shared;
    let _writer = shared.slot_writes.lock().await;
    if !matches!(stored_records(&shared.store).get(&name), Some(Stored::Live(_))) {
        return slot_error(&LogicalError::NoSlot(name));
    }
    match write_record(shared, &name, None).await {
        Ok(lsn) => axum::Json(json!({"dropped": name, "lsn": lsn})).into_response(),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReadQuery {
    #[serde(default = "default_max")]
    max: usize,
    #[serde(default)]
    wait_ms: u64,
}

fn default_max() -> usize {
    1000
}

/// `GET /v1/slots/{name}/changes?max=N&wait_ms=M`: the next changes, encoded by the slot's
/// plugin (JSON records inline, binary ones as base64 strings in `records`).
pub(crate) async fn read(
    State(state): State<Arc<AdminState>>,
    caller: Option<axum::Extension<Caller>>,
    Path(name): Path<String>,
    Query(query): Query<ReadQuery>,
) -> HttpResponse {
    let shared = &state.shared;
    if !(1..=MAX_READ).contains(&query.max) {
        return bad_request(&format!("max = {}: must be 1 to {MAX_READ}", query.max));
    }
    if query.wait_ms > MAX_WAIT_MS {
        return bad_request(&format!("wait_ms = {}: must be at most {MAX_WAIT_MS}", query.wait_ms));
    }
    let record = match shared.logical.record(&name) {
        Ok(r) => r,
        Err(e) => return slot_error(&e),
    };
    if let Some(axum::Extension(Caller(identity))) = &caller
        && let Identity::Known(principal) = identity.as_ref()
        && !principal.covers(&record.config.include)
    {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            &format!(
                "{} may not read slot {name:?}: its collections are beyond the token's scope",
                principal.name
            ),
        );
    }
    if let Err(r) = require_leader(shared).await {
        return r;
    }
    sync_readers(shared);
    let batch =
        match shared.logical.read_changes(&name, query.max, Duration::from_millis(query.wait_ms)).await {
            Ok(b) => b,
            Err(e) => return slot_error(&e),
        };
    let records = match shared.logical.encode(&name, &batch.changes) {
        Ok(r) => r,
        Err(e) => return slot_error(&e),
    };
    let plugin = record.config.plugin;
    let mut out = json!({
        "slot": name,
        "plugin": plugin.name(),
        "confirm_lsn": batch.confirm_lsn,
        "snapshot": batch.snapshot,
        "count": batch.changes.len(),
    });
    if plugin.is_json() {
        let docs: Vec<Box<RawValue>> = records
            .iter()
            .filter_map(|r| RawValue::from_string(String::from_utf8_lossy(r).into_owned()).ok())
            .collect();
        out["changes"] = serde_json::to_value(docs).expect("raw JSON");
    } else {
        let engine = base64::engine::general_purpose::STANDARD;
        out["records"] = records.iter().map(|r| Value::String(engine.encode(r))).collect();
    }
    axum::Json(out).into_response()
}

/// `GET /v1/logical/schemas/ids/{id}`: the Avro schema of the records framed with `id`,
/// as a schema registry answers.
pub(crate) async fn avro_schema(Path(id): Path<String>) -> HttpResponse {
    if id != AVRO_SCHEMA_ID.to_string() {
        return error(StatusCode::NOT_FOUND, "not_found", &format!("no schema with id {id}"));
    }
    axum::Json(json!({ "schema": AVRO_SCHEMA })).into_response()
}

/// `GET /v1/logical/schemas/protobuf`: the `.proto` of the Protobuf plugin's messages.
pub(crate) async fn proto_schema() -> HttpResponse {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], PROTO_SCHEMA).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DdlBody {
    statement: String,
}

/// `POST /v1/ddl` with `{"statement": "CREATE COLLECTION orders"}`.
pub(crate) async fn ddl(State(state): State<Arc<AdminState>>, bytes: Bytes) -> HttpResponse {
    let shared = &state.shared;
    let body: DdlBody = match serde_json::from_slice(&bytes) {
        Ok(b) => b,
        Err(e) => return bad_request(&format!("the body is not {{\"statement\": \"...\"}} ({e})")),
    };
    let statement = match DdlStatement::parse(&body.statement) {
        Ok(s) => s,
        Err(e) => return slot_error(&e),
    };
    let collection = statement.collection();
    if let Err(m) = crate::protocol::check_name("collection", collection) {
        return bad_request(&m);
    }
    if collection.starts_with(INTERNAL_PREFIX) {
        return bad_request(&format!(
            "collection {collection:?}: names starting with {INTERNAL_PREFIX} are the node's own"
        ));
    }
    let exists = shared.store.get(COLLECTIONS_COLLECTION, collection.as_bytes()).is_some();
    match (&statement, exists) {
        (DdlStatement::CreateCollection(_), true) => {
            return error(
                StatusCode::CONFLICT,
                "conflict",
                &format!("collection {collection:?} already exists"),
            );
        }
        (DdlStatement::DropCollection(_) | DdlStatement::SetSchemaVersion(..), false) => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("collection {collection:?} was never created"),
            );
        }
        _ => {}
    }
    let op = Op {
        origin: shared.writes.origin(),
        txn: 0,
        kind: OpKind::Ddl { statement: statement.to_string(), schema_version: statement.schema_version() },
        stamp: shared.writes.stamp(),
    };
    let payload = encode_batch(&[op]).expect("a statement encodes");
    let lsn =
        match tokio::time::timeout(WRITE_TIMEOUT, shared.writes.propose_exclusive(&shared.manager, payload))
            .await
        {
            Ok(Ok(lsn)) => lsn,
            Ok(Err(e)) => return crate::admin::reply(driver_error(e)),
            Err(_) => return error(StatusCode::GATEWAY_TIMEOUT, "timeout", "the DDL write timed out"),
        };
    axum::Json(json!({
        "statement": statement.to_string(),
        "collection": collection,
        "schema_version": statement.schema_version(),
        "lsn": lsn,
    }))
    .into_response()
}

/// `GET /v1/collections`: the collections created by DDL, with their schema versions.
pub(crate) async fn collections(State(state): State<Arc<AdminState>>) -> HttpResponse {
    let list: Vec<Value> = state
        .shared
        .store
        .internal_docs(COLLECTIONS_COLLECTION)
        .into_iter()
        .map(|(key, doc, lsn)| {
            let meta: Value = serde_json::from_slice(&doc).unwrap_or(Value::Null);
            json!({"name": String::from_utf8_lossy(&key), "schema_version": meta["schema_version"], "lsn": lsn})
        })
        .collect();
    axum::Json(json!({ "collections": list })).into_response()
}
