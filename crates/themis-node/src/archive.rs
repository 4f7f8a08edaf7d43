//! WAL archiving (`[archive]`): the leader ships committed WAL and base backups to the
//! archive (`themis_replication::pitr`); every node holds its WAL until it is archived.
//!
//! Each second the leader archives a base backup whenever the Raft snapshot has moved past
//! the last one (the snapshot file is the store's consistent image at its LSN), then the
//! committed records after the archive's position, in chunks (`chunk_mb`, or after
//! `timeout_secs`). A new leader lists the manifest and goes on from its end, so a failover
//! leaves no gap and no duplicate (entries are create-only, named by their first LSN).
//! Followers list the manifest every ten seconds to learn the position; every node holds
//! its WAL from the position on (the retention hold `archive`). An archive that fails or
//! falls behind shows in `themis_archive_*` metrics and the log; the WAL is kept meanwhile.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use themis_replication::clock::Timestamp;
use themis_replication::pitr::{Archive, ArchiveSpec, Archiver, PitrError, RetentionPolicy};
use themis_replication::raft::driver::snapshot_machine;
use themis_replication::raft::durable::decode_snapshot;
use themis_replication::ship::StateMachine;
use themis_replication::wal::Lsn;

use crate::server::Shared;
use crate::store::DocStore;

/// The archive's progress, for metrics.
#[derive(Debug, Default)]
pub struct ArchiveStats {
    /// Everything up to this LSN is archived.
    pub archived_lsn: AtomicU64,
    /// Committed LSNs not archived yet (on the leader).
    pub lag_lsns: AtomicU64,
    /// How long the oldest of them has waited, ms.
    pub lag_ms: AtomicU64,
    /// Objects this node wrote.
    pub objects: AtomicU64,
    /// Failures (list, put, read), each retried.
    pub errors: AtomicU64,
    /// The LSN of the newest base backup this node knows of.
    pub base_lsn: AtomicU64,
    /// WAL segments holding unarchived committed entries (on the leader).
    pub lag_segments: AtomicU64,
    /// Their bytes on disk.
    pub lag_bytes: AtomicU64,
    /// The last failure, while archiving fails: when (ms since the Unix epoch) and why.
    pub failing: std::sync::Mutex<Option<(u64, String)>>,
}

impl ArchiveStats {
    /// The archive's state for `GET /v1/cluster/status` and `themis status`: position,
    /// lag, and an alert when archiving fails or falls behind (more than three chunk
    /// timeouts of unarchived WAL).
    #[must_use]
    pub fn status(&self, timeout_ms: u64) -> serde_json::Value {
        let lag_ms = self.lag_ms.load(Ordering::Relaxed);
        let failing = self.failing.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let alert = match &failing {
            Some((_, why)) => Some(format!("archiving fails: {why}")),
            None if lag_ms > 3 * timeout_ms => {
                Some(format!("archiving is behind: {lag_ms} ms of committed WAL unarchived"))
            }
            None => None,
        };
        serde_json::json!({
            "archived_lsn": self.archived_lsn.load(Ordering::Relaxed),
            "base_lsn": self.base_lsn.load(Ordering::Relaxed),
            "lag_lsns": self.lag_lsns.load(Ordering::Relaxed),
            "lag_segments": self.lag_segments.load(Ordering::Relaxed),
            "lag_bytes": self.lag_bytes.load(Ordering::Relaxed),
            "lag_ms": lag_ms,
            "objects": self.objects.load(Ordering::Relaxed),
            "errors": self.errors.load(Ordering::Relaxed),
            "alert": alert,
        })
    }

    fn fail(&self, why: &PitrError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.failing.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((now_ms(), why.to_string()));
    }

    fn ok(&self) {
        *self.failing.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }
}

/// The WAL segments from the one holding `from` on, and their bytes on disk.
fn segments_from(wal: &themis_replication::wal::Wal, from: Lsn) -> (u64, u64) {
    let segments = wal.segments();
    let start = segments.partition_point(|(_, first)| *first <= from).saturating_sub(1);
    let held = &segments[start.min(segments.len())..];
    let bytes = held.iter().map(|(path, _)| std::fs::metadata(path).map_or(0, |m| m.len())).sum();
    (held.len() as u64, bytes)
}

/// The retention hold that keeps unarchived WAL.
const HOLD: &str = "archive";
/// How often the leader applies the archive's retention policy.
const RETENTION_EVERY: Duration = Duration::from_mins(5);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Starts the archive task.
pub(crate) fn start(
    shared: &Arc<Shared>,
    spec: &ArchiveSpec,
    cluster: &str,
    raft_dir: PathBuf,
    stats: Arc<ArchiveStats>,
) -> Result<(), PitrError> {
    let archive = spec.open(cluster)?;
    let config = spec.archiver_config();
    let retention = spec.retention.clone();
    // Nothing is compacted away before the archive's position is known: the hold starts
    // at the beginning and only moves once the manifest says how far the archive is.
    shared.wal.set_hold(HOLD, 1);
    tokio::spawn(run(Arc::clone(shared), archive, config, retention, raft_dir, stats));
    Ok(())
}

