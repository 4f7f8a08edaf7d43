//! A Wing–Gong–Lowe linearizability checker for a key-value register history.
//!
//! Linearizability is compositional (Herlihy & Wing), so each key is checked on its own.
//! For one key, a depth-first search tries to order the operations: an operation may go
//! next if it was invoked before every remaining completed operation returned, and its
//! result agrees with the register's value. Visited (set of linearized operations, value)
//! pairs are memoized (Lowe's refinement), which keeps the search polynomial on the
//! histories a simulator produces. An operation that never returned (its client gave up,
//! its leader crashed) may take effect at any point after its invocation, or not at all.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// What an operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Wrote a value.
    Write(u64),
    /// Read a value (`None`: the key was absent).
    Read(Option<u64>),
}

/// One operation of a history, with simulated invocation and return times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op {
    /// The key.
    pub key: u64,
    /// What it did.
    pub kind: OpKind,
    /// When the client invoked it.
    pub invoke: u64,
    /// When it returned; `None` if it never did.
    pub ret: Option<u64>,
}

/// A history that cannot be linearized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotLinearizable {
    /// The key whose history fails.
    pub key: u64,
    /// That key's operations, in invocation order.
    pub ops: Vec<Op>,
}

impl fmt::Display for NotLinearizable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "the history of key {} is not linearizable:", self.key)?;
        for op in &self.ops {
            let ret = op.ret.map_or_else(|| "never".to_string(), |t| t.to_string());
            writeln!(f, "  {:?} invoked {} returned {}", op.kind, op.invoke, ret)?;
        }
        Ok(())
    }
}

/// Checks a whole history, key by key.
pub fn check(history: &[Op]) -> Result<(), NotLinearizable> {
    // Values some read returned, per key.
    let read: HashSet<(u64, u64)> = history
        .iter()
        .filter_map(|op| match op.kind {
            OpKind::Read(Some(v)) if op.ret.is_some() => Some((op.key, v)),
            _ => None,
        })
        .collect();
    let mut by_key: BTreeMap<u64, Vec<Op>> = BTreeMap::new();
    for op in history {
        match op.kind {
            // A read that never returned constrains nothing.
            OpKind::Read(_) if op.ret.is_none() => continue,
            // Nor does a write of unknown outcome whose value no read saw: "it did not take
            // effect" is always a valid choice for it, and dropping it keeps the search
            // small when faults leave many writes unanswered (values are unique per key).
            OpKind::Write(v) if op.ret.is_none() && !read.contains(&(op.key, v)) => continue,
            _ => {}
        }
        by_key.entry(op.key).or_default().push(*op);
    }
    for (key, mut ops) in by_key {
        ops.sort_by_key(|op| op.invoke);
        if !check_register(&ops) {
            return Err(NotLinearizable { key, ops });
        }
    }
    Ok(())
}

/// Whether one register's history (sorted by invocation) is linearizable.
///
/// A depth-first search with an explicit stack (real-process histories hold thousands of
/// operations per key, too deep to recurse): each level picks the next operation to
/// linearize among those invoked before the earliest return still pending. Since the
/// operations are sorted by invocation, only the window from the first one not yet
/// linearized up to that horizon is scanned. The memo of visited states keys the set of
/// linearized operations by a 128-bit Zobrist hash (updated in O(1) per step).
fn check_register(ops: &[Op]) -> bool {
    let required = ops.iter().filter(|op| op.ret.is_some()).count();
    if required == 0 {
        return true;
    }
    let mut rng = fastrand::Rng::with_seed(0x11ea_5eed);
    let zobrist: Vec<u128> =
        (0..ops.len()).map(|_| u128::from(rng.u64(..)) << 64 | u128::from(rng.u64(..))).collect();
    let mut done = vec![false; ops.len()];
    // Returns of the completed operations not yet linearized, with their multiplicity.
    let mut pending: BTreeMap<u64, usize> = BTreeMap::new();
    for op in ops {
        if let Some(ret) = op.ret {
            *pending.entry(ret).or_default() += 1;
        }
    }
    let horizon = |pending: &BTreeMap<u64, usize>| pending.keys().next().copied().unwrap_or(u64::MAX);
    let mut seen: HashSet<(u128, Option<u64>)> = HashSet::new();
    seen.insert((0, None));
    let mut stack =
        vec![Level { value: None, completed: 0, first: 0, next: 0, horizon: horizon(&pending), hash: 0 }];
    // The operation each level above the first linearized, to undo on the way back.
    let mut chosen: Vec<usize> = Vec::new();
    let undo = |i: usize, done: &mut Vec<bool>, pending: &mut BTreeMap<u64, usize>| {
        done[i] = false;
        if let Some(ret) = ops[i].ret {
            *pending.entry(ret).or_default() += 1;
        }
    };
    while let Some(level) = stack.last_mut() {
        let mut found = None;
        while level.next < ops.len() {
            let i = level.next;
            let op = ops[i];
            if op.invoke > level.horizon {
                level.next = ops.len();
                break;
            }
            level.next += 1;
            if done[i] {
                continue;
            }
            let value = match op.kind {
                OpKind::Write(v) => Some(v),
                OpKind::Read(read) if read == level.value => level.value,
                OpKind::Read(_) => continue,
            };
            found = Some((i, value, level.completed + usize::from(op.ret.is_some())));
            break;
        }
        let (first, hash) = (level.first, level.hash);
        let Some((i, value, completed)) = found else {
            stack.pop();
            if let Some(i) = chosen.pop() {
                undo(i, &mut done, &mut pending);
            }
            continue;
        };
        if completed == required {
            return true;
        }
        let hash = hash ^ zobrist[i];
        if !seen.insert((hash, value)) {
            continue;
        }
        done[i] = true;
        if let Some(ret) = ops[i].ret
            && let Some(n) = pending.get_mut(&ret)
        {
            *n -= 1;
            if *n == 0 {
                pending.remove(&ret);
            }
        }
        chosen.push(i);
        let mut first = first;
        while first < ops.len() && done[first] {
            first += 1;
        }
        stack.push(Level { value, completed, first, next: first, horizon: horizon(&pending), hash });
    }
    false
}

