//! The synchronization primitives the group-commit coordinator is written against:
//! `std` normally, loom's model-checked twins under `--cfg loom` (tokio's layout).

#[cfg(loom)]
pub(crate) use loom::sync::{Condvar, Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::sync::{Condvar, Mutex, MutexGuard};

/// Locks `mutex`. A panic while holding one of the WAL's locks leaves the state as
/// consistent as before the call (every critical section either completes or changes
/// nothing the next holder relies on), so poisoning is ignored.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Waits on `condvar`, ignoring poisoning as [`lock`] does.
pub(crate) fn wait<'a, T>(condvar: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    condvar.wait(guard).unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Waits on `condvar` for at most `timeout`, ignoring poisoning as [`lock`] does.
pub(crate) fn wait_timeout<'a, T>(
    condvar: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: std::time::Duration,
) -> MutexGuard<'a, T> {
    condvar.wait_timeout(guard, timeout).map_or_else(|e| e.into_inner().0, |r| r.0)
}

/// Runs `future` to completion on the calling thread, parking it while the future is
/// pending: the blocking appends are the async ones driven this way, so a thread is woken
/// by exactly the flush that acknowledges it (by `unpark`), never by a broadcast.
#[cfg(not(loom))]
pub(crate) fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    thread_local! {
        static WAKER: Waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    }
    let mut future = std::pin::pin!(future);
    WAKER.with(|waker| {
        let mut cx = Context::from_waker(waker);
        loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return output;
            }
            // A stale or early unpark only costs one more poll.
            std::thread::park();
        }
    })
}

#[cfg(loom)]
pub(crate) use loom::future::block_on;

/// [`block_on`], where a pending future first gets `spin`: it may wait without parking
/// (yielding the CPU) and returns whether the future is worth polling again at once. Only
/// if not does the thread park. A wake that comes while it spins leaves the thread's token
/// set, which only costs one more poll later.
#[cfg(not(loom))]
pub(crate) fn block_on_spinning<F: std::future::Future>(
    future: F,
    mut spin: impl FnMut() -> bool,
) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut spun_once = false;
    block_on(std::future::poll_fn(move |cx| {
        loop {
            if let std::task::Poll::Ready(output) = future.as_mut().poll(cx) {
                return std::task::Poll::Ready(output);
            }
            if spun_once || !spin() {
                spun_once = false;
                return std::task::Poll::Pending;
            }
            spun_once = true;
        }
    }))
}

/// Loom models the coordinator, not the spinning: the future is driven as by `block_on`.
#[cfg(loom)]
pub(crate) fn block_on_spinning<F: std::future::Future>(future: F, _spin: impl FnMut() -> bool) -> F::Output {
    loom::future::block_on(future)
}
