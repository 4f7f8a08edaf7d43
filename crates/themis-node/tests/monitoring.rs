//! The Grafana dashboard (`deploy/grafana/`) and the Prometheus alerting rules
//! (`deploy/prometheus/`) name only metrics a node exports: a real 3-node cluster with a
//! logical slot, the WAL archive and active-active on is scraped, and every `themis_*`
//! series an expression names must be among what its leader serves at `/metrics`.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use common::{Cluster, http};

fn deploy(path: &str) -> String {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy").join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// Every `themis_...` name in `text`.
fn names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("themis_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let boundary = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if boundary {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

/// The expressions of the dashboard's panels and of the alerting rules.
fn expressions() -> Vec<(String, String)> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&deploy("grafana/themis-replication.json")).unwrap();
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            out.push((format!("panel {:?}", panel["title"]), target["expr"].as_str().unwrap().to_string()));
        }
    }
    for line in deploy("prometheus/themis-alerts.yml").lines() {
        if let Some(expr) = line.trim().strip_prefix("expr:") {
            out.push(("alert rule".into(), expr.trim().to_string()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_alerts_name_is_exported() {
    let exprs = expressions();
    assert!(exprs.len() >= 20, "the dashboard and the rules have expressions: {exprs:?}");
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("archive.key");
    std::fs::write(&key, "11".repeat(32)).unwrap();
    let archive = keys.path().join("archive");
    let cluster = Cluster::start_with(3, 0, |text| {
        format!(
            "{text}\n[archive]\nurl = \"file://{}\"\nkey_file = \"{}\"\ntimeout_secs = 1\n\n[active_active]\nenabled = true\n",
            archive.display(),
            key.display()
        )
    });
    let leader = cluster.leader().await;
    let admin = cluster.nodes[leader].admin;
    let (code, _, body) =
        http(admin, &cluster.admin, "POST", "/v1/slots", &[], r#"{"name":"monitoring","plugin":"json"}"#)
            .await;
    assert!(code == 200 || code == 201, "{body}");
    let client = cluster.client(leader).await;
    for i in 0..20 {
        client.put("docs", &format!("k{i}"), br#"{"n":1}"#).await.unwrap();
    }
    let (code, _, _) = http(admin, &cluster.admin, "GET", "/v1/collections/docs/docs/k1", &[], "").await;
    assert_eq!(code, 200);

    let mut exported = BTreeSet::new();
    let mut missing = Vec::new();
    for _ in 0..100 {
        let (_, _, scrape) = http(admin, &cluster.admin, "GET", "/metrics", &[], "").await;
        exported = scrape
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
            .collect();
        missing = exprs
            .iter()
            .flat_map(|(what, e)| names(e).into_iter().map(move |n| (what.clone(), n)))
            .filter(|(_, n)| !exported.contains(n))
            .collect();
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(missing.is_empty(), "named but not exported: {missing:?}\nexported: {exported:?}");
}

#[test]
fn names_are_found_whole() {
    let found = names("rate(themis_a_total[1m]) - xthemis_b + themis_c_bucket{le=\"1\"}");
    assert_eq!(found, BTreeSet::from(["themis_a_total".to_string(), "themis_c_bucket".to_string()]));
}
