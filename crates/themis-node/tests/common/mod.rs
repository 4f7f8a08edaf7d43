//! What the real-process node tests share: a cluster of `themis-node` processes started
//! from a [`LocalCluster`] layout, and a one-shot HTTPS client.
#![allow(dead_code, reason = "each test binary uses its own part")]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use std::collections::BTreeMap;

use themis_node::{Client, Consistency, Credentials, LocalCluster, Request, Response};
use themis_testkit::proxy::{Fault, Proxy};
pub(crate) struct Proc {
    pub(crate) id: u64,
    pub(crate) raft: SocketAddr,
    pub(crate) client: SocketAddr,
    pub(crate) admin: SocketAddr,
    pub(crate) config: PathBuf,
    pub(crate) child: Option<Child>,
    /// Environment variables the process starts with (fault injection, say).
    pub(crate) env: Vec<(String, String)>,
}

pub(crate) struct Cluster {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) ca: String,
    /// The admin client certificate every call below presents.
    pub(crate) admin: Credentials,
    /// The HS256 secret the nodes verify bearer tokens with.
    pub(crate) jwt_secret_file: PathBuf,
    pub(crate) nodes: Vec<Proc>,
}

/// Where a node's stderr goes: beside its configuration, appended across restarts, and
/// printed when a test fails.
pub(crate) fn log_path(config: &Path) -> PathBuf {
    config.with_extension("stderr")
}

pub(crate) fn spawn(config: &Path) -> Child {
    spawn_with_env(config, &[])
}

