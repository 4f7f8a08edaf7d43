//! An archive: objects and their manifest entries under a prefix of an object store.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use sha2::{Digest, Sha256};
use themis_clock::Timestamp;
use themis_wal::Lsn;

use crate::error::PitrError;
use crate::keys::Keyring;
use crate::manifest::{FORMAT, Manifest, ManifestEntry, base_object, entry_name, wal_object};
use crate::object::{self, Kind};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(2 * bytes.len()), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Where an archive lives and how its objects are sealed.
#[derive(Debug, Clone)]
pub struct Archive {
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    cluster: String,
    keyring: Arc<Keyring>,
    level: i32,
}

/// What a put of an object and its manifest entry did ([`Archive::put_wal`],
/// [`Archive::put_base`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Put {
    /// The object and its entry were written.
    Written(ManifestEntry),
    /// An entry for that first LSN exists already (another archiver wrote it); it is
    /// returned.
    Exists(ManifestEntry),
}

impl Archive {
    /// An archive at `url` (`file:///path`, `memory:///`, `s3://bucket/prefix`, ...) with
    /// the store's `options` (for S3: `aws_endpoint`, `aws_region`, credentials,
    /// `aws_allow_http`), for cluster `cluster`.
    pub fn open<I, K, V>(
        url: &str,
        options: I,
        cluster: &str,
        keyring: Arc<Keyring>,
    ) -> Result<Archive, PitrError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Into<String>,
    {
        let parsed =
            url::Url::parse(url).map_err(|e| PitrError::Config(format!("archive url {url:?}: {e}")))?;
        let (store, prefix) = object_store::parse_url_opts(&parsed, options)
            .map_err(|e| PitrError::Config(format!("archive url {url:?}: {e}")))?;
        Ok(Archive::with_store(Arc::from(store), prefix, cluster, keyring))
    }

    /// An archive over a store the caller built.
    #[must_use]
    pub fn with_store(
        store: Arc<dyn ObjectStore>,
        prefix: StorePath,
        cluster: &str,
        keyring: Arc<Keyring>,
    ) -> Archive {
        Archive { store, prefix, cluster: cluster.to_string(), keyring, level: 3 }
    }

    /// The zstd level objects are compressed at (default 3).
    #[must_use]
    pub fn with_level(mut self, level: i32) -> Archive {
        self.level = level;
        self
    }

    /// The cluster it archives.
    #[must_use]
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The keyring.
    #[must_use]
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    fn path(&self, name: &str) -> StorePath {
        StorePath::from(format!("{}/{name}", self.prefix).trim_start_matches('/'))
    }

    /// Archives WAL records `first..=last` (their bytes as in a segment), committed
    /// between `first_hlc` and `last_hlc`.
    pub async fn put_wal(
        &self,
        records: &[u8],
        first: Lsn,
        last: Lsn,
        first_hlc: Timestamp,
        last_hlc: Timestamp,
    ) -> Result<Put, PitrError> {
        self.put(Kind::Wal, wal_object(first, last), records, first, last, first_hlc, last_hlc).await
    }

    /// Archives a base backup: the store's snapshot at `lsn`, whose last entry committed
    /// at `hlc`.
    pub async fn put_base(&self, snapshot: &[u8], lsn: Lsn, hlc: Timestamp) -> Result<Put, PitrError> {
        self.put(Kind::Base, base_object(lsn), snapshot, lsn, lsn, hlc, hlc).await
    }

