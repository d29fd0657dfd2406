//! Connections in a redb file, the single-replica default: each swap is one write transaction
//! (read the revision, compare, write), committed with an fsync before it returns, so an intent
//! is on disk before its refresh token is presented, and a crash leaves the last committed
//! transaction. redb locks the file: a second process opening it is refused.
//!
//! Records are sealed with the keyring (`codec`), under keyed names like the Redis store's, so
//! the file holds no token, credential hash, subject or e-mail in the clear. Freed pages may
//! keep old sealed records until reused; they are as unreadable as the live ones.

use super::codec;
use super::model::Connection;
use super::store::{ConnectionStore, Snapshot, Swap, Versioned};
use crate::keyring::Keyring;
use crate::store::{StoreResult, Unavailable};
use redb::{
    Database, Durability, MultimapTableDefinition, ReadableDatabase, ReadableMultimapTable,
    ReadableTable, ReadableTableMetadata, TableDefinition,
};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

/// Keyed name -> revision (8 bytes, big-endian), attention time (8, ms; `u64::MAX`: none),
/// sealed record.
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("connections");
/// Keyed name -> last use (ms): written without a revision, and without an fsync of its own.
const USED: TableDefinition<&str, u64> = TableDefinition::new("connections_used");
/// Keyed name of (provider, subject) -> keyed names of its connections.
const BY_SUBJECT: MultimapTableDefinition<&str, &str> =
    MultimapTableDefinition::new("connections_by_subject");
/// `names` -> a keyed name of a fixed value: detects a changed names key (see `open`).
const META: TableDefinition<&str, &str> = TableDefinition::new("connections_meta");

const HEADER: usize = 16;

/// The most memory redb may keep of the file in its page cache (its own default is 1 GiB, which
/// would grow with the file until it is all cached): enough for the records of thousands of
/// connections; the rest is read from the file (the kernel's page cache) when a token is asked
/// for. The memory budget counts it (`budget.rs`).
pub const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// A record as read: keyed name, raw value, last use.
type Row = (String, Vec<u8>, Option<u64>);

