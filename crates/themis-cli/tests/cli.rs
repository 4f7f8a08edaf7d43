//! The `themis` binary end to end: every subcommand's happy path and its bad-input path,
//! against real node processes where it talks to a cluster.

use std::path::Path;
use std::process::Output;

use assert_cmd::Command;

fn themis() -> Command {
    let mut cmd = Command::cargo_bin("themis").unwrap();
    for var in ["THEMIS_ADDR", "THEMIS_CA", "THEMIS_DIR"] {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs `themis args`; a command that has not ended after two minutes (a follow command
/// waiting for events that never come) is killed, so the test fails instead of hanging.
fn run(args: &[&str]) -> Output {
    themis().args(args).timeout(std::time::Duration::from_mins(2)).output().unwrap()
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[track_caller]
fn ok(args: &[&str]) -> String {
    let out = run(args);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "themis {args:?}: {}\n{stdout}\n{stderr}", out.status);
    stdout
}

/// Runs a command that must fail with `code`, one line on stderr containing `needle`.
#[track_caller]
fn fails(args: &[&str], code: i32, needle: &str) {
    let out = run(args);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(code), "themis {args:?}: {stdout}\n{stderr}");
    assert!(stderr.contains(needle), "themis {args:?}: wanted {needle:?} in {stderr}");
}

#[test]
fn every_command_has_help_with_an_example() {
    for args in [
        vec![],
        vec!["demo"],
        vec!["server"],
        vec!["cluster", "up"],
        vec!["cluster", "down"],
        vec!["cluster", "status"],
        vec!["put"],
        vec!["get"],
        vec!["delete"],
        vec!["status"],
        vec!["certs"],
        vec!["token"],
        vec!["bench"],
        vec!["doctor", "validate-wal"],
        vec!["cdc", "tail"],
        vec!["slot", "create"],
        vec!["slot", "list"],
        vec!["slot", "read"],
        vec!["slot", "advance"],
        vec!["slot", "pause"],
        vec!["slot", "resume"],
        vec!["slot", "drop"],
        vec!["ddl"],
        vec!["subscribe"],
        vec!["archive", "status"],
        vec!["archive", "list"],
        vec!["archive", "prune"],
        vec!["archive", "verify"],
        vec!["restore"],
        vec!["tier", "set"],
        vec!["tier", "clear"],
        vec!["tier", "list"],
        vec!["staleness"],
        vec!["cascade", "set"],
        vec!["cascade", "clear"],
        vec!["cascade", "list"],
        vec!["link", "create"],
        vec!["link", "list"],
        vec!["link", "status"],
        vec!["link", "drop"],
        vec!["link", "conflicts"],
    ] {
        let mut args = args.clone();
        args.push("--help");
        let help = ok(&args);
        assert!(help.contains("Example"), "themis {args:?} has no example:\n{help}");
    }
    fails(&["frobnicate"], 2, "unrecognized subcommand");
}

#[test]
fn certs_writes_a_ca_and_node_certificates_and_refuses_bad_counts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let stdout = ok(&["certs", "--out", out.to_str().unwrap(), "--nodes", "3", "--cluster", "prod"]);
    assert!(stdout.contains("node-3"), "{stdout}");
    for file in [
        "ca.pem",
        "ca.key",
        "node-1.pem",
        "node-1.key",
        "node-3.pem",
        "node-3.key",
        "node-3-web.pem",
        "node-3-web.key",
        "client-admin.pem",
        "client-admin.key",
    ] {
        let body = std::fs::read_to_string(out.join(file)).unwrap();
        assert!(body.contains("-----BEGIN"), "{file}");
    }
    fails(&["certs", "--out", out.to_str().unwrap(), "--nodes", "0"], 2, "--nodes");
    fails(&["certs", "--out", "/proc/themis-cannot/x", "--nodes", "1"], 1, "themis: /proc/themis-cannot/x");
}

fn write_wal(dir: &Path, n: u64) {
    use themis_replication::wal::{NewEntry, Wal, WalConfig};
    let config = WalConfig { segment_bytes: 8192, max_record_bytes: 4096, ..WalConfig::default() };
    let (wal, _) = Wal::open(dir, config).unwrap();
    for i in 0..n {
        let payload = bytes::Bytes::from(format!("{{\"n\":{i},\"pad\":\"{}\"}}", "p".repeat(100)));
        wal.append(&[NewEntry::data(themis_replication::clock::Timestamp::ZERO, payload)]).unwrap();
    }
}

#[test]
fn doctor_validate_wal_reports_each_problem_and_its_exit_code_says_healthy_or_not() {
    let dir = tempfile::tempdir().unwrap();
    // A node data directory: the WAL lives in raft/wal.
    let wal = dir.path().join("raft").join("wal");
    std::fs::create_dir_all(&wal).unwrap();
    write_wal(&wal, 200);
    let stdout = ok(&["doctor", "validate-wal", "--dir", dir.path().to_str().unwrap()]);
    assert!(stdout.contains("200 records (LSN 1 to 200)") && stdout.contains("healthy"), "{stdout}");

    let mut segments: Vec<_> = std::fs::read_dir(&wal).unwrap().map(|e| e.unwrap().path()).collect();
    segments.sort();
    let first = &segments[0];
    let mut bytes = std::fs::read(first).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(first, bytes).unwrap();
    let out = run(&["doctor", "validate-wal", "--dir", wal.to_str().unwrap()]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let problem = stdout.lines().find(|l| l.starts_with("problem:")).expect("a problem line");
    assert!(
        problem.contains(&first.display().to_string())
            && problem.contains("offset")
            && problem.contains("LSN"),
        "{problem}"
    );
    assert!(stdout.contains("refuses to open it"), "{stdout}");
    // One segment at a time: the damaged one fails, the next is healthy; as JSON too.
    let id = |p: &Path| {
        themis_replication::wal::segment::parse_file_name(p.file_name().unwrap().to_str().unwrap()).unwrap()
    };
    let wal_dir = wal.to_str().unwrap();
    let out =
        run(&["doctor", "validate-wal", "--dir", wal_dir, "--segment", &id(first).to_string(), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (report["segments"].as_u64(), report["healthy"].as_bool()),
        (Some(1), Some(false)),
        "{report}"
    );
    assert_eq!(report["problems"].as_array().unwrap().len(), 1, "{report}");
    ok(&["doctor", "validate-wal", "--dir", wal_dir, "--segment", &id(&segments[1]).to_string()]);
    fails(&["doctor", "validate-wal", "--dir", wal_dir, "--segment", "999"], 1, "no such segment");

    fails(&["doctor", "validate-wal", "--dir", "/nonexistent/themis"], 1, "not a directory");
    let empty = tempfile::tempdir().unwrap();
    fails(&["doctor", "validate-wal", "--dir", empty.path().to_str().unwrap()], 1, "no WAL segments");
    fails(&["doctor", "validate-wal"], 2, "--dir");
}

#[test]
fn server_with_a_bad_config_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "node_id = 1\ndata_dir = \"{}\"\nraft_addr = \"127.0.0.1:0\"\nclient_addr = \"127.0.0.1:0\"\ninsecure_plaintext = true\n\
             [replication]\nmode = \"sometimes\"\n[[peers]]\nid = 1\nraft_addr = \"127.0.0.1:1\"\nclient_addr = \"127.0.0.1:2\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    fails(&["server", "--config", config.to_str().unwrap()], 2, "replication.mode = \"sometimes\"");
    fails(&["server", "--config", "/nonexistent.toml"], 2, "/nonexistent.toml");
}

#[test]
fn commands_without_a_cluster_say_how_to_name_one() {
    fails(&["get", "c", "k"], 1, "no nodes given: use --dir DIR");
    fails(&["put", "c", "k", "{}", "--addr", "127.0.0.1:9"], 1, "--ca FILE is required");
    let dir = tempfile::tempdir().unwrap();
    fails(&["status", "--dir", dir.path().to_str().unwrap()], 1, "cluster.json");
    fails(&["cluster", "down", "--dir", dir.path().to_str().unwrap()], 1, "cluster.json");
    fails(&["get", "c", "k", "--addr", "not-an-address"], 2, "--addr");
    fails(&["bench", "--clients", "0"], 2, "--clients");
    fails(&["bench", "--conns", "0"], 2, "--conns");
    fails(&["bench", "--duration", "0.1"], 2, "seconds from 1 to 3600");
    fails(&["demo", "--seconds", "0"], 2, "seconds from 1 to 3600");
    fails(&["demo", "--nodes", "2"], 2, "--nodes");
}

#[test]
fn put_refuses_a_document_above_the_limit_before_connecting() {
    use themis_node::limits::MAX_DOCUMENT_BYTES;
    // On stdin: at most one byte past the limit is read; nothing is sent (no node listens
    // at the address, and the message is about the size, not the connection).
    let mut doc = vec![b'1'; MAX_DOCUMENT_BYTES + 4096];
    doc[0] = b'[';
    let out = themis()
        .args(["put", "c", "big", "-", "--addr", "127.0.0.1:9", "--ca", "/nonexistent/ca.pem"])
        .write_stdin(doc)
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("the largest document a node accepts is {MAX_DOCUMENT_BYTES} bytes"))
            && stderr.contains("on stdin is larger"),
        "{stderr}"
    );
}

