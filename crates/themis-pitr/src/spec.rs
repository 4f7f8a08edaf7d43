//! Where an archive is and how to open it, as a node's `[archive]` section and the CLI's
//! flags describe it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use crate::archive::Archive;
use crate::error::PitrError;
use crate::keys::Keyring;

/// An archive's location and keys.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveSpec {
    /// `file:///path`, `memory:///` or `s3://bucket/prefix`.
    pub url: String,
    /// The object store's options (for S3: `aws_endpoint`, `aws_region`,
    /// `aws_access_key_id`, `aws_secret_access_key`, `aws_allow_http`, ...).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// The current encryption key: a file of 32 raw bytes or 64 hex digits ...
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// ... or an environment variable holding 64 hex digits.
    #[serde(default)]
    pub key_env: Option<String>,
    /// Older keys, kept to read objects written before a rotation.
    #[serde(default)]
    pub old_key_files: Vec<PathBuf>,
    /// The archiver ships a chunk once this many MiB of committed WAL wait (default 16;
    /// 1 to 1024).
    #[serde(default = "default_chunk_mb")]
    pub chunk_mb: u64,
    /// ... or once the oldest waiting record has waited this many seconds (default 10;
    /// 1 to 3600), as PostgreSQL's `archive_timeout`.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// What the archive keeps (`[archive.retention]`); everything when empty.
    #[serde(default)]
    pub retention: crate::RetentionPolicy,
}

fn default_chunk_mb() -> u64 {
    16
}

fn default_timeout_secs() -> u64 {
    10
}

impl ArchiveSpec {
    /// An archive at `url` with the key in `key_file`, default settings.
    #[must_use]
    pub fn new(url: impl Into<String>, key_file: impl Into<PathBuf>) -> ArchiveSpec {
        ArchiveSpec {
            url: url.into(),
            options: BTreeMap::new(),
            key_file: Some(key_file.into()),
            key_env: None,
            old_key_files: Vec::new(),
            chunk_mb: default_chunk_mb(),
            timeout_secs: default_timeout_secs(),
            retention: crate::RetentionPolicy::default(),
        }
    }

    /// Checks the fields that need no I/O; the error names the key.
    pub fn validate(&self) -> Result<(), PitrError> {
        url::Url::parse(&self.url)
            .map_err(|e| PitrError::Config(format!("archive.url = {:?}: {e}", self.url)))?;
        if !(1..=1024).contains(&self.chunk_mb) {
            return Err(PitrError::Config(format!(
                "archive.chunk_mb = {}: must be 1 to 1024",
                self.chunk_mb
            )));
        }
        if !(1..=3600).contains(&self.timeout_secs) {
            return Err(PitrError::Config(format!(
                "archive.timeout_secs = {}: must be 1 to 3600",
                self.timeout_secs
            )));
        }
        let r = &self.retention;
        if r.keep_base_backups == Some(0) {
            return Err(PitrError::Config("archive.retention.keep_base_backups = 0: keep at least 1".into()));
        }
        if r.transition_to_cold_after_days.is_some() != r.cold_storage_class.is_some() {
            return Err(PitrError::Config(
                "archive.retention: transition_to_cold_after_days and cold_storage_class go together".into(),
            ));
        }
        match (&self.key_file, &self.key_env) {
            (None, None) => Err(PitrError::Config(
                "archive: give key_file or key_env (objects are encrypted at rest)".into(),
            )),
            (Some(_), Some(_)) => {
                Err(PitrError::Config("archive: give key_file or key_env, not both".into()))
            }
            _ => Ok(()),
        }
    }

    /// The archiver's settings.
    #[must_use]
    pub fn archiver_config(&self) -> crate::ArchiverConfig {
        crate::ArchiverConfig {
            chunk_bytes: usize::try_from(self.chunk_mb << 20).unwrap_or(usize::MAX),
            max_age: std::time::Duration::from_secs(self.timeout_secs),
        }
    }

    /// Reads the keys.
    pub fn keyring(&self) -> Result<Keyring, PitrError> {
        self.validate()?;
        let current = match (&self.key_file, &self.key_env) {
            (Some(file), _) => Keyring::key_from_file(file)?,
            (_, Some(var)) => Keyring::key_from_env(var)?,
            (None, None) => unreachable!("validated"),
        };
        let mut ring = Keyring::new(current);
        for file in &self.old_key_files {
            ring.add(Keyring::key_from_file(file)?);
        }
        Ok(ring)
    }

    /// Opens the archive of cluster `cluster`.
    pub fn open(&self, cluster: &str) -> Result<Archive, PitrError> {
        let keyring = Arc::new(self.keyring()?);
        Archive::open(&self.url, self.options.clone(), cluster, keyring)
    }
}
