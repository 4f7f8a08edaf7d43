//! A slot's configuration, its replicated record and its local state.

use serde::{Deserialize, Serialize};
use themis_cdc::{ChangeOp, Filter};
use themis_wal::Lsn;

use crate::error::LogicalError;
use crate::plugin::OutputPlugin;
use crate::predicate::Predicate;
use crate::transform::Transform;

/// Collections whose names start with this are the store's own bookkeeping (slot
/// records, sink checkpoints); a slot skips them unless its include list names one exactly.
pub const INTERNAL_PREFIX: &str = "_themis_";

/// The longest slot name (PostgreSQL's `NAMEDATALEN - 1`).
pub const MAX_SLOT_NAME: usize = 63;

/// Checks a slot name: 1 to 63 of `a-z`, `0-9`, `_`.
pub fn check_slot_name(name: &str) -> Result<(), LogicalError> {
    let bad = |reason| Err(LogicalError::BadName { name: name.to_string(), reason });
    if name.is_empty() || name.len() > MAX_SLOT_NAME {
        return bad("must be 1 to 63 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        return bad("may hold only a-z, 0-9 and _");
    }
    Ok(())
}

fn yes() -> bool {
    true
}

/// What a slot delivers and how: the part of a slot its creator chooses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotConfig {
    /// The slot's name.
    pub name: String,
    /// How changes are encoded.
    pub plugin: OutputPlugin,
    /// Collection patterns to deliver (names, globs, `tenant_{a,b}.*`); empty: all.
    #[serde(default)]
    pub include: Vec<String>,
    /// Collection patterns never delivered, even when included.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// A row predicate over the document (see [`Predicate`]).
    #[serde(default)]
    pub predicate: Option<String>,
    /// Whether DDL changes are delivered (whatever the collection filter).
    #[serde(default = "yes")]
    pub replicate_ddl: bool,
    /// Rewrites applied to each change.
    #[serde(default)]
    pub transform: Option<Transform>,
    /// Whether the slot starts with a snapshot of the matching documents.
    #[serde(default)]
    pub initial_sync: bool,
}

impl SlotConfig {
    /// A slot of every collection, with the given plugin and no predicate.
    #[must_use]
    pub fn new(name: impl Into<String>, plugin: OutputPlugin) -> SlotConfig {
        SlotConfig {
            name: name.into(),
            plugin,
            include: Vec::new(),
            exclude: Vec::new(),
            predicate: None,
            replicate_ddl: true,
            transform: None,
            initial_sync: false,
        }
    }

    /// Checks everything and compiles the filter; the error names the part at fault.
    pub fn compile(&self) -> Result<SlotFilter, LogicalError> {
        check_slot_name(&self.name)?;
        let cdc = |source| LogicalError::Cdc { slot: self.name.clone(), source };
        // DDL is always read (it stamps later changes with their schema version) and
        // delivered only with `replicate_ddl`.
        let ops = [ChangeOp::Insert, ChangeOp::Update, ChangeOp::Delete, ChangeOp::Ddl];
        let include = Filter::new(&ops, &self.include).map_err(cdc)?;
        let exclude = if self.exclude.is_empty() {
            None
        } else {
            Some(Filter::new(&[ChangeOp::Insert], &self.exclude).map_err(cdc)?)
        };
        let predicate = self.predicate.as_deref().map(Predicate::parse).transpose()?;
        if let Some(transform) = &self.transform {
            transform.validate().map_err(LogicalError::Config)?;
        }
        Ok(SlotFilter {
            include,
            exclude,
            predicate,
            named: self.include.clone(),
            replicate_ddl: self.replicate_ddl,
            transform: self.transform.clone(),
        })
    }
}

/// A slot's configuration as its reader uses it for every change: the compiled
/// collection filter and predicate, whether DDL is delivered, the transform. A slot's
/// configuration never changes (a different one is a new slot).
#[derive(Debug, Clone)]
pub struct SlotFilter {
    pub(crate) include: Filter,
    exclude: Option<Filter>,
    pub(crate) predicate: Option<Predicate>,
    named: Vec<String>,
    pub(crate) replicate_ddl: bool,
    pub(crate) transform: Option<Transform>,
}

impl SlotFilter {
    /// Whether documents of `collection` are delivered (DDL aside).
    #[must_use]
    pub fn wants_collection(&self, collection: &str) -> bool {
        if collection.starts_with(INTERNAL_PREFIX) && !self.named.iter().any(|n| n == collection) {
            return false;
        }
        self.include.matches_collection(collection)
            && !self.exclude.as_ref().is_some_and(|e| e.matches_collection(collection))
    }

    /// The predicate, if any.
    #[must_use]
    pub fn predicate(&self) -> Option<&Predicate> {
        self.predicate.as_ref()
    }
}

