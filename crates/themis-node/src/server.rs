//! The node runtime: wires the WAL-backed Raft storage, the driver, the peer transport,
//! the document store and the client API together.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use themis_replication::cdc::CdcStream;
use themis_replication::clock::{Hlc, NodeId};
use themis_replication::raft::driver::{CommitObserver, Driver, DriverConfig, PeerInfo, ReplicationManager};
use themis_replication::raft::{
    AckPolicy, ConfState, Config as RaftConfig, DriverError, Ed25519Votes, ReplicationMode, SharedVotes,
    ShipNetwork, WalStorage,
};
use themis_replication::ship::tls::TlsConfig;
use themis_replication::ship::{Members, PeerConfig, Security, Transport, TransportConfig};
use themis_replication::wal::{Entry, FsyncPolicy, Lsn, WalConfig};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::auth::{Authenticator, Identity, required_role};
use crate::config::NodeConfig;
use crate::limits::{
    HANDSHAKE_TIMEOUT, MAX_CLIENT_CONNECTIONS, MAX_DOCUMENT_BYTES, MAX_INFLIGHT_PER_CONNECTION,
    MAX_RECORD_BYTES,
};
use crate::metrics::Metrics;
use crate::protocol::{
    ErrorCode, ProtocolError, Request, Response, check_name, read_frame_within, skip_body, write_frame,
};
use crate::store::DocStore;
use crate::writes::Sequencer;

/// What every request handler works with.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) manager: ReplicationManager,
    pub(crate) store: Arc<DocStore>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) auth: Authenticator,
    pub(crate) cdc: CdcStream,
    pub(crate) writes: Sequencer,
    /// The log (for retention holds).
    pub(crate) wal: themis_replication::wal::Wal,
    /// Logical replication slots.
    pub(crate) logical: themis_replication::logical::LogicalReplicationManager,
    /// `logical.max_slots`.
    pub(crate) logical_max_slots: usize,
    /// Serializes the leader's read-modify-writes of internal documents (slot records,
    /// the cascade topology).
    pub(crate) slot_writes: tokio::sync::Mutex<()>,
    /// The node's clock.
    pub(crate) hlc: Arc<Hlc>,
    /// The WAL archive's progress and its chunk timeout in ms, when `[archive]` is on.
    pub(crate) archive: Option<(Arc<crate::archive::ArchiveStats>, u64)>,
    /// Read levels and session tokens.
    pub(crate) geo: crate::geo::Geo,
    /// Replication tiers by collection.
    pub(crate) tiers: crate::tiers::Tiers,
    /// Active-active settings (`[active_active]`).
    pub(crate) active_active: crate::config::ActiveSection,
    /// Active-active links' statuses (the leader runs them).
    pub(crate) links: Arc<crate::links::Links>,
    /// Lag history, insights and bottlenecks.
    pub(crate) analytics: Arc<crate::analytics::Analytics>,
    /// The term whose leadership the logical slot readers serve (0: none).
    pub(crate) slot_readers_term: std::sync::Mutex<u64>,
}

impl Shared {
    /// The answer to an acknowledged write: its LSN and a session token covering it.
    fn written(&self, lsn: u64) -> Response {
        let (term, _) = self.manager.leadership();
        Response::Written { lsn, session_token: self.geo.issue(term, lsn, self.hlc.now().physical_ms()) }
    }

    /// [`written`](Self::written) once the write also meets its collection's tier, if the
    /// collection has one.
    async fn written_under(
        &self,
        lsn: u64,
        tier: Option<themis_replication::geo::ReplicationTier>,
    ) -> Response {
        if let Some(tier) = tier
            && let Err(r) =
                crate::tiers::await_concern(&self.manager, lsn, tier.write_concern(), WRITE_TIMEOUT).await
        {
            return r;
        }
        self.written(lsn)
    }
}

/// Hands what the applier applied to the change stream (never waits on a subscriber).
#[derive(Debug)]
struct CdcObserver {
    cdc: CdcStream,
    hlc: Arc<Hlc>,
}

impl CommitObserver for CdcObserver {
    fn applied(&self, entries: &[Entry]) {
        self.cdc.publish(entries);
    }

    fn restored(&self, lsn: Lsn) {
        self.cdc.restart_at(lsn, self.hlc.now());
    }
}

/// The node's background tasks: Kafka sinks, logical slots, the WAL archiver.
fn start_tasks(
    shared: &Arc<Shared>,
    config: &NodeConfig,
    sinks: &crate::sink::Sinks,
    archive_stats: Arc<crate::archive::ArchiveStats>,
) -> Result<(), NodeError> {
    crate::sink::start(shared, &config.cdc.sinks, sinks);
    crate::slots::start(shared);
    crate::geo::start(shared);
    crate::tiers::start(shared, Duration::from_secs(config.geo.auto_tier_interval_secs));
    crate::cascade::start(shared);
    crate::links::start(shared);
    if let Some(spec) = &config.archive {
        crate::archive::start(shared, spec, &config.cluster, config.data_dir.join("raft"), archive_stats)
            .map_err(|e| NodeError::Io(format!("archive: {e}")))?;
    }
    Ok(())
}

