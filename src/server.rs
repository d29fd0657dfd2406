//! The tiny_http accept loop made robust: several workers, panics turned into 500s, bounded
//! URLs and bodies, parked long-polls, graceful shutdown, and recovery when tiny_http's accept
//! thread dies.
//!
//! tiny_http's accept thread ends for good on any `accept` error (and can even panic when file
//! descriptors run out, since it unwraps a `try_clone`), after which the server looks alive but
//! never answers again. We therefore own the listening socket, hand tiny_http a duplicate of it,
//! and treat each tiny_http server as a replaceable *generation*:
//! - a worker that gets an error from `recv` reports it, and a watchdog thread sends a real
//!   request through the listener every few seconds and reports a generation that stops
//!   answering;
//! - the supervisor then starts a new generation on a fresh duplicate of the socket (retrying
//!   with back-off while descriptors are exhausted), while the old generation's workers finish
//!   the requests already read and exit once idle;
//! - if no generation can be started for `give_up_after`, the process exits non-zero with a
//!   log line saying why, so an orchestrator restarts it.
//!
//! Slow clients: the listener carries `SO_RCVTIMEO`/`SO_SNDTIMEO`, which Linux copies to every
//! accepted socket, so a client that sends nothing for `read_timeout` is disconnected. The same
//! option makes an idle `accept` fail with `WouldBlock`; the watchdog's requests keep `accept`
//! from idling that long, and a `WouldBlock` that slips through only starts a new generation.

use crate::http::{HttpRequest, Reply, Response};
use crate::logging;
use crate::waiters::Waiters;
use serde_json::json;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub type Handler = Arc<dyn Fn(HttpRequest) -> Reply + Send + Sync>;

#[derive(Clone, Debug)]
pub struct Options {
    /// Threads calling `recv()`. Defaults to 8.
    pub workers: usize,
    /// A client that sends nothing (or reads nothing) for this long is disconnected.
    /// Defaults to 10 seconds.
    pub read_timeout: Duration,
    /// Longer request targets get 414. Defaults to 8 KiB.
    pub max_url_bytes: usize,
    /// Longer bodies get 413. Defaults to 4 KiB.
    pub max_body_bytes: usize,
    /// How long in-flight requests may take to finish after a shutdown request.
    /// Defaults to 5 seconds.
    pub shutdown_grace: Duration,
    /// How long to keep trying to accept again before exiting non-zero. Defaults to 60 seconds.
    pub give_up_after: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            workers: 8,
            read_timeout: Duration::from_secs(10),
            max_url_bytes: 8 * 1024,
            max_body_bytes: 4 * 1024,
            shutdown_grace: Duration::from_secs(5),
            give_up_after: Duration::from_secs(60),
        }
    }
}

/// Binds the listening socket with the options every accepted connection inherits.
pub fn bind(host: &str, port: u16, read_timeout: Duration) -> io::Result<TcpListener> {
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
    // Inherited by accepted sockets, like the timeouts: tiny_http writes a response larger than
    // its 1 KiB buffer in two parts, and Nagle's algorithm would hold the second until the
    // client's delayed ACK (about 40 ms per page).
    socket.set_tcp_nodelay(true)?;
    socket.set_read_timeout(Some(read_timeout))?;
    socket.set_write_timeout(Some(read_timeout))?;
    Ok(socket.into())
}

enum Event {
    /// The generation's accept thread is gone (an error from `recv`, or the watchdog).
    AcceptLost {
        generation: u64,
        error: io::Error,
    },
    Shutdown,
}

struct Generation {
    id: u64,
    server: tiny_http::Server,
    stale: AtomicBool,
    last_active_ms: AtomicU64,
}

struct Shared {
    handler: Handler,
    waiters: Arc<Waiters>,
    opts: Options,
    stopping: AtomicBool,
    events: mpsc::Sender<Event>,
    epoch: Instant,
    watchdog_path: String,
    current_generation: AtomicU64,
}

