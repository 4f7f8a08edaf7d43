//! The leader's write sequencer: labels each document write as an insert, update or
//! delete and, for collections in `cdc.before_images`, logs the document it replaces, so
//! the log alone tells change data capture what changed.
//!
//! A label is only right if it is computed against the state the write will be applied
//! to: every earlier write in the log. The sequencer keeps, per document, the value of its
//! writes that are queued but not yet applied (the *overlay*), and queues a write's
//! proposal under its document's stripe lock, so the log order of two writes to one
//! document is the order in which the sequencer labeled them. The store is the base once
//! it has applied everything the overlay holds.
//!
//! Three things can make the overlay wrong, and each forces a *resync* (wait for every
//! write in flight to finish, then a `ReadIndex`, which returns once the store has applied
//! everything committed, then an empty overlay) before the next write is labeled:
//! a new term (the previous leader's last entries may not be applied here yet); a failed
//! proposal (refused, or of unknown outcome: later labels may have assumed it); and start.
//!
//! A node whose published status does not say it leads sends no labeled op: it probes
//! with an empty batch, which a follower refuses with `NotLeader` (naming the leader) and a
//! leader whose status lags appends harmlessly, and the write then waits for the status.
//!
//! The store applies labeled ops as upserts whatever the label, so a label that is wrong
//! (a window no lock covers: this node losing and regaining leadership between queueing a
//! write and the driver taking it) never loses a write; it is counted
//! (`themis_cdc_label_mismatches_total`) and the change event says `update` for an insert
//! or carries a stale `before`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use themis_replication::cdc::Filter as CdcFilter;
use themis_replication::clock::NodeId;
use themis_replication::raft::DriverError;
use themis_replication::raft::driver::ReplicationManager;
use themis_replication::wal::Lsn;
use themis_replication::wal::op::{Op, OpKind, Stamp, encode_batch};
use tokio::sync::{Mutex, RwLock};

use crate::store::DocStore;

const STRIPES: usize = 64;
/// Overlay entries a stripe may hold before a write sweeps out the applied ones.
const SWEEP_AT: usize = 1024;

/// A document's writes in flight.
#[derive(Debug)]
struct Pending {
    /// Writes queued and not yet answered.
    in_flight: u32,
    /// Its value after the last queued write (none: deleted).
    after: Option<Bytes>,
    /// The highest LSN of its answered writes.
    lsn: Lsn,
}

type Overlay = HashMap<(String, Bytes), Pending>;

/// Marks the sequencer dirty if a write is dropped before its answer is recorded.
struct Flight<'a> {
    sequencer: &'a Sequencer,
    answered: bool,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.sequencer.dirty.store(true, Ordering::Release);
        }
    }
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct Sequencer {
    origin: NodeId,
    /// Active-active: this cluster's name and clock, which stamp every write.
    stamping: Option<(String, std::sync::Arc<themis_replication::clock::Hlc>)>,
    before_images: Option<CdcFilter>,
    /// The term the overlay was built in; writes hold it shared, a resync exclusively.
    epoch: RwLock<u64>,
    /// A proposal failed since the last resync.
    dirty: AtomicBool,
    stripes: Vec<Mutex<Overlay>>,
}

fn stripe_of(collection: &str, key: &[u8]) -> usize {
    (crate::store::document_hash(collection, key) % STRIPES as u64) as usize
}

