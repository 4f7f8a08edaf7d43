//! The client's read router on real `themis-node` processes: every strategy spreads reads
//! over the replicas, a killed replica is taken out and, restarted, brought back; session
//! reads keep read-your-writes on any replica; quorum reads answer from R of N and name
//! what could not answer.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::Cluster;
use nix::sys::signal::Signal;
use themis_node::router::{ReadRouter, RouterConfig};
use themis_node::{ClientError, Consistency};
use themis_replication::geo::Strategy;

fn addrs(cluster: &Cluster) -> Vec<SocketAddr> {
    cluster.nodes.iter().map(|n| n.client).collect()
}

fn picks(router: &ReadRouter) -> Vec<u64> {
    router.health().iter().map(|(_, h)| h.picks).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_strategy_spreads_reads_and_a_killed_replica_is_taken_out_and_brought_back() {
    let mut cluster = Cluster::start(3, 0);
    cluster.leader().await;
    for strategy in Strategy::ALL {
        let router =
            ReadRouter::connect(&addrs(&cluster), &cluster.admin, RouterConfig::new(strategy)).await.unwrap();
        router.put("c", "k", b"{\"v\":1}").await.unwrap();
        for _ in 0..300 {
            let got = router.get("c", "k", Consistency::Session(None)).await.unwrap();
            assert_eq!(got.as_deref(), Some(&b"{\"v\":1}"[..]), "{strategy}: read-your-writes");
        }
        let spread = picks(&router);
        assert_eq!(spread.iter().sum::<u64>(), 300, "{strategy}: {spread:?}");
        match strategy {
            Strategy::RoundRobin | Strategy::LeastConnections => {
                assert!(spread.iter().all(|&p| (90..=110).contains(&p)), "{strategy}: {spread:?}");
            }
            Strategy::Random => {
                assert!(spread.iter().all(|&p| p >= 40), "{strategy}: {spread:?}");
            }
            // Of two random replicas the less loaded, then the faster: with one read at a
            // time the slower of each pair loses, so the spread leans to the fast ones.
            Strategy::PowerOfTwoChoices => {
                assert!(spread.iter().filter(|&&p| p > 0).count() >= 2, "{strategy}: {spread:?}");
            }
            // Each replica is measured once, then the fastest smoothed RTT is preferred.
            Strategy::LatencyBased => {
                assert!(
                    router.health().iter().all(|(_, h)| h.ewma_rtt_us > 0),
                    "{strategy}: {:?}",
                    router.health()
                );
            }
        }
    }

    // A replica killed: reads go on; three failures take it out.
    let router =
        ReadRouter::connect(&addrs(&cluster), &cluster.admin, RouterConfig::new(Strategy::RoundRobin))
            .await
            .unwrap();
    let leader = cluster.leader().await;
    let victim = (leader + 1) % 3;
    cluster.kill(victim);
    for _ in 0..60 {
        router.get("c", "k", Consistency::Eventual).await.unwrap();
    }
    let health = router.health();
    let out = health[victim].1;
    assert!(out.failures >= 2 && out.out_until_ms > 0, "the killed replica is out: {health:?}");
    let during = out.picks;
    for _ in 0..30 {
        router.get("c", "k", Consistency::Eventual).await.unwrap();
    }
    assert_eq!(router.health()[victim].1.picks, during, "an ejected replica is not picked while out");

    // Restarted, it is tried again once its time out has passed, and succeeds.
    cluster.restart(victim);
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        router.get("c", "k", Consistency::Eventual).await.unwrap();
        let h = router.health()[victim].1;
        if h.failures == 0 && h.out_until_ms == 0 && h.picks > during {
            break;
        }
        assert!(Instant::now() < deadline, "the restarted replica never came back: {:?}", router.health());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_reads_answer_from_r_of_n_and_fail_without_a_quorum() {
    let cluster = Cluster::start(3, 0);
    let leader = cluster.leader().await;
    let mut config = RouterConfig::new(Strategy::Random);
    config.timeout = Duration::from_secs(1);
    let router = ReadRouter::connect(&addrs(&cluster), &cluster.admin, config).await.unwrap();
    router.put("c", "q", b"{\"v\":1}").await.unwrap();
    // Every replica has it once a session read there sees it.
    for node in &cluster.nodes {
        let c = themis_node::Client::connect(node.client, &cluster.admin).await.unwrap();
        common::read_local(&c, "c", "q", router.session_token(), Duration::from_secs(10)).await.unwrap();
    }
    let all = router.quorum_get("c", "q", 3, true).await.unwrap();
    assert_eq!(all.result.value.as_deref(), Some(&b"{\"v\":1}"[..]));
    assert!(!all.result.had_conflicts, "{all:?}");
    assert_eq!(all.result.sources.len(), 3);
    assert!(all.session_token.starts_with("s1."));
    let missing = router.quorum_get("c", "absent", 2, false).await.unwrap();
    assert_eq!(missing.result.value, None);

    // One replica stopped: R = 2 still answers from the other two; R = 3 cannot.
    let stopped = (leader + 1) % 3;
    cluster.signal(stopped, Signal::SIGSTOP);
    router.put("c", "q", b"{\"v\":2}").await.unwrap();
    let two = router.quorum_get("c", "q", 2, false).await.unwrap();
    assert_eq!(two.result.value.as_deref(), Some(&b"{\"v\":2}"[..]));
    assert!(!two.result.sources.contains(&cluster.nodes[stopped].client), "{two:?}");
    match router.quorum_get("c", "q", 3, false).await {
        Err(ClientError::Unexpected(message)) => {
            assert!(message.contains("needs 3 of 3 replicas; 2 answered"), "{message}");
        }
        other => panic!("a quorum of 3 with one replica stopped: {other:?}"),
    }
    // Resumed, it may answer stale before it catches up: then it is named and repaired.
    cluster.signal(stopped, Signal::SIGCONT);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let read = router.quorum_get("c", "q", 3, true).await;
        if let Ok(read) = read {
            assert_eq!(
                read.result.value.as_deref(),
                Some(&b"{\"v\":2}"[..]),
                "the newest version wins: {read:?}"
            );
            for stale in &read.result.stale {
                assert_eq!(*stale, cluster.nodes[stopped].client, "{read:?}");
                assert!(read.repaired.contains(stale), "a stale replica catches up when asked: {read:?}");
            }
            if !read.result.had_conflicts {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the resumed replica never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for r in [0, 4] {
        let err = router.quorum_get("c", "q", r, false).await.unwrap_err().to_string();
        assert!(err.contains("1 <= R <= N"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_in_a_region_reads_there_and_moves_to_another_when_it_fails() {
    let mut cluster = Cluster::start_with(3, 0, |text| {
        common::with_regions(&text, |id| if id == 3 { "eu-west" } else { "us-east" })
    });
    cluster.leader().await;
    let mut config = RouterConfig::new(Strategy::RoundRobin);
    config.local_region = Some("eu-west".into());
    let router = ReadRouter::connect(&addrs(&cluster), &cluster.admin, config).await.unwrap();
    assert_eq!(router.health().len(), 3);
    router.put("c", "r", b"{\"v\":1}").await.unwrap();
    for _ in 0..50 {
        assert!(router.get("c", "r", Consistency::Session(None)).await.unwrap().is_some());
    }
    let spread = picks(&router);
    assert_eq!(spread[2], 50, "every read in the local region: {spread:?}");

    // The local region's only replica dies: reads move to the nearest other region.
    cluster.kill(2);
    for _ in 0..50 {
        assert!(router.get("c", "r", Consistency::Eventual).await.unwrap().is_some());
    }
    let after = picks(&router);
    assert!(after[0] + after[1] >= 45, "reads moved to us-east: {after:?}");
}