impl Shared {
    fn report(&self, event: Event) {
        let _ = self.events.send(event);
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// A running server. Dropping it does not stop it; call `stopper().stop()` and `wait()`.
pub struct Running {
    addr: SocketAddr,
    events: mpsc::Sender<Event>,
    supervisor: JoinHandle<Result<(), String>>,
}

#[derive(Clone)]
pub struct Stopper(mpsc::Sender<Event>);

impl Stopper {
    pub fn stop(&self) {
        let _ = self.0.send(Event::Shutdown);
    }
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stopper(&self) -> Stopper {
        Stopper(self.events.clone())
    }

    /// Blocks until the server has shut down (Ok) or given up accepting (Err).
    pub fn wait(self) -> Result<(), String> {
        self.supervisor
            .join()
            .unwrap_or_else(|_| Err("supervisor panicked".into()))
    }
}

pub fn start(
    listener: TcpListener,
    opts: Options,
    handler: Handler,
    waiters: Arc<Waiters>,
) -> io::Result<Running> {
    let addr = listener.local_addr()?;
    let (tx, rx) = mpsc::channel();
    let mut token = [0u8; 16];
    getrandom::fill(&mut token).map_err(|e| io::Error::other(e.to_string()))?;
    let shared = Arc::new(Shared {
        handler,
        waiters,
        opts,
        stopping: AtomicBool::new(false),
        events: tx.clone(),
        epoch: Instant::now(),
        watchdog_path: format!("/__oauth-relay-watchdog/{}", crate::secret::hex(&token)),
        current_generation: AtomicU64::new(0),
    });
    let first = spawn_generation(&listener, 1, &shared)?;
    let supervisor = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("supervisor".into())
            .spawn(move || supervise(listener, first, shared, rx))?
    };
    {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || watchdog(addr, shared))?;
    }
    Ok(Running {
        addr,
        events: tx,
        supervisor,
    })
}

type Workers = Vec<JoinHandle<()>>;

fn spawn_generation(
    listener: &TcpListener,
    id: u64,
    shared: &Arc<Shared>,
) -> io::Result<(Arc<Generation>, Workers)> {
    let server = tiny_http::Server::from_listener(listener.try_clone()?, None)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let generation = Arc::new(Generation {
        id,
        server,
        stale: AtomicBool::new(false),
        last_active_ms: AtomicU64::new(shared.now_ms()),
    });
    let mut workers = Vec::with_capacity(shared.opts.workers);
    for n in 0..shared.opts.workers {
        let (g, s) = (generation.clone(), shared.clone());
        workers.push(
            std::thread::Builder::new()
                .name(format!("worker-{id}-{n}"))
                .spawn(move || work(g, s, n))?,
        );
    }
    shared.current_generation.store(id, Ordering::SeqCst);
    Ok((generation, workers))
}

fn supervise(
    listener: TcpListener,
    first: (Arc<Generation>, Workers),
    shared: Arc<Shared>,
    events: mpsc::Receiver<Event>,
) -> Result<(), String> {
    let (mut current, mut workers) = first;
    let mut outage = Outage::default();
    while let Ok(Event::AcceptLost { generation, error }) = events.recv() {
        if generation != current.id || shared.stopping.load(Ordering::SeqCst) {
            continue;
        }
        current.stale.store(true, Ordering::SeqCst);
        if matches!(
            error.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            // An idle accept() timed out (SO_RCVTIMEO): nothing is wrong, start again at once.
            logging::event(
                logging::Level::Debug,
                "accept_idle_timeout",
                json!({ "generation": generation }),
            );
        } else {
            outage.failed(&error.to_string(), generation);
            if outage.too_long(shared.opts.give_up_after) {
                return Err(outage.give_up(&error.to_string()));
            }
            std::thread::sleep(outage.backoff);
        }
        loop {
            if shared.stopping.load(Ordering::SeqCst) {
                break;
            }
            match spawn_generation(&listener, current.id + 1, &shared) {
                Ok((g, w)) => {
                    crate::metrics::ACCEPT_RESTARTS.fetch_add(1, Ordering::Relaxed);
                    outage.resumed(g.id);
                    current = g;
                    workers.retain(|h| !h.is_finished());
                    workers.extend(w);
                    break;
                }
                Err(e) => {
                    outage.failed(&e.to_string(), current.id);
                    if outage.too_long(shared.opts.give_up_after) {
                        return Err(outage.give_up(&e.to_string()));
                    }
                    std::thread::sleep(outage.backoff);
                }
            }
        }
    }
    shut_down(&listener, &shared, workers);
    Ok(())
}

/// A run of accept failures less than `GAP` apart. Back-off doubles along it, log lines are
/// limited to one per `LOG_EVERY`, and an outage longer than `give_up_after` ends the process.
struct Outage {
    started: Option<Instant>,
    last_failure: Instant,
    last_logged: Option<Instant>,
    failures: u64,
    resumes: u64,
    backoff: Duration,
}

impl Default for Outage {
    fn default() -> Self {
        Outage {
            started: None,
            last_failure: Instant::now(),
            last_logged: None,
            failures: 0,
            resumes: 0,
            backoff: Duration::ZERO,
        }
    }
}

impl Outage {
    const GAP: Duration = Duration::from_secs(5);
    const LOG_EVERY: Duration = Duration::from_secs(5);

