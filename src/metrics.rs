//! `/metrics` in the Prometheus text format: a few gauges and counters an operator alerts on.

use crate::app::App;
use crate::error::Error;
use crate::http::Response;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Times the listener had to be restarted after its accept thread died.
pub static ACCEPT_RESTARTS: AtomicU64 = AtomicU64::new(0);
/// Requests answered with a 5xx status (a panic in a handler included).
pub static SERVER_ERRORS: AtomicU64 = AtomicU64::new(0);
/// Requests answered, by any status.
pub static REQUESTS: AtomicU64 = AtomicU64::new(0);

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
        "oauth_relay_accept_restarts_total",
        "counter",
        "Listener restarts after tiny_http's accept thread died.",
        ACCEPT_RESTARTS.load(Ordering::Relaxed),
    );
    Ok(Response::text(200, "text/plain; version=0.0.4", out))
}