/// Why a node could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// A file or socket failed; the message names it.
    #[error("{0}")]
    Io(String),
    /// The replication layer failed.
    #[error(transparent)]
    Driver(#[from] DriverError),
}

/// How long a write waits for its acknowledgement.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A running node.
#[derive(Debug)]
pub struct Node {
    /// The replication handle.
    pub manager: ReplicationManager,
    /// The document store.
    pub store: Arc<DocStore>,
    /// Where the client API listens.
    pub client_addr: SocketAddr,
    /// Where the HTTP admin API listens, if it is served.
    pub admin_addr: Option<SocketAddr>,
    /// The node's metrics.
    pub metrics: Arc<Metrics>,
    /// The node's change stream.
    pub cdc: CdcStream,
    driver: JoinHandle<Result<(), DriverError>>,
    clients: JoinHandle<()>,
    admin: Option<JoinHandle<()>>,
}

/// Loads this node's vote signing seed from `dir/vote-key`, creating it (32 random
/// bytes, owner-only, fsynced) on first start. Only under `insecure_plaintext`, where
/// peers learn the public key from the hello on first use; under TLS the node
/// certificate's key signs votes ([`vote_signer`]).
fn vote_key(dir: &Path) -> Result<Vec<u8>, NodeError> {
    let path = dir.join("vote-key");
    match std::fs::read(&path) {
        Ok(seed) if seed.len() == 32 => Ok(seed),
        Ok(seed) => Err(NodeError::Io(format!("{}: {} bytes, expected 32", path.display(), seed.len()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
                .map_err(|_| NodeError::Io("the system random source failed".into()))?;
            let tmp = dir.join("vote-key.tmp");
            let io = |e: std::io::Error| NodeError::Io(format!("{}: {e}", tmp.display()));
            {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(io)?;
                f.write_all(&seed).map_err(io)?;
                f.sync_all().map_err(io)?;
            }
            std::fs::rename(&tmp, &path).map_err(io)?;
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
            Ok(seed.to_vec())
        }
        Err(e) => Err(NodeError::Io(format!("{}: {e}", path.display()))),
    }
}

/// This node's vote signer: under TLS the node certificate's Ed25519 key (peers take the
/// public key from the certificate, so it cannot be learned or replaced in-band), else
/// the seed in `data_dir/vote-key`.
fn vote_signer(config: &NodeConfig, id: NodeId, security: &Security) -> Result<Ed25519Votes, NodeError> {
    let Security::Tls(tls) = security else {
        let seed = vote_key(&config.data_dir)?;
        return Ok(Ed25519Votes::from_seed(id, &seed).map_err(DriverError::from)?);
    };
    let files = config.tls.as_ref().map(|t| (t.cert.display().to_string(), t.key.display().to_string()));
    let (cert, key) = files.unwrap_or_default();
    let certified = themis_replication::ship::tls::ed25519_public_key(tls.certificate()).map_err(|why| {
        NodeError::Io(format!(
            "tls.cert = {cert:?}: the node signs its votes with its certificate's key, and {why}"
        ))
    })?;
    let der = tls.private_key_pkcs8().ok_or_else(|| {
        NodeError::Io(format!("tls.key = {key:?}: the node key must be PKCS#8 (as `themis certs` writes it)"))
    })?;
    let votes =
        Ed25519Votes::from_pkcs8(id, der).map_err(|e| NodeError::Io(format!("tls.key = {key:?}: {e}")))?;
    if votes.public_key() != certified {
        return Err(NodeError::Io(format!("tls.key = {key:?}: not the key of tls.cert = {cert:?}")));
    }
    Ok(votes)
}

/// The Raft core's settings for `config`, and the tick they count in.
fn raft_config(config: &NodeConfig, id: NodeId) -> Result<(RaftConfig, Duration), NodeError> {
    let tick = (config.heartbeat / 2).max(Duration::from_millis(1));
    let mut raft = RaftConfig::new(id, config.cluster.clone());
    raft.heartbeat_tick = 2;
    raft.election_tick = (config.election_timeout.as_millis() / tick.as_millis().max(1)).max(3) as u64;
    raft.max_clock_drift_ppm = config.max_clock_drift_ppm;
    if config.read_lease {
        raft.read_only = themis_replication::raft::ReadOnlyOption::LeaseBased;
        if raft.lease_ticks() == 0 {
            // Too short an election timeout for a lease under this drift: confirm reads.
            tracing::warn!(
                election_tick = raft.election_tick,
                drift_ppm = raft.max_clock_drift_ppm,
                "replication.read_lease: the election timeout is too short for a lease; strong reads use ReadIndex"
            );
            raft.read_only = themis_replication::raft::ReadOnlyOption::Safe;
        }
    }
    // Election timeouts come from a fresh random seed (never from key material).
    let mut rng_seed = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut rng_seed)
        .map_err(|_| NodeError::Io("the system random source failed".into()))?;
    raft.seed = u64::from_le_bytes(rng_seed);
    Ok((raft, tick))
}

/// Opens the Raft log and state under `data_dir/raft` (a new node writes its bootstrap
/// membership), with fsyncs timed into `metrics`.
fn open_storage(
    config: &NodeConfig,
    id: NodeId,
    metrics: &Metrics,
    window: Arc<crate::analytics::FsyncWindow>,
) -> Result<WalStorage, NodeError> {
    let bootstrap_voters: Vec<NodeId> =
        config.peers.iter().map(|p| NodeId(p.0)).filter(|p| !(config.join && *p == id)).collect();
    let mut conf = ConfState::with_voters(bootstrap_voters);
    if config.join {
        conf.learners.insert(id);
    }
    let fsync_histogram = metrics.fsync_histogram();
    let delay = crate::fault::FaultFile::from_env("fsync-delay-ms", id.0);
    let wal = WalConfig {
        fsync: if config.fsync { FsyncPolicy::Always } else { FsyncPolicy::Never },
        max_record_bytes: MAX_RECORD_BYTES,
        on_sync: Some(Arc::new(move |took| {
            let took = match &delay {
                Some(delay) => {
                    let wait = Duration::from_millis(delay.value());
                    std::thread::sleep(wait);
                    took + wait
                }
                None => took,
            };
            fsync_histogram.observe(took.as_secs_f64());
            window.observe(took);
        })),
        ..WalConfig::default()
    };
    let (storage, report) = WalStorage::open(config.data_dir.join("raft"), wal, Some((conf, config.policy)))
        .map_err(|e| NodeError::Io(format!("raft storage: {e}")))?;
    if !report.truncated.is_empty() {
        tracing::warn!(node = %id, ?report, "the WAL had a torn tail, truncated at open");
    }
    Ok(storage)
}

/// The replication driver's settings for `config`.
fn driver_config(config: &NodeConfig, id: NodeId) -> Result<DriverConfig, NodeError> {
    let (raft, tick) = raft_config(config, id)?;
    let peers = config
        .peers
        .iter()
        .map(|(pid, raft_addr, client_addr)| PeerInfo {
            id: NodeId(*pid),
            raft_addr: *raft_addr,
            meta: client_addr.to_string().into_bytes(),
        })
        .collect();
    let mut driver_config = DriverConfig::new(raft, peers);
    driver_config.tick = tick;
    driver_config.snapshot_entries = config.snapshot_entries;
    driver_config.snapshot_log_percent = config.snapshot_log_percent;
    driver_config.snapshot_chunk_bytes = config.snapshot_chunk_bytes;
    driver_config.apply_workers = config.apply_workers;
    driver_config.lag_alert = config.lag_alert;
    driver_config.wire.max_record_bytes = MAX_RECORD_BYTES;
    Ok(driver_config)
}

/// The peer links' settings for `config`.
fn peer_config(config: &NodeConfig) -> PeerConfig {
    PeerConfig {
        heartbeat_interval: config.heartbeat,
        peer_timeout: config.election_timeout,
        ..PeerConfig::default()
    }
}

/// The node link security and the client API acceptor `config` asks for; the node
/// certificate must name this node.
/// The peer transport's security, the client API's acceptor and the admin API's (the same
/// unless `tls.admin_cert` gives the admin API its own certificate).
type Acceptors = (Security, Option<tokio_rustls::TlsAcceptor>, Option<tokio_rustls::TlsAcceptor>);

fn security(config: &NodeConfig, id: NodeId) -> Result<Acceptors, NodeError> {
    if let Some(files) = &config.tls {
        let tls = TlsConfig::from_files(&files.ca, &files.cert, &files.key)
            .map_err(|e| NodeError::Io(format!("tls: {e}")))?;
        if tls.node() != id {
            return Err(NodeError::Io(format!(
                "tls.cert = {:?}: the certificate is for node {}, this is node {}",
                files.cert.display().to_string(),
                tls.node().0,
                id.0
            )));
        }
        let acceptor = tls.client_api_acceptor();
        let admin = match (&files.admin_cert, &files.admin_key) {
            (Some(cert), Some(key)) => {
                let read = |path: &std::path::PathBuf, what: &str| {
                    std::fs::read_to_string(path).map_err(|e| {
                        NodeError::Io(format!("tls.{what} = {:?}: {e}", path.display().to_string()))
                    })
                };
                tls.acceptor_with_cert(&read(cert, "admin_cert")?, &read(key, "admin_key")?)
                    .map_err(|e| NodeError::Io(format!("tls.admin_cert: {e}")))?
            }
            _ => acceptor.clone(),
        };
        Ok((Security::Tls(tls), Some(acceptor), Some(admin)))
    } else {
        tracing::warn!(node = %id, "insecure_plaintext = true: node links and clients are NOT encrypted, and clients are NOT authenticated (anyone who reaches a port may do everything)");
        Ok((Security::InsecurePlaintext, None, None))
    }
}

impl Node {
    /// Starts the node described by `config` on the current tokio runtime.
    pub async fn start(config: &NodeConfig) -> Result<Node, NodeError> {
        let id = NodeId(config.node_id);
        let io = |what: &str, e: &dyn std::fmt::Display| NodeError::Io(format!("{what}: {e}"));
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| io(&config.data_dir.display().to_string(), &e))?;
        let (security, client_tls, admin_tls) = security(config, id)?;
        let signer = vote_signer(config, id, &security)?;
        for warning in config.warnings() {
            tracing::warn!(node = %id, "{warning}");
        }
        let auth = config.authenticator().map_err(|e| NodeError::Io(e.to_string()))?;
        let members = Members::new(config.peers.iter().map(|p| NodeId(p.0)));
        let transport = Transport::new(TransportConfig::new(config.cluster.clone(), id, security), members)
            .map_err(|e| io("transport", &e))?;
        let listener = transport.bind(config.raft_addr).await.map_err(|e| io("raft_addr", &e))?;

        let mut metrics = Metrics::new();
        let fsync_window = Arc::new(crate::analytics::FsyncWindow::default());
        let storage = open_storage(config, id, &metrics, Arc::clone(&fsync_window))?;

        let mut driver_config = driver_config(config, id)?;
        let wal_handle = storage.wal().clone();
        let hlc = Arc::new(Hlc::new(id));
        // Subscribers from before the snapshot read the WAL (what compaction left of it);
        // the applier publishes everything after it as it replays and applies.
        let cdc = CdcStream::new(
            config.cdc_config(),
            Arc::new(storage.wal().clone()),
            storage.snapshot_meta().lsn,
            hlc.now(),
        )
        .map_err(|e| io("cdc", &e))?;
        driver_config.commit_observer =
            Some(Arc::new(CdcObserver { cdc: cdc.clone(), hlc: Arc::clone(&hlc) }));

        let logical = crate::slots::open(config, &wal_handle, &cdc).map_err(|e| io("logical slots", &e))?;
        let votes = SharedVotes::new(signer);
        let store = Arc::new(document_store(config)?);
        let clock = Arc::clone(&hlc);
        let network = ShipNetwork::new(transport, listener, peer_config(config))?;
        let (manager, driver) =
            Driver::start(driver_config, storage, network, store.clone(), votes, move || clock.now())?;

        metrics.watch(manager.clone());
        let sinks = crate::sink::stats(&config.cdc.sinks);
        metrics.watch_cdc(cdc.clone(), Arc::clone(&store), sinks.clone());
        metrics.watch_slots(logical.clone());
        let staleness = crate::geo::tracker();
        metrics.watch_geo(Arc::clone(&staleness), manager.clone(), Arc::clone(&hlc));
        let links = Arc::new(crate::links::Links::default());
        if config.active_active.enabled {
            metrics.watch_links(Arc::clone(&links), Arc::clone(&store));
        }
        let archive_stats = Arc::new(crate::archive::ArchiveStats::default());
        if config.archive.is_some() {
            metrics.watch_archive(Arc::clone(&archive_stats));
        }
        let metrics = Arc::new(metrics);
        let shared = Arc::new(Shared {
            manager: manager.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            auth,
            cdc: cdc.clone(),
            writes: sequencer(config, id, &hlc),
            wal: wal_handle,
            logical,
            logical_max_slots: config.logical.max_slots,
            slot_writes: tokio::sync::Mutex::new(()),
            hlc,
            archive: config.archive.as_ref().map(|a| (Arc::clone(&archive_stats), a.timeout_secs * 1000)),
            geo: crate::geo::Geo::new(config, staleness).map_err(|e| NodeError::Io(format!("[geo]: {e}")))?,
            tiers: crate::tiers::Tiers::new(config.geo.auto_tier_policy()).map_err(NodeError::Io)?,
            active_active: config.active_active.clone(),
            links,
            analytics: analytics(config),
            slot_readers_term: std::sync::Mutex::new(0),
        });
        crate::analytics::spawn_sampler(
            Arc::clone(&shared.analytics),
            fsync_window,
            manager.clone(),
            config.heartbeat,
        );
        start_tasks(&shared, config, &sinks, archive_stats)?;
        let client_listener = TcpListener::bind(config.client_addr)
            .await
            .map_err(|e| io(&format!("client_addr {}", config.client_addr), &e))?;
        let client_addr = client_listener.local_addr().map_err(|e| io("client_addr", &e))?;
        let (admin, admin_addr) = match config.admin_addr {
            Some(addr) => {
                let listener =
                    TcpListener::bind(addr).await.map_err(|e| io(&format!("admin_addr {addr}"), &e))?;
                let bound = listener.local_addr().map_err(|e| io("admin_addr", &e))?;
                let state = crate::admin::AdminState::new(shared.clone(), config);
                (Some(tokio::spawn(crate::admin::serve(listener, admin_tls, state))), Some(bound))
            }
            None => (None, None),
        };
        let clients = tokio::spawn(accept_clients(client_listener, client_tls, shared));
        tracing::info!(node = %id, raft = %config.raft_addr, client = %client_addr, admin = ?admin_addr, "node started");
        Ok(Node { manager, store, client_addr, admin_addr, metrics, cdc, driver, clients, admin })
    }

    /// Runs until the driver stops; returns its result.
    pub async fn wait(self) -> Result<(), NodeError> {
        let result = self.driver.await;
        self.cdc.close();
        self.clients.abort();
        if let Some(admin) = self.admin {
            admin.abort();
        }
        match result {
            Ok(r) => r.map_err(NodeError::from),
            Err(e) => Err(NodeError::Io(format!("the driver task failed: {e}"))),
        }
    }

    /// Stops the node.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        self.manager.shutdown().await;
        self.wait().await
    }
}

