//! Authentication and roles against real `themis-node` processes: every admin route and
//! every client-protocol request is refused without credentials (401 / `unauthenticated`)
//! and below its role (403 / `forbidden`), over client certificates and bearer tokens.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Cluster, http, json};
use themis_node::admin::{ROUTES, route_role};
use themis_node::auth::{Role, hs256_token};
use themis_node::{Client, ClientError, Credentials, ErrorCode, Request};
use themis_replication::ship::tls::{CertPem, issue_client_cert};

/// A client certificate with `role`, issued by the cluster's CA (read from the layout's
/// `certs/`), as `themis certs --client` writes one.
fn certificate(cluster: &Cluster, name: &str, role: &str) -> Credentials {
    let certs = cluster.jwt_secret_file.parent().unwrap();
    let ca = CertPem {
        cert: std::fs::read_to_string(certs.join("ca.pem")).unwrap(),
        key: std::fs::read_to_string(certs.join("ca.key")).unwrap(),
    };
    Credentials::tls(cluster.ca.clone()).with_certificate(issue_client_cert(&ca, name, role).unwrap())
}

fn token(cluster: &Cluster, name: &str, role: Role) -> Credentials {
    let secret = std::fs::read(&cluster.jwt_secret_file).unwrap();
    Credentials::tls(cluster.ca.clone()).with_token(hs256_token(&secret, name, role, 600).unwrap())
}

/// A token signed with the cluster's secret carrying any claims.
fn signed(cluster: &Cluster, claims: &serde_json::Value) -> String {
    let secret = std::fs::read(&cluster.jwt_secret_file).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.trim_ascii()),
    )
    .unwrap()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A concrete path for a route pattern: member 2, collection `c`, document `d`; a change
/// stream from past the end of the log, so an authorized one is answered (416) instead of
/// streaming forever.
fn concrete(pattern: &str) -> String {
    if pattern == "/v1/cdc/events" {
        format!("{pattern}?from_lsn={}", u64::MAX)
    } else if pattern.starts_with("/v1/cluster/members/{id}") {
        pattern.replace("{id}", "2")
    } else {
        pattern.replace("{collection}", "c").replace("{id}", "d").replace("{bucket}", "0")
    }
}

/// A body each route parses (so an authorized call gets past its extractor).
fn body(method: &str, pattern: &str) -> &'static str {
    match (method, pattern) {
        ("PUT", "/v1/cluster/mode") => r#"{"mode":"semi_sync","min_sync_replicas":1}"#,
        ("POST", "/v1/cluster/members") => {
            r#"{"id":9,"raft_addr":"127.0.0.1:1","client_addr":"127.0.0.1:2"}"#
        }
        ("POST", "/v1/cluster/transfer") => r#"{"to":2}"#,
        ("PUT", _) => r#"{"v":1}"#,
        _ => "",
    }
}

