//! `/metrics` in the Prometheus text format: a few gauges and counters an operator alerts on.

use crate::app::App;
use crate::error::Error;
use crate::http::Response;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Failed `accept` calls (descriptors exhausted, say); each is retried after a back-off.
pub static ACCEPT_ERRORS: AtomicU64 = AtomicU64::new(0);
/// Connections open now.
pub static OPEN_CONNECTIONS: AtomicU64 = AtomicU64::new(0);
/// Idle connections closed to make room for new ones at the connection cap.
pub static CONNECTIONS_SHED: AtomicU64 = AtomicU64::new(0);
/// Connections answered 503 at the cap because none was idle.
pub static CONNECTIONS_REFUSED: AtomicU64 = AtomicU64::new(0);
/// Times a client reached its share of connections (`OAUTH_RELAY_MAX_CONNECTIONS_PER_CLIENT`):
/// its newcomer answered 429, or its own longest-idle connection closed to make room.
pub static QUOTA_CONNECTIONS: AtomicU64 = AtomicU64::new(0);
/// Long-polls answered 429 because their client held its share of waiters
/// (`OAUTH_RELAY_MAX_WAITERS_PER_CLIENT`).
pub static QUOTA_WAITERS: AtomicU64 = AtomicU64::new(0);
/// Requests answered with a 5xx status (a panic in a handler included).
pub static SERVER_ERRORS: AtomicU64 = AtomicU64::new(0);
/// Requests answered, by any status.
pub static REQUESTS: AtomicU64 = AtomicU64::new(0);
/// Callbacks and self-registrations refused (429) past their client's share of pending entries.
pub static PENDING_SHARE_REFUSED: AtomicU64 = AtomicU64::new(0);

pub fn render(app: &App) -> Result<Response, Error> {
    // (Result kept so the router treats every handler alike.)
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        );
    };
    // Never waits on a shared store: an outage is exactly when these must still be readable.
    let active = app.store.active_callbacks_now();
    metric(
        "oauth_relay_store_up",
        "gauge",
        "1 when the state store answered its last count, 0 otherwise.",
        active.is_some() as u64,
    );
    if let Some(active) = active {
        metric(
            "oauth_relay_active_callbacks",
            "gauge",
            "Callbacks held, retrieved or not, until they expire.",
            active as u64,
        );
    }
    metric(
        "oauth_relay_waiting_clients",
        "gauge",
        "Long-polls parked waiting for a callback.",
        app.waiters.len() as u64,
    );
    metric(
        "oauth_relay_requests_total",
        "counter",
        "Requests answered.",
        REQUESTS.load(Ordering::Relaxed),
    );
    metric(
        "oauth_relay_server_errors_total",
        "counter",
        "Requests answered with a 5xx status.",
        SERVER_ERRORS.load(Ordering::Relaxed),
    );
    metric(
        "oauth_relay_accept_errors_total",
        "counter",
        "Failed accepts (descriptors exhausted, say), each retried after a back-off.",
        ACCEPT_ERRORS.load(Ordering::Relaxed),
    );
    metric(
        "oauth_relay_open_connections",
        "gauge",
        "Connections open now.",
        OPEN_CONNECTIONS.load(Ordering::Relaxed),
    );
    metric(
        "oauth_relay_connections_shed_total",
        "counter",
        "Idle connections closed to make room at the connection cap.",
        CONNECTIONS_SHED.load(Ordering::Relaxed),
    );
    metric(
        "oauth_relay_connections_refused_total",
        "counter",
        "Connections answered 503 at the cap because none was idle.",
        CONNECTIONS_REFUSED.load(Ordering::Relaxed),
    );
    metric(
        "oauth_relay_log_lines_dropped_total",
        "counter",
        "Log lines dropped because stderr did not take them as fast as they came (access lines first).",
        crate::logging::dropped_lines(),
    );
    if let Some(events) = &app.events {
        let c = &events.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (name, help, value) in [
            (
                "queued",
                "Completion events put in the outbox by this replica.",
                load(&c.queued),
            ),
            (
                "delivered",
                "Completion events the endpoint acknowledged (2xx).",
                load(&c.delivered),
            ),
            (
                "retried",
                "Delivery attempts that failed and were rescheduled.",
                load(&c.retried),
            ),
            (
                "gave_up",
                "Completion events given up after the attempt or age bound.",
                load(&c.gave_up),
            ),
            (
                "enqueue_failed",
                "Completion events lost because the outbox did not answer.",
                load(&c.enqueue_failed),
            ),
        ] {
            metric(
                &format!("oauth_relay_webhook_events_{name}_total"),
                "counter",
                help,
                value,
            );
        }
        // Never waits on a shared outbox.
        if let Some(n) = events.queue_length() {
            metric(
                "oauth_relay_webhook_queue_length",
                "gauge",
                "Completion events waiting in the outbox (shared by all replicas on Redis).",
                n,
            );
        }
        // Labelled, so written here (the closure above holds `out` until its last use).
        let name = "oauth_relay_webhook_events_dropped_total";
        let help = "Completion events dropped at OAUTH_RELAY_WEBHOOK_MAX_QUEUE, by class: \
            unregistered (callbacks of relay states nobody registered, which anyone can make: \
            dropped first) and registered (broker sign-ins, registered states: the oldest, only \
            when no unregistered one is left).";
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} counter\n");
        for (class, counter) in [
            ("registered", &c.dropped_registered),
            ("unregistered", &c.dropped_unregistered),
        ] {
            let _ = writeln!(out, "{name}{{class=\"{class}\"}} {}", load(counter));
        }
    }
    // One labelled family: its HELP and TYPE once, then a line per share.
    let _ = write!(
        out,
        "# HELP oauth_relay_quota_refused_total Times a client was held to its share of a cap others need: 429, or for connections its own longest-idle one closed instead.\n# TYPE oauth_relay_quota_refused_total counter\n"
    );
    for (share, counter) in [
        ("connections", &QUOTA_CONNECTIONS),
        ("waiters", &QUOTA_WAITERS),
        ("pending", &PENDING_SHARE_REFUSED),
    ] {
        let _ = writeln!(
            out,
            "oauth_relay_quota_refused_total{{share=\"{share}\"}} {}",
            counter.load(Ordering::Relaxed)
        );
    }
    Ok(Response::text(200, "text/plain; version=0.0.4", out))
}