/// The Raft snapshot on disk: its LSN and the store's bytes (an empty store at LSN 0).
fn raft_snapshot(raft_dir: &std::path::Path) -> Result<(Lsn, Bytes), String> {
    let path = raft_dir.join("snapshot");
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let snapshot = decode_snapshot(&path, &Bytes::from(bytes)).map_err(|e| e.to_string())?;
    if snapshot.meta.lsn == 0 {
        let empty = DocStore::new().snapshot().map_err(|e| e.to_string())?;
        return Ok((0, empty));
    }
    let machine = snapshot_machine(&snapshot.data).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((snapshot.meta.lsn, machine))
}

async fn run(
    shared: Arc<Shared>,
    archive: Archive,
    config: themis_replication::pitr::ArchiverConfig,
    retention: RetentionPolicy,
    raft_dir: PathBuf,
    stats: Arc<ArchiveStats>,
) {
    let mut archiver: Option<Archiver> = None;
    let mut last_listed: Option<Instant> = None;
    let mut entries = std::collections::BTreeMap::new();
    let mut last_pruned: Option<Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let committed = shared.manager.status().commit_lsn;
        if !shared.manager.leadership().1 {
            archiver = None;
            if last_listed.is_some_and(|t| t.elapsed() < Duration::from_secs(10)) {
                continue;
            }
            last_listed = Some(Instant::now());
            match archive.manifest_cached(&mut entries).await {
                Ok(manifest) => {
                    let through = manifest.archived_through();
                    stats.archived_lsn.store(through, Ordering::Relaxed);
                    if let Some(base) = manifest.base.last() {
                        stats.base_lsn.store(base.last_lsn, Ordering::Relaxed);
                    }
                    shared.wal.set_hold(HOLD, through + 1);
                }
                Err(e) => {
                    stats.fail(&e);
                    tracing::warn!(error = %e, "listing the archive failed; the WAL stays held");
                }
            }
            continue;
        }
        if archiver.is_none() {
            match Archiver::start(archive.clone(), config).await {
                Ok(a) => archiver = Some(a),
                Err(e) => {
                    stats.fail(&e);
                    tracing::warn!(error = %e, "the archiver could not read the manifest; retrying");
                    continue;
                }
            }
        }
        let a = archiver.as_mut().expect("started above");
        shared.wal.set_hold(HOLD, a.position() + 1);
        if let Err(e) = lead(&shared, a, &raft_dir, committed, &stats).await {
            stats.fail(&e);
            tracing::warn!(error = %e, "archiving failed; it is retried and the WAL kept meanwhile");
            // The manifest may have moved under us (another archiver): read it again.
            archiver = None;
            continue;
        }
        shared.wal.set_hold(HOLD, a.position() + 1);
        if retention != RetentionPolicy::default()
            && last_pruned.is_none_or(|t| t.elapsed() >= RETENTION_EVERY)
        {
            last_pruned = Some(Instant::now());
            match archive.apply_retention(&retention, now_ms(), false).await {
                Ok(report) if !report.deleted.is_empty() || !report.cold.is_empty() => {
                    tracing::info!(deleted = report.deleted.len(), cold = report.cold.len(), oldest_base = ?report.oldest_base, "archive retention applied");
                }
                Ok(_) => {}
                Err(e) => {
                    stats.fail(&e);
                    tracing::warn!(error = %e, "applying archive retention failed; retried later");
                }
            }
        }
        stats.ok();
        let lag = a.lag(committed);
        let (segments, bytes) =
            if lag.lsns == 0 { (0, 0) } else { segments_from(&shared.wal, a.position() + 1) };
        stats.lag_segments.store(segments, Ordering::Relaxed);
        stats.lag_bytes.store(bytes, Ordering::Relaxed);
        stats.archived_lsn.store(lag.archived_lsn, Ordering::Relaxed);
        stats.lag_lsns.store(lag.lsns, Ordering::Relaxed);
        stats.lag_ms.store(lag.waited_ms, Ordering::Relaxed);
        stats.objects.store(a.written, Ordering::Relaxed);
    }
}

/// One round on the leader: a base backup if the snapshot moved (or none exists, or the
/// WAL was compacted before it was archived), then the committed WAL.
async fn lead(
    shared: &Shared,
    a: &mut Archiver,
    raft_dir: &std::path::Path,
    committed: Lsn,
    stats: &ArchiveStats,
) -> Result<(), PitrError> {
    // The snapshot file is read (the whole store) only when a base backup is due: the
    // driver's status says where the snapshot stands.
    let snapshot_lsn = shared.manager.status().snapshot_lsn;
    let behind = a.position() + 1 < shared.wal.first_lsn();
    let moved = a.base_lsn().is_none_or(|b| snapshot_lsn > b);
    if !a.has_base() || behind || moved {
        let (snap_lsn, data) = raft_snapshot(raft_dir).map_err(PitrError::Config)?;
        // The snapshot's last entry committed no later than now: a base backup stamped
        // with now is never chosen for a time before it really covered.
        let hlc = if snap_lsn == 0 { Timestamp::ZERO } else { shared.hlc.now() };
        a.base_backup(&data, snap_lsn, hlc).await?;
        stats.base_lsn.store(snap_lsn, Ordering::Relaxed);
    }
    a.step(&shared.wal, committed, false).await?;
    Ok(())
}
