//! The synchronization primitives the queue is written against: `std` normally, loom's
//! model-checked twins under `--cfg loom` (tokio's layout, as in themis-wal).

#[cfg(loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`. Every critical section of the queue either completes or changes nothing
/// the next holder relies on, so poisoning is ignored.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
