//! The five read levels and session tokens on real `themis-node` processes: what each
//! level returns on followers, tokens refused (forged, altered, expired, beyond the log)
//! without a hang, a replica cut off from its leader refusing bounded reads, and a leader
//! paused with `SIGSTOP` that never serves a stale strong read from its old lease.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Cluster, http, metric};
use nix::sys::signal::Signal;
use themis_node::{ClientError, Consistency, ErrorCode};
use themis_replication::geo::{SessionToken, TokenCodec};

fn now_ms() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

fn bad_request(result: Result<Option<Vec<u8>>, ClientError>) -> String {
    match result {
        Err(ClientError::Server { code: ErrorCode::BadRequest, message }) => message,
        other => panic!("expected a bad_request, got {other:?}"),
    }
}

/// Every node's configuration with a short token lifetime, nodes 1 and 2 in `us-east` and
/// node 3 in `eu-west`.
#[allow(clippy::needless_pass_by_value, reason = "the shape Cluster::start_with takes")]
fn geo(text: String) -> String {
    let text = common::with_regions(&text, |id| if id == 3 { "eu-west" } else { "us-east" });
    format!("{text}\n[geo]\nsession_token_ttl_ms = 2000\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_level_reads_on_followers_and_bad_tokens_are_refused_at_once() {
    let cluster = Cluster::start_with(3, 0, geo);
    let leader = cluster.leader().await;
    let writer = cluster.client(leader).await;
    writer.put("c", "k", b"{\"v\":1}").await.unwrap();
    let token = writer.session_token().expect("a write answers with a session token");
    let region = if cluster.nodes[leader].id == 3 { "eu-west" } else { "us-east" };
    assert!(token.starts_with("s1.") && token.contains(&format!(".{region}.")), "{token}");

    for f in (0..3).filter(|&i| i != leader) {
        let reader = cluster.client(f).await;
        // Read-your-writes on a follower: the writer's session.
        reader.set_session_token(&token);
        assert_eq!(
            reader.get("c", "k", Consistency::Session(None)).await.unwrap().as_deref(),
            Some(&b"{\"v\":1}"[..])
        );
        // The read's own token covers at least the write (monotonic reads).
        let lsn = |t: &str| t.split('.').nth(2).unwrap().parse::<u64>().unwrap();
        assert!(lsn(&reader.session_token().unwrap()) >= lsn(&token));
        for level in [
            Consistency::Strong,
            Consistency::Bounded { max_staleness_ms: 5_000, max_versions: None },
            Consistency::Bounded { max_staleness_ms: 0, max_versions: Some(100) },
            Consistency::Prefix,
            Consistency::Eventual,
        ] {
            let got = reader.get("c", "k", level.clone()).await.unwrap();
            assert_eq!(got.as_deref(), Some(&b"{\"v\":1}"[..]), "{level:?}");
        }
    }

    // Bad tokens: each refused as a bad request, on the leader and on a follower, quickly.
    let codec = TokenCodec::new("e2e", None).unwrap();
    let issue = |lsn: u64, term: u64, issued_ms: u64| {
        codec.encode(&SessionToken { term, lsn, region: "eu-west".into(), issued_ms })
    };
    let follower = cluster.client((leader + 1) % 3).await;
    let leader_client = cluster.client(leader).await;
    let altered = token.replacen(&format!(".{region}."), ".ap-south.", 1);
    let cases: Vec<(String, &str)> = vec![
        (altered, "checksum does not match"),
        ("s1.1.2".into(), "expected s1."),
        ("not a token at all".into(), "expected s1."),
        (issue(1, 1, now_ms() - 3_000), "past its 2000 ms lifetime"),
        (issue(1, 1, now_ms() + 600_000), "in the future"),
        (issue(1_000_000_000, 1, now_ms()), "beyond the end of the log"),
    ];
    for (bad, says) in &cases {
        for client in [&leader_client, &follower] {
            let started = Instant::now();
            let message = bad_request(client.get("c", "k", Consistency::Session(Some(bad.clone()))).await);
            assert!(message.contains(says), "{bad}: {message}");
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{bad}: refused after {:?}",
                started.elapsed()
            );
        }
    }

    // HTTP: levels by name, bounds checked, the token in a header both ways.
    let admin = cluster.nodes[(leader + 1) % 3].admin;
    let path = "/v1/collections/c/docs/k";
    for (query, says) in [
        ("?consistency=linearish", "consistency level \\\"linearish\\\""),
        ("?consistency=bounded&max_staleness_ms=-5", "cannot be negative"),
        ("?consistency=bounded&max_staleness_ms=0", "must be 1 to"),
        ("?consistency=eventual&max_staleness_ms=5", "apply to consistency=bounded"),
        ("?consistency=bounded&max_versions=many", "max_versions"),
    ] {
        let (status, _, body) = http(admin, &cluster.admin, "GET", &format!("{path}{query}"), &[], "").await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(says), "{query}: {body}");
    }
    let header = [("x-themis-session-token", token.as_str())];
    let (status, headers, body) =
        http(admin, &cluster.admin, "GET", &format!("{path}?consistency=session"), &header, "").await;
    assert_eq!((status, body.as_str()), (200, "{\"v\":1}"));
    assert!(headers["x-themis-session-token"].to_str().unwrap().starts_with("s1."));
    let forged = [("x-themis-session-token", cases[0].0.as_str())];
    let (status, _, body) =
        http(admin, &cluster.admin, "GET", &format!("{path}?consistency=session"), &forged, "").await;
    assert_eq!(status, 400, "{body}");
    for query in ["?consistency=prefix", "?consistency=bounded&max_staleness_ms=10000&max_versions=50", ""] {
        let (status, _, body) = http(admin, &cluster.admin, "GET", &format!("{path}{query}"), &[], "").await;
        assert_eq!((status, body.as_str()), (200, "{\"v\":1}"), "{query}");
    }

    check_staleness(&cluster, leader, admin).await;

    // Reads are counted by level and outcome, refusals included.
    let (_, _, text) = http(admin, &cluster.admin, "GET", "/metrics", &[], "").await;
    let refused =
        metric(&text, "themis_reads_total{level=\"session\",outcome=\"bad_request\"}").unwrap_or(0.0);
    // On a follower, a token only the leader can judge (beyond the log) is redirected.
    assert!(refused >= (cases.len() - 1) as f64, "{refused}\n{text}");
    assert!(metric(&text, "themis_reads_total{level=\"prefix\",outcome=\"ok\"}").unwrap_or(0.0) >= 1.0);
    assert!(metric(&text, "themis_staleness_ms").is_some_and(|ms| ms < 5_000.0), "{text}");
}

