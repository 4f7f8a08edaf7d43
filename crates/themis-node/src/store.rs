//! The embedded document store: collections of JSON documents by id, in memory, applied
//! from the replicated log. Snapshots are the whole store, encoded with postcard; the Raft
//! storage keeps them in its snapshot file, and a restart restores the snapshot and
//! replays the log after it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use themis_replication::clock::{NodeId, Timestamp};
use themis_replication::geo::active::DocStamp;
use themis_replication::logical::{DdlStatement, SnapshotDoc};
use themis_replication::ship::{ApplyError, Change, StateMachine};
use themis_replication::wal::Lsn;
use themis_replication::wal::op::{Op, OpKind};

use themis_replication::geo::active::{Verdict, classify};
use themis_replication::wal::op::Stamp;

use crate::active::{Active, CONFLICTS_COLLECTION, Decision, MAX_CONFLICT_RECORDS};

const SHARDS: usize = 64;

/// Collections whose names start with this are the node's own bookkeeping (slot records,
/// sink checkpoints, collection metadata). The store also keeps them in a small index of
/// their own, so they can be listed without scanning every document.
pub const INTERNAL_PREFIX: &str = "_themis_";

/// The collection holding each created collection's metadata (`{"schema_version": n}`),
/// written by the store itself when it applies DDL.
pub const COLLECTIONS_COLLECTION: &str = "_themis_collections";

type Internal = BTreeMap<(String, Bytes), (Bytes, Lsn)>;

#[derive(Debug, Clone)]
struct Doc {
    value: Bytes,
    lsn: Lsn,
    /// Where the write that made this version was first made (active-active); none for
    /// writes of a cluster without links.
    stamp: Option<Arc<DocStamp>>,
}

type Shard = HashMap<(String, Bytes), Doc>;

/// An in-memory JSON document store, sharded over 64 locks so the parallel applier's
/// workers rarely contend.
///
/// Applying is idempotent by LSN: a document that already reflects an LSN at or after
/// the op's is left alone, so replaying the log after a snapshot changes nothing twice.
///
/// The leader labels each write insert, update or delete, with the replaced document when
/// the collection logs before-images (`crate::writes`). The store applies inserts and
/// updates as upserts whatever the label, and a delete of a missing document as nothing,
/// because a committed entry must never stop the applier or lose a client's write; a
/// label that disagrees with the document as found (an insert over an existing one, an
/// update of a missing one, a before-image that is not the current value) is counted in [`DocStore::label_mismatches`].
#[derive(Debug)]
pub struct DocStore {
    shards: Vec<Mutex<Shard>>,
    label_mismatches: AtomicU64,
    /// The internal collections' documents, also held in the shards.
    internal: Mutex<Internal>,
    /// Moves on every change to an internal document.
    internal_version: AtomicU64,
    /// DDL applied and not yet taken by [`DocStore::take_ddl`]: statement, schema
    /// version, LSN.
    ddl: Mutex<Vec<(String, u64, Lsn)>>,
    /// Active-active: this cluster's name and conflict resolution, when it has links.
    active: Option<Active>,
    /// Conflicts settled since start.
    conflicts: AtomicU64,
    /// A fault for tests (`crate::fault`): every Nth write to a user collection is
    /// dropped at apply, so a replica diverges as a buggy applier or flipped memory would
    /// make it.
    fault: Option<crate::fault::FaultFile>,
    fault_writes: AtomicU64,
}

impl Default for DocStore {
    fn default() -> Self {
        DocStore {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            label_mismatches: AtomicU64::new(0),
            internal: Mutex::new(BTreeMap::new()),
            internal_version: AtomicU64::new(0),
            ddl: Mutex::new(Vec::new()),
            active: None,
            conflicts: AtomicU64::new(0),
            fault: None,
            fault_writes: AtomicU64::new(0),
        }
    }
}

/// FNV-1a of a document's collection and key: stable across processes and nodes, cheap
/// for short keys. Store shards, the write sequencer's stripes and Kafka sink partitions
/// all place a document by it.
pub(crate) fn document_hash(collection: &str, key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in collection.as_bytes().iter().chain([0xffu8].iter()).chain(key) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Per bucket of [`DocStore::range_hashes`]: documents and the sum of their digests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeHashes {
    /// Documents per bucket.
    pub counts: Vec<u64>,
    /// The wrapping sum of the documents' digests per bucket.
    pub sums: Vec<u128>,
    /// Documents left out as written after the LSN asked for.
    pub newer: u64,
    /// Documents counted.
    pub docs: u64,
}

fn bucket_of(collection: &str, key: &[u8], buckets: u32) -> usize {
    (document_hash(collection, key) % u64::from(buckets.max(1))) as usize
}

/// The first 16 bytes of SHA-256 over a document's collection, key, value and LSN, each
/// length-prefixed.
fn doc_digest(collection: &str, key: &[u8], value: &[u8], lsn: Lsn) -> u128 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [collection.as_bytes(), key, value] {
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part);
    }
    ctx.update(&lsn.to_le_bytes());
    let digest = ctx.finish();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest.as_ref()[..16]);
    u128::from_le_bytes(first)
}

fn shard_of(collection: &str, key: &[u8]) -> usize {
    (document_hash(collection, key) % SHARDS as u64) as usize
}

/// One document in a snapshot. A snapshot is postcard's `Vec<SnapshotRow>`: a varint
/// count, then each row (collection and key and value as length-prefixed bytes, LSN as a
/// varint); then, when any document has a stamp, postcard's `Vec<StampRow>` (a snapshot
/// without that section has no stamps).
#[derive(Serialize, Deserialize)]
struct SnapshotRow<'a> {
    collection: &'a str,
    #[serde(borrow, with = "serde_bytes")]
    key: &'a [u8],
    #[serde(borrow, with = "serde_bytes")]
    value: &'a [u8],
    lsn: Lsn,
}