fn revision_of(raw: &[u8]) -> u64 {
    raw.get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

pub struct EmbeddedConnections {
    db: Database,
    keys: Arc<Keyring>,
    max: usize,
}

fn err(e: impl Into<redb::Error>) -> Unavailable {
    Unavailable(format!("connections file: {}", e.into()))
}

impl EmbeddedConnections {
    /// Opens (or creates) the file at `path`, holding at most `max` connections. Fails if
    /// another process has it open, or if it was written under another names key: records
    /// are found by keyed names, so a changed names key would silently lose every connection
    /// (pin `names:` in `OAUTH_RELAY_ENCRYPTION_KEY` before rotating keys).
    pub fn open(
        path: &Path,
        keys: Arc<Keyring>,
        max: usize,
    ) -> Result<EmbeddedConnections, String> {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| format!("cannot open the connections file {}: {e}", path.display()))?;
        let store = EmbeddedConnections { db, keys, max };
        let probe = store.keys.name("conn-names", "v1");
        let txn = store.db.begin_write().map_err(|e| e.to_string())?;
        {
            let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
            let found = meta
                .get("names")
                .map_err(|e| e.to_string())?
                .map(|g| g.value().to_string());
            match found {
                Some(found) if found != probe => {
                    return Err(format!(
                        "the connections file {} was written under another names key: list the old one as names:<key> in OAUTH_RELAY_ENCRYPTION_KEY",
                        path.display()
                    ))
                }
                Some(_) => {}
                None => {
                    meta.insert("names", probe.as_str())
                        .map_err(|e| e.to_string())?;
                }
            }
            txn.open_table(RECORDS).map_err(|e| e.to_string())?;
            txn.open_table(USED).map_err(|e| e.to_string())?;
            txn.open_multimap_table(BY_SUBJECT)
                .map_err(|e| e.to_string())?;
        }
        txn.commit().map_err(|e| e.to_string())?;
        Ok(store)
    }

    fn name(&self, id: &str) -> String {
        self.keys.name("conn", id)
    }

    fn subject_name(&self, provider: &str, subject: &str) -> String {
        self.keys
            .name("conn-subject", &format!("{provider}\0{subject}"))
    }

    fn context(name: &str) -> String {
        format!("conn:{name}")
    }

    fn decode(&self, name: &str, raw: &[u8], used: Option<u64>) -> StoreResult<Versioned> {
        if raw.len() < HEADER {
            return Err(Unavailable(
                "connections file: a record is truncated".into(),
            ));
        }
        let revision = revision_of(raw);
        let mut conn = codec::open(&self.keys, &Self::context(name), &raw[HEADER..])?;
        conn.last_used_at = used.map(codec::from_ms);
        Ok(Versioned { revision, conn })
    }

    fn encode(&self, name: &str, revision: u64, conn: &Connection) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + 512);
        out.extend_from_slice(&revision.to_be_bytes());
        let attention = conn.attention_at().map_or(u64::MAX, codec::ms);
        out.extend_from_slice(&attention.to_be_bytes());
        out.extend(codec::seal(&self.keys, &Self::context(name), conn));
        out
    }

    /// Every record's name and raw value (for listing and `due`, which read them all: a
    /// single replica's connections are few enough).
    fn scan(&self) -> StoreResult<Vec<Row>> {
        let txn = self.db.begin_read().map_err(err)?;
        let records = txn.open_table(RECORDS).map_err(err)?;
        let used = txn.open_table(USED).map_err(err)?;
        let mut out = Vec::new();
        for item in records.iter().map_err(err)? {
            let (k, v) = item.map_err(err)?;
            let name = k.value().to_string();
            let last = used.get(name.as_str()).map_err(err)?.map(|g| g.value());
            out.push((name, v.value().to_vec(), last));
        }
        Ok(out)
    }
}

impl ConnectionStore for EmbeddedConnections {
    fn load(&self, id: &str) -> StoreResult<Snapshot> {
        let name = self.name(id);
        let txn = self.db.begin_read().map_err(err)?;
        let records = txn.open_table(RECORDS).map_err(err)?;
        let used = txn.open_table(USED).map_err(err)?;
        let raw = records
            .get(name.as_str())
            .map_err(err)?
            .map(|g| g.value().to_vec());
        let last = used.get(name.as_str()).map_err(err)?.map(|g| g.value());
        let found = match raw {
            Some(raw) => Some(self.decode(&name, &raw, last)?),
            None => None,
        };
        Ok(Snapshot {
            now: SystemTime::now(),
            found,
        })
    }

    fn swap(&self, expected: u64, conn: &Connection) -> StoreResult<Swap> {
        let name = self.name(&conn.id);
        let txn = self.db.begin_write().map_err(err)?;
        let outcome = {
            let mut records = txn.open_table(RECORDS).map_err(err)?;
            let current = records
                .get(name.as_str())
                .map_err(err)?
                .map(|g| revision_of(g.value()))
                .unwrap_or(0);
            if current != expected {
                Swap::Moved
            } else if current == 0 && records.len().map_err(err)? >= self.max as u64 {
                Swap::Full
            } else {
                let value = self.encode(&name, current + 1, conn);
                records
                    .insert(name.as_str(), value.as_slice())
                    .map_err(err)?;
                if current == 0 {
                    let mut by = txn.open_multimap_table(BY_SUBJECT).map_err(err)?;
                    by.insert(
                        self.subject_name(&conn.provider, &conn.subject).as_str(),
                        name.as_str(),
                    )
                    .map_err(err)?;
                }
                Swap::Done(current + 1)
            }
        };
        match outcome {
            Swap::Done(_) => txn.commit().map_err(err)?,
            _ => txn.abort().map_err(err)?,
        }
        Ok(outcome)
    }