    #[allow(clippy::too_many_arguments, reason = "one object's fields")]
    async fn put(
        &self,
        kind: Kind,
        object: String,
        payload: &[u8],
        first: Lsn,
        last: Lsn,
        first_hlc: Timestamp,
        last_hlc: Timestamp,
    ) -> Result<Put, PitrError> {
        let sealed = object::seal(&self.keyring, &self.cluster, kind, first, last, payload, self.level);
        let create = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        let path = self.path(&object);
        let (size, sha256) =
            match self.store.put_opts(&path, PutPayload::from(sealed.clone()), create.clone()).await {
                Ok(_) => (sealed.len() as u64, hex(&Sha256::digest(&sealed))),
                // An object left by an archiver that died before writing its entry (the same
                // committed records, sealed with another nonce): the entry describes the bytes
                // that are there, once they open.
                Err(object_store::Error::AlreadyExists { .. }) => {
                    let existing = self.get(&path).await?;
                    object::open(&self.keyring, &self.cluster, &object, &existing, first.saturating_sub(1))?;
                    (existing.len() as u64, hex(&Sha256::digest(&existing)))
                }
                Err(e) => return Err(PitrError::store("put", &path)(e)),
            };
        let entry = ManifestEntry {
            format: FORMAT,
            cluster: self.cluster.clone(),
            kind,
            object: object.clone(),
            first_lsn: first,
            last_lsn: last,
            first_hlc,
            last_hlc,
            size,
            sha256,
            key_id: self.keyring.current().to_string(),
            archived_at_ms: now_ms(),
            tier: "standard".into(),
        };
        let entry_path = self.path(&entry_name(kind, first));
        let json = serde_json::to_vec_pretty(&entry).expect("an entry serializes");
        match self.store.put_opts(&entry_path, PutPayload::from(json), create).await {
            Ok(_) => Ok(Put::Written(entry)),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let bytes = self.get(&entry_path).await?;
                let existing: ManifestEntry = serde_json::from_slice(&bytes).map_err(|e| {
                    PitrError::Manifest { entry: entry_path.to_string(), message: e.to_string() }
                })?;
                Ok(Put::Exists(existing))
            }
            Err(e) => Err(PitrError::store("put", &entry_path)(e)),
        }
    }

    async fn get(&self, path: &StorePath) -> Result<Bytes, PitrError> {
        let result = self.store.get(path).await.map_err(PitrError::store("get", path))?;
        result.bytes().await.map_err(PitrError::store("read", path))
    }

    /// Every manifest entry, parsed and checked to belong to this cluster.
    pub async fn manifest(&self) -> Result<Manifest, PitrError> {
        self.manifest_cached(&mut std::collections::BTreeMap::new()).await
    }

    /// [`Archive::manifest`] through a cache of the entries already read: a listing, then
    /// a fetch of only the entries not in `cache` (entries are written once; retention's
    /// tier changes do not matter to a position). Entries gone from the listing leave the
    /// cache. Followers read the archive's position this way without a request per entry.
    pub async fn manifest_cached(
        &self,
        cache: &mut std::collections::BTreeMap<String, Vec<u8>>,
    ) -> Result<Manifest, PitrError> {
        let prefix = self.path("manifest");
        let metas: Vec<_> =
            self.store.list(Some(&prefix)).try_collect().await.map_err(PitrError::store("list", &prefix))?;
        let listed: std::collections::BTreeSet<String> =
            metas.iter().map(|m| m.location.to_string()).collect();
        cache.retain(|name, _| listed.contains(name));
        let missing: Vec<_> =
            metas.into_iter().filter(|m| !cache.contains_key(&m.location.to_string())).collect();
        let fetched: Vec<(String, Vec<u8>)> = futures_util::stream::iter(missing)
            .map(|meta| async move {
                let bytes = self.get(&meta.location).await?;
                Ok::<_, PitrError>((meta.location.to_string(), bytes.to_vec()))
            })
            .buffered(16)
            .try_collect()
            .await?;
        cache.extend(fetched);
        Manifest::parse(&self.cluster, cache.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    /// Fetches an entry's object, checks its size and SHA-256 against the entry, and
    /// opens it. `restorable_to` is reported as the latest reachable LSN if it is damaged.
    pub async fn fetch(&self, entry: &ManifestEntry, restorable_to: Lsn) -> Result<Vec<u8>, PitrError> {
        let path = self.path(&entry.object);
        let damaged = |message: String| PitrError::Damaged {
            object: entry.object.clone(),
            first_lsn: entry.first_lsn,
            last_lsn: entry.last_lsn,
            message,
            restorable_to,
        };
        let bytes = match self.get(&path).await {
            Ok(b) => b,
            Err(PitrError::Store { message, .. }) => {
                return Err(damaged(format!("cannot be read: {message}")));
            }
            Err(e) => return Err(e),
        };
        if bytes.len() as u64 != entry.size {
            return Err(damaged(format!("{} bytes, the manifest says {}", bytes.len(), entry.size)));
        }
        let sha = hex(&Sha256::digest(&bytes));
        if sha != entry.sha256 {
            return Err(damaged(format!("SHA-256 {sha}, the manifest says {}", entry.sha256)));
        }
        let (header, payload) =
            object::open(&self.keyring, &self.cluster, &entry.object, &bytes, restorable_to)?;
        if (header.first_lsn, header.last_lsn) != (entry.first_lsn, entry.last_lsn) {
            return Err(damaged(format!(
                "its header says LSNs {}..={}, the manifest {}..={}",
                header.first_lsn, header.last_lsn, entry.first_lsn, entry.last_lsn
            )));
        }
        Ok(payload)
    }

    /// Deletes an object and then its entry (a crash between leaves an entry without an
    /// object, which `verify` reports and restore refuses to use).
    pub async fn delete(&self, entry: &ManifestEntry) -> Result<(), PitrError> {
        let entry_path = self.path(&entry_name(entry.kind, entry.first_lsn));
        let path = self.path(&entry.object);
        self.store.delete(&path).await.map_err(PitrError::store("delete", &path))?;
        match self.store.delete(&entry_path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(PitrError::store("delete", &entry_path)(e)),
        }
    }
}

/// What [`Archive::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    /// Objects fetched and checked.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Damaged or missing objects, each with what is wrong.
    pub damaged: Vec<String>,
    /// WAL ranges in no object.
    pub gaps: Vec<(Lsn, Lsn)>,
    /// WAL objects whose ranges overlap.
    pub overlaps: Vec<(String, String)>,
    /// Objects no manifest entry names (an archiver died between the two writes).
    pub orphans: Vec<String>,
    /// The latest LSN a restore reaches from the oldest base backup.
    pub restorable_to: Lsn,
}