/// A document's stamp in a snapshot.
#[derive(Serialize, Deserialize)]
struct StampRow<'a> {
    collection: &'a str,
    #[serde(borrow, with = "serde_bytes")]
    key: &'a [u8],
    cluster: &'a str,
    lsn: Lsn,
    hlc_time: u64,
    hlc_node: u64,
}

/// The most bytes postcard spends on a varint-encoded `u64` or `usize`.
const MAX_VARINT: usize = 10;

impl DocStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> DocStore {
        DocStore::default()
    }

    /// An empty store of a cluster with active-active links: writes from other clusters
    /// are checked against each document's stamp, and conflicts settled and recorded.
    #[must_use]
    pub fn with_active(active: Active) -> DocStore {
        DocStore { active: Some(active), ..DocStore::default() }
    }

    /// The active-active settings, when the cluster has links.
    #[must_use]
    pub fn active(&self) -> Option<&Active> {
        self.active.as_ref()
    }

    /// Conflicts settled since start.
    #[must_use]
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }

    /// The document with the LSN that wrote it and its stamp (active-active).
    #[must_use]
    pub fn get_stamped(&self, collection: &str, id: &[u8]) -> Option<(Bytes, Lsn, Option<DocStamp>)> {
        let shard = self.shard(shard_of(collection, id));
        shard
            .get(&(collection.to_string(), Bytes::copy_from_slice(id)))
            .map(|d| (d.value.clone(), d.lsn, d.stamp.as_deref().cloned()))
    }

    fn shard(&self, i: usize) -> MutexGuard<'_, Shard> {
        self.shards[i].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The document `id` in `collection`, with the LSN that wrote it.
    #[must_use]
    pub fn get(&self, collection: &str, id: &[u8]) -> Option<(Bytes, Lsn)> {
        let shard = self.shard(shard_of(collection, id));
        shard.get(&(collection.to_string(), Bytes::copy_from_slice(id))).map(|d| (d.value.clone(), d.lsn))
    }

    /// Documents held.
    #[must_use]
    pub fn len(&self) -> usize {
        (0..SHARDS).map(|i| self.shard(i).len()).sum()
    }

    /// Ops applied whose label disagreed with the document as found (see the type's
    /// documentation); zero when every write went through the leader's sequencer.
    #[must_use]
    pub fn label_mismatches(&self) -> u64 {
        self.label_mismatches.load(Ordering::Relaxed)
    }

    /// Whether the store is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The documents of an internal collection (its name starts with
    /// [`INTERNAL_PREFIX`]): id, document and the LSN that wrote it, by id.
    #[must_use]
    pub fn internal_docs(&self, collection: &str) -> Vec<(Bytes, Bytes, Lsn)> {
        let internal = self.internal.lock().unwrap_or_else(PoisonError::into_inner);
        internal
            .range((collection.to_string(), Bytes::new())..)
            .take_while(|((c, _), _)| c == collection)
            .map(|((_, k), (v, lsn))| (k.clone(), v.clone(), *lsn))
            .collect()
    }

    /// The DDL statements applied since the last call (statement, schema version, LSN),
    /// in log order; the node records them in the slots' schema catalog.
    pub fn take_ddl(&self) -> Vec<(String, u64, Lsn)> {
        std::mem::take(&mut *self.ddl.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// A number that moves whenever an internal document changes.
    #[must_use]
    pub fn internal_version(&self) -> u64 {
        self.internal_version.load(Ordering::Acquire)
    }

    fn note_internal(&self, collection: &str, key: &Bytes, doc: Option<&Doc>) {
        if !collection.starts_with(INTERNAL_PREFIX) {
            return;
        }
        let mut internal = self.internal.lock().unwrap_or_else(PoisonError::into_inner);
        let map_key = (collection.to_string(), key.clone());
        match doc {
            Some(d) => internal.insert(map_key, (d.value.clone(), d.lsn)),
            None => internal.remove(&map_key),
        };
        self.internal_version.fetch_add(1, Ordering::AcqRel);
    }

    /// Drops every Nth write to a user collection at apply, N read from `fault`: for tests
    /// of divergence detection and repair (`themis doctor`). Never in production.
    #[must_use]
    pub fn with_fault(mut self, fault: crate::fault::FaultFile) -> DocStore {
        self.fault = Some(fault);
        self
    }

    fn fault_skips(&self, collection: &str) -> bool {
        let Some(fault) = &self.fault else { return false };
        let every = fault.value();
        every > 0
            && !collection.starts_with(INTERNAL_PREFIX)
            && (self.fault_writes.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(every)
    }

    /// Hashes of the store's contents as of `at_lsn`, split into `buckets` by
    /// the FNV-1a hash of collection and key (the same split on every node): per bucket the documents and the
    /// wrapping sum of each one's SHA-256 over collection, key, value and LSN (first 16
    /// bytes), so two replicas agree on a bucket exactly when they hold the same versions.
    /// Documents written after `at_lsn` are left out and counted in `newer`.
    #[must_use]
    pub fn range_hashes(&self, buckets: u32, at_lsn: Lsn) -> RangeHashes {
        let n = buckets.max(1) as usize;
        let mut out = RangeHashes { counts: vec![0; n], sums: vec![0; n], newer: 0, docs: 0 };
        for i in 0..SHARDS {
            for ((collection, key), doc) in self.shard(i).iter() {
                if doc.lsn > at_lsn {
                    out.newer += 1;
                    continue;
                }
                let b = bucket_of(collection, key, buckets);
                out.counts[b] += 1;
                out.sums[b] = out.sums[b].wrapping_add(doc_digest(collection, key, &doc.value, doc.lsn));
                out.docs += 1;
            }
        }
        out
    }

    /// The documents of bucket `bucket` of `buckets` ([`DocStore::range_hashes`]).
    #[must_use]
    pub fn bucket_docs(&self, buckets: u32, bucket: u32) -> Vec<SnapshotDoc> {
        let mut out = Vec::new();
        for i in 0..SHARDS {
            for ((collection, key), doc) in self.shard(i).iter() {
                if bucket_of(collection, key, buckets) == bucket as usize {
                    out.push(SnapshotDoc {
                        collection: collection.clone(),
                        key: key.clone(),
                        value: doc.value.clone(),
                        lsn: doc.lsn,
                    });
                }
            }
        }
        out.sort_by(|a, b| (&a.collection, &a.key).cmp(&(&b.collection, &b.key)));
        out
    }

    /// Makes bucket `bucket` of `buckets` hold `docs` (the leader's, as of `at_lsn`):
    /// each is written unless this store holds a newer version of it, and each document of
    /// the bucket missing from `docs` is removed unless it was written after `at_lsn`
    /// (the applier keeps running, so nothing newer is undone). Returns (written, removed).
    /// The repair is this node's alone, outside the log; the next snapshot keeps it.
    pub fn repair_bucket(&self, buckets: u32, bucket: u32, at_lsn: Lsn, docs: &[SnapshotDoc]) -> (u64, u64) {
        let wanted: std::collections::HashSet<(&str, &[u8])> =
            docs.iter().map(|d| (d.collection.as_str(), &d.key[..])).collect();
        let (mut written, mut removed) = (0, 0);
        for i in 0..SHARDS {
            let mut shard = self.shard(i);
            let stale: Vec<(String, Bytes)> = shard
                .iter()
                .filter(|((c, k), d)| {
                    bucket_of(c, k, buckets) == bucket as usize
                        && d.lsn <= at_lsn
                        && !wanted.contains(&(c.as_str(), &k[..]))
                })
                .map(|(k, _)| k.clone())
                .collect();
            for key in stale {
                shard.remove(&key);
                self.note_internal(&key.0, &key.1, None);
                removed += 1;
            }
        }
        for d in docs {
            if bucket_of(&d.collection, &d.key, buckets) != bucket as usize {
                continue;
            }
            let mut shard = self.shard(shard_of(&d.collection, &d.key));
            let map_key = (d.collection.clone(), d.key.clone());
            let same = shard
                .get(&map_key)
                .is_some_and(|cur| cur.lsn > d.lsn || (cur.lsn == d.lsn && cur.value == d.value));
            if same {
                continue;
            }
            let doc = Doc { value: d.value.clone(), lsn: d.lsn, stamp: None };
            self.note_internal(&d.collection, &d.key, Some(&doc));
            shard.insert(map_key, doc);
            written += 1;
        }
        (written, removed)
    }

    /// The documents of store shard `shard` (of [`DocStore::SHARDS`]) whose collection
    /// `wants`, copied under the shard's lock: an initial sync reads the store a shard at
    /// a time, each document with the LSN of its version.
    pub(crate) fn shard_docs(&self, shard: usize, wants: &dyn Fn(&str) -> bool) -> Vec<SnapshotDoc> {
        self.shard(shard)
            .iter()
            .filter(|((c, _), _)| wants(c))
            .map(|((c, k), d)| SnapshotDoc {
                collection: c.clone(),
                key: k.clone(),
                value: d.value.clone(),
                lsn: d.lsn,
            })
            .collect()
    }

    /// The stamp `op` leaves on its document and, for a write from another cluster that
    /// settled a conflict, the value to store instead of its own (`Some(None)`: delete);
    /// `None` when the op changes nothing (stale, or the local version won). A settled
    /// conflict's record joins `records`.
    #[allow(clippy::type_complexity, reason = "a private helper of apply")]
    fn settle(
        &self,
        op: &Op,
        current: Option<&Doc>,
        lsn: Lsn,
        index: usize,
        records: &mut Vec<(String, serde_json::Value)>,
    ) -> Option<(Option<Arc<DocStamp>>, Option<Option<Bytes>>)> {
        let stamp = op.stamp.as_ref().map(|s| Arc::new(DocStamp::of(s, lsn)));
        let (Some(incoming), Some(active)) = (&op.stamp, &self.active) else { return Some((stamp, None)) };
        if incoming.cluster == active.cluster() {
            return Some((stamp, None));
        }
        let (collection, key) = op.kind.target()?;
        let value = match &op.kind {
            OpKind::Upsert { value, .. } | OpKind::Insert { value, .. } | OpKind::Update { value, .. } => {
                Some(value)
            }
            _ => None,
        };
        let here = current.map(|d| (&d.value, d.stamp.as_deref()));
        match active.decide(collection, key, here, incoming, value, lsn) {
            Decision::Apply => Some((stamp, None)),
            Decision::Skip => None,
            Decision::Settled { keep_local, value, stamp: kept, record } => {
                records.push((format!("{lsn:020}.{index:04}"), record));
                (!keep_local).then(|| (Some(Arc::new(kept)), Some(value)))
            }
        }
    }

    /// Writes conflict records as the internal documents `_themis_conflicts/<id>`, and
    /// drops the oldest records beyond [`MAX_CONFLICT_RECORDS`] (every node drops the same).
    fn record_conflicts(&self, lsn: Lsn, records: Vec<(String, serde_json::Value)>) -> Vec<Change> {
        if records.is_empty() {
            return Vec::new();
        }
        self.conflicts.fetch_add(records.len() as u64, Ordering::Relaxed);
        let docs: Vec<(Bytes, Doc)> = records
            .into_iter()
            .map(|(id, r)| {
                (Bytes::from(id.into_bytes()), Doc { value: Bytes::from(r.to_string()), lsn, stamp: None })
            })
            .collect();
        let evicted = {
            let mut internal = self.internal.lock().unwrap_or_else(PoisonError::into_inner);
            for (key, doc) in &docs {
                internal.insert((CONFLICTS_COLLECTION.to_string(), key.clone()), (doc.value.clone(), lsn));
            }
            let start = (CONFLICTS_COLLECTION.to_string(), Bytes::new());
            let held =
                internal.range(start.clone()..).take_while(|((c, _), _)| c == CONFLICTS_COLLECTION).count();
            let over = held.saturating_sub(MAX_CONFLICT_RECORDS);
            let oldest: Vec<Bytes> =
                internal.range(start..).take(over).map(|((_, k), _)| k.clone()).collect();
            for k in &oldest {
                internal.remove(&(CONFLICTS_COLLECTION.to_string(), k.clone()));
            }
            oldest
        };
        for k in evicted {
            self.shard(shard_of(CONFLICTS_COLLECTION, &k)).remove(&(CONFLICTS_COLLECTION.to_string(), k));
        }
        let mut changes = Vec::with_capacity(docs.len());
        for (key, doc) in docs {
            self.shard(shard_of(CONFLICTS_COLLECTION, &key))
                .insert((CONFLICTS_COLLECTION.to_string(), key.clone()), doc.clone());
            changes.push(Change {
                lsn,
                collection: CONFLICTS_COLLECTION.to_string(),
                key,
                previous: None,
                current: Some(doc.value),
            });
        }
        self.internal_version.fetch_add(1, Ordering::AcqRel);
        changes
    }

    /// How many shards the store has.
    pub(crate) const SHARDS: usize = SHARDS;

    /// Applies a DDL statement at `lsn`: a drop removes every document of the collection
    /// written before it; create and schema version changes write the collection's
    /// metadata document. A statement the store does not know changes nothing (the
    /// leader refuses those before they reach the log). Every shard is locked: the
    /// applier runs DDL as a barrier, alone.
    ///
    /// A statement from another cluster (active-active) is settled against this one: a
    /// drop keeps, and records, the documents written here concurrently with it (the drop
    /// did not know them); a schema version only ever rises; a create of a collection
    /// that exists leaves it as it is.
    fn apply_ddl(&self, lsn: Lsn, statement: &str, stamp: Option<&Stamp>) -> Vec<Change> {
        let remote = stamp.filter(|s| self.active.as_ref().is_some_and(|a| a.cluster() != s.cluster));
        let Ok(statement) = DdlStatement::parse(statement) else {
            tracing::warn!(lsn, statement, "a DDL entry the store does not know; nothing applied");
            return Vec::new();
        };
        let collection = statement.collection().to_string();
        self.ddl.lock().unwrap_or_else(PoisonError::into_inner).push((
            statement.to_string(),
            statement.schema_version(),
            lsn,
        ));
        let mut shards: Vec<MutexGuard<'_, Shard>> = (0..SHARDS).map(|i| self.shard(i)).collect();
        let mut changes = Vec::new();
        let mut records = Vec::new();
        if let DdlStatement::DropCollection(_) = statement {
            for shard in &mut shards {
                shard.retain(|(c, k), d| {
                    if *c != collection || d.lsn >= lsn {
                        return true;
                    }
                    if let Some(drop) = remote
                        && let Some(here) = d.stamp.as_deref()
                        && classify(Some(here), drop) == Verdict::Conflict
                    {
                        records.push(drop_record(&statement.to_string(), k, d, here, drop, lsn));
                        return true;
                    }
                    changes.push(Change {
                        lsn,
                        collection: c.clone(),
                        key: k.clone(),
                        previous: Some(d.value.clone()),
                        current: None,
                    });
                    false
                });
            }
            for change in &changes {
                self.note_internal(&change.collection, &change.key, None);
            }
        }
        let meta_key = Bytes::from(collection.into_bytes());
        let shard = &mut shards[shard_of(COLLECTIONS_COLLECTION, &meta_key)];
        let map_key = (COLLECTIONS_COLLECTION.to_string(), meta_key.clone());
        let held_version = |d: &Doc| {
            serde_json::from_slice::<serde_json::Value>(&d.value)
                .ok()
                .and_then(|v| v["schema_version"].as_u64())
        };
        let superseded = match (&statement, shard.get(&map_key)) {
            (_, Some(d)) if d.lsn >= lsn => true,
            (DdlStatement::CreateCollection(_), Some(_)) => remote.is_some(),
            (DdlStatement::SetSchemaVersion(..), Some(d)) => {
                remote.is_some() && held_version(d).is_some_and(|v| v >= statement.schema_version())
            }
            _ => false,
        };
        if superseded {
            drop(shards);
            changes.extend(self.record_conflicts(lsn, records));
            return changes;
        }
        let meta = match statement {
            DdlStatement::DropCollection(_) => None,
            _ => Some(Doc {
                value: serde_json::json!({ "schema_version": statement.schema_version() }).to_string().into(),
                lsn,
                stamp: None,
            }),
        };
        let previous = match &meta {
            Some(doc) => shard.insert(map_key, doc.clone()),
            None => shard.remove(&map_key),
        };
        self.note_internal(COLLECTIONS_COLLECTION, &meta_key, meta.as_ref());
        changes.push(Change {
            lsn,
            collection: COLLECTIONS_COLLECTION.to_string(),
            key: meta_key,
            previous: previous.map(|d| d.value),
            current: meta.map(|d| d.value),
        });
        drop(shards);
        changes.extend(self.record_conflicts(lsn, records));
        changes
    }
}

/// The record of a document a drop from another cluster did not remove: it was written
/// here concurrently with the drop.
fn drop_record(
    statement: &str,
    key: &Bytes,
    doc: &Doc,
    here: &DocStamp,
    drop: &Stamp,
    lsn: Lsn,
) -> (String, serde_json::Value) {
    let record = serde_json::json!({
        "kind": "ddl",
        "statement": statement,
        "collection": DdlStatement::parse(statement).map(|s| s.collection().to_string()).unwrap_or_default(),
        "id": String::from_utf8_lossy(key),
        "lsn": lsn,
        "strategy": "drop_keeps_concurrent_writes",
        "winner": "local",
        "error": null,
        "local": {
            "cluster": here.cluster, "lsn": here.lsn, "hlc": here.hlc.to_string(),
            "deleted": false, "value": String::from_utf8_lossy(&doc.value),
        },
        "remote": {
            "cluster": drop.cluster, "lsn": drop.lsn, "hlc": drop.hlc.to_string(),
            "deleted": true, "value": null,
        },
    });
    (format!("{lsn:020}.d.{}", String::from_utf8_lossy(key)), record)
}

impl StateMachine for DocStore {
    type Op = Op;

    fn apply(&self, lsn: Lsn, ops: &[Op]) -> Result<Vec<Change>, ApplyError> {
        if ops.iter().any(|op| matches!(op.kind, OpKind::Ddl { .. })) {
            let mut changes = Vec::new();
            for op in ops {
                match &op.kind {
                    OpKind::Ddl { statement, .. } => {
                        changes.extend(self.apply_ddl(lsn, statement, op.stamp.as_ref()));
                    }
                    _ => changes.extend(self.apply(lsn, std::slice::from_ref(op))?),
                }
            }
            return Ok(changes);
        }
        // Lock every shard the task touches, in index order, so the task is atomic.
        let mut ids: Vec<usize> =
            ops.iter().filter_map(|op| op.kind.target()).map(|(c, k)| shard_of(c, k)).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut guards: Vec<(usize, MutexGuard<'_, Shard>)> =
            ids.iter().map(|&i| (i, self.shard(i))).collect();
        let mut changes = Vec::new();
        let mut records = Vec::new();
        // Documents this task wrote: a later op of the same task on one of them is not a
        // replay, though the document already carries this LSN.
        let mut touched: Vec<(&str, &Bytes)> = Vec::new();
        for (index, op) in ops.iter().enumerate() {
            let Some((collection, key)) = op.kind.target() else { continue };
            let i = shard_of(collection, key);
            let shard = &mut guards.iter_mut().find(|(j, _)| *j == i).expect("locked above").1;
            let map_key = (collection.to_string(), key.clone());
            let current = shard.get(&map_key);
            let ours = || touched.iter().any(|(c, k)| *c == collection && *k == key);
            if current.is_some_and(|d| d.lsn > lsn || (d.lsn == lsn && !ours())) {
                continue;
            }
            touched.push((collection, key));
            let Some((stamp, settled)) = self.settle(op, current, lsn, index, &mut records) else { continue };
            let previous = current.map(|d| d.value.clone());
            let stale =
                |before: &Option<Bytes>| before.as_ref().is_some_and(|b| previous.as_ref() != Some(b));
            let mismatch = match &op.kind {
                OpKind::Insert { .. } => previous.is_some(),
                OpKind::Update { before, .. } => previous.is_none() || stale(before),
                // A delete of a missing document may be a replay (no tombstones are kept),
                // so only a before-image that disagrees with a present one counts.
                OpKind::Delete { before, .. } => previous.is_some() && stale(before),
                _ => false,
            };
            if mismatch {
                self.label_mismatches.fetch_add(1, Ordering::Relaxed);
            }
            let next = match (&op.kind, settled) {
                (_, Some(value)) if value.is_some() || previous.is_some() => value,
                (
                    OpKind::Upsert { value, .. }
                    | OpKind::Insert { value, .. }
                    | OpKind::Update { value, .. },
                    None,
                ) => Some(value.clone()),
                (OpKind::Delete { .. }, None) if previous.is_some() => None,
                _ => continue,
            };
            // A counter merges every write into what is there.
            let next = match (&self.active, &previous, next) {
                (Some(active), Some(current), Some(value)) => {
                    Some(active.merge_into(collection, key, current, &value).unwrap_or(value))
                }
                (_, _, next) => next,
            };
            if self.fault_skips(collection) {
                continue;
            }
            if let Some(value) = &next {
                let doc = Doc { value: value.clone(), lsn, stamp };
                self.note_internal(collection, key, Some(&doc));
                shard.insert(map_key, doc);
            } else {
                self.note_internal(collection, key, None);
                shard.remove(&map_key);
            }
            changes.push(Change {
                lsn,
                collection: collection.to_string(),
                key: key.clone(),
                previous,
                current: next,
            });
        }
        drop(guards);
        changes.extend(self.record_conflicts(lsn, records));
        Ok(changes)
    }

    /// Encodes every document into one buffer sized up front, one shard lock at a time.
    /// The applier calls this with nothing in flight, so the shards form one cut.
    fn snapshot(&self) -> Result<Bytes, ApplyError> {
        let bound: usize = (0..SHARDS)
            .map(|i| {
                self.shard(i)
                    .iter()
                    .map(|((c, k), d)| c.len() + k.len() + d.value.len() + 4 * MAX_VARINT)
                    .sum::<usize>()
            })
            .sum();
        // The row count goes in front once it is known: its varint is written right-aligned
        // into a reserved prefix, and the snapshot starts where it starts.
        let mut out = vec![0u8; MAX_VARINT];
        out.reserve(bound);
        let mut count = 0usize;
        let mut stamps = Vec::new();
        for i in 0..SHARDS {
            for ((collection, key), doc) in self.shard(i).iter() {
                let row = SnapshotRow { collection, key, value: &doc.value, lsn: doc.lsn };
                out = postcard::to_extend(&row, out).map_err(|e| ApplyError::Snapshot(e.to_string()))?;
                count += 1;
                if let Some(stamp) = &doc.stamp {
                    stamps.push((collection.clone(), key.clone(), Arc::clone(stamp)));
                }
            }
        }
        if !stamps.is_empty() {
            let rows: Vec<StampRow<'_>> = stamps
                .iter()
                .map(|(collection, key, stamp)| StampRow {
                    collection,
                    key,
                    cluster: &stamp.cluster,
                    lsn: stamp.lsn,
                    hlc_time: stamp.hlc.raw_time(),
                    hlc_node: stamp.hlc.node().0,
                })
                .collect();
            out = postcard::to_extend(&rows, out).map_err(|e| ApplyError::Snapshot(e.to_string()))?;
        }
        let mut prefix = [0u8; MAX_VARINT];
        let used =
            postcard::to_slice(&count, &mut prefix).map_err(|e| ApplyError::Snapshot(e.to_string()))?.len();
        let start = MAX_VARINT - used;
        out[start..MAX_VARINT].copy_from_slice(&prefix[..used]);
        Ok(Bytes::from(out).slice(start..))
    }

    fn restore(&self, snapshot: &Bytes) -> Result<(), ApplyError> {
        let bad = |e: postcard::Error| ApplyError::Snapshot(format!("document store: {e}"));
        let (count, mut rest) = postcard::take_from_bytes::<usize>(snapshot).map_err(bad)?;
        // Decode everything before touching the store: a damaged snapshot changes nothing.
        // A row takes at least four bytes, which bounds what a damaged count can reserve.
        let mut rows = Vec::with_capacity(count.min(snapshot.len() / 4));
        for _ in 0..count {
            let (row, tail) = postcard::take_from_bytes::<SnapshotRow<'_>>(rest).map_err(bad)?;
            rows.push(row);
            rest = tail;
        }
        let mut stamps: HashMap<(&str, &[u8]), DocStamp> = HashMap::new();
        if !rest.is_empty() {
            let (rows, tail) = postcard::take_from_bytes::<Vec<StampRow<'_>>>(rest).map_err(bad)?;
            // The section is written only when a document has a stamp: an empty one is
            // a second encoding of a snapshot without, or damage.
            if rows.is_empty() || !tail.is_empty() {
                return Err(ApplyError::Snapshot(format!(
                    "document store: {} bytes after the last of {count} documents",
                    rest.len()
                )));
            }
            for row in rows {
                let hlc = Timestamp::from_raw(row.hlc_time, NodeId(row.hlc_node));
                stamps.insert(
                    (row.collection, row.key),
                    DocStamp { cluster: row.cluster.to_string(), lsn: row.lsn, hlc },
                );
            }
        }
        let mut shards: Vec<MutexGuard<'_, Shard>> = (0..SHARDS).map(|i| self.shard(i)).collect();
        for shard in &mut shards {
            shard.clear();
        }
        let mut internal = self.internal.lock().unwrap_or_else(PoisonError::into_inner);
        internal.clear();
        for row in rows {
            let i = shard_of(row.collection, row.key);
            let map_key = (row.collection.to_string(), Bytes::copy_from_slice(row.key));
            let stamp = stamps.remove(&(row.collection, row.key)).map(Arc::new);
            let doc = Doc { value: Bytes::copy_from_slice(row.value), lsn: row.lsn, stamp };
            if row.collection.starts_with(INTERNAL_PREFIX) {
                internal.insert(map_key.clone(), (doc.value.clone(), doc.lsn));
            }
            shards[i].insert(map_key, doc);
        }
        self.internal_version.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use themis_replication::clock::NodeId;

    fn op(kind: OpKind) -> Op {
        Op { origin: NodeId(1), txn: 0, kind, stamp: None }
    }

    fn upsert(key: &str, value: &str) -> Op {
        op(OpKind::Upsert {
            collection: "c".into(),
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        })
    }

    #[test]
    fn ops_of_one_entry_on_one_document_apply_in_order_and_a_replay_applies_none() {
        let store = DocStore::new();
        // Two ops of one entry on one document apply in order; the entry replayed, neither.
        assert_eq!(store.apply(2, &[upsert("x", "1"), upsert("x", "2")]).unwrap().len(), 2);
        assert_eq!(store.get("c", b"x").unwrap().0, "2");
        assert!(store.apply(2, &[upsert("x", "1"), upsert("x", "2")]).unwrap().is_empty());
        assert_eq!(store.get("c", b"x").unwrap().0, "2");
        store
            .apply(
                2,
                &[op(OpKind::Delete { collection: "c".into(), key: Bytes::from_static(b"x"), before: None })],
            )
            .unwrap();
        assert_eq!(store.get("c", b"x").unwrap().0, "2", "a replayed entry's delete is a replay too");
    }

    #[test]
    fn range_hashes_find_a_diverged_bucket_and_repair_makes_it_equal() {
        let good = DocStore::new();
        let faults = tempfile::tempdir().unwrap();
        std::fs::write(faults.path().join("skip"), "7").unwrap();
        let bad = DocStore::new().with_fault(crate::fault::FaultFile::at(faults.path().join("skip")));
        for lsn in 1..=200u64 {
            let ops = [upsert(&format!("k{}", lsn % 150), &lsn.to_string())];
            good.apply(lsn, &ops).unwrap();
            bad.apply(lsn, &ops).unwrap();
        }
        let buckets = 16;
        let (g, b) = (good.range_hashes(buckets, 200), bad.range_hashes(buckets, 200));
        assert_eq!(g.docs, 150);
        let diverged: Vec<u32> = (0..buckets).filter(|&i| g.sums[i as usize] != b.sums[i as usize]).collect();
        assert!(!diverged.is_empty(), "a store that dropped writes differs");
        // As of an earlier LSN, newer documents are left out and counted.
        let early = good.range_hashes(buckets, 100);
        assert_eq!(early.docs + early.newer, 150);
        assert!(early.newer > 0);
        for &i in &diverged {
            let (written, _) = bad.repair_bucket(buckets, i, 200, &good.bucket_docs(buckets, i));
            assert!(written > 0);
        }
        assert_eq!(good.range_hashes(buckets, 200), bad.range_hashes(buckets, 200));
        // A document the reference lacks is removed; one written after the reference's
        // LSN is kept (the applier moved on), and the same repair twice changes nothing.
        bad.apply(201, &[upsert("extra", "x")]).unwrap();
        let i = bucket_of("c", b"extra", buckets) as u32;
        assert_eq!(bad.repair_bucket(buckets, i, 200, &good.bucket_docs(buckets, i)), (0, 0));
        assert_eq!(bad.repair_bucket(buckets, i, 201, &good.bucket_docs(buckets, i)), (0, 1));
        assert!(bad.get("c", b"extra").is_none());
    }

    #[test]
    fn apply_is_idempotent_by_lsn_and_snapshots_round_trip() {
        let store = DocStore::new();
        assert_eq!(store.apply(1, &[upsert("a", "1"), upsert("b", "2")]).unwrap().len(), 2);
        assert!(store.apply(1, &[upsert("a", "1")]).unwrap().is_empty(), "a replay changes nothing");
        let changes = store
            .apply(
                2,
                &[op(OpKind::Delete { collection: "c".into(), key: Bytes::from_static(b"a"), before: None })],
            )
            .unwrap();
        assert_eq!(changes[0].previous.as_deref(), Some(&b"1"[..]));
        assert!(store.get("c", b"a").is_none());
        // Labels that disagree with the store still apply as upserts (no write is lost) and
        // are counted; a delete of a missing document changes nothing.
        assert_eq!(store.label_mismatches(), 0);
        let insert = op(OpKind::Insert {
            collection: "c".into(),
            key: Bytes::from_static(b"b"),
            value: Bytes::from_static(b"9"),
        });
        let update = op(OpKind::Update {
            collection: "c".into(),
            key: Bytes::from_static(b"z"),
            value: Bytes::from_static(b"9"),
            before: None,
        });
        let delete =
            op(OpKind::Delete { collection: "c".into(), key: Bytes::from_static(b"gone"), before: None });
        assert_eq!(store.apply(3, &[insert, update, delete]).unwrap().len(), 2);
        assert_eq!(store.get("c", b"b").unwrap(), (Bytes::from_static(b"9"), 3));
        assert_eq!(store.get("c", b"z").unwrap(), (Bytes::from_static(b"9"), 3));
        assert_eq!(store.label_mismatches(), 2);
        // A before-image that is not the current value is a mismatch too.
        let stale = op(OpKind::Update {
            collection: "c".into(),
            key: Bytes::from_static(b"b"),
            value: Bytes::from_static(b"10"),
            before: Some(Bytes::from_static(b"old")),
        });
        store.apply(4, &[stale]).unwrap();
        assert_eq!(store.label_mismatches(), 3);
        store
            .apply(
                5,
                &[op(OpKind::Delete { collection: "c".into(), key: Bytes::from_static(b"z"), before: None })],
            )
            .unwrap();
        store
            .apply(
                5,
                &[op(OpKind::Delete { collection: "c".into(), key: Bytes::from_static(b"z"), before: None })],
            )
            .unwrap();
        store
            .apply(
                6,
                &[op(OpKind::Update {
                    collection: "c".into(),
                    key: Bytes::from_static(b"b"),
                    value: Bytes::from_static(b"11"),
                    before: Some(Bytes::from_static(b"10")),
                })],
            )
            .unwrap();
        assert_eq!(store.label_mismatches(), 3, "right labels and replays are not mismatches");
        store
            .apply(
                7,
                &[op(OpKind::Delete { collection: "c".into(), key: Bytes::from_static(b"b"), before: None })],
            )
            .unwrap();
        store.apply(8, &[upsert("b", "2")]).unwrap();
        let snapshot = store.snapshot().unwrap();
        let copy = DocStore::new();
        copy.apply(9, &[upsert("stale", "x")]).unwrap();
        copy.restore(&snapshot).unwrap();
        assert_eq!((copy.len(), copy.get("c", b"b").unwrap().0), (1, Bytes::from_static(b"2")));
        let err = copy.restore(&Bytes::from_static(&[0xff, 0xff, 0xff])).unwrap_err();
        assert!(err.to_string().contains("document store"), "{err}");
    }

    fn stamped(cluster: &str, lsn: Lsn, ms: u64, seen: &[(&str, Lsn)], key: &str, value: &str) -> Op {
        Op {
            stamp: Some(themis_replication::wal::op::Stamp {
                cluster: cluster.into(),
                lsn,
                hlc: Timestamp::from_parts(ms, 0, NodeId(1)).unwrap(),
                seen: seen.iter().map(|(c, l)| ((*c).to_string(), *l)).collect(),
            }),
            ..upsert(key, value)
        }
    }

    #[test]
    fn writes_from_another_cluster_apply_skip_or_conflict_by_their_stamps_and_stamps_survive_snapshots() {
        use themis_replication::crdt::{AuditLog, ConflictResolver, Strategy};
        let active = || {
            Active::new(
                "west".into(),
                ConflictResolver::new(Strategy::LastWriterWins, AuditLog::new(16, None)),
            )
        };
        let store = DocStore::with_active(active());
        // Local writes (LSN 0 in the stamp: the entry's own).
        store
            .apply(1, &[stamped("west", 0, 100, &[], "a", "w1"), stamped("west", 0, 100, &[], "b", "w1")])
            .unwrap();
        assert_eq!(store.get_stamped("c", b"a").unwrap().2.unwrap().lsn, 1);
        // East had seen west's LSN 1 when it wrote a: it follows, and applies.
        store.apply(2, &[stamped("east", 7, 150, &[("west", 1)], "a", "e1")]).unwrap();
        assert_eq!(store.get("c", b"a").unwrap().0, "e1");
        // The same east write again (a replay through another path): stale.
        assert!(store.apply(3, &[stamped("east", 7, 150, &[("west", 1)], "a", "e1")]).unwrap().is_empty());
        // West writes b again; east, not having seen it, wrote b earlier on its clock:
        // concurrent, and last-writer-wins keeps west's; the record holds east's value.
        store.apply(4, &[stamped("west", 0, 300, &[], "b", "w2")]).unwrap();
        let changes = store.apply(5, &[stamped("east", 8, 200, &[("west", 1)], "b", "e2")]).unwrap();
        assert_eq!(store.get("c", b"b").unwrap().0, "w2");
        assert_eq!(store.conflicts(), 1);
        assert_eq!(changes.len(), 1, "only the record changed");
        let records = store.internal_docs(CONFLICTS_COLLECTION);
        assert_eq!(records.len(), 1);
        let record: serde_json::Value = serde_json::from_slice(&records[0].1).unwrap();
        assert_eq!(
            (record["winner"].as_str(), record["remote"]["value"].as_str()),
            (Some("local"), Some("e2"))
        );
        // A later concurrent east write wins, and takes east's stamp.
        store.apply(6, &[stamped("east", 9, 400, &[("west", 1)], "b", "e3")]).unwrap();
        let (value, _, stamp) = store.get_stamped("c", b"b").unwrap();
        assert_eq!((value, stamp.unwrap().cluster), (Bytes::from_static(b"e3"), "east".to_string()));
        // Stamps survive a snapshot, and decide the same afterwards.
        let copy = DocStore::with_active(active());
        copy.restore(&store.snapshot().unwrap()).unwrap();
        assert_eq!(copy.get_stamped("c", b"b").unwrap().2, store.get_stamped("c", b"b").unwrap().2);
        assert!(copy.apply(7, &[stamped("east", 9, 400, &[("west", 1)], "b", "e3")]).unwrap().is_empty());
        assert_eq!(copy.internal_docs(CONFLICTS_COLLECTION).len(), 2);
    }

    #[test]
    fn a_snapshot_is_postcards_vector_of_rows_and_damage_is_refused_without_change() {
        #[derive(Serialize)]
        struct PlainRow {
            collection: String,
            key: Vec<u8>,
            value: Vec<u8>,
            lsn: Lsn,
        }
        let plain: Vec<PlainRow> = (0..300u64)
            .map(|i| PlainRow {
                collection: format!("c{}", i % 3),
                key: i.to_string().into_bytes(),
                value: vec![b'x'; (i * 7 % 200) as usize],
                lsn: i + 1,
            })
            .collect();
        let written = Bytes::from(postcard::to_stdvec(&plain).unwrap());
        let store = DocStore::new();
        store.restore(&written).unwrap();
        assert_eq!(store.len(), 300);
        assert_eq!(store.get("c1", b"7").unwrap(), (Bytes::from(vec![b'x'; 49]), 8));
        // Its own snapshot decodes the same way, whatever the order of rows.
        let again = store.snapshot().unwrap();
        assert_eq!(again.len(), written.len());
        let copy = DocStore::new();
        copy.restore(&again).unwrap();
        assert_eq!((copy.len(), copy.get("c2", b"299").unwrap().1), (300, 300));
        // Truncated, or with bytes after the last row: refused, and the store keeps its state.
        for damaged in [again.slice(..again.len() - 1), Bytes::from([&again[..], &[0u8][..]].concat())] {
            let err = copy.restore(&damaged).unwrap_err();
            assert!(err.to_string().contains("document store"), "{err}");
            assert_eq!(copy.len(), 300);
        }
        // An empty store's snapshot is the count zero.
        assert_eq!(DocStore::new().snapshot().unwrap().as_ref(), &[0u8]);
    }
}
