//! The `/ui` dashboard in a real headless Chromium, driven over `WebDriver` (`chromedriver`)
//! by fantoccini: sign in with a token, see the 3-node topology and every replica healthy,
//! see a killed follower marked unhealthy with a `SLOW_REPLICA` insight, and transfer
//! leadership with the page's own button and confirmation dialog and see the new leader.
//! Screenshots go to `target/tmp/dashboard/`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them; override the
//! paths with `THEMIS_CHROMIUM` and `THEMIS_CHROMEDRIVER`). Under `CI=true` a missing
//! browser fails the test; elsewhere it is skipped with a message.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::Cluster;
use fantoccini::{Client, ClientBuilder, Locator};
use themis_node::auth::{Role, hs256_token};

fn find(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).flat_map(|dir| names.iter().map(move |n| dir.join(n))).find(|p| p.is_file())
}

/// chromedriver on a free loopback port, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start(path: &PathBuf) -> Driver {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut child = Command::new(path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Driver { child, port };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("chromedriver did not listen on port {port} within 10 s");
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver, chromium: &PathBuf) -> Client {
    // fantoccini's rustls builds with both crypto providers; the node's is ring.
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let mut caps = serde_json::Map::new();
    caps.insert("acceptInsecureCerts".into(), serde_json::json!(true));
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--ignore-certificate-errors", "--window-size=1400,1200"],
        }),
    );
    ClientBuilder::rustls()
        .expect("rustls with the platform's roots")
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session")
}

/// Polls `f` every 100 ms for up to `secs`; panics with `what` and the page's text.
async fn until<F, Fut>(page: &Client, secs: u64, what: &str, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..secs * 10 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = match page.find(Locator::Css("body")).await {
        Ok(body) => body.text().await.unwrap_or_default(),
        Err(e) => e.to_string(),
    };
    panic!("{what} within {secs} s; the page shows:\n{text}");
}

