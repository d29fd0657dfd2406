//! Whether the Redis that keeps connections keeps them across its own restart: a connection
//! lives for months, and a refresh intent must survive a Redis crash or the protocol's one
//! guarantee goes with it.
//!
//! What the connections need of Redis:
//! - **AOF with `appendfsync always`**: every write (an intent, a commit) is on disk before
//!   Redis answers it, so an intent a replica acted on survives a Redis crash.
//! - With `appendfsync everysec` (Redis's default when AOF is on), a crash can lose the last
//!   second of writes: an intent lost after its refresh token was presented lets another
//!   replica present the same token again (for a one-time rotator: an `invalid_grant` and a
//!   revoked grant), and a lost commit loses the rotated grant the provider issued. Rare, and
//!   only on a Redis crash (not a clean restart), but exactly the case this store exists for.
//! - RDB snapshots alone lose everything since the last snapshot; no persistence loses every
//!   connection on a restart.
//! - A replicated Redis (Sentinel, Cluster) acknowledges before its replicas have the write: a
//!   failover can lose an intent the same way. So an attempt presents its refresh token only
//!   once its intent is on `OAUTH_RELAY_REDIS_MIN_REPLICAS_ACKED` replicas (`WAIT`, see
//!   `connections::redis`); a later failover then keeps it.
//!
//! The same check serves the whole service: at start-up a replica warns when Redis would lose
//! pending sign-ins, queued events or connections in a restart (`lib.rs`).

use crate::kv::Kv;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persistence {
    /// AOF with `appendfsync always`: what the connections need.
    AofAlways,
    /// AOF with `everysec` (or `no`): a crash may lose the last writes (the policy named).
    AofRelaxed(String),
    /// RDB snapshots only (the `save` rule).
    SnapshotsOnly(String),
    /// Nothing is persisted.
    None,
    /// Redis would not say (`CONFIG` renamed or forbidden, as on managed services).
    Unknown(String),
}

impl Persistence {
    /// What to log at start-up, `None` when all is well.
    pub fn warning(&self) -> Option<String> {
        match self {
            Persistence::AofAlways => None,
            Persistence::AofRelaxed(policy) => Some(format!(
                "Redis fsyncs its append-only file {policy}: a Redis crash can lose its last writes (a refresh in progress among them: a one-time refresh token may then be presented twice, revoking the grant); set appendfsync always"
            )),
            Persistence::SnapshotsOnly(rule) => Some(format!(
                "Redis persists only snapshots (save {rule}): a Redis crash loses every change since the last one (pending sign-ins, queued events, connection refreshes); enable appendonly yes with appendfsync always"
            )),
            Persistence::None => Some(
                "Redis persists nothing: a Redis restart loses every pending sign-in, queued event and kept connection; enable appendonly yes with appendfsync always".into(),
            ),
            Persistence::Unknown(why) => Some(format!(
                "cannot tell whether Redis persists what it is given ({why}): make sure it runs with appendonly yes and appendfsync always"
            )),
        }
    }

    /// Worse first: what the least durable of several primaries (a cluster) allows.
    fn rank(&self) -> u8 {
        match self {
            Persistence::None => 0,
            Persistence::SnapshotsOnly(_) => 1,
            Persistence::Unknown(_) => 2,
            Persistence::AofRelaxed(_) => 3,
            Persistence::AofAlways => 4,
        }
    }

    fn of(p: &crate::kv::Persistence) -> Persistence {
        match (p.aof, p.fsync.as_deref(), p.rdb_schedule.as_deref()) {
            (Some(true), Some("always"), _) => Persistence::AofAlways,
            (Some(true), Some(policy), _) => Persistence::AofRelaxed(policy.to_string()),
            (Some(true), None, _) => Persistence::Unknown(format!(
                "{}: CONFIG is refused, so the append-only file's fsync policy is unknown",
                p.node
            )),
            (Some(false), _, Some(rule)) if !rule.trim().is_empty() => {
                Persistence::SnapshotsOnly(rule.to_string())
            }
            (Some(false), _, Some(_)) => Persistence::None,
            _ => Persistence::Unknown(format!("{}: CONFIG is refused", p.node)),
        }
    }
}

/// Asks every primary how it persists (`CONFIG GET appendonly appendfsync save`); the least
/// durable answer.
pub fn redis_persistence(kv: &Kv) -> Persistence {
    match kv.persistence_blocking() {
        Err(e) => Persistence::Unknown(e.to_string()),
        Ok(nodes) => nodes
            .iter()
            .map(Persistence::of)
            .min_by_key(Persistence::rank)
            .unwrap_or_else(|| Persistence::Unknown("no primary answered".into())),
    }
}
