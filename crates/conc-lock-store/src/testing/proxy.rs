//! [`FaultProxy`]: a TCP proxy between a client and its store that puts the network's
//! faults in the way, on command: a black hole, replies dropped, replies held and
//! delivered later, a delay each way, every connection reset.
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use conc_lock_store::proxy::{Fault, FaultProxy};
//!
//! let proxy = FaultProxy::start("127.0.0.1:6379").await?;
//! let url = format!("redis://{}", proxy.addr());
//! // ... connect a store to `url`, then:
//! proxy.set(Fault::HoldReplies);
//! // ... the store's requests run on the server; their answers wait in the proxy ...
//! proxy.set(Fault::Pass); // and arrive now, late.
//! # let _ = url;
//! # Ok(())
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// What the proxy does to the bytes it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Carries every byte at once.
    Pass,
    /// Carries nothing either way and leaves the sockets open, as a cut link does: the
    /// bytes wait (in the proxy and the kernels' buffers, as unacknowledged packets wait
    /// for TCP to send them again) and go through, in order, when the fault ends.
    BlackHole,
    /// Carries requests to the server and throws its replies away. A connection that lost
    /// a reply is reset when the fault ends (its byte stream has a hole).
    DropReplies,
    /// Carries requests at once and holds the server's replies until the fault ends: they
    /// then arrive late, in order.
    HoldReplies,
    /// Delays every chunk of bytes this long, each way.
    Delay(Duration),
}

/// The proxy's state, shared with every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    fault: Fault,
    /// Bumped by [`FaultProxy::reset`]: connections accepted before it end at once.
    resets: u64,
}

/// A fault-injecting TCP proxy on a free loopback port, in front of one upstream address.
/// It stops (every connection closed) when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<watch::Sender<State>>,
    upstream: Arc<watch::Sender<Option<String>>>,
    only: Only,
    _tasks: JoinSet<()>,
}

/// The marker set by [`FaultProxy::only_for`], if any.
type Only = Arc<parking_lot::Mutex<Option<Arc<[u8]>>>>;

/// Which way bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    /// Client to server: requests.
    Up,
    /// Server to client: replies.
    Down,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards each connection to `upstream`
    /// (`host:port`), starting with [`Fault::Pass`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped call leaves no listener behind.
    pub async fn start(upstream: &str) -> std::io::Result<Self> {
        let proxy = Self::start_unbound().await?;
        proxy.forward_to(upstream);
        Ok(proxy)
    }

    /// Listens on a free port of 127.0.0.1 before its upstream is known (a server that
    /// must be told the proxy's address when it starts, as Sentinels are told the
    /// primary's); connections wait until [`forward_to`](Self::forward_to) names it.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped call leaves no listener behind.
    pub async fn start_unbound() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (state, _) = watch::channel(State {
            fault: Fault::Pass,
            resets: 0,
        });
        let state = Arc::new(state);
        let (upstream, _) = watch::channel(None::<String>);
        let upstream = Arc::new(upstream);
        let only = Only::default();
        let mut tasks = JoinSet::new();
        let shared = state.clone();
        let target = upstream.subscribe();
        let marker = only.clone();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.subscribe();
                let mut target = target.clone();
                let marker = marker.lock().clone();
                connections.spawn(async move {
                    let Ok(upstream) = target.wait_for(Option::is_some).await.map(|u| u.clone())
                    else {
                        return;
                    };
                    let upstream = upstream.unwrap_or_default();
                    if let Err(error) = carry(client, &upstream, state, marker).await {
                        tracing::debug!(%error, "fault proxy: a connection ended");
                    }
                });
                // Reap the connections that ended.
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Self {
            addr,
            state,
            upstream,
            only,
            _tasks: tasks,
        })
    }

    /// Forwards the connections from now on (and those waiting) to `upstream`
    /// (`host:port`).
    pub fn forward_to(&self, upstream: &str) {
        self.upstream.send_replace(Some(upstream.to_owned()));
    }

    /// Starts a proxy in front of the server that `url` names (`scheme://[user@]host:port/…`)
    /// and returns it with `url` pointed at the proxy instead.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped call leaves no listener behind.
    pub async fn in_front_of(url: &str) -> std::io::Result<(Self, String)> {
        let server = authority(url);
        let proxy = Self::start(&server).await?;
        let proxied = url.replacen(&server, &proxy.addr().to_string(), 1);
        Ok((proxy, proxied))
    }

    /// From now on, faults (resets included) touch only the connections accepted later whose
    /// first request contains `marker`; the others are carried untouched. Two clients that
    /// must both go through the proxy (a cluster's clients learn the nodes' addresses from
    /// the nodes, so every client goes the same way), only one of them faulted: connect
    /// that one with a user name (say) that puts `marker` in its first request.
    pub fn only_for(&self, marker: &[u8]) {
        *self.only.lock() = Some(marker.into());
    }

    /// The proxy's address: point the client here.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Puts `fault` in the way from now on (for the bytes of every connection, open or
    /// new); [`Fault::Pass`] ends a fault, and what was held goes through.
    pub fn set(&self, fault: Fault) {
        self.state.send_modify(|state| state.fault = fault);
    }

    /// The fault in the way now.
    pub fn fault(&self) -> Fault {
        self.state.borrow().fault
    }

    /// Resets every open connection (both sides get a TCP reset); new ones are carried as
    /// the current fault says.
    pub fn reset(&self) {
        self.state.send_modify(|state| state.resets += 1);
    }
}

