//! The front door: hyper's HTTP/1.1 connections on tokio, plus every bound hyper leaves to us.
//! One thread accepts and hands each connection to one of `workers` event loops (a thread with a
//! runtime of its own), which serves it start to end; blocking work goes to one bounded pool. hyper parses strictly (one request at a time per connection, malformed framing refused)
//! and bounds header bytes, header count and the time to receive a head; here we add the rest:
//! - a total deadline for each request, head and body (hyper's head timer and ours start at the
//!   same moment: when the connection becomes ready for the request), and a body-size limit,
//!   refused unread when the declared length is already too large;
//! - a connection cap: when it is reached, the connection idle the longest is closed to make room,
//!   so new clients and the kubelet's probes still get in; with nothing idle, a short 503. A
//!   connection is idle until its request has arrived whole, body included, so half-sent
//!   heads and bodies are shed like keep-alive connections between requests;
//! - shares of that cap: one client (an address, an IPv6 /64) holds at most
//!   `max_connections_per_client` (past it its own longest-idle connection is closed, or the
//!   newcomer gets a short 429); with two listeners, each keeps `*_reserved` connections the
//!   other cannot take, so a flood of the public listener never reaches the internal one's
//!   probes. A trusted proxy's connections carry many clients, so they count under no client;
//!   the listener's share bounds them;
//! - the client each request is attributed to (`HttpRequest::client_ip`): the peer, or behind a
//!   trusted proxy the address it forwarded (`client_ip.rs`), resolved once per request;
//! - `Content-Length` together with `Transfer-Encoding` is refused and the connection closed;
//! - writes that stall (a client that never reads) end the connection after the read timeout;
//! - long-polls park as futures, not threads, and leave the moment hyper drops them (client gone);
//!   each keeps its place from parking to its answer, so a wake-up that is not its news never
//!   needs a place again, and one client holds at most its share of places (429 past it);
//! - blocking work runs on tokio's bounded blocking pool, never on the event loop;
//! - a panicking handler becomes a 500 for that request alone;
//! - accept errors (descriptors exhausted) shed an idle connection, back off and retry; a long
//!   outage ends the process non-zero with a log line saying why;
//! - one or two listeners (public and internal) share the event loops, the connection cap, the
//!   long-poll registry and the shutdown; each request is told which one it came in on;
//! - SIGTERM (via `Stopper`) stops accepting on every listener, answers every long-poll, lets
//!   in-flight requests finish within the grace period, and returns.

use crate::client_ip::{share_key, TrustedProxies};
use crate::error::{Error, Face};
use crate::http::{HttpRequest, Listener, Reply, Response, Wait};
use crate::logging;
use crate::waiters::{Refused, Waiters};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

pub type Handler = Arc<dyn Fn(HttpRequest) -> Reply + Send + Sync>;

#[derive(Clone, Debug)]
pub struct Options {
    /// Event-loop threads. Defaults to the number of CPUs.
    pub workers: usize,
    /// Most threads running blocking work at once (Redis calls, code exchanges); more wait their
    /// turn. Defaults to 128.
    pub blocking_threads: usize,
    /// A request's head and body must arrive within this long of the connection being ready for
    /// it; an idle keep-alive connection is closed after it, and so is one whose writes stall
    /// this long. Defaults to 10 seconds.
    pub read_timeout: Duration,
    /// Longer request targets get 414. Defaults to 8 KiB.
    pub max_url_bytes: usize,
    /// Request line and headers together; more gets 431 (414 when the request line alone does
    /// not fit). Defaults to 16 KiB.
    pub max_header_bytes: usize,
    /// More header fields get 431. Defaults to 64.
    pub max_headers: usize,
    /// Longer bodies get 413. Defaults to 4 KiB.
    pub max_body_bytes: usize,
    /// Open connections at most; past it the longest-idle one is closed, or the newcomer gets
    /// 503 when none is idle. Defaults to 1,024.
    pub max_connections: usize,
    /// Open connections one client (`client_ip::share_key` of the peer) may hold on all
    /// listeners together; at it, its own longest-idle connection is closed for its newcomer,
    /// or the newcomer gets 429 when none is idle. Connections from trusted proxies count under
    /// no client. Defaults to no limit (the binary's default is in `config::defaults`).
    pub max_connections_per_client: usize,
    /// With a public and an internal listener, connections of `max_connections` that only the
    /// public one may hold. Defaults to 0.
    pub public_reserved: usize,
    /// With a public and an internal listener, connections of `max_connections` that only the
    /// internal one (the probes, `/metrics`, the callers) may hold. Defaults to 0.
    pub internal_reserved: usize,
    /// The proxies whose forwarding header names a request's client. Defaults to nobody.
    pub trusted_proxies: TrustedProxies,
    /// How long in-flight requests may take to finish after a shutdown request.
    /// Defaults to 5 seconds.
    pub shutdown_grace: Duration,
    /// How long to keep retrying a failing accept before exiting non-zero. Defaults to 60 seconds.
    pub give_up_after: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            blocking_threads: 128,
            read_timeout: Duration::from_secs(10),
            max_url_bytes: 8 * 1024,
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            max_body_bytes: 4 * 1024,
            max_connections: 1024,
            max_connections_per_client: usize::MAX,
            public_reserved: 0,
            internal_reserved: 0,
            trusted_proxies: TrustedProxies::default(),
            shutdown_grace: Duration::from_secs(5),
            give_up_after: Duration::from_secs(60),
        }
    }
}

/// hyper refuses a `max_buf_size` below this (its minimum read buffer).
const MIN_HEADER_BYTES: usize = 8192;

/// Binds the listening socket. `SO_REUSEADDR` so a restart does not wait out TIME_WAIT; a deep
/// backlog so a burst of connections waits in the kernel rather than being refused.
pub fn bind(host: &str, port: u16) -> io::Result<std::net::TcpListener> {
    let addr = (host, port).to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot resolve {host}"),
        )
    })?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A running server. Dropping it does not stop it; call `stopper().stop()` and `wait()`.
