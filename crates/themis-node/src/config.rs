//! The node's configuration: TOML, validated at load, with environment overrides.
//!
//! Every rejected value is reported as `key = value: why`, so an operator sees which line
//! to fix. Environment variables `THEMIS_<KEY>` override top-level and `replication.*`
//! keys (`THEMIS_NODE_ID`, `THEMIS_DATA_DIR`, `THEMIS_REPLICATION_MODE`, ...).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use themis_replication::cdc::{CdcConfig, Filter as CdcFilter};
use themis_replication::raft::{AckPolicy, ReplicationMode};

use crate::auth::{AuthSection, Authenticator};

/// A configuration value that cannot be used; the message names the key and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

fn bad<T>(message: String) -> Result<T, ConfigError> {
    Err(ConfigError(message))
}

/// A member of the cluster as the configuration lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Its node id.
    pub id: u64,
    /// Where it accepts Raft links.
    pub raft_addr: String,
    /// Where it serves clients.
    pub client_addr: String,
    /// Its region (for the topology), if given.
    #[serde(default)]
    pub region: Option<String>,
}

/// Certificates (PEM files).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The cluster CA certificate.
    pub ca: PathBuf,
    /// This node's certificate.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
    /// The admin API's certificate, when it is not the node certificate: browsers do not
    /// accept the node certificate's Ed25519 key, so the dashboard needs an ECDSA or RSA
    /// one (`themis_replication::ship::tls::issue_web_cert` issues one from the cluster CA).
    /// Given with `admin_key`, or neither.
    #[serde(default)]
    pub admin_cert: Option<PathBuf>,
    /// The admin API certificate's private key.
    #[serde(default)]
    pub admin_key: Option<PathBuf>,
}

/// Replication settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationSection {
    /// `sync`, `semi_sync` or `async` (default `semi_sync`).
    pub mode: String,
    /// Followers that must hold a write durably under `semi_sync` and `sync` (default 1).
    pub min_sync_replicas: u32,
    /// Heartbeat interval in ms (default 100).
    pub heartbeat_ms: u64,
    /// Shortest election timeout in ms (default 500); each election waits a random time
    /// from it up to twice it.
    pub election_timeout_ms: u64,
    /// Snapshot and compact after this many entries (default 100,000)...
    pub snapshot_entries: u64,
    /// ...once they hold this percentage of the last snapshot's bytes too (default 100;
    /// 0 to 10000; 0 counts entries alone).
    pub snapshot_log_percent: u32,
    /// Snapshots travel to followers in chunks of this many bytes (default 1048576;
    /// 1024 to 16777216).
    pub snapshot_chunk_bytes: usize,
    /// Applier threads, 1 to 64 (default 1: serial).
    pub apply_workers: usize,
    /// `always` (group commit, default) or `never` (tests only: a crash can lose writes).
    pub fsync: String,
    /// Lag alert threshold in ms (default 1000).
    pub lag_alert_ms: u64,
    /// Strong reads on the leader are served under its lease, without a round trip to a
    /// quorum per read (default false: `ReadIndex` for every strong read, as etcd).
    pub read_lease: bool,
    /// The most two nodes' clock rates may differ, in parts per million (default 10000,
    /// 1%; at most 100000). The lease is shortened by it.
    pub max_clock_drift_ppm: u32,
}

impl Default for ReplicationSection {
    fn default() -> Self {
        ReplicationSection {
            mode: "semi_sync".into(),
            min_sync_replicas: 1,
            heartbeat_ms: 100,
            election_timeout_ms: 500,
            snapshot_entries: 100_000,
            snapshot_log_percent: 100,
            snapshot_chunk_bytes: 1 << 20,
            apply_workers: 1,
            fsync: "always".into(),
            lag_alert_ms: 1000,
            read_lease: false,
            max_clock_drift_ppm: 10_000,
        }
    }
}

/// Change data capture settings (`[cdc]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CdcSection {
    /// Data entries the live queue holds (default 65536; 1 to 16777216). Subscribers
    /// further behind read the WAL; writers never wait.
    pub max_depth: usize,
    /// Idle subscriptions get a heartbeat this often, in ms (default 1000; 10 to 3600000).
    pub heartbeat_ms: u64,
    /// Collections (exact names or patterns, as in subscription filters) whose updates and
    /// deletes log the document they replace, so change events carry `before`.
    pub before_images: Vec<String>,
    /// Concurrent change streams served over HTTP (default 64; 1 to 4096).
    pub max_subscribers: usize,
    /// Connectors that produce the change stream to Kafka (`[[cdc.sinks]]`).
    pub sinks: Vec<SinkSection>,
}

impl Default for CdcSection {
    fn default() -> Self {
        CdcSection {
            max_depth: 65_536,
            heartbeat_ms: 1000,
            before_images: Vec::new(),
            max_subscribers: 64,
            sinks: Vec::new(),
        }
    }
}

/// Read consistency and session settings (`[geo]`); this node's region is the top-level
/// `region`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeoSection {
    /// The level of a read that names none: `strong` (default), `bounded`, `session`,
    /// `prefix` or `eventual`.
    pub default_consistency: String,
    /// A bounded-staleness read's bound when it gives none, in ms (default 5000; 1 to
    /// 86400000).
    pub max_staleness_ms: u64,
    /// How long a session token is valid, in ms (default 3600000; 1000 to 604800000).
    pub session_token_ttl_ms: u64,
    /// A file holding the secret (at least 16 bytes) that signs session tokens, the same
    /// on every node; without it tokens carry a checksum keyed by the cluster name.
    pub session_secret_file: Option<PathBuf>,
    /// How long a replica waits to catch up with a bounded or session read before it
    /// redirects the client, in ms (default 200; 0 to 10000).
    pub read_wait_ms: u64,
    /// Move collections between replication tiers by their write rates (default false).
    pub auto_tiering: bool,
    /// Writes per second (smoothed over a minute) at which a collection moves up a tier
    /// (default 100).
    pub auto_promote_writes_per_sec: u64,
    /// Writes per second at or below which it moves down a tier (default 1; below
    /// `auto_promote_writes_per_sec`).
    pub auto_demote_writes_per_sec: u64,
    /// How often the leader re-evaluates, in seconds; a collection stays at least five of
    /// these in a tier (default 60; 1 to 86400).
    pub auto_tier_interval_secs: u64,
}

impl Default for GeoSection {
    fn default() -> Self {
        GeoSection {
            default_consistency: "strong".into(),
            max_staleness_ms: 5_000,
            session_token_ttl_ms: 3_600_000,
            session_secret_file: None,
            read_wait_ms: 200,
            auto_tiering: false,
            auto_promote_writes_per_sec: 100,
            auto_demote_writes_per_sec: 1,
            auto_tier_interval_secs: 60,
        }
    }
}

/// Logical replication settings (`[logical]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogicalSection {
    /// The most WAL bytes one slot may hold, in MiB; a slot that would hold more is
    /// marked lost and releases it (default 0: no bound, as PostgreSQL's -1).
    pub max_slot_wal_keep_size_mb: u64,
    /// The most slots (default 64; 1 to 1024).
    pub max_slots: usize,
}

