//! The outbox: events waiting for delivery, behind one trait so one replica keeps them in
//! process and several share them in Redis. An event leaves it when delivered or given up;
//! a failed attempt puts it back with a later due time.
//!
//! It is bounded, and which event makes room at the bound depends on who can cause it
//! ([`Class`]): anyone can send `/callback` for a state nobody registered, so while the
//! receiver is down a flood of those must not push out the events of sign-ins and registered
//! states. Those unregistered events have no share of their own: they use the room the others
//! leave, and are the first to go. At the bound an unregistered event pushes out the oldest
//! unregistered one, or is dropped itself when there is none; any other event pushes out the
//! oldest unregistered one, else the oldest of its own class.

use std::time::Duration;

/// Who can cause an event, which decides what it may push out of a full outbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Broker sign-ins and callbacks of registered relay states: started by a holder of the
    /// broker token, the API token or a registration.
    Registered,
    /// Callbacks of relay states nobody registered: anyone can make them.
    Unregistered,
}

/// What a push did: whether the event went in, and the events of each class dropped to make
/// room (or, for an unregistered event refused at the bound, that event itself).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    pub queued: bool,
    pub dropped_registered: usize,
    pub dropped_unregistered: usize,
}

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
    /// Adds an event of `class`, due now. Never waits on the receiver: in memory a map insert,
    /// in Redis one script. At the cap events are dropped as the module says.
    fn push(
        &self,
        id: &str,
        body: &str,
        created_ms: u64,
        class: Class,
    ) -> Result<Pushed, OutboxError>;

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
