//! The change stream: one per node, fed by the commit path, read by any number of
//! subscribers.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use themis_clock::Timestamp;
use themis_wal::{Entry, Lsn};

use crate::error::CdcError;
use crate::event::{ChangeEvent, decode_entry};
use crate::filter::Filter;
use crate::queue::{Next, Queue};
use crate::source::LogSource;

/// Settings of a [`CdcStream`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdcConfig {
    /// Data entries the live queue holds (default 65,536). A subscriber further behind
    /// reads the log instead; writers never wait.
    pub max_depth: usize,
    /// An idle subscription receives a heartbeat this often (default 1 s).
    pub heartbeat: Duration,
    /// Most entries a subscriber takes from the queue at once (default 256).
    pub max_batch: usize,
    /// Bytes of log a catching-up subscriber reads at once (default 1 MiB).
    pub catch_up_bytes: usize,
}

impl Default for CdcConfig {
    fn default() -> CdcConfig {
        CdcConfig {
            max_depth: 65_536,
            heartbeat: Duration::from_secs(1),
            max_batch: 256,
            catch_up_bytes: 1 << 20,
        }
    }
}

impl CdcConfig {
    /// The largest `max_depth`.
    pub const MAX_DEPTH_LIMIT: usize = 1 << 24;
    /// The shortest `heartbeat`.
    pub const HEARTBEAT_MIN: Duration = Duration::from_millis(10);
    /// The longest `heartbeat`.
    pub const HEARTBEAT_MAX: Duration = Duration::from_hours(1);

    /// Checks every bound.
    pub fn validate(&self) -> Result<(), CdcError> {
        if !(1..=Self::MAX_DEPTH_LIMIT).contains(&self.max_depth) {
            return Err(CdcError::Config(format!("max_depth = {}: must be 1 to 16,777,216", self.max_depth)));
        }
        if !(Self::HEARTBEAT_MIN..=Self::HEARTBEAT_MAX).contains(&self.heartbeat) {
            return Err(CdcError::Config(format!(
                "heartbeat = {:?}: must be 10 ms to 1 hour",
                self.heartbeat
            )));
        }
        if !(1..=65_536).contains(&self.max_batch) {
            return Err(CdcError::Config(format!("max_batch = {}: must be 1 to 65,536", self.max_batch)));
        }
        if !(4096..=1 << 30).contains(&self.catch_up_bytes) {
            return Err(CdcError::Config(format!(
                "catch_up_bytes = {}: must be 4 KiB to 1 GiB",
                self.catch_up_bytes
            )));
        }
        Ok(())
    }
}

/// One subscriber's progress, as [`CdcStream::stats`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberStats {
    /// Its id (unique within the stream).
    pub id: u64,
    /// Everything up to this LSN has been delivered to it (or filtered out).
    pub position: Lsn,
    /// The LSNs published past its position.
    pub lag_lsn: u64,
    /// Milliseconds between the commit time of its position and of the newest entry.
    pub lag_ms: u64,
    /// Whether it is reading the log rather than the live queue.
    pub catching_up: bool,
    /// Events it has been handed.
    pub delivered: u64,
    /// Its filter's collection patterns (empty: all).
    pub patterns: Vec<String>,
}

/// The stream's state, as [`CdcStream::stats`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdcStats {
    /// Data entries in the live queue.
    pub queue_depth: usize,
    /// Everything up to this LSN has been published.
    pub resolved_lsn: Lsn,
    /// Entries at or below this LSN are no longer in the queue.
    pub floor_lsn: Lsn,
    /// Data entries evicted from the queue since start.
    pub evicted: u64,
    /// Events handed to subscribers since start.
    pub delivered: u64,
    /// Each subscriber.
    pub subscribers: Vec<SubscriberStats>,
}

#[derive(Debug, Default)]
struct Progress {
    position: AtomicU64,
    position_ms: AtomicU64,
    catching_up: AtomicBool,
    delivered: AtomicU64,
}

#[derive(Debug)]
struct Registered {
    progress: Arc<Progress>,
    patterns: Vec<String>,
}

#[derive(Debug)]
struct Inner {
    queue: Queue,
    source: Arc<dyn LogSource>,
    config: CdcConfig,
    subscribers: Mutex<BTreeMap<u64, Registered>>,
    next_id: AtomicU64,
    evicted: AtomicU64,
    delivered: AtomicU64,
}

