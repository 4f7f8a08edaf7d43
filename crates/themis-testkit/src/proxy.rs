//! A fault-injecting TCP proxy for real-process tests (the machine has no netem): it
//! listens on loopback and forwards every connection to one upstream address, each
//! direction through a [`Link`] whose behaviour a test changes at run time.
//!
//! Put one proxy on each directed pair of nodes (node `i` dials node `j` at the address of
//! proxy `i→j`), and a partition, a one-way partition, delay or a paused link between any
//! two nodes is a call on the proxies between them.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use std::time::Duration;
//! use themis_testkit::proxy::{Fault, Proxy};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! // An echo server behind a proxy.
//! let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = upstream.local_addr()?;
//! tokio::spawn(async move {
//!     while let Ok((mut s, _)) = upstream.accept().await {
//!         tokio::spawn(async move {
//!             let (mut r, mut w) = s.split();
//!             let _ = tokio::io::copy(&mut r, &mut w).await;
//!         });
//!     }
//! });
//! let proxy = Proxy::start(addr).await?;
//! let mut conn = tokio::net::TcpStream::connect(proxy.addr()).await?;
//! conn.write_all(b"ping").await?;
//! let mut buf = [0u8; 4];
//! conn.read_exact(&mut buf).await?;
//! assert_eq!(&buf, b"ping");
//!
//! // Requests vanish while the link to the upstream is cut one way.
//! proxy.to_upstream().set(Fault::Blackhole);
//! conn.write_all(b"lost").await?;
//! let late = tokio::time::timeout(Duration::from_millis(100), conn.read_exact(&mut buf)).await;
//! assert!(late.is_err());
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What a link does to the bytes that cross it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forwards at once.
    Pass,
    /// Forwards each read after this long (bytes keep their order).
    Delay(Duration),
    /// Discards everything (a partition in this direction: TCP stays up, nothing arrives).
    Blackhole,
    /// Holds everything until the fault changes, then forwards it (a stalled link).
    Pause,
}

/// One direction of a proxy: its fault and what crossed it.
#[derive(Debug)]
pub struct Link {
    fault: watch::Sender<Fault>,
    forwarded: AtomicU64,
    discarded: AtomicU64,
}

impl Link {
    fn new() -> Link {
        Link {
            fault: watch::Sender::new(Fault::Pass),
            forwarded: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
        }
    }

    /// Changes what the link does from now on.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// What it does now.
    #[must_use]
    pub fn fault(&self) -> Fault {
        *self.fault.borrow()
    }

    /// Bytes forwarded so far.
    #[must_use]
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }

    /// Bytes discarded so far.
    #[must_use]
    pub fn discarded(&self) -> u64 {
        self.discarded.load(Ordering::Relaxed)
    }
}

/// A proxy in front of one upstream address.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    to_upstream: Arc<Link>,
    from_upstream: Arc<Link>,
    /// Bumped by [`cut`](Self::cut): connections of an older generation close.
    generation: watch::Sender<u64>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        Proxy::start_on("127.0.0.1:0".parse().expect("an address"), upstream).await
    }

    /// Listens on `listen` and forwards to `upstream`.
    pub async fn start_on(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (to_upstream, from_upstream) = (Arc::new(Link::new()), Arc::new(Link::new()));
        let generation = watch::Sender::new(0u64);
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let (up, down, generation, tasks) =
                (to_upstream.clone(), from_upstream.clone(), generation.clone(), tasks.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let (up, down, generation) = (up.clone(), down.clone(), generation.clone());
                    let task = tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(upstream).await else { return };
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let born = *generation.borrow();
                        let mut cut = generation.subscribe();
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        let pipes = async {
                            tokio::join!(pipe(cr, sw, &up), pipe(sr, cw, &down));
                        };
                        tokio::select! {
                            () = pipes => {}
                            _ = cut.wait_for(|g| *g != born) => {}
                        }
                    });
                    let mut tasks = tasks.lock().unwrap_or_else(PoisonError::into_inner);
                    tasks.retain(|t| !t.is_finished());
                    tasks.push(task);
                }
            }
        });
        Ok(Proxy { addr, upstream, to_upstream, from_upstream, generation, tasks, accept })
    }

    /// Where clients connect.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where it forwards.
    #[must_use]
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// The direction from the dialer to the upstream.
    #[must_use]
    pub fn to_upstream(&self) -> &Link {
        &self.to_upstream
    }

    /// The direction from the upstream back to the dialer.
    #[must_use]
    pub fn from_upstream(&self) -> &Link {
        &self.from_upstream
    }

    /// Sets both directions.
    pub fn set(&self, fault: Fault) {
        self.to_upstream.set(fault);
        self.from_upstream.set(fault);
    }

    /// Closes every open connection now (both sides see the stream end); new ones are
    /// still accepted.
    pub fn cut(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Connections open now.
    #[must_use]
    pub fn open_connections(&self) -> usize {
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner).iter().filter(|t| !t.is_finished()).count()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for task in self.tasks.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
            task.abort();
        }
    }
}

