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
//! - A replicated Redis (Sentinel) acknowledges before its replicas have the write: a failover
//!   can lose an intent the same way (see the report: `WAIT` before presenting is future work).

use crate::store::redis::RedisStore;

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
                "Redis fsyncs its append-only file {policy}: a Redis crash can lose a refresh in progress (a one-time refresh token may then be presented twice, revoking the grant); set appendfsync always"
            )),
            Persistence::SnapshotsOnly(rule) => Some(format!(
                "Redis persists only snapshots (save {rule}): a Redis crash loses every connection change since the last one; enable appendonly yes with appendfsync always"
            )),
            Persistence::None => Some(
                "Redis persists nothing: a Redis restart loses every connection; enable appendonly yes with appendfsync always".into(),
            ),
            Persistence::Unknown(why) => Some(format!(
                "cannot tell whether Redis persists connections ({why}): make sure it runs with appendonly yes and appendfsync always"
            )),
        }
    }
}

/// Asks Redis how it persists (`CONFIG GET appendonly appendfsync save`).
pub fn redis_persistence(store: &RedisStore) -> Persistence {
    let reply: Result<Vec<String>, _> = store.read(|c| {
        redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendonly")
            .arg("appendfsync")
            .arg("save")
            .query(c)
    });
    let pairs = match reply {
        Ok(pairs) => pairs,
        Err(e) => return Persistence::Unknown(e.0),
    };
    let get = |name: &str| {
        pairs
            .chunks(2)
            .find(|p| p[0] == name)
            .and_then(|p| p.get(1))
            .cloned()
    };
    match (get("appendonly"), get("appendfsync"), get("save")) {
        (Some(aof), Some(fsync), _) if aof == "yes" => {
            if fsync == "always" {
                Persistence::AofAlways
            } else {
                Persistence::AofRelaxed(fsync)
            }
        }
        (Some(_), _, Some(save)) if !save.trim().is_empty() => Persistence::SnapshotsOnly(save),
        (Some(_), _, Some(_)) => Persistence::None,
        _ => Persistence::Unknown("CONFIG GET answered without the settings".into()),
    }
}
