//! Quorum reads: ask R of N replicas, answer the newest version, and say who was stale.

use serde::{Deserialize, Serialize};

use crate::error::GeoError;

/// One replica's answer to a quorum read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaAnswer<S, V> {
    /// Who answered.
    pub source: S,
    /// The document's version there: the LSN of its last write (0: never written).
    pub version: u64,
    /// The document there (`None`: absent or deleted).
    pub value: Option<V>,
    /// The LSN the replica had applied.
    pub applied_lsn: u64,
}

/// What a quorum read answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumResult<S, V> {
    /// The newest value.
    pub value: Option<V>,
    /// Its version.
    pub version: u64,
    /// Whether the answers disagreed (some replica had another version, or the same
    /// version with another value: a divergence, not just lag).
    pub had_conflicts: bool,
    /// Who answered, newest first.
    pub sources: Vec<S>,
    /// Who answered with an older version: the replicas a read repair brings up to date.
    pub stale: Vec<S>,
    /// Who had the newest version with another value (divergent replicas).
    pub divergent: Vec<S>,
    /// The highest LSN any answering replica had applied (the session token's LSN).
    pub applied_lsn: u64,
}

/// Checks a quorum: `1 <= r <= n <= 64`.
pub fn check_quorum(r: usize, n: usize) -> Result<(), GeoError> {
    if r == 0 || r > n || n > 64 {
        return Err(GeoError::OutOfRange {
            name: "read quorum",
            value: format!("R={r} of N={n}"),
            reason: "needs 1 <= R <= N <= 64".into(),
        });
    }
    Ok(())
}

/// Combines the answers of a read that asked `n` replicas and needs `r` of them.
pub fn resolve<S: Clone, V: Clone + PartialEq>(
    answers: &[ReplicaAnswer<S, V>],
    r: usize,
    n: usize,
) -> Result<QuorumResult<S, V>, GeoError> {
    check_quorum(r, n)?;
    if answers.len() < r {
        return Err(GeoError::NoQuorum { needed: r, asked: n, answered: answers.len() });
    }
    let mut order: Vec<&ReplicaAnswer<S, V>> = answers.iter().collect();
    // Newest version first; among equals, the replica furthest along.
    order.sort_by(|a, b| b.version.cmp(&a.version).then(b.applied_lsn.cmp(&a.applied_lsn)));
    let newest = order[0];
    let mut stale = Vec::new();
    let mut divergent = Vec::new();
    for a in &order[1..] {
        if a.version < newest.version {
            stale.push(a.source.clone());
        } else if a.value != newest.value {
            divergent.push(a.source.clone());
        }
    }
    Ok(QuorumResult {
        value: newest.value.clone(),
        version: newest.version,
        had_conflicts: !stale.is_empty() || !divergent.is_empty(),
        sources: order.iter().map(|a| a.source.clone()).collect(),
        stale,
        divergent,
        applied_lsn: answers.iter().map(|a| a.applied_lsn).max().unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(source: &str, version: u64, value: &str) -> ReplicaAnswer<String, String> {
        ReplicaAnswer { source: source.into(), version, value: Some(value.into()), applied_lsn: version + 1 }
    }

    #[test]
    fn the_newest_version_wins_and_stale_replicas_are_named() {
        let got =
            resolve(&[answer("a", 5, "old"), answer("b", 9, "new"), answer("c", 9, "new")], 2, 3).unwrap();
        assert_eq!(got.value.as_deref(), Some("new"));
        assert_eq!(got.version, 9);
        assert!(got.had_conflicts);
        assert_eq!(got.stale, ["a"]);
        assert!(got.divergent.is_empty());
        assert_eq!(got.sources[2], "a");
        assert_eq!(got.applied_lsn, 10);

        let agree = resolve(&[answer("a", 9, "x"), answer("b", 9, "x")], 2, 3).unwrap();
        assert!(!agree.had_conflicts);

        let split = resolve(&[answer("a", 9, "x"), answer("b", 9, "y")], 2, 2).unwrap();
        assert!(split.had_conflicts);
        assert_eq!(split.divergent.len(), 1);
    }

    #[test]
    fn too_few_answers_or_a_bad_quorum_is_an_error() {
        assert_eq!(
            resolve(&[answer("a", 1, "x")], 2, 3).unwrap_err(),
            GeoError::NoQuorum { needed: 2, asked: 3, answered: 1 }
        );
        for (r, n) in [(0, 3), (4, 3), (1, 65)] {
            let err = resolve::<String, String>(&[], r, n).unwrap_err().to_string();
            assert!(err.contains("1 <= R <= N <= 64"), "{err}");
        }
    }
}
