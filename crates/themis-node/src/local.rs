//! A local cluster layout on 127.0.0.1: a CA and node certificates, free ports, and one
//! TOML file per node. The demo, the cluster bench and the end-to-end tests start their
//! nodes from it (and `themis cluster up` will).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use themis_replication::clock::NodeId;

/// One node of a [`LocalCluster`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalNode {
    /// Its id.
    pub id: u64,
    /// Its Raft address.
    pub raft: SocketAddr,
    /// Its client address.
    pub client: SocketAddr,
    /// Its HTTP admin API address.
    pub admin: SocketAddr,
    /// Its configuration file.
    pub config: PathBuf,
    /// Whether it starts as a learner that joins later (not a bootstrap member).
    pub join: bool,
}

/// The files of a local cluster.
#[derive(Debug, Clone)]
pub struct LocalCluster {
    /// The directory holding `certs/`, `node-<id>.toml` and `data-<id>/`.
    pub dir: PathBuf,
    /// The cluster CA certificate, PEM.
    pub ca_pem: String,
    /// The admin client credential (`certs/client-admin.pem` and `.key`).
    pub admin: crate::Credentials,
    /// The HS256 secret every node's `[auth]` names (`certs/jwt-hs256.secret`), for
    /// `themis token`.
    pub jwt_secret_file: PathBuf,
    /// The nodes: the bootstrap members first, then the spare ones.
    pub nodes: Vec<LocalNode>,
}

/// The kernel's ephemeral port range (where outgoing connections take their local ports).
fn ephemeral_ports() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut parts = text.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((parts.next()??, parts.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// A free port on 127.0.0.1 outside the ephemeral range: a port the kernel hands out for
/// `bind(0)` or an outgoing connection can be taken by another test's client between this
/// check and the node's own bind; ports below the range are only taken by listeners.
/// Candidates start at a per-process random point and move on, so concurrent callers in
/// one process never pick the same port and processes rarely do.
fn free_addr() -> std::io::Result<SocketAddr> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let (low, _) = ephemeral_ports();
    let (first, span) = (10_000u32, u32::from(low).saturating_sub(10_000).max(1));
    if NEXT.load(Ordering::Relaxed) == u32::MAX {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let _ = NEXT.compare_exchange(
            u32::MAX,
            (std::process::id() ^ nanos) % span,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let Ok(port) = u16::try_from(first + offset) else { continue };
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr();
        }
    }
    // Every port below the range is taken: fall back to one the kernel picks.
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

impl LocalCluster {
    /// Writes certificates and configurations for `members` bootstrap nodes and `spare`
    /// nodes that join later, acknowledging in `mode` (`sync`, `semi_sync` or `async`) with
    /// heartbeats every 100 ms and election timeouts from 500 ms.
    pub fn write(
        dir: &Path,
        cluster: &str,
        members: u64,
        spare: u64,
        mode: &str,
    ) -> Result<LocalCluster, String> {
        let ids: Vec<NodeId> = (1..=members + spare).map(NodeId).collect();
        let certs = dir.join("certs");
        themis_replication::ship::tls::write_cluster_certs(&certs, cluster, &ids)
            .map_err(|e| format!("certificates: {e}"))?;
        let ca_pem = std::fs::read_to_string(certs.join("ca.pem")).map_err(|e| format!("ca.pem: {e}"))?;
        let admin = crate::Credentials::admin_from_dir(&certs)?;
        let jwt_secret_file = certs.join(JWT_SECRET_FILE);
        write_secret(&jwt_secret_file)?;
        let mut nodes = Vec::new();
        for id in 1..=members + spare {
            let port = |e: std::io::Error| format!("a free port: {e}");
            let (raft, client, admin) =
                (free_addr().map_err(port)?, free_addr().map_err(port)?, free_addr().map_err(port)?);
            nodes.push(LocalNode {
                id,
                raft,
                client,
                admin,
                config: dir.join(format!("node-{id}.toml")),
                join: id > members,
            });
        }
        let mut peers = String::new();
        for n in nodes.iter().filter(|n| !n.join) {
            let _ = write!(
                peers,
                "\n[[peers]]\nid = {}\nraft_addr = \"{}\"\nclient_addr = \"{}\"\n",
                n.id, n.raft, n.client
            );
        }
        let min_sync = u64::from(mode != "async").min(members.saturating_sub(1));
        for n in &nodes {
            let text = format!(
                "node_id = {id}\ncluster = \"{cluster}\"\ndata_dir = \"{data}\"\nraft_addr = \"{raft}\"\n\
                 client_addr = \"{client}\"\nadmin_addr = \"{admin}\"\njoin = {join}\n\n[tls]\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\
                 admin_cert = \"{admin_cert}\"\nadmin_key = \"{admin_key}\"\n\n\
                 [auth]\njwt_hs256_secret_file = \"{secret}\"\n\n\
                 [replication]\nmode = \"{mode}\"\nmin_sync_replicas = {min_sync}\nheartbeat_ms = 100\nelection_timeout_ms = 500\n{peers}",
                id = n.id,
                data = dir.join(format!("data-{}", n.id)).display(),
                raft = n.raft,
                client = n.client,
                admin = n.admin,
                join = n.join,
                ca = certs.join("ca.pem").display(),
                cert = certs.join(format!("node-{}.pem", n.id)).display(),
                key = certs.join(format!("node-{}.key", n.id)).display(),
                admin_cert = certs.join(format!("node-{}-web.pem", n.id)).display(),
                admin_key = certs.join(format!("node-{}-web.key", n.id)).display(),
                secret = jwt_secret_file.display(),
            );
            std::fs::write(&n.config, text).map_err(|e| format!("{}: {e}", n.config.display()))?;
        }
        Ok(LocalCluster { dir: dir.to_path_buf(), ca_pem, admin, jwt_secret_file, nodes })
    }
}

/// The name of the HS256 secret file in a local cluster's `certs/`.
pub const JWT_SECRET_FILE: &str = "jwt-hs256.secret";

/// Writes 32 random bytes, hex-encoded, readable by the owner only.
fn write_secret(path: &Path) -> Result<(), String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| "no system randomness".to_string())?;
    let hex = bytes.iter().fold(String::with_capacity(64), |mut hex, b| {
        use std::fmt::Write;
        let _ = write!(hex, "{b:02x}");
        hex
    });
    std::fs::write(path, hex).map_err(|e| format!("{}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_lie_below_the_ephemeral_range_and_differ() {
        let (low, _) = ephemeral_ports();
        let ports: std::collections::BTreeSet<u16> = (0..200).map(|_| free_addr().unwrap().port()).collect();
        assert_eq!(ports.len(), 200, "no port handed out twice");
        assert!(ports.iter().all(|p| *p < low && *p >= 10_000), "{ports:?}");
    }

    #[test]
    fn every_written_config_loads() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = LocalCluster::write(dir.path(), "t", 3, 1, "semi_sync").unwrap();
        assert_eq!(cluster.nodes.len(), 4);
        for node in &cluster.nodes {
            let config = crate::NodeConfig::load(&node.config).unwrap();
            assert_eq!((config.node_id, config.join, config.client_addr), (node.id, node.join, node.client));
            assert_eq!(config.admin_addr, Some(node.admin));
            assert_eq!(config.peers.len(), 3 + usize::from(node.join));
        }
        assert!(cluster.ca_pem.contains("BEGIN CERTIFICATE"));
    }
}
