//! The manifest: one small JSON document per archived object, written after the object
//! and, like it, create-only.
//!
//! ```text
//! <prefix>/wal/<first:020>-<last:020>.tpa         WAL records first..=last
//! <prefix>/base/<lsn:020>.tpa                     a base backup at lsn
//! <prefix>/manifest/wal-<first:020>.json          the WAL object's entry
//! <prefix>/manifest/base-<lsn:020>.json           the base backup's entry
//! ```
//!
//! A WAL entry is named by its first LSN only, so two archivers (an old leader that has not
//! noticed, a new one) can never both record a range starting at the same LSN: the second
//! create fails and that archiver lists the manifest again. Zero-padded LSNs list in order.

use serde::{Deserialize, Serialize};
use themis_clock::Timestamp;
use themis_wal::Lsn;

use crate::error::PitrError;
use crate::object::Kind;

/// The manifest format version.
pub const FORMAT: u32 = 1;

/// One archived object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    /// The format version.
    pub format: u32,
    /// The cluster whose log it holds.
    pub cluster: String,
    /// What it holds.
    pub kind: Kind,
    /// The object's name under the archive prefix.
    pub object: String,
    /// The first LSN (a base backup: its LSN).
    pub first_lsn: Lsn,
    /// The last LSN (a base backup: its LSN).
    pub last_lsn: Lsn,
    /// The commit HLC of the first entry (a base backup: of its last entry).
    pub first_hlc: Timestamp,
    /// The commit HLC of the last entry.
    pub last_hlc: Timestamp,
    /// The object's size in bytes.
    pub size: u64,
    /// The SHA-256 of the object's bytes, hex.
    pub sha256: String,
    /// The key it is encrypted with.
    pub key_id: String,
    /// When it was archived, ms since the Unix epoch.
    pub archived_at_ms: u64,
    /// Its storage tier: `standard`, or `cold` once moved.
    pub tier: String,
}

/// The object name of WAL records `first..=last`.
#[must_use]
pub fn wal_object(first: Lsn, last: Lsn) -> String {
    format!("wal/{first:020}-{last:020}.tpa")
}

/// The object name of a base backup at `lsn`.
#[must_use]
pub fn base_object(lsn: Lsn) -> String {
    format!("base/{lsn:020}.tpa")
}

/// The manifest entry name of an object of `kind` starting at `first`.
#[must_use]
pub fn entry_name(kind: Kind, first: Lsn) -> String {
    match kind {
        Kind::Wal => format!("manifest/wal-{first:020}.json"),
        Kind::Base => format!("manifest/base-{first:020}.json"),
    }
}

/// Every entry of an archive, checked to belong to one cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// WAL objects by first LSN.
    pub wal: Vec<ManifestEntry>,
    /// Base backups by LSN.
    pub base: Vec<ManifestEntry>,
}

impl Manifest {
    /// Parses entries (name, bytes) of cluster `cluster`.
    pub fn parse(cluster: &str, entries: Vec<(String, Vec<u8>)>) -> Result<Manifest, PitrError> {
        let mut manifest = Manifest::default();
        for (name, bytes) in entries {
            let entry: ManifestEntry = serde_json::from_slice(&bytes)
                .map_err(|e| PitrError::Manifest { entry: name.clone(), message: e.to_string() })?;
            if entry.format != FORMAT {
                return Err(PitrError::Manifest {
                    entry: name,
                    message: format!("format {} (this build reads {FORMAT})", entry.format),
                });
            }
            if entry.cluster != cluster {
                return Err(PitrError::ForeignCluster {
                    entry: name,
                    found: entry.cluster,
                    expected: cluster.into(),
                });
            }
            if entry.first_lsn > entry.last_lsn {
                return Err(PitrError::Manifest {
                    entry: name,
                    message: "its LSN range is backwards".into(),
                });
            }
            match entry.kind {
                Kind::Wal => manifest.wal.push(entry),
                Kind::Base => manifest.base.push(entry),
            }
        }
        manifest.wal.sort_by_key(|e| e.first_lsn);
        manifest.base.sort_by_key(|e| e.first_lsn);
        Ok(manifest)
    }

    /// How far a restore can reach: the furthest end of a contiguous run of WAL objects
    /// that starts right after some base backup (with no base backup, after the oldest WAL
    /// object's start); 0 when nothing is archived. The archiver goes on from here.
    #[must_use]
    pub fn archived_through(&self) -> Lsn {
        let starts: Vec<Lsn> = if self.base.is_empty() {
            self.wal.first().map(|w| w.first_lsn - 1).into_iter().collect()
        } else {
            self.base.iter().map(|b| b.last_lsn).collect()
        };
        starts
            .into_iter()
            .map(|start| {
                let mut end = start;
                for e in self.wal.iter().filter(|e| e.last_lsn > start) {
                    if e.first_lsn > end + 1 {
                        break;
                    }
                    end = end.max(e.last_lsn);
                }
                end
            })
            .max()
            .unwrap_or(0)
    }

    /// Holes between consecutive WAL objects, as `(first missing, last missing)`.
    #[must_use]
    pub fn gaps(&self) -> Vec<(Lsn, Lsn)> {
        let mut gaps = Vec::new();
        for pair in self.wal.windows(2) {
            if pair[1].first_lsn > pair[0].last_lsn + 1 {
                gaps.push((pair[0].last_lsn + 1, pair[1].first_lsn - 1));
            }
        }
        gaps
    }

    /// Pairs of WAL objects whose ranges overlap.
    #[must_use]
    pub fn overlaps(&self) -> Vec<(String, String)> {
        self.wal
            .windows(2)
            .filter(|p| p[1].first_lsn <= p[0].last_lsn)
            .map(|p| (p[0].object.clone(), p[1].object.clone()))
            .collect()
    }
}
