//! Connections in Redis, shared by every replica, over the relay store's Redis layer
//! (`store::redis::RedisStore::kv`: one server, Sentinel or Cluster; writes sent once, reads
//! asked again when a reply is lost).
//!
//! One connection is two keys with one hash tag, `<prefix>conn:{H}:state` (a hash: `v` the
//! revision, `attn` the attention time in ms or empty, `rec` the sealed record) and
//! `<prefix>conn:{H}:used` (last use, ms), where H is the keyed hash of the id: every script
//! names only these two keys, so on a Redis Cluster it runs on the one node that holds them,
//! and connections spread over every primary. These names are the ones the first version
//! wrote: kept connections need no migration. Each step is one script: a swap compares `v` and
//! writes the record; a removal deletes both. Values are sealed with the keyring under the
//! state key's name, and no key name holds an id, subject or provider in the clear.
//!
//! Listing and `due` go through two index sets of H (`<prefix>conn:all`, and one per provider
//! and subject), which live in other slots and are updated in separate commands: added to
//! *before* a record is created, removed from *after* it is deleted. A crash between the two
//! steps can only leave a name in an index whose record is gone, never a record missing from
//! its index; readers skip such names (and check provider and subject inside the record), so
//! that staleness costs a wasted look-up, not a connection the keep-alive never sees. Such a
//! name is never removed by a reader: it cannot tell it from a creation in progress.
//!
//! A refresh intent is acted on only once it would survive a failover: before presenting a
//! refresh token, the attempt reads its intent with `load_settled`, a harmless write to the
//! record followed by WAIT, which vouches for every write before it (replication is in order).
//! With fewer replicas than `OAUTH_RELAY_REDIS_MIN_REPLICAS_ACKED` the token is not presented
//! (the attempt records `not_sent`): otherwise a failover could bring back the record without
//! the intent, and another replica present the same one-time token again.

use super::codec;
use super::model::Connection;
use super::store::{ConnectionStore, Snapshot, Swap, Versioned};
use crate::http::Later;
use crate::kv::{Call, Script};
use crate::store::redis::RedisStore;
use crate::store::{Store, StoreResult, Unavailable};
use std::sync::Arc;
use std::time::SystemTime;

/// Why `RedisConnections::check_key_names` did not vouch for the names key.
#[derive(Debug)]
pub enum NamesCheck {
    /// The connections were written under another names key: every one would be lost.
    AnotherKey,
    /// Redis could not be asked (in its words): checked again at the next start-up.
    Unchecked(String),
}

impl std::fmt::Display for NamesCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NamesCheck::AnotherKey => f.write_str("the connections in Redis were written under another names key: list the old one as names:<key> in OAUTH_RELAY_ENCRYPTION_KEY"),
            NamesCheck::Unchecked(words) => f.write_str(words),
        }
    }
}

/// KEYS: state, used. Reads the record and Redis's clock.
const LOAD: &str = "
return {tostring(now), redis.call('HGET', KEYS[1], 'v') or '0', redis.call('HGET', KEYS[1], 'rec') or '', redis.call('GET', KEYS[2]) or ''}";

/// KEYS: state, used. LOAD, after a write that changes nothing a reader looks at, so that a
/// WAIT after it covers everything written before (an intent, say).
const LOAD_SETTLED: &str = "
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'settled', tostring(now)) end
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
    load: Script,
    load_settled: Script,
    swap: Script,
    remove: Script,
    touch: Script,
    names: Script,
}

pub struct RedisConnections {
    store: Arc<RedisStore>,
    max: usize,
    scripts: Scripts,
}

fn unavailable(e: crate::kv::KvError) -> Unavailable {
    Unavailable(e.to_string())
}

impl RedisConnections {
    /// Uses `store`'s Redis layer, keyring, prefix and durability. Holds at most `max`
    /// connections (counted by the all-index, which may hold a few stale names: the cap errs
    /// towards refusing). Connects lazily, like the store.
    pub fn new(store: Arc<RedisStore>, max: usize) -> RedisConnections {
        RedisConnections {
            store,
            max,
            scripts: Scripts {
                // Reads only.
                load: Script::with_now(LOAD).idempotent(),
                // Its one write changes nothing but a time nobody reads: harmless twice.
                load_settled: Script::with_now(LOAD_SETTLED).idempotent(),
                swap: Script::new(SWAP),
                remove: Script::new(REMOVE),
                // The later time wins: running it twice changes nothing.
                touch: Script::new(TOUCH).idempotent(),
                // Records once, then only reads.
                names: Script::new(NAMES).idempotent(),
            },
        }
    }

    fn run<T: redis::FromRedisValue>(&self, call: Call) -> StoreResult<T> {
        self.store.kv().run_blocking(call).map_err(unavailable)
    }

