//! The outbox shared by replicas on Redis, so an event outlives the replica that produced it.
//!
//! `events:due` is a sorted set of event ids by the time (Redis's clock, ms) they may next be
//! attempted; `events:age` the same ids by creation, for the cap; `events:unregistered` those of
//! unregistered events by creation, which the cap drops first (see outbox.rs; an event pushed by
//! a version before classes is in no such set, so it counts as registered);
//! `event:{id}` a hash with the body (sealed with the keyring like everything else at rest,
//! though it holds only hashes and reason codes), the attempt count and the current claim.
//! Claiming moves an event's due time a lease ahead and records a random token: a replica that
//! dies mid-attempt leaves the event to be claimed again by another when the lease runs out;
//! one whose lease lapsed cannot remove or reschedule what another has claimed since.
//! Each step is one Lua script, so two replicas never claim one event at once.
//!
//! The scripts name `event:{id}` keys they build themselves: fine on one Redis (what the store
//! supports), not on a Redis Cluster.

use super::outbox::{Claimed, Class, Outbox, OutboxError, Pushed};
use crate::keyring::Keyring;
use std::cell::Cell;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

thread_local! {
    /// The push count a delivery thread saw when it last looked for events: a push after that
    /// (while its claim found nothing) must not leave it waiting.
    static SEEN: Cell<u64> = const { Cell::new(0) };
}

const NOW: &str = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) ";

/// KEYS: due, age, this event's hash, unregistered. ARGV: id, sealed body, created ms, cap,
/// hash prefix, hash lifetime ms, `u` for an unregistered event. Returns queued (1 or 0),
/// registered and unregistered events dropped.
const PUSH: &str = "
local dropped_r, dropped_u = 0, 0
while redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) do
  local old = redis.call('ZPOPMIN', KEYS[4])
  if #old > 0 then
    -- (Unless another version's replica removed it already.)
    if redis.call('ZREM', KEYS[2], old[1]) == 1 then dropped_u = dropped_u + 1 end
  elseif ARGV[7] == 'u' then
    return {0, dropped_r, dropped_u + 1}
  else
    old = redis.call('ZPOPMIN', KEYS[2])
    dropped_r = dropped_r + 1
  end
  redis.call('ZREM', KEYS[1], old[1])
  redis.call('DEL', ARGV[5] .. old[1])
end
redis.call('HSET', KEYS[3], 'body', ARGV[2], 'attempts', 0, 'created', ARGV[3], 'token', '')
redis.call('PEXPIRE', KEYS[3], ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[1], now, ARGV[1])
if ARGV[7] == 'u' then redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1]) end
return {1, dropped_r, dropped_u}";

/// KEYS: due, age, unregistered. ARGV: hash prefix, lease ms, token.
const CLAIM: &str = "
for i = 1, 16 do
  local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1)
  if #ids == 0 then return false end
  local id = ids[1]
  local h = ARGV[1] .. id
  local body = redis.call('HGET', h, 'body')
  if body then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)
    redis.call('HSET', h, 'token', ARGV[3])
    return {id, body, redis.call('HGET', h, 'attempts'), redis.call('HGET', h, 'created')}
  end
  -- Its hash expired (older than any event is kept): forget the id.
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
end
return false";

/// KEYS: due, age, hash, unregistered. ARGV: id, token.
const REMOVE: &str = "
if redis.call('HGET', KEYS[3], 'token') ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
return 1";

/// KEYS: due, hash. ARGV: id, token, delay ms.
const RESCHEDULE: &str = "
if redis.call('HGET', KEYS[2], 'token') ~= ARGV[2] then return 0 end
redis.call('HINCRBY', KEYS[2], 'attempts', 1)
redis.call('HSET', KEYS[2], 'token', '')
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
return 1";

pub struct RedisOutbox {
    client: redis::Client,
    idle: Mutex<Vec<redis::Connection>>,
    timeout: Duration,
    prefix: String,
    keys: Arc<Keyring>,
    max: usize,
    lease: Duration,
    /// How long an event's hash is kept at most (a safety net; events are given up sooner).
    keep: Duration,
    push: redis::Script,
    claim: redis::Script,
    remove: redis::Script,
    reschedule: redis::Script,
    /// Wakes this replica's delivery threads when it pushes.
    pushed: (Mutex<u64>, Condvar),
}

fn err(e: redis::RedisError) -> OutboxError {
    OutboxError(format!("redis: {e}"))
}

impl RedisOutbox {
    pub fn new(
        o: &crate::config::RedisConfig,
        max: usize,
        lease: Duration,
        max_age: Duration,
    ) -> Result<RedisOutbox, String> {
        let script = |body: &str| redis::Script::new(&format!("{NOW}{body}"));
        Ok(RedisOutbox {
            client: crate::store::redis::client(o)?,
            idle: Mutex::new(Vec::new()),
            timeout: o.timeout,
            prefix: o.prefix.clone(),
            keys: o.keys.clone(),
            max: max.max(1),
            lease,
            keep: max_age * 2 + lease,
            push: script(PUSH),
            claim: script(CLAIM),
            remove: script(REMOVE),
            reschedule: script(RESCHEDULE),
            pushed: (Mutex::new(0), Condvar::new()),
        })
    }

