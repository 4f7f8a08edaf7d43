//! `themis-node --config FILE`: runs one node until SIGINT or SIGTERM. A configuration
//! error exits with code 2 and names the key and value. (`themis server` is the same.)

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str =
    "usage: themis-node --config FILE\n\nexample:\n  themis-node --config /etc/themis/node-1.toml";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, path] if flag == "--config" => themis_node::server::run(&PathBuf::from(path), "themis-node"),
        [flag] if flag == "--help" || flag == "-h" => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