/// How much of the WAL a slot holds, as PostgreSQL's `wal_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WalStatus {
    /// The WAL the slot needs would be kept anyway.
    Reserved,
    /// The slot keeps WAL that would otherwise be removed, within `max_slot_wal_keep_size`.
    Extended,
    /// Keeping it would have exceeded `max_slot_wal_keep_size`; it was released and the
    /// slot can no longer be read.
    Lost,
}

impl WalStatus {
    /// Its name.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            WalStatus::Reserved => "reserved",
            WalStatus::Extended => "extended",
            WalStatus::Lost => "lost",
        }
    }
}

/// The part of a slot that every node agrees on: what the log replicates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotRecord {
    /// What the slot delivers.
    pub config: SlotConfig,
    /// Everything up to here has been confirmed by the consumer.
    pub confirmed_flush_lsn: Lsn,
    /// While the initial sync is unconfirmed: the LSN its snapshot covers.
    #[serde(default)]
    pub snapshot_lsn: Option<Lsn>,
    /// Paused: holds its WAL, delivers nothing.
    #[serde(default)]
    pub paused: bool,
    /// Lost: its WAL was released (see [`WalStatus::Lost`]).
    #[serde(default)]
    pub lost: bool,
    /// When it was created, ms since the Unix epoch.
    #[serde(default)]
    pub created_at_ms: u64,
}

impl SlotRecord {
    /// A new slot's record: it delivers what follows `start`; with an initial sync (and a
    /// log that has begun) it is confirmed through `start - 1` and snapshots at `start`.
    #[must_use]
    pub fn new(config: SlotConfig, start: Lsn, created_at_ms: u64) -> SlotRecord {
        let snapshot_lsn = (config.initial_sync && start > 0).then_some(start);
        SlotRecord {
            confirmed_flush_lsn: if snapshot_lsn.is_some() { start - 1 } else { start },
            snapshot_lsn,
            paused: false,
            lost: false,
            created_at_ms,
            config,
        }
    }

    /// Moves the confirmed LSN to `lsn` if that is forward, ending an initial sync it
    /// covers; returns whether it moved.
    pub fn confirm(&mut self, lsn: Lsn) -> bool {
        if lsn <= self.confirmed_flush_lsn {
            return false;
        }
        self.confirmed_flush_lsn = lsn;
        if self.snapshot_lsn.is_some_and(|s| lsn >= s) {
            self.snapshot_lsn = None;
        }
        true
    }

    /// The first LSN the slot still needs: its WAL retention hold.
    #[must_use]
    pub fn restart_lsn(&self) -> Lsn {
        self.confirmed_flush_lsn + 1
    }
}

/// Counters kept per slot (persisted with its state, so they survive restart).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotStats {
    /// Changes delivered (snapshot rows and DDL included).
    pub changes_sent: u64,
    /// Bytes of encoded records delivered.
    pub bytes_sent: u64,
    /// Changes the collection filter, the predicate or a hook kept out.
    pub changes_filtered: u64,
    /// DDL changes delivered.
    pub ddl_sent: u64,
    /// Initial-sync rows delivered.
    pub snapshot_rows: u64,
    /// Log changes skipped because the snapshot already held a newer version.
    pub snapshot_deduplicated: u64,
    /// Documents that were not JSON (delivered as a JSON string of their text).
    pub non_json: u64,
    /// Deletes delivered without being tested by the predicate: they carried no
    /// before-image to test (log before-images for the collection to filter them).
    pub unfiltered_deletes: u64,
    /// Reads.
    pub reads: u64,
    /// The last read, ms since the Unix epoch.
    pub last_read_ms: u64,
    /// Confirmations (advances).
    pub advances: u64,
}

/// A slot's persisted state: the replicated record plus local counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotState {
    /// The replicated part.
    pub record: SlotRecord,
    /// The counters.
    #[serde(default)]
    pub stats: SlotStats,
}

/// What `get_stats` and `slot` report about a slot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlotInfo {
    /// The slot's record.
    #[serde(flatten)]
    pub record: SlotRecord,
    /// The first LSN it holds.
    pub restart_lsn: Lsn,
    /// How its WAL is held.
    pub wal_status: WalStatus,
    /// WAL bytes its hold keeps (whole segments from the one holding `restart_lsn`).
    pub held_bytes: u64,
    /// Log entries after what the slot has confirmed, not counting entries its reader
    /// has passed without finding a change for it once everything it delivered is
    /// confirmed.
    pub lag_lsn: u64,
    /// The highest LSN delivered to its consumer since this node last opened it.
    pub sent_lsn: Lsn,
    /// Whether a consumer is reading it now.
    pub active: bool,
    /// The counters.
    pub stats: SlotStats,
}
