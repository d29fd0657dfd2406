//! Delivery threads: claim a due event, sign it for this attempt, POST it with a timeout, and
//! remove it on a 2xx; otherwise put it back with an exponential, jittered delay, or give it
//! up past the attempt or age bound. They run beside the server, never on a request's path.

use super::config::WebhookConfig;
use super::outbox::{Claimed, Outbox};
use super::Counters;
use crate::logging;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Longest delay between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often an idle thread looks for events it was not woken for (another replica's, a
/// lapsed lease, a retry coming due).
const IDLE_LOOK: Duration = Duration::from_millis(250);
/// How often an unreachable outbox is logged.
const REPORT_EVERY: Duration = Duration::from_secs(5);

pub fn start(config: WebhookConfig, outbox: Arc<dyn Outbox>, counters: Arc<Counters>) {
    for n in 0..config.workers {
        let (config, outbox, counters) = (config.clone(), outbox.clone(), counters.clone());
        std::thread::Builder::new()
            .name(format!("webhook-{n}"))
            .spawn(move || run(&config, outbox.as_ref(), &counters))
            .expect("spawn a webhook delivery thread");
    }
}

fn run(config: &WebhookConfig, outbox: &dyn Outbox, counters: &Counters) {
    let agent = crate::outbound::agent(config.timeout);
    let mut last_report: Option<Instant> = None;
    loop {
        match outbox.claim() {
            Ok(Some(claim)) => attempt(config, outbox, counters, &agent, claim),
            Ok(None) => {
                if let Ok(n) = outbox.count() {
                    counters.queue.store(n as i64, Ordering::Relaxed);
                }
                outbox.wait(IDLE_LOOK);
            }
            Err(e) => {
                counters.queue.store(-1, Ordering::Relaxed);
                if last_report.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
                    logging::warn(
                        "webhook_outbox_unavailable",
                        json!({ "error": e.0, "effect": "events wait in the outbox until it answers" }),
                    );
                    last_report = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// One POST; `Err` says why it did not count as delivered.
fn send(config: &WebhookConfig, agent: &ureq::Agent, claim: &Claimed) -> Result<u16, String> {
    // Signed per attempt: receivers check the timestamp against their clock (replays), and a
    // retry an hour later must still pass. The id stays the same, so they can deduplicate.
    let timestamp = unix_now().as_secs();
    let signature = config.secret.sign(&claim.id, timestamp, &claim.body);
    let mut response = agent
        .post(&config.url)
        .header("Content-Type", "application/json")
        .header(
            "User-Agent",
            concat!("oauth-relay/", env!("CARGO_PKG_VERSION")),
        )
        .header("webhook-id", &claim.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .send(claim.body.as_bytes())
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    // Read (a little of) the answer so the connection can be reused.
    let _ = response
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_vec();
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(format!("HTTP {status}"))
    }
}

fn attempt(
    config: &WebhookConfig,
    outbox: &dyn Outbox,
    counters: &Counters,
    agent: &ureq::Agent,
    claim: Claimed,
) {
    let kind = serde_json::from_str::<serde_json::Value>(&claim.body)
        .ok()
        .and_then(|v| v["type"].as_str().map(String::from))
        .unwrap_or_default();
    let outcome = send(config, agent, &claim);
    let attempts = claim.attempts + 1;
    let age = unix_now().saturating_sub(Duration::from_millis(claim.created_ms));
    let settled = match outcome {
        Ok(status) => {
            counters.delivered.fetch_add(1, Ordering::Relaxed);
            if logging::enabled(logging::Level::Debug) {
                logging::event(
                    logging::Level::Debug,
                    "webhook_delivered",
                    json!({ "id": claim.id, "type": kind, "status": status, "attempts": attempts }),
                );
            }
            outbox.remove(&claim)
        }
        Err(error) if attempts >= config.max_attempts || age >= config.max_age => {
            counters.gave_up.fetch_add(1, Ordering::Relaxed);
            logging::error(
                "webhook_gave_up",
                json!({ "id": claim.id, "type": kind, "attempts": attempts,
                        "age_secs": age.as_secs(), "error": error }),
            );
            outbox.remove(&claim)
        }
        Err(error) => {
            counters.retried.fetch_add(1, Ordering::Relaxed);
            let delay = backoff(config.retry_base, attempts);
            logging::warn(
                "webhook_retry",
                json!({ "id": claim.id, "type": kind, "attempt": attempts, "error": error,
                        "next_in_ms": delay.as_millis() as u64 }),
            );
            outbox.reschedule(&claim, delay)
        }
    };
    // The outbox went away mid-attempt: the lease (Redis) brings the event back; it may be
    // delivered twice, which receivers deduplicate by webhook-id.
    if let Err(e) = settled {
        logging::warn(
            "webhook_outbox_unavailable",
            json!({ "error": e.0, "id": claim.id, "effect": "the event is attempted again when its lease ends" }),
        );
    }
}

/// `base * 2^(attempt-1)`, at most MAX_BACKOFF, then a random point in its upper half, so
/// replicas that failed together do not retry together.
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let full = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(MAX_BACKOFF);
    let mut r = [0u8; 4];
    getrandom::fill(&mut r).expect("the system random source failed");
    let fraction = u32::from_le_bytes(r) as f64 / u32::MAX as f64;
    full / 2 + full.mul_f64(0.5 * fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let base = Duration::from_secs(1);
        for attempt in 1..=6 {
            let full = base * (1 << (attempt - 1));
            let d = backoff(base, attempt);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
        assert!(backoff(base, 40) <= MAX_BACKOFF);
        assert!(backoff(base, 40) >= MAX_BACKOFF / 2);
    }
}
