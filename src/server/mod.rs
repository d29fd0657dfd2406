//! The front door: hyper's HTTP/1.1 connections on tokio, plus every bound hyper leaves to us.
//! One thread accepts and hands each connection to one of `workers` event loops (a thread with a
//! runtime of its own), which serves it start to end; blocking work goes to one bounded pool.
//! hyper parses strictly (one request at a time per connection, malformed framing refused) and
//! bounds header bytes, header count and the time to receive a head; here we add the rest:
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
//!
//! By job: this file starts the server and stops it (listeners, event loops, the blocking pool,
//! the drain) and holds what its parts share, its counters among it; `conns.rs` decides who gets
//! a connection (the cap and its shares); `accept.rs` accepts, admits or refuses, and hands each
//! connection to an event loop; `exchange.rs` serves a connection: hyper's requests turned into
//! ours within every bound, the service's replies run (blocking work, long-polls) and turned
//! back, the access log; `guarded.rs` is the socket as hyper sees it; `raw.rs` holds the answers
//! written as bytes where hyper cannot answer. The server knows no path: what it serves, and how
//! a refusal is worded for a path's reader, is the `Service`'s (the router, `routes.rs`).

mod accept;
mod conns;
mod exchange;
mod guarded;
mod raw;

use crate::config::ServerOptions;
use crate::error::Error;
use crate::http::{HttpRequest, Listener, Reply, Response};
use crate::logging;
use crate::waiters::Waiters;
use accept::{accept_loop, Accepted};
use conns::Conns;
use serde_json::json;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the server serves (the router, `routes.rs`). A closure from request to reply is one too,
/// wording its refusals as JSON.
pub trait Service: Send + Sync + 'static {
    /// The reply to a request that arrived whole and within every bound.
    fn serve(&self, req: HttpRequest) -> Reply;
    /// The answer to a request refused before it was whole (too long, too large, too slow,
    /// badly framed): `error` worded for whoever reads `path`'s answers.
    fn refuse(&self, path: &str, error: Error) -> Response;
}

impl<F> Service for F
where
    F: Fn(HttpRequest) -> Reply + Send + Sync + 'static,
{
    fn serve(&self, req: HttpRequest) -> Reply {
        self(req)
    }

    fn refuse(&self, _: &str, error: Error) -> Response {
        error.into_response()
    }
}

pub type Handler = Arc<dyn Service>;

/// What the server counts. The server owns them; whoever reports them (`/metrics`) is handed the
/// same `Arc` at start-up.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests answered, by any status.
    pub requests: AtomicU64,
    /// Requests answered with a 5xx status (a panic in a handler included).
    pub server_errors: AtomicU64,
    /// Failed `accept` calls (descriptors exhausted, say); each is retried after a back-off.
    pub accept_errors: AtomicU64,
    /// Connections open now, shed ones on their way out included (what the drain waits for).
    pub open_connections: AtomicU64,
    /// Idle connections closed to make room for new ones at the connection cap.
    pub connections_shed: AtomicU64,
    /// Connections answered 503 at the cap because none was idle.
    pub connections_refused: AtomicU64,
    /// Times a client reached its share of connections (`max_connections_per_client`): its
    /// newcomer answered 429, or its own longest-idle connection closed to make room.
    pub quota_connections: AtomicU64,
    /// Long-polls answered 429 because their client held its share of waiters.
    pub quota_waiters: AtomicU64,
}

/// Why the server stopped without being asked to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Accepting failed for `secs` seconds on end (descriptors exhausted, say).
    AcceptGaveUp { secs: u64, error: String },
    /// A thread of the server panicked (a bug).
    Panicked(&'static str),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::AcceptGaveUp { secs, error } => {
                write!(f, "could not accept connections for {secs} s: {error}")
            }
            Failure::Panicked(what) => write!(f, "{what} panicked"),
        }
    }
}

impl std::error::Error for Failure {}

/// Connections the kernel holds for us before `accept`.
const BACKLOG: i32 = 1024;

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
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A running server. Dropping it does not stop it; call `stopper().stop()` and `wait()`.
pub struct Running {
    /// Each listener's address, in the order given to `start_listeners`.
    addrs: Vec<(Listener, SocketAddr)>,
    stop: Arc<watch::Sender<bool>>,
    runtime: tokio::runtime::Handle,
    thread: std::thread::JoinHandle<Result<(), Failure>>,
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
    pub fn wait(self) -> Result<(), Failure> {
        self.thread
            .join()
            .unwrap_or(Err(Failure::Panicked("the server thread")))
    }
}

/// Starts serving `listener`, the only one (it serves every route), on a runtime of its own,
/// on a thread of its own.
pub fn start(
    listener: std::net::TcpListener,
    opts: ServerOptions,
    service: Handler,
    waiters: Arc<Waiters>,
) -> io::Result<Running> {
    let (listeners, counters) = (vec![(listener, Listener::Sole)], Arc::default());
    start_listeners(listeners, opts, service, waiters, counters)
}

/// Starts serving several listeners (public and internal) on one runtime. They share
/// everything: the connection cap, the long-poll registry, the blocking pool and the shutdown,
/// so a stop (SIGTERM) closes all of them, and a listener that gives up accepting stops the
/// others too (the process exits non-zero and is restarted whole). Each request carries the
/// listener it came in on; the router decides what that listener may reach. What happens is
/// counted in `counters`.
pub fn start_listeners(
    listeners: Vec<(std::net::TcpListener, Listener)>,
    opts: ServerOptions,
    service: Handler,
    waiters: Arc<Waiters>,
    counters: Arc<Counters>,
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
        service,
        waiters,
        conns: Mutex::new(Conns::new(counters.clone())),
        counters,
        pool: main.handle().clone(),
        loops: senders,
        next_loop: AtomicUsize::new(0),
        opts,
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
                                        tokio::spawn(exchange::serve_connection(
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
                        .unwrap_or(Err(Failure::Panicked("an accept loop")));
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

/// What the parts of the server share.
struct Shared {
    service: Handler,
    waiters: Arc<Waiters>,
    counters: Arc<Counters>,
    /// The runtime whose bounded pool runs all blocking work, whichever event loop asked.
    pool: tokio::runtime::Handle,
    /// The event loops, each taking the connections handed to it.
    loops: Vec<tokio::sync::mpsc::UnboundedSender<Accepted>>,
    next_loop: AtomicUsize,
    opts: ServerOptions,
    conns: Mutex<Conns>,
    next_id: AtomicU64,
    epoch: Instant,
}

impl Shared {
    /// A connection is gone: its place under the cap is free.
    fn forget(&self, id: u64) {
        if self.conns().remove(id) {
            self.counters
                .open_connections
                .fetch_sub(1, Ordering::AcqRel);
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

/// On SIGTERM: long-polls answer now with what they have, idle connections close, busy ones
/// finish their request (within the grace period) and close.
async fn drain(shared: &Shared) {
    logging::info(
        "shutdown_started",
        json!({ "waiting_clients": shared.waiters.len(), "connections": shared.counters.open_connections.load(Ordering::Acquire) }),
    );
    shared.waiters.shutdown();
    shared.conns().close_all();
    let deadline = Instant::now() + shared.opts.shutdown_grace;
    while shared.counters.open_connections.load(Ordering::Acquire) > 0 && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    logging::info(
        "shutdown_complete",
        json!({ "unfinished_connections": shared.counters.open_connections.load(Ordering::Acquire) }),
    );
}