fn assert_refused(status: u16, body: &str, expect: u16, code: &str, what: &str) {
    assert_eq!(status, expect, "{what}: {body}");
    let error = json(body);
    assert_eq!(error["code"], code, "{what}: {body}");
    assert!(!error["message"].as_str().unwrap_or_default().is_empty(), "{what}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_route_is_refused_without_credentials_and_below_its_role() {
    let cluster = Cluster::start(3, 0);
    let leader = cluster.nodes[cluster.leader().await].admin;
    let anonymous = Credentials::tls(cluster.ca.clone());
    let reader = certificate(&cluster, "reporting", "read");
    let writer = token(&cluster, "app", Role::Write);
    for &(method, pattern) in ROUTES {
        let (path, body) = (concrete(pattern), body(method, pattern));
        let what = format!("{method} {path}");
        let (status, headers, text) = http(leader, &anonymous, method, &path, &[], body).await;
        if pattern == "/ui/login" {
            // The sign-in form is open; a sign-in without a token is refused on the form.
            assert_eq!(status, if method == "GET" { 200 } else { 400 }, "{what}: {text}");
            continue;
        }
        if method == "GET" && themis_node::dashboard::is_page(pattern) {
            // A browser without a session is led to the sign-in form.
            assert_eq!(status, 303, "{what}: {text}");
            assert_eq!(headers.get("location").map(|v| v.to_str().unwrap()), Some("/ui/login"), "{what}");
            continue;
        }
        assert_refused(status, &text, 401, "unauthenticated", &format!("anonymous {what}"));
        assert_eq!(headers.get("www-authenticate").map(|v| v.to_str().unwrap()), Some("Bearer"), "{what}");
        for (who, credentials, role) in
            [("read cert", &reader, Role::Read), ("write token", &writer, Role::Write)]
        {
            let (status, _, text) = http(leader, credentials, method, &path, &[], body).await;
            if role < route_role(method, pattern) {
                assert_refused(status, &text, 403, "forbidden", &format!("{who} {what}"));
            } else {
                assert!(status != 401 && status != 403, "{who} {what}: {status} {text}");
            }
        }
    }
    // What each role may do, it does.
    let (status, _, text) = http(leader, &reader, "GET", "/v1/cluster/status", &[], "").await;
    assert_eq!(status, 200, "{text}");
    let (status, _, text) = http(leader, &writer, "PUT", "/v1/collections/c/docs/w", &[], "{}").await;
    assert_eq!(status, 200, "{text}");
    let (status, _, text) =
        http(leader, &cluster.admin, "PUT", "/v1/cluster/mode", &[], body("PUT", "/v1/cluster/mode")).await;
    assert_eq!(status, 200, "{text}");
    let admin_token = token(&cluster, "ops", Role::Admin);
    let (status, _, text) = http(leader, &admin_token, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200, "{text}");

    // Bad tokens are 401 whatever the certificate: a bearer header is the credential.
    let bad = [
        ("not a JWT", "not-a-token".to_string()),
        ("expired", signed(&cluster, &serde_json::json!({"sub": "app", "role": "admin", "exp": now() - 5}))),
        (
            "unknown role",
            signed(&cluster, &serde_json::json!({"sub": "app", "role": "root", "exp": now() + 60})),
        ),
        ("no subject", signed(&cluster, &serde_json::json!({"role": "admin", "exp": now() + 60}))),
        ("no expiry", signed(&cluster, &serde_json::json!({"sub": "app", "role": "admin"}))),
    ];
    let other_secret = b"another secret of at least thirty-two bytes";
    let forged = hs256_token(other_secret, "app", Role::Admin, 60).unwrap();
    for (what, bearer) in bad.into_iter().chain([("another key", forged)]) {
        let header = format!("Bearer {bearer}");
        let (status, _, text) =
            http(leader, &cluster.admin, "GET", "/v1/cluster/status", &[("authorization", &header)], "")
                .await;
        assert_refused(status, &text, 401, "unauthenticated", what);
    }
    let (status, _, text) =
        http(leader, &cluster.admin, "GET", "/v1/cluster/status", &[("authorization", "Basic YTpi")], "")
            .await;
    assert_refused(status, &text, 401, "unauthenticated", "Basic auth");

    // A certificate whose OU is no role authenticates no one.
    let odd = certificate(&cluster, "odd", "superuser");
    let (status, _, text) = http(leader, &odd, "GET", "/v1/cluster/status", &[], "").await;
    assert_refused(status, &text, 401, "unauthenticated", "OU=superuser");
    assert!(text.contains("superuser"), "{text}");

    // Refusals are counted.
    let (_, _, metrics) = http(leader, &cluster.admin, "GET", "/metrics", &[], "").await;
    assert!(metrics.contains("outcome=\"unauthenticated\""), "{metrics}");
    assert!(metrics.contains("outcome=\"forbidden\""), "{metrics}");
}

fn server_code(err: &ClientError) -> Option<ErrorCode> {
    match err {
        ClientError::Server { code, .. } => Some(*code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_protocol_requests_are_checked_against_the_connections_identity() {
    let cluster = Cluster::start(3, 0);
    let addr = cluster.nodes[cluster.leader().await].client;

    let anonymous = Client::connect(addr, &Credentials::tls(cluster.ca.clone())).await.unwrap();
    let err = anonymous.status().await.unwrap_err();
    assert_eq!(server_code(&err), Some(ErrorCode::Unauthenticated), "{err}");
    let err = anonymous.put("c", "d", b"{}").await.unwrap_err();
    assert_eq!(server_code(&err), Some(ErrorCode::Unauthenticated), "{err}");

    let reader = Client::connect(addr, &certificate(&cluster, "reporting", "read")).await.unwrap();
    reader.status().await.unwrap();
    let err = reader.put("c", "d", b"{}").await.unwrap_err();
    assert_eq!(server_code(&err), Some(ErrorCode::Forbidden), "{err}");
    assert!(err.to_string().contains("reporting") && err.to_string().contains("write"), "{err}");

    let writer = Client::connect(addr, &token(&cluster, "app", Role::Write)).await.unwrap();
    let lsn = writer.put("c", "d", b"{\"v\":1}").await.unwrap();
    assert!(lsn > 0);
    let got = reader.get("c", "d", themis_node::Consistency::Session(writer.session_token())).await.unwrap();
    assert_eq!(got.as_deref(), Some(&b"{\"v\":1}"[..]));
    let err = writer.admin(Request::Campaign).await.unwrap_err();
    assert_eq!(server_code(&err), Some(ErrorCode::Forbidden), "{err}");

    // A token the node does not accept fails the connection at once, with the reason.
    let forged = hs256_token(b"another secret of at least thirty-two bytes", "app", Role::Admin, 60).unwrap();
    let err =
        Client::connect(addr, &Credentials::tls(cluster.ca.clone()).with_token(forged)).await.unwrap_err();
    assert_eq!(server_code(&err), Some(ErrorCode::Unauthenticated), "{err}");

    // A token that expires on an open connection stops working when it expires.
    let secret = std::fs::read(&cluster.jwt_secret_file).unwrap();
    // `exp` counts whole seconds, so a TTL of 3 s leaves 2 to 3 s: room for the first
    // write on a loaded machine.
    let short = hs256_token(&secret, "brief", Role::Write, 3).unwrap();
    let brief = Client::connect(addr, &Credentials::tls(cluster.ca.clone()).with_token(short)).await.unwrap();
    brief.put("c", "brief", b"{}").await.unwrap();
    tokio::time::sleep(Duration::from_millis(4100)).await;
    let err = brief.put("c", "brief", b"{}").await.unwrap_err();
    assert_eq!(server_code(&err), Some(ErrorCode::Unauthenticated), "{err}");
    assert!(err.to_string().contains("expired"), "{err}");

    // The admin certificate may do everything.
    let admin = cluster.client(0).await;
    admin.put("c", "admin", b"{}").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_opened_to_scrapers_without_opening_anything_else() {
    let cluster = Cluster::start_with(1, 0, |text| text.replace("[auth]\n", "[auth]\nmetrics_open = true\n"));
    let _ = cluster.leader().await;
    let node = cluster.nodes[0].admin;
    let anonymous = Credentials::tls(cluster.ca.clone());
    let (status, _, text) = http(node, &anonymous, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("themis_"), "{text}");
    let (status, _, text) = http(node, &anonymous, "GET", "/v1/cluster/status", &[], "").await;
    assert_refused(status, &text, 401, "unauthenticated", "status with metrics open");
}