/// Stops the cluster in a directory when dropped (a failed test leaves no processes).
struct Up<'a>(&'a str);

impl Drop for Up<'_> {
    fn drop(&mut self) {
        let _ = run(&["cluster", "down", "--dir", self.0]);
    }
}

/// `themis tier`, `themis staleness`, `themis cascade` and `themis put --write-concern` on a
/// running cluster.
fn tiers_and_staleness(dir: &str) {
    assert!(ok(&["tier", "set", "payments", "tier1", "--dir", dir]).contains("payments is in tier1"));
    let list = ok(&["tier", "list", "--dir", dir]);
    assert!(list.contains("payments") && list.contains("write concern all"), "{list}");
    fails(&["tier", "set", "payments", "gold", "--dir", dir], 1, "expected one of tier1, tier2, tier3");
    assert!(ok(&["tier", "clear", "payments", "--dir", dir]).contains("follows the cluster's mode"));
    assert!(ok(&["tier", "list", "--dir", dir]).contains("no collection has a tier"));
    let written = ok(&["put", "payments", "p1", "{}", "--write-concern", "all", "--dir", dir]);
    assert!(written.contains("written payments/p1"), "{written}");
    fails(&["put", "payments", "p2", "{}", "--write-concern", "most", "--dir", dir], 2, "one, majority, all");
    let report = ok(&["staleness", "--json", "--dir", dir]);
    assert!(report.contains("\"staleness_ms\""), "{report}");
    // Cascading: three voters, no read replica; a voter or a stranger is refused.
    assert!(ok(&["cascade", "list", "--dir", dir]).contains("no cascaded replica"));
    assert!(ok(&["cascade", "list", "--json", "--dir", dir]).contains("\"max_hops\": 5"));
    fails(&["cascade", "set", "2", "--upstream", "3", "--dir", dir], 1, "node 2 is a voter");
    fails(&["cascade", "set", "9", "--upstream", "2", "--dir", dir], 1, "node 9 is not a member");
    // Links: none, and this cluster (active-active off) refuses one.
    assert!(ok(&["link", "list", "--dir", dir]).contains("no link"));
    assert!(ok(&["link", "conflicts", "--dir", dir]).contains("no conflict recorded"));
    let ca = format!("{dir}/certs/ca.pem");
    fails(
        &[
            "link",
            "create",
            "x",
            "--remote-cluster",
            "east",
            "--addrs",
            "127.0.0.1:1",
            "--ca-file",
            &ca,
            "--token-file",
            &ca,
            "--dir",
            dir,
        ],
        1,
        "[active_active] enabled",
    );
    fails(&["link", "status", "nope", "--dir", dir], 1, "no link");
}

