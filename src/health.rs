//! The operator's endpoints: `/health` (liveness), `/ready` (readiness) and `/metrics`
//! (Prometheus). None of them waits on a shared store except `/ready`, whose job it is.

use crate::app::App;
use crate::error::Error;
use crate::http::Response;
use crate::logging;
use serde_json::json;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// Liveness: answers 200 without waiting on the store. With a shared store out of reach the
/// status is `degraded` and the count `null`; `/ready` is what takes the replica out of service.
pub fn health(app: &App) -> Result<Response, Error> {
    let active = app.store.active_callbacks_now();
    Ok(Response::json(
        200,
        &json!({
            "status": if active.is_some() { "healthy" } else { "degraded" },
            "service": "oauth-callback-server",
            "timestamp": humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            "active_callbacks": active,
        }),
    ))
}

/// Readiness: 200 while the store answers, 503 otherwise.
pub fn ready(app: &App) -> Result<Response, Error> {
    match app.store.ping() {
        Ok(()) => Ok(Response::json(200, &json!({ "status": "ready" }))),
        Err(e) => {
            logging::from_anyone(logging::Level::Warn, "not_ready", json!({ "error": e.0 }));
            Ok(Response::json(
                503,
                &json!({ "status": "unavailable", "message": "State storage is unavailable" }),
            ))
        }
    }
}

/// `/metrics` in the Prometheus text format: a few gauges and counters an operator alerts on.
/// Reads the server's counters through the app, and never waits on a shared store.
pub fn metrics(app: &App) -> Result<Response, Error> {
    // (Result kept so the router treats every handler alike.)
    let server = &app.server_counters;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
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
        load(&server.requests),
    );
    metric(
        "oauth_relay_server_errors_total",
        "counter",
        "Requests answered with a 5xx status.",
        load(&server.server_errors),
    );
    metric(
        "oauth_relay_accept_errors_total",
        "counter",
        "Failed accepts (descriptors exhausted, say), each retried after a back-off.",
        load(&server.accept_errors),
    );
    metric(
        "oauth_relay_open_connections",
        "gauge",
        "Connections open now.",
        load(&server.open_connections),
    );
    metric(
        "oauth_relay_connections_shed_total",
        "counter",
        "Idle connections closed to make room at the connection cap.",
        load(&server.connections_shed),
    );
    metric(
        "oauth_relay_connections_refused_total",
        "counter",
        "Connections answered 503 at the cap because none was idle.",
        load(&server.connections_refused),
    );
    metric(
        "oauth_relay_log_lines_dropped_total",
        "counter",
        "Log lines dropped because stderr did not take them as fast as they came (access lines first).",
        crate::logging::dropped_lines(),
    );
    if let Some(events) = &app.events {
        let c = &events.counters;
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
        ("connections", &server.quota_connections),
        ("waiters", &server.quota_waiters),
        ("pending", &app.pending_share_refused),
    ] {
        let _ = writeln!(
            out,
            "oauth_relay_quota_refused_total{{share=\"{share}\"}} {}",
            load(counter)
        );
    }
    Ok(Response::text(200, "text/plain; version=0.0.4", out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_reads_the_servers_counters_and_the_relays_through_the_app() {
        let app = App::in_memory(crate::config::Config::default());
        app.server_counters.requests.store(7, Ordering::Relaxed);
        app.server_counters
            .quota_waiters
            .store(2, Ordering::Relaxed);
        app.pending_share_refused.store(3, Ordering::Relaxed);
        let text = metrics(&app).unwrap().body_text().to_string();
        for line in [
            "oauth_relay_requests_total 7",
            "oauth_relay_server_errors_total 0",
            "oauth_relay_quota_refused_total{share=\"waiters\"} 2",
            "oauth_relay_quota_refused_total{share=\"pending\"} 3",
            "oauth_relay_active_callbacks 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
        }
        // Another app (another server in the same process) counts on its own.
        let other = App::in_memory(crate::config::Config::default());
        let text = metrics(&other).unwrap().body_text().to_string();
        assert!(text.contains("oauth_relay_requests_total 0\n"), "{text}");
    }
}