impl Default for LogicalSection {
    fn default() -> Self {
        LogicalSection { max_slot_wal_keep_size_mb: 0, max_slots: 64 }
    }
}

/// One Kafka sink (`[[cdc.sinks]]`): the leader produces every change passing its filter
/// to a topic per collection (or one topic), keyed by document id.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSection {
    /// Its name (1 to 64 of `a-z 0-9 _ -`): names its checkpoint, WAL hold and metrics.
    pub name: String,
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// The topic; `{collection}` is replaced by the collection's name (characters Kafka
    /// does not allow become `_`). Default `themis.{collection}`.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Collections (names or patterns); all when empty.
    #[serde(default)]
    pub collections: Vec<String>,
    /// Ops (`insert`, `update`, `delete`, `ddl`); all when empty.
    #[serde(default)]
    pub ops: Vec<String>,
    /// A tombstone (the key with no value) after each delete, for compacted topics
    /// (default true).
    #[serde(default = "default_true")]
    pub tombstones: bool,
    /// Partitions of the topics the sink creates; a record goes to the partition of its
    /// key's hash (default 1; 1 to 1024).
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Most records per produce request (default 500; 1 to 100000).
    #[serde(default = "default_sink_batch")]
    pub max_batch: usize,
    /// How often the acknowledged LSN is written to the replicated checkpoint, ms
    /// (default 1000; 100 to 3600000).
    #[serde(default = "default_checkpoint_ms")]
    pub checkpoint_ms: u64,
}

fn default_topic() -> String {
    "themis.{collection}".into()
}

fn default_true() -> bool {
    true
}

fn default_partitions() -> i32 {
    1
}

fn default_sink_batch() -> usize {
    500
}

fn default_checkpoint_ms() -> u64 {
    1000
}

impl SinkSection {
    /// The filter its collections and ops compile to.
    pub fn filter(&self) -> Result<CdcFilter, String> {
        let ops = self
            .ops
            .iter()
            .map(|op| op.parse::<themis_replication::cdc::ChangeOp>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        CdcFilter::new(&ops, &self.collections).map_err(|e| e.to_string())
    }

    fn validate(&self, at: &str, names: &mut Vec<String>) -> Result<(), ConfigError> {
        let name_ok = |n: &str| {
            !n.is_empty()
                && n.len() <= 64
                && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b))
        };
        if !name_ok(&self.name) {
            return bad(format!("{at}.name = {:?}: must be 1 to 64 of a-z 0-9 _ -", self.name));
        }
        if names.contains(&self.name) {
            return bad(format!("{at}.name = {:?}: two sinks have this name", self.name));
        }
        names.push(self.name.clone());
        if self.brokers.is_empty() {
            return bad(format!("{at}.brokers: give at least one host:port"));
        }
        for broker in &self.brokers {
            if broker
                .rsplit_once(':')
                .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
            {
                return bad(format!("{at}.brokers: {broker:?} is not host:port"));
            }
        }
        let literal = self.topic.replace("{collection}", "");
        if self.topic.is_empty()
            || self.topic.len() > 200
            || !literal.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return bad(format!(
                "{at}.topic = {:?}: 1 to 200 of a-z A-Z 0-9 . _ - (and {{collection}})",
                self.topic
            ));
        }
        self.filter().map_err(|e| ConfigError(format!("{at}: {e}")))?;
        if !(1..=1024).contains(&self.partitions) {
            return bad(format!("{at}.partitions = {}: must be 1 to 1024", self.partitions));
        }
        if !(1..=100_000).contains(&self.max_batch) {
            return bad(format!("{at}.max_batch = {}: must be 1 to 100000", self.max_batch));
        }
        if !(100..=3_600_000).contains(&self.checkpoint_ms) {
            return bad(format!("{at}.checkpoint_ms = {}: must be 100 to 3600000", self.checkpoint_ms));
        }
        Ok(())
    }
}

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node_id: u64,
    #[serde(default = "default_cluster")]
    cluster: String,
    data_dir: PathBuf,
    raft_addr: String,
    client_addr: String,
    admin_addr: Option<String>,
    region: Option<String>,
    #[serde(default)]
    insecure_plaintext: bool,
    #[serde(default)]
    join: bool,
    tls: Option<TlsFiles>,
    #[serde(default)]
    replication: ReplicationSection,
    #[serde(default)]
    peers: Vec<PeerConfig>,
    #[serde(default)]
    auth: AuthSection,
    #[serde(default)]
    cdc: CdcSection,
    #[serde(default)]
    logical: LogicalSection,
    archive: Option<themis_replication::pitr::ArchiveSpec>,
    #[serde(default)]
    geo: GeoSection,
    #[serde(default)]
    active_active: ActiveSection,
    #[serde(default)]
    analytics: crate::analytics::AnalyticsSection,
}

/// Active-active replication between clusters (`[active_active]`, docs/active-active.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActiveSection {
    /// Stamp every write with this cluster's name and HLC, settle writes from linked
    /// clusters by those stamps, and run the links (default false). The cluster's `cluster`
    /// name must then be 1 to 32 characters of a-z, 0-9 and -.
    pub enabled: bool,
    /// A write from another cluster stamped more than this far ahead of this clock stops
    /// its link with an error, in ms (default 5000; 1 to 3600000).
    pub max_clock_skew_ms: u64,
    /// Apply a linked cluster's changes that came to it from a third cluster (default
    /// false: in a mesh each cluster takes each origin's changes from that origin, and
    /// nothing loops either way).
    pub replicate_foreign_changes: bool,
    /// How each collection settles conflicts (themis-crdt's `ResolverConfig`; default
    /// last-writer-wins for every collection).
    pub resolver: Option<themis_replication::crdt::ResolverConfig>,
}

impl Default for ActiveSection {
    fn default() -> Self {
        ActiveSection {
            enabled: false,
            max_clock_skew_ms: 5_000,
            replicate_foreign_changes: false,
            resolver: None,
        }
    }
}

impl ActiveSection {
    /// The conflict resolver these settings describe (last-writer-wins without a
    /// `resolver` table); an error names the key.
    pub fn resolver(&self) -> Result<themis_replication::crdt::ConflictResolver, ConfigError> {
        use themis_replication::crdt::{AuditLog, ConflictResolver, Strategy};
        match &self.resolver {
            None => Ok(ConflictResolver::new(Strategy::LastWriterWins, AuditLog::new(10_000, None))),
            Some(config) => ConflictResolver::from_config(config, [], None)
                .map_err(|e| ConfigError(format!("active_active.resolver: {e}"))),
        }
    }

    fn validate(&self, cluster: &str) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        themis_replication::geo::active::check_cluster_name(cluster)
            .map_err(|e| ConfigError(format!("cluster = {cluster:?}: with active_active.enabled, {e}")))?;
        if !(1..=3_600_000).contains(&self.max_clock_skew_ms) {
            return Err(ConfigError(format!(
                "active_active.max_clock_skew_ms = {}: must be 1 to 3600000",
                self.max_clock_skew_ms
            )));
        }
        self.resolver().map(|_| ())
    }
}