/// `themis get` at each level on a running cluster, and each bad level flag refused.
fn reads_at_every_level(dir: &str, token: &str) {
    assert!(token.starts_with("s1."), "{token}");
    for level in [
        vec!["--consistency", "bounded", "--max-staleness-ms", "5000"],
        vec!["--consistency", "bounded", "--max-versions", "100"],
        vec!["--consistency", "prefix"],
        vec!["--consistency", "eventual"],
        vec!["--consistency", "session"],
        vec!["--consistency", "eventual", "--strategy", "p2c"],
        vec!["--consistency", "session", "--strategy", "least-connections"],
        vec!["--quorum", "2", "--repair"],
    ] {
        let args: Vec<&str> =
            ["get", "users", "ada"].into_iter().chain(level.iter().copied()).chain(["--dir", dir]).collect();
        assert_eq!(ok(&args).trim(), r#"{"name":"Ada"}"#, "{level:?}");
    }
    for (args, code, needle) in [
        (vec!["--consistency", "bounded", "--max-staleness-ms", "-5"], 2, "cannot be negative"),
        (vec!["--consistency", "linear"], 2, "invalid value 'linear'"),
        (vec!["--token", token], 1, "--token goes with --consistency session"),
        (vec!["--consistency", "prefix", "--max-staleness-ms", "5"], 1, "go with --consistency bounded"),
        (vec!["--consistency", "session", "--token", "s1.1.1.local.0.0000000000000000"], 1, "session token"),
        (vec!["--strategy", "fastest"], 2, "round-robin, least-connections"),
        (vec!["--repair"], 2, "--quorum"),
        (vec!["--quorum", "4"], 1, "1 <= R <= N"),
    ] {
        let all: Vec<&str> =
            ["get", "users", "ada"].into_iter().chain(args.iter().copied()).chain(["--dir", dir]).collect();
        fails(&all, code, needle);
    }
}

#[test]
fn a_cluster_comes_up_serves_documents_benchmarks_and_goes_down() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    let dir = dir.to_str().unwrap();
    let stdout = ok(&["cluster", "up", "--nodes", "3", "--dir", dir]);
    let _up = Up(dir);
    assert!(stdout.contains("cluster of 3 up"), "{stdout}");
    fails(&["cluster", "up", "--nodes", "3", "--dir", dir], 1, "already running");

    // Documents through any node, in every consistency.
    let written = ok(&["put", "users", "ada", r#"{"name":"Ada"}"#, "--dir", dir]);
    let token: String =
        written.split("session token ").nth(1).unwrap().trim_end_matches([')', '\n']).to_string();
    assert_eq!(ok(&["get", "users", "ada", "--dir", dir]).trim(), r#"{"name":"Ada"}"#);
    let session = ok(&["get", "users", "ada", "--consistency", "session", "--token", &token, "--dir", dir]);
    assert_eq!(session.trim(), r#"{"name":"Ada"}"#);
    reads_at_every_level(dir, &token);
    fails(&["get", "users", "nobody", "--dir", dir], 1, "users/nobody: not found");
    fails(&["put", "users", "bad", "{not json", "--dir", dir], 1, "not JSON");
    let piped = themis()
        .args(["put", "users", "stdin", "-", "--dir", dir])
        .write_stdin(r#"{"from":"stdin"}"#)
        .output()
        .unwrap();
    assert!(piped.status.success(), "{:?}", text(&piped));

    // Credentials: none is refused; a read token reads but may not write; a client
    // certificate issued with role write writes.
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(dir).join("cluster.json")).unwrap()).unwrap();
    let addr = file["nodes"][0]["client"].as_str().unwrap().to_string();
    let certs = Path::new(dir).join("certs");
    let ca = certs.join("ca.pem");
    let ca = ca.to_str().unwrap();
    fails(&["get", "users", "stdin", "--addr", &addr, "--ca", ca], 1, "unauthenticated");
    let read = ok(&["token", "--dir", dir, "--name", "dash", "--role", "read"]);
    let read = read.trim();
    assert_eq!(
        ok(&["get", "users", "stdin", "--dir", dir, "--auth-token", read]).trim(),
        r#"{"from":"stdin"}"#
    );
    fails(
        &["put", "users", "x", "{}", "--dir", dir, "--auth-token", read],
        1,
        "dash has role read; this needs role write",
    );
    let issued = ok(&["certs", "--out", certs.to_str().unwrap(), "--client", "app", "--role", "write"]);
    assert!(issued.contains("CN=app, OU=write"), "{issued}");
    let (cert, key) = (certs.join("client-app.pem"), certs.join("client-app.key"));
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    assert!(
        ok(&["put", "users", "x", "{}", "--addr", &addr, "--ca", ca, "--cert", cert, "--key", key])
            .contains("written users/x")
    );
    fails(&["token", "--dir", dir, "--name", "x", "--role", "root"], 2, "--role");
    fails(&["certs", "--out", certs.to_str().unwrap(), "--client", "x"], 2, "--role");
    assert!(ok(&["delete", "users", "ada", "--dir", dir]).contains("deleted users/ada"));
    fails(&["get", "users", "ada", "--consistency", "strong", "--dir", dir], 1, "not found");

    // Status: one leader among the nodes, as text and JSON.
    let status = ok(&["status", "--dir", dir]);
    assert_eq!(status.matches("Leader term").count(), 1, "{status}");
    let json: serde_json::Value = serde_json::from_str(&ok(&["status", "--json", "--dir", dir])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3);
    let cluster_status = ok(&["cluster", "status", "--dir", dir]);
    assert_eq!(cluster_status.lines().count(), 3, "{cluster_status}");

    // A short bench with a mode change, as JSON.
    let report = ok(&[
        "bench",
        "--clients",
        "8",
        "--conns",
        "2",
        "--duration",
        "2",
        "--value-bytes",
        "128",
        "--mode",
        "sync",
        "--json",
        "--dir",
        dir,
    ]);
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert!(report["writes"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["conns"], 2, "{report}");
    assert!(report["writes_per_sec"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["latency_ms"]["p99"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["lag_ms"]["p99"].is_number(), "{report}");
    assert!(ok(&["status", "--dir", dir]).contains("mode SYNC"), "the bench's mode is the cluster's");
    assert_eq!(report["nodes"].as_array().unwrap().len(), 3, "each local node's resource use: {report}");
    open_loop_bench(dir);

    check_cdc_tail(dir);
    tiers_and_staleness(dir);

    // Down: every process ends; the commands then say no node answers.
    let down = ok(&["cluster", "down", "--dir", dir]);
    assert!(down.contains("stopped nodes [1, 2, 3]"), "{down}");
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(dir).join("cluster.json")).unwrap()).unwrap();
    for node in file["nodes"].as_array().unwrap() {
        let pid = u32::try_from(node["pid"].as_u64().unwrap()).unwrap();
        assert!(!themis_cli::cluster::alive(pid), "pid {pid} still runs");
    }
    assert!(ok(&["cluster", "status", "--dir", dir]).matches("stopped").count() == 3);
    fails(&["status", "--dir", dir], 1, "no node answered");
}

/// The open loop sends at its rate, whatever the cluster does, and says so.
fn open_loop_bench(dir: &str) {
    let open = ok(&["bench", "--rate", "300", "--duration", "2", "--json", "--dir", dir]);
    let open: serde_json::Value = serde_json::from_str(&open).unwrap();
    assert_eq!(open["offered_rate"], 300, "{open}");
    let writes = open["writes"].as_u64().unwrap();
    assert!((500..=700).contains(&writes), "about 600 writes in 2 s at 300/s: {open}");
    let node = &open["nodes"][0];
    assert!(
        node["cpu_percent"].as_f64().unwrap() > 0.0 && node["rss_mib_max"].as_f64().unwrap() > 1.0,
        "{open}"
    );
    fails(&["bench", "--rate", "0", "--dir", dir], 2, "--rate");
}

/// The change stream of the cluster `a_cluster_comes_up...` wrote to: every write in log
/// order, as summaries and as Debezium-shaped JSON; a filter narrows it; bad filters and
/// scopes are refused.
fn check_cdc_tail(dir: &str) {
    let tail =
        ok(&["cdc", "tail", "--from-lsn", "0", "--limit", "4", "--collections", "users", "--dir", dir]);
    let lines: Vec<&str> = tail.lines().collect();
    assert!(lines[0].ends_with(r#"insert users/ada {"name":"Ada"}"#), "{tail}");
    assert!(lines[1].ends_with(r#"insert users/stdin {"from":"stdin"}"#), "{tail}");
    assert!(lines[2].ends_with("insert users/x {}"), "{tail}");
    assert!(lines[3].ends_with("delete users/ada"), "{tail}");
    let json_tail =
        ok(&["cdc", "tail", "--from-lsn", "0", "--limit", "1", "--ops", "delete", "--json", "--dir", dir]);
    let event: serde_json::Value = serde_json::from_str(json_tail.trim()).unwrap();
    assert_eq!((event["op"].as_str(), event["source"]["id"].as_str()), (Some("d"), Some("ada")), "{event}");
    fails(&["cdc", "tail", "--collections", "users_{a", "--dir", dir], 1, "position 6");
    fails(&["cdc", "tail", "--ops", "upsert", "--dir", dir], 1, "unknown op");
    let scoped =
        ok(&["token", "--dir", dir, "--name", "acme", "--role", "read", "--collections", "tenant_acme.*"]);
    fails(&["cdc", "tail", "--collections", "users", "--dir", dir, "--auth-token", scoped.trim()], 1, "403");
    fails(
        &["token", "--dir", dir, "--name", "x", "--role", "read", "--collections", "a{"],
        1,
        "--collections",
    );
}

#[test]
fn the_demo_in_short_mode_fails_over_and_verifies_every_acknowledged_write() {
    let stdout = ok(&["demo", "--seconds", "3", "--clients", "16"]);
    assert!(stdout.contains("SIGKILL node"), "{stdout}");
    assert!(stdout.contains("took over"), "{stdout}");
    assert!(
        stdout.contains("writes/s") && stdout.contains("p99") && stdout.contains("compression ratio"),
        "{stdout}"
    );
    assert!(stdout.contains("verified: zero acknowledged writes lost across the failover"), "{stdout}");
}

#[test]
fn the_demo_can_leave_its_cluster_running_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("kept");
    let dir = dir.to_str().unwrap();
    let stdout = ok(&["demo", "--seconds", "2", "--clients", "4", "--keep", dir]);
    let _up = Up(dir);
    assert!(stdout.contains("verified: zero acknowledged writes lost"), "{stdout}");
    assert!(stdout.contains("restarted; the cluster keeps running"), "{stdout}");
    // All three nodes run (the killed one restarted) and serve the demo's documents.
    let status = ok(&["cluster", "status", "--dir", dir]);
    assert_eq!(status.matches("stopped").count(), 0, "{status}");
    assert!(ok(&["get", "demo", "w0-0", "--dir", dir]).contains("\"writer\":0"));
    assert!(ok(&["cluster", "down", "--dir", dir]).contains("stopped nodes [1, 2, 3]"));
}

/// Slots and DDL from the command line, and a logical replica (`themis subscribe`) that is
/// killed with SIGKILL mid-stream, restarted, and ends equal to the source's slice.
#[test]
#[allow(clippy::too_many_lines, reason = "one cluster for every slot command, in order")]
fn slots_ddl_and_a_logical_replica_that_survives_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    let dir = dir.to_str().unwrap();
    ok(&["cluster", "up", "--nodes", "3", "--dir", dir]);
    let _up = Up(dir);
    assert!(
        ok(&["ddl", "CREATE COLLECTION orders", "--dir", dir]).contains("CREATE COLLECTION orders at LSN")
    );
    fails(&["ddl", "CREATE TABLE orders", "--dir", dir], 1, "expected CREATE");
    ok(&["slot", "create", "audit", "--plugin", "avro", "--dir", dir]);
    for i in 0..30u32 {
        let tenant = if i.is_multiple_of(3) { "globex" } else { "acme" };
        ok(&[
            "put",
            "orders",
            &format!("o{i:02}"),
            &format!(r#"{{"tenant":"{tenant}","i":{i}}}"#),
            "--dir",
            dir,
        ]);
    }
    let created = ok(&[
        "slot",
        "create",
        "tenant_acme",
        "--include",
        "orders",
        "--predicate",
        "tenant == 'acme'",
        "--initial-sync",
        "--dir",
        dir,
    ]);
    assert!(created.contains("after a snapshot"), "{created}");
    fails(&["slot", "create", "Bad!", "--dir", dir], 1, "a-z");
    fails(&["slot", "create", "x", "--predicate", "tenant = 1", "--dir", dir], 1, "column 8");
    fails(&["slot", "read", "nope", "--dir", dir], 1, "no slot named \"nope\"");
    let listed = ok(&["slot", "list", "--dir", dir]);
    assert!(
        listed.contains("tenant_acme") && listed.contains("initial sync") && listed.contains("avro"),
        "{listed}"
    );
    let read = run(&["slot", "read", "audit", "--max", "3", "--wait-ms", "1000", "--dir", dir]);
    assert!(read.status.success(), "{:?}", text(&read));
    assert_eq!(text(&read).0.lines().count(), 3, "three base64 Avro records");
    fails(
        &["subscribe", "--slot", "audit", "--data-dir", tmp.path().join("x").to_str().unwrap(), "--dir", dir],
        1,
        "a replica applies a json slot",
    );
    ok(&["slot", "pause", "audit", "--dir", dir]);
    fails(&["slot", "read", "audit", "--dir", dir], 1, "paused");
    ok(&["slot", "resume", "audit", "--dir", dir]);
    ok(&["slot", "drop", "audit", "--dir", dir]);
    fails(&["slot", "drop", "audit", "--dir", dir], 1, "no slot");

    // The replica: started, killed mid-stream while writes go on, started again.
    let replica = tmp.path().join("replica");
    let replica = replica.to_str().unwrap();
    let subscribe = |name: &str, until_idle: bool| {
        let log = std::fs::File::create(tmp.path().join(name)).unwrap();
        let mut args =
            vec!["subscribe", "--slot", "tenant_acme", "--data-dir", replica, "--max", "7", "--source", dir];
        if until_idle {
            args.push("--until-idle");
        }
        std::process::Command::new(assert_cmd::cargo::cargo_bin("themis"))
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    };
    let slot_state = || -> serde_json::Value {
        let listed: serde_json::Value =
            serde_json::from_str(&ok(&["slot", "list", "--json", "--dir", dir])).unwrap();
        listed["slots"][0].clone()
    };
    let put = |i: u32| {
        let tenant = if i.is_multiple_of(3) { "globex" } else { "acme" };
        let doc = format!(r#"{{"tenant":"{tenant}","i":{i}}}"#);
        ok(&["put", "orders", &format!("o{i:02}"), &doc, "--dir", dir]);
    };
    let mut child = subscribe("first.out", false);
    (30..45).for_each(put);
    // Killed once it has applied and confirmed the snapshot, with changes still coming.
    for _ in 0..300 {
        if slot_state()["snapshot_lsn"].is_null() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let first = std::fs::read_to_string(tmp.path().join("first.out")).unwrap();
    assert!(slot_state()["snapshot_lsn"].is_null(), "the snapshot was never confirmed: {first}");
    assert!(first.contains("replica of slot tenant_acme"), "{first}");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    (45..60).for_each(put);
    ok(&["put", "orders", "o01", r#"{"tenant":"globex","moved":true}"#, "--dir", dir]);
    ok(&["delete", "orders", "o02", "--dir", dir]);
    // Restarted, it applies the rest and stops once idle (for scripts) ...
    let idle = subscribe("second.out", true).wait_with_output().unwrap();
    let second = std::fs::read_to_string(tmp.path().join("second.out")).unwrap();
    assert!(idle.status.success() && second.contains("confirmed LSN"), "{second}");
    // ... and started once more it serves its store, which holds exactly acme's orders as
    // the source has them. (Without before-images an order moved to another tenant stays
    // on the replica as it was; a delete reaches it.)
    let mut serving = subscribe("third.out", false);
    for _ in 0..300 {
        if std::fs::read_to_string(tmp.path().join("third.out")).unwrap().contains("serving at") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for i in 0..60 {
        let id = format!("o{i:02}");
        let source = run(&["get", "orders", &id, "--dir", dir]);
        let copy = run(&["get", "orders", &id, "--consistency", "strong", "--dir", replica]);
        let acme = i % 3 != 0;
        match i {
            1 => assert!(
                text(&copy).0.contains(r#""tenant":"acme""#),
                "o01 as the replica last saw it: {:?}",
                text(&copy)
            ),
            2 => assert!(text(&copy).1.contains("not found"), "o02 was deleted: {:?}", text(&copy)),
            _ if acme => {
                let parse = |out: &Output| serde_json::from_str::<serde_json::Value>(&text(out).0).ok();
                assert_eq!(parse(&copy), parse(&source), "{id}: {:?}", text(&copy));
            }
            _ => assert!(text(&copy).1.contains("not found"), "{id} is globex's: {:?}", text(&copy)),
        }
    }
    serving.kill().unwrap();
    serving.wait().unwrap();
    assert!(slot_state()["snapshot_lsn"].is_null(), "the initial sync was confirmed");
}

/// How far a restore from the archive of the node configured in `config` reaches.
fn archived_through(config: &str) -> u64 {
    let status = ok(&["archive", "status", "--config", config]);
    let after = status.split("restorable through LSN ").nth(1).unwrap();
    after.lines().next().unwrap().trim().parse().unwrap()
}

/// A 3-node cluster archiving to a directory: writes, the leader killed (SIGKILL), more writes;
/// the archive verifies with no gap or overlap; a restore to a time between two batches,
/// started as a node of its own, holds the first batch's documents exactly.
#[test]
#[allow(clippy::too_many_lines, reason = "one cluster, archived, failed over, restored, in order")]
fn an_archiving_cluster_survives_its_leader_and_restores_to_a_point_in_time() {
    use std::fmt::Write as _;
    use themis_cli::cluster::{launch, spawn_node};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    let archive = tmp.path().join("archive");
    let key = tmp.path().join("archive.key");
    std::fs::write(&key, "11".repeat(32)).unwrap();
    let layout = themis_node::LocalCluster::write(&dir, "pitr", 3, 0, "semi_sync").unwrap();
    let exe = assert_cmd::cargo::cargo_bin("themis");
    for node in &layout.nodes {
        // Snapshots every 16 entries: base backups come from real Raft snapshots.
        let mut text = std::fs::read_to_string(&node.config)
            .unwrap()
            .replace("[replication]\n", "[replication]\nsnapshot_entries = 16\n");
        let _ = write!(
            text,
            "\n[archive]\nurl = \"file://{}\"\nkey_file = \"{}\"\ntimeout_secs = 1\n",
            archive.display(),
            key.display()
        );
        std::fs::write(&node.config, text).unwrap();
    }
    let (_, mut procs) = launch(&exe, &layout, "semi_sync", true).unwrap();
    let d = dir.to_str().unwrap();
    let config = layout.nodes[1].config.to_str().unwrap().to_string();
    let put = |id: &str, v: u32| ok(&["put", "orders", id, &format!(r#"{{"v":{v}}}"#), "--dir", d]);
    let lsn_of = |out: String| -> u64 {
        out.split("at LSN ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap()
    };
    let archived = || archived_through(&config);
    let wait_archived = |lsn: u64| {
        for _ in 0..300 {
            if archived() >= lsn {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("the archive did not reach LSN {lsn}: {}", ok(&["archive", "status", "--config", &config]));
    };

    let mut last = 0;
    for i in 0..20 {
        last = lsn_of(put(&format!("o{i:02}"), 1));
    }
    wait_archived(last);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let between = std::time::SystemTime::now();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    for i in 10..30 {
        last = lsn_of(put(&format!("o{i:02}"), 2));
    }
    // The leader dies; the new one archives on from the manifest's end.
    let status: serde_json::Value = serde_json::from_str(&ok(&["status", "--json", "--dir", d])).unwrap();
    let leader = status.as_array().unwrap().iter().position(|s| s["status"]["role"] == "Leader").unwrap();
    procs.kill(leader);
    for i in 30..40 {
        last = lsn_of(put(&format!("o{i:02}"), 3));
    }
    let config = layout.nodes[(leader + 1) % 3].config.to_str().unwrap().to_string();
    let archived = || archived_through(&config);
    for _ in 0..300 {
        if archived() >= last {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(archived() >= last, "{}", ok(&["archive", "status", "--config", &config]));
    // The archive's state is in every node's status; no alert while it keeps up.
    let status: serde_json::Value = serde_json::from_str(&ok(&["status", "--json", "--dir", d])).unwrap();
    let live: Vec<&serde_json::Value> =
        status.as_array().unwrap().iter().filter(|n| n["archive"].is_object()).collect();
    assert_eq!(live.len(), 2, "{status}");
    for node in &live {
        assert!(node["archive"]["alert"].is_null(), "{node}");
    }
    // The leader knows the position at once; followers read the manifest every 10 s.
    let leading = live.iter().find(|n| n["status"]["role"] == "Leader").expect("a leader");
    assert!(leading["archive"]["archived_lsn"].as_u64().unwrap() >= last, "{leading}");
    let verified = ok(&["archive", "verify", "--config", &config]);
    assert!(
        verified.contains("healthy") && !verified.contains("NOT") && !verified.contains("GAP"),
        "{verified}"
    );
    assert!(ok(&["archive", "list", "--config", &config]).contains("base"));
    let pruned = ok(&["archive", "prune", "--dry-run", "--config", &config]);
    assert!(
        pruned.contains("oldest base backup kept") && !pruned.contains("delete"),
        "no policy keeps all: {pruned}"
    );

    // Restore to the time between the batches: a dry run, then a node of its own.
    let secs = between.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let time = themis_cli::pitr::rfc3339(u64::try_from(secs).unwrap());
    let dry = ok(&["restore", "--config", &config, "--to-time", &time, "--dry-run"]);
    assert!(dry.contains("20 documents") && dry.contains("nothing was written"), "{dry}");
    let restored = tmp.path().join("restored");
    let out =
        ok(&["restore", "--config", &config, "--to-time", &time, "--target-dir", restored.to_str().unwrap()]);
    assert!(out.contains("themis server --config"), "{out}");
    fails(&["restore", "--config", &config, "--target-dir", restored.to_str().unwrap()], 1, "not empty");
    let node_config = restored.join("node-1.toml");
    let log = restored.join("node.log");
    procs.0.push(Some(spawn_node(&exe, &node_config, &log, true).unwrap()));
    let node_text = std::fs::read_to_string(&node_config).unwrap();
    let client = node_text
        .lines()
        .find_map(|l| l.strip_prefix("client_addr = "))
        .unwrap()
        .trim_matches('"')
        .to_string();
    let certs = restored.join("certs");
    let (ca, cert, key) =
        (certs.join("ca.pem"), certs.join("client-admin.pem"), certs.join("client-admin.key"));
    let auth = [
        "--addr",
        client.as_str(),
        "--ca",
        ca.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    for i in 0..40 {
        let id = format!("o{i:02}");
        let mut args = vec!["get", "orders", &id, "--consistency", "strong"];
        args.extend_from_slice(&auth);
        let out = run(&args);
        if i < 20 {
            assert_eq!(text(&out).0.trim(), r#"{"v":1}"#, "{id}: {:?}", text(&out));
        } else {
            assert!(text(&out).1.contains("not found"), "{id} was written after the point: {:?}", text(&out));
        }
    }
    // The latest point, from the newest base backup (a Raft snapshot of the store).
    let latest = ok(&["restore", "--config", &config, "--dry-run"]);
    assert!(latest.contains("40 documents") && !latest.contains("base backup at LSN 0:"), "{latest}");
    let listed = ok(&["archive", "list", "--config", &config]);
    assert!(listed.matches("base ").count() >= 2, "{listed}");
    // A bad target is refused by name.
    fails(&["restore", "--config", &config, "--to-time", "yesterday", "--dry-run"], 1, "restore target");
}

/// An archive that cannot be written raises an alert in the node's status, and the node
/// serves writes meanwhile (its WAL is held until the archive takes it).
#[test]
fn a_failing_archive_raises_an_alert_while_writes_go_on() {
    use std::fmt::Write as _;
    use themis_cli::cluster::{Procs, spawn_node};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    let key = tmp.path().join("archive.key");
    std::fs::write(&key, "22".repeat(32)).unwrap();
    // A file where the archive's directory should be: every write fails.
    let blocked = tmp.path().join("not-a-directory");
    std::fs::write(&blocked, "x").unwrap();
    let layout = themis_node::LocalCluster::write(&dir, "failing", 1, 0, "async").unwrap();
    let node = &layout.nodes[0];
    let mut text = std::fs::read_to_string(&node.config).unwrap();
    let _ = write!(
        text,
        "\n[archive]\nurl = \"file://{}/archive\"\nkey_file = \"{}\"\ntimeout_secs = 1\n",
        blocked.display(),
        key.display()
    );
    std::fs::write(&node.config, text).unwrap();
    let exe = assert_cmd::cargo::cargo_bin("themis");
    let mut procs = Procs::default();
    procs.0.push(Some(spawn_node(&exe, &node.config, &dir.join("node.log"), true).unwrap()));
    let certs = dir.join("certs");
    let (ca, cert, key) =
        (certs.join("ca.pem"), certs.join("client-admin.pem"), certs.join("client-admin.key"));
    let client = node.client.to_string();
    let auth = [
        "--addr",
        client.as_str(),
        "--ca",
        ca.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    let mut put = vec!["put", "c", "k", "{}"];
    put.extend_from_slice(&auth);
    let mut alert = serde_json::Value::Null;
    for _ in 0..100 {
        ok(&put);
        let mut args = vec!["status", "--json"];
        args.extend_from_slice(&auth);
        let status: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
        alert = status[0]["archive"]["alert"].clone();
        if alert.is_string() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(alert.as_str().is_some_and(|a| a.starts_with("archiving fails")), "{alert}");
}

/// Runs `themis args` and returns its exit code and stdout.
fn code_of(args: &[&str]) -> (i32, String) {
    let out = run(args);
    (out.status.code().unwrap_or(-1), text(&out).0)
}

#[test]
fn doctor_checks_a_live_cluster_finds_a_diverged_replica_and_repairs_only_what_differs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    let dir = dir.to_str().unwrap();
    let faults = tmp.path().join("faults");
    std::fs::create_dir_all(&faults).unwrap();
    let up = themis()
        .env("THEMIS_FAULT_DIR", &faults)
        .args(["cluster", "up", "--nodes", "3", "--dir", dir])
        .output();
    assert!(up.unwrap().status.success());
    let _up = Up(dir);
    ok(&["put", "users", "first", "{}", "--dir", dir]);
    let (code, out) = code_of(&["doctor", "check", "--dir", dir]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("healthy (exit 0)") && out.contains("2 of 2 replicas hold the leader's"), "{out}");

    // A follower's store starts dropping every 5th write it applies.
    let status: serde_json::Value = serde_json::from_str(&ok(&["status", "--json", "--dir", dir])).unwrap();
    let leader =
        status.as_array().unwrap().iter().find(|s| s["status"]["role"] == "Leader").unwrap()["status"]["id"]
            .as_u64()
            .unwrap();
    let follower = if leader == 1 { 2 } else { 1 };
    std::fs::write(faults.join(format!("apply-skip-every.{follower}")), "5").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    ok(&["bench", "--clients", "4", "--conns", "2", "--duration", "2", "--value-bytes", "64", "--dir", dir]);
    std::fs::remove_file(faults.join(format!("apply-skip-every.{follower}"))).unwrap();

    let (code, out) = code_of(&["doctor", "check", "--json", "--dir", dir]);
    assert_eq!(code, 2, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["verdict"], "diverged", "{report}");
    let diverged = report["ranges"]["diverged"][follower.to_string()].as_array().unwrap().len();
    assert!(diverged > 0, "{report}");
    let other = 6 - leader - follower;
    assert_eq!(report["ranges"]["diverged"][other.to_string()].as_array().unwrap().len(), 0, "{report}");
    assert!(report["problems"][0].as_str().unwrap().contains(&format!("doctor repair --replica {follower}")));

    // Repair copies only the ranges that differ, and afterwards the check is clean.
    fails(&["doctor", "repair", "--replica", &leader.to_string(), "--dir", dir], 1, "leads");
    let (code, out) =
        code_of(&["doctor", "repair", "--replica", &follower.to_string(), "--json", "--dir", dir]);
    assert_eq!(code, 0, "{out}");
    let repaired: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(repaired["buckets_repaired"].as_u64().unwrap() as usize, diverged, "{repaired}");
    assert!(repaired["written"].as_u64().unwrap() > 0 && repaired["equal_after"] == true, "{repaired}");
    let (code, out) = code_of(&["doctor", "check", "--dir", dir]);
    assert_eq!(code, 0, "{out}");

    // Lag analysis: every replica's history from the leader, as text and JSON.
    let lag = ok(&["doctor", "analyze-lag", "--duration", "5m", "--dir", dir]);
    assert!(lag.contains(&format!("replica {follower}: avg")) && lag.contains("bottlenecks:"), "{lag}");
    let lag: serde_json::Value =
        serde_json::from_str(&ok(&["doctor", "analyze-lag", "--duration", "5m", "--json", "--dir", dir]))
            .unwrap();
    assert_eq!(lag["histories"].as_array().unwrap().len(), 2, "{lag}");
    fails(&["doctor", "analyze-lag", "--duration", "9d", "--dir", dir], 1, "1s to 7d");

    // With a node down the cluster is degraded, and exit 1 says so.
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(dir).join("cluster.json")).unwrap()).unwrap();
    let pid = file["nodes"][usize::try_from(other - 1).unwrap()]["pid"].as_i64().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let (code, out) = code_of(&["doctor", "check", "--no-data", "--dir", dir]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("unreachable"), "{out}");
}