/// Chunks read but not yet forwarded, per direction (at 64 KiB each, 16 MiB): a slower
/// reader than writer pushes back through TCP past this.
const IN_FLIGHT_CHUNKS: usize = 256;

/// Copies `from` to `to` through `link` until either side closes. The reading side stamps
/// each chunk with when it arrived and the writing side forwards it once its fault allows:
/// a delay holds each chunk that long after its own arrival (a one-way latency, as netem
/// gives, with chunks in flight meanwhile), not one after the other.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    link: &Link,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(IN_FLIGHT_CHUNKS);
    let read = async {
        let mut fault = link.fault.subscribe();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if *fault.borrow_and_update() == Fault::Blackhole {
                link.discarded.fetch_add(n as u64, Ordering::Relaxed);
                continue;
            }
            if tx.send((tokio::time::Instant::now(), buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
        drop(tx);
    };
    let write = async {
        let mut fault = link.fault.subscribe();
        while let Some((arrived, chunk)) = rx.recv().await {
            // A paused link holds this chunk (and, through TCP, everything behind it) until
            // the fault changes.
            let _ = fault.wait_for(|f| *f != Fault::Pause).await;
            let now = *fault.borrow_and_update();
            match now {
                Fault::Blackhole => {
                    link.discarded.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    continue;
                }
                Fault::Delay(d) => tokio::time::sleep_until(arrived + d).await,
                Fault::Pass | Fault::Pause => {}
            }
            if to.write_all(&chunk).await.is_err() {
                break;
            }
            link.forwarded.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo() -> SocketAddr {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = upstream.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn roundtrip(conn: &mut TcpStream, msg: &[u8], within: Duration) -> Option<Vec<u8>> {
        conn.write_all(msg).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(within, conn.read_exact(&mut buf)).await.ok()?.ok()?;
        Some(buf)
    }

    #[tokio::test]
    async fn every_fault_does_what_it_says() {
        let proxy = Proxy::start(echo().await).await.unwrap();
        let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
        // What must not arrive is waited for briefly; what must arrive, generously (a
        // loaded machine).
        let quick = Duration::from_millis(200);
        let ample = Duration::from_secs(5);
        assert_eq!(roundtrip(&mut conn, b"pass", ample).await.as_deref(), Some(&b"pass"[..]));

        // Delay: the answer comes, later.
        proxy.from_upstream().set(Fault::Delay(Duration::from_millis(150)));
        let started = std::time::Instant::now();
        assert_eq!(
            roundtrip(&mut conn, b"slow", Duration::from_secs(2)).await.as_deref(),
            Some(&b"slow"[..])
        );
        assert!(started.elapsed() >= Duration::from_millis(150));

        // A delay is a latency, not a rate: ten messages sent 20 ms apart all arrive about
        // one delay after they were sent, not ten delays (as a link that slept per chunk).
        proxy.from_upstream().set(Fault::Delay(Duration::from_millis(300)));
        let started = std::time::Instant::now();
        for _ in 0..10 {
            conn.write_all(b"pipe").await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut all = [0u8; 40];
        tokio::time::timeout(ample, conn.read_exact(&mut all)).await.unwrap().unwrap();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300) && took < Duration::from_millis(1_500), "{took:?}");
        proxy.set(Fault::Pass);

        // Pause: held, then delivered when the link resumes.
        proxy.to_upstream().set(Fault::Pause);
        assert_eq!(roundtrip(&mut conn, b"held", quick).await, None);
        proxy.to_upstream().set(Fault::Pass);
        let mut buf = [0u8; 4];
        tokio::time::timeout(ample, conn.read_exact(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf, b"held");

        // One-way blackhole: the request is discarded, never answered.
        proxy.to_upstream().set(Fault::Blackhole);
        assert_eq!(roundtrip(&mut conn, b"gone", quick).await, None);
        assert_eq!(proxy.to_upstream().discarded(), 4);
        proxy.to_upstream().set(Fault::Pass);
        assert_eq!(roundtrip(&mut conn, b"back", ample).await.as_deref(), Some(&b"back"[..]));

        // Cut: the connection ends; a new one works.
        assert_eq!(proxy.open_connections(), 1);
        proxy.cut();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(ample, conn.read_to_end(&mut rest)).await.unwrap();
        assert!(read.is_err() || rest.is_empty(), "the stream ended");
        let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut again, b"anew", ample).await.as_deref(), Some(&b"anew"[..]));
        assert!(proxy.to_upstream().forwarded() >= 16);
    }
}