    /// Checks that the connections in Redis were written under this keyring's names key
    /// (recording it on first use): records are found by keyed names, so a changed names key
    /// would silently lose every connection. Call at start-up.
    pub fn check_key_names(&self) -> Result<(), NamesCheck> {
        let key = format!("{}conn:names", self.store.prefix);
        let probe = self.store.keys.name("conn-names", "v1");
        let found: String = self
            .run(Call::script(&self.scripts.names).key(&key).arg(&probe))
            .map_err(|e| NamesCheck::Unchecked(e.0))?;
        if found != probe {
            return Err(NamesCheck::AnotherKey);
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
        let reply: Vec<Vec<u8>> = self.run(self.load_call(name))?;
        self.read_reply(name, reply)
    }

    /// The script that reads the record under keyed name `name` and Redis's clock.
    fn load_call(&self, name: &str) -> Call {
        Call::script(&self.scripts.load)
            .key(self.state_key(name))
            .key(self.used_key(name))
    }

    /// The script that records a use at `at` of the connection under keyed name `name`.
    fn touch_call(&self, name: &str, at: SystemTime) -> Call {
        Call::script(&self.scripts.touch)
            .key(self.state_key(name))
            .key(self.used_key(name))
            .arg(codec::ms(at))
    }

    fn read_reply(
        &self,
        name: &str,
        reply: Vec<Vec<u8>>,
    ) -> StoreResult<(SystemTime, Option<Versioned>)> {
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

    /// The names in an index set, a page at a time (SSCAN is a read: asked again if a reply
    /// is lost).
    fn members(&self, set: &str) -> StoreResult<Vec<String>> {
        let mut names = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, page): (u64, Vec<String>) = self.run(
                Call::command("SSCAN")
                    .key(set)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(500)
                    .idempotent(),
            )?;
            names.extend(page);
            if next == 0 {
                return Ok(names);
            }
            cursor = next;
        }
    }
}

impl ConnectionStore for RedisConnections {
    fn load(&self, id: &str) -> StoreResult<Snapshot> {
        let (now, found) = self.load_name(&self.name(id))?;
        Ok(Snapshot { now, found })
    }

    fn load_async(self: Arc<Self>, id: String) -> Later<StoreResult<Snapshot>> {
        Box::pin(async move {
            let name = self.name(&id);
            let call = self.load_call(&name);
            let reply: Vec<Vec<u8>> = self.store.kv().run(call).await.map_err(unavailable)?;
            let (now, found) = self.read_reply(&name, reply)?;
            Ok(Snapshot { now, found })
        })
    }

    fn load_settled(&self, id: &str) -> StoreResult<Option<Snapshot>> {
        let durability = self.store.durability();
        if durability.replicas == 0 {
            return self.load(id).map(Some);
        }
        let name = self.name(id);
        let call = Call::script(&self.scripts.load_settled)
            .key(self.state_key(&name))
            .key(self.used_key(&name));
        let done = self
            .store
            .kv()
            .run_durable_blocking::<Vec<Vec<u8>>>(call, durability.replicas, durability.wait)
            .map_err(unavailable)?;
        if done.replicas < durability.replicas {
            crate::logging::warn(
                "connection_intent_not_replicated",
                serde_json::json!({ "connection": crate::secret::short_hash(id),
                        "replicas": done.replicas, "needed": durability.replicas,
                        "effect": "the refresh token is not presented: a failover could undo the intent" }),
            );
            return Ok(None);
        }
        let (now, found) = self.read_reply(&name, done.value)?;
        Ok(Some(Snapshot { now, found }))
    }

    fn swap(&self, expected: u64, conn: &Connection) -> StoreResult<Swap> {
        let name = self.name(&conn.id);
        let state = self.state_key(&name);
        if expected == 0 {
            // The index first (see the module doc), and the cap. Two commands: the two sets
            // live in different slots. SADD twice changes nothing.
            let all = self.all_key();
            let count: u64 = self.run(Call::command("SCARD").key(&all).idempotent())?;
            if count >= self.max as u64 {
                return Ok(Swap::Full);
            }
            let subject = self.subject_key(&conn.provider, &conn.subject);
            for set in [&all, &subject] {
                self.run::<i64>(Call::command("SADD").key(set).arg(&name).idempotent())?;
            }
        }
        let attention = conn
            .attention_at()
            .map(|t| codec::ms(t).to_string())
            .unwrap_or_default();
        let sealed = codec::seal(&self.store.keys, &self.context(&name), conn);
        let revision: i64 = self.run(
            Call::script(&self.scripts.swap)
                .key(&state)
                .arg(expected)
                .arg(attention)
                .arg(sealed),
        )?;
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
        let removed: i64 = self.run(
            Call::script(&self.scripts.remove)
                .key(self.state_key(&name))
                .key(self.used_key(&name))
                .arg(expected),
        )?;
        if removed == 1 {
            // The indexes after (see the module doc). If this fails, a stale name stays.
            let subject = self.subject_key(&found.conn.provider, &found.conn.subject);
            for set in [self.all_key(), subject] {
                let _ = self.run::<i64>(Call::command("SREM").key(set).arg(&name).idempotent());
            }
        }
        Ok(removed == 1)
    }

    fn touch(&self, id: &str, at: SystemTime) -> StoreResult<()> {
        self.run::<i64>(self.touch_call(&self.name(id), at))?;
        Ok(())
    }

    fn touch_async(self: Arc<Self>, id: String, at: SystemTime) -> Later<StoreResult<()>> {
        Box::pin(async move {
            let call = self.touch_call(&self.name(&id), at);
            self.store
                .kv()
                .run::<i64>(call)
                .await
                .map_err(unavailable)?;
            Ok(())
        })
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
            // The clear attention times first, a page at once (each in its own slot, so one
            // call each, all in flight together); records only for those due.
            let calls = page
                .iter()
                .map(|name| {
                    Call::command("HGET")
                        .key(self.state_key(name))
                        .arg("attn")
                        .idempotent()
                })
                .collect();
            let times: Vec<Result<Option<String>, _>> = self.store.kv().run_all_blocking(calls);
            for (name, time) in page.iter().zip(times) {
                if out.len() >= limit {
                    return Ok(out);
                }
                let due = time
                    .map_err(unavailable)?
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
        let config = crate::config::RedisConfig::new(
            crate::kv::KvSettings::new(crate::kv::settings::Topology::Standalone {
                url: crate::secret::Secret::new("redis://127.0.0.1:1/0"),
            }),
            Arc::new(
                crate::keyring::Keyring::parse("k:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
                    .unwrap(),
            ),
        );
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
