//! `themis`: run nodes and local clusters, read and write documents, benchmark, generate
//! certificates, check a WAL, and watch a cluster fail over (`themis demo`).
//!
//! Errors are one line on stderr (`themis: ...`) with exit code 1; usage errors exit 2.

#![allow(clippy::doc_markdown, reason = "doc comments here are clap's help text, shown as written")]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use themis_cli::cluster::{self, ClusterFile};
use themis_cli::demo::{self, DemoOptions};
use themis_cli::{doctor, logical, workload};
use themis_node::router::{ReadRouter, RouterConfig};
use themis_node::{ChangeFeed, Client, Consistency, Credentials, Request};

#[derive(Parser)]
#[command(
    name = "themis",
    version,
    about = "Themis replication: a replicated JSON document store and its tools"
)]
#[command(after_help = "Examples:\n  themis demo\n  themis cluster up --nodes 3 --dir /tmp/themis\n  \
themis put users ada '{\"name\":\"Ada\"}' --dir /tmp/themis\n  themis bench --clients 64 --duration 10")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a local cluster, write, SIGKILL the leader, and verify nothing acknowledged was lost.
    #[command(after_help = "Examples:\n  themis demo\n  themis demo --seconds 20 --nodes 5 --mode sync\n  \
themis demo --keep /tmp/themis   # leave the cluster running afterwards")]
    Demo {
        /// Seconds of writes; the leader is killed halfway.
        #[arg(long, default_value_t = 8.0, value_parser = seconds)]
        seconds: f64,
        /// Cluster size.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(3..=9))]
        nodes: u64,
        /// Acknowledgement mode: sync, semi_sync or async.
        #[arg(long, default_value = "semi_sync", value_parser = ["sync", "semi_sync", "async"])]
        mode: String,
        /// Concurrent writers.
        #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4096))]
        clients: u64,
        /// Keep the cluster running in this directory afterwards (the killed node restarted).
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
    },
    /// Run one node until SIGINT or SIGTERM (a bad config exits with code 2).
    #[command(after_help = "Example:\n  themis server --config /etc/themis/node-1.toml")]
    Server {
        /// The node's TOML configuration.
        #[arg(long)]
        config: PathBuf,
    },
    /// Start, stop or inspect a local cluster of background processes.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Create or replace a JSON document.
    #[command(after_help = "Examples:\n  themis put users ada '{\"name\":\"Ada\"}' --dir /tmp/themis\n  \
echo '{\"n\":1}' | themis put users one - --addr 127.0.0.1:7100 --ca certs/ca.pem\n  \
themis put payments p1 '{\"amount\":5}' --write-concern all --dir /tmp/themis")]
    Put {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
        /// The document (JSON); `-` reads it from stdin.
        json: String,
        /// Acknowledge once this many replicas hold it: one, majority or all (the stricter
        /// of it, the cluster's mode and the collection's tier applies).
        #[arg(long, value_parser = parse_concern)]
        write_concern: Option<themis_replication::geo::WriteConcern>,
        #[command(flatten)]
        target: Target,
    },
    /// Read a document.
    #[command(after_help = "Examples:\n  themis get users ada --dir /tmp/themis\n  \
themis get users ada --consistency session --token s1.3.42.local.1765000000000.0a1b2c3d4e5f6071 --dir /tmp/themis\n  \
themis get users ada --consistency bounded --max-staleness-ms 500 --strategy p2c --dir /tmp/themis\n  \
themis get users ada --quorum 2 --repair --dir /tmp/themis")]
    Get {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
        /// strong (linearizable), bounded (at most --max-staleness-ms behind), session
        /// (sees what --token covers), prefix or eventual.
        #[arg(long, default_value = "strong", value_parser = ["strong", "bounded", "session", "prefix", "eventual"])]
        consistency: String,
        /// A bounded read's bound in ms (default: the node's geo.max_staleness_ms).
        #[arg(long, value_parser = parse_staleness, allow_negative_numbers = true)]
        max_staleness_ms: Option<u64>,
        /// A bounded read's bound in versions (LSNs behind the commit).
        #[arg(long)]
        max_versions: Option<u64>,
        /// The session token a write or read printed.
        #[arg(long)]
        token: Option<String>,
        /// Spread the read over every node by a strategy: round-robin, least-connections,
        /// latency, random or p2c (otherwise the first node that answers serves it).
        #[arg(long, value_parser = parse_strategy)]
        strategy: Option<themis_replication::geo::Strategy>,
        /// Read from every node and answer once R have, with the newest version; prints
        /// who answered and who was stale.
        #[arg(long, value_name = "R")]
        quorum: Option<usize>,
        /// With --quorum: ask stale nodes to catch up to the newest answer.
        #[arg(long, requires = "quorum")]
        repair: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a document.
    #[command(after_help = "Example:\n  themis delete users ada --dir /tmp/themis")]
    Delete {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Each node's role, term, LSNs, mode and replicas.
    #[command(
        after_help = "Examples:\n  themis status --dir /tmp/themis\n  themis status --json --addr 127.0.0.1:7100 --ca ca.pem"
    )]
    Status {
        /// Print each node's status document as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Generate a cluster CA with node certificates and an admin client certificate, or
    /// (with --client) a client certificate from the CA already in --out.
    #[command(after_help = "Examples:\n  themis certs --out /etc/themis/certs --nodes 3 --cluster prod\n  \
themis certs --out /etc/themis/certs --client reporting --role read")]
    Certs {
        /// Where to write ca.pem, ca.key, node-N.pem, node-N.key and
        /// client-admin.pem/.key (or, with --client, where ca.pem and ca.key are).
        #[arg(long)]
        out: PathBuf,
        /// Node ids 1 to N get a certificate.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1000), required_unless_present = "client", conflicts_with = "client")]
        nodes: Option<u64>,
        /// The cluster name in the certificates.
        #[arg(long, default_value = "themis")]
        cluster: String,
        /// Issue a client certificate with this name (its CN), written as
        /// client-NAME.pem and client-NAME.key.
        #[arg(long, requires = "role")]
        client: Option<String>,
        /// The client certificate's role: read, write or admin.
        #[arg(long, value_parser = ["read", "write", "admin"], requires = "client")]
        role: Option<String>,
    },
    /// Print a bearer token (HS256 JWT) signed with a cluster's JWT secret.
    #[command(after_help = "Examples:\n  themis token --dir /tmp/themis --name app --role write\n  \
themis token --secret /etc/themis/jwt.secret --name dash --role read --ttl 600\n  \
themis token --dir /tmp/themis --name acme-cdc --role read --collections 'tenant_acme.*'")]
    Token {
        /// A cluster started with `themis cluster up` (its certs/jwt-hs256.secret).
        #[arg(long, conflicts_with = "secret", required_unless_present = "secret")]
        dir: Option<PathBuf>,
        /// The HS256 secret file (what the nodes' auth.jwt_hs256_secret_file names).
        #[arg(long)]
        secret: Option<PathBuf>,
        /// The token's subject.
        #[arg(long)]
        name: String,
        /// read, write or admin.
        #[arg(long, value_parser = ["read", "write", "admin"])]
        role: String,
        /// Seconds until it expires.
        #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
        ttl: u64,
        /// Limit the token's change streams to these collections (comma-separated names
        /// or patterns, e.g. 'tenant_acme.*').
        #[arg(long)]
        collections: Option<String>,
    },
    /// Write benchmark: throughput, latency and replication-lag percentiles, and each
    /// local node's CPU, memory and bytes sent. Closed loop by default; open loop with
    /// --rate (latency from when each write was due, so stalls are not hidden).
    #[command(after_help = "Examples:\n  themis bench   # against a fresh local 3-node cluster\n  \
themis bench --clients 64 --conns 8 --duration 10 --value-bytes 256 --mode semi_sync --json\n  \
themis bench --rate 10000 --duration 30 --mode semi_sync\n  \
themis bench --dir /tmp/themis --duration 5")]
    Bench {
        /// Open loop: writes due per second, sent whatever the cluster does (--clients is
        /// then unused).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        rate: Option<u64>,
        /// Concurrent writers, each with one write in flight.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
        clients: u64,
        /// Pipelined connections the writers share (as an application's tasks share one
        /// client); at most --clients.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=4096))]
        conns: u64,
        /// Seconds of writes.
        #[arg(long, default_value_t = 10.0, value_parser = seconds)]
        duration: f64,
        /// Bytes per JSON document.
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(32..=1_048_576))]
        value_bytes: u64,
        /// Set this acknowledgement mode (sync, semi_sync or async) before writing.
        #[arg(long, value_parser = ["sync", "semi_sync", "async"])]
        mode: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Offline checks.
    #[command(subcommand)]
    Doctor(DoctorCmd),
    /// Change data capture.
    #[command(subcommand)]
    Cdc(CdcCmd),
    /// Logical replication slots: durable, failover-safe change consumers.
    #[command(subcommand)]
    Slot(SlotCmd),
    /// Replication tiers by collection: tier1 (every voter), tier2 (a majority), tier3
    /// (the leader); the stricter of the tier and the cluster's mode applies.
    #[command(subcommand)]
    Tier(TierCmd),
    /// Cascading read replicas: a learner that streams from another member instead of the
    /// leader (at most five hops, no cycle).
    #[command(subcommand)]
    Cascade(CascadeCmd),
    /// Active-active links: this cluster applies another cluster's writes (both accept
    /// writes and converge; conflicts are settled per collection and recorded).
    #[command(subcommand)]
    Link(LinkCmd),
    /// How stale each region and replica is, with history (the leader knows every
    /// replica; another node reports its own).
    #[command(after_help = "Example:
  themis staleness --window 300 --dir /tmp/themis")]
    Staleness {
        /// The history's window in seconds.
        #[arg(long, default_value_t = 60)]
        window: u64,
        /// Print the JSON as the node answered it.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// Run a DDL statement: CREATE COLLECTION c, DROP COLLECTION c, ALTER COLLECTION c SET
    /// SCHEMA VERSION n.
    #[command(after_help = "Example:\n  themis ddl 'CREATE COLLECTION orders' --dir /tmp/themis")]
    Ddl {
        /// The statement.
        statement: String,
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// The WAL archive (point-in-time recovery).
    #[command(subcommand)]
    Archive(ArchiveCmd),
    /// Restore the archive to a point in time into a new one-node cluster directory (or,
    /// with --dry-run, only replay and report).
    #[command(
        after_help = "Examples:\n  themis restore --config /etc/themis/node-1.toml --to-time 2026-12-06T10:00:00Z --target-dir /tmp/restored\n  \
themis restore --archive file:///var/backups/themis --key-file archive.key --to-lsn 41230 --dry-run\n  \
themis server --config /tmp/restored/node-1.toml"
    )]
    Restore {
        /// Restore what was committed up to this time (RFC 3339).
        #[arg(long, conflicts_with_all = ["to_lsn", "to_hlc"])]
        to_time: Option<String>,
        /// ... up to and including this LSN.
        #[arg(long, conflicts_with = "to_hlc")]
        to_lsn: Option<u64>,
        /// ... up to this HLC timestamp (physical.logical@node).
        #[arg(long)]
        to_hlc: Option<String>,
        /// Where to write the restored node (must be empty or absent).
        #[arg(long, required_unless_present = "dry_run")]
        target_dir: Option<PathBuf>,
        /// Replay and report; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Objects fetched at once.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
        parallel: u64,
        #[command(flatten)]
        archive: ArchiveArgs,
    },
    /// Run a logical replica: apply a json slot's changes into a one-node store of its own
    /// in --data-dir (readable with `themis get --dir DATA_DIR`), confirming each batch, so a
    /// restart resumes after the slot's confirmed LSN.
    #[command(
        after_help = "Example:\n  themis slot create tenant_acme --predicate \"tenant == 'acme'\" --initial-sync --dir /tmp/themis\n  \
themis subscribe --slot tenant_acme --data-dir /tmp/acme --source /tmp/themis\n  themis get orders o1 --dir /tmp/acme"
    )]
    Subscribe {
        /// The slot to apply (its plugin must be json).
        #[arg(long)]
        slot: String,
        /// Where the replica keeps its store.
        #[arg(long)]
        data_dir: PathBuf,
        /// Changes per read.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        max: u64,
        /// Report lag this often, in seconds.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
        report_secs: u64,
        /// Stop once the slot has nothing more to deliver.
        #[arg(long)]
        until_idle: bool,
        /// The source cluster: its directory (a `themis cluster up` cluster), or its
        /// admin API addresses comma-separated (with --ca and friends); the same as --dir
        /// or --admin-addr.
        #[arg(long)]
        source: Option<String>,
        #[command(flatten)]
        admin: AdminTarget,
    },
}