impl Sequencer {
    pub(crate) fn new(origin: NodeId, before_images: Option<CdcFilter>) -> Sequencer {
        Sequencer {
            origin,
            stamping: None,
            before_images,
            // Term 0 never leads, so the first write as leader resyncs.
            epoch: RwLock::new(0),
            dirty: AtomicBool::new(false),
            stripes: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Stamps every write with `cluster` and a timestamp of `hlc` (active-active).
    pub(crate) fn with_stamps(
        mut self,
        cluster: String,
        hlc: std::sync::Arc<themis_replication::clock::Hlc>,
    ) -> Sequencer {
        self.stamping = Some((cluster, hlc));
        self
    }

    /// The node id its ops carry as their origin.
    pub(crate) fn origin(&self) -> NodeId {
        self.origin
    }

    /// Proposes a batch that changes documents behind the overlay's back (DDL, a link's
    /// writes from another cluster) while no labeled write is in flight, and sends the next
    /// write through a resync.
    pub(crate) async fn propose_exclusive(
        &self,
        manager: &ReplicationManager,
        payload: Bytes,
    ) -> Result<Lsn, DriverError> {
        let _exclusive = self.epoch.write().await;
        let result = manager.propose(payload).await;
        self.dirty.store(true, Ordering::Release);
        result
    }

    /// The stamp a write made here now carries (active-active), if this cluster stamps.
    pub(crate) fn stamp(&self) -> Option<Stamp> {
        self.stamping.as_ref().map(|(cluster, hlc)| Stamp {
            cluster: cluster.clone(),
            lsn: 0,
            hlc: hlc.now(),
            seen: Vec::new(),
        })
    }

    fn op(&self, kind: OpKind) -> Bytes {
        encode_batch(&[Op { origin: self.origin, txn: 0, kind, stamp: self.stamp() }])
            .expect("names and values were checked")
    }

    /// Writes `value` (none: deletes) as document `key` of `collection`; returns its LSN
    /// once the acknowledgement mode's rule is met.
    pub(crate) async fn write(
        &self,
        manager: &ReplicationManager,
        store: &DocStore,
        collection: String,
        key: Bytes,
        value: Option<Bytes>,
    ) -> Result<Lsn, DriverError> {
        loop {
            let (term, leads) = manager.leadership();
            if !leads {
                // Probe with an empty batch: a follower answers NotLeader, naming the
                // leader. A node that leads but has not published it yet appends a harmless
                // empty entry instead, and the write waits for the status and goes on
                // through the sequencer: no labeled op ever bypasses it.
                manager.propose(encode_batch(&[]).expect("empty")).await?;
                let mut status = manager.watch_status();
                let _ = tokio::time::timeout(Duration::from_millis(100), status.changed()).await;
                continue;
            }
            let epoch = self.epoch.read().await;
            if *epoch != term || self.dirty.load(Ordering::Acquire) {
                drop(epoch);
                self.resync(manager, term).await?;
                continue;
            }
            let i = stripe_of(&collection, &key);
            let mut overlay = self.stripes[i].lock().await;
            let applied = manager.applied_lsn();
            if overlay.len() >= SWEEP_AT {
                overlay.retain(|_, p| p.in_flight > 0 || p.lsn > applied);
            }
            let map_key = (collection, key);
            let prior = match overlay.get(&map_key) {
                Some(p) if p.in_flight > 0 || p.lsn > applied => p.after.clone(),
                _ => store.get(&map_key.0, &map_key.1).map(|(v, _)| v),
            };
            let (collection, key) = map_key.clone();
            let log_before = self.before_images.as_ref().is_some_and(|f| f.matches_collection(&collection));
            let before = if log_before { prior.clone() } else { None };
            let kind = match (&value, prior.is_some()) {
                (Some(v), false) => OpKind::Insert { collection, key, value: v.clone() },
                (Some(v), true) => OpKind::Update { collection, key, value: v.clone(), before },
                (None, true) => OpKind::Delete { collection, key, before },
                // Deleting what does not exist changes nothing: an empty batch still takes
                // its place in the log (the answer's LSN orders it) but yields no event.
                (None, false) => {
                    let answer = manager.propose_queued(encode_batch(&[]).expect("empty")).await?;
                    drop(overlay);
                    drop(epoch);
                    return answer.await;
                }
            };
            let answer = manager.propose_queued(self.op(kind)).await?;
            let entry =
                overlay.entry(map_key.clone()).or_insert(Pending { in_flight: 0, after: None, lsn: 0 });
            entry.in_flight += 1;
            entry.after = value;
            drop(overlay);
            // A caller that gives up (a timeout drops this future) leaves the overlay
            // unsure of this write: the guard sends the next write through a resync.
            let mut flight = Flight { sequencer: self, answered: false };
            let result = answer.await;
            let mut overlay = self.stripes[i].lock().await;
            if let Some(entry) = overlay.get_mut(&map_key) {
                entry.in_flight -= 1;
                if let Ok(lsn) = result {
                    entry.lsn = entry.lsn.max(lsn);
                }
            }
            flight.answered = true;
            drop(overlay);
            if result.is_err() {
                self.dirty.store(true, Ordering::Release);
            }
            drop(epoch);
            return result;
        }
    }

    /// Waits for every write in flight, then for the store to apply everything committed,
    /// and starts an empty overlay in `term`.
    async fn resync(&self, manager: &ReplicationManager, term: u64) -> Result<(), DriverError> {
        let mut epoch = self.epoch.write().await;
        if *epoch == term && !self.dirty.load(Ordering::Acquire) {
            return Ok(());
        }
        manager.read_index().await?;
        for stripe in &self.stripes {
            stripe.lock().await.clear();
        }
        *epoch = term;
        self.dirty.store(false, Ordering::Release);
        Ok(())
    }
}
