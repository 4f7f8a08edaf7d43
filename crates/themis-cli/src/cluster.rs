//! Local clusters of `themis server` processes on 127.0.0.1: started in the background
//! (`themis cluster up`), described by `cluster.json` in their directory, stopped by
//! `themis cluster down`; and short-lived ones owned by the demo and the bench.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use themis_node::LocalCluster;

/// The description file a cluster directory holds.
pub const CLUSTER_FILE: &str = "cluster.json";

/// How long a node may take to start serving.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A node of a running local cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// Its node id.
    pub id: u64,
    /// Its process id.
    pub pid: u32,
    /// Its Raft address.
    pub raft: SocketAddr,
    /// Its client API address.
    pub client: SocketAddr,
    /// Its HTTP admin API address.
    pub admin: SocketAddr,
    /// Its configuration file.
    pub config: PathBuf,
    /// Its log file (stdout and stderr).
    pub log: PathBuf,
}

/// `cluster.json`: what `themis cluster up` started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterFile {
    /// The cluster CA certificate (PEM file).
    pub ca: PathBuf,
    /// The acknowledgement mode it started with.
    pub mode: String,
    /// Its nodes.
    pub nodes: Vec<NodeEntry>,
}

impl ClusterFile {
    /// Reads `dir/cluster.json`.
    pub fn load(dir: &Path) -> Result<ClusterFile, String> {
        let path = dir.join(CLUSTER_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "{}: {e} (is there a cluster started with `themis cluster up --dir {}`?)",
                path.display(),
                dir.display()
            )
        })?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Writes `dir/cluster.json`.
    pub fn save(&self, dir: &Path) -> Result<(), String> {
        let path = dir.join(CLUSTER_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The CA certificate's PEM text.
    pub fn ca_pem(&self) -> Result<String, String> {
        std::fs::read_to_string(&self.ca).map_err(|e| format!("{}: {e}", self.ca.display()))
    }

    /// The admin credential beside the CA (`client-admin.pem` and `.key`, which
    /// `themis cluster up` writes).
    pub fn credentials(&self) -> Result<themis_node::Credentials, String> {
        let dir = self.ca.parent().unwrap_or(Path::new("."));
        themis_node::Credentials::admin_from_dir(dir)
    }
}

/// Whether process `pid` is running (a zombie is not).
#[must_use]
pub fn alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else { return false };
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None).is_err() {
        return false;
    }
    // /proc/<pid>/stat: "pid (comm) S ..."; the state follows the last ')'.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .is_none_or(|zombie| !zombie)
}

/// Starts `exe server --config config` with its output in `log`, and waits until it
/// serves (its "listening" line) or fails (its log's last lines in the error).
pub fn spawn_node(exe: &Path, config: &Path, log: &Path, quiet: bool) -> Result<Child, String> {
    let out = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| format!("{}: {e}", log.display()))?;
    let mut child = Command::new(exe)
        .arg("server")
        .arg("--config")
        .arg(config)
        .env("THEMIS_LOG", if quiet { "error" } else { "info" })
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("start {}: {e}", exe.display()))?;
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.lines().any(|l| l.contains(" listening: ")) {
            return Ok(child);
        }
        if let Ok(Some(status)) = child.try_wait() {
            let tail: Vec<&str> = text.lines().rev().take(3).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(format!("the node for {} exited ({status}): {}", config.display(), tail.join(" / ")));
        }
        if started.elapsed() > START_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("the node for {} did not start within {START_TIMEOUT:?}", config.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Child processes killed (SIGKILL) when dropped: the demo's and the bench's clusters.
#[derive(Debug, Default)]
pub struct Procs(pub Vec<Option<Child>>);

impl Procs {
    /// Kills node `i` with SIGKILL and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.0.get_mut(i).and_then(Option::take) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for i in 0..self.0.len() {
            self.kill(i);
        }
    }
}

/// Writes a `nodes`-node cluster layout in `dir` and starts every node; the processes
/// are returned (the caller decides whether they outlive it).
pub fn start(
    exe: &Path,
    dir: &Path,
    nodes: u64,
    mode: &str,
    quiet: bool,
) -> Result<(ClusterFile, Vec<Child>), String> {
    if !(1..=9).contains(&nodes) {
        return Err(format!("--nodes {nodes}: a local cluster has 1 to 9 nodes"));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if let Ok(existing) = ClusterFile::load(dir) {
        let running: Vec<String> =
            existing.nodes.iter().filter(|n| alive(n.pid)).map(|n| n.pid.to_string()).collect();
        if !running.is_empty() {
            return Err(format!(
                "a cluster is already running in {} (pids {}); stop it with `themis cluster down --dir {}`",
                dir.display(),
                running.join(", "),
                dir.display()
            ));
        }
    }
    let layout = LocalCluster::write(dir, "themis", nodes, 0, mode)?;
    let (file, mut children) = launch(exe, &layout, mode, quiet)?;
    // Every node started: hand the processes over instead of killing them.
    let children = std::mem::take(&mut children.0).into_iter().flatten().collect();
    Ok((file, children))
}

/// Starts every node of a layout written by [`LocalCluster::write`] (whose configurations
/// the caller may have edited) and writes its `cluster.json`. The processes are killed if
/// one fails to start, and when the returned [`Procs`] is dropped.
pub fn launch(
    exe: &Path,
    layout: &LocalCluster,
    mode: &str,
    quiet: bool,
) -> Result<(ClusterFile, Procs), String> {
    let dir = &layout.dir;
    let mut children = Procs::default();
    let mut entries = Vec::new();
    for node in &layout.nodes {
        let log = dir.join(format!("node-{}.log", node.id));
        let child = spawn_node(exe, &node.config, &log, quiet)?;
        entries.push(NodeEntry {
            id: node.id,
            pid: child.id(),
            raft: node.raft,
            client: node.client,
            admin: node.admin,
            config: node.config.clone(),
            log,
        });
        children.0.push(Some(child));
    }
    let file = ClusterFile { ca: dir.join("certs").join("ca.pem"), mode: mode.to_string(), nodes: entries };
    file.save(dir)?;
    Ok((file, children))
}

/// Stops every node of the cluster in `dir`: SIGTERM, then SIGKILL after `grace`.
/// Returns the ids of the nodes that were running.
pub fn stop(dir: &Path, grace: Duration) -> Result<Vec<u64>, String> {
    use nix::sys::signal::{Signal, kill};
    let file = ClusterFile::load(dir)?;
    let pid = |p: u32| nix::unistd::Pid::from_raw(i32::try_from(p).unwrap_or(i32::MAX));
    let running: Vec<&NodeEntry> = file.nodes.iter().filter(|n| alive(n.pid)).collect();
    for node in &running {
        let _ = kill(pid(node.pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while running.iter().any(|n| alive(n.pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for node in running.iter().filter(|n| alive(n.pid)) {
        let _ = kill(pid(node.pid), Signal::SIGKILL);
    }
    Ok(running.iter().map(|n| n.id).collect())
}
