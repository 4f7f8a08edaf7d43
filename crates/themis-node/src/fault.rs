//! Fault injection for tests, off unless `THEMIS_FAULT_DIR` names a directory. Each fault
//! is a file there holding a number, read again at most every 50 ms, so a test switches a
//! fault on and off on one running node by writing its file:
//!
//! | File | Effect |
//! |---|---|
//! | `fsync-delay-ms.<node id>` | every fsync of the node's WAL waits this long (a slow disk) |
//! | `apply-skip-every.<node id>` | the node's store drops every Nth write it applies to a user collection (a replica whose data diverges) |
//!
//! A missing file, or one without a number, is 0: no fault. Never set it in production;
//! a node logs a warning at start when it is set.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How often a fault file is read again.
const REFRESH: Duration = Duration::from_millis(50);

/// One fault's file and its last value.
#[derive(Debug)]
pub struct FaultFile {
    path: PathBuf,
    cached: Mutex<Option<(Instant, u64)>>,
}

impl FaultFile {
    /// The fault `name` of node `node`, when `THEMIS_FAULT_DIR` is set.
    #[must_use]
    pub fn from_env(name: &str, node: u64) -> Option<FaultFile> {
        let dir = std::env::var_os("THEMIS_FAULT_DIR")?;
        let path = PathBuf::from(dir).join(format!("{name}.{node}"));
        tracing::warn!(file = %path.display(), "fault injection is on: this node reads faults from this file");
        Some(FaultFile { path, cached: Mutex::new(None) })
    }

    /// The fault in file `path`, whatever the environment.
    #[must_use]
    pub fn at(path: PathBuf) -> FaultFile {
        FaultFile { path, cached: Mutex::new(None) }
    }

    /// The file's number now (0: none).
    pub fn value(&self) -> u64 {
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        match *cached {
            Some((at, v)) if at.elapsed() < REFRESH => v,
            _ => {
                let v =
                    std::fs::read_to_string(&self.path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
                *cached = Some((Instant::now(), v));
                v
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_file_is_its_number_and_a_missing_or_bad_one_is_zero() {
        let dir = tempfile::tempdir().unwrap();
        let fault = FaultFile { path: dir.path().join("x.1"), cached: Mutex::new(None) };
        assert_eq!(fault.value(), 0);
        std::fs::write(dir.path().join("x.1"), "120\n").unwrap();
        std::thread::sleep(REFRESH);
        assert_eq!(fault.value(), 120);
        std::fs::write(dir.path().join("x.1"), "soon").unwrap();
        std::thread::sleep(REFRESH);
        assert_eq!(fault.value(), 0);
    }
}
