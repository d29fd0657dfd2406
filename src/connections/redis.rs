//! Connections in Redis, shared by every replica, over the relay store's connection pool
//! (`store::redis::RedisStore`: epochs, checked idle connections, writes sent once).
//!
//! One connection is two keys with one hash tag, `<prefix>conn:{H}:state` (a hash: `v` the
//! revision, `attn` the attention time in ms or empty, `rec` the sealed record) and
//! `<prefix>conn:{H}:used` (last use, ms), where H is the keyed hash of the id: every script
//! names only these two keys, so on a Redis Cluster it runs on the one node that holds them.
//! Each step is one script: a swap compares `v` and writes the record; a removal deletes both.
//! Values are sealed with the keyring under the state key's name, and no key name holds an id,
//! subject or provider in the clear.
//!
//! Listing and `due` go through two index sets of H (`<prefix>conn:all`, and one per provider
//! and subject), which live in other slots and are updated in separate commands: added to
//! *before* a record is created, removed from *after* it is deleted. A crash between the two
//! steps can only leave a name in an index whose record is gone, never a record missing from
//! its index; readers skip such names (and check provider and subject inside the record), so
//! that staleness costs a wasted look-up, not a connection the keep-alive never sees. Such a
//! name is never removed by a reader: it cannot tell it from a creation in progress.

use super::codec;
use super::model::Connection;
use super::store::{ConnectionStore, Snapshot, Swap, Versioned};
use crate::store::redis::{RedisStore, NOW};
use crate::store::{Store, StoreResult};
use std::sync::Arc;
use std::time::SystemTime;

/// KEYS: state, used. Reads the record and Redis's clock.
const LOAD: &str = "
return {tostring(now), redis.call('HGET', KEYS[1], 'v') or '0', redis.call('HGET', KEYS[1], 'rec') or '', redis.call('GET', KEYS[2]) or ''}";

/// KEYS: state. ARGV: expected revision (0: none yet), attention ms (or empty), sealed record.
const SWAP: &str = "
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if v ~= tonumber(ARGV[1]) then return -1 end
redis.call('HSET', KEYS[1], 'v', v + 1, 'attn', ARGV[2], 'rec', ARGV[3])
return v + 1";

/// KEYS: state, used. ARGV: expected revision.
const REMOVE: &str = "
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if v == 0 or v ~= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1";

/// KEYS: names. ARGV: this keyring's probe. Records the probe once; answers the recorded one.
const NAMES: &str = "
local cur = redis.call('GET', KEYS[1])
if cur then return cur end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]";

/// KEYS: state, used. ARGV: ms.
const TOUCH: &str = "
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[2], ARGV[1]) end
return 1";

struct Scripts {
    load: redis::Script,
    swap: redis::Script,
    remove: redis::Script,
    touch: redis::Script,
    names: redis::Script,
}

pub struct RedisConnections {
    store: Arc<RedisStore>,
    max: usize,
    scripts: Scripts,
}

impl RedisConnections {
    /// Uses `store`'s pool, keyring and prefix. Holds at most `max` connections (counted by
    /// the all-index, which may hold a few stale names: the cap errs towards refusing).
    /// Connects lazily, like the store.
    pub fn new(store: Arc<RedisStore>, max: usize) -> RedisConnections {
        RedisConnections {
            store,
            max,
            scripts: Scripts {
                load: redis::Script::new(&format!("{NOW}{LOAD}")),
                swap: redis::Script::new(SWAP),
                remove: redis::Script::new(REMOVE),
                touch: redis::Script::new(TOUCH),
                names: redis::Script::new(NAMES),
            },
        }
    }

    /// Checks that the connections in Redis were written under this keyring's names key
    /// (recording it on first use): records are found by keyed names, so a changed names key
    /// would silently lose every connection. Call at start-up.
    pub fn check_key_names(&self) -> Result<(), String> {
        let key = format!("{}conn:names", self.store.prefix);
        let probe = self.store.keys.name("conn-names", "v1");
        let found: String = self
            .store
            .with(|c| self.scripts.names.key(&key).arg(&probe).invoke(c))
            .map_err(|e| e.0)?;
        if found != probe {
            return Err("the connections in Redis were written under another names key: list the old one as names:<key> in OAUTH_RELAY_ENCRYPTION_KEY".into());
        }
        Ok(())
    }

