//! `cargo xtask <task>`: see `cargo xtask help`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use xtask::{ci, fuzz, layers, readme};

const HELP: &str = "\
cargo xtask <task>

tasks:
  ci [--full]                    fmt, clippy, layers, doc, tests, loom, fuzz-corpus replay, fuzz (nightly), bench build;
                                 --full runs the slow suites with their long budgets
  layers [--manifest-path PATH]  check dependency edges against xtask/layers.toml
  fuzz <target> [--seconds N]    run a cargo-fuzz target on nightly (default 60 s)
  readme [--check]               write each crate's README.md from its lib.rs documentation
                                 (--check: fail when one is not what its lib.rs makes)
  sim [--seeds N] [--nodes K[,K..]] [--start S] [--seed S]
                                 run the Raft cluster simulator (release build): N seeds per
                                 size (default 1000, sizes 3,5,7) from a random first seed
                                 (printed; --start S repeats a run), or replay seed S
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
        ["sim", rest @ ..] => sim_task(&root, rest),
        ["readme"] => readme::run(&root, false),
        ["readme", "--check"] => readme::run(&root, true),
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

/// `cargo xtask sim`: the simulation test in release mode with the seeds and sizes asked.
fn sim_task(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    let mut env = vec![("THEMIS_SIM_SEEDS", "1000".to_string()), ("THEMIS_SIM_NODES", "3,5,7".to_string())];
    let mut rest = args;
    while let [flag, value, tail @ ..] = rest {
        let key = match *flag {
            "--seeds" => "THEMIS_SIM_SEEDS",
            "--nodes" => "THEMIS_SIM_NODES",
            "--seed" => "THEMIS_SIM_SEED",
            "--start" => "THEMIS_SIM_START",
            other => anyhow::bail!("unknown sim flag {other:?}; see `cargo xtask help`"),
        };
        if value.split(',').any(|v| v.trim().parse::<u64>().is_err()) {
            anyhow::bail!("{flag} takes a number (--nodes a comma-separated list), got {value:?}");
        }
        env.retain(|(k, _)| *k != key);
        env.push((key, (*value).to_string()));
        rest = tail;
    }
    if let [dangling] = rest {
        anyhow::bail!("{dangling} needs a value");
    }
    let status = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["test", "--release", "-p", "themis-raft", "--test", "sim", "--", "--nocapture"])
        .envs(env)
        .current_dir(root)
        .status()?;
    anyhow::ensure!(
        status.success(),
        "the simulation failed (the seed and replay command are printed above)"
    );
    Ok(())
}

fn workspace_root() -> PathBuf {
    // xtask lives one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask has a parent directory").to_path_buf()
}