/// The exit code of a node whose replication driver stopped (a storage or apply failure).
pub const DRIVER_STOPPED_EXIT: u8 = 3;

/// Runs the node configured in `path` until SIGINT or SIGTERM, logging to stderr
/// (`THEMIS_LOG` filters), and prints one line to stdout once it serves:
/// `themis node <id> listening: client <addr> admin <addr>`. Returns the exit code: 2 for a
/// configuration error (the message names the key and value), [`DRIVER_STOPPED_EXIT`] when
/// the replication driver stops under it (one error line says why), 1 for another failure.
#[must_use]
pub fn run(path: &Path, program: &str) -> std::process::ExitCode {
    use std::process::ExitCode;
    let config = match NodeConfig::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{program}: {e}");
            return ExitCode::from(2);
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("THEMIS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{program}: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{program}: signal handler: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut node = match Node::start(&config).await {
            Ok(n) => n,
            Err(e) => {
                eprintln!("{program}: {e}");
                return ExitCode::FAILURE;
            }
        };
        // The addresses go to stdout so scripts and tests can find a port 0 bind.
        let admin = node.admin_addr.map_or_else(|| "off".to_string(), |a| a.to_string());
        println!("themis node {} listening: client {} admin {admin}", config.node_id, node.client_addr);
        let stopped = tokio::select! {
            _ = tokio::signal::ctrl_c() => None,
            _ = term.recv() => None,
            result = &mut node.driver => Some(result),
        };
        if let Some(result) = stopped {
            // A node whose driver has stopped can neither lead nor follow; serving on would
            // make it a zombie that answers every request with an error. Exit, so that a
            // supervisor restarts it from its log.
            let reason = match result {
                Ok(Ok(())) => "the replication driver ended".to_string(),
                Ok(Err(e)) => format!("the replication driver stopped: {e}"),
                Err(e) => format!("the replication driver task failed: {e}"),
            };
            tracing::error!(node = config.node_id, "{reason}; exiting with code {DRIVER_STOPPED_EXIT}");
            return ExitCode::from(DRIVER_STOPPED_EXIT);
        }
        match node.shutdown().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{program}: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn accept_clients(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>, shared: Arc<Shared>) {
    // A bound on open client connections: beyond it, accepting waits for one to close.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENT_CONNECTIONS));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { return };
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "client accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (tls, shared) = (tls.clone(), shared.clone());
        tokio::spawn(async move {
            let result = match tls {
                Some(acceptor) => serve_tls(tcp, acceptor, shared).await,
                None => serve(tcp, shared, Identity::None).await,
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "client connection ended");
            }
            drop(slot);
        });
    }
}

