//! `cargo xtask layers`: every dependency edge between workspace crates must follow the
//! layer table in `xtask/layers.toml`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// The parsed `layers.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerTable {
    /// Crates that may only appear as dev-dependencies.
    pub dev_only: BTreeSet<String>,
    /// Workspace members outside the layers.
    pub outside: BTreeSet<String>,
    /// One row per layered crate.
    pub crates: BTreeMap<String, Row>,
}

/// One row of the table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Row {
    /// The layer number, or "dev".
    pub layer: Layer,
    /// The crates this one may name as normal or build dependencies.
    pub may_depend_on: BTreeSet<String>,
}

impl LayerTable {
    /// Reads and checks the table file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let table: LayerTable =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        for (name, row) in &table.crates {
            for dep in &row.may_depend_on {
                if !table.crates.contains_key(dep) {
                    bail!("{}: {name} may depend on {dep}, which has no row", path.display());
                }
            }
        }
        Ok(table)
    }
}

/// A layer: a number, or a name such as "dev" for crates outside the numbered stack.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Layer {
    /// A numbered layer; lower numbers are further down.
    Number(u8),
    /// A named layer.
    Name(String),
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layer::Number(n) => write!(f, "{n}"),
            Layer::Name(name) => f.write_str(name),
        }
    }
}

/// The kind of a dependency edge, as cargo names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DepKind {
    /// `[dependencies]`
    Normal,
    /// `[build-dependencies]`
    Build,
    /// `[dev-dependencies]`
    Dev,
}

impl fmt::Display for DepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DepKind::Normal => "dependency",
            DepKind::Build => "build-dependency",
            DepKind::Dev => "dev-dependency",
        })
    }
}

/// A workspace member and the workspace crates it names.
#[derive(Debug, Clone)]
pub struct Package {
    /// Package name.
    pub name: String,
    /// Declared dependencies on other packages (any source).
    pub deps: Vec<(String, DepKind)>,
}

/// Reads the workspace members and their declared dependencies from `cargo metadata`.
/// `--no-deps` keeps it offline and fast: declared edges are exactly what the table rules.
pub fn workspace_packages(manifest: &Path) -> Result<Vec<Package>> {
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline", "--manifest-path"])
        .arg(manifest)
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed for {}:\n{}",
            manifest.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_metadata(&output.stdout)
}

fn parse_metadata(json: &[u8]) -> Result<Vec<Package>> {
    #[derive(Deserialize)]
    struct Metadata {
        packages: Vec<MetaPackage>,
    }
    #[derive(Deserialize)]
    struct MetaPackage {
        name: String,
        dependencies: Vec<MetaDep>,
    }
    #[derive(Deserialize)]
    struct MetaDep {
        name: String,
        kind: Option<String>,
    }
    let metadata: Metadata = serde_json::from_slice(json).context("parsing cargo metadata output")?;
    metadata
        .packages
        .into_iter()
        .map(|p| {
            let deps = p
                .dependencies
                .into_iter()
                .map(|d| {
                    let kind = match d.kind.as_deref() {
                        None | Some("normal") => DepKind::Normal,
                        Some("build") => DepKind::Build,
                        Some("dev") => DepKind::Dev,
                        Some(other) => bail!("{}: unknown dependency kind {other:?} for {}", p.name, d.name),
                    };
                    Ok((d.name, kind))
                })
                .collect::<Result<_>>()?;
            Ok(Package { name: p.name, deps })
        })
        .collect()
}

