//! `themis archive status|list|verify` and `themis restore`: the WAL archive from the
//! command line, and a point-in-time restore into a node data directory.

use std::fmt::Write as _;
use std::path::Path;

use themis_node::{DocStore, LocalCluster};
use themis_replication::clock::NodeId;
use themis_replication::pitr::{Archive, Manifest, RestoreReport, RestoreTarget, VerifyReport, restore};
use themis_replication::raft::driver::snapshot_data;
use themis_replication::raft::durable::{encode_hard_state, write_file_atomic, write_snapshot_file};
use themis_replication::raft::{AckPolicy, ConfState, HardState, Snapshot, SnapshotMeta};
use themis_replication::ship::StateMachine;
use themis_replication::wal::{Wal, WalConfig};

fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.2} GiB", bytes as f64 / f64::from(1u32 << 30))
    } else if bytes >= 1 << 20 {
        format!("{:.2} MiB", bytes as f64 / f64::from(1u32 << 20))
    } else {
        format!("{bytes} B")
    }
}

/// `themis archive status`: base backups, the WAL range, what a restore reaches, gaps.
#[must_use]
pub fn render_status(manifest: &Manifest) -> String {
    let size: u64 = manifest.base.iter().chain(&manifest.wal).map(|e| e.size).sum();
    let mut out = String::new();
    let _ = writeln!(out, "base backups: {}", manifest.base.len());
    if let (Some(first), Some(last)) = (manifest.base.first(), manifest.base.last()) {
        let _ = writeln!(
            out,
            "  oldest at LSN {} ({}), newest at LSN {} ({})",
            first.last_lsn, first.last_hlc, last.last_lsn, last.last_hlc
        );
    }
    let _ = writeln!(out, "WAL objects: {}", manifest.wal.len());
    if let (Some(first), Some(last)) = (manifest.wal.first(), manifest.wal.last()) {
        let _ = writeln!(
            out,
            "  LSNs {}..={} ({} .. {})",
            first.first_lsn, last.last_lsn, first.first_hlc, last.last_hlc
        );
    }
    let _ = writeln!(out, "restorable through LSN {}", manifest.archived_through());
    let _ = writeln!(out, "size: {}", human(size));
    for (from, to) in manifest.gaps() {
        let _ = writeln!(out, "GAP: LSNs {from}..={to} are in no object");
    }
    out
}

/// `themis archive list`: one line per object.
#[must_use]
pub fn render_list(manifest: &Manifest) -> String {
    let mut out =
        String::from("kind  first_lsn   last_lsn        size  key               tier      object\n");
    for e in manifest.base.iter().chain(&manifest.wal) {
        let kind = if e.first_lsn == e.last_lsn && manifest.base.contains(e) { "base" } else { "wal" };
        let _ = writeln!(
            out,
            "{kind:<5} {:>9} {:>10} {:>11}  {:<16}  {:<8}  {}",
            e.first_lsn,
            e.last_lsn,
            human(e.size),
            e.key_id,
            e.tier,
            e.object
        );
    }
    out
}

/// `themis archive verify`'s report.
#[must_use]
pub fn render_verify(report: &VerifyReport) -> String {
    let mut out = format!(
        "checked {} objects ({} decompressed); restorable through LSN {}\n",
        report.objects,
        human(report.bytes),
        report.restorable_to
    );
    for d in &report.damaged {
        let _ = writeln!(out, "DAMAGED: {d}");
    }
    for (from, to) in &report.gaps {
        let _ = writeln!(out, "GAP: LSNs {from}..={to}");
    }
    for (a, b) in &report.overlaps {
        let _ = writeln!(out, "OVERLAP: {a} and {b}");
    }
    for o in &report.orphans {
        let _ = writeln!(out, "orphan (no manifest entry; harmless): {o}");
    }
    out.push_str(if report.is_healthy() { "healthy\n" } else { "NOT healthy\n" });
    out
}

/// Restores the archive to `target` into a document store and, unless `dry_run`, writes
/// `dir` as a one-node cluster of cluster `cluster` whose data directory starts from it
/// (`themis server --config DIR/node-1.toml`). `progress` gets (objects done, objects).
pub async fn restore_into(
    archive: &Archive,
    target: RestoreTarget,
    dir: Option<&Path>,
    parallel: usize,
    progress: impl FnMut(usize, usize),
) -> Result<(RestoreReport, usize), String> {
    if let Some(dir) = dir
        && std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
    {
        return Err(format!("{}: not empty; restore writes a new node directory", dir.display()));
    }
    let store = DocStore::new();
    let report = restore(archive, target, &store, parallel, progress).await.map_err(|e| e.to_string())?;
    let documents = store.len();
    let Some(dir) = dir else { return Ok((report, documents)) };
    LocalCluster::write(dir, archive.cluster(), 1, 0, "async")?;
    let raft = dir.join("data-1").join("raft");
    std::fs::create_dir_all(&raft).map_err(|e| format!("{}: {e}", raft.display()))?;
    let lsn = report.restored_lsn;
    let snapshot = Snapshot {
        meta: SnapshotMeta {
            lsn,
            term: 1,
            conf_state: ConfState::with_voters([NodeId(1)]),
            policy: AckPolicy::ASYNC,
        },
        data: snapshot_data(&store.snapshot().map_err(|e| e.to_string())?),
    };
    write_snapshot_file(&raft, &snapshot).map_err(|e| e.to_string())?;
    let hard_state = encode_hard_state(&HardState { term: 1, vote: None, commit: lsn });
    write_file_atomic(&raft, "hard-state", &[&hard_state]).map_err(|e| e.to_string())?;
    // The log starts right after the restored point.
    let (wal, _) = Wal::open(raft.join("wal"), WalConfig::default()).map_err(|e| e.to_string())?;
    wal.restart_at(lsn + 1).map_err(|e| e.to_string())?;
    wal.close().map_err(|e| e.to_string())?;
    Ok((report, documents))
}

/// An RFC 3339 UTC time (`2026-12-06T10:00:00.123Z`) for ms since the Unix epoch.
#[must_use]
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX);
    let rem = secs % 86_400;
    // Civil date from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_round_trips_through_the_restore_parser() {
        for ms in [0, 1_796_551_200_500, 951_782_400_000, 4_102_444_799_999] {
            let text = super::rfc3339(ms);
            assert_eq!(themis_replication::pitr::rfc3339_ms(&text), Some(ms), "{text}");
        }
    }
}
