//! Signed completion events (issue 9): when a relay callback lands and when a broker sign-in
//! succeeds or fails, an event goes to the operator's endpoint (`OAUTH_RELAY_WEBHOOK_URL`),
//! signed the Standard Webhooks way and delivered at least once from an outbox.
//!
//! An event names its flow by `handle`: the SHA-256 (hex) of the relay state or of the broker
//! retrieval handle, never the value itself. Either one fetches the code or the tokens (the
//! state always; the handle with `OAUTH_RELAY_BROKER_HANDLE_ONLY`), and the event travels to,
//! and is logged by, another system. The receiver started the flow, so it knows the value and
//! hashes it to match; both are 128-bit random values (or should be), so the hash reveals
//! nothing. Events never carry a code, token, e-mail or provider error text. Kept connections'
//! events (`connection.*`) name the connection by its id instead.

pub mod config;
pub mod delivery;
pub mod memory_outbox;
pub mod outbox;
pub mod redis_outbox;
pub mod signing;

use crate::logging;
use outbox::{Class, Outbox};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub const RELAY_CALLBACK_RECEIVED: &str = "relay.callback_received";
pub const BROKER_SIGN_IN_SUCCEEDED: &str = "broker.sign_in_succeeded";
pub const BROKER_SIGN_IN_FAILED: &str = "broker.sign_in_failed";
pub const CONNECTION_CREATED: &str = "connection.created";
pub const CONNECTION_NEEDS_REAUTH: &str = "connection.needs_reauth";
pub const CONNECTION_REVIVED: &str = "connection.revived";
pub const CONNECTION_DELETED: &str = "connection.deleted";

/// What /metrics reports, for this replica.
#[derive(Default)]
pub struct Counters {
    pub queued: AtomicU64,
    pub delivered: AtomicU64,
    pub retried: AtomicU64,
    pub gave_up: AtomicU64,
    /// Dropped at the queue bound, by class (see `outbox.rs`).
    pub dropped_registered: AtomicU64,
    pub dropped_unregistered: AtomicU64,
    pub enqueue_failed: AtomicU64,
    /// Events in the outbox at the delivery threads' last look; -1 when it did not answer.
    pub queue: AtomicI64,
}

pub struct Events {
    outbox: Arc<dyn Outbox>,
    pub counters: Arc<Counters>,
    /// The Unix second of the last `webhook_dropped` line.
    last_drop_log: AtomicU64,
}

impl Events {
    /// Starts the delivery threads on `outbox`.
    pub fn start(config: config::WebhookConfig, outbox: Arc<dyn Outbox>) -> Events {
        let counters = Arc::new(Counters::default());
        delivery::start(config, outbox.clone(), counters.clone());
        Events {
            outbox,
            counters,
            last_drop_log: AtomicU64::new(0),
        }
    }

    /// Events waiting in the outbox, without waiting on a shared one (then as of the delivery
    /// threads' last look); `None` when that look failed.
    pub fn queue_length(&self) -> Option<u64> {
        match self.outbox.count_now() {
            Some(n) => Some(n as u64),
            None => u64::try_from(self.counters.queue.load(Ordering::Relaxed)).ok(),
        }
    }

