//! The layer check run the way CI runs it, on fixture workspaces read by `cargo metadata`.

use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn check(fixture: &str) -> anyhow::Result<usize> {
    let root = dir();
    xtask::layers::check(
        &root.join("tests/fixtures").join(fixture).join("Cargo.toml"),
        &root.join("layers.toml"),
    )
}

#[test]
fn a_forbidden_edge_is_rejected_and_named() {
    let err = check("upward-edge").unwrap_err().to_string();
    assert!(
        err.contains("themis-clock -> themis-wal (layer 1) as a dependency: forbidden"),
        "unexpected message: {err}"
    );
    assert!(err.starts_with("1 layer violation(s)"), "{err}");
}

#[test]
fn a_clean_fixture_passes() {
    assert_eq!(check("clean").unwrap(), 2);
}

#[test]
fn this_workspace_passes() {
    let root = dir().parent().unwrap().to_path_buf();
    xtask::layers::check(&root.join("Cargo.toml"), &root.join("xtask/layers.toml")).unwrap();
}

/// docs/architecture.md shows the same table to readers; keep the two in step.
#[test]
fn the_architecture_doc_lists_every_row() {
    let root = dir().parent().unwrap().to_path_buf();
    let table = xtask::layers::LayerTable::load(&root.join("xtask/layers.toml")).unwrap();
    let doc = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
    for (name, row) in &table.crates {
        let prefix = format!("| {} | {name} |", row.layer);
        assert!(
            doc.lines().any(|l| l.starts_with(&prefix)),
            "docs/architecture.md lacks a row starting {prefix:?}"
        );
    }
}