    fn name(&self, id: &str) -> String {
        self.store.keys.name("conn", id)
    }

    fn state_key(&self, name: &str) -> String {
        format!("{}conn:{{{name}}}:state", self.store.prefix)
    }

    fn used_key(&self, name: &str) -> String {
        format!("{}conn:{{{name}}}:used", self.store.prefix)
    }

    fn all_key(&self) -> String {
        format!("{}conn:all", self.store.prefix)
    }

    fn subject_key(&self, provider: &str, subject: &str) -> String {
        let name = self
            .store
            .keys
            .name("conn-subject", &format!("{provider}\0{subject}"));
        format!("{}conn:subject:{name}", self.store.prefix)
    }

    fn context(&self, name: &str) -> String {
        format!("{}/rec", self.state_key(name))
    }

    /// The record under keyed name `name`, and Redis's clock.
    fn load_name(&self, name: &str) -> StoreResult<(SystemTime, Option<Versioned>)> {
        let (state, used) = (self.state_key(name), self.used_key(name));
        // Reads only: asking twice changes nothing.
        let reply: Vec<Vec<u8>> = self
            .store
            .read(|c| self.scripts.load.key(&state).key(&used).invoke(c))?;
        let text = |i: usize| {
            String::from_utf8_lossy(reply.get(i).map(Vec::as_slice).unwrap_or_default()).to_string()
        };
        let now = codec::from_ms(text(0).parse().unwrap_or(0));
        let revision: u64 = text(1).parse().unwrap_or(0);
        if revision == 0 {
            return Ok((now, None));
        }
        let sealed = reply.get(2).map(Vec::as_slice).unwrap_or_default();
        let mut conn = codec::open(&self.store.keys, &self.context(name), sealed)?;
        conn.last_used_at = text(3).parse().ok().map(codec::from_ms);
        Ok((now, Some(Versioned { revision, conn })))
    }

    /// The names in an index set, a page at a time.
    fn members(&self, set: &str) -> StoreResult<Vec<String>> {
        self.store.read(|c| {
            let mut names = Vec::new();
            let mut cursor = 0u64;
            loop {
                let (next, page): (u64, Vec<String>) = redis::cmd("SSCAN")
                    .arg(set)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(500)
                    .query(c)?;
                names.extend(page);
                if next == 0 {
                    return Ok(names);
                }
                cursor = next;
            }
        })
    }
}

impl ConnectionStore for RedisConnections {
    fn load(&self, id: &str) -> StoreResult<Snapshot> {
        let (now, found) = self.load_name(&self.name(id))?;
        Ok(Snapshot { now, found })
    }

    fn swap(&self, expected: u64, conn: &Connection) -> StoreResult<Swap> {
        let name = self.name(&conn.id);
        let state = self.state_key(&name);
        if expected == 0 {
            // The index first (see the module doc), and the cap.
            let all = self.all_key();
            let count: u64 = self
                .store
                .read(|c| redis::cmd("SCARD").arg(&all).query(c))?;
            if count >= self.max as u64 {
                return Ok(Swap::Full);
            }
            let subject = self.subject_key(&conn.provider, &conn.subject);
            self.store.with(|c| {
                redis::pipe()
                    .cmd("SADD")
                    .arg(&all)
                    .arg(&name)
                    .ignore()
                    .cmd("SADD")
                    .arg(&subject)
                    .arg(&name)
                    .ignore()
                    .query::<()>(c)
            })?;
        }
        let attention = conn
            .attention_at()
            .map(|t| codec::ms(t).to_string())
            .unwrap_or_default();
        let sealed = codec::seal(&self.store.keys, &self.context(&name), conn);
        let revision: i64 = self.store.with(|c| {
            self.scripts
                .swap
                .key(&state)
                .arg(expected)
                .arg(attention)
                .arg(sealed)
                .invoke(c)
        })?;
        Ok(if revision < 0 {
            Swap::Moved
        } else {
            Swap::Done(revision as u64)
        })
    }