async fn text(page: &Client, css: &str) -> String {
    match page.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn screenshot(page: &Client, name: &str) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    let png = page.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// Without a session the page leads to the sign-in form; a bad token is refused there and
/// an admin token signs in.
async fn sign_in(page: &Client, origin: &str, cluster: &Cluster) {
    page.goto(&format!("{origin}/ui")).await.unwrap();
    until(page, 10, "the sign-in form", || async { page.current_url().await.unwrap().path() == "/ui/login" })
        .await;
    page.find(Locator::Id("token")).await.unwrap().send_keys("not-a-token").await.unwrap();
    page.find(Locator::Css("button[type=submit]")).await.unwrap().click().await.unwrap();
    until(page, 10, "the refusal", || async { text(page, ".error").await.contains("refused") }).await;
    let secret = std::fs::read(&cluster.jwt_secret_file).unwrap();
    let token = hs256_token(&secret, "operator", Role::Admin, 3600).unwrap();
    page.find(Locator::Id("token")).await.unwrap().send_keys(&token).await.unwrap();
    page.find(Locator::Css("button[type=submit]")).await.unwrap().click().await.unwrap();
}

/// The mode control: SYNC, confirmed in the dialog, reaches the cluster; a cancelled
/// change does not.
async fn change_mode(page: &Client) {
    page.find(Locator::Id("mode-select")).await.unwrap().select_by_value("async").await.unwrap();
    page.find(Locator::Id("btn-mode")).await.unwrap().click().await.unwrap();
    until(page, 5, "the dialog", || async { text(page, "#confirm-text").await.contains("ASYNC") }).await;
    page.find(Locator::Id("confirm-cancel")).await.unwrap().click().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(text(page, "#mode").await.starts_with("SEMI_SYNC"), "a cancelled change changes nothing");
    page.find(Locator::Id("mode-select")).await.unwrap().select_by_value("sync").await.unwrap();
    page.find(Locator::Id("btn-mode")).await.unwrap().click().await.unwrap();
    until(page, 5, "the dialog", || async { text(page, "#confirm-text").await.contains("SYNC") }).await;
    page.find(Locator::Id("confirm-ok")).await.unwrap().click().await.unwrap();
    until(page, 20, "the SYNC mode shown", || async { text(page, "#mode").await.starts_with("SYNC") }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_cluster_and_transfers_leadership_in_a_real_browser() {
    let (Some(chromium), Some(chromedriver)) = (
        find("THEMIS_CHROMIUM", &["chromium", "chromium-browser"]),
        find("THEMIS_CHROMEDRIVER", &["chromedriver"]),
    ) else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "chromium and chromedriver are needed under CI=true (.ci/run installs them)"
        );
        eprintln!(
            "skipped: install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        );
        return;
    };
    let driver = Driver::start(&chromedriver);
    let mut cluster = Cluster::start(3, 0);
    let leader = cluster.leader().await;
    let page = browser(&driver, &chromium).await;
    let origin = format!("https://{}", cluster.nodes[leader].admin);

    sign_in(&page, &origin, &cluster).await;

    // The cluster as the leader sees it.
    until(&page, 20, "the dashboard loaded", || async {
        page.execute("return document.body.dataset.loaded === 'true'", vec![]).await.unwrap() == true
    })
    .await;
    assert_eq!(page.current_url().await.unwrap().path(), "/ui");
    assert_eq!(text(&page, "#node-role").await, "Leader");
    until(&page, 20, "three healthy nodes", || async {
        page.find_all(Locator::Css("g.topo-node")).await.unwrap().len() == 3
            && page.find_all(Locator::Css("td.health.healthy")).await.unwrap().len() == 3
    })
    .await;
    until(&page, 20, "a lag graph per replica", || async {
        page.find_all(Locator::Css("#lag-charts .chart")).await.unwrap().len() == 2
    })
    .await;
    screenshot(&page, "1-healthy").await;

    // A follower killed with SIGKILL is marked unhealthy, in the table and the picture,
    // with an insight naming it.
    let victim = (0..3).find(|&i| i != leader).unwrap();
    let victim_id = cluster.nodes[victim].id;
    cluster.kill(victim);
    let row = format!("#nodes tr[data-node='{victim_id}'] td.health");
    until(&page, 20, "the killed node marked unhealthy", || async { text(&page, &row).await == "unhealthy" })
        .await;
    until(&page, 10, "its SLOW_REPLICA insight", || async {
        text(&page, "#insights li[data-kind='SLOW_REPLICA']").await.contains(&format!("replica {victim_id}"))
    })
    .await;
    let healthy = page
        .find(Locator::Css(&format!("g.topo-node[data-node='{victim_id}']")))
        .await
        .unwrap()
        .attr("data-healthy")
        .await
        .unwrap();
    assert_eq!(healthy.as_deref(), Some("false"));
    screenshot(&page, "2-unhealthy").await;
    cluster.restart(victim);
    until(&page, 30, "the node healthy again", || async { text(&page, &row).await == "healthy" }).await;

    change_mode(&page).await;

    // Transfer leadership with the page's button; nothing happens until it is confirmed.
    let target = (0..3).find(|&i| i != leader && i != victim).unwrap();
    let target_id = cluster.nodes[target].id;
    page.find(Locator::Id("transfer-to"))
        .await
        .unwrap()
        .select_by_value(&target_id.to_string())
        .await
        .unwrap();
    page.find(Locator::Id("btn-transfer")).await.unwrap().click().await.unwrap();
    until(&page, 5, "the confirmation dialog", || async {
        text(&page, "#confirm-text").await.contains(&format!("node {target_id}"))
    })
    .await;
    screenshot(&page, "3-confirm").await;
    page.find(Locator::Id("confirm-ok")).await.unwrap().click().await.unwrap();
    until(&page, 20, "the new leader shown", || async {
        text(&page, "#leader").await == format!("node {target_id}")
    })
    .await;
    until(&page, 10, "this node shown as a follower", || async {
        text(&page, "#node-role").await == "Follower"
    })
    .await;
    assert!(text(&page, "#banner").await.contains(&format!("node {target_id}")));
    assert_eq!(cluster.leader().await, target, "the cluster agrees");
    screenshot(&page, "4-transferred").await;

    // Sign out: the page leads back to the form.
    page.execute(
        "return fetch('/ui/logout', {method: 'POST', headers: {'x-themis-ui': '1'}}).then(r => r.status)",
        vec![],
    )
    .await
    .unwrap();
    page.goto(&format!("{origin}/ui")).await.unwrap();
    until(&page, 10, "the sign-in form after signing out", || async {
        page.current_url().await.unwrap().path() == "/ui/login"
    })
    .await;
    page.close().await.unwrap();
}