    /// Runs `f` on a pooled connection, or a new one. A pooled connection found dead (Redis
    /// restarted, or closed it while idle: an I/O error that is not a timeout) empties the pool,
    /// whose other connections are as old, and `f` runs once more on a new connection. That is
    /// safe for every step here: a push under the same id rewrites the same event, a claim
    /// whose reply was lost comes back when its lease ends, and removing or rescheduling checks
    /// the claim's token.
    fn with<T>(
        &self,
        f: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, OutboxError> {
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        if let Some(mut con) = pooled {
            match f(&mut con) {
                Ok(v) => {
                    self.give_back(con);
                    return Ok(v);
                }
                Err(e) if e.is_io_error() && !e.is_timeout() => {
                    self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
                }
                Err(e) => return Err(err(e)),
            }
        }
        let mut con = self
            .client
            .get_connection_with_timeout(self.timeout)
            .map_err(err)?;
        con.set_read_timeout(Some(self.timeout)).map_err(err)?;
        con.set_write_timeout(Some(self.timeout)).map_err(err)?;
        let v = f(&mut con).map_err(err)?;
        self.give_back(con);
        Ok(v)
    }

    fn give_back(&self, con: redis::Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < 8 {
            idle.push(con);
        }
    }

    fn name(&self, n: &str) -> String {
        format!("{}{n}", self.prefix)
    }

    fn hash_prefix(&self) -> String {
        self.name("event:")
    }

    fn hash(&self, id: &str) -> String {
        format!("{}{id}", self.hash_prefix())
    }
}

impl Outbox for RedisOutbox {
    fn push(
        &self,
        id: &str,
        body: &str,
        created_ms: u64,
        class: Class,
    ) -> Result<Pushed, OutboxError> {
        let hash = self.hash(id);
        let sealed = self.keys.seal(hash.as_bytes(), body.as_bytes());
        let (queued, dropped_registered, dropped_unregistered): (u8, usize, usize) =
            self.with(|c| {
                self.push
                    .key(self.name("events:due"))
                    .key(self.name("events:age"))
                    .key(&hash)
                    .key(self.name("events:unregistered"))
                    .arg(id)
                    .arg(&sealed)
                    .arg(created_ms)
                    .arg(self.max)
                    .arg(self.hash_prefix())
                    .arg(self.keep.as_millis() as u64)
                    .arg(if class == Class::Unregistered {
                        "u"
                    } else {
                        "r"
                    })
                    .invoke(c)
            })?;
        if queued == 1 {
            let (count, wake) = &self.pushed;
            *count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
            wake.notify_all();
        }
        Ok(Pushed {
            queued: queued == 1,
            dropped_registered,
            dropped_unregistered,
        })
    }

    fn claim(&self) -> Result<Option<Claimed>, OutboxError> {
        SEEN.set(*self.pushed.0.lock().unwrap_or_else(|e| e.into_inner()));
        let mut token = [0u8; 16];
        getrandom::fill(&mut token).expect("the system random source failed");
        let token = crate::secret::hex(&token);
        let reply: Option<(String, Vec<u8>, u32, u64)> = self.with(|c| {
            self.claim
                .key(self.name("events:due"))
                .key(self.name("events:age"))
                .key(self.name("events:unregistered"))
                .arg(self.hash_prefix())
                .arg(self.lease.as_millis() as u64)
                .arg(&token)
                .invoke(c)
        })?;
        let Some((id, sealed, attempts, created_ms)) = reply else {
            return Ok(None);
        };
        let body = self
            .keys
            .open(self.hash(&id).as_bytes(), &sealed)
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                OutboxError(
                    "redis: an event did not decrypt (wrong OAUTH_RELAY_ENCRYPTION_KEY?)".into(),
                )
            })?;
        Ok(Some(Claimed {
            id,
            body,
            created_ms,
            attempts,
            token,
        }))
    }

    fn remove(&self, claim: &Claimed) -> Result<(), OutboxError> {
        self.with(|c| {
            self.remove
                .key(self.name("events:due"))
                .key(self.name("events:age"))
                .key(self.hash(&claim.id))
                .key(self.name("events:unregistered"))
                .arg(&claim.id)
                .arg(&claim.token)
                .invoke::<i64>(c)
        })?;
        Ok(())
    }

    fn reschedule(&self, claim: &Claimed, delay: Duration) -> Result<(), OutboxError> {
        self.with(|c| {
            self.reschedule
                .key(self.name("events:due"))
                .key(self.hash(&claim.id))
                .arg(&claim.id)
                .arg(&claim.token)
                .arg(delay.as_millis() as u64)
                .invoke::<i64>(c)
        })?;
        Ok(())
    }

    fn count(&self) -> Result<usize, OutboxError> {
        self.with(|c| redis::cmd("ZCARD").arg(self.name("events:age")).query(c))
    }

    fn wait(&self, at_most: Duration) {
        let (count, wake) = &self.pushed;
        let pushes = count.lock().unwrap_or_else(|e| e.into_inner());
        let before = SEEN.get();
        let _ = wake.wait_timeout_while(pushes, at_most, |n| *n == before);
    }
}