/// Where the archive is: a node's configuration, or the URL and key.
#[derive(Args)]
struct ArchiveArgs {
    /// A node configuration whose `[archive]` section (and cluster name) to use.
    #[arg(long, conflicts_with_all = ["archive", "key_file", "key_env"])]
    config: Option<PathBuf>,
    /// The archive: file:///path, s3://bucket/prefix.
    #[arg(long)]
    archive: Option<String>,
    /// The current key: a file of 32 raw bytes or 64 hex digits.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// ... or an environment variable holding 64 hex digits.
    #[arg(long)]
    key_env: Option<String>,
    /// Older keys (repeat), for objects written before a rotation.
    #[arg(long)]
    old_key_file: Vec<PathBuf>,
    /// Object store options, key=value (repeat): aws_endpoint, aws_region, ...
    #[arg(long, value_parser = parse_option)]
    archive_option: Vec<(String, String)>,
    /// The cluster whose archive it is (with --archive).
    #[arg(long, default_value = "themis")]
    cluster: String,
}

fn parse_option(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?}: expected key=value"))
}

impl ArchiveArgs {
    fn open(self) -> Result<themis_replication::pitr::Archive, String> {
        if let Some(path) = &self.config {
            let config =
                themis_node::NodeConfig::load(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let spec = config.archive().ok_or_else(|| format!("{}: no [archive] section", path.display()))?;
            return spec.open(config.cluster()).map_err(|e| e.to_string());
        }
        let url = self.archive.ok_or("give --archive URL with --key-file (or --config NODE.toml)")?;
        let mut spec = themis_replication::pitr::ArchiveSpec::new(url, PathBuf::new());
        spec.key_file = self.key_file;
        spec.key_env = self.key_env;
        spec.old_key_files = self.old_key_file;
        spec.options = self.archive_option.into_iter().collect();
        spec.open(&self.cluster).map_err(|e| e.to_string())
    }
}

#[derive(Subcommand)]
enum ArchiveCmd {
    /// Base backups, the archived WAL range, what a restore reaches, gaps.
    #[command(
        after_help = "Example:\n  themis archive status --archive file:///var/backups/themis --key-file archive.key"
    )]
    Status {
        #[command(flatten)]
        archive: ArchiveArgs,
    },
    /// Every archived object: kind, LSN range, size, key, tier.
    #[command(after_help = "Example:\n  themis archive list --config /etc/themis/node-1.toml")]
    List {
        #[command(flatten)]
        archive: ArchiveArgs,
    },
    /// Apply the `[archive.retention]` policy of a node configuration now: delete base
    /// backups and WAL it no longer keeps, move old objects to the cold storage class.
    #[command(after_help = "Example:\n  themis archive prune --config /etc/themis/node-1.toml --dry-run")]
    Prune {
        /// Say what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// The node configuration with the `[archive]` section and its retention policy.
        #[arg(long)]
        config: PathBuf,
    },
    /// Fetch and check every object (size, SHA-256, authentication, decompression) and
    /// that the WAL ranges leave no gap; exit code 1 if anything is wrong.
    #[command(
        after_help = "Example:\n  themis archive verify --archive s3://backups/prod --key-env THEMIS_ARCHIVE_KEY \\\n    --archive-option aws_region=eu-west-1"
    )]
    Verify {
        /// Objects fetched at once.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
        parallel: u64,
        #[command(flatten)]
        archive: ArchiveArgs,
    },
}

/// A source cluster's admin API: --dir, or --admin-addr with credentials.
#[derive(Args)]
struct AdminTarget {
    /// Node admin API addresses (with --ca and friends; --dir knows them).
    #[arg(long, value_delimiter = ',')]
    admin_addr: Vec<SocketAddr>,
    #[command(flatten)]
    target: Target,
}

impl AdminTarget {
    fn client(self) -> Result<themis_node::admin_client::AdminClient, String> {
        let (addrs, credentials) = admin_target(self.admin_addr, self.target)?;
        Ok(themis_node::admin_client::AdminClient::new(addrs, credentials))
    }
}

