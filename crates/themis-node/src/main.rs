//! `themis-node --config FILE`: runs one node until SIGINT or SIGTERM. A configuration
//! error exits with code 2 and names the key and value.
//!
//! `themis-node demo [--seconds S]`: a local 3-node cluster that loses its leader to
//! SIGKILL mid-run and proves no acknowledged write was lost.

mod demo;

use std::path::PathBuf;
use std::process::ExitCode;

use themis_node::{Node, NodeConfig};

const USAGE: &str = "usage: themis-node --config FILE | themis-node demo [--seconds S]\n\n\
examples:\n  themis-node --config /etc/themis/node-1.toml\n  themis-node demo --seconds 6";

fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = match args.as_slice() {
        [flag, path] if flag == "--config" => PathBuf::from(path),
        [flag] if flag == "--help" || flag == "-h" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        [cmd, rest @ ..] if cmd == "demo" => {
            let secs = match rest {
                [] => 6.0,
                [flag, s] if flag == "--seconds" => match s.parse::<f64>() {
                    Ok(v) if (1.0..=3600.0).contains(&v) => v,
                    _ => {
                        eprintln!("themis-node demo: --seconds {s:?}: expected a number from 1 to 3600");
                        return ExitCode::from(2);
                    }
                },
                _ => return usage(),
            };
            return match demo::run(secs) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("themis-node demo: {e}");
                    ExitCode::FAILURE
                }
            };
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
