//! The outbox: events waiting for delivery, behind one trait so one replica keeps them in
//! process and several share them in Redis. An event leaves it when delivered or given up;
//! a failed attempt puts it back with a later due time.

use std::time::Duration;

/// An event taken for one delivery attempt. `token` identifies this claim: acknowledging or
/// rescheduling with a claim that has since lapsed (Redis: the lease expired and another
/// replica took the event) changes nothing.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: String,
    pub body: String,
    /// Unix milliseconds when the event was produced.
    pub created_ms: u64,
    /// Attempts made before this one.
    pub attempts: u32,
    pub token: String,
}

/// The outbox could not answer (Redis out of reach).
#[derive(Debug)]
pub struct OutboxError(pub String);

pub trait Outbox: Send + Sync {
    /// Adds an event, due now. Never waits on the receiver: in memory a map insert, in Redis
    /// one script. Past the cap the oldest events are dropped; returns how many.
    fn push(&self, id: &str, body: &str, created_ms: u64) -> Result<usize, OutboxError>;

    /// The next due event, leased to the caller; `None` when nothing is due.
    fn claim(&self) -> Result<Option<Claimed>, OutboxError>;

    /// Removes the event (delivered, or given up).
    fn remove(&self, claim: &Claimed) -> Result<(), OutboxError>;

    /// Counts the failed attempt and makes the event due again after `delay`.
    fn reschedule(&self, claim: &Claimed, delay: Duration) -> Result<(), OutboxError>;

    /// Events held (due, leased or waiting for a retry).
    fn count(&self) -> Result<usize, OutboxError>;

    /// `count` when it costs no I/O (in memory), for /metrics; `None` for a shared outbox,
    /// whose count the delivery threads refresh instead.
    fn count_now(&self) -> Option<usize> {
        None
    }

    /// Blocks until an event may be due, or `at_most` passes (new events of this process wake
    /// it at once; other replicas' events and expired leases are found at the next look).
    fn wait(&self, at_most: Duration);
}