/// `GET /v1/geo/staleness` on the leader (every region and replica, with history) and on a
/// follower (its own staleness), and the region lag gauge.
async fn check_staleness(cluster: &Cluster, leader: usize, admin: std::net::SocketAddr) {
    // The leader samples every replica each second.
    let leader_admin = cluster.nodes[leader].admin;
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let (status, _, body) =
        http(leader_admin, &cluster.admin, "GET", "/v1/geo/staleness?window_ms=60000", &[], "").await;
    assert_eq!(status, 200, "{body}");
    let report = common::json(&body);
    let regions: Vec<&str> =
        report["regions"].as_array().unwrap().iter().map(|r| r["region"].as_str().unwrap()).collect();
    assert_eq!(regions, ["eu-west", "us-east"], "{body}");
    for region in report["regions"].as_array().unwrap() {
        assert!(region["min_lag_ms"].as_u64().unwrap() < 5_000, "{body}");
        for replica in region["replicas"].as_array().unwrap() {
            let history = &replica["history"];
            assert!(history["samples"].as_u64().unwrap() >= 2, "{body}");
            assert!(history["p99_ms"].as_u64().unwrap() >= history["p50_ms"].as_u64().unwrap(), "{body}");
        }
    }
    let (_, _, body) = http(admin, &cluster.admin, "GET", "/v1/geo/staleness", &[], "").await;
    let own = common::json(&body);
    assert_eq!(own["is_leader"], false, "{body}");
    assert!(
        own["staleness_ms"].as_u64().is_some_and(|ms| ms < 5_000),
        "a follower knows how fresh it is: {body}"
    );
    let (status, _, _) = http(admin, &cluster.admin, "GET", "/v1/geo/staleness?window_ms=0", &[], "").await;
    assert_eq!(status, 400);
    let (_, _, text) = http(leader_admin, &cluster.admin, "GET", "/metrics", &[], "").await;
    assert!(metric(&text, "themis_region_lag_ms{region=\"eu-west\"}").is_some(), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_its_leader_refuses_bounded_reads_and_serves_weaker_ones() {
    let mut cluster = Cluster::start(3, 0);
    let leader = cluster.leader().await;
    let writer = cluster.client(leader).await;
    writer.put("c", "k", b"{\"v\":1}").await.unwrap();
    let survivor = (leader + 1) % 3;
    let reader = cluster.client(survivor).await;
    reader.set_session_token(&writer.session_token().unwrap());
    reader.get("c", "k", Consistency::Session(None)).await.unwrap();
    let bounded = Consistency::Bounded { max_staleness_ms: 500, max_versions: None };
    assert!(
        reader.get("c", "k", bounded.clone()).await.unwrap().is_some(),
        "fresh while the leader is heard"
    );

    for i in (0..3).filter(|&i| i != survivor) {
        cluster.kill(i);
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let started = Instant::now();
    match reader.get("c", "k", bounded).await {
        Err(ClientError::Redirected { reason, .. }) => {
            assert!(reason.contains("ms behind; the bound is 500 ms"), "{reason}");
        }
        other => panic!("a replica cut off for 1.5 s served a 500 ms bounded read: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2), "redirected after {:?}", started.elapsed());
    for level in [Consistency::Prefix, Consistency::Eventual, Consistency::Session(None)] {
        assert_eq!(
            reader.get("c", "k", level.clone()).await.unwrap().as_deref(),
            Some(&b"{\"v\":1}"[..]),
            "{level:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_with_sigstop_serves_no_stale_strong_read_from_its_lease() {
    let cluster =
        Cluster::start_with(3, 0, |text| text.replace("[replication]", "[replication]\nread_lease = true"));
    for round in 0..3 {
        let old = cluster.leader().await;
        let old_client = cluster.client(old).await;
        let key = format!("k{round}");
        old_client.put("c", &key, b"{\"v\":1}").await.unwrap();
        assert_eq!(
            old_client.get("c", &key, Consistency::Strong).await.unwrap().as_deref(),
            Some(&b"{\"v\":1}"[..])
        );
        // The status is published every tick; a new leader holds a lease once a quorum
        // has answered a heartbeat round.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let status = old_client.status().await.unwrap();
            if status["status"]["lease_valid"] == true {
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: the leader never held a lease: {status}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        cluster.signal(old, Signal::SIGSTOP);
        let mut stopped = vec![false; 3];
        stopped[old] = true;
        let deadline = Instant::now() + Duration::from_secs(20);
        let new = loop {
            if let Some(l) = cluster.leader_among(&stopped).await {
                break l;
            }
            assert!(Instant::now() < deadline, "round {round}: no new leader while {old} is paused");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        cluster.client(new).await.put("c", &key, b"{\"v\":2}").await.unwrap();

        // The read reaches the paused leader's socket before it resumes: the first thing it
        // handles after SIGCONT.
        let read = tokio::spawn(async move { old_client.get("c", &key, Consistency::Strong).await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        cluster.signal(old, Signal::SIGCONT);
        let got = tokio::time::timeout(Duration::from_secs(15), read).await.expect("the read ended").unwrap();
        match got {
            Ok(value) => {
                assert_eq!(
                    value.as_deref(),
                    Some(&b"{\"v\":2}"[..]),
                    "round {round}: a stale strong read after a pause"
                );
            }
            // Refusing is allowed; answering from the old state is not.
            Err(e) => eprintln!("round {round}: the read after the pause failed: {e}"),
        }
    }
}