/// Every edge that breaks the table, as one human-readable line each. Empty means clean.
#[must_use]
pub fn violations(table: &LayerTable, packages: &[Package]) -> Vec<String> {
    let members: BTreeSet<&str> = packages.iter().map(|p| p.name.as_str()).collect();
    let mut found = Vec::new();
    for package in packages {
        let name = package.name.as_str();
        if table.outside.contains(name) {
            continue;
        }
        let Some(row) = table.crates.get(name) else {
            found.push(format!(
                "{name} is a workspace member but has no row in xtask/layers.toml (add it, matching DESIGN.md)"
            ));
            continue;
        };
        for (dep, kind) in &package.deps {
            let dep = dep.as_str();
            let layered = table.crates.contains_key(dep);
            if !layered && !table.outside.contains(dep) && !members.contains(dep) {
                continue; // A third-party crate: the table does not rule those.
            }
            let allowed = match kind {
                DepKind::Normal | DepKind::Build => row.may_depend_on.contains(dep),
                DepKind::Dev => row.may_depend_on.contains(dep) || table.dev_only.contains(dep),
            };
            if !allowed {
                let why = if table.dev_only.contains(dep) {
                    format!("{dep} may only be a dev-dependency")
                } else if table.outside.contains(dep) {
                    format!("{dep} is outside the layers")
                } else {
                    format!("layer {} may depend only on {}", row.layer, list(&row.may_depend_on))
                };
                let layer =
                    table.crates.get(dep).map_or_else(String::new, |r| format!(" (layer {})", r.layer));
                found.push(format!("{name} -> {dep}{layer} as a {kind}: forbidden, {why}"));
            }
        }
    }
    found
}

fn list(names: &BTreeSet<String>) -> String {
    if names.is_empty() {
        "no themis crate".into()
    } else {
        names.iter().map(String::as_str).collect::<Vec<_>>().join(", ")
    }
}

/// Checks the workspace at `manifest` against the table at `table_path`.
pub fn check(manifest: &Path, table_path: &Path) -> Result<usize> {
    let table = LayerTable::load(table_path)?;
    let packages = workspace_packages(manifest)?;
    let found = violations(&table, &packages);
    if !found.is_empty() {
        bail!("{} layer violation(s):\n  {}", found.len(), found.join("\n  "));
    }
    Ok(packages.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> LayerTable {
        LayerTable::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("layers.toml")).unwrap()
    }

    fn package(name: &str, deps: &[(&str, DepKind)]) -> Package {
        Package { name: name.into(), deps: deps.iter().map(|&(d, k)| (d.into(), k)).collect() }
    }

    #[test]
    fn allowed_edges_pass() {
        let packages = [
            package("themis-clock", &[("serde", DepKind::Normal), ("themis-testkit", DepKind::Dev)]),
            package("themis-wal", &[("themis-clock", DepKind::Normal), ("themis-clock", DepKind::Build)]),
            package("themis-replication", &[("themis-wal", DepKind::Normal)]),
            package("themis-benches", &[("themis-replication", DepKind::Normal)]),
        ];
        assert_eq!(violations(&table(), &packages), Vec::<String>::new());
    }

    #[test]
    fn upward_sideways_and_dev_only_edges_are_named() {
        let packages = [
            package("themis-clock", &[("themis-wal", DepKind::Normal)]),
            package("themis-wal", &[("themis-crdt", DepKind::Build)]),
            package("themis-cdc", &[("themis-testkit", DepKind::Normal)]),
            package("themis-ship", &[("themis-raft", DepKind::Dev)]),
            package("themis-node", &[("themis-benches", DepKind::Normal)]),
        ];
        let found = violations(&table(), &packages);
        let expected = [
            "themis-clock -> themis-wal (layer 1) as a dependency: forbidden, layer 0 may depend only on no themis crate",
            "themis-wal -> themis-crdt (layer 1) as a build-dependency: forbidden, layer 1 may depend only on themis-clock",
            "themis-cdc -> themis-testkit (layer dev) as a dependency: forbidden, themis-testkit may only be a dev-dependency",
            "themis-ship -> themis-raft (layer 3) as a dev-dependency: forbidden, layer 2 may depend only on themis-clock, themis-wal",
            "themis-node -> themis-benches as a dependency: forbidden, themis-benches is outside the layers",
        ];
        assert_eq!(found, expected);
    }

    #[test]
    fn a_member_without_a_row_is_reported() {
        let found = violations(&table(), &[package("themis-extra", &[])]);
        assert_eq!(found.len(), 1);
        assert!(found[0].starts_with("themis-extra is a workspace member but has no row"));
    }

    #[test]
    fn unknown_dependency_kinds_are_errors() {
        let json = br#"{"packages":[{"name":"a","dependencies":[{"name":"b","kind":"weird"}]}]}"#;
        assert!(parse_metadata(json).unwrap_err().to_string().contains("unknown dependency kind \"weird\""));
    }
}
