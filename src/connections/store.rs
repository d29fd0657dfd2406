//! What every connection store does: keep one record per connection and replace it only if
//! nobody replaced it since it was read (a compare-and-swap on a revision). Every step of the
//! refresh protocol (begin an intent, beat, commit, give up) is such a swap, decided in one
//! place (`transitions.rs`) on the record as read; so each backend has one atomic operation
//! to get right, and the protocol is written, and tested, once.

use super::model::Connection;
use crate::http::Later;
use crate::store::StoreResult;
use std::sync::Arc;
use std::time::SystemTime;

/// A record as read, with the revision a swap must name.
#[derive(Clone, Debug)]
pub struct Versioned {
    /// Starts at 1 and grows by one with every swap; 0 names "no record".
    pub revision: u64,
    pub conn: Connection,
}

/// What a read saw, and when: the store's clock (Redis's own, shared by every replica; the
/// local clock for a store only one process uses), which intents and heartbeats are judged by.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub now: SystemTime,
    pub found: Option<Versioned>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Swap {
    /// Written; the record's new revision.
    Done(u64),
    /// The record's revision is no longer the one named (or, for a new record, one exists).
    Moved,
    /// A new record and the store is at its cap.
    Full,
}

pub trait ConnectionStore: Send + Sync {
    /// Reads a connection (with `last_used_at`) and the store's clock.
    fn load(&self, id: &str) -> StoreResult<Snapshot>;

    /// `load`, as a future owning what it needs, for the server to await on its event loop: a
    /// store that blocks (Redis) reads without blocking; the default reads at once.
    fn load_async(self: Arc<Self>, id: String) -> Later<StoreResult<Snapshot>> {
        Box::pin(std::future::ready(self.load(&id)))
    }

    /// `load`, but only once what it shows would survive a failover of the store: `None` when
    /// it might not (a replicated Redis where fewer replicas than required have every write
    /// before this read). An attempt reads its intent this way before presenting a refresh
    /// token. A store that does not fail over reads as `load` does.
    fn load_settled(&self, id: &str) -> StoreResult<Option<Snapshot>> {
        self.load(id).map(Some)
    }

    /// Writes `conn` (under `conn.id`) only if its stored revision is still `expected`; 0
    /// creates it if there is none. `provider` and `subject` never change after creation.
    fn swap(&self, expected: u64, conn: &Connection) -> StoreResult<Swap>;

    /// Deletes a connection (everything kept under it) if its revision is still `expected`.
    fn remove(&self, id: &str, expected: u64) -> StoreResult<bool>;

    /// Records that a token was served at `at`: not revision-checked (the later time wins), so
    /// serving does not contend with refreshes. Never creates a record.
    fn touch(&self, id: &str, at: SystemTime) -> StoreResult<()>;

    /// `touch`, as `load_async` is `load`.
    fn touch_async(self: Arc<Self>, id: String, at: SystemTime) -> Later<StoreResult<()>> {
        Box::pin(std::future::ready(self.touch(&id, at)))
    }

    /// The connections of `provider` (and `subject`), or all.
    fn list(&self, provider: Option<&str>, subject: Option<&str>) -> StoreResult<Vec<Connection>>;

    /// Up to `limit` ids whose `Connection::attention_at` has come by `now`.
    fn due(&self, now: SystemTime, limit: usize) -> StoreResult<Vec<String>>;

    /// Tells the other replicas that `id`'s record changed (their waiters look again).
    fn announce(&self, _id: &str) {}

    /// Whether calls may block on I/O (run them off the event loop).
    fn blocks(&self) -> bool {
        false
    }
}
