//! `themis-node --config FILE`: runs one node until SIGINT or SIGTERM. A configuration
//! error exits with code 2 and names the key and value.

use std::path::PathBuf;
use std::process::ExitCode;

use themis_node::{Node, NodeConfig};

fn usage() -> ExitCode {
    eprintln!("usage: themis-node --config FILE\n\nexample: themis-node --config /etc/themis/node-1.toml");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = match args.as_slice() {
        [flag, path] if flag == "--config" => PathBuf::from(path),
        [flag] if flag == "--help" || flag == "-h" => {
            println!(
                "usage: themis-node --config FILE\n\nexample: themis-node --config /etc/themis/node-1.toml"
            );
            return ExitCode::SUCCESS;
        }
        _ => return usage(),
    };
    let config = match NodeConfig::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("themis-node: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("THEMIS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("themis-node: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let node = match Node::start(&config).await {
            Ok(n) => n,
            Err(e) => {
                eprintln!("themis-node: {e}");
                return ExitCode::FAILURE;
            }
        };
        // The client address goes to stdout so scripts and tests can find a port 0 bind.
        println!("themis-node {} listening: client {}", config.node_id, node.client_addr);
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("themis-node: signal handler: {e}");
                return ExitCode::FAILURE;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        match node.shutdown().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("themis-node: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