fn default_cluster() -> String {
    "themis".into()
}

/// A validated node configuration. Only [`NodeConfig::parse`] and [`NodeConfig::load`]
/// make one, and they check every value, so a `NodeConfig` always holds valid settings;
/// its fields are read through the methods of the same names.
#[derive(Debug, Clone)]
#[allow(clippy::struct_excessive_bools, reason = "each is an independent on/off setting of the file")]
pub struct NodeConfig {
    /// This node's id (at least 1).
    pub(crate) node_id: u64,
    /// The cluster name (peers of another cluster are refused).
    pub(crate) cluster: String,
    /// Where the WAL, hard state, snapshot and vote key live.
    pub(crate) data_dir: PathBuf,
    /// Raft listen address.
    pub(crate) raft_addr: SocketAddr,
    /// Client API listen address.
    pub(crate) client_addr: SocketAddr,
    /// HTTP admin API and metrics listen address (none: not served).
    pub(crate) admin_addr: Option<SocketAddr>,
    /// Regions by node id, for the topology (this node's `region` and the peers').
    pub(crate) regions: std::collections::BTreeMap<u64, String>,
    /// No TLS anywhere (tests on one machine only; logged as a warning).
    pub(crate) insecure_plaintext: bool,
    /// Start as a learner joining a running cluster (the leader adds it).
    pub(crate) join: bool,
    /// Certificates; required unless `insecure_plaintext`.
    pub(crate) tls: Option<TlsFiles>,
    /// The acknowledgement policy at bootstrap.
    pub(crate) policy: AckPolicy,
    /// Heartbeat interval.
    pub(crate) heartbeat: Duration,
    /// Shortest election timeout.
    pub(crate) election_timeout: Duration,
    /// Snapshot threshold in entries.
    pub(crate) snapshot_entries: u64,
    /// Snapshot threshold in percent of the last snapshot's bytes.
    pub(crate) snapshot_log_percent: u32,
    /// Snapshot chunk size.
    pub(crate) snapshot_chunk_bytes: usize,
    /// Applier threads.
    pub(crate) apply_workers: usize,
    /// Whether appends are fsynced.
    pub(crate) fsync: bool,
    /// Lag alert threshold.
    pub(crate) lag_alert: Duration,
    /// The bootstrap members (this node included).
    pub(crate) peers: Vec<(u64, SocketAddr, SocketAddr)>,
    /// Authentication (`[auth]`): JWT keys and whether metrics are open. Client
    /// certificates from the cluster CA always authenticate; `insecure_plaintext` turns
    /// authentication off.
    pub(crate) auth: AuthSection,
    /// Change data capture (`[cdc]`).
    pub(crate) cdc: CdcSection,
    /// `cdc.before_images`, compiled (none: no collection logs before-images).
    pub(crate) before_images: Option<CdcFilter>,
    /// Logical replication (`[logical]`).
    pub(crate) logical: LogicalSection,
    /// WAL archiving for point-in-time recovery (`[archive]`; none: off).
    pub(crate) archive: Option<themis_replication::pitr::ArchiveSpec>,
    /// Lease reads (`replication.read_lease`).
    pub(crate) read_lease: bool,
    /// `replication.max_clock_drift_ppm`.
    pub(crate) max_clock_drift_ppm: u32,
    /// This node's region (`region`; `local` when not given).
    pub(crate) region: String,
    /// Read consistency and sessions (`[geo]`).
    pub(crate) geo: GeoSection,
    /// `geo.default_consistency`, parsed.
    pub(crate) default_consistency: themis_replication::geo::ConsistencyLevel,
    /// `geo.session_secret_file`'s contents.
    pub(crate) session_secret: Option<Vec<u8>>,
    /// Active-active replication between clusters (`[active_active]`).
    pub(crate) active_active: ActiveSection,
    /// Lag history and insight thresholds (`[analytics]`).
    pub(crate) analytics: crate::analytics::AnalyticsSection,
}

/// Read access to the validated settings.
impl NodeConfig {
    /// This node's id (at least 1).
    #[must_use]
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The cluster name (peers of another cluster are refused).
    #[must_use]
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Where the WAL, hard state, snapshot and vote key live.
    #[must_use]
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Raft listen address.
    #[must_use]
    pub fn raft_addr(&self) -> SocketAddr {
        self.raft_addr
    }

    /// Client API listen address.
    #[must_use]
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// HTTP admin API and metrics listen address (none: not served).
    #[must_use]
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Regions by node id, for the topology (this node's `region` and the peers').
    #[must_use]
    pub fn regions(&self) -> &std::collections::BTreeMap<u64, String> {
        &self.regions
    }

    /// No TLS anywhere (tests on one machine only; logged as a warning).
    #[must_use]
    pub fn insecure_plaintext(&self) -> bool {
        self.insecure_plaintext
    }

    /// Start as a learner joining a running cluster (the leader adds it).
    #[must_use]
    pub fn join(&self) -> bool {
        self.join
    }

    /// Certificates; required unless `insecure_plaintext`.
    #[must_use]
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// The acknowledgement policy at bootstrap.
    #[must_use]
    pub fn policy(&self) -> AckPolicy {
        self.policy
    }

    /// Heartbeat interval.
    #[must_use]
    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// Shortest election timeout.
    #[must_use]
    pub fn election_timeout(&self) -> Duration {
        self.election_timeout
    }

    /// Snapshot threshold in entries.
    #[must_use]
    pub fn snapshot_entries(&self) -> u64 {
        self.snapshot_entries
    }

    /// Snapshot threshold in percent of the last snapshot's bytes.
    #[must_use]
    pub fn snapshot_log_percent(&self) -> u32 {
        self.snapshot_log_percent
    }

    /// Snapshot chunk size.
    #[must_use]
    pub fn snapshot_chunk_bytes(&self) -> usize {
        self.snapshot_chunk_bytes
    }

    /// Applier threads.
    #[must_use]
    pub fn apply_workers(&self) -> usize {
        self.apply_workers
    }

    /// Whether appends are fsynced.
    #[must_use]
    pub fn fsync(&self) -> bool {
        self.fsync
    }

    /// Lag alert threshold.
    #[must_use]
    pub fn lag_alert(&self) -> Duration {
        self.lag_alert
    }

    /// The bootstrap members (this node included).
    #[must_use]
    pub fn peers(&self) -> &[(u64, SocketAddr, SocketAddr)] {
        &self.peers
    }

    /// Authentication (`[auth]`): JWT keys and whether metrics are open. Client
    /// certificates from the cluster CA always authenticate; `insecure_plaintext` turns
    /// authentication off.
    #[must_use]
    pub fn auth(&self) -> &AuthSection {
        &self.auth
    }

    /// Change data capture (`[cdc]`).
    #[must_use]
    pub fn cdc(&self) -> &CdcSection {
        &self.cdc
    }

    /// `cdc.before_images`, compiled (none: no collection logs before-images).
    #[must_use]
    pub fn before_images(&self) -> Option<&CdcFilter> {
        self.before_images.as_ref()
    }