/// [`spawn`] with extra environment variables.
pub(crate) fn spawn_with_env(config: &Path, env: &[(String, String)]) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log_path(config)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_themis-node"))
        .arg("--config")
        .arg(config)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("THEMIS_LOG", std::env::var("THEMIS_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    // Wait for the "listening" line.
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert!(line.contains("listening"), "node did not start: {line:?}");
    child
}

impl Cluster {
    pub(crate) fn start(n: u64, spare: u64) -> Cluster {
        Cluster::start_with(n, spare, |text| text)
    }

    /// [`start`](Self::start) with each node's configuration file rewritten by `edit`
    /// first (other timings, say).
    pub(crate) fn start_with(n: u64, spare: u64, edit: impl Fn(String) -> String) -> Cluster {
        let (dir, layout) = Cluster::layout(n, spare);
        for node in &layout.nodes {
            let text = std::fs::read_to_string(&node.config).unwrap();
            std::fs::write(&node.config, edit(text)).unwrap();
        }
        Cluster::launch(dir, layout, n)
    }

    /// The files of a cluster of `n` members and `spare` nodes, not started yet (so a test
    /// can rewrite each node's configuration before [`launch`](Self::launch)).
    pub(crate) fn layout(n: u64, spare: u64) -> (tempfile::TempDir, LocalCluster) {
        Cluster::layout_named("e2e", n, spare)
    }

    /// [`layout`](Self::layout) for a cluster named `name`.
    pub(crate) fn layout_named(name: &str, n: u64, spare: u64) -> (tempfile::TempDir, LocalCluster) {
        let dir = tempfile::tempdir().unwrap();
        let layout = LocalCluster::write(dir.path(), name, n, spare, "semi_sync").unwrap();
        (dir, layout)
    }

    /// A cluster of `n` named `name`, each configuration rewritten by `edit` first.
    pub(crate) fn start_named(name: &str, n: u64, edit: impl Fn(String) -> String) -> Cluster {
        let (dir, layout) = Cluster::layout_named(name, n, 0);
        for node in &layout.nodes {
            let text = std::fs::read_to_string(&node.config).unwrap();
            std::fs::write(&node.config, edit(text)).unwrap();
        }
        Cluster::launch(dir, layout, n)
    }

    /// Starts the first `n` nodes of `layout`.
    pub(crate) fn launch(dir: tempfile::TempDir, layout: LocalCluster, n: u64) -> Cluster {
        Cluster::launch_with_env(dir, layout, n, |_| Vec::new())
    }

    /// [`launch`](Self::launch), node `i` started with the environment variables `env(i)`
    /// (kept for its restarts).
    pub(crate) fn launch_with_env(
        dir: tempfile::TempDir,
        layout: LocalCluster,
        n: u64,
        env: impl Fn(usize) -> Vec<(String, String)>,
    ) -> Cluster {
        let nodes = layout
            .nodes
            .into_iter()
            .enumerate()
            .map(|(i, n)| Proc {
                id: n.id,
                raft: n.raft,
                client: n.client,
                admin: n.admin,
                config: n.config,
                child: None,
                env: env(i),
            })
            .collect();
        let mut cluster = Cluster {
            dir,
            ca: layout.ca_pem,
            admin: layout.admin,
            jwt_secret_file: layout.jwt_secret_file,
            nodes,
        };
        for i in 0..n as usize {
            cluster.restart(i);
        }
        cluster
    }

    pub(crate) fn restart(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        assert!(node.child.is_none());
        node.child = Some(spawn_with_env(&node.config, &node.env));
    }

    pub(crate) fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        }
    }

    pub(crate) async fn client(&self, i: usize) -> Client {
        Client::connect(self.nodes[i].client, &self.admin).await.unwrap()
    }

    /// Sends `sig` to node `i`'s process (`SIGSTOP` pauses it, `SIGCONT` resumes it).
    pub(crate) fn signal(&self, i: usize, sig: nix::sys::signal::Signal) {
        let child = self.nodes[i].child.as_ref().expect("the node runs");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("a pid"));
        nix::sys::signal::kill(pid, sig).unwrap_or_else(|e| panic!("{sig} to {pid}: {e}"));
    }

    /// The node that says it leads, among those running and not `stopped` (paused nodes
    /// would not answer), each asked with a short timeout; `None` while there is none.
    pub(crate) async fn leader_among(&self, stopped: &[bool]) -> Option<usize> {
        for (i, node) in self.nodes.iter().enumerate() {
            if node.child.is_none() || stopped.get(i).copied().unwrap_or(false) {
                continue;
            }
            let ask = async {
                let c = Client::connect(node.client, &self.admin).await.ok()?;
                c.status().await.ok()
            };
            if let Ok(Some(status)) = tokio::time::timeout(Duration::from_millis(300), ask).await
                && status["status"]["role"] == "Leader"
            {
                return Some(i);
            }
        }
        None
    }

    /// The index of the node that reports itself leader.
    pub(crate) async fn leader(&self) -> usize {
        for _ in 0..200 {
            for (i, node) in self.nodes.iter().enumerate() {
                if node.child.is_none() {
                    continue;
                }
                if let Ok(c) = Client::connect(node.client, &self.admin).await
                    && let Ok(status) = c.status().await
                    && status["status"]["role"] == "Leader"
                {
                    return i;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no leader within 20 s");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        if std::thread::panicking() {
            for node in &self.nodes {
                let log = std::fs::read_to_string(log_path(&node.config)).unwrap_or_default();
                eprintln!("--- node {} stderr ---\n{log}", node.id);
            }
        }
    }
}

/// A TLS connection to `addr` (a node's client, admin or Raft port) with `credentials`,
/// for tests that speak raw bytes inside it.
pub(crate) async fn tls(
    credentials: &Credentials,
    addr: SocketAddr,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let connector = credentials.connector().map_err(std::io::Error::other)?.expect("a TLS cluster");
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    connector.connect(rustls_pki_types::ServerName::IpAddress(addr.ip().into()), tcp).await
}

/// One HTTP/1.1 request over TLS with `credentials` (the cluster CA, a client certificate
/// if they hold one, and `Authorization: Bearer` if they hold a token); returns the
/// status, the headers and the body.
pub(crate) async fn http(
    addr: SocketAddr,
    credentials: &Credentials,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, hyper::HeaderMap, String) {
    let body = http_body_util::Full::new(bytes::Bytes::from(body.to_string()));
    http_with(addr, credentials, method, path, headers, body).await
}

/// [`http`] with any request body (a stream, say); the answer's body is read whole. A
/// request not answered whole within a minute (a stream that never ends) fails the test
/// rather than hanging it.
pub(crate) async fn http_with<B>(
    addr: SocketAddr,
    credentials: &Credentials,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: B,
) -> (u16, hyper::HeaderMap, String)
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt;
    let exchange = async {
        let tls = tls(credentials, addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        let mut request = hyper::Request::builder().method(method).uri(path).header("host", addr.to_string());
        if let Some(token) = credentials.token() {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = sender.send_request(request.body(body).unwrap()).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (parts.status.as_u16(), parts.headers, String::from_utf8_lossy(&bytes).into_owned())
    };
    tokio::time::timeout(Duration::from_mins(1), exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path} was not answered within a minute"))
}

pub(crate) fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The value of a metric line `name{labels} value` (labels matched as given, in order).
pub(crate) fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Reads `collection/id` on the node `client` talks to, once that node has applied what
/// the session `token` covers: a session read that is not redirected to the leader
/// (redirects and timeouts are retried), so the value is this node's. Waits up to `within`;
/// `None` if the node never caught up.
pub(crate) async fn read_local(
    client: &Client,
    collection: &str,
    id: &str,
    token: Option<String>,
    within: Duration,
) -> Option<Option<Vec<u8>>> {
    let deadline = std::time::Instant::now() + within;
    let request = Request::Get {
        collection: collection.into(),
        id: id.into(),
        consistency: Consistency::Session(token),
    };
    while std::time::Instant::now() < deadline {
        if let Ok(Response::Value { value, .. }) = client.call(request.clone()).await {
            return Some(value);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// A node's configuration `text` with regions: its own (`region = ...` at the top) and each
/// peer's, by node id.
pub(crate) fn with_regions(text: &str, region_of: impl Fn(u64) -> &'static str) -> String {
    use std::fmt::Write as _;
    let id_of = |line: &str, key: &str| line.strip_prefix(key).and_then(|v| v.trim().parse::<u64>().ok());
    let own = text.lines().find_map(|l| id_of(l, "node_id = ")).expect("a node_id line");
    let mut out = format!("region = \"{}\"\n", region_of(own));
    let mut in_peer = false;
    for line in text.lines() {
        out.push_str(line);
        out.push('\n');
        if line.starts_with('[') {
            in_peer = line == "[[peers]]";
        }
        if in_peer && let Some(id) = id_of(line, "id = ") {
            let _ = writeln!(out, "region = \"{}\"", region_of(id));
        }
    }
    out
}

/// The proxies between every ordered pair of nodes: `(i, j)` carries what node `i` sends
/// to node `j`.
pub(crate) struct Net {
    pub(crate) links: BTreeMap<(usize, usize), Proxy>,
}

impl Net {
    pub(crate) fn set_from(&self, node: usize, fault: Fault) {
        for ((from, _), p) in &self.links {
            if *from == node {
                p.set(fault);
            }
        }
    }

    pub(crate) fn set_to(&self, node: usize, fault: Fault) {
        for ((_, to), p) in &self.links {
            if *to == node {
                p.set(fault);
            }
        }
    }

    /// Both ways between `group` and everyone else.
    pub(crate) fn split(&self, group: &[usize], fault: Fault) {
        for ((from, to), p) in &self.links {
            if group.contains(from) != group.contains(to) {
                p.set(fault);
            }
        }
    }

    /// Both ways between nodes `a` and `b`.
    pub(crate) fn set_between(&self, a: usize, b: usize, fault: Fault) {
        for ((from, to), p) in &self.links {
            if (*from == a && *to == b) || (*from == b && *to == a) {
                p.set(fault);
            }
        }
    }

    pub(crate) fn all(&self, fault: Fault) {
        for p in self.links.values() {
            p.set(fault);
        }
    }

    pub(crate) fn cut(&self, node: usize) {
        for ((from, to), p) in &self.links {
            if *from == node || *to == node {
                p.cut();
            }
        }
    }
}

/// A cluster of `n` whose peer addresses are all proxies, each node's configuration
/// rewritten by `edit` first.
pub(crate) async fn start_proxied(n: u64, edit: impl Fn(String) -> String) -> (Cluster, Net) {
    start_proxied_with_env(n, edit, |_| Vec::new()).await
}

/// [`start_proxied`], node `i` started with the environment variables `env(i)`.
pub(crate) async fn start_proxied_with_env(
    n: u64,
    edit: impl Fn(String) -> String,
    env: impl Fn(usize) -> Vec<(String, String)>,
) -> (Cluster, Net) {
    let (dir, layout) = Cluster::layout(n, 0);
    let mut links = BTreeMap::new();
    for (i, from) in layout.nodes.iter().enumerate() {
        let mut text = std::fs::read_to_string(&from.config).unwrap();
        for (j, to) in layout.nodes.iter().enumerate() {
            if i == j {
                continue;
            }
            let proxy = Proxy::start(to.raft).await.unwrap();
            let real = format!("id = {}\nraft_addr = \"{}\"", to.id, to.raft);
            assert!(text.contains(&real), "node {}'s config lists node {}", from.id, to.id);
            text = text.replace(&real, &format!("id = {}\nraft_addr = \"{}\"", to.id, proxy.addr()));
            links.insert((i, j), proxy);
        }
        std::fs::write(&from.config, edit(text)).unwrap();
    }
    let cluster = tokio::task::block_in_place(|| Cluster::launch_with_env(dir, layout, n, env));
    (cluster, Net { links })
}