#[derive(Subcommand)]
enum LinkCmd {
    /// Link this cluster to REMOTE_CLUSTER: its writes are applied here from its change
    /// stream (create the opposite link on the remote for both directions).
    #[command(
        after_help = "Example:\n  themis link create from-east --remote-cluster us-east \\\n    --addrs 10.0.1.1:9000,10.0.1.2:9000 --ca-file east-ca.pem --token-file east.token --dir /tmp/themis"
    )]
    Create {
        /// The link's name.
        name: String,
        /// The remote cluster's name.
        #[arg(long)]
        remote_cluster: String,
        /// The remote nodes' admin addresses, comma-separated.
        #[arg(long, value_delimiter = ',')]
        addrs: Vec<String>,
        /// The remote cluster's CA certificate (PEM), readable on this cluster's nodes.
        #[arg(long)]
        ca_file: String,
        /// A bearer token of the remote cluster with at least the read role.
        #[arg(long)]
        token_file: String,
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// Every link and whether it is synchronized.
    #[command(after_help = "Example:\n  themis link list --dir /tmp/themis")]
    List {
        /// Print the JSON answer.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// One link's sync status (positions, lag, conflicts in the last hour).
    #[command(after_help = "Example:\n  themis link status from-east --dir /tmp/themis")]
    Status {
        /// The link.
        name: String,
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// Drop a link (its position is forgotten).
    #[command(after_help = "Example:\n  themis link drop from-east --dir /tmp/themis")]
    Drop {
        /// The link.
        name: String,
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// The newest conflict records, newest first.
    #[command(after_help = "Example:\n  themis link conflicts --limit 20 --dir /tmp/themis")]
    Conflicts {
        /// How many (1 to 10000).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        admin: AdminTarget,
    },
}

#[derive(Subcommand)]
enum CascadeCmd {
    /// Make read replica ID stream from member UPSTREAM (through the log; the chain is
    /// checked on the leader and a refusal names it).
    #[command(after_help = "Example:\n  themis cascade set 5 --upstream 4 --dir /tmp/themis")]
    Set {
        /// The read replica (a learner).
        id: u64,
        /// The member it streams from.
        #[arg(long)]
        upstream: u64,
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// Make read replica ID stream from the leader again.
    #[command(after_help = "Example:\n  themis cascade clear 5 --dir /tmp/themis")]
    Clear {
        /// The read replica.
        id: u64,
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// Every cascaded replica with its chain to the leader.
    #[command(after_help = "Example:\n  themis cascade list --dir /tmp/themis")]
    List {
        /// Print the JSON answer.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminTarget,
    },
}

#[derive(Subcommand)]
enum TierCmd {
    /// Put a collection in a tier (automatic tiering leaves it alone from then on).
    #[command(after_help = "Example:\n  themis tier set payments tier1 --dir /tmp/themis")]
    Set {
        /// The collection.
        collection: String,
        /// tier1, tier2 or tier3.
        tier: String,
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// Return a collection to the cluster's mode alone.
    #[command(after_help = "Example:\n  themis tier clear payments --dir /tmp/themis")]
    Clear {
        /// The collection.
        collection: String,
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// Every assignment.
    #[command(after_help = "Example:\n  themis tier list --dir /tmp/themis")]
    List {
        #[command(flatten)]
        admin: AdminTarget,
    },
}

#[derive(Subcommand)]
enum SlotCmd {
    /// Create a slot: it delivers what is committed from now (a snapshot first with
    /// --initial-sync) and holds the WAL until confirmed.
    #[command(
        after_help = "Examples:\n  themis slot create tenant_acme --include orders,users --predicate \"tenant == 'acme'\" --dir /tmp/themis\n  \
themis slot create analytics --plugin avro --exclude 'audit_*' --initial-sync --dir /tmp/themis"
    )]
    Create {
        /// Its name: 1 to 63 of a-z, 0-9, _.
        name: String,
        /// Output plugin.
        #[arg(long, default_value = "json", value_parser = ["json", "json-txn", "protobuf", "avro"])]
        plugin: String,
        /// Collections delivered (names or patterns, comma-separated); all when absent.
        #[arg(long, value_delimiter = ',')]
        include: Vec<String>,
        /// Collections never delivered.
        #[arg(long, value_delimiter = ',')]
        exclude: Vec<String>,
        /// A row predicate over the document: tenant == 'acme' && region != 'eu'.
        #[arg(long)]
        predicate: Option<String>,
        /// Start with a snapshot of the matching documents.
        #[arg(long)]
        initial_sync: bool,
        /// Leave DDL changes out.
        #[arg(long)]
        no_ddl: bool,
        /// A transform file (JSON: {"steps": [{"op": "rename", "from": "a", "to": "b"}, ...]}).
        #[arg(long)]
        transform: Option<PathBuf>,
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// List the slots with their positions, lag and WAL status.
    #[command(after_help = "Example:\n  themis slot list --dir /tmp/themis")]
    List {
        /// Print the JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// Read a slot's next changes, one per line (binary plugins as base64).
    #[command(
        after_help = "Example:\n  themis slot read tenant_acme --max 100 --wait-ms 1000 --advance --dir /tmp/themis"
    )]
    Read {
        /// The slot.
        name: String,
        /// Most changes.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        max: u64,
        /// Wait this long for a first change, ms.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=30_000))]
        wait_ms: u64,
        /// Confirm what was printed (advance to the read's confirm LSN).
        #[arg(long)]
        advance: bool,
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// Confirm everything up to an LSN.
    #[command(after_help = "Example:\n  themis slot advance tenant_acme 1042 --dir /tmp/themis")]
    Advance {
        /// The slot.
        name: String,
        /// The LSN.
        lsn: u64,
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// Pause a slot: it keeps its WAL and delivers nothing.
    #[command(after_help = "Example:\n  themis slot pause tenant_acme --dir /tmp/themis")]
    Pause {
        /// The slot.
        name: String,
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// Resume a paused slot.
    #[command(after_help = "Example:\n  themis slot resume tenant_acme --dir /tmp/themis")]
    Resume {
        /// The slot.
        name: String,
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// Drop a slot and release its WAL.
    #[command(after_help = "Example:\n  themis slot drop tenant_acme --dir /tmp/themis")]
    Drop {
        /// The slot.
        name: String,
        #[command(flatten)]
        admin: AdminTarget,
    },
}

#[derive(Subcommand)]
enum CdcCmd {
    /// Follow the cluster's change stream (leader changes and node failures included) and
    /// print each change: `LSN op collection/id document`, or the JSON envelope.
    #[command(after_help = "Examples:\n  themis cdc tail --dir /tmp/themis\n  \
themis cdc tail --collections 'orders_*' --ops insert,update --from-lsn 0 --json --dir /tmp/themis\n  \
themis cdc tail --collections 'tenant_{acme,globex}.*' --admin-addr 127.0.0.1:7300 --ca ca.pem --auth-token \"$T\"")]
    Tail {
        /// Collections: comma-separated names or patterns (`orders_*`, `tenant_{a,b}.*`); all when absent.
        #[arg(long, default_value = "")]
        collections: String,
        /// Ops: comma-separated insert, update, delete, ddl; all when absent.
        #[arg(long, default_value = "")]
        ops: String,
        /// Print what was committed after this LSN (default: from now).
        #[arg(long)]
        from_lsn: Option<u64>,
        /// Print each event's JSON envelope.
        #[arg(long)]
        json: bool,
        /// Print heartbeats too.
        #[arg(long)]
        heartbeats: bool,
        /// Stop after this many changes.
        #[arg(long)]
        limit: Option<u64>,
        /// Node admin API addresses (with --addr; --dir knows them).
        #[arg(long, value_delimiter = ',')]
        admin_addr: Vec<SocketAddr>,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Start N nodes in the background (certificates, configs, data and logs in DIR).
    #[command(after_help = "Example:\n  themis cluster up --nodes 3 --dir /tmp/themis --mode semi_sync")]
    Up {
        /// Nodes.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=9))]
        nodes: u64,
        /// The cluster's directory.
        #[arg(long)]
        dir: PathBuf,
        /// Acknowledgement mode.
        #[arg(long, default_value = "semi_sync", value_parser = ["sync", "semi_sync", "async"])]
        mode: String,
    },
    /// Stop the cluster in DIR (SIGTERM, then SIGKILL after 10 s).
    #[command(after_help = "Example:\n  themis cluster down --dir /tmp/themis")]
    Down {
        /// The cluster's directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Which nodes of the cluster in DIR run, and their roles.
    #[command(after_help = "Example:\n  themis cluster status --dir /tmp/themis")]
    Status {
        /// The cluster's directory.
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum DoctorCmd {
    /// Check every segment and record of a WAL (or one segment); exit 0 when healthy, 1
    /// when not.
    #[command(after_help = "Examples:\n  themis doctor validate-wal --dir /var/lib/themis/node-1\n  \
themis doctor validate-wal --dir /var/lib/themis/node-1/raft/wal --segment 3 --json")]
    ValidateWal {
        /// A WAL directory, or a node's data directory.
        #[arg(long)]
        dir: PathBuf,
        /// Check only this segment (and whether it follows the one before).
        #[arg(long)]
        segment: Option<u64>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cluster health: who leads, each replica's health and open insights, and whether
    /// every replica holds the leader's data (hashes of key ranges). Exit 0 healthy, 1
    /// degraded, 2 a replica's data differs, 3 unavailable.
    #[command(after_help = "Examples:\n  themis doctor check --dir /tmp/themis\n  \
themis doctor check --admin-addr 10.0.0.1:7300,10.0.0.2:7300 --ca ca.pem --auth-token \"$T\" --json")]
    Check {
        /// Key ranges the data is compared in.
        #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
        buckets: u32,
        /// Skip the data comparison.
        #[arg(long)]
        no_data: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// Find the key ranges where a replica's data differs from the leader's and resync
    /// only those from the leader (or every range with --full).
    #[command(after_help = "Example:\n  themis doctor repair --replica 3 --dir /tmp/themis")]
    Repair {
        /// The replica's node id.
        #[arg(long)]
        replica: u64,
        /// Resync every key range, not only those that differ.
        #[arg(long)]
        full: bool,
        /// Key ranges the data is compared and copied in.
        #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
        buckets: u32,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// Each replica's lag over a span (avg, p95, p99, max), the insights of the span and
    /// each node's bottleneck.
    #[command(after_help = "Example:\n  themis doctor analyze-lag --duration 24h --dir /tmp/themis")]
    AnalyzeLag {
        /// The span: 90s, 15m, 24h (at most 7d).
        #[arg(long, default_value = "1h")]
        duration: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminTarget,
    },
}

/// Where the nodes are.
#[derive(Args)]
struct Target {
    /// Node client addresses (repeat or comma-separate).
    #[arg(long, env = "THEMIS_ADDR", value_delimiter = ',')]
    addr: Vec<SocketAddr>,
    /// The cluster CA certificate (PEM).
    #[arg(long, env = "THEMIS_CA")]
    ca: Option<PathBuf>,
    /// A cluster started with `themis cluster up` (its addresses and CA).
    #[arg(long, env = "THEMIS_DIR", conflicts_with = "addr")]
    dir: Option<PathBuf>,
    /// Connect without TLS (only to nodes with insecure_plaintext = true).
    #[arg(long, conflicts_with = "ca")]
    insecure_plaintext: bool,
    /// A client certificate from the cluster CA (PEM; `themis certs --client`), with --key.
    #[arg(long, env = "THEMIS_CERT", requires = "key")]
    cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "THEMIS_KEY", requires = "cert")]
    key: Option<PathBuf>,
    /// A bearer token (JWT; `themis token`) to authenticate with.
    #[arg(long, env = "THEMIS_AUTH_TOKEN")]
    auth_token: Option<String>,
}

impl Target {
    /// The addresses and the credentials: with --dir the cluster's admin certificate
    /// unless --cert or --auth-token say otherwise.
    fn resolve(&self) -> Result<(Vec<SocketAddr>, Credentials), String> {
        let read = |flag: &str, path: &Path| {
            std::fs::read_to_string(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
        };
        let read_ca = |path: &Path| read("--ca", path);
        let explicit = |mut credentials: Credentials| -> Result<Credentials, String> {
            if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
                credentials = credentials.with_certificate(themis_replication::ship::tls::CertPem {
                    cert: read("--cert", cert)?,
                    key: read("--key", key)?,
                });
            }
            if let Some(token) = &self.auth_token {
                credentials = credentials.with_token(token.trim());
            }
            Ok(credentials)
        };
        if let Some(dir) = &self.dir {
            let file = ClusterFile::load(dir)?;
            let credentials = match &self.ca {
                Some(path) => Credentials::tls(read_ca(path)?),
                None if self.cert.is_some() || self.auth_token.is_some() => Credentials::tls(file.ca_pem()?),
                None => file.credentials()?,
            };
            return Ok((file.nodes.iter().map(|n| n.client).collect(), explicit(credentials)?));
        }
        if self.addr.is_empty() {
            return Err(
                "no nodes given: use --dir DIR (a `themis cluster up` cluster) or --addr ADDR with --ca FILE"
                    .into(),
            );
        }
        let credentials = match (&self.ca, self.insecure_plaintext) {
            (Some(path), _) => Credentials::tls(read_ca(path)?),
            (None, true) => Credentials::plaintext(),
            (None, false) => return Err("--ca FILE is required with --addr (or --insecure-plaintext)".into()),
        };
        Ok((self.addr.clone(), explicit(credentials)?))
    }

    async fn connect(&self) -> Result<Client, String> {
        let (addrs, credentials) = self.resolve()?;
        Client::connect_any(&addrs, &credentials).await.map_err(|e| e.to_string())
    }
}

fn seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if (1.0..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("{text:?}: expected a number of seconds from 1 to 3600")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("themis: {e}");
            ExitCode::FAILURE
        }
    }
}

fn exe() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("this program's path: {e}"))
}

fn block_on<T>(f: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?
        .block_on(f)
}

fn run(command: Cmd) -> Result<ExitCode, String> {
    match command {
        Cmd::Demo { seconds, nodes, mode, clients, keep } => {
            let clients = usize::try_from(clients).map_err(|e| e.to_string())?;
            demo::run(&exe()?, &DemoOptions { seconds, nodes, mode, clients, keep })?;
        }
        Cmd::Server { config } => return Ok(themis_node::server::run(&config, "themis")),
        Cmd::Cluster(cmd) => cluster_cmd(cmd)?,
        Cmd::Put { collection, id, json, write_concern, target } => {
            put_doc(&collection, &id, json, write_concern, &target)?;
        }
        Cmd::Get {
            collection,
            id,
            consistency,
            max_staleness_ms,
            max_versions,
            token,
            strategy,
            quorum,
            repair,
            target,
        } => {
            let read = Read { consistency, max_staleness_ms, max_versions, token, strategy, quorum, repair };
            get_doc(&collection, &id, read, &target)?;
        }
        Cmd::Delete { collection, id, target } => {
            let lsn = block_on(async {
                target.connect().await?.delete(&collection, &id).await.map_err(|e| e.to_string())
            })?;
            println!("deleted {collection}/{id} at LSN {lsn}");
        }
        Cmd::Status { json, target } => status(&target, json)?,
        Cmd::Certs { out, nodes, cluster, client, role } => certs(&out, nodes, &cluster, client, role)?,
        Cmd::Token { dir, secret, name, role, ttl, collections } => {
            println!("{}", token(dir, secret, &name, &role, ttl, collections.as_deref())?);
        }
        Cmd::Bench { rate, clients, conns, duration, value_bytes, mode, json, target } => {
            let spec = workload::Spec {
                clients: usize::try_from(clients).map_err(|e| e.to_string())?,
                conns: usize::try_from(conns).map_err(|e| e.to_string())?,
                duration: Duration::from_secs_f64(duration),
                value_bytes: usize::try_from(value_bytes).map_err(|e| e.to_string())?,
                collection: "bench".into(),
                rate,
            };
            bench(&spec, mode.as_deref(), json, &target)?;
        }
        Cmd::Cdc(cmd) => cdc(cmd)?,
        Cmd::Slot(cmd) => slot(cmd)?,
        Cmd::Tier(cmd) => tier(cmd)?,
        Cmd::Cascade(cmd) => cascade(cmd)?,
        Cmd::Link(cmd) => link(cmd)?,
        Cmd::Staleness { window, json, admin } => staleness(window, json, admin)?,
        Cmd::Archive(cmd) => return archive_cmd(cmd),
        Cmd::Restore { to_time, to_lsn, to_hlc, target_dir, dry_run, parallel, archive } => {
            restore_cmd(
                (to_time, to_lsn, to_hlc),
                if dry_run { None } else { target_dir },
                parallel,
                archive,
            )?;
        }
        Cmd::Ddl { statement, admin } => {
            let mut client = admin.client()?;
            let body = serde_json::json!({ "statement": statement });
            let answer = block_on(logical::call(&mut client, "POST", "/v1/ddl", Some(&body)))?;
            println!("{} at LSN {}", answer["statement"].as_str().unwrap_or_default(), answer["lsn"]);
        }
        Cmd::Subscribe { slot, data_dir, max, report_secs, until_idle, source, admin } => {
            subscribe(slot, data_dir, max, report_secs, until_idle, source, admin)?;
        }
        Cmd::Doctor(cmd) => return doctor_cmd(cmd),
    }
    Ok(ExitCode::SUCCESS)
}

/// `themis doctor ...`.
fn doctor_cmd(cmd: DoctorCmd) -> Result<ExitCode, String> {
    let print = |json: bool, value: &serde_json::Value, text: String| {
        if json {
            println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
        } else {
            println!("{text}");
        }
    };
    match cmd {
        DoctorCmd::ValidateWal { dir, segment, json } => {
            let (wal, report) = match segment {
                Some(n) => doctor::validate_segment(&dir, n)?,
                None => doctor::validate(&dir)?,
            };
            print(json, &doctor::report_json(&wal, &report), doctor::render(&wal, &report));
            Ok(if report.is_healthy() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        DoctorCmd::Check { buckets, no_data, json, admin } => {
            let (addrs, credentials) = admin_target(admin.admin_addr, admin.target)?;
            let options = doctor::CheckOptions { buckets, hashes: !no_data };
            let report = block_on(async { Ok(doctor::check_cluster(&addrs, &credentials, options).await) })?;
            let value = serde_json::to_value(&report).map_err(|e| e.to_string())?;
            print(json, &value, report.render());
            Ok(ExitCode::from(report.exit_code))
        }
        DoctorCmd::Repair { replica, full, buckets, json, admin } => {
            let (addrs, credentials) = admin_target(admin.admin_addr, admin.target)?;
            let report = block_on(doctor::repair(&addrs, &credentials, replica, buckets, full))?;
            let value = serde_json::to_value(&report).map_err(|e| e.to_string())?;
            print(json, &value, report.render());
            Ok(if report.equal_after { ExitCode::SUCCESS } else { ExitCode::from(doctor::EXIT_DIVERGED) })
        }
        DoctorCmd::AnalyzeLag { duration, json, admin } => {
            let (addrs, credentials) = admin_target(admin.admin_addr, admin.target)?;
            let value = block_on(doctor::analyze_lag(&addrs, &credentials, &duration))?;
            print(json, &value, doctor::render_lag(&value));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `themis archive ...`.
fn archive_cmd(cmd: ArchiveCmd) -> Result<ExitCode, String> {
    use themis_cli::pitr;
    match cmd {
        ArchiveCmd::Status { archive } => {
            let archive = archive.open()?;
            let manifest = block_on(async { archive.manifest().await.map_err(|e| e.to_string()) })?;
            print!("{}", pitr::render_status(&manifest));
        }
        ArchiveCmd::List { archive } => {
            let archive = archive.open()?;
            let manifest = block_on(async { archive.manifest().await.map_err(|e| e.to_string()) })?;
            print!("{}", pitr::render_list(&manifest));
        }
        ArchiveCmd::Prune { dry_run, config } => {
            let node =
                themis_node::NodeConfig::load(&config).map_err(|e| format!("{}: {e}", config.display()))?;
            let spec = node.archive().ok_or_else(|| format!("{}: no [archive] section", config.display()))?;
            let archive = spec.open(node.cluster()).map_err(|e| e.to_string())?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            let report = block_on(async {
                archive.apply_retention(&spec.retention, now, dry_run).await.map_err(|e| e.to_string())
            })?;
            let verb = if dry_run { "would delete" } else { "deleted" };
            for object in &report.deleted {
                println!("{verb} {object}");
            }
            for object in &report.cold {
                println!("{} {object}", if dry_run { "would move to cold" } else { "moved to cold" });
            }
            println!(
                "oldest base backup kept: LSN {}",
                report.oldest_base.map_or("none".into(), |l| l.to_string())
            );
        }
        ArchiveCmd::Verify { parallel, archive } => {
            let archive = archive.open()?;
            let parallel = usize::try_from(parallel).map_err(|e| e.to_string())?;
            let report = block_on(async { archive.verify(parallel).await.map_err(|e| e.to_string()) })?;
            print!("{}", pitr::render_verify(&report));
            if !report.is_healthy() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `themis restore`.
fn restore_cmd(
    (to_time, to_lsn, to_hlc): (Option<String>, Option<u64>, Option<String>),
    dir: Option<PathBuf>,
    parallel: u64,
    archive: ArchiveArgs,
) -> Result<(), String> {
    use themis_replication::pitr::{PitrError, RestoreTarget};
    let target = match (to_time, to_lsn, to_hlc) {
        (Some(t), _, _) => t.parse(),
        (_, Some(l), _) => Ok(RestoreTarget::Lsn(l)),
        (_, _, Some(h)) => format!("hlc:{h}").parse(),
        _ => Ok(RestoreTarget::Latest),
    }
    .map_err(|e: PitrError| e.to_string())?;
    let archive = archive.open()?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} objects {elapsed}")
            .map_err(|e| e.to_string())?,
    );
    let parallel = usize::try_from(parallel).map_err(|e| e.to_string())?;
    let (report, documents) =
        block_on(themis_cli::pitr::restore_into(&archive, target, dir.as_deref(), parallel, |done, all| {
            bar.set_length(all as u64);
            bar.set_position(done as u64);
        }))?;
    bar.finish_and_clear();
    println!(
        "restored to LSN {} ({}) from the base backup at LSN {}: {} entries replayed from {} objects, {} documents, in {:.2?}",
        report.restored_lsn,
        report.restored_hlc,
        report.base_lsn,
        report.entries,
        report.objects,
        documents,
        report.elapsed
    );
    match dir {
        Some(dir) => println!("start it with: themis server --config {}", dir.join("node-1.toml").display()),
        None => println!("dry run: nothing was written"),
    }
    Ok(())
}

/// `themis subscribe`: `--source` is a directory or admin addresses.
fn subscribe(
    slot: String,
    data_dir: PathBuf,
    max: u64,
    report_secs: u64,
    until_idle: bool,
    source: Option<String>,
    mut admin: AdminTarget,
) -> Result<(), String> {
    if let Some(source) = source {
        let addrs: Result<Vec<SocketAddr>, _> = source.split(',').map(str::parse).collect();
        match addrs {
            Ok(addrs) => admin.admin_addr = addrs,
            Err(_) => admin.target.dir = Some(PathBuf::from(source)),
        }
    }
    let options = logical::SubscribeOptions {
        source: admin.client()?,
        slot,
        data_dir,
        max: usize::try_from(max).map_err(|e| e.to_string())?,
        report_every: Duration::from_secs(report_secs),
        until_idle,
    };
    block_on(async { logical::subscribe(options, &mut std::io::stdout()).await })
}

/// `themis slot ...`.
fn slot(cmd: SlotCmd) -> Result<(), String> {
    match cmd {
        SlotCmd::Create {
            name,
            plugin,
            include,
            exclude,
            predicate,
            initial_sync,
            no_ddl,
            transform,
            admin,
        } => {
            let transform = match transform {
                Some(path) => {
                    let text =
                        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                    Some(
                        serde_json::from_str(&text)
                            .map_err(|e| format!("{}: not JSON: {e}", path.display()))?,
                    )
                }
                None => None,
            };
            let options = logical::CreateOptions {
                plugin,
                include,
                exclude,
                predicate,
                initial_sync,
                no_ddl,
                transform,
            };
            let mut client = admin.client()?;
            let body = logical::slot_body(&name, &options);
            let info = block_on(logical::call(&mut client, "POST", "/v1/slots", Some(&body)))?;
            println!(
                "created slot {name}: delivers what follows LSN {}{}",
                info["confirmed_flush_lsn"],
                if info["snapshot_lsn"].is_u64() { ", after a snapshot" } else { "" }
            );
        }
        SlotCmd::List { json, admin } => {
            let mut client = admin.client()?;
            let stats = block_on(logical::call(&mut client, "GET", "/v1/slots", None))?;
            if json {
                println!("{stats:#}");
            } else {
                print!("{}", logical::render_slots(&stats));
            }
        }
        SlotCmd::Read { name, max, wait_ms, advance, admin } => {
            let mut client = admin.client()?;
            block_on(async {
                let read = logical::call(
                    &mut client,
                    "GET",
                    &format!("/v1/slots/{name}/changes?max={max}&wait_ms={wait_ms}"),
                    None,
                )
                .await?;
                for line in logical::render_changes(&read) {
                    println!("{line}");
                }
                eprintln!("{} changes; confirm_lsn {}", read["count"], read["confirm_lsn"]);
                if advance && let Some(lsn) = read["confirm_lsn"].as_u64() {
                    let body = serde_json::json!({ "lsn": lsn });
                    logical::call(&mut client, "POST", &format!("/v1/slots/{name}/advance"), Some(&body))
                        .await?;
                    eprintln!("confirmed through LSN {lsn}");
                }
                Ok(())
            })?;
        }
        SlotCmd::Advance { name, lsn, admin } => {
            let mut client = admin.client()?;
            let body = serde_json::json!({ "lsn": lsn });
            let info = block_on(logical::call(
                &mut client,
                "POST",
                &format!("/v1/slots/{name}/advance"),
                Some(&body),
            ))?;
            println!("slot {name} confirmed through LSN {}", info["confirmed_flush_lsn"]);
        }
        SlotCmd::Pause { name, admin } => {
            block_on(logical::call(&mut admin.client()?, "POST", &format!("/v1/slots/{name}/pause"), None))?;
            println!("slot {name} paused");
        }
        SlotCmd::Resume { name, admin } => {
            block_on(logical::call(&mut admin.client()?, "POST", &format!("/v1/slots/{name}/resume"), None))?;
            println!("slot {name} resumed");
        }
        SlotCmd::Drop { name, admin } => {
            block_on(logical::call(&mut admin.client()?, "DELETE", &format!("/v1/slots/{name}"), None))?;
            println!("slot {name} dropped");
        }
    }
    Ok(())
}

/// The admin API addresses and credentials: --dir's nodes, or --admin-addr with the
/// credentials from --ca and friends.
fn admin_target(
    admin_addr: Vec<SocketAddr>,
    target: Target,
) -> Result<(Vec<SocketAddr>, Credentials), String> {
    let admin = if let Some(dir) = &target.dir {
        ClusterFile::load(dir)?.nodes.iter().map(|n| n.admin).collect()
    } else if admin_addr.is_empty() {
        return Err("give --dir DIR (a `themis cluster up` cluster) or --admin-addr ADDR".into());
    } else {
        admin_addr
    };
    let credentials = if target.addr.is_empty() && target.dir.is_none() {
        // --admin-addr alone: the credentials come from --ca and friends.
        Target { addr: admin.clone(), ..target }.resolve()?.1
    } else {
        target.resolve()?.1
    };
    Ok((admin, credentials))
}

/// `themis cdc ...`.
fn cdc(cmd: CdcCmd) -> Result<(), String> {
    let CdcCmd::Tail { collections, ops, from_lsn, json, heartbeats, limit, admin_addr, target } = cmd;
    let (admin, credentials) = admin_target(admin_addr, target)?;
    // Fail early on a filter the node would refuse, with the same message.
    themis_replication::cdc::Filter::parse(&ops, &collections).map_err(|e| e.to_string())?;
    let mut feed = ChangeFeed::new(admin, credentials, &collections, &ops, from_lsn);
    let options = themis_cli::cdc::TailOptions { json, heartbeats, limit };
    block_on(async { themis_cli::cdc::tail(&mut feed, &options, &mut std::io::stdout().lock()).await })?;
    Ok(())
}

/// `themis certs`: a cluster's CA, node and admin certificates, or one client certificate.
fn certs(
    out: &Path,
    nodes: Option<u64>,
    cluster: &str,
    client: Option<String>,
    role: Option<String>,
) -> Result<(), String> {
    match (nodes, client, role) {
        (Some(nodes), None, None) => {
            if cluster.is_empty() || cluster.len() > 255 {
                return Err(format!("--cluster {cluster:?}: must be 1 to 255 bytes"));
            }
            let ids: Vec<_> = (1..=nodes).map(themis_replication::clock::NodeId).collect();
            themis_replication::ship::tls::write_cluster_certs(out, cluster, &ids)
                .map_err(|e| format!("{}: {e}", out.display()))?;
            println!(
                "wrote {}: ca.pem, ca.key, node-1 to node-{nodes} (.pem, .key, and -web.pem, -web.key for the admin API), and client-admin (.pem, .key) for cluster {cluster:?}",
                out.display()
            );
        }
        (None, Some(name), Some(role)) => {
            let written = themis_replication::ship::tls::write_client_cert(out, &name, &role)
                .map_err(|e| e.to_string())?;
            println!("wrote {} and {} (CN={name}, OU={role})", written.0.display(), written.1.display());
        }
        _ => return Err("give --nodes N, or --client NAME with --role ROLE".into()),
    }
    Ok(())
}

/// `themis token`: an HS256 bearer token signed with a cluster's secret.
fn token(
    dir: Option<PathBuf>,
    secret: Option<PathBuf>,
    name: &str,
    role: &str,
    ttl: u64,
    collections: Option<&str>,
) -> Result<String, String> {
    let path = match (dir, secret) {
        (_, Some(path)) => path,
        (Some(dir), None) => dir.join("certs").join(themis_node::local::JWT_SECRET_FILE),
        (None, None) => return Err("give --dir DIR or --secret FILE".into()),
    };
    let secret = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let role = role.parse::<themis_node::auth::Role>()?;
    let collections = match collections {
        Some(list) => {
            let patterns: Vec<String> =
                themis_replication::cdc::split_list(list).into_iter().map(str::to_string).collect();
            // A scope that does not parse would make every stream a 403; refuse it here.
            themis_replication::cdc::Filter::new(&[], &patterns)
                .map_err(|e| format!("--collections: {e}"))?;
            Some(patterns)
        }
        None => None,
    };
    themis_node::auth::hs256_scoped_token(&secret, name, role, ttl, collections).map_err(|e| e.to_string())
}

fn cluster_cmd(cmd: ClusterCmd) -> Result<(), String> {
    match cmd {
        ClusterCmd::Up { nodes, dir, mode } => {
            let (file, _children) = cluster::start(&exe()?, &dir, nodes, &mode, false)?;
            for n in &file.nodes {
                println!(
                    "node {}: pid {}, client {}, admin https://{}, log {}",
                    n.id,
                    n.pid,
                    n.client,
                    n.admin,
                    n.log.display()
                );
            }
            println!(
                "cluster of {nodes} up in {} ({mode}); try `themis status --dir {}`",
                dir.display(),
                dir.display()
            );
        }
        ClusterCmd::Down { dir } => {
            let stopped = cluster::stop(&dir, Duration::from_secs(10))?;
            if stopped.is_empty() {
                println!("no node of the cluster in {} was running", dir.display());
            } else {
                println!("stopped nodes {stopped:?} of the cluster in {}", dir.display());
            }
        }
        ClusterCmd::Status { dir } => {
            let file = ClusterFile::load(&dir)?;
            let credentials = file.credentials()?;
            block_on(async {
                for n in &file.nodes {
                    let state = if cluster::alive(n.pid) {
                        match node_status(n.client, &credentials).await {
                            Ok(s) => summary(&s),
                            Err(e) => format!("running, not answering: {e}"),
                        }
                    } else {
                        "stopped".to_string()
                    };
                    println!("node {} (pid {}, client {}): {state}", n.id, n.pid, n.client);
                }
                Ok(())
            })?;
        }
    }
    Ok(())
}

async fn node_status(addr: SocketAddr, credentials: &Credentials) -> Result<serde_json::Value, String> {
    let client = Client::connect(addr, credentials).await.map_err(|e| e.to_string())?;
    client.status().await.map_err(|e| e.to_string())
}

fn summary(s: &serde_json::Value) -> String {
    let st = &s["status"];
    let mut line = format!(
        "{} term {} leader {} commit {} applied {} mode {}",
        st["role"].as_str().unwrap_or("?"),
        st["term"],
        st["leader"],
        st["commit_lsn"],
        st["applied_lsn"],
        st["mode"].as_str().unwrap_or("?")
    );
    if let Some(replicas) = st["replicas"].as_array().filter(|r| !r.is_empty()) {
        let parts: Vec<String> = replicas
            .iter()
            .filter(|r| r["id"] != st["id"])
            .map(|r| {
                format!(
                    "{}: match {} lag {} LSNs / {} ms{}",
                    r["id"],
                    r["match_lsn"],
                    r["lag_lsns"],
                    r["lag_ms"],
                    if r["healthy"] == true { "" } else { " UNHEALTHY" }
                )
            })
            .collect();
        let _ = write!(line, "; replicas [{}]", parts.join(", "));
    }
    line
}

fn status(target: &Target, json: bool) -> Result<(), String> {
    let (addrs, credentials) = target.resolve()?;
    block_on(async {
        let mut docs = Vec::new();
        let mut answered = 0;
        for addr in &addrs {
            match node_status(*addr, &credentials).await {
                Ok(s) => {
                    answered += 1;
                    if json {
                        docs.push(s);
                    } else {
                        println!("{addr}: {}", summary(&s));
                    }
                }
                Err(e) if json => docs.push(serde_json::json!({ "addr": addr.to_string(), "error": e })),
                Err(e) => println!("{addr}: not answering: {e}"),
            }
        }
        if json {
            println!("{}", serde_json::to_string_pretty(&docs).map_err(|e| e.to_string())?);
        }
        if answered == 0 {
            return Err("no node answered".into());
        }
        Ok(())
    })
}

fn bench(spec: &workload::Spec, mode: Option<&str>, json: bool, target: &Target) -> Result<(), String> {
    // Without a target, a fresh local 3-node cluster that lives as long as the bench.
    let own = if target.dir.is_none() && target.addr.is_empty() {
        let dir = std::env::temp_dir().join(format!("themis-bench-{}", std::process::id()));
        let (file, children) = cluster::start(&exe()?, &dir, 3, mode.unwrap_or("semi_sync"), true)?;
        Some((dir, file, cluster::Procs(children.into_iter().map(Some).collect())))
    } else {
        None
    };
    let (addrs, credentials) = match &own {
        Some((_, file, _)) => (file.nodes.iter().map(|n| n.client).collect(), file.credentials()?),
        None => target.resolve()?,
    };
    // Nodes on this machine whose processes the bench can measure.
    let local: Vec<(u64, u32, std::net::SocketAddr)> = match (&own, &target.dir) {
        (Some((_, file, _)), _) => file.nodes.iter().map(|n| (n.id, n.pid, n.client)).collect(),
        (None, Some(dir)) => ClusterFile::load(dir)?.nodes.iter().map(|n| (n.id, n.pid, n.client)).collect(),
        (None, None) => Vec::new(),
    };
    let report = block_on(async {
        let client = Client::connect_any(&addrs, &credentials).await.map_err(|e| e.to_string())?;
        if let Some(mode) = mode {
            let min_sync_replicas = u32::from(mode != "async");
            client
                .admin(Request::SetMode { mode: mode.to_string(), min_sync_replicas })
                .await
                .map_err(|e| format!("--mode {mode}: {e}"))?;
        }
        if !json {
            let load = match spec.rate {
                Some(rate) => format!("open loop at {rate} writes/s over {} connections", spec.connections()),
                None => format!("{} clients over {} connections", spec.clients, spec.connections()),
            };
            eprintln!(
                "themis bench: {load} for {} s against {} nodes",
                spec.duration.as_secs_f64(),
                addrs.len()
            );
        }
        let probe = workload::ResourceProbe::start(&local, &credentials).await;
        let outcome = workload::run(&addrs, &credentials, spec, || None).await;
        let nodes = probe.finish().await;
        let mut clients = Vec::new();
        for addr in &addrs {
            clients.push(Client::connect(*addr, &credentials).await.ok());
        }
        let ratio =
            workload::leader_status(&clients).await.and_then(|(_, s)| workload::compression_ratio(&s));
        let mut report = outcome.report(spec, ratio);
        report.nodes = nodes;
        Ok(report)
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
    } else {
        println!("{report}");
    }
    if let Some((dir, _, procs)) = own {
        drop(procs);
        let _ = std::fs::remove_dir_all(dir);
    }
    if report.writes == 0 {
        return Err("no write was acknowledged".into());
    }
    Ok(())
}

/// `--max-staleness-ms`: 1 ms to a day; a negative or zero bound is refused by name.
fn parse_staleness(text: &str) -> Result<u64, String> {
    themis_replication::geo::parse_staleness_ms(text).map_err(|e| e.to_string())
}

/// How `themis get` reads.
struct Read {
    consistency: String,
    max_staleness_ms: Option<u64>,
    max_versions: Option<u64>,
    token: Option<String>,
    strategy: Option<themis_replication::geo::Strategy>,
    quorum: Option<usize>,
    repair: bool,
}

/// `themis get`: reads a document at a level (through one node, a strategy over every
/// node, or a quorum of them) and prints it; the session token and a quorum's sources go
/// to stderr.
fn get_doc(collection: &str, id: &str, read: Read, target: &Target) -> Result<(), String> {
    let Read { consistency, max_staleness_ms, max_versions, token, strategy, quorum, repair } = read;
    if consistency != "bounded" && (max_staleness_ms.is_some() || max_versions.is_some()) {
        return Err("--max-staleness-ms and --max-versions go with --consistency bounded".into());
    }
    if consistency != "session" && token.is_some() {
        return Err("--token goes with --consistency session".into());
    }
    let consistency = match consistency.as_str() {
        "bounded" => Consistency::Bounded { max_staleness_ms: max_staleness_ms.unwrap_or(0), max_versions },
        "session" => Consistency::Session(token),
        "prefix" => Consistency::Prefix,
        "eventual" => Consistency::Eventual,
        _ => Consistency::Strong,
    };
    let (doc, session) = block_on(async {
        let (addrs, credentials) = target.resolve()?;
        if strategy.is_none() && quorum.is_none() {
            let client = Client::connect_any(&addrs, &credentials).await.map_err(|e| e.to_string())?;
            let doc = client.get(collection, id, consistency).await.map_err(|e| e.to_string())?;
            return Ok::<_, String>((doc, client.session_token()));
        }
        let config = RouterConfig::new(strategy.unwrap_or(themis_replication::geo::Strategy::RoundRobin));
        let router = ReadRouter::connect(&addrs, &credentials, config).await.map_err(|e| e.to_string())?;
        if let Consistency::Session(Some(token)) = &consistency {
            router.set_session_token(token);
        }
        let doc = match quorum {
            None => router.get(collection, id, consistency).await.map_err(|e| e.to_string())?,
            Some(r) => {
                let read = router.quorum_get(collection, id, r, repair).await.map_err(|e| e.to_string())?;
                let list = |v: &[std::net::SocketAddr]| {
                    v.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                };
                eprintln!(
                    "quorum {r} of {}: version {}, from {}; conflicts: {}; stale: [{}]; divergent: [{}]; repaired: [{}]",
                    addrs.len(),
                    read.result.version,
                    list(&read.result.sources),
                    read.result.had_conflicts,
                    list(&read.result.stale),
                    list(&read.result.divergent),
                    list(&read.repaired)
                );
                read.result.value
            }
        };
        Ok((doc, router.session_token()))
    })?;
    if let Some(session) = session {
        eprintln!("session token {session}");
    }
    match doc {
        Some(doc) => println!("{}", String::from_utf8_lossy(&doc)),
        None => return Err(format!("{collection}/{id}: not found")),
    }
    Ok(())
}

/// `--strategy`: one of the read router's strategies, by name.
fn parse_strategy(text: &str) -> Result<themis_replication::geo::Strategy, String> {
    text.parse().map_err(|e: themis_replication::geo::GeoError| e.to_string())
}

/// `--write-concern`: one, majority or all.
fn parse_concern(text: &str) -> Result<themis_replication::geo::WriteConcern, String> {
    text.parse().map_err(|e: themis_replication::geo::GeoError| e.to_string())
}

/// `themis tier ...`.
fn tier(cmd: TierCmd) -> Result<(), String> {
    match cmd {
        TierCmd::Set { collection, tier, admin } => {
            let body = serde_json::json!({ "tier": tier });
            let path = format!("/v1/tiers/{collection}");
            let done = block_on(logical::call(&mut admin.client()?, "PUT", &path, Some(&body)))?;
            println!("{collection} is in {} (LSN {})", done["tier"].as_str().unwrap_or("?"), done["lsn"]);
        }
        TierCmd::Clear { collection, admin } => {
            let path = format!("/v1/tiers/{collection}");
            let done = block_on(logical::call(&mut admin.client()?, "DELETE", &path, None))?;
            println!("{collection} follows the cluster's mode (LSN {})", done["lsn"]);
        }
        TierCmd::List { admin } => {
            let list = block_on(logical::call(&mut admin.client()?, "GET", "/v1/tiers", None))?;
            let tiers = list["tiers"].as_array().cloned().unwrap_or_default();
            if tiers.is_empty() {
                println!("no collection has a tier; every write follows the cluster's mode");
            }
            for t in tiers {
                println!(
                    "{:<32} {}  write concern {}{}",
                    t["collection"].as_str().unwrap_or("?"),
                    t["tier"].as_str().unwrap_or("?"),
                    t["write_concern"].as_str().unwrap_or("?"),
                    if t["automatic"] == true { "  (automatic)" } else { "" }
                );
            }
        }
    }
    Ok(())
}

/// One line per link: its state, positions and conflicts.
fn link_line(l: &serde_json::Value) -> String {
    format!(
        "{:<20} from {:<12} {:<9} read {} of {} (applied {}), lag {} ms, {} conflicts in the last hour{}{}",
        l["name"].as_str().unwrap_or("?"),
        l["remote_cluster"].as_str().unwrap_or("?"),
        l["state"].as_str().unwrap_or("?"),
        l["read_lsn"],
        l["remote_lsn"],
        l["applied_lsn"],
        l["lag_ms"],
        l["conflicts_last_hour"],
        if l["is_synchronized"] == true { ", synchronized" } else { "" },
        l["last_error"].as_str().map(|e| format!("; error: {e}")).unwrap_or_default(),
    )
}

/// `themis link ...`.
fn link(cmd: LinkCmd) -> Result<(), String> {
    match cmd {
        LinkCmd::Create { name, remote_cluster, addrs, ca_file, token_file, admin } => {
            let absolute =
                |p: &str| std::path::absolute(p).map_or_else(|_| p.to_string(), |p| p.display().to_string());
            let body = serde_json::json!({
                "name": name, "remote_cluster": remote_cluster, "addrs": addrs,
                "ca_file": absolute(&ca_file), "token_file": absolute(&token_file),
            });
            let done = block_on(logical::call(&mut admin.client()?, "POST", "/v1/links", Some(&body)))?;
            println!("link {name} takes cluster {remote_cluster}'s writes (LSN {})", done["lsn"]);
        }
        LinkCmd::List { json, admin } => {
            let list = block_on(logical::call(&mut admin.client()?, "GET", "/v1/links", None))?;
            if json {
                println!("{list:#}");
                return Ok(());
            }
            let links = list["links"].as_array().cloned().unwrap_or_default();
            if links.is_empty() {
                println!("no link; this cluster takes no other cluster's writes");
            }
            for l in &links {
                println!("{}", link_line(l));
            }
        }
        LinkCmd::Status { name, admin } => {
            let path = format!("/v1/links/{name}");
            let l = block_on(logical::call(&mut admin.client()?, "GET", &path, None))?;
            println!("{}", link_line(&l));
        }
        LinkCmd::Drop { name, admin } => {
            let path = format!("/v1/links/{name}");
            let done = block_on(logical::call(&mut admin.client()?, "DELETE", &path, None))?;
            println!("link {name} dropped (LSN {})", done["lsn"]);
        }
        LinkCmd::Conflicts { limit, admin } => {
            let path = format!("/v1/links/conflicts?limit={limit}");
            let list = block_on(logical::call(&mut admin.client()?, "GET", &path, None))?;
            let records = list["conflicts"].as_array().cloned().unwrap_or_default();
            if records.is_empty() {
                println!("no conflict recorded");
            }
            for r in records {
                println!(
                    "{}/{} at LSN {}: {} won by {} (local {} from {}, remote {} from {})",
                    r["collection"].as_str().unwrap_or("?"),
                    r["id"].as_str().unwrap_or("?"),
                    r["lsn"],
                    r["winner"].as_str().unwrap_or("?"),
                    r["strategy"].as_str().unwrap_or("?"),
                    r["local"]["hlc"].as_str().unwrap_or("?"),
                    r["local"]["cluster"].as_str().unwrap_or("?"),
                    r["remote"]["hlc"].as_str().unwrap_or("?"),
                    r["remote"]["cluster"].as_str().unwrap_or("?"),
                );
            }
        }
    }
    Ok(())
}

/// `themis cascade ...`.
fn cascade(cmd: CascadeCmd) -> Result<(), String> {
    match cmd {
        CascadeCmd::Set { id, upstream, admin } => {
            let body = serde_json::json!({ "upstream": upstream });
            let path = format!("/v1/cluster/cascade/{id}");
            let done = block_on(logical::call(&mut admin.client()?, "PUT", &path, Some(&body)))?;
            println!("node {id} streams from node {upstream} (LSN {})", done["lsn"]);
        }
        CascadeCmd::Clear { id, admin } => {
            let path = format!("/v1/cluster/cascade/{id}");
            let done = block_on(logical::call(&mut admin.client()?, "DELETE", &path, None))?;
            println!("node {id} streams from the leader (LSN {})", done["lsn"]);
        }
        CascadeCmd::List { json, admin } => {
            let list = block_on(logical::call(&mut admin.client()?, "GET", "/v1/cluster/cascade", None))?;
            if json {
                println!("{list:#}");
                return Ok(());
            }
            let replicas = list["replicas"].as_array().cloned().unwrap_or_default();
            if replicas.is_empty() {
                println!("no cascaded replica; every member replicates from the leader");
            }
            for r in replicas {
                let chain: Vec<String> = r["chain"]
                    .as_array()
                    .map(|c| c.iter().map(ToString::to_string).collect())
                    .unwrap_or_default();
                println!(
                    "node {:<4} from {:<4} chain {} -> leader ({} hops){}",
                    r["replica"],
                    r["upstream"],
                    chain.join(" -> "),
                    r["hops"],
                    if r["direct"] == true { "  (served by the leader for now)" } else { "" }
                );
            }
        }
    }
    Ok(())
}

/// `themis staleness`.
fn staleness(window: u64, json: bool, admin: AdminTarget) -> Result<(), String> {
    let path = format!("/v1/geo/staleness?window_ms={}", window.saturating_mul(1000));
    let report = block_on(logical::call(&mut admin.client()?, "GET", &path, None))?;
    if json {
        println!("{report:#}");
        return Ok(());
    }
    println!(
        "node {} (region {}): staleness {} ms{}",
        report["node"],
        report["region"].as_str().unwrap_or("?"),
        report["staleness_ms"],
        if report["is_leader"] == true { ", leader" } else { "" }
    );
    for region in report["regions"].as_array().cloned().unwrap_or_default() {
        println!(
            "region {:<16} lag {} to {} ms",
            region["region"].as_str().unwrap_or("?"),
            region["min_lag_ms"],
            region["max_lag_ms"]
        );
        for r in region["replicas"].as_array().cloned().unwrap_or_default() {
            let h = &r["history"];
            println!(
                "  node {:<4} lag {} ms ({} LSNs); over {} s: p50 {} p95 {} p99 {} max {} ms",
                r["replica"],
                r["lag_ms"],
                r["lag_lsns"],
                window,
                h["p50_ms"],
                h["p95_ms"],
                h["p99_ms"],
                h["max_ms"]
            );
        }
    }
    Ok(())
}

/// `themis put`: validates the document (from the argument or stdin) and writes it,
/// acknowledged under `write_concern` when given.
fn put_doc(
    collection: &str,
    id: &str,
    json: String,
    write_concern: Option<themis_replication::geo::WriteConcern>,
    target: &Target,
) -> Result<(), String> {
    use themis_node::limits::MAX_DOCUMENT_BYTES;
    let from_stdin = json == "-";
    let doc = if from_stdin {
        // One byte past the limit is enough to know the document is too large; a
        // larger input is never read into memory.
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(std::io::stdin(), MAX_DOCUMENT_BYTES as u64 + 1),
            &mut text,
        )
        .map_err(|e| format!("stdin: {e}"))?;
        text
    } else {
        json
    };
    if doc.len() > MAX_DOCUMENT_BYTES {
        let size = if from_stdin {
            "on stdin is larger than that".to_string()
        } else {
            format!("is {} bytes", doc.len())
        };
        return Err(format!(
            "the largest document a node accepts is {MAX_DOCUMENT_BYTES} bytes (the WAL record limit \
             less its framing), and this one {size}; nothing was sent"
        ));
    }
    serde_json::from_str::<serde_json::Value>(&doc).map_err(|e| format!("the document is not JSON: {e}"))?;
    let (lsn, session) = block_on(async {
        let client = target.connect().await?;
        let concern = write_concern.unwrap_or(themis_replication::geo::WriteConcern::One);
        let lsn =
            client.put_with(collection, id, doc.as_bytes(), concern).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((lsn, client.session_token().unwrap_or_default()))
    })?;
    println!("written {collection}/{id} at LSN {lsn} (session token {session})");

    Ok(())
}