impl std::fmt::Debug for dyn LogSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LogSource {{ first_lsn: {}, last_lsn: {} }}", self.first_lsn(), self.last_lsn())
    }
}

/// Change data capture over one log. Cheap to clone; clones share everything.
#[derive(Debug, Clone)]
pub struct CdcStream {
    inner: Arc<Inner>,
}

impl CdcStream {
    /// A stream over `source` whose live queue starts after `lsn` (committed at `hlc`):
    /// the commit path publishes what follows it, and subscribers from earlier
    /// positions read `source`.
    pub fn new(
        config: CdcConfig,
        source: Arc<dyn LogSource>,
        lsn: Lsn,
        hlc: Timestamp,
    ) -> Result<CdcStream, CdcError> {
        config.validate()?;
        Ok(CdcStream {
            inner: Arc::new(Inner {
                queue: Queue::new(config.max_depth, lsn, hlc),
                source,
                config,
                subscribers: Mutex::new(BTreeMap::new()),
                next_id: AtomicU64::new(1),
                evicted: AtomicU64::new(0),
                delivered: AtomicU64::new(0),
            }),
        })
    }

    /// Hands committed entries, in log order, to subscribers. Never waits on one: a
    /// full queue drops its oldest entry, and subscribers that still needed it read the
    /// log. Entries at or below the last published LSN are ignored.
    pub fn publish(&self, entries: &[Entry]) {
        let evicted = self.inner.queue.publish(entries);
        if evicted > 0 {
            self.inner.evicted.fetch_add(evicted as u64, Ordering::Relaxed);
        }
    }

    /// The log was replaced up to `lsn` (a snapshot was installed): the queue starts
    /// again after it.
    pub fn restart_at(&self, lsn: Lsn, hlc: Timestamp) {
        self.inner.queue.restart_at(lsn, hlc);
    }

    /// Ends every subscription once it has what is queued.
    pub fn close(&self) {
        self.inner.queue.close();
    }

    /// The LSN up to which everything has been published, and its commit time.
    #[must_use]
    pub fn resolved(&self) -> (Lsn, Timestamp) {
        let d = self.inner.queue.depths();
        (d.resolved, d.resolved_hlc)
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &CdcConfig {
        &self.inner.config
    }

    /// Subscribes to changes passing `filter` committed after LSN `from` (0: from the
    /// start of the log). Resuming with the LSN of the last event seen delivers exactly
    /// what follows it.
    pub fn subscribe(&self, filter: Filter, from: Lsn) -> Result<Subscription, CdcError> {
        let inner = &self.inner;
        let depths = inner.queue.depths();
        let last = inner.source.last_lsn().max(depths.resolved);
        if from > last {
            return Err(CdcError::BeyondLog { from, last });
        }
        let oldest = inner.source.first_lsn();
        if from < depths.floor && from + 1 < oldest {
            return Err(CdcError::Gone { needed: from + 1, oldest });
        }
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let progress = Arc::new(Progress::default());
        progress.position.store(from, Ordering::Relaxed);
        let patterns = filter.patterns().to_vec();
        inner
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, Registered { progress: Arc::clone(&progress), patterns });
        Ok(Subscription {
            id,
            stream: self.clone(),
            filter,
            position: from,
            position_hlc: Timestamp::ZERO,
            buffer: VecDeque::new(),
            progress,
            heartbeat_due: None,
            #[cfg(loom)]
            resample_floor_bug: false,
        })
    }