/// `host:port` of a URL's authority (`scheme://[user@]host:port/…`): what a proxy in front
/// of that server forwards to.
///
/// ```
/// assert_eq!(conc_lock_store::proxy::authority("postgres://u@db:5432/app?x=1"), "db:5432");
/// ```
pub fn authority(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.split(['/', '?']).next().unwrap_or(rest);
    rest.rsplit_once('@')
        .map_or(rest, |(_, host)| host)
        .to_owned()
}

/// Carries one connection until either side closes it or the proxy resets it; with a
/// `marker`, one whose first request lacks it is carried untouched.
async fn carry(
    mut client: TcpStream,
    upstream: &str,
    mut state: watch::Receiver<State>,
    marker: Option<Arc<[u8]>>,
) -> std::io::Result<()> {
    let server = TcpStream::connect(upstream).await?;
    let mut first = Vec::new();
    // Kept alive while the connection is carried: a closed channel would read as a reset.
    let untouched = watch::channel(State {
        fault: Fault::Pass,
        resets: 0,
    });
    if let Some(marker) = marker {
        let mut buffer = vec![0u8; 64 * 1024];
        let n = client.read(&mut buffer).await?;
        first.extend_from_slice(&buffer[..n]);
        if !first.windows(marker.len()).any(|w| *w == *marker) {
            state = untouched.0.subscribe();
        }
    }
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    // A close is a reset (RST), as when a middlebox drops a connection.
    client.set_zero_linger()?;
    server.set_zero_linger()?;
    let born = state.borrow().resets;
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let mut resets = state.clone();
    let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let up = pump(
        client_read,
        server_write,
        Way::Up,
        (state.clone(), broken.clone()),
        first,
    );
    let down = pump(
        server_read,
        client_write,
        Way::Down,
        (state, broken),
        Vec::new(),
    );
    let reset = async {
        loop {
            if resets.changed().await.is_err() {
                return;
            }
            if resets.borrow().resets != born {
                return;
            }
        }
    };
    tokio::select! {
        outcome = async { tokio::try_join!(up, down) } => outcome.map(drop),
        () = reset => Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by the fault proxy")),
    }
    // Both halves of both sockets drop here: the sockets close.
}

/// Carries bytes one way, as the fault in force says. A delay is latency, not a limit on
/// throughput: each chunk is written its delay after it was read, while later chunks are
/// read on. `first` holds bytes already read from `from`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    way: Way,
    (mut state, broken): (watch::Receiver<State>, Arc<std::sync::atomic::AtomicBool>),
    first: Vec<u8>,
) -> std::io::Result<()> {
    let (chunks, mut due) = tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(1024);
    let writer = async move {
        while let Some((at, chunk)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            to.write_all(&chunk).await?;
        }
        to.shutdown().await
    };
    let reader = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        let mut first = (!first.is_empty()).then_some(first);
        loop {
            let n = match first.take() {
                Some(bytes) => {
                    buffer[..bytes.len()].copy_from_slice(&bytes);
                    bytes.len()
                }
                None => from.read(&mut buffer).await?,
            };
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            loop {
                let fault = state.borrow_and_update().fault;
                match (fault, way) {
                    (Fault::BlackHole, _) | (Fault::HoldReplies, Way::Down) => {
                        // Hold these bytes (and read no more) until the fault changes.
                        if state.changed().await.is_err() {
                            return Ok(());
                        }
                    }
                    (Fault::DropReplies, Way::Down) => {
                        broken.store(true, std::sync::atomic::Ordering::Relaxed);
                        break;
                    }
                    _ if broken.load(std::sync::atomic::Ordering::Relaxed) => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            "a reply was dropped on this connection",
                        ));
                    }
                    (fault, _) => {
                        let delay = match fault {
                            Fault::Delay(delay) => delay,
                            _ => Duration::ZERO,
                        };
                        let at = tokio::time::Instant::now() + delay;
                        if chunks.send((at, buffer[..n].to_vec())).await.is_err() {
                            return Ok(());
                        }
                        break;
                    }
                }
            }
        }
    };
    let (read, write) = tokio::join!(reader, writer);
    read.and(write)
}
