//! Accepting: each listener's loop takes connections, admits them under the cap and its shares
//! (`conns.rs`) or refuses them with a short answer, and hands each admitted one to an event
//! loop; a run of accept failures backs off, and a long one ends the server.

use super::conns::{Refusal, Slot};
use super::{raw, Failure, Shared};
use crate::client_ip::share_key;
use crate::http::Listener;
use crate::logging;
use serde_json::json;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

/// Accepts on one listener until a stop is asked for (Ok) or accepting is lost for good (Err);
/// the listener is closed when it returns.
pub(super) async fn accept_loop(
    listener: TcpListener,
    which: Listener,
    shared: &Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Failure> {
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
                shared
                    .counters
                    .accept_errors
                    .fetch_add(1, Ordering::Relaxed);
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
                if refusal == Refusal::Full {
                    let refused = &shared.counters.connections_refused;
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                refuse_connection(stream, raw::refusal(refusal));
                return;
            }
        }
    }
    shared
        .counters
        .open_connections
        .fetch_add(1, Ordering::AcqRel);
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
pub(super) struct Accepted {
    pub(super) stream: std::net::TcpStream,
    pub(super) peer: SocketAddr,
    pub(super) which: Listener,
    pub(super) id: u64,
    pub(super) slot: Arc<Slot>,
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

    fn give_up(&self, error: &str) -> Failure {
        let secs = self.started.map(|t| t.elapsed().as_secs()).unwrap_or(0);
        logging::error(
            "accept_gave_up",
            json!({ "error": error, "failures": self.failures, "outage_secs": secs,
                    "action": "exiting non-zero so the process is restarted" }),
        );
        Failure::AcceptGaveUp {
            secs,
            error: error.to_string(),
        }
    }
}