/// TLS records start with 0x16 (handshake); anything else is a plaintext client, which is
/// told in plaintext why it is refused.
/// The document store: with the cluster's conflict resolution when it has links.
fn document_store(config: &NodeConfig) -> Result<DocStore, NodeError> {
    let store = if config.active_active.enabled {
        let resolver = config.active_active.resolver().map_err(|e| NodeError::Io(e.to_string()))?;
        DocStore::with_active(crate::active::Active::new(config.cluster.clone(), resolver))
    } else {
        DocStore::new()
    };
    // A fault for tests of `themis doctor` (crate::fault).
    Ok(match crate::fault::FaultFile::from_env("apply-skip-every", config.node_id) {
        Some(fault) => store.with_fault(fault),
        None => store,
    })
}

/// The node's analytics under `[analytics]`, with `replication.lag_alert_ms`.
fn analytics(config: &NodeConfig) -> Arc<crate::analytics::Analytics> {
    let lag_alert_ms = u64::try_from(config.lag_alert.as_millis()).unwrap_or(u64::MAX);
    Arc::new(crate::analytics::Analytics::new(config.analytics.clone(), lag_alert_ms))
}

/// The write sequencer: stamping every write when the cluster has links.
fn sequencer(config: &NodeConfig, id: NodeId, hlc: &Arc<Hlc>) -> Sequencer {
    let writes = Sequencer::new(id, config.before_images.clone());
    if config.active_active.enabled {
        writes.with_stamps(config.cluster.clone(), Arc::clone(hlc))
    } else {
        writes
    }
}

