//! Connections in this process's memory: for tests, and for a replica told it may lose every
//! connection when it restarts. One mutex over a map; nothing is sealed (nothing is at rest).

use super::model::Connection;
use super::store::{ConnectionStore, Snapshot, Swap, Versioned};
use crate::store::StoreResult;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

pub struct MemoryConnections {
    map: Mutex<HashMap<String, Versioned>>,
    max: usize,
}

impl MemoryConnections {
    /// Holds at most `max` connections (creation past it is refused: `Swap::Full`).
    pub fn new(max: usize) -> MemoryConnections {
        MemoryConnections {
            map: Mutex::new(HashMap::new()),
            max,
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Versioned>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ConnectionStore for MemoryConnections {
    fn load(&self, id: &str) -> StoreResult<Snapshot> {
        Ok(Snapshot {
            now: SystemTime::now(),
            found: self.map().get(id).cloned(),
        })
    }

    fn swap(&self, expected: u64, conn: &Connection) -> StoreResult<Swap> {
        let mut map = self.map();
        let current = map.get(&conn.id).map_or(0, |v| v.revision);
        if current != expected {
            return Ok(Swap::Moved);
        }
        if current == 0 && map.len() >= self.max {
            return Ok(Swap::Full);
        }
        let used = map.get(&conn.id).and_then(|v| v.conn.last_used_at);
        let mut conn = conn.clone();
        conn.last_used_at = used;
        map.insert(
            conn.id.clone(),
            Versioned {
                revision: current + 1,
                conn,
            },
        );
        Ok(Swap::Done(current + 1))
    }

    fn remove(&self, id: &str, expected: u64) -> StoreResult<bool> {
        let mut map = self.map();
        if map.get(id).map(|v| v.revision) != Some(expected) {
            return Ok(false);
        }
        map.remove(id);
        Ok(true)
    }

    fn touch(&self, id: &str, at: SystemTime) -> StoreResult<()> {
        if let Some(v) = self.map().get_mut(id) {
            if v.conn.last_used_at.is_none_or(|t| t < at) {
                v.conn.last_used_at = Some(at);
            }
        }
        Ok(())
    }

    fn list(&self, provider: Option<&str>, subject: Option<&str>) -> StoreResult<Vec<Connection>> {
        Ok(self
            .map()
            .values()
            .filter(|v| provider.is_none_or(|p| v.conn.provider == p))
            .filter(|v| subject.is_none_or(|s| v.conn.subject == s))
            .map(|v| v.conn.clone())
            .collect())
    }

    fn due(&self, now: SystemTime, limit: usize) -> StoreResult<Vec<String>> {
        Ok(self
            .map()
            .values()
            .filter(|v| v.conn.attention_at().is_some_and(|t| t <= now))
            .take(limit)
            .map(|v| v.conn.id.clone())
            .collect())
    }
}
