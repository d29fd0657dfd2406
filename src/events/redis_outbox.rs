//! The outbox shared by replicas on Redis, so an event outlives the replica that produced it.
//!
//! Four keys, all with the hash tag `{<prefix>events}` so that every script declares every key
//! it touches and runs on one node of a Redis Cluster: `:due`, a sorted set of event ids by the
//! time (Redis's clock, ms) they may next be attempted; `:age`, the same ids by creation, for
//! the cap; `:unregistered`, those of unregistered events by creation, which the cap drops
//! first (see outbox.rs); and `:event`, one hash holding each event's body (`b:<id>`, sealed
//! with the keyring like everything else at rest, though it holds only hashes and reason
//! codes), its attempt count (`n:<id>`) and its current claim (`t:<id>`). One hash rather than
//! a key per event: a script may only touch keys it names, and the one that makes room at the
//! cap cannot know the evicted event's name before it runs. The outbox is bounded
//! (`OAUTH_RELAY_WEBHOOK_MAX_QUEUE`), so the hash is too.
//!
//! Claiming moves an event's due time a lease ahead and records a random token: a replica that
//! dies mid-attempt leaves the event to be claimed again by another when the lease runs out;
//! one whose lease lapsed cannot remove or reschedule what another has claimed since. Each step
//! is one Lua script, so two replicas never claim one event at once.
//!
//! Versions before Sentinel and Cluster were served kept events under untagged names
//! (`<prefix>events:due`, `<prefix>events:age`, `<prefix>events:unregistered` and a hash
//! `<prefix>event:<id>` per event). While any are left (a rolling upgrade: old replicas may
//! still be pushing), every replica moves them into these keys, at most every few seconds when
//! it finds nothing due: no queued event is lost to the upgrade (one moved while an old replica
//! was delivering it may be delivered twice, which at-least-once delivery allows).

use super::outbox::{Claimed, Class, Outbox, OutboxError, Pushed};
use crate::keyring::Keyring;
use crate::kv::scripts::tagged;
use crate::kv::{Call, Kv, KvError, Script};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

thread_local! {
    /// The push count a delivery thread saw when it last looked for events: a push after that
    /// (while its claim found nothing) must not leave it waiting.
    static SEEN: Cell<u64> = const { Cell::new(0) };
}

/// How often a replica with nothing due looks for events the untagged names still hold.
const LOOK_FOR_OLD_NAMES: Duration = Duration::from_secs(5);

/// KEYS: due, age, event, unregistered. ARGV: id, sealed body, created ms, cap, `u` for an
/// unregistered event. Returns queued (1 or 0), registered and unregistered events dropped.
const PUSH: &str = "
local function forget(id)
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[4], id)
  redis.call('HDEL', KEYS[3], 'b:' .. id, 'n:' .. id, 't:' .. id)
end
local dropped_r, dropped_u = 0, 0
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then forget(ARGV[1]) end
while redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) do
  local old = redis.call('ZRANGE', KEYS[4], 0, 0)
  if #old > 0 then
    dropped_u = dropped_u + 1
  elseif ARGV[5] == 'u' then
    return {0, dropped_r, dropped_u + 1}
  else
    old = redis.call('ZRANGE', KEYS[2], 0, 0)
    dropped_r = dropped_r + 1
  end
  forget(old[1])
end
redis.call('HSET', KEYS[3], 'b:' .. ARGV[1], ARGV[2], 'n:' .. ARGV[1], 0, 't:' .. ARGV[1], '')
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[1], now, ARGV[1])
if ARGV[5] == 'u' then redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1]) end
return {1, dropped_r, dropped_u}";

/// KEYS: due, age, unregistered, event. ARGV: lease ms, token.
const CLAIM: &str = "
for i = 1, 16 do
  local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1)
  if #ids == 0 then return false end
  local id = ids[1]
  local body = redis.call('HGET', KEYS[4], 'b:' .. id)
  if body then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), id)
    redis.call('HSET', KEYS[4], 't:' .. id, ARGV[2])
    return {id, body, redis.call('HGET', KEYS[4], 'n:' .. id) or '0', redis.call('ZSCORE', KEYS[2], id) or '0'}
  end
  -- No body (never expected: every step keeps the sets and the hash together): forget the id.
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
end
return false";

