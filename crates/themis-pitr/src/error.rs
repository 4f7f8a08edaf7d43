//! The crate's one error type.

use themis_wal::Lsn;

/// Why archiving, listing, verifying or restoring failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PitrError {
    /// The archive's configuration is invalid (the key and why).
    #[error("archive config: {0}")]
    Config(String),
    /// An encryption key could not be read or is malformed.
    #[error("archive key {source_name}: {message}")]
    Key {
        /// Where the key came from (a file or an environment variable).
        source_name: String,
        /// What is wrong.
        message: String,
    },
    /// An object was encrypted with a key this keyring does not hold.
    #[error("object {object}: encrypted with key {key_id}, which the keyring does not hold (keys: {known})")]
    UnknownKey {
        /// The object.
        object: String,
        /// The key id it names.
        key_id: String,
        /// The ids the keyring holds.
        known: String,
    },
    /// The object store failed.
    #[error("object store, {op} {path}: {message}")]
    Store {
        /// What was being done.
        op: &'static str,
        /// The object or prefix.
        path: String,
        /// The store's error.
        message: String,
    },
    /// An archived object is damaged: its checksum, header, authentication tag,
    /// compression or records do not hold. `restorable_to` is the latest LSN a restore can
    /// reach without it.
    #[error(
        "object {object} (LSNs {first_lsn}..={last_lsn}) is damaged: {message}; the archive restores up to LSN {restorable_to} at most"
    )]
    Damaged {
        /// The object.
        object: String,
        /// The first LSN it covers.
        first_lsn: Lsn,
        /// The last LSN it covers.
        last_lsn: Lsn,
        /// What is wrong.
        message: String,
        /// The latest LSN reachable without it.
        restorable_to: Lsn,
    },
    /// The archive's WAL ranges leave a gap: LSNs `missing_from..=missing_to` are in no
    /// object.
    #[error(
        "the archive has no WAL for LSNs {missing_from}..={missing_to}; it restores up to LSN {restorable_to} at most"
    )]
    Gap {
        /// The first missing LSN.
        missing_from: Lsn,
        /// The last missing LSN.
        missing_to: Lsn,
        /// The latest LSN reachable.
        restorable_to: Lsn,
    },
    /// A manifest entry belongs to another cluster.
    #[error("manifest entry {entry} belongs to cluster {found:?}, not {expected:?}")]
    ForeignCluster {
        /// The entry.
        entry: String,
        /// Its cluster.
        found: String,
        /// The archive's.
        expected: String,
    },
    /// A manifest entry does not parse.
    #[error("manifest entry {entry}: {message}")]
    Manifest {
        /// The entry.
        entry: String,
        /// What is wrong.
        message: String,
    },
    /// The target cannot be reached: no base backup at or before it, or it lies past the
    /// archive's end.
    #[error("cannot restore to {target}: {message}")]
    Unreachable {
        /// The target as given.
        target: String,
        /// Why.
        message: String,
    },
    /// The target text does not parse.
    #[error(
        "restore target {0:?}: expected `latest`, an LSN (`lsn:N`), an HLC timestamp (`hlc:<ms>.<logical>@<node>`) or an RFC 3339 time"
    )]
    BadTarget(String),
    /// Applying the restored log to the state machine failed.
    #[error("applying LSN {lsn}: {message}")]
    Apply {
        /// The entry.
        lsn: Lsn,
        /// Why.
        message: String,
    },
}

impl PitrError {
    pub(crate) fn store(
        op: &'static str,
        path: impl std::fmt::Display,
    ) -> impl FnOnce(object_store::Error) -> PitrError {
        let path = path.to_string();
        move |e| PitrError::Store { op, path, message: e.to_string() }
    }
}