    /// Logical replication (`[logical]`).
    #[must_use]
    pub fn logical(&self) -> &LogicalSection {
        &self.logical
    }

    /// WAL archiving for point-in-time recovery (`[archive]`; none: off).
    #[must_use]
    pub fn archive(&self) -> Option<&themis_replication::pitr::ArchiveSpec> {
        self.archive.as_ref()
    }

    /// Lease reads (`replication.read_lease`).
    #[must_use]
    pub fn read_lease(&self) -> bool {
        self.read_lease
    }

    /// `replication.max_clock_drift_ppm`.
    #[must_use]
    pub fn max_clock_drift_ppm(&self) -> u32 {
        self.max_clock_drift_ppm
    }

    /// This node's region (`region`; `local` when not given).
    #[must_use]
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Read consistency and sessions (`[geo]`).
    #[must_use]
    pub fn geo(&self) -> &GeoSection {
        &self.geo
    }

    /// `geo.default_consistency`, parsed.
    #[must_use]
    pub fn default_consistency(&self) -> themis_replication::geo::ConsistencyLevel {
        self.default_consistency
    }

    /// `geo.session_secret_file`'s contents.
    #[must_use]
    pub fn session_secret(&self) -> Option<&Vec<u8>> {
        self.session_secret.as_ref()
    }

    /// Active-active replication between clusters (`[active_active]`).
    #[must_use]
    pub fn active_active(&self) -> &ActiveSection {
        &self.active_active
    }

    /// Lag history and insight thresholds (`[analytics]`).
    #[must_use]
    pub fn analytics(&self) -> &crate::analytics::AnalyticsSection {
        &self.analytics
    }
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|e| ConfigError(format!("{key} = {value:?}: not an IP address and port ({e})")))
}

impl NodeConfig {
    /// Reads and validates `path`, applying `THEMIS_*` overrides from the environment.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?;
        NodeConfig::parse(&text, |k| std::env::var(k).ok())
    }

    /// Parses and validates `text`; `env` looks up overrides (`THEMIS_<KEY>`).
    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<NodeConfig, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError(e.to_string()))?;
        apply_env(&mut table, &env)?;
        let raw = RawConfig::deserialize(toml::Value::Table(table))
            .map_err(|e: toml::de::Error| ConfigError(e.to_string().trim().to_string()))?;
        raw.validate()
    }

    /// Settings that are accepted but put data at risk, one sentence each; the node logs
    /// them as warnings at start.
    #[must_use]
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.policy.mode != ReplicationMode::Async && self.policy.min_sync_replicas == 0 {
            out.push(
                "replication.min_sync_replicas = 0 with replication.mode = \"semi_sync\": a write is \
                 acknowledged as soon as it commits, without waiting for any follower to report it \
                 durable; set it to at least 1 for the semi-sync guarantee (SYNC refuses 0)"
                    .to_string(),
            );
        }
        if !self.fsync {
            out.push(
                "replication.fsync = \"never\": appends are not fsynced, so a power loss or kernel crash can \
                 lose every write acknowledged since the kernel last flushed this node's WAL (and a \
                 majority losing power together can lose acknowledged writes cluster-wide)"
                    .to_string(),
            );
        }
        out
    }

    /// The authenticator this configuration asks for: off under `insecure_plaintext`,
    /// else with the `[auth]` keys (an error names the key and the file).
    pub fn authenticator(&self) -> Result<Authenticator, ConfigError> {
        if self.insecure_plaintext {
            return Ok(Authenticator::disabled());
        }
        Authenticator::new(&self.auth).map_err(|e| ConfigError(e.to_string()))
    }

    /// The logical replication manager's settings.
    #[must_use]
    pub fn logical_config(&self) -> themis_replication::logical::LogicalConfig {
        let mb = self.logical.max_slot_wal_keep_size_mb;
        themis_replication::logical::LogicalConfig {
            max_slot_wal_keep_size: (mb > 0).then_some(mb << 20),
            max_slots: self.logical.max_slots,
            ..themis_replication::logical::LogicalConfig::default()
        }
    }

    /// The change stream's settings.
    #[must_use]
    pub fn cdc_config(&self) -> CdcConfig {
        CdcConfig {
            max_depth: self.cdc.max_depth,
            heartbeat: Duration::from_millis(self.cdc.heartbeat_ms),
            ..CdcConfig::default()
        }
    }

    /// The bootstrap membership's voters.
    #[must_use]
    pub fn peer_ids(&self) -> Vec<u64> {
        self.peers.iter().map(|p| p.0).collect()
    }
}

/// Keys the environment may override, with their TOML path.
const ENV_KEYS: &[(&str, &[&str])] = &[
    ("THEMIS_NODE_ID", &["node_id"]),
    ("THEMIS_CLUSTER", &["cluster"]),
    ("THEMIS_DATA_DIR", &["data_dir"]),
    ("THEMIS_RAFT_ADDR", &["raft_addr"]),
    ("THEMIS_CLIENT_ADDR", &["client_addr"]),
    ("THEMIS_ADMIN_ADDR", &["admin_addr"]),
    ("THEMIS_REGION", &["region"]),
    ("THEMIS_INSECURE_PLAINTEXT", &["insecure_plaintext"]),
    ("THEMIS_JOIN", &["join"]),
    ("THEMIS_REPLICATION_MODE", &["replication", "mode"]),
    ("THEMIS_REPLICATION_MIN_SYNC_REPLICAS", &["replication", "min_sync_replicas"]),
    ("THEMIS_REPLICATION_HEARTBEAT_MS", &["replication", "heartbeat_ms"]),
    ("THEMIS_REPLICATION_ELECTION_TIMEOUT_MS", &["replication", "election_timeout_ms"]),
    ("THEMIS_REPLICATION_FSYNC", &["replication", "fsync"]),
];