impl VerifyReport {
    /// Whether nothing is wrong (orphans are harmless and not counted).
    #[must_use]
    pub fn is_healthy(&self) -> bool {
        self.damaged.is_empty() && self.gaps.is_empty() && self.overlaps.is_empty()
    }
}

impl Archive {
    /// Checks every object named by the manifest (size, SHA-256, authentication tag,
    /// decompression), that the WAL ranges leave no gap and do not overlap, and lists
    /// objects no entry names; `parallel` objects at a time.
    pub async fn verify(&self, parallel: usize) -> Result<VerifyReport, PitrError> {
        let manifest = self.manifest().await?;
        let mut report = VerifyReport {
            gaps: manifest.gaps(),
            overlaps: manifest.overlaps(),
            restorable_to: manifest.archived_through(),
            ..VerifyReport::default()
        };
        let entries: Vec<&ManifestEntry> = manifest.base.iter().chain(&manifest.wal).collect();
        let results: Vec<(String, Result<usize, PitrError>)> =
            futures_util::stream::iter(entries.iter().copied())
                .map(|e| async move { (e.object.clone(), self.fetch(e, 0).await.map(|p| p.len())) })
                .buffer_unordered(parallel.max(1))
                .collect()
                .await;
        let mut first_damaged = Lsn::MAX;
        for (object, result) in results {
            report.objects += 1;
            match result {
                Ok(len) => report.bytes += len as u64,
                Err(e) => {
                    if let PitrError::Damaged { first_lsn, .. } = &e {
                        first_damaged = first_damaged.min(*first_lsn);
                    }
                    report.damaged.push(format!("{object}: {e}"));
                }
            }
        }
        report.damaged.sort();
        if first_damaged != Lsn::MAX {
            report.restorable_to = report.restorable_to.min(first_damaged.saturating_sub(1));
        }
        let named: std::collections::HashSet<&str> = entries.iter().map(|e| e.object.as_str()).collect();
        for dir in ["wal", "base"] {
            let prefix = self.path(dir);
            let metas: Vec<_> = self
                .store
                .list(Some(&prefix))
                .try_collect()
                .await
                .map_err(PitrError::store("list", &prefix))?;
            for meta in metas {
                let full = meta.location.to_string();
                let name = full.strip_prefix(&format!("{}/", self.prefix)).unwrap_or(&full).to_string();
                if !named.contains(name.as_str()) {
                    report.orphans.push(name);
                }
            }
        }
        report.orphans.sort();
        Ok(report)
    }
}

/// What to keep, and when objects move to a colder storage class.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionPolicy {
    /// Keep the newest this many base backups (and the WAL the oldest of them needs).
    #[serde(default)]
    pub keep_base_backups: Option<usize>,
    /// Keep base backups younger than this many days.
    #[serde(default)]
    pub keep_base_days: Option<u64>,
    /// Delete objects older than this many days whatever the rules above say (the newest
    /// base backup and the WAL after it always stay).
    #[serde(default)]
    pub delete_after_days: Option<u64>,
    /// Move objects older than this many days to `cold_storage_class`.
    #[serde(default)]
    pub transition_to_cold_after_days: Option<u64>,
    /// The storage class of cold objects (S3: `GLACIER_IR`, `STANDARD_IA`, ...).
    #[serde(default)]
    pub cold_storage_class: Option<String>,
}