    /// The callback form: `callback` gets every event (heartbeats included) on a task of
    /// the current tokio runtime, and the error that ends the subscription, if any. The
    /// subscription ends when the handle is dropped.
    pub fn subscribe_with<F>(
        &self,
        filter: Filter,
        from: Lsn,
        mut callback: F,
    ) -> Result<CallbackHandle, CdcError>
    where
        F: FnMut(Result<ChangeEvent, CdcError>) + Send + 'static,
    {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| CdcError::Config("subscribe_with needs a tokio runtime".into()))?;
        let mut subscription = self.subscribe(filter, from)?;
        let task = runtime.spawn(async move {
            loop {
                match subscription.next().await {
                    Ok(event) => callback(Ok(event)),
                    Err(e) => {
                        callback(Err(e));
                        return;
                    }
                }
            }
        });
        Ok(CallbackHandle { task })
    }

    /// The queue, the counters and every subscriber's progress.
    #[must_use]
    pub fn stats(&self) -> CdcStats {
        let d = self.inner.queue.depths();
        let subscribers = self
            .inner
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, r)| {
                let position = r.progress.position.load(Ordering::Relaxed);
                let position_ms = r.progress.position_ms.load(Ordering::Relaxed);
                SubscriberStats {
                    id: *id,
                    position,
                    lag_lsn: d.resolved.saturating_sub(position),
                    lag_ms: if position >= d.resolved {
                        0
                    } else {
                        d.resolved_hlc.physical_ms().saturating_sub(position_ms)
                    },
                    catching_up: r.progress.catching_up.load(Ordering::Relaxed),
                    delivered: r.progress.delivered.load(Ordering::Relaxed),
                    patterns: r.patterns.clone(),
                }
            })
            .collect();
        CdcStats {
            queue_depth: d.depth,
            resolved_lsn: d.resolved,
            floor_lsn: d.floor,
            evicted: self.inner.evicted.load(Ordering::Relaxed),
            delivered: self.inner.delivered.load(Ordering::Relaxed),
            subscribers,
        }
    }
}

/// Ends a [`CdcStream::subscribe_with`] subscription when dropped.
#[derive(Debug)]
pub struct CallbackHandle {
    task: tokio::task::JoinHandle<()>,
}

impl CallbackHandle {
    /// Whether the subscription has ended (an error, or the stream closed).
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for CallbackHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Log chunks a catching-up subscriber reads in one poll before it yields, so a long
/// catch-up that the filter turns into no events does not hold its executor thread.
const CATCH_UP_CHUNKS_PER_POLL: usize = 16;

/// One subscriber: an async sequence of [`ChangeEvent`]s.
#[derive(Debug)]
pub struct Subscription {
    id: u64,
    stream: CdcStream,
    filter: Filter,
    /// Everything up to here has been buffered or filtered out.
    position: Lsn,
    position_hlc: Timestamp,
    pub(crate) buffer: VecDeque<ChangeEvent>,
    progress: Arc<Progress>,
    heartbeat_due: Option<tokio::time::Instant>,
    /// The deliberately broken switch the loom models must catch.
    #[cfg(loom)]
    pub(crate) resample_floor_bug: bool,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.stream.inner.subscribers.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.id);
    }
}

impl Subscription {
    /// The next event: a change passing the filter, or a heartbeat once the
    /// subscription has been idle for the configured interval (its LSN is everything
    /// delivered so far, its HLC that entry's commit time). Ends with
    /// [`CdcError::Closed`]; a log that no longer holds what the subscriber needs is
    /// [`CdcError::Gone`].
    pub async fn next(&mut self) -> Result<ChangeEvent, CdcError> {
        let interval = self.stream.inner.config.heartbeat;
        let due = *self.heartbeat_due.get_or_insert_with(|| tokio::time::Instant::now() + interval);
        let event = match tokio::time::timeout_at(due, std::future::poll_fn(|cx| self.poll_fill(cx))).await {
            Ok(Ok(())) => self.buffer.pop_front().expect("poll_fill is ready only with an event buffered"),
            Ok(Err(e)) => return Err(e),
            Err(_) => ChangeEvent::heartbeat(self.position, self.position_hlc),
        };
        self.heartbeat_due = Some(tokio::time::Instant::now() + interval);
        self.progress.delivered.fetch_add(1, Ordering::Relaxed);
        self.stream.inner.delivered.fetch_add(1, Ordering::Relaxed);
        Ok(event)
    }

    /// Up to `max` events at once: waits at most `wait` for the first (no heartbeat is
    /// made; an empty batch means nothing arrived), then takes what is ready without
    /// waiting. An error after some events were taken is kept for the next call.
    pub async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<ChangeEvent>, CdcError> {
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        match tokio::time::timeout(wait, std::future::poll_fn(|cx| self.poll_fill(cx))).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(out),
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        while out.len() < max {
            if let Some(event) = self.buffer.pop_front() {
                out.push(event);
                continue;
            }
            match self.poll_fill(&mut cx) {
                Poll::Ready(Ok(())) => {}
                // Reported by the next call, which finds the same state.
                Poll::Ready(Err(_)) | Poll::Pending => break,
            }
        }
        let taken = out.len() as u64;
        self.progress.delivered.fetch_add(taken, Ordering::Relaxed);
        self.stream.inner.delivered.fetch_add(taken, Ordering::Relaxed);
        self.heartbeat_due = None;
        Ok(out)
    }