/// One level of the search: the register's value after the operations linearized so far,
/// how many of them completed, the first operation not linearized, the next one to try,
/// the horizon, and the hash of the set linearized.
struct Level {
    value: Option<u64>,
    completed: usize,
    first: usize,
    next: usize,
    horizon: u64,
    hash: u128,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(v: u64, invoke: u64, ret: u64) -> Op {
        Op { key: 0, kind: OpKind::Write(v), invoke, ret: Some(ret) }
    }

    fn r(v: Option<u64>, invoke: u64, ret: u64) -> Op {
        Op { key: 0, kind: OpKind::Read(v), invoke, ret: Some(ret) }
    }

    #[test]
    fn sequential_and_concurrent_histories_pass() {
        check(&[w(1, 0, 10), r(Some(1), 20, 30), w(2, 40, 50), r(Some(2), 60, 70)]).unwrap();
        // A read concurrent with a write may see either value.
        check(&[w(1, 0, 10), w(2, 20, 50), r(Some(1), 25, 30), r(Some(2), 40, 60)]).unwrap();
        check(&[r(None, 0, 5), w(1, 10, 20)]).unwrap();
    }

    #[test]
    fn a_lost_write_is_caught() {
        let err = check(&[w(1, 0, 10), r(None, 20, 30)]).unwrap_err();
        assert_eq!(err.key, 0);
        assert!(err.to_string().contains("Read(None)"), "{err}");
    }

    #[test]
    fn a_stale_read_is_caught() {
        assert!(check(&[w(1, 0, 10), w(2, 20, 30), r(Some(1), 40, 50)]).is_err());
    }

    #[test]
    fn reads_cannot_go_back_in_time() {
        // Both writes overlap both reads, but once a read saw 2 a later read cannot see 1
        // again unless a write of 1 could come between.
        assert!(check(&[w(1, 0, 10), w(2, 5, 100), r(Some(2), 20, 30), r(Some(1), 40, 50)]).is_err());
    }

    #[test]
    fn a_write_that_never_returned_may_or_may_not_take_effect() {
        let pending = Op { key: 0, kind: OpKind::Write(7), invoke: 15, ret: None };
        check(&[w(1, 0, 10), pending, r(Some(7), 20, 30)]).unwrap();
        check(&[w(1, 0, 10), pending, r(Some(1), 20, 30)]).unwrap();
        // But not before it was invoked.
        assert!(check(&[w(1, 0, 10), r(Some(7), 11, 12), pending]).is_err());
    }

    #[test]
    fn many_unanswered_writes_nobody_read_are_checked_quickly() {
        // 5,000 writes whose outcome is unknown and one that was read: the unread ones
        // cannot matter, and the check stays instant.
        let mut history: Vec<Op> =
            (0..5000).map(|i| Op { key: 0, kind: OpKind::Write(i + 10), invoke: i, ret: None }).collect();
        history.push(w(1, 0, 1));
        history.push(r(Some(1), 2, 3));
        history.push(Op { key: 0, kind: OpKind::Write(7), invoke: 3, ret: None });
        history.push(r(Some(7), 9000, 9001));
        let started = std::time::Instant::now();
        assert!(check(&history).is_ok());
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        // A read of a value never written is still caught.
        history.push(r(Some(99_999), 9002, 9003));
        assert!(check(&history).is_err());
    }

    #[test]
    fn a_long_sequential_history_does_not_exhaust_the_stack() {
        // 20,000 operations on one key, one after another: 20,000 levels deep.
        let mut history = Vec::new();
        for i in 0..10_000u64 {
            history.push(w(i, 4 * i, 4 * i + 1));
            history.push(r(Some(i), 4 * i + 2, 4 * i + 3));
        }
        let checker = std::thread::Builder::new().stack_size(256 << 10).spawn(move || check(&history));
        assert!(checker.unwrap().join().unwrap().is_ok());
    }

    #[test]
    fn keys_are_checked_independently() {
        let other = Op { key: 1, kind: OpKind::Read(Some(9)), invoke: 0, ret: Some(1) };
        let err = check(&[w(1, 0, 10), other]).unwrap_err();
        assert_eq!(err.key, 1);
    }
}