    fn remove(&self, id: &str, expected: u64) -> StoreResult<bool> {
        let name = self.name(id);
        let (_, found) = self.load_name(&name)?;
        let Some(found) = found else {
            return Ok(false);
        };
        let removed: i64 = self.store.with(|c| {
            self.scripts
                .remove
                .key(self.state_key(&name))
                .key(self.used_key(&name))
                .arg(expected)
                .invoke(c)
        })?;
        if removed == 1 {
            // The indexes after (see the module doc). If this fails, a stale name stays.
            let subject = self.subject_key(&found.conn.provider, &found.conn.subject);
            let _ = self.store.with(|c| {
                redis::pipe()
                    .cmd("SREM")
                    .arg(self.all_key())
                    .arg(&name)
                    .ignore()
                    .cmd("SREM")
                    .arg(&subject)
                    .arg(&name)
                    .ignore()
                    .query::<()>(c)
            });
        }
        Ok(removed == 1)
    }

    fn touch(&self, id: &str, at: SystemTime) -> StoreResult<()> {
        let name = self.name(id);
        self.store.with(|c| {
            self.scripts
                .touch
                .key(self.state_key(&name))
                .key(self.used_key(&name))
                .arg(codec::ms(at))
                .invoke::<i64>(c)
        })?;
        Ok(())
    }

    fn list(&self, provider: Option<&str>, subject: Option<&str>) -> StoreResult<Vec<Connection>> {
        let set = match (provider, subject) {
            (Some(p), Some(s)) => self.subject_key(p, s),
            _ => self.all_key(),
        };
        let mut out = Vec::new();
        for name in self.members(&set)? {
            let (_, found) = self.load_name(&name)?;
            if let Some(v) = found {
                if provider.is_none_or(|p| v.conn.provider == p)
                    && subject.is_none_or(|s| v.conn.subject == s)
                {
                    out.push(v.conn);
                }
            }
        }
        Ok(out)
    }

    fn due(&self, now: SystemTime, limit: usize) -> StoreResult<Vec<String>> {
        let now = codec::ms(now);
        let names = self.members(&self.all_key())?;
        let mut out = Vec::new();
        for page in names.chunks(200) {
            // The clear attention times first, a page per round trip; records only for those due.
            let times: Vec<Option<String>> = self.store.read(|c| {
                let mut pipe = redis::pipe();
                for name in page {
                    pipe.cmd("HGET").arg(self.state_key(name)).arg("attn");
                }
                pipe.query(c)
            })?;
            for (name, time) in page.iter().zip(times) {
                if out.len() >= limit {
                    return Ok(out);
                }
                let due = time
                    .and_then(|t| t.parse::<u64>().ok())
                    .is_some_and(|t| t <= now);
                if due {
                    if let (_, Some(v)) = self.load_name(name)? {
                        out.push(v.conn.id);
                    }
                }
            }
        }
        Ok(out)
    }

    fn announce(&self, id: &str) {
        self.store.publish(&self.store.waiter_key("conn", id));
    }

    fn blocks(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_connections_keys_share_a_hash_tag_and_name_no_id() {
        let config = crate::config::RedisConfig {
            url: crate::secret::Secret::new("redis://127.0.0.1:1/0"),
            password: None,
            ca_pem: None,
            keys: Arc::new(
                crate::keyring::Keyring::parse("k:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
                    .unwrap(),
            ),
            prefix: "oauth-relay:".into(),
            timeout: std::time::Duration::from_secs(1),
        };
        let store =
            Arc::new(RedisStore::new(&config, std::time::Duration::from_secs(1), 1).unwrap());
        let c = RedisConnections::new(store, 1);
        let name = c.name("conn_visible-id");
        let tag = |key: &str| {
            let open = key.find('{').unwrap();
            let close = open + key[open..].find('}').unwrap();
            key[open + 1..close].to_string()
        };
        let (state, used) = (c.state_key(&name), c.used_key(&name));
        assert_eq!(tag(&state), name);
        assert_eq!(tag(&used), name);
        assert_ne!(tag(&c.state_key(&c.name("conn_other"))), name);
        assert!(state.starts_with("oauth-relay:conn:{") && state.ends_with("}:state"));
        for key in [state, used, c.subject_key("github", "visible-subject")] {
            assert!(!key.contains("visible"), "{key}");
        }
    }
}