fn apply_env(table: &mut toml::Table, env: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
    for (var, path) in ENV_KEYS {
        let Some(text) = env(var) else { continue };
        // A number or boolean when it parses as one, else a string.
        let value = if let Ok(n) = text.parse::<i64>() {
            toml::Value::Integer(n)
        } else if let Ok(b) = text.parse::<bool>() {
            toml::Value::Boolean(b)
        } else {
            toml::Value::String(text.clone())
        };
        let mut at = &mut *table;
        for key in &path[..path.len() - 1] {
            let entry =
                at.entry((*key).to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            at = entry.as_table_mut().ok_or_else(|| ConfigError(format!("{var}: {key} is not a table")))?;
        }
        at.insert(path[path.len() - 1].to_string(), value);
    }
    Ok(())
}

impl RawConfig {
    #[allow(clippy::too_many_lines, reason = "one check per key, in file order")]
    fn validate(self) -> Result<NodeConfig, ConfigError> {
        if self.node_id == 0 {
            return bad("node_id = 0: node ids start at 1".into());
        }
        if self.cluster.is_empty() || self.cluster.len() > 255 {
            return bad(format!("cluster = {:?}: must be 1 to 255 bytes", self.cluster));
        }
        let raft_addr = parse_addr("raft_addr", &self.raft_addr)?;
        let client_addr = parse_addr("client_addr", &self.client_addr)?;
        let admin_addr = self.admin_addr.as_deref().map(|a| parse_addr("admin_addr", a)).transpose()?;
        let mut regions = std::collections::BTreeMap::new();
        let named = |key: String, region: &str| {
            themis_replication::geo::check_region(region).map_err(|_| {
                ConfigError(format!(
                    "{key} = {region:?}: expected 1 to 32 of a-z, 0-9 and '-', starting with a letter"
                ))
            })?;
            Ok(region.to_string())
        };
        if let Some(region) = &self.region {
            regions.insert(self.node_id, named("region".into(), region)?);
        }
        for (i, p) in self.peers.iter().enumerate() {
            if let Some(region) = &p.region {
                regions.entry(p.id).or_insert(named(format!("peers[{i}].region"), region)?);
            }
        }
        let r = &self.replication;
        let mode: ReplicationMode = r.mode.parse().map_err(|_| {
            ConfigError(format!("replication.mode = {:?}: expected sync, semi_sync or async", r.mode))
        })?;
        let policy = AckPolicy { mode, min_sync_replicas: r.min_sync_replicas };
        if mode == ReplicationMode::Sync && r.min_sync_replicas == 0 {
            return bad(
                "replication.min_sync_replicas = 0 with replication.mode = \"sync\": SYNC needs at least 1"
                    .into(),
            );
        }
        if r.heartbeat_ms == 0 || r.heartbeat_ms > 60_000 {
            return bad(format!("replication.heartbeat_ms = {}: must be 1 to 60000", r.heartbeat_ms));
        }
        if r.election_timeout_ms <= r.heartbeat_ms {
            return bad(format!(
                "replication.heartbeat_ms = {} is not below replication.election_timeout_ms = {}",
                r.heartbeat_ms, r.election_timeout_ms
            ));
        }
        if r.election_timeout_ms < 2 * r.heartbeat_ms || r.election_timeout_ms > 600_000 {
            return bad(format!(
                "replication.election_timeout_ms = {}: must be at least twice heartbeat_ms ({}) and at most 600000",
                r.election_timeout_ms, r.heartbeat_ms
            ));
        }
        if r.snapshot_entries < 16 {
            return bad(format!(
                "replication.snapshot_entries = {}: must be at least 16",
                r.snapshot_entries
            ));
        }
        if r.snapshot_log_percent > 10_000 {
            return bad(format!(
                "replication.snapshot_log_percent = {}: must be 0 to 10000",
                r.snapshot_log_percent
            ));
        }
        if !(1024..=16 << 20).contains(&r.snapshot_chunk_bytes) {
            return bad(format!(
                "replication.snapshot_chunk_bytes = {}: must be 1024 to 16777216",
                r.snapshot_chunk_bytes
            ));
        }
        if !(1..=64).contains(&r.apply_workers) {
            return bad(format!("replication.apply_workers = {}: must be 1 to 64", r.apply_workers));
        }
        if r.lag_alert_ms == 0 {
            return bad("replication.lag_alert_ms = 0: must be at least 1".into());
        }
        if r.max_clock_drift_ppm > themis_replication::raft::MAX_CLOCK_DRIFT_PPM {
            return bad(format!(
                "replication.max_clock_drift_ppm = {}: must be at most {}",
                r.max_clock_drift_ppm,
                themis_replication::raft::MAX_CLOCK_DRIFT_PPM
            ));
        }
        let (default_consistency, session_secret) = self.geo.validate()?;
        self.active_active.validate(&self.cluster)?;
        self.analytics.validate().map_err(ConfigError)?;
        let fsync = match r.fsync.as_str() {
            "always" => true,
            "never" => false,
            other => return bad(format!("replication.fsync = {other:?}: expected always or never")),
        };
        let mut peers = Vec::new();
        for (i, p) in self.peers.iter().enumerate() {
            if p.id == 0 {
                return bad(format!("peers[{i}].id = 0: node ids start at 1"));
            }
            if peers.iter().any(|(id, _, _)| *id == p.id) {
                return bad(format!("peers[{i}].id = {}: listed twice", p.id));
            }
            let raft = parse_addr(&format!("peers[{i}].raft_addr"), &p.raft_addr)?;
            let client = parse_addr(&format!("peers[{i}].client_addr"), &p.client_addr)?;
            peers.push((p.id, raft, client));
        }
        if !peers.iter().any(|(id, _, _)| *id == self.node_id) {
            if self.join {
                peers.push((self.node_id, raft_addr, client_addr));
            } else {
                return bad(format!(
                    "peers: node_id = {} is not listed (list every bootstrap member)",
                    self.node_id
                ));
            }
        }
        let voters = peers.len() - usize::from(self.join);
        if mode != ReplicationMode::Async && r.min_sync_replicas as usize > voters.saturating_sub(1) {
            return bad(format!(
                "replication.min_sync_replicas = {}: the cluster has only {} other voters",
                r.min_sync_replicas,
                voters.saturating_sub(1)
            ));
        }
        let tls = if self.insecure_plaintext {
            None
        } else {
            let Some(tls) = self.tls else {
                return bad(
                    "tls: missing (give tls.ca, tls.cert and tls.key, or insecure_plaintext = true)".into()
                );
            };
            let admin = match (&tls.admin_cert, &tls.admin_key) {
                (Some(cert), Some(key)) => vec![("tls.admin_cert", cert), ("tls.admin_key", key)],
                (None, None) => Vec::new(),
                _ => return bad("tls.admin_cert and tls.admin_key: give both or neither".into()),
            };
            for (key, path) in
                [("tls.ca", &tls.ca), ("tls.cert", &tls.cert), ("tls.key", &tls.key)].into_iter().chain(admin)
            {
                if let Err(e) = std::fs::File::open(path) {
                    return bad(format!("{key} = {:?}: cannot be read ({e})", path.display().to_string()));
                }
            }
            Some(tls)
        };
        if !self.insecure_plaintext {
            // Reads the key files now, so a bad one is refused at load, naming it.
            Authenticator::new(&self.auth).map_err(|e| ConfigError(e.to_string()))?;
        }
        let cdc = self.cdc;
        // The change stream's own bounds, named by their keys here.
        if !(1..=CdcConfig::MAX_DEPTH_LIMIT).contains(&cdc.max_depth) {
            return bad(format!(
                "cdc.max_depth = {}: must be 1 to {}",
                cdc.max_depth,
                CdcConfig::MAX_DEPTH_LIMIT
            ));
        }
        let (beat_min, beat_max) =
            (CdcConfig::HEARTBEAT_MIN.as_millis(), CdcConfig::HEARTBEAT_MAX.as_millis());
        if !(beat_min..=beat_max).contains(&u128::from(cdc.heartbeat_ms)) {
            return bad(format!("cdc.heartbeat_ms = {}: must be {beat_min} to {beat_max}", cdc.heartbeat_ms));
        }
        if !(1..=4096).contains(&cdc.max_subscribers) {
            return bad(format!("cdc.max_subscribers = {}: must be 1 to 4096", cdc.max_subscribers));
        }
        let mut sink_names = Vec::new();
        for (i, sink) in cdc.sinks.iter().enumerate() {
            sink.validate(&format!("cdc.sinks[{i}]"), &mut sink_names)?;
        }
        if let Some(archive) = &self.archive {
            // The keys are read now, so a missing or malformed one is refused at load.
            archive.keyring().map_err(|e| ConfigError(e.to_string()))?;
        }
        if !(1..=1024).contains(&self.logical.max_slots) {
            return bad(format!("logical.max_slots = {}: must be 1 to 1024", self.logical.max_slots));
        }
        if self.logical.max_slot_wal_keep_size_mb > 1 << 30 {
            return bad(format!(
                "logical.max_slot_wal_keep_size_mb = {}: must be at most {} (1 PiB)",
                self.logical.max_slot_wal_keep_size_mb,
                1u64 << 30
            ));
        }
        // No patterns means no collection (a filter with no patterns would mean every one).
        let before_images = if cdc.before_images.is_empty() {
            None
        } else {
            Some(
                CdcFilter::new(&[], &cdc.before_images)
                    .map_err(|e| ConfigError(format!("cdc.before_images: {e}")))?,
            )
        };
        check_writable(&self.data_dir)?;
        Ok(NodeConfig {
            node_id: self.node_id,
            cluster: self.cluster,
            data_dir: self.data_dir,
            raft_addr,
            client_addr,
            admin_addr,
            regions,
            insecure_plaintext: self.insecure_plaintext,
            join: self.join,
            tls,
            policy,
            heartbeat: Duration::from_millis(r.heartbeat_ms),
            election_timeout: Duration::from_millis(r.election_timeout_ms),
            snapshot_entries: r.snapshot_entries,
            snapshot_log_percent: r.snapshot_log_percent,
            snapshot_chunk_bytes: r.snapshot_chunk_bytes,
            apply_workers: r.apply_workers,
            fsync,
            lag_alert: Duration::from_millis(r.lag_alert_ms),
            peers,
            auth: self.auth,
            cdc,
            before_images,
            logical: self.logical,
            archive: self.archive,
            read_lease: r.read_lease,
            max_clock_drift_ppm: r.max_clock_drift_ppm,
            region: self.region.unwrap_or_else(|| "local".into()),
            geo: self.geo,
            default_consistency,
            session_secret,
            active_active: self.active_active,
            analytics: self.analytics,
        })
    }
}

impl GeoSection {
    /// Automatic tiering's policy, when it is on.
    #[must_use]
    pub fn auto_tier_policy(&self) -> Option<themis_replication::geo::AutoTierPolicy> {
        self.auto_tiering.then(|| themis_replication::geo::AutoTierPolicy {
            promote_per_sec: self.auto_promote_writes_per_sec as f64,
            demote_per_sec: self.auto_demote_writes_per_sec as f64,
            min_dwell_ms: 5 * 1000 * self.auto_tier_interval_secs,
            half_life_ms: 60_000,
        })
    }

    /// Checks `[geo]`; returns the default level and the session secret.
    fn validate(&self) -> Result<(themis_replication::geo::ConsistencyLevel, Option<Vec<u8>>), ConfigError> {
        use themis_replication::geo;
        let level: geo::ConsistencyLevel = self
            .default_consistency
            .parse()
            .map_err(|e: geo::GeoError| ConfigError(format!("geo.default_consistency: {e}")))?;
        geo::check_staleness_ms(self.max_staleness_ms).map_err(|e| ConfigError(format!("geo.{e}")))?;
        if !(1_000..=604_800_000).contains(&self.session_token_ttl_ms) {
            return bad(format!(
                "geo.session_token_ttl_ms = {}: must be 1000 to 604800000",
                self.session_token_ttl_ms
            ));
        }
        if self.read_wait_ms > 10_000 {
            return bad(format!("geo.read_wait_ms = {}: must be 0 to 10000", self.read_wait_ms));
        }
        if !(1..=86_400).contains(&self.auto_tier_interval_secs) {
            return bad(format!(
                "geo.auto_tier_interval_secs = {}: must be 1 to 86400",
                self.auto_tier_interval_secs
            ));
        }
        if let Some(policy) = self.auto_tier_policy()
            && let Err(e) = themis_replication::geo::AutoTiering::new(policy)
        {
            return bad(format!(
                "geo.auto_demote_writes_per_sec = {} and geo.auto_promote_writes_per_sec = {}: {e}",
                self.auto_demote_writes_per_sec, self.auto_promote_writes_per_sec
            ));
        }
        let secret = match &self.session_secret_file {
            None => None,
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|e| {
                    ConfigError(format!("geo.session_secret_file = {:?}: {e}", path.display().to_string()))
                })?;
                let trimmed = bytes.trim_ascii().to_vec();
                if trimmed.len() < 16 {
                    return bad(format!(
                        "geo.session_secret_file = {:?}: holds {} bytes; at least 16 are needed",
                        path.display().to_string(),
                        trimmed.len()
                    ));
                }
                Some(trimmed)
            }
        };
        Ok((level, secret))
    }
}