pub struct Running {
    /// Each listener's address, in the order given to `start_listeners`.
    addrs: Vec<(Listener, SocketAddr)>,
    stop: Arc<watch::Sender<bool>>,
    runtime: tokio::runtime::Handle,
    thread: std::thread::JoinHandle<Result<(), String>>,
}

#[derive(Clone)]
pub struct Stopper(Arc<watch::Sender<bool>>);

impl Stopper {
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

impl Running {
    /// The first listener's address (the public one, or the only one).
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0].1
    }

    /// The address of the listener of that kind, if there is one.
    pub fn addr_of(&self, which: Listener) -> Option<SocketAddr> {
        self.addrs
            .iter()
            .find(|(l, _)| *l == which)
            .map(|(_, a)| *a)
    }

    pub fn stopper(&self) -> Stopper {
        Stopper(self.stop.clone())
    }

    /// The runtime the server runs on, for tasks that belong with it (signal handling).
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// Blocks until the server has shut down (Ok) or given up accepting (Err).
    pub fn wait(self) -> Result<(), String> {
        self.thread
            .join()
            .unwrap_or_else(|_| Err("the server thread panicked".into()))
    }
}

/// Starts serving `listener`, the only one (it serves every route), on a runtime of its own,
/// on a thread of its own.
pub fn start(
    listener: std::net::TcpListener,
    opts: Options,
    handler: Handler,
    waiters: Arc<Waiters>,
) -> io::Result<Running> {
    start_listeners(vec![(listener, Listener::Sole)], opts, handler, waiters)
}

/// Starts serving several listeners (public and internal) on one runtime. They share
/// everything: the connection cap, the long-poll registry, the blocking pool and the shutdown,
/// so a stop (SIGTERM) closes all of them, and a listener that gives up accepting stops the
/// others too (the process exits non-zero and is restarted whole). Each request carries the
/// listener it came in on; the router decides what that listener may reach.
pub fn start_listeners(
    listeners: Vec<(std::net::TcpListener, Listener)>,
    opts: Options,
    handler: Handler,
    waiters: Arc<Waiters>,
) -> io::Result<Running> {
    if listeners.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no listener to serve",
        ));
    }
    // The accept loops, the bounded pool for blocking work, signals and the drain.
    let main = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(opts.blocking_threads.max(1))
        .thread_name("server")
        .enable_all()
        .build()?;
    let mut bound = Vec::with_capacity(listeners.len());
    for (listener, which) in listeners {
        listener.set_nonblocking(true)?;
        let listener = {
            let _entered = main.enter();
            TcpListener::from_std(listener)?
        };
        bound.push((listener, which));
    }
    let addrs = bound
        .iter()
        .map(|(l, which)| l.local_addr().map(|a| (*which, a)))
        .collect::<io::Result<Vec<_>>>()?;
    // Each event loop is a thread with a runtime of its own, serving the connections handed to
    // it from start to end, as nginx's workers do: one multi-threaded runtime for everything
    // cost a wake-up of another thread per request (measured: about 30 % fewer /health answers).
    let loops = opts.workers.max(1);
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..loops)
        .map(|_| tokio::sync::mpsc::unbounded_channel::<Accepted>())
        .unzip();
    let (stop, stopped) = watch::channel(false);
    let stop = Arc::new(stop);
    let (done, finished) = watch::channel(false);
    let shared = Arc::new(Shared {
        handler,
        waiters,
        pool: main.handle().clone(),
        loops: senders,
        next_loop: AtomicUsize::new(0),
        opts,
        conns: Mutex::new(Conns::default()),
        live: AtomicUsize::new(0),
        next_id: AtomicU64::new(0),
        epoch: Instant::now(),
    });
    let mut threads = Vec::with_capacity(loops);
    for (n, mut handed) in receivers.into_iter().enumerate() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (shared, mut finished) = (shared.clone(), finished.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("loop-{n}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        let serve = async {
                            while let Some(a) = handed.recv().await {
                                match TcpStream::from_std(a.stream) {
                                    Ok(stream) => {
                                        tokio::spawn(serve_connection(
                                            shared.clone(),
                                            stream,
                                            a.peer,
                                            a.which,
                                            a.id,
                                            a.slot,
                                        ));
                                    }
                                    Err(_) => shared.forget(a.id),
                                }
                            }
                        };
                        // Its connections are served until the drain is over.
                        tokio::select! {
                            _ = serve => {}
                            _ = finished.wait_for(|d| *d) => {}
                        }
                    });
                    runtime.shutdown_timeout(Duration::from_millis(200));
                })?,
        );
    }
    let handle = main.handle().clone();
    let stop_all = stop.clone();
    let thread = std::thread::Builder::new()
        .name("server".into())
        .spawn(move || {
            let result = main.block_on(async move {
                let accepting: Vec<_> = bound
                    .into_iter()
                    .map(|(listener, which)| {
                        let (shared, stopped, stop_all) =
                            (shared.clone(), stopped.clone(), stop_all.clone());
                        tokio::spawn(async move {
                            let result = accept_loop(listener, which, &shared, stopped).await;
                            if result.is_err() {
                                // One listener lost for good: stop the others with it.
                                stop_all.send_replace(true);
                            }
                            result
                        })
                    })
                    .collect();
                let mut result = Ok(());
                for one in accepting {
                    let ended = one
                        .await
                        .unwrap_or_else(|_| Err("an accept loop panicked".into()));
                    if result.is_ok() {
                        result = ended;
                    }
                }
                // Every listener is closed: new connections are refused from here on.
                drain(&shared).await;
                result
            });
            done.send_replace(true);
            for t in threads {
                let _ = t.join();
            }
            // Blocking work still running (a stuck Redis call) must not hold the exit.
            main.shutdown_timeout(Duration::from_millis(200));
            result
        })?;
    Ok(Running {
        addrs,
        stop,
        runtime: handle,
        thread,
    })
}

