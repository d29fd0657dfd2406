//! One connection served start to end: hyper's requests turned into ours within every bound
//! hyper leaves to us (the URL, the framing, the body and its deadline), the service's reply run
//! (blocking work on the pool, work awaited, a long-poll parked, a panic turned into a 500) and
//! turned back into hyper's response, each request counted and written to the access log.

use super::conns::Slot;
use super::guarded::Guarded;
use super::Shared;
use crate::client_ip::share_key;
use crate::error::Error;
use crate::http::{HttpRequest, Later, Listener, Reply, Response, Wait};
use crate::logging;
use crate::waiters::Refused;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// hyper refuses a `max_buf_size` below this (its minimum read buffer).
const MIN_HEADER_BYTES: usize = 8192;

pub(super) async fn serve_connection(
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
    let response = match read_request(&shared, peer, deadline, conflict, req).await {
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
    let counters = &shared.counters;
    counters.requests.fetch_add(1, Ordering::Relaxed);
    if status >= 500 {
        counters.server_errors.fetch_add(1, Ordering::Relaxed);
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
/// send instead, worded by the service for the path's reader; the connection is closed after it
/// (the rest of the stream can't be trusted).
async fn read_request(
    shared: &Shared,
    peer: SocketAddr,
    deadline: Instant,
    framing_conflict: bool,
    req: hyper::Request<Incoming>,
) -> Result<HttpRequest, Response> {
    let opts = &shared.opts;
    let refuse = |path: &str, error: Error| {
        Err(shared
            .service
            .refuse(path, error)
            .with_header("Connection", "close"))
    };
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    if target.len() > opts.max_url_bytes {
        return refuse(req.uri().path(), Error::UrlTooLong);
    }
    // hyper decodes such a request as chunked; a proxy in front may have used the length.
    // Where two parsers can disagree about where a request ends, refuse it and close.
    if framing_conflict {
        return refuse(
            req.uri().path(),
            Error::BadRequest("Content-Length together with Transfer-Encoding is not accepted"),
        );
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
            return refuse(
                req.uri().path(),
                Error::BadRequest("Only Transfer-Encoding: chunked is accepted"),
            );
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
        return refuse(&out.path, Error::BodyTooLarge);
    }
    let collect = Limited::new(body, opts.max_body_bytes).collect();
    match tokio::time::timeout_at(deadline.into(), collect).await {
        Ok(Ok(collected)) => {
            out.body = collected.to_bytes().to_vec();
            Ok(out)
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            refuse(&out.path, Error::BodyTooLarge)
        }
        Ok(Err(_)) => refuse(
            &out.path,
            Error::BadRequest("Could not read the request body"),
        ),
        Err(_) => refuse(&out.path, Error::RequestTimeout),
    }
}

/// Runs the service and whatever it asks for: blocking work on the pool, work awaited, a
/// long-poll parked.
async fn answer(shared: &Shared, req: HttpRequest) -> Response {
    // A long-poll's place counts against its client's share.
    let client = req.client_ip().map(share_key);
    let service = &shared.service;
    let reply = catch_unwind(AssertUnwindSafe(|| service.serve(req)))
        .unwrap_or_else(|_| Reply::Now(Error::Internal.into_response()));
    match settle(shared, reply).await {
        Ok(response) => response,
        Err(wait) => long_poll(shared, wait, client).await,
    }
}

/// Runs `reply` until it is an answer, or a long-poll to park (`Err`).
async fn settle(shared: &Shared, mut reply: Reply) -> Result<Response, Wait> {
    loop {
        reply = match reply {
            Reply::Now(response) => return Ok(response),
            Reply::Later(job) => off_the_loop(&shared.pool, job)
                .await
                .unwrap_or_else(internal_reply),
            Reply::Async(work) => awaited(work).await.unwrap_or_else(internal_reply),
            Reply::Wait(wait) => return Err(wait),
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

/// Awaits `work` on this event loop; `Err` when it panicked. Done at its first look (in
/// memory), it is answered in place; otherwise it becomes a task of its own, before anything
/// else is awaited, so if the client leaves meanwhile the work still completes (a take must
/// not be cut in half, as on the blocking pool).
async fn awaited<T: Send + 'static>(mut work: Later<T>) -> Result<T, ()> {
    let first = std::future::poll_fn(|cx| {
        Poll::Ready(catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(cx))))
    })
    .await;
    match first {
        Err(_) => Err(()),
        Ok(Poll::Ready(done)) => Ok(done),
        Ok(Poll::Pending) => tokio::spawn(work).await.map_err(|_| ()),
    }
}

/// Calls `job` in place, or off the loop when it blocks.
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
/// answer: news it may not have (a callback guarded by another's
/// retrieval secret) wakes it, it looks, and it waits on in the same place, so whatever happens
/// meanwhile it answers at its own deadline, never early for want of a place.
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
            let refused = &shared.counters.quota_waiters;
            refused.fetch_add(1, Ordering::Relaxed);
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
        let landed = match run(pool, blocking, move || check()).await {
            Ok(look) => awaited(look).await.unwrap_or(true),
            Err(()) => true,
        };
        if landed {
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
    let reply = run(pool, blocking, answer)
        .await
        .unwrap_or_else(internal_reply);
    // An answer never parks again.
    let response = settle(shared, reply)
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