fn check_writable(dir: &Path) -> Result<(), ConfigError> {
    let fail = |e: std::io::Error| {
        ConfigError(format!("data_dir = {:?}: not writable ({e})", dir.display().to_string()))
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    let probe = dir.join(".write-probe");
    std::fs::write(&probe, b"ok").map_err(fail)?;
    std::fs::remove_file(&probe).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(dir: &Path) -> String {
        format!(
            r#"
node_id = 1
data_dir = "{}"
raft_addr = "127.0.0.1:7001"
client_addr = "127.0.0.1:8001"
insecure_plaintext = true

[replication]
mode = "semi_sync"
min_sync_replicas = 1

[[peers]]
id = 1
raft_addr = "127.0.0.1:7001"
client_addr = "127.0.0.1:8001"

[[peers]]
id = 2
raft_addr = "127.0.0.1:7002"
client_addr = "127.0.0.1:8002"

[[peers]]
id = 3
raft_addr = "127.0.0.1:7003"
client_addr = "127.0.0.1:8003"
"#,
            dir.display()
        )
    }

    #[test]
    fn a_good_file_loads_and_the_environment_overrides_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = NodeConfig::parse(&base(dir.path()), |_| None).unwrap();
        assert_eq!(
            (config.node_id, config.peers.len(), config.policy.mode),
            (1, 3, ReplicationMode::SemiSync)
        );
        assert_eq!(config.election_timeout, Duration::from_millis(500));
        let env = |k: &str| match k {
            "THEMIS_REPLICATION_MODE" => Some("async".to_string()),
            "THEMIS_CLIENT_ADDR" => Some("127.0.0.1:9999".to_string()),
            _ => None,
        };
        let config = NodeConfig::parse(&base(dir.path()), env).unwrap();
        assert_eq!(config.policy.mode, ReplicationMode::Async);
        assert_eq!(config.client_addr.port(), 9999);
        assert_eq!(config.admin_addr, None);
        let with_admin = base(dir.path())
            .replace("node_id = 1", "node_id = 1\nadmin_addr = \"127.0.0.1:9100\"\nregion = \"eu\"")
            .replace("client_addr = \"127.0.0.1:8002\"", "client_addr = \"127.0.0.1:8002\"\nregion = \"us\"");
        let config =
            NodeConfig::parse(&with_admin, |k| (k == "THEMIS_REGION").then(|| "ap".to_string())).unwrap();
        assert_eq!(config.admin_addr.map(|a| a.port()), Some(9100));
        assert_eq!(config.regions.get(&1).map(String::as_str), Some("ap"));
        assert_eq!(config.regions.get(&2).map(String::as_str), Some("us"));
    }

    #[test]
    fn every_bad_value_is_named_with_its_key_and_value() {
        let dir = tempfile::tempdir().unwrap();
        let good = base(dir.path());
        let cases = [
            (
                good.replace("mode = \"semi_sync\"", "mode = \"sync\"")
                    .replace("min_sync_replicas = 1", "min_sync_replicas = 0"),
                "min_sync_replicas = 0",
            ),
            (
                good.replace("mode = \"semi_sync\"", "mode = \"eventually\""),
                "replication.mode = \"eventually\"",
            ),
            (
                good.replace("[replication]", "[replication]\nheartbeat_ms = 600"),
                "heartbeat_ms = 600 is not below",
            ),
            (
                good.replace(
                    "client_addr = \"127.0.0.1:8001\"\ninsecure",
                    "client_addr = \"nowhere\"\ninsecure",
                ),
                "client_addr = \"nowhere\"",
            ),
            (good.replace("insecure_plaintext = true", "insecure_plaintext = false"), "tls: missing"),
            (
                good.replace(
                    "insecure_plaintext = true",
                    "[tls]\nca = \"/nonexistent/ca.pem\"\ncert = \"c\"\nkey = \"k\"",
                )
                .replace("[tls]", "insecure_plaintext = false\n[tls]"),
                "tls.ca = \"/nonexistent/ca.pem\"",
            ),
            (
                good.replace(
                    "insecure_plaintext = true",
                    "[tls]\nca = \"/nonexistent/ca.pem\"\ncert = \"c\"\nkey = \"k\"\nadmin_cert = \"w\"",
                )
                .replace("[tls]", "insecure_plaintext = false\n[tls]"),
                "tls.admin_cert and tls.admin_key: give both or neither",
            ),
            (format!("{good}\n[analytics]\nhistory_secs = 5\n"), "analytics.history_secs = 5"),
            (good.replace("min_sync_replicas = 1", "min_sync_replicas = 3"), "min_sync_replicas = 3"),
            (good.replace("node_id = 1", "node_id = 9"), "node_id = 9 is not listed"),
            (good.replace("node_id = 1", "node_id = 1\ncolour = 3"), "unknown field `colour`"),
            (good.replace("[replication]", "[replication]\nlag_alert_ms = 0"), "lag_alert_ms = 0"),
            (
                good.replace("[replication]", "[replication]\nsnapshot_log_percent = 10001"),
                "replication.snapshot_log_percent = 10001",
            ),
            (
                good.replace("[replication]", "[replication]\nsnapshot_chunk_bytes = 100"),
                "replication.snapshot_chunk_bytes = 100",
            ),
            (good.replace("[replication]", "[replication]\nfsync = \"sometimes\""), "fsync = \"sometimes\""),
            (good.replace("node_id = 1", "node_id = 0"), "node_id = 0"),
            (good.replace("node_id = 1", "node_id = \"one\""), "node_id"),
            (
                good.replace("node_id = 1", "node_id = 1\nadmin_addr = \"localhost\""),
                "admin_addr = \"localhost\"",
            ),
            (good.replace("node_id = 1", "node_id = 1\nregion = \"\""), "region = \"\""),
            (
                good.replace("node_id = 1", "node_id = 1\nregion = \"US East\""),
                "region = \"US East\": expected 1 to 32",
            ),
            (
                good.replace("[replication]", "[replication]\nmax_clock_drift_ppm = 200000"),
                "max_clock_drift_ppm = 200000",
            ),
            (format!("{good}\n[geo]\ndefault_consistency = \"linear\"\n"), "geo.default_consistency"),
            (format!("{good}\n[geo]\nmax_staleness_ms = 0\n"), "geo.max_staleness_ms = 0"),
            (format!("{good}\n[geo]\nsession_token_ttl_ms = 10\n"), "geo.session_token_ttl_ms = 10"),
            (format!("{good}\n[geo]\nread_wait_ms = 20000\n"), "geo.read_wait_ms = 20000"),
            (format!("{good}\n[geo]\nauto_tier_interval_secs = 0\n"), "geo.auto_tier_interval_secs = 0"),
            (
                format!(
                    "{good}\n[geo]\nauto_tiering = true\nauto_promote_writes_per_sec = 1\nauto_demote_writes_per_sec = 5\n"
                ),
                "geo.auto_demote_writes_per_sec = 5",
            ),
            (
                format!("{good}\n[geo]\nsession_secret_file = \"/nonexistent/secret\"\n"),
                "geo.session_secret_file",
            ),
            (format!("{good}\n[geo]\nregion = \"x\"\n"), "unknown field"),
        ];
        for (text, needle) in cases {
            let err = NodeConfig::parse(&text, |_| None).unwrap_err();
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
        let env = |k: &str| (k == "THEMIS_DATA_DIR").then(|| "/proc/themis-cannot-write".to_string());
        let err = NodeConfig::parse(&good, env).unwrap_err();
        assert!(err.to_string().contains("data_dir = \"/proc/themis-cannot-write\": not writable"), "{err}");
    }

    #[test]
    fn active_active_settings_load_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let good = base(dir.path());
        let named = |cluster: &str, section: &str| {
            format!("cluster = \"{cluster}\"\n{good}\n[active_active]\n{section}")
        };
        let config = NodeConfig::parse(
            &named(
                "us-west",
                "enabled = true\nmax_clock_skew_ms = 250\n[active_active.resolver.default]\nstrategy = \"first_writer_wins\"\n\
                 [active_active.resolver.collections.hits]\nstrategy = \"crdt\"\ncrdt_type = \"g_counter\"\n",
            ),
            |_| None,
        )
        .unwrap();
        assert!(config.active_active.enabled);
        assert_eq!(config.active_active.max_clock_skew_ms, 250);
        assert!(!config.active_active.replicate_foreign_changes);
        config.active_active.resolver().unwrap();
        // Off by default; off, any cluster name is fine.
        assert!(!NodeConfig::parse(&good, |_| None).unwrap().active_active.enabled);
        NodeConfig::parse(&named("Prod Cluster", "enabled = false\n"), |_| None).unwrap();
        for (text, needle) in [
            (
                named("Prod Cluster", "enabled = true\n"),
                "cluster = \"Prod Cluster\": with active_active.enabled",
            ),
            (
                named("us-west", "enabled = true\nmax_clock_skew_ms = 0\n"),
                "active_active.max_clock_skew_ms = 0",
            ),
            (
                named("us-west", "enabled = true\nmax_clock_skew_ms = 3600001\n"),
                "active_active.max_clock_skew_ms = 3600001",
            ),
            (
                named("us-west", "enabled = true\n[active_active.resolver.default]\nstrategy = \"newest\"\n"),
                "active_active.resolver",
            ),
            (
                named(
                    "us-west",
                    "enabled = true\n[active_active.resolver.default]\nstrategy = \"crdt\"\ncrdt_type = \"bag\"\n",
                ),
                "active_active.resolver",
            ),
            (named("us-west", "enabled = true\nlinks = 3\n"), "unknown field"),
        ] {
            let err = NodeConfig::parse(&text, |_| None).unwrap_err();
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn cdc_settings_and_sinks_load_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let good = base(dir.path());
        let sink = "[[cdc.sinks]]\nname = \"k\"\nbrokers = [\"127.0.0.1:9092\"]\n";
        let with = |cdc: &str| format!("{good}\n[cdc]\n{cdc}");
        let config = NodeConfig::parse(
            &with(&format!("max_depth = 1024\nheartbeat_ms = 250\nbefore_images = [\"orders_*\"]\n{sink}collections = [\"orders_*\"]\nops = [\"insert\"]\n")),
            |_| None,
        )
        .unwrap();
        assert_eq!(
            (config.cdc_config().max_depth, config.cdc_config().heartbeat),
            (1024, Duration::from_millis(250))
        );
        assert!(config.before_images.as_ref().unwrap().matches_collection("orders_eu"));
        assert!(NodeConfig::parse(&good, |_| None).unwrap().before_images.is_none(), "none unless asked");
        let sink0 = &config.cdc.sinks[0];
        assert_eq!(
            (sink0.topic.as_str(), sink0.partitions, sink0.tombstones),
            ("themis.{collection}", 1, true)
        );
        let cases = [
            (with("max_depth = 0\n"), "cdc.max_depth = 0"),
            (with("heartbeat_ms = 5\n"), "cdc.heartbeat_ms = 5: must be 10 to 3600000"),
            (with("max_subscribers = 0\n"), "cdc.max_subscribers = 0"),
            (
                with("before_images = [\"a{b\"]\n"),
                "cdc.before_images: collection pattern \"a{b\": '{' without a '}' at position 1",
            ),
            (with(&format!("{sink}collections = [\"x[\"]\n")), "cdc.sinks[0]: collection pattern \"x[\""),
            (with(&format!("{sink}ops = [\"upsert\"]\n")), "cdc.sinks[0]: unknown op \"upsert\""),
            (with(&sink.replace("name = \"k\"", "name = \"K!\"")), "cdc.sinks[0].name = \"K!\""),
            (with(&format!("{sink}{sink}")), "cdc.sinks[1].name = \"k\": two sinks"),
            (with(&sink.replace("127.0.0.1:9092", "nowhere")), "cdc.sinks[0].brokers: \"nowhere\""),
            (with(&sink.replace("brokers = [\"127.0.0.1:9092\"]", "brokers = []")), "cdc.sinks[0].brokers"),
            (with(&format!("{sink}topic = \"bad topic\"\n")), "cdc.sinks[0].topic = \"bad topic\""),
            (with(&format!("{sink}partitions = 0\n")), "cdc.sinks[0].partitions = 0"),
            (with(&format!("{sink}max_batch = 0\n")), "cdc.sinks[0].max_batch = 0"),
            (with(&format!("{sink}checkpoint_ms = 1\n")), "cdc.sinks[0].checkpoint_ms = 1"),
            (with(&format!("{sink}colour = 1\n")), "unknown field `colour`"),
        ];
        for (text, needle) in cases {
            let err = NodeConfig::parse(&text, |_| None).unwrap_err();
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn logical_and_archive_settings_load_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let good = base(dir.path());
        let key = dir.path().join("archive.key");
        std::fs::write(&key, "ab".repeat(32)).unwrap();
        let archive = format!("[archive]\nurl = \"file:///tmp/a\"\nkey_file = \"{}\"\n", key.display());
        let config = NodeConfig::parse(
            &format!(
                "{good}\n[logical]\nmax_slot_wal_keep_size_mb = 64\nmax_slots = 8\n{archive}chunk_mb = 4\n"
            ),
            |_| None,
        )
        .unwrap();
        assert_eq!(config.logical_config().max_slot_wal_keep_size, Some(64 << 20));
        assert_eq!(config.logical_config().max_slots, 8);
        assert_eq!(config.archive.as_ref().unwrap().archiver_config().chunk_bytes, 4 << 20);
        let cases = [
            (format!("{good}\n[logical]\nmax_slots = 0\n"), "logical.max_slots = 0"),
            (
                format!("{good}\n[logical]\nmax_slot_wal_keep_size_mb = 9999999999\n"),
                "max_slot_wal_keep_size_mb",
            ),
            (format!("{good}\n[logical]\nslots = 1\n"), "unknown field `slots`"),
            (format!("{good}\n[archive]\nurl = \"file:///tmp/a\"\n"), "give key_file or key_env"),
            (format!("{good}\n{archive}chunk_mb = 0\n"), "archive.chunk_mb = 0"),
            (format!("{good}\n{archive}timeout_secs = 0\n"), "archive.timeout_secs = 0"),
            (
                format!("{good}\n[archive]\nurl = \"not a url\"\nkey_file = \"{}\"\n", key.display()),
                "archive.url",
            ),
            (
                format!("{good}\n[archive]\nurl = \"file:///a\"\nkey_file = \"/nonexistent.key\"\n"),
                "/nonexistent.key",
            ),
            (
                format!("{good}\n{archive}[archive.retention]\nkeep_base_backups = 0\n"),
                "keep_base_backups = 0",
            ),
            (
                format!("{good}\n{archive}[archive.retention]\ncold_storage_class = \"GLACIER\"\n"),
                "go together",
            ),
        ];
        for (text, needle) in cases {
            let err = NodeConfig::parse(&text, |_| None).unwrap_err();
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn risky_settings_are_accepted_with_a_warning_each() {
        let dir = tempfile::tempdir().unwrap();
        let good = base(dir.path());
        assert!(NodeConfig::parse(&good, |_| None).unwrap().warnings().is_empty());
        let zero = good.replace("min_sync_replicas = 1", "min_sync_replicas = 0");
        let warnings = NodeConfig::parse(&zero, |_| None).unwrap().warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("min_sync_replicas = 0") && warnings[0].contains("semi_sync"),
            "{warnings:?}"
        );
        let unsynced = good.replace("[replication]", "[replication]\nfsync = \"never\"");
        let warnings = NodeConfig::parse(&unsynced, |_| None).unwrap().warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("fsync = \"never\"") && warnings[0].contains("lose"), "{warnings:?}");
        let async_zero = zero.replace("mode = \"semi_sync\"", "mode = \"async\"");
        assert!(
            NodeConfig::parse(&async_zero, |_| None).unwrap().warnings().is_empty(),
            "async needs no followers"
        );
    }
}