    /// At exit: gives the in-process outbox up to `grace` to empty (the delivery threads keep
    /// working meanwhile), and logs what is left, which is lost. A shared outbox keeps its
    /// events for the other replicas, so there is nothing to wait for.
    pub fn drain_before_exit(&self, grace: std::time::Duration) {
        let deadline = std::time::Instant::now() + grace;
        loop {
            let Some(left) = self.outbox.count_now() else {
                return;
            };
            if left == 0 {
                return;
            }
            if std::time::Instant::now() >= deadline {
                logging::warn(
                    "webhook_undelivered_at_exit",
                    json!({ "events": left, "effect": "lost: the outbox is in memory (events outlive a replica only with OAUTH_RELAY_REDIS_URL)" }),
                );
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// A relay callback was stored (the first for its state). `error` is the provider's `error`
    /// parameter; without it and without a code the callback still counts, as `no_code`.
    /// `registered`: the state was registered beforehand; anyone can make the other events, so
    /// they never push out the rest (`outbox.rs`).
    pub fn callback_received(
        &self,
        state: &str,
        has_code: bool,
        error: Option<&str>,
        registered: bool,
    ) {
        let (status, reason) = match (error, has_code) {
            (Some(e), _) => ("failed", Some(reason_from_provider(e))),
            (None, true) => ("succeeded", None),
            (None, false) => ("failed", Some("no_code".to_string())),
        };
        let class = if registered {
            Class::Registered
        } else {
            Class::Unregistered
        };
        self.emit(
            RELAY_CALLBACK_RECEIVED,
            json!({ "handle": handle_hash(state), "status": status, "reason": reason }),
            class,
        );
    }

    /// A second, different callback for a relay state: the state is in conflict and neither callback
    /// is handed out (one may be a stranger's). A receiver told `succeeded` for the first learns
    /// here that the code will not come. Anyone can put their own unregistered state in conflict,
    /// so these events are of the class strangers can make (`Class::Unregistered`): under a flood
    /// one may be dropped, and then the retrieval's own 409 is what tells the owner; no code is
    /// handed out either way.
    pub fn callback_conflict(&self, state: &str) {
        self.emit(
            RELAY_CALLBACK_RECEIVED,
            json!({ "handle": handle_hash(state), "status": "conflict", "reason": "conflict" }),
            Class::Unregistered,
        );
    }

    /// A broker sign-in finished: `failure` is its reason code when it failed.
    pub fn sign_in_finished(&self, handle: &str, provider: &str, failure: Option<&str>) {
        let (kind, status) = match failure {
            None => (BROKER_SIGN_IN_SUCCEEDED, "succeeded"),
            Some(_) => (BROKER_SIGN_IN_FAILED, "failed"),
        };
        self.emit(
            kind,
            json!({ "handle": handle_hash(handle), "provider": provider, "status": status, "reason": failure }),
            Class::Registered,
        );
    }

    /// A kept connection was made, found dead (it needs a new sign-in), revived or deleted:
    /// `data` names it by its id (which fetches nothing without its credential), its provider,
    /// `status` and `reason`; never a token, subject or e-mail address. Started by holders of the
    /// broker token or a connection's credential, so of the class strangers cannot make.
    pub fn connection_changed(&self, kind: &str, data: Value) {
        self.emit(kind, data, Class::Registered);
    }

    /// Puts an event of `class` in the outbox. Never waits on the receiver; a failure to
    /// enqueue (Redis out of reach) is logged and counted, and never fails the request that
    /// produced it.
    pub fn emit(&self, kind: &str, data: Value, class: Class) {
        let id = format!("evt_{}", crate::random::id(16));
        let now = SystemTime::now();
        let body = json!({
            "type": kind,
            "timestamp": humantime::format_rfc3339_millis(now).to_string(),
            "data": data,
        })
        .to_string();
        let created_ms = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        match self.outbox.push(&id, &body, created_ms, class) {
            Ok(pushed) => {
                let c = &self.counters;
                if pushed.queued {
                    c.queued.fetch_add(1, Ordering::Relaxed);
                }
                let (registered, unregistered) =
                    (pushed.dropped_registered, pushed.dropped_unregistered);
                c.dropped_registered
                    .fetch_add(registered as u64, Ordering::Relaxed);
                c.dropped_unregistered
                    .fetch_add(unregistered as u64, Ordering::Relaxed);
                // At most one line a second: a receiver down under traffic would otherwise
                // double the log volume. The counters have every drop.
                let second = created_ms / 1000;
                if registered + unregistered > 0
                    && self.last_drop_log.swap(second, Ordering::Relaxed) != second
                {
                    logging::warn(
                        "webhook_dropped",
                        json!({ "dropped_registered": registered, "dropped_unregistered": unregistered,
                                "dropped_registered_total": c.dropped_registered.load(Ordering::Relaxed),
                                "dropped_unregistered_total": c.dropped_unregistered.load(Ordering::Relaxed),
                                "reason": "the outbox is full (OAUTH_RELAY_WEBHOOK_MAX_QUEUE): events of unregistered relay states make room first, then the oldest" }),
                    );
                }
            }
            Err(e) => {
                self.counters.enqueue_failed.fetch_add(1, Ordering::Relaxed);
                logging::error(
                    "webhook_enqueue_failed",
                    json!({ "id": id, "type": kind, "error": e.0 }),
                );
            }
        }
    }
}

/// SHA-256 of a state or handle, in hex: what the receiver computes from its own value.
pub fn handle_hash(value: &str) -> String {
    crate::secret::hex(ring::digest::digest(&ring::digest::SHA256, value.as_bytes()).as_ref())
}

/// A provider's `error` value as a reason when it looks like an OAuth error code (RFC 6749
/// 4.1.2.1: printable ASCII without `"` and `\`; we also keep it short); anything else
/// becomes `provider_error`. `/callback` is open to anyone, so this is stranger-supplied text.
fn reason_from_provider(error: &str) -> String {
    let looks_like_a_code = !error.is_empty()
        && error.len() <= 64
        && error
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if looks_like_a_code {
        error.to_string()
    } else {
        "provider_error".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_errors_become_reasons_only_when_they_look_like_codes() {
        assert_eq!(reason_from_provider("access_denied"), "access_denied");
        assert_eq!(reason_from_provider("<script>"), "provider_error");
        assert_eq!(reason_from_provider(&"a".repeat(65)), "provider_error");
        assert_eq!(reason_from_provider(""), "provider_error");
    }

    #[test]
    fn handles_are_sha256_hex() {
        assert_eq!(
            handle_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