/// What [`Archive::apply_retention`] did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RetentionReport {
    /// Objects deleted, with their entries.
    pub deleted: Vec<String>,
    /// Objects moved to the cold storage class.
    pub cold: Vec<String>,
    /// The oldest base backup kept.
    pub oldest_base: Option<Lsn>,
}

const DAY_MS: u64 = 86_400_000;

impl Archive {
    /// Applies `policy` at time `now_ms`: decides which base backups stay (the newest
    /// always; then by count and age; then `delete_after_days`), deletes the others and
    /// the WAL no kept base backup needs (entirely at or before the oldest kept one), and
    /// moves old objects to the cold storage class (rewritten in place with that class;
    /// their entries say `cold`). With `dry_run` nothing changes.
    pub async fn apply_retention(
        &self,
        policy: &RetentionPolicy,
        now_ms: u64,
        dry_run: bool,
    ) -> Result<RetentionReport, PitrError> {
        let manifest = self.manifest().await?;
        let mut report = RetentionReport::default();
        let Some(newest) = manifest.base.last() else { return Ok(report) };
        let age_days = |e: &ManifestEntry| now_ms.saturating_sub(e.archived_at_ms) / DAY_MS;
        let count = manifest.base.len();
        let keep: Vec<&ManifestEntry> = manifest
            .base
            .iter()
            .enumerate()
            .filter(|(i, b)| {
                if b.first_lsn == newest.first_lsn {
                    return true;
                }
                let by_rules = match (policy.keep_base_backups, policy.keep_base_days) {
                    (None, None) => true,
                    (n, d) => n.is_some_and(|n| count - i <= n) || d.is_some_and(|d| age_days(b) < d),
                };
                by_rules && policy.delete_after_days.is_none_or(|d| age_days(b) < d)
            })
            .map(|(_, b)| b)
            .collect();
        let oldest = keep.first().map_or(newest.last_lsn, |b| b.last_lsn);
        report.oldest_base = Some(oldest);
        let doomed: Vec<&ManifestEntry> = manifest
            .base
            .iter()
            .filter(|b| !keep.iter().any(|k| k.first_lsn == b.first_lsn))
            .chain(manifest.wal.iter().filter(|w| w.last_lsn <= oldest))
            .collect();
        for entry in &doomed {
            report.deleted.push(entry.object.clone());
            if !dry_run {
                self.delete(entry).await?;
            }
        }
        if let (Some(days), Some(class)) = (policy.transition_to_cold_after_days, &policy.cold_storage_class)
        {
            for entry in manifest.base.iter().chain(&manifest.wal) {
                if entry.tier == "cold"
                    || age_days(entry) < days
                    || doomed.iter().any(|d| d.object == entry.object)
                {
                    continue;
                }
                report.cold.push(entry.object.clone());
                if !dry_run {
                    self.make_cold(entry, class).await?;
                }
            }
        }
        Ok(report)
    }

    /// Rewrites an object with storage class `class` and marks its entry cold (the only
    /// writes that replace an existing object: the bytes are the same).
    async fn make_cold(&self, entry: &ManifestEntry, class: &str) -> Result<(), PitrError> {
        let path = self.path(&entry.object);
        let bytes = self.get(&path).await?;
        let mut attributes = object_store::Attributes::new();
        attributes.insert(object_store::Attribute::StorageClass, class.to_string().into());
        let options = PutOptions { mode: PutMode::Overwrite, attributes, ..PutOptions::default() };
        self.store
            .put_opts(&path, PutPayload::from(bytes), options)
            .await
            .map_err(PitrError::store("put", &path))?;
        let mut cold = entry.clone();
        cold.tier = "cold".into();
        let entry_path = self.path(&entry_name(entry.kind, entry.first_lsn));
        let json = serde_json::to_vec_pretty(&cold).expect("an entry serializes");
        let overwrite = PutOptions { mode: PutMode::Overwrite, ..PutOptions::default() };
        self.store
            .put_opts(&entry_path, PutPayload::from(json), overwrite)
            .await
            .map_err(PitrError::store("put", &entry_path))?;
        Ok(())
    }
}