    fn remove(&self, id: &str, expected: u64) -> StoreResult<bool> {
        let name = self.name(id);
        let txn = self.db.begin_write().map_err(err)?;
        let removed = {
            let mut records = txn.open_table(RECORDS).map_err(err)?;
            let raw = records
                .get(name.as_str())
                .map_err(err)?
                .map(|g| g.value().to_vec());
            match raw {
                Some(raw) if revision_of(&raw) == expected => {
                    let conn = self.decode(&name, &raw, None)?.conn;
                    records.remove(name.as_str()).map_err(err)?;
                    txn.open_table(USED)
                        .map_err(err)?
                        .remove(name.as_str())
                        .map_err(err)?;
                    txn.open_multimap_table(BY_SUBJECT)
                        .map_err(err)?
                        .remove(
                            self.subject_name(&conn.provider, &conn.subject).as_str(),
                            name.as_str(),
                        )
                        .map_err(err)?;
                    true
                }
                _ => false,
            }
        };
        if removed {
            txn.commit().map_err(err)?;
        } else {
            txn.abort().map_err(err)?;
        }
        Ok(removed)
    }

    fn touch(&self, id: &str, at: SystemTime) -> StoreResult<()> {
        let name = self.name(id);
        let mut txn = self.db.begin_write().map_err(err)?;
        // A lost last-use time costs nothing: no fsync of its own (the next durable commit
        // carries it).
        txn.set_durability(Durability::None).map_err(err)?;
        {
            let exists = txn
                .open_table(RECORDS)
                .map_err(err)?
                .get(name.as_str())
                .map_err(err)?
                .is_some();
            let mut used = txn.open_table(USED).map_err(err)?;
            let old = used.get(name.as_str()).map_err(err)?.map(|g| g.value());
            let at = codec::ms(at);
            if exists && old.is_none_or(|old| old < at) {
                used.insert(name.as_str(), at).map_err(err)?;
            }
        }
        txn.commit().map_err(err)
    }

    fn list(&self, provider: Option<&str>, subject: Option<&str>) -> StoreResult<Vec<Connection>> {
        let rows = match (provider, subject) {
            (Some(p), Some(s)) => {
                let txn = self.db.begin_read().map_err(err)?;
                let by = txn.open_multimap_table(BY_SUBJECT).map_err(err)?;
                let records = txn.open_table(RECORDS).map_err(err)?;
                let used = txn.open_table(USED).map_err(err)?;
                let mut rows = Vec::new();
                for name in by.get(self.subject_name(p, s).as_str()).map_err(err)? {
                    let name = name.map_err(err)?.value().to_string();
                    if let Some(raw) = records.get(name.as_str()).map_err(err)? {
                        let last = used.get(name.as_str()).map_err(err)?.map(|g| g.value());
                        rows.push((name.clone(), raw.value().to_vec(), last));
                    }
                }
                rows
            }
            _ => self.scan()?,
        };
        let mut out = Vec::new();
        for (name, raw, last) in rows {
            let conn = self.decode(&name, &raw, last)?.conn;
            if provider.is_none_or(|p| conn.provider == p)
                && subject.is_none_or(|s| conn.subject == s)
            {
                out.push(conn);
            }
        }
        Ok(out)
    }

    fn due(&self, now: SystemTime, limit: usize) -> StoreResult<Vec<String>> {
        let now = codec::ms(now);
        let mut out = Vec::new();
        for (name, raw, _) in self.scan()? {
            if out.len() >= limit {
                break;
            }
            let attention = raw
                .get(8..16)
                .and_then(|b| b.try_into().ok())
                .map_or(u64::MAX, u64::from_be_bytes);
            if attention <= now {
                out.push(self.decode(&name, &raw, None)?.conn.id);
            }
        }
        Ok(out)
    }
}
