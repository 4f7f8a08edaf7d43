//! `cargo xtask ci`: every check CI runs, in order, failing fast.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::layers;

/// How much work the slow suites do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// Sized for a CI run of well under 30 minutes on 2 cores.
    Ci,
    /// Many more property-test cases and simulation seeds, for a long local run.
    Full,
}

impl Budget {
    /// Environment that scales the slow suites. proptest reads `PROPTEST_CASES`; our own
    /// simulation and soak tests read `THEMIS_TEST_BUDGET`.
    fn env(self) -> Vec<(&'static str, &'static str)> {
        match self {
            Budget::Ci => vec![("PROPTEST_CASES", "256"), ("THEMIS_TEST_BUDGET", "ci")],
            Budget::Full => vec![("PROPTEST_CASES", "4096"), ("THEMIS_TEST_BUDGET", "full")],
        }
    }
}

/// What a step does.
enum Action {
    /// Run these commands in order.
    Commands(Vec<Cmd>),
    /// Run the layer check in-process.
    Layers,
    /// Check every crate's README is made from its lib.rs, in-process.
    Readme,
    /// Run every fuzz target for this many seconds.
    Fuzz(u64),
    /// The step has nothing to check yet; say why.
    NotApplicable(String),
}

struct Cmd {
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Cmd {
    fn cargo(args: &[&str]) -> Self {
        Cmd { args: args.iter().map(|&a| a.to_owned()).collect(), env: Vec::new() }
    }

    fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    fn display(&self) -> String {
        let mut line = String::new();
        for (key, value) in &self.env {
            let _ = write!(line, "{key}={value:?} ");
        }
        line.push_str("cargo ");
        line.push_str(&self.args.join(" "));
        line
    }
}

struct Step {
    name: &'static str,
    action: Action,
}

enum Outcome {
    Passed,
    NotApplicable(String),
}

/// Runs every step; returns an error naming the failed step and how to rerun it.
pub fn run(root: &Path, budget: Budget) -> Result<()> {
    let steps = plan(root, budget)?;
    let mut table: Vec<(&'static str, Duration, String)> = Vec::new();
    for step in &steps {
        println!("\n==> {}", step.name);
        let started = Instant::now();
        let outcome = execute(root, step);
        let elapsed = started.elapsed();
        match outcome {
            Ok(Outcome::Passed) => table.push((step.name, elapsed, "ok".into())),
            Ok(Outcome::NotApplicable(why)) => {
                println!("    not applicable: {why}");
                table.push((step.name, elapsed, format!("n/a: {why}")));
            }
            Err(err) => {
                table.push((step.name, elapsed, "FAILED".into()));
                print_table(&table);
                bail!("step `{}` failed: {err:#}\nrerun it with: {}", step.name, rerun_hint(step));
            }
        }
    }
    print_table(&table);
    Ok(())
}

/// A crate's optional parts (themis-ship's TLS and codecs, themis-raft's driver) stay
/// optional: each crate builds, clean, with none of them, and its lib tests (what a codec
/// left out does) pass in that build.
fn features_step() -> Step {
    Step {
        name: "features",
        action: Action::Commands(vec![
            Cmd::cargo(&[
                "clippy",
                "--locked",
                "-p",
                "themis-raft",
                "-p",
                "themis-ship",
                "--no-default-features",
                "--lib",
                "--tests",
                "--",
                "-D",
                "warnings",
            ]),
            Cmd::cargo(&["test", "--locked", "-p", "themis-ship", "--no-default-features", "--lib"]),
        ]),
    }
}

fn plan(root: &Path, budget: Budget) -> Result<Vec<Step>> {
    let with_budget = |mut cmd: Cmd| {
        for (key, value) in budget.env() {
            cmd = cmd.env(key, value);
        }
        cmd
    };
    let fuzz_manifest = root.join("fuzz/Cargo.toml");
    let fuzz_manifest_arg = fuzz_manifest.to_string_lossy().into_owned();

    let mut fmt = vec![Cmd::cargo(&["fmt", "--all", "--", "--check"])];
    if fuzz_manifest.exists() {
        fmt.push(Cmd::cargo(&["fmt", "--manifest-path", &fuzz_manifest_arg, "--", "--check"]));
    }

    let loom = loom_crates(root)?;
    let loom_action = if loom.is_empty() {
        Action::NotApplicable("no crate uses cfg(loom) yet".into())
    } else {
        Action::Commands(
            loom.iter()
                .map(|krate| {
                    // A separate target directory keeps the loom build from invalidating the
                    // normal one (RUSTFLAGS changes every fingerprint).
                    with_budget(Cmd::cargo(&["test", "--locked", "--release", "--lib", "-p", krate]))
                        .env("RUSTFLAGS", "--cfg loom")
                        .env("CARGO_TARGET_DIR", "target/loom")
                })
                .collect(),
        )
    };

    let fuzz_action = match fuzz_corpus_count(root)? {
        0 if !fuzz_manifest.exists() => Action::NotApplicable("no fuzz/ workspace".into()),
        0 => Action::NotApplicable("fuzz/corpus holds no inputs yet".into()),
        _ => Action::Commands(vec![Cmd::cargo(&[
            "test",
            "--locked",
            "--release",
            "--manifest-path",
            &fuzz_manifest_arg,
        ])]),
    };

    Ok(vec![
        Step { name: "fmt", action: Action::Commands(fmt) },
        Step {
            name: "clippy",
            action: Action::Commands(vec![Cmd::cargo(&[
                "clippy",
                "--locked",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])]),
        },
        features_step(),
        Step { name: "layers", action: Action::Layers },
        Step { name: "readme", action: Action::Readme },
        Step {
            name: "package",
            // Every library crate packages as it would be published, in dependency order
            // (cargo packs the workspace's path dependencies into a local registry).
            // --no-verify: building each package again from its archive would double the
            // build; the archives' manifests and file lists are what this checks.
            action: Action::Commands(vec![Cmd::cargo(&[
                "package",
                "--locked",
                "--workspace",
                "--exclude",
                "themis-benches",
                "--exclude",
                "xtask",
                "--no-verify",
            ])]),
        },
        Step {
            name: "doc",
            action: Action::Commands(vec![
                Cmd::cargo(&["doc", "--locked", "--workspace", "--no-deps"])
                    .env("RUSTDOCFLAGS", "-D warnings"),
            ]),
        },
        Step {
            name: "test",
            action: Action::Commands(vec![with_budget(Cmd::cargo(&["test", "--locked", "--workspace"]))]),
        },
        Step { name: "loom", action: loom_action },
        Step { name: "fuzz-corpus replay", action: fuzz_action },
        Step {
            name: "fuzz",
            action: if !fuzz_manifest.exists() {
                Action::NotApplicable("no fuzz/ workspace".into())
            } else if crate::fuzz::nightly_available() {
                Action::Fuzz(match budget {
                    Budget::Ci => 45,
                    Budget::Full => 600,
                })
            } else {
                Action::NotApplicable("no nightly toolchain; the corpus replay above still ran".into())
            },
        },
        Step {
            name: "bench build",
            action: Action::Commands(vec![Cmd::cargo(&["bench", "--locked", "--workspace", "--no-run"])]),
        },
    ])
}

fn execute(root: &Path, step: &Step) -> Result<Outcome> {
    match &step.action {
        Action::NotApplicable(why) => Ok(Outcome::NotApplicable(why.clone())),
        Action::Fuzz(seconds) => {
            for target in crate::fuzz::targets(root)? {
                crate::fuzz::run(root, &target, *seconds)?;
            }
            Ok(Outcome::Passed)
        }
        Action::Layers => {
            let count = layers::check(&root.join("Cargo.toml"), &root.join("xtask/layers.toml"))?;
            println!("    {count} workspace members follow the layer table");
            Ok(Outcome::Passed)
        }
        Action::Readme => {
            crate::readme::run(root, true)?;
            println!("    every crate's README is made from its lib.rs");
            Ok(Outcome::Passed)
        }
        Action::Commands(cmds) => {
            for cmd in cmds {
                println!("    $ {}", cmd.display());
                let status = Command::new(cargo())
                    .args(&cmd.args)
                    .envs(cmd.env.iter().map(|(k, v)| (k, v)))
                    .current_dir(root)
                    .status()
                    .with_context(|| format!("starting `{}`", cmd.display()))?;
                if !status.success() {
                    bail!("`{}` exited with {status}", cmd.display());
                }
            }
            Ok(Outcome::Passed)
        }
    }
}

fn rerun_hint(step: &Step) -> String {
    match &step.action {
        Action::Commands(cmds) => cmds.iter().map(Cmd::display).collect::<Vec<_>>().join(" && "),
        Action::Layers => "cargo xtask layers".into(),
        Action::Readme => "cargo xtask readme --check".into(),
        Action::Fuzz(seconds) => format!("cargo xtask fuzz <target> --seconds {seconds}"),
        Action::NotApplicable(_) => "(nothing to rerun)".into(),
    }
}

fn print_table(rows: &[(&str, Duration, String)]) {
    let width = rows.iter().map(|(name, ..)| name.len()).max().unwrap_or(4).max(4);
    println!("\n{:width$}  {:>9}  result", "step", "time");
    let mut total = Duration::ZERO;
    for (name, elapsed, result) in rows {
        total += *elapsed;
        println!("{name:width$}  {:>8.1}s  {result}", elapsed.as_secs_f64());
    }
    println!("{:width$}  {:>8.1}s", "total", total.as_secs_f64());
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Workspace crates whose sources mention `cfg(loom)`, so have loom tests to run.
fn loom_crates(root: &Path) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let crates = root.join("crates");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&crates)
        .with_context(|| format!("listing {}", crates.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    dirs.sort();
    for dir in dirs {
        let mut uses_loom = false;
        visit_files(&dir.join("src"), &mut |path| {
            if path.extension().is_some_and(|e| e == "rs") {
                uses_loom |= std::fs::read_to_string(path)?.contains("cfg(loom)");
            }
            Ok(())
        })?;
        if uses_loom && let Some(name) = dir.file_name() {
            found.push(name.to_string_lossy().into_owned());
        }
    }
    Ok(found)
}

/// Number of inputs under `fuzz/corpus/`.
fn fuzz_corpus_count(root: &Path) -> Result<usize> {
    let mut count = 0;
    visit_files(&root.join("fuzz/corpus"), &mut |_| {
        count += 1;
        Ok(())
    })?;
    Ok(count)
}

/// Calls `f` on every file below `dir` (nothing if `dir` does not exist).
fn visit_files(dir: &Path, f: &mut dyn FnMut(&Path) -> Result<()>) -> Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            visit_files(&path, f)?;
        } else {
            f(&path)?;
        }
    }
    Ok(())
}
