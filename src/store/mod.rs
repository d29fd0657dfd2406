//! All state the service keeps, behind one trait, so the in-memory backend (one replica) and a
//! shared backend (several replicas) give the same guarantees: created once, taken once,
//! expiring by itself, bounded in count.

pub mod memory;

use crate::secret::Secret;
use std::time::{Duration, SystemTime};

/// What the provider sent to `/callback` for one state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Callback {
    pub state: String,
    pub code: Option<Secret>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

impl Callback {
    /// Identifies the callback's content without keeping it: a reload of the same redirect has
    /// the same fingerprint, a different code does not.
    pub fn fingerprint(&self) -> [u8; 32] {
        crate::secret::fingerprint(&[
            self.code.as_ref().map(|c| c.expose()),
            self.error.as_deref(),
            self.error_description.as_deref(),
        ])
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Put {
    /// First callback for this state: stored.
    Stored,
    /// The same callback again (a person reloading the page): nothing changes.
    Repeated,
    /// A different callback for a state that already has one: refused, the first one stays.
    Conflict,
    /// Registered-states mode and nobody registered this state (or its registration expired).
    NotRegistered,
    /// The pending-entry cap is reached.
    Full,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    Taken(Callback),
    AlreadyTaken,
    Missing,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Register {
    Registered { expires_at: SystemTime },
    Exists,
    Full,
}

/// The backend could not answer (a shared store unreachable). Never a reason to guess.
#[derive(Debug)]
pub struct Unavailable(pub String);

pub type StoreResult<T> = Result<T, Unavailable>;

pub trait Store: Send + Sync {
    /// Stores the first callback for `cb.state`. With `require_registered`, only a state
    /// registered beforehand is accepted.
    fn put_callback(&self, cb: Callback, require_registered: bool) -> StoreResult<Put>;

    /// Hands out the callback once; afterwards the state answers `AlreadyTaken` until it expires.
    fn take_callback(&self, state: &str) -> StoreResult<Take>;

    /// Whether a callback has landed for `state` (taken or not): used by long-polls to avoid
    /// missing a callback that landed while they were being parked.
    fn has_callback(&self, state: &str) -> StoreResult<bool>;

    /// Registers a state ahead of its callback, for at most `ttl`.
    fn register_state(&self, state: &str, ttl: Duration) -> StoreResult<Register>;

    /// Callbacks received and not yet expired, retrieved or not (the Python server's count).
    fn active_callbacks(&self) -> StoreResult<usize>;

    /// Drops what has expired. Backends that expire by themselves do nothing.
    fn sweep(&self) {}
}
