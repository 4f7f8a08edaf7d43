//! The archiver: ships a WAL's committed records to an archive in chunks, after a base
//! backup, and knows how far it has come.

use std::time::{Duration, Instant};

use themis_clock::Timestamp;
use themis_wal::{Lsn, Wal, record};

use crate::archive::{Archive, Put};
use crate::error::PitrError;
use crate::manifest::ManifestEntry;

/// When a chunk of WAL is archived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiverConfig {
    /// Archive once this many bytes of committed records wait (default 16 MiB).
    pub chunk_bytes: usize,
    /// Or once the oldest waiting record has waited this long (default 10 s), as
    /// PostgreSQL's `archive_timeout`.
    pub max_age: Duration,
}

impl Default for ArchiverConfig {
    fn default() -> ArchiverConfig {
        ArchiverConfig { chunk_bytes: 16 << 20, max_age: Duration::from_secs(10) }
    }
}

impl ArchiverConfig {
    /// Checks the bounds; the message names the setting and the value. [`Archiver::start`]
    /// calls it.
    pub fn validate(&self) -> Result<(), PitrError> {
        if !(4096..=1 << 30).contains(&self.chunk_bytes) {
            return Err(PitrError::Config(format!(
                "chunk_bytes = {}: must be 4 KiB to 1 GiB",
                self.chunk_bytes
            )));
        }
        if self.max_age < Duration::from_millis(1) || self.max_age > Duration::from_hours(24) {
            return Err(PitrError::Config(format!("max_age = {:?}: must be 1 ms to 24 h", self.max_age)));
        }
        Ok(())
    }
}

/// How far behind the archive is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ArchiveLag {
    /// The last LSN archived.
    pub archived_lsn: Lsn,
    /// Committed LSNs not archived yet.
    pub lsns: u64,
    /// How long the oldest of them has waited, ms.
    pub waited_ms: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Archiver {
    archive: Archive,
    config: ArchiverConfig,
    position: Lsn,
    has_base: bool,
    base_lsn: Option<Lsn>,
    waiting_since: Option<Instant>,
    /// Objects written by this archiver.
    pub written: u64,
}

impl Archiver {
    /// An archiver that goes on where the archive's manifest ends; a bad `config` is
    /// refused first ([`ArchiverConfig::validate`]).
    pub async fn start(archive: Archive, config: ArchiverConfig) -> Result<Archiver, PitrError> {
        config.validate()?;
        let manifest = archive.manifest().await?;
        Ok(Archiver {
            position: manifest.archived_through(),
            has_base: !manifest.base.is_empty(),
            base_lsn: manifest.base.last().map(|b| b.last_lsn),
            archive,
            config,
            waiting_since: None,
            written: 0,
        })
    }

    /// The last LSN archived (the WAL must be held after it).
    #[must_use]
    pub fn position(&self) -> Lsn {
        self.position
    }

    /// Whether the archive holds a base backup (the WAL is archived only after one).
    #[must_use]
    pub fn has_base(&self) -> bool {
        self.has_base
    }

    /// The LSN of the newest base backup archived.
    #[must_use]
    pub fn base_lsn(&self) -> Option<Lsn> {
        self.base_lsn
    }

    /// The archive.
    #[must_use]
    pub fn archive(&self) -> &Archive {
        &self.archive
    }

    /// How far behind the archive is, given the committed LSN.
    #[must_use]
    pub fn lag(&self, committed: Lsn) -> ArchiveLag {
        ArchiveLag {
            archived_lsn: self.position,
            lsns: committed.saturating_sub(self.position),
            waited_ms: self
                .waiting_since
                .map_or(0, |t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)),
        }
    }

    /// Archives a base backup: the store's snapshot at `lsn`. Archiving the WAL starts
    /// after the first one; a later one lets retention drop older WAL, and lets the
    /// archive go on past WAL that was compacted before it was archived (see
    /// [`Archiver::step`]).
    pub async fn base_backup(&mut self, snapshot: &[u8], lsn: Lsn, hlc: Timestamp) -> Result<Put, PitrError> {
        let put = self.archive.put_base(snapshot, lsn, hlc).await?;
        if !self.has_base {
            self.position = self.position.max(lsn);
        }
        self.has_base = true;
        self.base_lsn = Some(self.base_lsn.map_or(lsn, |b| b.max(lsn)));
        self.written += u64::from(matches!(put, Put::Written(_)));
        Ok(put)
    }

    /// Archives what `wal` holds after the position, up to `committed`: a chunk once
    /// `chunk_bytes` wait or the oldest has waited `max_age`, or now with `force`. Returns
    /// the entries written. The WAL must still hold the position's successor; when it
    /// does not (compacted past an archive that fell behind), the error says so and a
    /// new base backup is the way on.
    pub async fn step(
        &mut self,
        wal: &Wal,
        committed: Lsn,
        force: bool,
    ) -> Result<Vec<ManifestEntry>, PitrError> {
        if !self.has_base {
            return Err(PitrError::Config("the archive has no base backup yet; archive one first".into()));
        }
        let mut written = Vec::new();
        loop {
            let from = self.position + 1;
            if from > committed {
                self.waiting_since = None;
                return Ok(written);
            }
            if from < wal.first_lsn() {
                // The WAL was compacted before it was archived. A base backup at or past
                // the compaction point lets the archive go on from there; the gap stays,
                // and `verify` reports it.
                match self.base_lsn {
                    Some(base) if base >= from && base + 1 >= wal.first_lsn() => {
                        self.position = base;
                        continue;
                    }
                    _ => {
                        return Err(PitrError::Gap {
                            missing_from: from,
                            missing_to: wal.first_lsn() - 1,
                            restorable_to: self.position,
                        });
                    }
                }
            }
            let since = *self.waiting_since.get_or_insert_with(Instant::now);
            let raw = wal
                .read_raw_upto(from, committed, self.config.chunk_bytes)
                .map_err(|e| PitrError::Config(format!("reading the WAL from LSN {from}: {e}")))?;
            // A read stops at `chunk_bytes` or at a segment's end: more waiting behind it
            // means a full chunk.
            let full = raw.bytes.len() >= self.config.chunk_bytes || raw.range.last < committed;
            if !(full || force || since.elapsed() >= self.config.max_age) {
                return Ok(written);
            }
            let (first_hlc, last_hlc) = timestamps(&raw.bytes)?;
            let put = self
                .archive
                .put_wal(&raw.bytes, raw.range.first, raw.range.last, first_hlc, last_hlc)
                .await?;
            let entry = match put {
                Put::Written(e) => {
                    self.written += 1;
                    written.push(e.clone());
                    e
                }
                // Another archiver recorded a range from here: go on after it.
                Put::Exists(e) => e,
            };
            self.position = self.position.max(entry.last_lsn);
            self.waiting_since = (self.position < committed).then(Instant::now);
        }
    }
}

/// The commit timestamps of the first and last records of a run of records.
fn timestamps(bytes: &bytes::Bytes) -> Result<(Timestamp, Timestamp), PitrError> {
    let bad = |e: record::RecordError| PitrError::Config(format!("the WAL's records do not decode: {e}"));
    let (first, mut offset) = record::decode(bytes, 0, bytes.len()).map_err(bad)?;
    let mut last = first.timestamp;
    while offset < bytes.len() {
        let (e, len) = record::decode(bytes, offset, bytes.len()).map_err(bad)?;
        last = e.timestamp;
        offset += len;
    }
    Ok((first.timestamp, last))
}