    /// Everything up to this LSN has been returned by [`Subscription::next`] or
    /// [`Subscription::next_batch`] or filtered out: resuming after it loses nothing.
    #[must_use]
    pub fn delivered_through(&self) -> Lsn {
        self.buffer.front().map_or(self.position, |event| event.lsn - 1)
    }

    /// The subscription as a `futures` stream; it ends after the first error.
    pub fn into_stream(self) -> impl futures_util::Stream<Item = Result<ChangeEvent, CdcError>> + Send {
        futures_util::stream::unfold(Some(self), |state| async move {
            let mut sub = state?;
            match sub.next().await {
                Ok(event) => Some((Ok(event), Some(sub))),
                Err(e) => Some((Err(e), None)),
            }
        })
    }

    /// Everything up to this LSN has been delivered or filtered out (events still
    /// buffered count as delivered once returned by [`Subscription::next`]).
    #[must_use]
    pub fn position(&self) -> Lsn {
        self.position
    }

    /// Its id in [`CdcStream::stats`].
    #[must_use]
    pub fn id(&self) -> u64 {
        self.id
    }

    fn advance(&mut self, lsn: Lsn, hlc: Timestamp) {
        self.position = lsn;
        self.position_hlc = hlc;
        self.progress.position.store(lsn, Ordering::Relaxed);
        self.progress.position_ms.store(hlc.physical_ms(), Ordering::Relaxed);
    }

    fn take(&mut self, entry: &Entry) -> Result<(), CdcError> {
        let mut taken = false;
        for mut event in decode_entry(entry)? {
            if self.filter.matches(&event) {
                event.entry_end = false;
                self.buffer.push_back(event);
                taken = true;
            }
        }
        if taken && let Some(last) = self.buffer.back_mut() {
            last.entry_end = true;
        }
        self.advance(entry.lsn, entry.timestamp);
        Ok(())
    }

    /// Fills the buffer with at least one event, reading the live queue or, when behind
    /// it, the log. Ready(Ok) means the buffer holds an event.
    pub(crate) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CdcError>> {
        let mut chunks = 0;
        loop {
            if !self.buffer.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let inner = Arc::clone(&self.stream.inner);
            match inner.queue.next(self.position, inner.config.max_batch, Some(cx)) {
                Next::Entries(entries) => {
                    self.progress.catching_up.store(false, Ordering::Relaxed);
                    for entry in &entries {
                        self.take(entry)?;
                    }
                }
                Next::CatchUp { upto } => {
                    self.progress.catching_up.store(true, Ordering::Relaxed);
                    if chunks == CATCH_UP_CHUNKS_PER_POLL {
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    chunks += 1;
                    self.catch_up(&*inner.source, upto, inner.config.catch_up_bytes)?;
                }
                Next::Resolved { lsn, hlc } => self.advance(lsn, hlc),
                Next::Pending => return Poll::Pending,
                Next::Closed => return Poll::Ready(Err(CdcError::Closed)),
            }
        }
    }

    /// Reads one chunk of the log's `(position, upto]`; once it reaches `upto` the
    /// subscriber stands at `upto` and the next poll reads the queue again.
    fn catch_up(&mut self, source: &dyn LogSource, upto: Lsn, max_bytes: usize) -> Result<(), CdcError> {
        let needed = self.position + 1;
        let oldest = source.first_lsn();
        if needed < oldest {
            return Err(CdcError::Gone { needed, oldest });
        }
        let entries = source.read(needed, max_bytes)?;
        match entries.first() {
            Some(first) if first.lsn == needed => {}
            // A log that starts past what we asked for was compacted under us.
            _ => return Err(CdcError::Gone { needed, oldest: source.first_lsn() }),
        }
        for entry in entries.iter().take_while(|e| e.lsn <= upto) {
            self.take(entry)?;
        }
        #[cfg(loom)]
        if self.resample_floor_bug && self.position < upto {
            // The broken variant: after reading part of the range, jump to wherever the
            // queue's floor is now, as a switch that samples the bound twice would.
            let floor = self.stream.inner.queue.depths().floor;
            self.position = self.position.max(floor);
        }
        Ok(())
    }
}
