//! `cargo xtask fuzz <target> --seconds N`: runs one cargo-fuzz target on the nightly
//! toolchain (the only thing in the project that needs nightly), installing cargo-fuzz
//! when it is missing. The committed corpus seeds a scratch corpus under `target/`, so a
//! run never dirties `fuzz/corpus/`; new finds that matter are copied in by hand.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Whether a nightly toolchain is installed.
#[must_use]
pub fn nightly_available() -> bool {
    quiet(Command::new("rustup").args(["run", "nightly", "rustc", "--version"]))
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// The fuzz targets: the files of `fuzz/fuzz_targets/`.
pub fn targets(root: &Path) -> Result<Vec<String>> {
    let dir = root.join("fuzz/fuzz_targets");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs")
            && let Some(stem) = path.file_stem()
        {
            names.push(stem.to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

fn ensure_cargo_fuzz() -> Result<()> {
    if quiet(Command::new("rustup").args(["run", "nightly", "cargo", "fuzz", "--version"])) {
        return Ok(());
    }
    println!("    cargo-fuzz is missing; installing it (cargo install cargo-fuzz --locked)");
    let status = Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]).status()?;
    if !status.success() {
        bail!("`cargo install cargo-fuzz --locked` exited with {status}");
    }
    Ok(())
}

/// Runs `target` for `seconds`.
pub fn run(root: &Path, target: &str, seconds: u64) -> Result<()> {
    let known = targets(root)?;
    if !known.iter().any(|t| t == target) {
        bail!("unknown fuzz target {target:?}; the targets are {}", known.join(", "));
    }
    if !nightly_available() {
        bail!("fuzzing needs a nightly toolchain (rustup toolchain install nightly)");
    }
    ensure_cargo_fuzz()?;
    let scratch = root.join("target/fuzz-corpus").join(target);
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let seeds = root.join("fuzz/corpus").join(target);
    let max_time = format!("-max_total_time={seconds}");
    let args = ["run", "nightly", "cargo", "fuzz", "run", target];
    println!("    $ rustup {} {} {} -- {max_time}", args.join(" "), scratch.display(), seeds.display());
    let status = Command::new("rustup")
        .args(args)
        .arg(&scratch)
        .arg(&seeds)
        .args(["--", &max_time])
        .current_dir(root.join("fuzz"))
        .status()
        .context("starting cargo fuzz")?;
    if !status.success() {
        bail!("fuzz target {target} failed ({status}); the crashing input is under fuzz/artifacts/{target}/");
    }
    Ok(())
}