/// KEYS: due, age, event, unregistered. ARGV: id, token.
const REMOVE: &str = "
if redis.call('HGET', KEYS[3], 't:' .. ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[3], 'b:' .. ARGV[1], 'n:' .. ARGV[1], 't:' .. ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
return 1";

/// KEYS: due, event. ARGV: id, token, delay ms.
const RESCHEDULE: &str = "
if redis.call('HGET', KEYS[2], 't:' .. ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HINCRBY', KEYS[2], 'n:' .. ARGV[1], 1)
redis.call('HSET', KEYS[2], 't:' .. ARGV[1], '')
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
return 1";

struct Scripts {
    push: Script,
    claim: Script,
    remove: Script,
    reschedule: Script,
}

pub struct RedisOutbox {
    kv: Kv,
    prefix: String,
    keys: Arc<Keyring>,
    max: usize,
    lease: Duration,
    scripts: Scripts,
    /// Wakes this replica's delivery threads when it pushes.
    pushed: (Mutex<u64>, Condvar),
    /// When this replica last looked for events under the untagged names (ms since `born`;
    /// 0: never).
    old_names: AtomicU64,
    born: Instant,
}

fn err(e: KvError) -> OutboxError {
    OutboxError(e.to_string())
}

impl RedisOutbox {
    /// An outbox on `kv` (the replica's Redis layer) under `prefix`, sealing with `keys`.
    pub fn new(
        kv: Kv,
        prefix: &str,
        keys: Arc<Keyring>,
        max: usize,
        lease: Duration,
    ) -> RedisOutbox {
        RedisOutbox {
            kv,
            prefix: prefix.to_string(),
            keys,
            max: max.max(1),
            lease,
            scripts: Scripts {
                // A push is sent once: run twice at the cap it would make room twice.
                push: Script::with_now(PUSH),
                // A claim whose reply was lost comes back when its lease ends; removing and
                // rescheduling check the claim's token: all three are safe to send again.
                claim: Script::with_now(CLAIM).idempotent(),
                remove: Script::new(REMOVE).idempotent(),
                reschedule: Script::with_now(RESCHEDULE).idempotent(),
            },
            pushed: (Mutex::new(0), Condvar::new()),
            old_names: AtomicU64::new(0),
            born: Instant::now(),
        }
    }

    fn name(&self, n: &str) -> String {
        tagged(&self.prefix, "events", &format!(":{n}"))
    }

    /// What a body is sealed under: the hash and the event.
    fn context(&self, id: &str) -> String {
        format!("{}/{id}", self.name("event"))
    }

    fn run<T: redis::FromRedisValue>(&self, call: Call) -> Result<T, OutboxError> {
        self.kv.run_blocking(call).map_err(err)
    }

    fn push_sealed(
        &self,
        id: &str,
        sealed: &[u8],
        created_ms: u64,
        class: Class,
    ) -> Result<Pushed, OutboxError> {
        let (queued, dropped_registered, dropped_unregistered): (u8, usize, usize) = self.run(
            Call::script(&self.scripts.push)
                .key(self.name("due"))
                .key(self.name("age"))
                .key(self.name("event"))
                .key(self.name("unregistered"))
                .arg(id)
                .arg(sealed)
                .arg(created_ms)
                .arg(self.max)
                .arg(if class == Class::Unregistered {
                    "u"
                } else {
                    "r"
                }),
        )?;
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

    /// Moves up to 100 events from the untagged names of earlier versions into this outbox,
    /// unless it looked less than `LOOK_FOR_OLD_NAMES` ago; how many it moved. Each command
    /// names one key (the old names are in other slots): an event is pushed here before it is
    /// removed there, so a crash between the two leaves it in both (delivered twice at worst),
    /// never in neither.
    fn move_old_names(&self) -> Result<usize, OutboxError> {
        let now = self.born.elapsed().as_millis() as u64 + 1;
        let last = self.old_names.load(Ordering::Relaxed);
        if last != 0 && now < last + LOOK_FOR_OLD_NAMES.as_millis() as u64 {
            return Ok(0);
        }
        if self
            .old_names
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return Ok(0);
        }
        let old = |n: &str| format!("{}{n}", self.prefix);
        let (due, age, unregistered) = (
            old("events:due"),
            old("events:age"),
            old("events:unregistered"),
        );
        let ids: Vec<String> = self.run(
            Call::command("ZRANGE")
                .key(&age)
                .arg(0)
                .arg(99)
                .idempotent(),
        )?;
        let mut moved = 0;
        for id in ids {
            let hash = old(&format!("event:{id}"));
            let (sealed, created): (Option<Vec<u8>>, Option<u64>) = self.run(
                Call::command("HMGET")
                    .key(&hash)
                    .arg("body")
                    .arg("created")
                    .idempotent(),
            )?;
            let class: Option<f64> = self.run(
                Call::command("ZSCORE")
                    .key(&unregistered)
                    .arg(&id)
                    .idempotent(),
            )?;
            let body = sealed.and_then(|s| self.keys.open(hash.as_bytes(), &s));
            if let (Some(body), Some(created)) = (body, created) {
                let class = if class.is_some() {
                    Class::Unregistered
                } else {
                    Class::Registered
                };
                let sealed = self.keys.seal(self.context(&id).as_bytes(), &body);
                self.push_sealed(&id, &sealed, created, class)?;
                moved += 1;
            }
            // Gone from the old names once here (or unreadable: nothing to move).
            for set in [&due, &age, &unregistered] {
                self.run::<i64>(Call::command("ZREM").key(set).arg(&id).idempotent())?;
            }
            self.run::<i64>(Call::command("DEL").key(&hash).idempotent())?;
        }
        if moved > 0 {
            crate::logging::info(
                "webhook_events_moved",
                serde_json::json!({ "events": moved, "from": "the untagged names of an earlier version" }),
            );
        }
        Ok(moved)
    }

    fn claim_here(&self) -> Result<Option<Claimed>, OutboxError> {
        let mut token = [0u8; 16];
        getrandom::fill(&mut token).expect("the system random source failed");
        let token = crate::secret::hex(&token);
        let reply: Option<(String, Vec<u8>, u32, u64)> = self.run(
            Call::script(&self.scripts.claim)
                .key(self.name("due"))
                .key(self.name("age"))
                .key(self.name("unregistered"))
                .key(self.name("event"))
                .arg(self.lease.as_millis() as u64)
                .arg(&token),
        )?;
        let Some((id, sealed, attempts, created_ms)) = reply else {
            return Ok(None);
        };
        let body = self
            .keys
            .open(self.context(&id).as_bytes(), &sealed)
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
}

impl Outbox for RedisOutbox {
    fn push(
        &self,
        id: &str,
        body: &str,
        created_ms: u64,
        class: Class,
    ) -> Result<Pushed, OutboxError> {
        let sealed = self.keys.seal(self.context(id).as_bytes(), body.as_bytes());
        self.push_sealed(id, &sealed, created_ms, class)
    }

    fn claim(&self) -> Result<Option<Claimed>, OutboxError> {
        SEEN.set(*self.pushed.0.lock().unwrap_or_else(|e| e.into_inner()));
        match self.claim_here()? {
            Some(claimed) => Ok(Some(claimed)),
            None if self.move_old_names()? > 0 => self.claim_here(),
            None => Ok(None),
        }
    }

    fn remove(&self, claim: &Claimed) -> Result<(), OutboxError> {
        self.run::<i64>(
            Call::script(&self.scripts.remove)
                .key(self.name("due"))
                .key(self.name("age"))
                .key(self.name("event"))
                .key(self.name("unregistered"))
                .arg(&claim.id)
                .arg(&claim.token),
        )?;
        Ok(())
    }

    fn reschedule(&self, claim: &Claimed, delay: Duration) -> Result<(), OutboxError> {
        self.run::<i64>(
            Call::script(&self.scripts.reschedule)
                .key(self.name("due"))
                .key(self.name("event"))
                .arg(&claim.id)
                .arg(&claim.token)
                .arg(delay.as_millis() as u64),
        )?;
        Ok(())
    }

    fn count(&self) -> Result<usize, OutboxError> {
        self.run(Call::command("ZCARD").key(self.name("age")).idempotent())
    }

    fn wait(&self, at_most: Duration) {
        let (count, wake) = &self.pushed;
        let pushes = count.lock().unwrap_or_else(|e| e.into_inner());
        let before = SEEN.get();
        let _ = wake.wait_timeout_while(pushes, at_most, |n| *n == before);
    }
}