struct Shared {
    handler: Handler,
    waiters: Arc<Waiters>,
    /// The runtime whose bounded pool runs all blocking work, whichever event loop asked.
    pool: tokio::runtime::Handle,
    /// The event loops, each taking the connections handed to it.
    loops: Vec<tokio::sync::mpsc::UnboundedSender<Accepted>>,
    next_loop: AtomicUsize,
    opts: Options,
    conns: Mutex<Conns>,
    /// Connections open, shed ones on their way out included (what the drain waits for).
    live: AtomicUsize,
    next_id: AtomicU64,
    epoch: Instant,
}

impl Shared {
    /// A connection is gone: its place under the cap is free.
    fn forget(&self, id: u64) {
        if self.conns().remove(id) {
            self.live.fetch_sub(1, Ordering::AcqRel);
            crate::metrics::OPEN_CONNECTIONS.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Microseconds since the server started: fine enough to tell apart connections a flood
    /// opens within one millisecond, when the oldest must go first.
    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn conns(&self) -> std::sync::MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the connection idle the longest to close. False when every connection is busy.
    fn shed_one_idle(&self) -> bool {
        self.conns().shed_oldest(|_| true)
    }
}

/// Every open connection, and what the caps and shares count of them. A connection shed to make
/// room stops counting the moment it is asked to close (it does no more work, and is gone as
/// soon as its event loop sees the request), so one newcomer sheds one connection, not one per
/// check it passes.
#[derive(Default)]
struct Conns {
    slots: HashMap<u64, Arc<Slot>>,
    /// Counted connections: in all, on the internal listener, and per client.
    counted: usize,
    internal: usize,
    by_client: HashMap<IpAddr, usize>,
}

/// Why a newcomer was not let in.
enum Refusal {
    /// Its client holds its whole share, every connection of it busy: 429.
    ClientShare,
    /// Its listener's share or the cap is reached with nothing idle to close: 503.
    Full,
}

impl Conns {
    /// Counted connections on `which` (the sole listener's are all of them).
    fn on(&self, which: Listener) -> usize {
        match which {
            Listener::Internal => self.internal,
            Listener::Public | Listener::Sole => self.counted - self.internal,
        }
    }

    fn insert(&mut self, id: u64, slot: Arc<Slot>) {
        self.counted += 1;
        if slot.listener == Listener::Internal {
            self.internal += 1;
        }
        if let Some(client) = slot.client {
            *self.by_client.entry(client).or_insert(0) += 1;
        }
        slot.counted.store(true, Ordering::Relaxed);
        self.slots.insert(id, slot);
    }

    /// Stops counting a connection (shed, or gone); a no-op the second time.
    fn uncount(&mut self, slot: &Slot) {
        if !slot.counted.swap(false, Ordering::Relaxed) {
            return;
        }
        self.counted -= 1;
        if slot.listener == Listener::Internal {
            self.internal -= 1;
        }
        if let Some(client) = slot.client {
            if let Some(held) = self.by_client.get_mut(&client) {
                *held -= 1;
                if *held == 0 {
                    self.by_client.remove(&client);
                }
            }
        }
    }

    /// Forgets a closed connection; false when it was not here.
    fn remove(&mut self, id: u64) -> bool {
        match self.slots.remove(&id) {
            Some(slot) => {
                self.uncount(&slot);
                true
            }
            None => false,
        }
    }

    /// Asks the connection idle the longest among `eligible` ones to close (idle: between
    /// requests, or still receiving one; a request being answered or a parked long-poll is
    /// busy). False when there is none.
    fn shed_oldest(&mut self, eligible: impl Fn(&Slot) -> bool) -> bool {
        let victim = self
            .slots
            .values()
            .filter(|s| {
                s.in_flight.load(Ordering::Acquire) == 0
                    && !s.closing.load(Ordering::Acquire)
                    && eligible(s)
            })
            .min_by_key(|s| s.ready_since_us.load(Ordering::Relaxed))
            .cloned();
        match victim {
            Some(slot) => {
                slot.closing.store(true, Ordering::Release);
                slot.close.notify_one();
                self.uncount(&slot);
                crate::metrics::CONNECTIONS_SHED.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Makes room for a newcomer on `which` from `client` (`None`: a trusted proxy), closing
    /// idle connections where a share or the cap is reached: first the client's own share,
    /// then the listener's (all but what the other listener keeps for itself), then the cap.
    fn make_room(
        &mut self,
        opts: &Options,
        which: Listener,
        client: Option<IpAddr>,
    ) -> Result<(), Refusal> {
        if let Some(client) = client {
            if self.by_client.get(&client).copied().unwrap_or(0) >= opts.max_connections_per_client
            {
                crate::metrics::QUOTA_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
                if !self.shed_oldest(|s| s.client == Some(client)) {
                    return Err(Refusal::ClientShare);
                }
            }
        }
        let reserved = |l: Listener| match l {
            Listener::Public => opts.public_reserved,
            Listener::Internal => opts.internal_reserved,
            Listener::Sole => 0,
        };
        let other = match which {
            Listener::Public => Listener::Internal,
            Listener::Internal => Listener::Public,
            Listener::Sole => Listener::Sole,
        };
        let listener_full = self.on(which) >= opts.max_connections.saturating_sub(reserved(other));
        if listener_full || self.counted >= opts.max_connections {
            // The newcomer's listener may always give up one of its own; the other only one
            // beyond what it keeps for itself, and only when the newcomer's listener has room
            // left (closing one elsewhere would not make it any).
            let spare = |l: Listener| self.on(l) > reserved(l);
            let (public_spare, internal_spare) =
                (spare(Listener::Public), spare(Listener::Internal));
            let eligible = |s: &Slot| {
                s.listener == which
                    || (!listener_full
                        && match s.listener {
                            Listener::Internal => internal_spare,
                            _ => public_spare,
                        })
            };
            if !self.shed_oldest(eligible) {
                return Err(Refusal::Full);
            }
        }
        Ok(())
    }
}

/// One connection's state, as the accept loop and its requests see it.
struct Slot {
    /// Requests whose answer is being worked on (0 or 1: hyper serves one at a time).
    in_flight: AtomicU32,
    /// When the connection became ready for its next request (accepted, or its last answer
    /// done), in `Shared::now_us`: the start of that request's deadline, and what "idle the
    /// longest" compares.
    ready_since_us: AtomicU64,
    /// Asked to close (shed at the cap, or shutdown).
    closing: AtomicBool,
    close: Notify,
    /// A head on this connection named both `Content-Length` and `Transfer-Encoding`. hyper
    /// reads such a request as chunked and drops the length before we see the headers, so the
    /// socket wrapper (`Guarded`) notices it in the bytes; the request is then refused.
    framing_conflict: AtomicBool,
    /// The listener it came in on: whose share it counts against.
    listener: Listener,
    /// The client whose share it counts against; `None` for a trusted proxy's.
    client: Option<IpAddr>,
    /// Counted by the caps and shares (`Conns`); changed only under its lock.
    counted: AtomicBool,
}

/// Accepts on one listener until a stop is asked for (Ok) or accepting is lost for good (Err);
/// the listener is closed when it returns.
async fn accept_loop(
    listener: TcpListener,
    which: Listener,
    shared: &Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut outage = Outage::default();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = until_stopped(&mut stop) => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                outage.resumed();
                admit(shared, stream, peer, which);
            }
            // The client gave up between SYN and accept: nothing wrong with the listener.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                crate::metrics::ACCEPT_ERRORS.fetch_add(1, Ordering::Relaxed);
                // Out of descriptors: an idle connection's is the one we can give back.
                shared.shed_one_idle();
                outage.failed(&e.to_string());
                if outage.too_long(shared.opts.give_up_after) {
                    return Err(outage.give_up(&e.to_string()));
                }
                tokio::select! {
                    _ = until_stopped(&mut stop) => break,
                    _ = tokio::time::sleep(outage.backoff) => {}
                }
            }
        }
    }
    // New connections are refused from here on, not left waiting in the backlog.
    drop(listener);
    Ok(())
}

/// Resolves once a stop is asked for; never if every `Stopper` is gone (nobody can ask).
async fn until_stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 5\r\nconnection: close\r\ncontent-length: 68\r\n\r\n{\"status\":\"error\",\"message\":\"Too many connections; try again later\"}";
const CLIENT_SHARE_REACHED: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 5\r\nconnection: close\r\ncontent-length: 85\r\n\r\n{\"status\":\"error\",\"message\":\"Too many connections from this client; try again later\"}";

fn admit(shared: &Arc<Shared>, stream: TcpStream, peer: SocketAddr, which: Listener) {
    // A trusted proxy's connection carries many clients' requests: only the listener's share
    // and the cap bound it.
    let client = Some(peer.ip())
        .filter(|ip| !shared.opts.trusted_proxies.trusts(*ip))
        .map(share_key);
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let slot = Arc::new(Slot {
        in_flight: AtomicU32::new(0),
        ready_since_us: AtomicU64::new(shared.now_us()),
        closing: AtomicBool::new(false),
        close: Notify::new(),
        framing_conflict: AtomicBool::new(false),
        listener: which,
        client,
        counted: AtomicBool::new(false),
    });
    {
        let mut conns = shared.conns();
        match conns.make_room(&shared.opts, which, client) {
            Ok(()) => conns.insert(id, slot.clone()),
            Err(refusal) => {
                drop(conns);
                let answer = match refusal {
                    Refusal::ClientShare => CLIENT_SHARE_REACHED,
                    Refusal::Full => {
                        crate::metrics::CONNECTIONS_REFUSED.fetch_add(1, Ordering::Relaxed);
                        REFUSED
                    }
                };
                refuse_connection(stream, answer);
                return;
            }
        }
    }
    shared.live.fetch_add(1, Ordering::AcqRel);
    crate::metrics::OPEN_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
    // Small answers go out at once instead of waiting for the client's delayed ACK.
    let _ = stream.set_nodelay(true);
    // Handed to the next event loop in turn, which serves it start to end.
    let loops = &shared.loops;
    let n = shared.next_loop.fetch_add(1, Ordering::Relaxed) % loops.len();
    let handed = stream.into_std().map(|stream| Accepted {
        stream,
        peer,
        which,
        id,
        slot,
    });
    if !handed.is_ok_and(|a| loops[n].send(a).is_ok()) {
        shared.forget(id);
    }
}

/// A short answer written without waiting (a fresh socket's send buffer is empty), then the
/// close. What the client has sent by now is read first, without waiting, so that the close is
/// a FIN after the answer rather than a reset, which can destroy the answer before it is read.
fn refuse_connection(stream: TcpStream, answer: &[u8]) {
    let Ok(stream) = stream.into_std() else {
        return;
    };
    let mut sent = [0u8; 4096];
    let _ = (&stream).read(&mut sent);
    let _ = (&stream).write(answer);
}

/// An accepted connection on its way to its event loop.
struct Accepted {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    which: Listener,
    id: u64,
    slot: Arc<Slot>,
}

async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    which: Listener,
    id: u64,
    slot: Arc<Slot>,
) {
    let opts = &shared.opts;
    let io = Guarded::new(stream, opts.read_timeout, slot.clone());
    let service = {
        let (shared, slot) = (shared.clone(), slot.clone());
        hyper::service::service_fn(move |req| {
            serve_request(shared.clone(), slot.clone(), peer, which, req)
        })
    };
    let header_bytes = opts.max_header_bytes.max(MIN_HEADER_BYTES);
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.read_timeout)
        .max_buf_size(header_bytes)
        .max_header_size(opts.max_header_bytes)
        .max_headers(opts.max_headers)
        .keep_alive(true)
        // A client's EOF ends the connection and drops a parked long-poll with it.
        .half_close(false)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut asked_to_close = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    logging::event(
                        logging::Level::Debug,
                        "connection_error",
                        json!({ "error": e.to_string(), "peer": peer.ip().to_string() }),
                    );
                }
                break;
            }
            _ = slot.close.notified(), if !asked_to_close => {
                asked_to_close = true;
                if slot.in_flight.load(Ordering::Acquire) == 0 {
                    // Between requests: nothing is lost by closing now.
                    break;
                }
                // Finish the request being answered, then close.
                conn.as_mut().graceful_shutdown();
            }
        }
    }
    shared.forget(id);
}

