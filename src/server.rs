//! The front door: hyper's HTTP/1.1 connections on tokio, plus every bound hyper leaves to us.
//! One thread accepts and hands each connection to one of `workers` event loops (a thread with a
//! runtime of its own), which serves it start to end; blocking work goes to one bounded pool. hyper parses strictly (one request at a time per connection, malformed framing refused)
//! and bounds header bytes, header count and the time to receive a head; here we add the rest:
//! - a total deadline for each request, head and body (hyper's head timer and ours start at the
//!   same moment: when the connection becomes ready for the request), and a body-size limit,
//!   refused unread when the declared length is already too large;
//! - a connection cap: when it is reached, the connection idle the longest is closed to make room,
//!   so new clients and the kubelet's probes still get in; with nothing idle, a short 503;
//! - `Content-Length` together with `Transfer-Encoding` is refused and the connection closed;
//! - writes that stall (a client that never reads) end the connection after the read timeout;
//! - long-polls park as futures, not threads, and leave the moment hyper drops them (client gone);
//! - blocking work runs on tokio's bounded blocking pool, never on the event loop;
//! - a panicking handler becomes a 500 for that request alone;
//! - accept errors (descriptors exhausted) shed an idle connection, back off and retry; a long
//!   outage ends the process non-zero with a log line saying why;
//! - one or two listeners (public and internal) share the event loops, the connection cap, the
//!   long-poll registry and the shutdown; each request is told which one it came in on;
//! - SIGTERM (via `Stopper`) stops accepting on every listener, answers every long-poll, lets
//!   in-flight requests finish within the grace period, and returns.

use crate::error::{Error, Face};
use crate::http::{HttpRequest, Listener, Reply, Response, Wait};
use crate::logging;
use crate::waiters::Waiters;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
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
        conns: Mutex::new(HashMap::new()),
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
    conns: Mutex<HashMap<u64, Arc<Slot>>>,
    live: AtomicUsize,
    next_id: AtomicU64,
    epoch: Instant,
}

impl Shared {
    /// A connection is gone: its place under the cap is free.
    fn forget(&self, id: u64) {
        if self.conns().remove(&id).is_some() {
            self.live.fetch_sub(1, Ordering::AcqRel);
            crate::metrics::OPEN_CONNECTIONS.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Slot>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the connection idle the longest to close. False when every connection is busy.
    fn shed_one_idle(&self) -> bool {
        let conns = self.conns();
        let victim = conns
            .values()
            .filter(|s| {
                s.in_flight.load(Ordering::Acquire) == 0 && !s.closing.load(Ordering::Acquire)
            })
            .min_by_key(|s| s.ready_since_ms.load(Ordering::Relaxed));
        match victim {
            Some(slot) => {
                slot.closing.store(true, Ordering::Release);
                slot.close.notify_one();
                crate::metrics::CONNECTIONS_SHED.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }
}

/// One connection's state, as the accept loop and its requests see it.
struct Slot {
    /// Requests whose answer is being worked on (0 or 1: hyper serves one at a time).
    in_flight: AtomicU32,
    /// When the connection became ready for its next request (accepted, or its last answer
    /// done): the start of that request's deadline, and what "idle the longest" compares.
    ready_since_ms: AtomicU64,
    /// Asked to close (shed at the cap, or shutdown).
    closing: AtomicBool,
    close: Notify,
    /// A head on this connection named both `Content-Length` and `Transfer-Encoding`. hyper
    /// reads such a request as chunked and drops the length before we see the headers, so the
    /// socket wrapper (`Guarded`) notices it in the bytes; the request is then refused.
    framing_conflict: AtomicBool,
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

const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 5\r\nconnection: close\r\ncontent-length: 69\r\n\r\n{\"status\":\"error\",\"message\":\"Too many connections; try again later\"}";

fn admit(shared: &Arc<Shared>, stream: TcpStream, peer: SocketAddr, which: Listener) {
    if shared.live.load(Ordering::Acquire) >= shared.opts.max_connections && !shared.shed_one_idle()
    {
        // Every connection is busy: a short answer written without waiting (a fresh socket's
        // send buffer is empty), then closed.
        crate::metrics::CONNECTIONS_REFUSED.fetch_add(1, Ordering::Relaxed);
        let _ = stream.try_write(REFUSED);
        return;
    }
    // Small answers go out at once instead of waiting for the client's delayed ACK.
    let _ = stream.set_nodelay(true);
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let slot = Arc::new(Slot {
        in_flight: AtomicU32::new(0),
        ready_since_ms: AtomicU64::new(shared.now_ms()),
        closing: AtomicBool::new(false),
        close: Notify::new(),
        framing_conflict: AtomicBool::new(false),
    });
    shared.conns().insert(id, slot.clone());
    shared.live.fetch_add(1, Ordering::AcqRel);
    crate::metrics::OPEN_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
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
            .ready_since_ms
            .store(self.shared.now_ms(), Ordering::Relaxed);
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
    let _busy = Busy::new(&slot, &shared);
    let started = Instant::now();
    let method = req.method().clone();
    let deadline = shared.epoch
        + Duration::from_millis(slot.ready_since_ms.load(Ordering::Relaxed))
        + shared.opts.read_timeout;
    let conflict = slot.framing_conflict.load(Ordering::Acquire);
    let response = match read_request(&shared.opts, peer, deadline, conflict, req).await {
        Ok(mut req) => {
            req.listener = which;
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
    let face = Face::for_path(target);
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
    let handler = &shared.handler;
    let mut reply = catch_unwind(AssertUnwindSafe(|| handler(req)))
        .unwrap_or_else(|_| Reply::Now(Error::Internal.into_response()));
    loop {
        reply = match reply {
            Reply::Now(response) => return response,
            Reply::Later(job) => off_the_loop(&shared.pool, job)
                .await
                .unwrap_or_else(internal_reply),
            Reply::Wait(wait) => return long_poll(shared, wait).await,
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

async fn long_poll(shared: &Shared, wait: Wait) -> Response {
    let (waiters, pool) = (&shared.waiters, &shared.pool);
    let Wait {
        key,
        deadline,
        ready,
        answer,
        blocking,
    } = wait;
    let Ok(mut parked) = waiters.park(&key) else {
        return Error::TooManyWaiters.into_response();
    };
    loop {
        // A value that landed while the handler was parking us must not be missed.
        let check = ready.clone();
        if run(pool, blocking, move || check()).await.unwrap_or(true) {
            break;
        }
        tokio::select! {
            _ = parked.woken() => {}
            _ = tokio::time::sleep_until(deadline.into()) => break,
        }
        // Woken by news under our key that may not be ours to have (a callback guarded by
        // another's retrieval secret): answering now would tell that it landed, so park again
        // and look. A shutdown refuses the new ticket, and we answer at once.
        match waiters.park(&key) {
            Ok(again) => parked = again,
            Err(_) => break,
        }
    }
    drop(parked);
    run(pool, blocking, answer)
        .await
        .unwrap_or_else(|_| Error::Internal.into_response())
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
    for slot in shared.conns().values() {
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
