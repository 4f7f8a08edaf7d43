//! `cargo xtask readme [--check]`: each crate's `README.md`, made from the documentation
//! its `src/lib.rs` opens with, so the example a crate's page on a registry shows is the
//! one its doctest runs. `--check` (a CI step) fails when a README is not what its
//! `lib.rs` makes.
//!
//! The transformation: the `//!` lines, with intra-doc links turned into code spans (a
//! registry cannot resolve them), code blocks marked `rust` unless they name a language,
//! and the lines rustdoc hides in examples (`# ...`) left out; a title, the crate's
//! description and a footer around it.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// The README of crate `name` (with `description`) whose `lib.rs` is `lib`.
#[must_use]
pub fn render(name: &str, description: &str, lib: &str) -> String {
    let mut out = format!("# {name}\n\n{description}\n\n");
    let mut in_code = false;
    let mut rust_code = false;
    for line in lib.lines() {
        let Some(doc) = line.strip_prefix("//!") else {
            if line.trim().is_empty() || line.starts_with("#![") {
                continue;
            }
            break;
        };
        let doc = doc.strip_prefix(' ').unwrap_or(doc);
        if let Some(lang) = doc.trim_start().strip_prefix("```") {
            if in_code {
                in_code = false;
                out.push_str("```\n");
            } else {
                in_code = true;
                let lang = lang.trim();
                rust_code = lang.is_empty()
                    || lang.split(',').any(|l| {
                        matches!(l.trim(), "rust" | "no_run" | "ignore" | "should_panic" | "compile_fail")
                    });
                let _ = writeln!(out, "```{}", if rust_code { "rust" } else { lang });
            }
            continue;
        }
        if in_code {
            let trimmed = doc.trim_start();
            if rust_code && (trimmed == "#" || trimmed.starts_with("# ")) {
                continue;
            }
            out.push_str(doc);
            out.push('\n');
        } else {
            out.push_str(&plain_links(doc));
            out.push('\n');
        }
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    let _ = write!(
        out,
        "\nPart of [Themis replication](https://github.com/themis-replication/themis): a Rust toolkit for \
         replicating a database's data. Licensed under Apache-2.0.\n"
    );
    out
}

/// `` [`X`] `` and `` [`X`](path) `` and `[text](crate::path)` as text a registry shows.
fn plain_links(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find(']') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let text = &after[..close];
        let tail = &after[close + 1..];
        // A link with a target: keep web links, drop rustdoc paths.
        if let Some(target) = tail.strip_prefix('(')
            && let Some(end) = target.find(')')
        {
            let href = &target[..end];
            let is_page = std::path::Path::new(href.split('#').next().unwrap_or(href))
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("md"));
            if href.starts_with("http") || is_page {
                let _ = write!(out, "[{text}]({href})");
            } else {
                out.push_str(text);
            }
            rest = &target[end + 1..];
            continue;
        }
        if text.starts_with('`') && text.ends_with('`') {
            out.push_str(text);
        } else {
            let _ = write!(out, "[{text}]");
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// The library crates under `crates/`: (directory, name, description).
fn crates(root: &Path) -> Result<Vec<(std::path::PathBuf, String, String)>> {
    let mut out = Vec::new();
    let dir = root.join("crates");
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in entries {
        let manifest = path.join("Cargo.toml");
        if !path.join("src/lib.rs").exists() || !manifest.exists() {
            continue;
        }
        let text = std::fs::read_to_string(&manifest).with_context(|| manifest.display().to_string())?;
        let toml: toml::Table = text.parse().with_context(|| manifest.display().to_string())?;
        let package = toml.get("package").and_then(toml::Value::as_table).context("no [package]")?;
        let name = package.get("name").and_then(toml::Value::as_str).context("no package.name")?.to_string();
        let description =
            package.get("description").and_then(toml::Value::as_str).unwrap_or_default().to_string();
        out.push((path, name, description));
    }
    Ok(out)
}

/// Writes every crate's README, or with `check` fails naming each one that differs.
pub fn run(root: &Path, check: bool) -> Result<()> {
    let mut stale = Vec::new();
    for (dir, name, description) in crates(root)? {
        let lib = std::fs::read_to_string(dir.join("src/lib.rs"))?;
        let readme = render(&name, &description, &lib);
        let path = dir.join("README.md");
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current == readme {
            continue;
        }
        if check {
            stale.push(path.display().to_string());
        } else {
            std::fs::write(&path, readme).with_context(|| path.display().to_string())?;
            println!("wrote {}", path.display());
        }
    }
    if !stale.is_empty() {
        bail!("README not made from its lib.rs (run `cargo xtask readme`): {}", stale.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_become_a_readme_with_plain_links_and_visible_code() {
        let lib = "//! Clocks: [`Hlc`] and [`Timestamp`](crate::Timestamp), see [the format](../docs/x.md).\n\
                   //!\n//! ```\n//! use x::Hlc;\n//! # fn main() {\n//! let h = Hlc::new();\n//! # }\n//! ```\n\
                   //!\n//! ```text\n//! # kept\n//! ```\n\nuse std::fmt;\n//! not doc\n";
        let readme = render("themis-x", "A crate.", lib);
        assert!(readme.starts_with(
            "# themis-x\n\nA crate.\n\nClocks: `Hlc` and `Timestamp`, see [the format](../docs/x.md)."
        ));
        assert!(readme.contains("```rust\nuse x::Hlc;\nlet h = Hlc::new();\n```"), "{readme}");
        assert!(readme.contains("```text\n# kept\n```"), "{readme}");
        assert!(!readme.contains("not doc"));
        assert!(readme.ends_with("Licensed under Apache-2.0.\n"));
    }
}