/// Marks the connection busy while a request is answered (or parked), and ready again after.
/// Dropped with the request's future when the client hangs up, too.
struct Busy<'a> {
    slot: &'a Slot,
    shared: &'a Shared,
}

impl<'a> Busy<'a> {
    fn new(slot: &'a Slot, shared: &'a Shared) -> Self {
        slot.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy { slot, shared }
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.slot
            .ready_since_us
            .store(self.shared.now_us(), Ordering::Relaxed);
        self.slot.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn serve_request(
    shared: Arc<Shared>,
    slot: Arc<Slot>,
    peer: SocketAddr,
    which: Listener,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let started = Instant::now();
    let method = req.method().clone();
    let deadline = shared.epoch
        + Duration::from_micros(slot.ready_since_us.load(Ordering::Relaxed))
        + shared.opts.read_timeout;
    let conflict = slot.framing_conflict.load(Ordering::Acquire);
    let mut client = None;
    let response = match read_request(&shared.opts, peer, deadline, conflict, req).await {
        Ok(mut req) => {
            // Busy from here: until the whole request has arrived the connection is as
            // sheddable as an idle one (a half-sent body holds nothing a newcomer needs less).
            let _busy = Busy::new(&slot, &shared);
            req.listener = which;
            client = req.client_ip();
            answer(&shared, req).await
        }
        Err(refusal) => refusal,
    };
    let status = response.status;
    crate::metrics::REQUESTS.fetch_add(1, Ordering::Relaxed);
    if status >= 500 {
        crate::metrics::SERVER_ERRORS.fetch_add(1, Ordering::Relaxed);
    }
    logging::access(&logging::Access {
        method: method.as_str(),
        route: response.route,
        state: response.subject.as_deref(),
        status,
        elapsed: started.elapsed(),
        peer: peer.ip(),
        // Only when a trusted proxy named someone else.
        client: client.filter(|c| *c != peer.ip().to_canonical()),
    });
    Ok(into_hyper(response))
}

/// Turns a hyper request into our socket-free one, within every bound. `Err` is the answer to
/// send instead (the connection is closed after it where the rest of the stream can't be
/// trusted).
async fn read_request(
    opts: &Options,
    peer: SocketAddr,
    deadline: Instant,
    framing_conflict: bool,
    req: hyper::Request<Incoming>,
) -> Result<HttpRequest, Response> {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    // The face is the path's alone: a query string must not turn an API path into a page.
    let face = Face::for_path(req.uri().path());
    let refuse = |e: Error| Err(e.into_response_for(face).with_header("Connection", "close"));
    if target.len() > opts.max_url_bytes {
        return refuse(Error::UrlTooLong);
    }
    // hyper decodes such a request as chunked; a proxy in front may have used the length.
    // Where two parsers can disagree about where a request ends, refuse it and close.
    if framing_conflict {
        return refuse(Error::BadRequest(
            "Content-Length together with Transfer-Encoding is not accepted",
        ));
    }
    let headers = req.headers();
    // hyper accepts any codings ending in chunked (`gzip, chunked`) and decodes only the chunks;
    // we decode no other coding, so anything but exactly `chunked` is refused and the
    // connection closed (what follows could be read differently by a proxy in front).
    let mut codings = headers.get_all(hyper::header::TRANSFER_ENCODING).iter();
    if let Some(first) = codings.next() {
        if codings.next().is_some()
            || !first
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked")
        {
            return refuse(Error::BadRequest(
                "Only Transfer-Encoding: chunked is accepted",
            ));
        }
    }
    let mut out = HttpRequest::new(req.method().as_str(), target);
    out.remote = Some(peer);
    out.headers = headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    out.client = Some(opts.trusted_proxies.client(peer.ip(), &out.headers));
    let body = req.into_body();
    if hyper::body::Body::is_end_stream(&body) {
        return Ok(out);
    }
    if hyper::body::Body::size_hint(&body)
        .exact()
        .is_some_and(|n| n > opts.max_body_bytes as u64)
    {
        // Refused unread: the connection closes rather than drain what was declared.
        return refuse(Error::BodyTooLarge);
    }
    let collect = Limited::new(body, opts.max_body_bytes).collect();
    match tokio::time::timeout_at(deadline.into(), collect).await {
        Ok(Ok(collected)) => {
            out.body = collected.to_bytes().to_vec();
            Ok(out)
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => refuse(Error::BodyTooLarge),
        Ok(Err(_)) => refuse(Error::BadRequest("Could not read the request body")),
        Err(_) => refuse(Error::RequestTimeout),
    }
}

/// Runs the handler and whatever it asks for: blocking work on the pool, a long-poll parked.
async fn answer(shared: &Shared, req: HttpRequest) -> Response {
    // A long-poll's place counts against its client's share.
    let client = req.client_ip().map(share_key);
    let handler = &shared.handler;
    let mut reply = catch_unwind(AssertUnwindSafe(|| handler(req)))
        .unwrap_or_else(|_| Reply::Now(Error::Internal.into_response()));
    loop {
        reply = match reply {
            Reply::Now(response) => return response,
            Reply::Later(job) => off_the_loop(&shared.pool, job)
                .await
                .unwrap_or_else(internal_reply),
            Reply::Wait(wait) => return long_poll(shared, wait, client).await,
        }
    }
}

fn internal_reply(_: ()) -> Reply {
    Reply::Now(Error::Internal.into_response())
}

/// Runs blocking work on tokio's bounded blocking pool; `Err` when it panicked. If the client
/// leaves meanwhile the work still completes (a code exchange must not be cut in half).
async fn off_the_loop<T: Send + 'static>(
    pool: &tokio::runtime::Handle,
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ()> {
    pool.spawn_blocking(move || catch_unwind(AssertUnwindSafe(job)).map_err(|_| ()))
        .await
        .map_err(|_| ())
        .and_then(|r| r)
}

/// Runs `job` in place, or off the loop when it may block.
async fn run<T: Send + 'static>(
    pool: &tokio::runtime::Handle,
    blocking: bool,
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ()> {
    if blocking {
        off_the_loop(pool, job).await
    } else {
        catch_unwind(AssertUnwindSafe(job)).map_err(|_| ())
    }
}

/// Parks a long-poll until its news or its deadline. Its place is held from parking to the
/// answer: news it may not have (a callback guarded by another's retrieval secret) wakes it, it
/// looks, and it waits on in the same place, so whatever happens meanwhile it answers at its own
/// deadline, never early for want of a place.
async fn long_poll(shared: &Shared, wait: Wait, client: Option<IpAddr>) -> Response {
    let (waiters, pool) = (&shared.waiters, &shared.pool);
    let Wait {
        key,
        deadline,
        ready,
        answer,
        blocking,
    } = wait;
    let mut parked = match waiters.park(&key, client) {
        Ok(parked) => parked,
        Err(Refused::ClientShare) => {
            crate::metrics::QUOTA_WAITERS.fetch_add(1, Ordering::Relaxed);
            return Error::QuotaExceeded(
                "Too many waiting requests from this client; try again later",
            )
            .into_response();
        }
        Err(Refused::Full | Refused::ShuttingDown) => {
            return Error::TooManyWaiters.into_response();
        }
    };
    loop {
        // A value that landed while the handler was parking us, or while we last looked, must
        // not be missed (a wake-up meanwhile is kept for the next `woken`).
        let check = ready.clone();
        if run(pool, blocking, move || check()).await.unwrap_or(true) {
            break;
        }
        tokio::select! {
            _ = parked.woken() => {}
            _ = tokio::time::sleep_until(deadline.into()) => break,
        }
        // A shutdown answers everyone now, with what they have.
        if waiters.is_closed() {
            break;
        }
    }
    let response = run(pool, blocking, answer)
        .await
        .unwrap_or_else(|_| Error::Internal.into_response());
    drop(parked);
    response
}

fn into_hyper(response: Response) -> hyper::Response<Full<Bytes>> {
    let mut out = hyper::Response::new(Full::new(response.body));
    *out.status_mut() = hyper::StatusCode::from_u16(response.status)
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = out.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(response.content_type),
    );
    for (name, value) in response.headers {
        let value = match value {
            std::borrow::Cow::Borrowed(v) => Ok(hyper::header::HeaderValue::from_static(v)),
            std::borrow::Cow::Owned(v) => hyper::header::HeaderValue::try_from(v),
        };
        if let Ok(value) = value {
            headers.append(name, value);
        }
    }
    out
}

/// On SIGTERM: long-polls answer now with what they have, idle connections close, busy ones
/// finish their request (within the grace period) and close.
async fn drain(shared: &Shared) {
    logging::info(
        "shutdown_started",
        json!({ "waiting_clients": shared.waiters.len(), "connections": shared.live.load(Ordering::Acquire) }),
    );
    shared.waiters.shutdown();
    for slot in shared.conns().slots.values() {
        slot.closing.store(true, Ordering::Release);
        slot.close.notify_one();
    }
    let deadline = Instant::now() + shared.opts.shutdown_grace;
    while shared.live.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    logging::info(
        "shutdown_complete",
        json!({ "unfinished_connections": shared.live.load(Ordering::Acquire) }),
    );
}

/// A run of accept failures less than `GAP` apart. Back-off doubles along it, log lines are
/// limited to one per `LOG_EVERY`, and an outage longer than `give_up_after` ends the process.
struct Outage {
    started: Option<Instant>,
    last_failure: Instant,
    last_logged: Option<Instant>,
    failures: u64,
    backoff: Duration,
}

impl Default for Outage {
    fn default() -> Self {
        Outage {
            started: None,
            last_failure: Instant::now(),
            last_logged: None,
            failures: 0,
            backoff: Duration::ZERO,
        }
    }
}

impl Outage {
    const GAP: Duration = Duration::from_secs(5);
    const LOG_EVERY: Duration = Duration::from_secs(5);

    fn failed(&mut self, error: &str) {
        if self.started.is_none() || self.last_failure.elapsed() > Self::GAP {
            *self = Outage {
                started: Some(Instant::now()),
                backoff: Duration::from_millis(10),
                ..Outage::default()
            };
        } else {
            self.backoff = (self.backoff * 2).min(Duration::from_secs(1));
        }
        self.failures += 1;
        self.last_failure = Instant::now();
        if self
            .last_logged
            .is_none_or(|t| t.elapsed() >= Self::LOG_EVERY)
        {
            self.last_logged = Some(Instant::now());
            logging::error(
                "accept_failed",
                json!({ "error": error, "failures": self.failures,
                        "outage_secs": self.started.map(|t| t.elapsed().as_secs()),
                        "action": "closing an idle connection and retrying" }),
            );
        }
    }

    /// A connection was accepted: an outage in progress is over.
    fn resumed(&mut self) {
        if self.started.take().is_some() {
            logging::warn("accept_resumed", json!({ "failures": self.failures }));
            self.failures = 0;
        }
    }

    fn too_long(&self, limit: Duration) -> bool {
        self.started.is_some_and(|t| t.elapsed() >= limit)
    }

    fn give_up(&self, error: &str) -> String {
        let secs = self.started.map(|t| t.elapsed().as_secs()).unwrap_or(0);
        logging::error(
            "accept_gave_up",
            json!({ "error": error, "failures": self.failures, "outage_secs": secs,
                    "action": "exiting non-zero so the process is restarted" }),
        );
        format!("could not accept connections for {secs} s: {error}")
    }
}

/// The socket as hyper sees it, with what hyper does not do:
/// - a write that makes no progress for `stall` fails, so a client that never reads its answers
///   cannot hold a connection (and its buffers) for ever;
/// - when hyper answers 431 to a head whose request line never ended, the answer becomes 414:
///   the line that did not fit is the request line; to a head whose `Content-Length` it cannot
///   represent, 413;
/// - a head naming both `Content-Length` and `Transfer-Encoding` marks the connection, and its
///   request is refused (hyper would have read it as chunked).
///
/// Lines and heads are tracked from the bytes read. A request body is not told apart from a
/// head, so a body crafted to look like header lines can at worst get its own connection a 400
/// or a 431 where 414 was due: nothing another client would notice.
struct Guarded {
    inner: TcpStream,
    stall: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    slot: Arc<Slot>,
    /// Lines completed in the head being read (0: still in its request line).
    line_in_head: u32,
    /// Bytes of the current line, line ends excluded (0 at a blank line: the head ends).
    line_len: usize,
    /// The current line's first bytes, lower-cased: enough for the two header names and a
    /// `Content-Length` value.
    prefix: [u8; 48],
    head_has_length: bool,
    head_has_coding: bool,
    /// The head being read, and the last one completed, declared a length hyper cannot
    /// represent (at least 2^64 - 2): hyper answers 431 to that, and it becomes 413.
    head_length_unrepresentable: bool,
    last_length_unrepresentable: bool,
    /// A replacement answer being written, and how much of it is out.
    rewrite: Option<(&'static [u8], usize)>,
}

const URI_TOO_LONG: &[u8] = b"HTTP/1.1 414 URI Too Long\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 52\r\n\r\n{\"status\":\"error\",\"message\":\"Request URL too long\"}";
const BODY_TOO_LARGE: &[u8] = b"HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 54\r\n\r\n{\"status\":\"error\",\"message\":\"Request body too large\"}";

impl Guarded {
    fn new(inner: TcpStream, stall: Duration, slot: Arc<Slot>) -> Self {
        Guarded {
            inner,
            stall,
            stalled: None,
            slot,
            line_in_head: 0,
            line_len: 0,
            prefix: [0; 48],
            head_has_length: false,
            head_has_coding: false,
            head_length_unrepresentable: false,
            last_length_unrepresentable: false,
            rewrite: None,
        }
    }

    fn track(&mut self, bytes: &[u8]) {
        for &b in bytes {
            match b {
                b'\n' if self.line_len == 0 => {
                    self.line_in_head = 0;
                    self.head_has_length = false;
                    self.head_has_coding = false;
                    self.last_length_unrepresentable = self.head_length_unrepresentable;
                    self.head_length_unrepresentable = false;
                }
                b'\n' => {
                    self.line_ended();
                    self.line_in_head = self.line_in_head.saturating_add(1);
                    self.line_len = 0;
                }
                b'\r' => {}
                _ => {
                    if let Some(p) = self.prefix.get_mut(self.line_len) {
                        *p = b.to_ascii_lowercase();
                    }
                    self.line_len += 1;
                }
            }
        }
    }

    fn line_ended(&mut self) {
        if self.line_in_head == 0 {
            return;
        }
        let line = &self.prefix[..self.line_len.min(self.prefix.len())];
        if let Some(value) = line.strip_prefix(b"content-length:") {
            self.head_has_length = true;
            let digits = value.trim_ascii();
            let huge = std::str::from_utf8(digits)
                .ok()
                .and_then(|d| d.parse::<u128>().ok())
                .is_some_and(|n| n >= u64::MAX as u128 - 2);
            // A value longer than the prefix holds is at least that large too.
            self.head_length_unrepresentable |= huge
                || (self.line_len > self.prefix.len() && digits.iter().all(u8::is_ascii_digit));
        }
        self.head_has_coding |= line.starts_with(b"transfer-encoding:");
        if self.head_has_length && self.head_has_coding {
            self.slot.framing_conflict.store(true, Ordering::Release);
        }
    }

    /// `Pending` while no progress is made, an error once that has lasted `stall`.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let stall = self.stall;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading",
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_write_inner(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => match self.stalled(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            this.track(&buf.filled()[before..]);
        }
        result
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.rewrite.is_none() && buf.starts_with(b"HTTP/1.1 431 ") {
            if this.line_in_head == 0 && this.line_len > 0 {
                this.rewrite = Some((URI_TOO_LONG, 0));
            } else if this.line_len == 0 && this.last_length_unrepresentable {
                this.rewrite = Some((BODY_TOO_LARGE, 0));
            }
        }
        let Some((answer, mut sent)) = this.rewrite else {
            return this.poll_write_inner(cx, buf);
        };
        while sent < answer.len() {
            match this.poll_write_inner(cx, &answer[sent..]) {
                Poll::Ready(Ok(n)) => sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    this.rewrite = Some((answer, sent));
                    return Poll::Pending;
                }
            }
            this.rewrite = Some((answer, sent));
        }
        // hyper's own answer is taken as written; it closes the connection next.
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection as `admit` would record it: on `listener`, from `client`, ready since
    /// `since` ms, busy or not.
    fn slot(listener: Listener, client: Option<u8>, since: u64, busy: bool) -> Arc<Slot> {
        Arc::new(Slot {
            in_flight: AtomicU32::new(busy as u32),
            ready_since_us: AtomicU64::new(since),
            closing: AtomicBool::new(false),
            close: Notify::new(),
            framing_conflict: AtomicBool::new(false),
            listener,
            client: client.map(ip),
            counted: AtomicBool::new(false),
        })
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    fn opts(max: usize, per_client: usize, public: usize, internal: usize) -> Options {
        Options {
            max_connections: max,
            max_connections_per_client: per_client,
            public_reserved: public,
            internal_reserved: internal,
            ..Options::default()
        }
    }

    /// Admits like `admit` does; the connection's id is `since`.
    fn admit(
        conns: &mut Conns,
        o: &Options,
        l: Listener,
        client: Option<u8>,
        since: u64,
        busy: bool,
    ) -> Result<(), &'static str> {
        match conns.make_room(o, l, client.map(ip)) {
            Ok(()) => {
                conns.insert(since, slot(l, client, since, busy));
                Ok(())
            }
            Err(Refusal::ClientShare) => Err("429"),
            Err(Refusal::Full) => Err("503"),
        }
    }

    fn shed(conns: &Conns) -> Vec<u64> {
        let mut ids: Vec<u64> = conns
            .slots
            .iter()
            .filter(|(_, s)| s.closing.load(Ordering::Acquire))
            .map(|(id, _)| *id)
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn the_raw_refusals_are_well_formed() {
        for raw in [REFUSED, CLIENT_SHARE_REACHED] {
            let text = std::str::from_utf8(raw).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(length, body.len(), "{head}");
            let json: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(json["status"], "error");
            assert!(head.contains("\r\nretry-after: 5\r\n"));
        }
        assert!(CLIENT_SHARE_REACHED.starts_with(b"HTTP/1.1 429 "));
    }

    #[test]
    fn a_client_at_its_share_gives_up_its_own_oldest_idle_connection_or_gets_429() {
        let o = opts(100, 3, 0, 0);
        let mut c = Conns::default();
        let sole = Listener::Sole;
        admit(&mut c, &o, sole, Some(9), 1, false).unwrap();
        admit(&mut c, &o, sole, Some(1), 2, false).unwrap();
        admit(&mut c, &o, sole, Some(1), 3, true).unwrap();
        admit(&mut c, &o, sole, Some(1), 4, false).unwrap();
        // At its share: its oldest idle one (2) goes, not another client's older one (1), not
        // its busy one (3).
        admit(&mut c, &o, sole, Some(1), 5, false).unwrap();
        assert_eq!(shed(&c), [2]);
        admit(&mut c, &o, sole, Some(1), 6, false).unwrap();
        assert_eq!(shed(&c), [2, 4]);
        // Every connection it holds is busy now: refused, and nothing else is closed for it.
        for id in [5, 6] {
            c.slots[&id].in_flight.store(1, Ordering::Release);
        }
        assert_eq!(admit(&mut c, &o, sole, Some(1), 7, false), Err("429"));
        assert_eq!(shed(&c), [2, 4]);
        // Others are not held to its share, nor is a trusted proxy's connection (no client).
        admit(&mut c, &o, sole, Some(2), 8, false).unwrap();
        for id in 10..20 {
            admit(&mut c, &o, sole, None, id, false).unwrap();
        }
        assert_eq!(shed(&c), [2, 4]);
        // A shed connection that closes frees nothing twice.
        assert!(c.remove(2));
        assert!(!c.remove(2));
        assert_eq!((c.counted, c.by_client[&ip(1)]), (15, 3));
    }

    #[test]
    fn a_public_flood_never_takes_what_the_internal_listener_keeps() {
        // 10 connections: the public listener may hold 10 - 3, the internal one 10 - 2.
        let o = opts(10, usize::MAX, 2, 3);
        let mut c = Conns::default();
        let (public, internal) = (Listener::Public, Listener::Internal);
        // Three idle internal connections first (a scraper's keep-alive, say): the oldest.
        for id in 0..3 {
            admit(&mut c, &o, internal, Some(1), id, false).unwrap();
        }
        for id in 10..17 {
            admit(&mut c, &o, public, Some(2), id, false).unwrap();
        }
        assert_eq!(c.on(public), 7);
        // The flood goes on: each newcomer closes the oldest public connection, never one of
        // the older internal ones.
        for id in 17..40 {
            admit(&mut c, &o, public, Some(2), id, false).unwrap();
            assert!(shed(&c).iter().all(|id| *id >= 10), "{:?}", shed(&c));
        }
        assert_eq!((c.on(public), c.on(internal)), (7, 3));
        // Busy, it is refused rather than take the internal listener's room.
        for s in c.slots.values() {
            if s.listener == public {
                s.in_flight.store(1, Ordering::Release);
            }
        }
        assert_eq!(admit(&mut c, &o, public, Some(3), 40, false), Err("503"));
        // The internal listener still gets in, on what it keeps: an idle connection of its own
        // makes room (the cap is reached), never a public one.
        admit(&mut c, &o, internal, Some(4), 41, false).unwrap();
        assert_eq!(shed(&c).iter().filter(|id| **id < 10).count(), 1);
        assert_eq!((c.on(public), c.on(internal), c.counted), (7, 3, 10));
    }

    #[test]
    fn at_the_cap_a_listener_takes_back_only_what_the_other_holds_beyond_its_reserve() {
        let o = opts(10, usize::MAX, 2, 3);
        let mut c = Conns::default();
        let (public, internal) = (Listener::Public, Listener::Internal);
        // The internal listener holds 8 (its limit: 10 - 2), idle and older than anything.
        for id in 0..8 {
            admit(&mut c, &o, internal, Some(1), id, false).unwrap();
        }
        // The public one has 2 of its own left before the cap...
        admit(&mut c, &o, public, Some(2), 10, true).unwrap();
        admit(&mut c, &o, public, Some(2), 11, true).unwrap();
        assert!(shed(&c).is_empty());
        // ...and then takes back internal ones, oldest first, down to the internal reserve.
        for id in 12..17 {
            admit(&mut c, &o, public, Some(2), id, true).unwrap();
        }
        assert_eq!(shed(&c), [0, 1, 2, 3, 4]);
        assert_eq!((c.on(public), c.on(internal)), (7, 3));
        // The public listener is at its limit (10 - 3) with everything busy: 503.
        assert_eq!(admit(&mut c, &o, public, Some(2), 17, false), Err("503"));
        assert_eq!(c.on(internal), 3);
    }
}
