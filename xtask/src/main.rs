//! `cargo xtask <task>`: see `cargo xtask help`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use xtask::{ci, fuzz, layers};

const HELP: &str = "\
cargo xtask <task>

tasks:
  ci [--full]                    fmt, clippy, layers, tests, loom, fuzz-corpus replay, fuzz (nightly), bench build;
                                 --full runs the slow suites with their long budgets
  layers [--manifest-path PATH]  check dependency edges against xtask/layers.toml
  fuzz <target> [--seconds N]    run a cargo-fuzz target on nightly (default 60 s)
  help                           this text
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let root = workspace_root();
    let result = match args.as_slice() {
        ["ci"] => ci::run(&root, ci::Budget::Ci),
        ["ci", "--full"] => ci::run(&root, ci::Budget::Full),
        ["layers"] => layers_task(&root.join("Cargo.toml"), &root),
        ["layers", "--manifest-path", manifest] => layers_task(Path::new(manifest), &root),
        ["fuzz", target] => fuzz::run(&root, target, 60),
        ["fuzz", target, "--seconds", seconds] => {
            let Ok(seconds) = seconds.parse() else {
                eprintln!("--seconds takes a whole number, got {seconds:?}");
                return ExitCode::from(2);
            };
            fuzz::run(&root, target, seconds)
        }
        [] | ["help" | "--help" | "-h"] => {
            print!("{HELP}");
            Ok(())
        }
        other => {
            eprint!("unknown arguments {other:?}\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("\nerror: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn layers_task(manifest: &Path, root: &Path) -> anyhow::Result<()> {
    let count = layers::check(manifest, &root.join("xtask/layers.toml"))?;
    println!("{count} workspace members follow the layer table");
    Ok(())
}

fn workspace_root() -> PathBuf {
    // xtask lives one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask has a parent directory").to_path_buf()
}