    fn failed(&mut self, error: &str, generation: u64) {
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
                json!({ "generation": generation, "error": error, "failures": self.failures,
                        "outage_secs": self.started.map(|t| t.elapsed().as_secs()),
                        "action": "starting a new accept thread" }),
            );
        }
    }

    fn resumed(&mut self, generation: u64) {
        // The first restart of an outage is always told; repeats share the failures' budget.
        if self.resumes > 0
            && self
                .last_logged
                .is_some_and(|t| t.elapsed() < Self::LOG_EVERY)
        {
            self.resumes += 1;
            return;
        }
        self.resumes += 1;
        self.last_logged = Some(Instant::now());
        logging::warn(
            "accept_resumed",
            json!({ "generation": generation, "failures": self.failures }),
        );
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

fn shut_down(listener: &TcpListener, shared: &Shared, workers: Workers) {
    shared.stopping.store(true, Ordering::SeqCst);
    // shutdown(2) on a listening socket stops it listening for every duplicate of it:
    // new connections are refused and the accept thread wakes up with an error.
    let _ = socket2::SockRef::from(listener).shutdown(std::net::Shutdown::Read);
    logging::info(
        "shutdown_started",
        json!({ "waiting_clients": shared.waiters.len() }),
    );
    // Long-polls answer now with what they have, as on a timeout.
    shared.waiters.shutdown();
    let deadline = Instant::now() + shared.opts.shutdown_grace;
    while workers.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let unfinished = workers.iter().filter(|h| !h.is_finished()).count();
    logging::info(
        "shutdown_complete",
        json!({ "unfinished_workers": unfinished }),
    );
}

/// Serves one generation. Once it is replaced, worker 0 stays to finish what its connections
/// still send (until idle for longer than a client may stay silent); the others leave at once,
/// so a long outage with many replacements does not pile up threads.
fn work(generation: Arc<Generation>, shared: Arc<Shared>, index: usize) {
    let poll = Duration::from_millis(200);
    let linger_ms = (shared.opts.read_timeout + Duration::from_secs(2)).as_millis() as u64;
    loop {
        match generation.server.recv_timeout(poll) {
            Ok(Some(rq)) => {
                generation
                    .last_active_ms
                    .store(shared.now_ms(), Ordering::Relaxed);
                handle(&shared, rq);
            }
            Ok(None) => {
                if shared.stopping.load(Ordering::SeqCst) {
                    return;
                }
                let idle = shared.now_ms() - generation.last_active_ms.load(Ordering::Relaxed);
                if generation.stale.load(Ordering::SeqCst) && (index > 0 || idle > linger_ms) {
                    return;
                }
            }
            Err(error) => shared.report(Event::AcceptLost {
                generation: generation.id,
                error,
            }),
        }
    }
}

/// What the access log needs about a request after the handler has consumed it.
struct Meta {
    method: String,
    remote: Option<IpAddr>,
    started: Instant,
}

fn handle(shared: &Arc<Shared>, mut rq: tiny_http::Request) {
    let meta = Meta {
        method: rq.method().as_str().to_string(),
        remote: rq.remote_addr().map(|a| a.ip()),
        started: Instant::now(),
    };
    if rq.url() == shared.watchdog_path {
        let _ = rq.respond(tiny_http::Response::empty(204));
        return;
    }
    let req = match read_request(&mut rq, &shared.opts) {
        Ok(req) => req,
        Err(response) => return send(rq, response, &meta),
    };
    let handler = &shared.handler;
    let reply = catch_unwind(AssertUnwindSafe(|| handler(req)))
        .unwrap_or_else(|_| Reply::Now(crate::error::Error::Internal.into_response()));
    match reply {
        Reply::Now(response) => send(rq, response, &meta),
        Reply::Later(job) => {
            let spawned = std::thread::Builder::new()
                .name("background".into())
                .spawn(move || {
                    let response = catch_unwind(AssertUnwindSafe(job))
                        .unwrap_or_else(|_| crate::error::Error::Internal.into_response());
                    send(rq, response, &meta)
                });
            // Out of threads: the request went down with the closure, and tiny_http answers a
            // dropped request with 500.
            if let Err(e) = spawned {
                logging::error("spawn_failed", json!({ "error": e.to_string() }));
            }
        }
        Reply::Wait(wait) => {
            let answer = wait.answer;
            let wake: crate::waiters::Wake = Box::new(move |refused| {
                let response = if refused {
                    crate::error::Error::TooManyWaiters.into_response()
                } else {
                    catch_unwind(AssertUnwindSafe(answer))
                        .unwrap_or_else(|_| crate::error::Error::Internal.into_response())
                };
                send(rq, response, &meta)
            });
            match shared.waiters.park(wait.key.clone(), wait.deadline, wake) {
                Ok(_) => {
                    if catch_unwind(AssertUnwindSafe(wait.ready)).unwrap_or(true) {
                        shared.waiters.notify(&wait.key);
                    }
                }
                Err(wake) => wake(true),
            }
        }
    }
}

fn read_request(rq: &mut tiny_http::Request, opts: &Options) -> Result<HttpRequest, Response> {
    use crate::error::Error;
    let url = rq.url();
    let face = crate::error::Face::for_path(url);
    if url.len() > opts.max_url_bytes {
        return Err(Error::UrlTooLong.into_response_for(face));
    }
    let mut req = HttpRequest::new(rq.method().as_str(), url);
    req.remote = rq.remote_addr().copied();
    req.headers = rq
        .headers()
        .iter()
        .map(|h| {
            (
                h.field.as_str().as_str().to_ascii_lowercase(),
                h.value.as_str().to_string(),
            )
        })
        .collect();
    if rq.body_length().is_some_and(|n| n > opts.max_body_bytes) {
        return Err(Error::BodyTooLarge.into_response_for(face));
    }
    let mut body = Vec::new();
    rq.as_reader()
        .take(opts.max_body_bytes as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|_| {
            Error::BadRequest("Could not read the request body").into_response_for(face)
        })?;
    if body.len() > opts.max_body_bytes {
        return Err(Error::BodyTooLarge.into_response_for(face));
    }
    req.body = body;
    Ok(req)
}

fn send(rq: tiny_http::Request, response: Response, meta: &Meta) {
    let status = response.status;
    crate::metrics::REQUESTS.fetch_add(1, Ordering::Relaxed);
    if status >= 500 {
        crate::metrics::SERVER_ERRORS.fetch_add(1, Ordering::Relaxed);
    }
    let (route, subject) = (response.route, response.subject.clone());
    let mut out = tiny_http::Response::from_data(response.body).with_status_code(status);
    let content_type = tiny_http::Header::from_bytes("Content-Type", response.content_type);
    out.add_header(content_type.expect("static header is valid"));
    for (name, value) in &response.headers {
        if let Ok(h) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            out.add_header(h);
        }
    }
    // The client may have gone away; nothing to do about that but note it.
    let delivered = rq.respond(out).is_ok();
    if logging::enabled(logging::Level::Info) {
        logging::info(
            "request",
            json!({
                "method": meta.method,
                "route": route,
                "state": subject,
                "status": status,
                "ms": (meta.started.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
                "peer": meta.remote.map(|ip| ip.to_string()),
                "delivered": delivered,
            }),
        );
    }
}

/// Sends a real request through the listener every few seconds. A generation that stops
/// answering it (its accept thread died without telling `recv`) is reported and replaced.
fn watchdog(addr: SocketAddr, shared: Arc<Shared>) {
    let target = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    };
    // Often enough that accept() never idles into its SO_RCVTIMEO; a healthy server answers
    // this in well under a millisecond, so two misses of two seconds is a dead accept thread.
    let interval =
        (shared.opts.read_timeout / 3).clamp(Duration::from_millis(100), Duration::from_secs(2));
    let patience = Duration::from_secs(2);
    let mut misses = 0;
    while !shared.stopping.load(Ordering::SeqCst) {
        std::thread::sleep(interval);
        let generation = shared.current_generation.load(Ordering::SeqCst);
        match probe(target, &shared.watchdog_path, patience) {
            Probe::Answered => misses = 0,
            // Out of descriptors ourselves, say: that tells nothing about the accept thread.
            Probe::CannotTell => {}
            Probe::NoAnswer if shared.stopping.load(Ordering::SeqCst) => return,
            Probe::NoAnswer => {
                misses += 1;
                if misses >= 2 && generation == shared.current_generation.load(Ordering::SeqCst) {
                    misses = 0;
                    shared.report(Event::AcceptLost {
                        generation,
                        error: io::Error::other("the listener stopped answering the watchdog"),
                    });
                }
            }
        }
    }
}

enum Probe {
    Answered,
    NoAnswer,
    CannotTell,
}

fn probe(target: SocketAddr, path: &str, patience: Duration) -> Probe {
    let Ok(mut stream) = TcpStream::connect_timeout(&target, patience) else {
        return Probe::CannotTell;
    };
    let _ = stream.set_read_timeout(Some(patience));
    let _ = stream.set_write_timeout(Some(patience));
    let request = format!("GET {path} HTTP/1.1\r\nHost: watchdog\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return Probe::NoAnswer;
    }
    let mut head = [0u8; 12];
    match stream.read_exact(&mut head) {
        Ok(()) if head.starts_with(b"HTTP/1.1 204") => Probe::Answered,
        _ => Probe::NoAnswer,
    }
}
