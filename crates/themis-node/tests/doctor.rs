//! The doctor's routes and the dashboard's sign-in form against real `themis-node`
//! processes: every bad query and body is refused with a 4xx naming what was wrong, the
//! leader refuses to be repaired, and a follower that already holds the leader's data
//! hashes equal and is changed by nothing a repair sends.

mod common;

use base64::Engine as _;
use common::{Cluster, http, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_routes_refuse_bad_input_and_the_leader_is_never_repaired() {
    let cluster = Cluster::start(3, 0);
    let leader = cluster.leader().await;
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let client = cluster.client(leader).await;
    let mut lsn = 0;
    for i in 0..50 {
        lsn = client.put("docs", &format!("k{i}"), format!(r#"{{"i":{i}}}"#).as_bytes()).await.unwrap();
    }
    let (at_leader, at_follower) = (cluster.nodes[leader].admin, cluster.nodes[follower].admin);
    let get = |addr, path: String| {
        let admin = cluster.admin.clone();
        async move { http(addr, &admin, "GET", &path, &[], "").await }
    };

    // Equal hashes once both have applied the same LSN.
    let path = format!("/v1/doctor/ranges?buckets=16&at_lsn={lsn}");
    let (code, _, body) = get(at_leader, path.clone()).await;
    assert_eq!(code, 200, "{body}");
    let reference = json(&body);
    assert!(reference["docs"].as_u64().unwrap() >= 50, "{reference}");
    let (_, _, body) = get(at_follower, path).await;
    assert_eq!(json(&body)["hashes"], reference["hashes"]);

    for (path, needle) in [
        ("/v1/doctor/ranges?buckets=0", "buckets = 0"),
        ("/v1/doctor/ranges?buckets=2000000", "buckets = 2000000"),
        ("/v1/doctor/ranges?buckets=x", "query"),
        ("/v1/doctor/ranges", "query"),
        ("/v1/doctor/ranges/16?buckets=16", "below buckets = 16"),
        ("/v1/doctor/ranges/abc?buckets=16", "abc"),
        ("/v1/doctor/ranges/0?buckets=0", "buckets = 0"),
    ] {
        let (code, _, body) = get(at_leader, path.to_string()).await;
        assert_eq!(code, 400, "{path}: {body}");
        assert!(body.contains(needle), "{path}: {body}");
    }

    // A follower's bucket made to hold what the leader holds changes nothing.
    let (_, _, body) = get(at_leader, "/v1/doctor/ranges/3?buckets=16".into()).await;
    let docs = json(&body);
    let repair =
        serde_json::json!({"buckets": 16, "bucket": 3, "at_lsn": docs["applied_lsn"], "docs": docs["docs"]});
    let (code, _, body) =
        http(at_follower, &cluster.admin, "POST", "/v1/doctor/repair", &[], &repair.to_string()).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        (json(&body)["written"].as_u64(), json(&body)["removed"].as_u64()),
        (Some(0), Some(0)),
        "{body}"
    );
    // The leader is the reference: it refuses.
    let (code, _, body) =
        http(at_leader, &cluster.admin, "POST", "/v1/doctor/repair", &[], &repair.to_string()).await;
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("is_leader"), "{body}");

    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let doc = |collection: &str, key: &str| serde_json::json!({"collection": collection, "key": key, "value": b64("{}"), "lsn": 1});
    for (body, needle) in [
        ("{not json".to_string(), "body"),
        (r#"{"buckets":16,"bucket":3,"at_lsn":1}"#.to_string(), "docs"),
        (serde_json::json!({"buckets": 16, "bucket": 16, "at_lsn": 1, "docs": []}).to_string(), "below buckets = 16"),
        (serde_json::json!({"buckets": 0, "bucket": 0, "at_lsn": 1, "docs": []}).to_string(), "buckets = 0"),
        (
            serde_json::json!({"buckets": 16, "bucket": 3, "at_lsn": 1, "docs": [doc("docs", "!!not base64")]}).to_string(),
            "docs[0].key",
        ),
        (
            serde_json::json!({"buckets": 16, "bucket": 3, "at_lsn": 1, "docs": [doc("bad\u{1}name", &b64("k"))]})
                .to_string(),
            "docs[0]",
        ),
    ] {
        let (code, _, answer) = http(at_follower, &cluster.admin, "POST", "/v1/doctor/repair", &[], &body).await;
        assert_eq!(code, 400, "{body}: {answer}");
        assert!(answer.contains(needle), "{body}: {answer}");
    }
    let (_, _, body) = get(at_follower, format!("/v1/doctor/ranges?buckets=16&at_lsn={lsn}")).await;
    assert_eq!(json(&body)["hashes"], reference["hashes"], "refused repairs changed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sign_in_form_refuses_empty_oversized_and_bad_tokens() {
    let cluster = Cluster::start(1, 0);
    let admin = cluster.nodes[0].admin;
    let anonymous = themis_node::Credentials::tls(cluster.ca.clone());
    let form = [("content-type", "application/x-www-form-urlencoded")];
    for (body, code, needle) in [
        ("token=", 400, "enter a token"),
        ("other=1", 400, "enter a token"),
        ("token=not.a.token", 401, "refused"),
    ] {
        let (status, headers, page) = http(admin, &anonymous, "POST", "/ui/login", &form, body).await;
        assert_eq!(status, code, "{body}: {page}");
        assert!(page.contains(needle), "{body}: {page}");
        assert!(headers.get("set-cookie").is_none(), "{body}: no session");
    }
    let big = format!("token={}", "x".repeat(20 << 10));
    let (status, _, page) = http(admin, &anonymous, "POST", "/ui/login", &form, &big).await;
    assert_eq!(status, 413, "{page}");
    // A form that is not one is refused the same way as an empty one.
    let (status, _, page) = http(admin, &anonymous, "POST", "/ui/login", &[], "token=abc").await;
    assert_eq!(status, 400, "{page}");
}