async fn serve_tls(
    mut tcp: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
) -> Result<(), String> {
    // The first byte counts against the handshake's bound too: a connection that sends
    // nothing must not hold its slot forever.
    let mut first = [0u8; 1];
    let started = tokio::time::Instant::now();
    let n = tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first))
        .await
        .map_err(|_| format!("nothing arrived within {HANDSHAKE_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    if n == 1 && first[0] != 0x16 {
        let refusal = Response::Error {
            code: ErrorCode::Unavailable,
            message: "this port requires TLS 1.3; connect with the cluster CA".into(),
        };
        let _ = write_frame(&mut tcp, 0, &refusal).await;
        let _ = tcp.shutdown().await;
        return Err("a plaintext client was refused".into());
    }
    let stream = tokio::time::timeout_at(started + HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| format!("the TLS handshake took longer than {HANDSHAKE_TIMEOUT:?}"))?
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let identity = shared.auth.certificate(stream.get_ref().1.peer_certificates());
    serve(stream, shared, identity).await
}

enum Inbound {
    Request(u64, Request),
    /// A request answered without running it (too large, refused by authentication, an
    /// `Authenticate`): its id, the metrics name of its kind, the answer.
    Answered(u64, &'static str, Response),
    Broken(String),
}

/// Serves one client connection: a reader that decodes frames, and one task that runs
/// every request of the connection concurrently and writes each answer as it completes,
/// flushing once per burst.
///
/// Every request is checked against the connection's identity as it is read (the client
/// certificate, or the last `Authenticate`), so requests after an `Authenticate` act as
/// its principal and none runs before its check.
async fn serve<S: AsyncRead + AsyncWrite + Send + 'static>(
    stream: S,
    shared: Arc<Shared>,
    mut identity: Identity,
) -> Result<(), String> {
    use futures_util::FutureExt;
    use futures_util::stream::{FuturesUnordered, StreamExt};

    let (mut reader, writer) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Inbound>(MAX_INFLIGHT_PER_CONNECTION);
    let auth_shared = shared.clone();
    let worker = tokio::spawn(async move {
        let mut writer = BufWriter::new(writer);
        let mut inflight = FuturesUnordered::new();
        let mut open = true;
        while open || !inflight.is_empty() {
            tokio::select! {
                inbound = rx.recv(), if open && inflight.len() < MAX_INFLIGHT_PER_CONNECTION => match inbound {
                    Some(Inbound::Request(id, request)) => {
                        let shared = shared.clone();
                        inflight.push(async move { (id, handle(request, &shared).await) }.boxed());
                    }
                    Some(Inbound::Answered(id, op, response)) => {
                        shared.metrics.count_request(op, response.outcome());
                        inflight.push(async move { (id, response) }.boxed());
                    }
                    Some(Inbound::Broken(message)) => {
                        let error = Response::Error { code: ErrorCode::BadRequest, message };
                        let _ = write_frame(&mut writer, 0, &error).await;
                        let _ = writer.flush().await;
                        return;
                    }
                    None => open = false,
                },
                Some((id, response)) = inflight.next(), if !inflight.is_empty() => {
                    if write_frame(&mut writer, id, &response).await.is_err() {
                        return;
                    }
                    // Everything else already answered goes in the same flush.
                    while let Some(Some((id, response))) = inflight.next().now_or_never() {
                        if write_frame(&mut writer, id, &response).await.is_err() {
                            return;
                        }
                    }
                    if writer.flush().await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let result = loop {
        match read_frame_within::<_, Request>(&mut reader, Some(crate::limits::FRAME_BODY_TIMEOUT)).await {
            Ok(Some((id, Request::Authenticate { token }))) => {
                let response = authenticate(&auth_shared.auth, &token, &mut identity);
                if tx.send(Inbound::Answered(id, "authenticate", response)).await.is_err() {
                    break Ok(());
                }
            }
            Ok(Some((id, request))) => {
                let inbound = match auth_shared.auth.authorize(&identity, required_role(&request)) {
                    Ok(()) => Inbound::Request(id, request),
                    Err(e) => Inbound::Answered(id, op_name(&request), e.response()),
                };
                if tx.send(inbound).await.is_err() {
                    break Ok(());
                }
            }
            Ok(None) => break Ok(()),
            Err(ProtocolError::TooLarge { id, len, skip }) => {
                let refusal = too_large(format!(
                    "request {id}: a {len}-byte frame is above the {}-byte limit (documents up to {MAX_DOCUMENT_BYTES} bytes)",
                    crate::protocol::MAX_FRAME
                ));
                if tx.send(Inbound::Answered(id, "put", refusal)).await.is_err() {
                    break Ok(());
                }
                // The answer goes out while the body is skipped, never buffered.
                match tokio::time::timeout(crate::limits::FRAME_BODY_TIMEOUT, skip_body(&mut reader, skip))
                    .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => break Err(e.to_string()),
                    Err(_) => break Err(format!("request {id}: its refused body did not arrive in time")),
                }
            }
            Err(e) => {
                let _ = tx.send(Inbound::Broken(e.to_string())).await;
                break Err(e.to_string());
            }
        }
    };
    drop(tx);
    let _ = worker.await;
    result
}

/// Answers an `Authenticate`: the connection acts as the token's principal from now on,
/// or, if the token is refused, as nobody (an earlier identity does not survive a bad
/// token).
fn authenticate(auth: &Authenticator, token: &str, identity: &mut Identity) -> Response {
    match auth.token(token) {
        Ok(principal) => {
            let answer =
                Response::Authenticated { name: principal.name.clone(), role: principal.role.to_string() };
            *identity = Identity::Known(principal);
            answer
        }
        Err(e) => {
            let answer = e.response();
            *identity = Identity::Refused(e);
            answer
        }
    }
}

fn bad_request(message: String) -> Response {
    Response::Error { code: ErrorCode::BadRequest, message }
}

fn too_large(message: String) -> Response {
    Response::Error { code: ErrorCode::TooLarge, message }
}

pub(crate) fn driver_error(e: DriverError) -> Response {
    match e {
        DriverError::NotLeader { leader, leader_info, .. } => Response::NotLeader {
            leader: leader.map(|l| l.0),
            leader_addr: leader_info.and_then(|i| String::from_utf8(i.meta).ok()),
        },
        DriverError::OutcomeUnknown { .. } => {
            Response::Error { code: ErrorCode::OutcomeUnknown, message: e.to_string() }
        }
        DriverError::Busy { .. } => Response::Error { code: ErrorCode::Busy, message: e.to_string() },
        DriverError::TooLarge { .. } => too_large(e.to_string()),
        DriverError::ReadTimeout { .. } => {
            Response::Error { code: ErrorCode::Timeout, message: e.to_string() }
        }
        DriverError::Raft(_) | DriverError::Config(_) => {
            Response::Error { code: ErrorCode::Refused, message: e.to_string() }
        }
        _ => Response::Error { code: ErrorCode::Unavailable, message: e.to_string() },
    }
}

async fn timed<T>(
    limit: Duration,
    what: &str,
    f: impl Future<Output = Result<T, DriverError>>,
) -> Result<T, Response> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(driver_error(e)),
        Err(_) => Err(Response::Error {
            code: ErrorCode::Timeout,
            message: format!("{what} timed out after {limit:?}"),
        }),
    }
}

/// A request kind's name in the request metrics.
fn op_name(request: &Request) -> &'static str {
    match request {
        Request::Put { .. } => "put",
        Request::Get { .. } => "get",
        Request::Delete { .. } => "delete",
        Request::Status => "status",
        Request::WaitFor { .. } => "wait_for",
        Request::Authenticate { .. } => "authenticate",
        _ => "admin",
    }
}

/// Answers one request (client protocol and HTTP admin API alike) and counts it. The
/// caller has authorized it.
pub(crate) async fn handle(request: Request, shared: &Shared) -> Response {
    let op = op_name(&request);
    let level =
        if let Request::Get { consistency, .. } = &request { Some(consistency.level_name()) } else { None };
    let response = answer(request, shared).await;
    shared.metrics.count_request(op, response.outcome());
    if let Some(level) = level {
        shared.metrics.count_read(level, response.outcome());
    }
    response
}

#[allow(clippy::too_many_lines, reason = "one arm per request kind, each short")]
async fn answer(request: Request, shared: &Shared) -> Response {
    let (manager, store) = (&shared.manager, &*shared.store);
    match request {
        Request::Put { collection, id, value } => {
            if let Err(m) = check_name("collection", &collection).and_then(|()| check_name("id", &id)) {
                return bad_request(m);
            }
            if value.len() > MAX_DOCUMENT_BYTES {
                return too_large(format!(
                    "the document for {collection}/{id} is {} bytes; the largest accepted is {MAX_DOCUMENT_BYTES} bytes",
                    value.len()
                ));
            }
            if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&value) {
                return bad_request(format!("the document for {collection}/{id} is not JSON: {e}"));
            }
            let tier = shared.tiers.tier_of(store, &collection);
            shared.tiers.record(&collection, shared.hlc.now().physical_ms());
            let write = shared.writes.write(
                manager,
                store,
                collection,
                Bytes::from(id.into_bytes()),
                Some(Bytes::from(value)),
            );
            match timed(WRITE_TIMEOUT, "the write", write).await {
                Ok(lsn) => shared.written_under(lsn, tier).await,
                Err(r) => r,
            }
        }
        Request::Delete { collection, id } => {
            if let Err(m) = check_name("collection", &collection).and_then(|()| check_name("id", &id)) {
                return bad_request(m);
            }
            let tier = shared.tiers.tier_of(store, &collection);
            let write = shared.writes.write(manager, store, collection, Bytes::from(id.into_bytes()), None);
            match timed(WRITE_TIMEOUT, "the delete", write).await {
                Ok(lsn) => shared.written_under(lsn, tier).await,
                Err(r) => r,
            }
        }
        Request::Get { collection, id, consistency } => {
            if let Err(m) = check_name("collection", &collection).and_then(|()| check_name("id", &id)) {
                return bad_request(m);
            }
            if let Err(r) = shared.geo.prepare(consistency, manager, || shared.hlc.now().physical_ms()).await
            {
                return r;
            }
            let applied_lsn = manager.applied_lsn();
            let found = store.get(&collection, id.as_bytes());
            let version = found.as_ref().map_or(0, |(_, lsn)| *lsn);
            let value = found.map(|(v, _)| v.to_vec());
            let (term, _) = manager.leadership();
            let session_token = shared.geo.issue(term, applied_lsn, shared.hlc.now().physical_ms());
            Response::Value { value, applied_lsn, version, session_token }
        }
        Request::WaitFor { lsn, concern } => {
            match crate::tiers::await_concern(manager, lsn, concern, WRITE_TIMEOUT).await {
                Ok(()) => Response::Done,
                Err(r) => r,
            }
        }
        Request::Status => {
            let json = serde_json::json!({
                "status": manager.status(),
                "failovers": manager.failover_history(),
                "alerts": manager.recent_alerts(),
                "archive": shared.archive.as_ref().map(|(stats, timeout_ms)| stats.status(*timeout_ms)),
                "region": shared.geo.region(),
            });
            Response::Status { json: json.to_string() }
        }
        Request::SetMode { mode, min_sync_replicas } => {
            let mode: ReplicationMode = match mode.parse() {
                Ok(m) => m,
                Err(e) => return bad_request(format!("mode = {mode:?}: {e}")),
            };
            match timed(
                WRITE_TIMEOUT,
                "the mode change",
                manager.set_mode(AckPolicy { mode, min_sync_replicas }),
            )
            .await
            {
                Ok(_) => Response::Done,
                Err(r) => r,
            }
        }
        Request::AddLearner { id, raft_addr, client_addr } => {
            let Ok(raft_addr) = raft_addr.parse() else {
                return bad_request(format!("raft_addr = {raft_addr:?}: not an IP address and port"));
            };
            if client_addr.parse::<SocketAddr>().is_err() {
                return bad_request(format!("client_addr = {client_addr:?}: not an IP address and port"));
            }
            let info = PeerInfo { id: NodeId(id), raft_addr, meta: client_addr.into_bytes() };
            match timed(WRITE_TIMEOUT, "adding the learner", manager.add_learner(info)).await {
                Ok(_) => Response::Done,
                Err(r) => r,
            }
        }
        Request::Promote { id } => {
            match timed(WRITE_TIMEOUT, "the promotion", manager.promote(NodeId(id))).await {
                Ok(_) => Response::Done,
                Err(r) => r,
            }
        }
        Request::Remove { id } => match timed(WRITE_TIMEOUT, "the removal", manager.remove(NodeId(id))).await
        {
            Ok(_) => Response::Done,
            Err(r) => r,
        },
        Request::Transfer { id } => {
            match timed(WRITE_TIMEOUT, "the transfer", manager.transfer_leadership(NodeId(id))).await {
                Ok(()) => Response::Done,
                Err(r) => r,
            }
        }
        Request::Campaign => match timed(WRITE_TIMEOUT, "the election", manager.start_election()).await {
            Ok(()) => Response::Done,
            Err(r) => r,
        },
        // The connection's reader answers these itself; one reaching here (an HTTP route
        // never builds it) is a bad request rather than a silent success.
        Request::Authenticate { .. } => {
            bad_request("authenticate on the connection, not through a route".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vote_key_is_created_once_and_a_damaged_one_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = vote_key(dir.path()).unwrap();
        assert_eq!(key.len(), 32);
        assert_eq!(vote_key(dir.path()).unwrap(), key, "a restart keeps the key");
        std::fs::write(dir.path().join("vote-key"), [1u8; 5]).unwrap();
        let err = vote_key(dir.path()).unwrap_err().to_string();
        assert!(err.contains("vote-key") && err.contains("5 bytes, expected 32"), "{err}");
    }

    #[test]
    fn under_tls_votes_are_signed_with_the_node_certificates_key_and_only_an_ed25519_one() {
        use themis_replication::ship::tls::{generate_ca, issue_node_cert};
        let dir = tempfile::tempdir().unwrap();
        let ca = generate_ca("c").unwrap();
        let config = |cert: &str, key: &str| {
            let (ca_path, cert_path, key_path) =
                (dir.path().join("ca.pem"), dir.path().join("n.pem"), dir.path().join("n.key"));
            std::fs::write(&ca_path, &ca.cert).unwrap();
            std::fs::write(&cert_path, cert).unwrap();
            std::fs::write(&key_path, key).unwrap();
            let text = format!(
                "node_id = 1\ncluster = \"c\"\ndata_dir = {:?}\nraft_addr = \"127.0.0.1:1\"\nclient_addr = \"127.0.0.1:2\"\n\
                 peers = [[1, \"127.0.0.1:1\", \"127.0.0.1:2\"]]\n[replication]\nmode = \"async\"\n[tls]\nca = {ca_path:?}\ncert = {cert_path:?}\nkey = {key_path:?}\n",
                dir.path().join("data")
            );
            let file = dir.path().join("node.toml");
            std::fs::write(&file, text).unwrap();
            NodeConfig::load(&file).unwrap()
        };
        let good = issue_node_cert(&ca, NodeId(1), &[]).unwrap();
        let c = config(&good.cert, &good.key);
        let (links, _, _) = super::security(&c, NodeId(1)).unwrap();
        let votes = vote_signer(&c, NodeId(1), &links).unwrap();
        let Security::Tls(tls) = &links else { panic!("TLS") };
        let certified = themis_replication::ship::tls::ed25519_public_key(tls.certificate()).unwrap();
        assert_eq!(votes.public_key(), certified);
        assert!(!dir.path().join("data/vote-key").exists(), "no separate vote key under TLS");

        // A node certificate with an ECDSA key (from another tool) cannot sign votes.
        let ca_key = rcgen::KeyPair::from_pem(&ca.key).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.cert, ca_key).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["node-1.themis".to_string()]).unwrap();
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let c = config(&cert.pem(), &key.serialize_pem());
        let (links, _, _) = super::security(&c, NodeId(1)).unwrap();
        let err = vote_signer(&c, NodeId(1), &links).unwrap_err().to_string();
        assert!(
            err.contains("tls.cert") && err.contains("not Ed25519") && err.contains("themis certs"),
            "{err}"
        );
    }
}
