//! The Redis store, for several replicas sharing state, over the one Redis layer (`crate::kv`:
//! one server, Sentinel or Cluster). Every create-once and take-once step is one Lua script, so
//! two replicas racing cannot both win, and no write is ever sent twice: if a reply is lost
//! after Redis ran a take, the value is gone and the request fails closed (`KvError::Lost`,
//! 503). Reads are marked idempotent, so the layer asks them again when a reply is lost.
//!
//! **Takes survive failovers.** Redis replicates asynchronously: a take the primary ran can be
//! lost with it, and then the replica promoted in its place still holds the code, the OAuth
//! state or the tokens, ready to be handed out a second time. So with a replicated Redis
//! (`Durability::replicas` above 0) every take (a callback retrieval, an OAuth state, a token
//! hand-off) first checks, inside its script and before it changes anything, that enough
//! replicas are online (else it refuses: 503, log line `take_refused`, nothing used up, as
//! right after a failover while the new primary has no replica yet); then WAIT follows it on
//! the same connection (`Kv::run_durable`), and what it took is handed out only once enough
//! replicas acknowledged it. Otherwise the request fails closed (503, `take_not_replicated`):
//! the value is used up on the primary, or, if a failover undoes the take, still there to be
//! taken once. Other writes (a callback stored, a session created) are not waited for: a
//! failover may lose the last of them, which shows as a missing callback or session
//! (docs/scaling.md, "What a failover can lose").
//!
//! **Keys and Redis Cluster slots.** Every key of one script must be in one slot, and the caps
//! are counted in the same script as the write they bound (the pending cap, each client's share,
//! the session cap), so every key a cap covers shares one hash tag with the cap's set. The
//! relay's keys (callbacks `c:`, registrations `r:`, owner links `w:`, client shares `q:`, the
//! `pending` and `active` sets) are in `{<prefix>relay}` and the broker's (sessions `s:`, links
//! `l:`, OAuth states `o:`, the `sessions` set) in `{<prefix>broker}`: two slots, so on a
//! cluster they may live on two primaries, but neither family is spread further. One tag per
//! state would spread load over every primary, but then no script could see the global sets
//! and the caps would have to be split (a share of the cap per slot group, so one group could
//! refuse while others have room, and a client's share enforced per group) or counted apart
//! from the write (a race past the cap); the relay's load is people signing in, which one
//! primary serves many times over (bench/redis_topologies.sh), so exact caps win and a cluster
//! buys failover here, not spreading. The outbox has its own tag (`events/redis_outbox.rs`) and
//! each kept connection its own (`connections/redis.rs`). Long-polls hear of other replicas'
//! news on one classic pub/sub channel (`<prefix>notify`, not a key: no slot), which reaches
//! every node of a cluster.
//!
//! These names replaced the untagged ones of versions before Sentinel and Cluster were served
//! (`<prefix>c:...`); what those versions stored is not read (docs/scaling.md, "Upgrading from
//! a version before Sentinel and Cluster were served").
//!
//! **Where the calls run.** The relay's steps (a callback stored, taken, looked for; a state
//! registered) are written once, as futures on `Kv::run`: the server awaits them on its event
//! loop (`Store::*_async`), and the `Store` calls run the same futures from a blocking thread
//! (`Kv::block_on`). The broker's steps are blocking calls, run on the blocking pool.
//!
//! At rest, codes, tokens, verifiers, sessions and handles are sealed with the keyring (the
//! store key is the associated data), and key names are keyed hashes of states, handles and
//! link ids, so reading Redis alone yields nothing usable.

use super::{
    Callback, Handoff, Kept, Put, Register, Session, SessionStatus, StateTake, Store, StoreResult,
    Take, TokenTake, Tokens, Unavailable,
};
use super::{Client, Proof};
use crate::config::{Durability, RedisConfig};
use crate::http::Later;
use crate::keyring::Keyring;
use crate::kv::scripts::{tagged, REPLICAS_ONLINE};
use crate::kv::{Call, Event, Kv, KvError, Script};
use crate::seal::SealKey;
use crate::secret::{BindingHash, RetrievalHash, Secret};
use redis::FromRedisValue;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The hash tag of the relay's keys (callbacks, registrations, shares, the pending cap).
const RELAY: &str = "relay";
/// The hash tag of the broker's keys (sessions and the session cap).
const BROKER: &str = "broker";

// Values under a callback key: `L` fingerprint sealed-callback (live), `T` fingerprint (taken),
// `X` fingerprint (in conflict: two different callbacks, neither handed out); for a state
// registered with a retrieval hash, `G` fingerprint guard sealed-callback, `U` fingerprint
// guard and `Y` fingerprint guard. The fingerprint (32 bytes) is always at 2..33, so a replica
// that predates guards still recognises reloads and conflicts; asked for a `G` value it would
// read sealed data that does not decrypt and fail closed (503, the code lost), never hand it
// out, and the same for `X` and `Y` in a replica that predates conflicts. But such a replica
// would store a callback for an `H` registration unguarded (and one that predates tombstones
// would accept a late callback for an expired registration), which is why every replica must
// run this version before clients register (docs/scaling.md). The guard is the keyed MAC of the
// retrieval hash (`RedisStore::guard`).
//
// A registration key holds `1`, or `H` guard; then `;` the end of the registration in Unix
// milliseconds, `;` and the share key it counts against (empty for a trusted caller). It lives
// the TTL past that end, as a tombstone. (Earlier versions wrote neither suffix: such a
// registration is live until its key expires.)
//
// Per-client shares: a sorted set per client (`q:` the keyed hash of its address) of the
// owner-link keys (`w:` per state) of the entries it holds, scored by when each stops counting;
// the owner-link key holds the name of that set, so a retrieval (by another client) can free
// the place. The take reads that name first and declares it in KEYS (every key a script touches
// is declared, so a Redis Cluster checks them all before running it, and a slot migration can
// never stop a script half-way); the script refuses to run (`share_moved`) if the owner link
// no longer names the set declared.
const REGISTRATION: &str = "
local function registered_until(reg)
  local off = 2
  if string.sub(reg, 1, 1) == 'H' then off = 34 end
  local ms = string.match(string.sub(reg, off), '^;(%d+);')
  return ms and tonumber(ms)
end
";

// With ARGV[7] (a channel) and ARGV[8] (a waiter key), a callback stored or a state put in
// conflict is published there too, so that telling the other replicas costs no round trip.
const PUT: &str = "
local function tell()
  if ARGV[7] then redis.call('PUBLISH', ARGV[7], ARGV[8]) end
end
local cur = redis.call('GET', KEYS[1])
if cur then
  local kind = string.sub(cur, 1, 1)
  if kind == 'X' or kind == 'Y' then return 'in_conflict' end
  if string.sub(cur, 2, 33) == ARGV[2] then return 'repeated' end
  if kind == 'T' or kind == 'U' then return 'conflict' end
  local marker = 'X' .. string.sub(cur, 2, 33)
  if kind == 'G' then marker = 'Y' .. string.sub(cur, 2, 65) end
  redis.call('SET', KEYS[1], marker, 'KEEPTTL')
  tell()
  return 'conflicted'
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local ttl = tonumber(ARGV[3])
local reg = redis.call('GET', KEYS[2])
if reg then
  local until_ms = registered_until(reg)
  if until_ms and now >= until_ms then return 'expired' end
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[3], KEYS[2])
elseif ARGV[4] == '1' then
  return 'not_registered'
else
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now)
  if redis.call('ZCARD', KEYS[6]) >= tonumber(ARGV[6]) then return 'quota' end
  if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[5]) then return 'full' end
  redis.call('ZADD', KEYS[6], now + ttl, KEYS[5])
  redis.call('PEXPIRE', KEYS[6], 2 * ttl)
  redis.call('SET', KEYS[5], KEYS[6], 'PX', ttl)
end
local value = ARGV[1]
if reg and string.sub(reg, 1, 1) == 'H' then
  value = 'G' .. string.sub(ARGV[1], 2, 33) .. string.sub(reg, 2, 33) .. string.sub(ARGV[1], 34)
end
redis.call('SET', KEYS[1], value, 'PX', ttl)
redis.call('ZADD', KEYS[3], now + ttl, KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
redis.call('ZADD', KEYS[4], now + ttl, KEYS[1])
tell()
if reg then return 'stored_registered' end
return 'stored'";

// Who may have a callback (`Proof::opens`): a guarded one only a request whose presented guard
// (ARGV[1], empty when none) is the stored one; another only an authorized request (ARGV[2]).
// The same for a registration. The guards compared are keyed MACs: timing could at most tell
// how many leading bytes of two values nobody can compute without the key agree, which helps
// find no secret.
const OPENS: &str = "
local function opens(cur)
  local kind = string.sub(cur, 1, 1)
  if kind == 'G' or kind == 'U' or kind == 'Y' then
    return ARGV[1] ~= '' and string.sub(cur, 34, 65) == ARGV[1]
  end
  return ARGV[2] == '1'
end
local function opens_registration(reg)
  if string.sub(reg, 1, 1) == 'H' then
    return ARGV[1] ~= '' and string.sub(reg, 2, 33) == ARGV[1]
  end
  return ARGV[2] == '1'
end
";

const TAKE: &str = "
local share = redis.call('GET', KEYS[5])
if share and share ~= KEYS[6] then return {'share_moved'} end
local cur = redis.call('GET', KEYS[1])
if not cur then
  local reg = redis.call('GET', KEYS[4])
  if not reg or not opens_registration(reg) then return {'missing'} end
  local until_ms = registered_until(reg)
  if not until_ms then return {'pending', tostring(redis.call('PTTL', KEYS[4]))} end
  if now >= until_ms then return {'expired'} end
  return {'pending', string.format('%.0f', until_ms - now)}
end
if not opens(cur) then return {'missing'} end
local kind = string.sub(cur, 1, 1)
if kind == 'T' or kind == 'U' then return {'taken'} end
if kind == 'X' or kind == 'Y' then return {'conflict'} end
if not replicas_online(tonumber(ARGV[#ARGV])) then return {'no_replicas'} end
local ttl = tonumber(ARGV[3])
local marker, sealed
if kind == 'G' then
  marker, sealed = 'U' .. string.sub(cur, 2, 65), string.sub(cur, 66)
else
  marker, sealed = 'T' .. string.sub(cur, 2, 33), string.sub(cur, 34)
end
redis.call('SET', KEYS[1], marker, 'PX', ttl)
redis.call('ZREM', KEYS[2], KEYS[1])
redis.call('ZADD', KEYS[3], now + ttl, KEYS[1])
if share then
  redis.call('ZREM', KEYS[6], KEYS[5])
  redis.call('DEL', KEYS[5])
end
return {'ok', sealed}";

const HAS: &str = "
local cur = redis.call('GET', KEYS[1])
if cur then
  if opens(cur) then return 1 end
  return 0
end
local reg = redis.call('GET', KEYS[2])
if reg and opens_registration(reg) then
  local until_ms = registered_until(reg)
  if until_ms and now >= until_ms then return 1 end
end
return 0";

const REGISTER: &str = "
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then return 'exists' end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local counted = ARGV[6] == '1'
if counted then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
  if redis.call('ZCARD', KEYS[5]) >= tonumber(ARGV[5]) then return 'quota' end
end
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[2]) then return 'full' end
local keep = tonumber(ARGV[1]) + tonumber(ARGV[4])
local owner = ''
if counted then
  owner = KEYS[5]
  redis.call('ZADD', KEYS[5], now + keep, KEYS[4])
  redis.call('PEXPIRE', KEYS[5], 2 * tonumber(ARGV[4]))
  redis.call('SET', KEYS[4], owner, 'PX', keep)
end
local reg = '1'
if ARGV[3] ~= '' then reg = 'H' .. ARGV[3] end
reg = reg .. ';' .. string.format('%.0f', now + tonumber(ARGV[1])) .. ';' .. owner
redis.call('SET', KEYS[2], reg, 'PX', keep)
redis.call('ZADD', KEYS[3], now + keep, KEYS[2])
return 'ok'";

const ACTIVE: &str = "
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])";

const CREATE_SESSION: &str = "
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[7]) then return 0 end
redis.call('HSET', KEYS[1], 'data', ARGV[1], 'verifier', ARGV[2], 'status', 'pending', 'taken', '0', 'exp', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[6])
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[6])
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[6]), KEYS[1])
return 1";

// `browsers`: the keyed MACs (32 bytes each, `RedisStore::browser`) of the binding cookies of the
// browsers that opened the link, oldest first, at most ARGV[2] of them. A session written before
// bindings has none, so its callback is `other_browser` until the person opens the link again.
const BIND_BROWSER: &str = "
local exp = redis.call('HGET', KEYS[1], 'exp')
if not exp or now >= tonumber(exp) or redis.call('HGET', KEYS[1], 'taken') == '1' then return 0 end
local known = (redis.call('HGET', KEYS[1], 'browsers') or '') .. ARGV[1]
local keep = 32 * tonumber(ARGV[2])
if #known > keep then known = string.sub(known, #known - keep + 1) end
redis.call('HSET', KEYS[1], 'browsers', known)
return 1";

// ARGV[1]: the presented browser's MAC (empty without a cookie). The MACs compared are keyed:
// timing could at most tell how many leading bytes of two values nobody can compute without the
// key agree (as for retrieval guards, see OPENS).
const TAKE_STATE: &str = "
local exp = redis.call('HGET', KEYS[1], 'exp')
if not exp then return {'unknown'} end
if now >= tonumber(exp) then return {'expired'} end
if redis.call('HGET', KEYS[1], 'taken') == '1' then
  return {'reused', redis.call('HGET', KEYS[1], 'status')}
end
local known = redis.call('HGET', KEYS[1], 'browsers') or ''
local opened = false
if ARGV[1] ~= '' then
  for i = 1, #known - 31, 32 do
    if string.sub(known, i, i + 31) == ARGV[1] then opened = true end
  end
end
if not opened then return {'other_browser'} end
if not replicas_online(tonumber(ARGV[#ARGV])) then return {'no_replicas'} end
redis.call('HSET', KEYS[1], 'taken', '1')
local verifier = redis.call('HGET', KEYS[1], 'verifier')
redis.call('HDEL', KEYS[1], 'verifier')
return {'ok', redis.call('HGET', KEYS[1], 'data'), verifier}";

// A hand-off is kept under `tokens` (sealed with the keyring), or under `sealed` when the tokens
// were sealed to the caller's key (that JWE, sealed with the keyring too). A replica that
// predates sealed hand-offs finds no `tokens` and fails closed (503), never hands out a
// half-read answer.
const FINISH: &str = "
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] == 'ready' then
  redis.call('HSET', KEYS[1], 'status', 'ready', ARGV[4], ARGV[2], 'exp', now + tonumber(ARGV[3]))
  redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[3]))
else
  redis.call('HSET', KEYS[1], 'status', ARGV[1])
end
return 1";

const TAKE_TOKENS: &str = "
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {'notfound'} end
if now >= tonumber(redis.call('HGET', KEYS[1], 'exp')) then return {'notfound'} end
if st == 'ready' then
  if not replicas_online(tonumber(ARGV[#ARGV])) then return {'no_replicas'} end
  local tokens = redis.call('HGET', KEYS[1], 'tokens') or ''
  local sealed = redis.call('HGET', KEYS[1], 'sealed') or ''
  redis.call('HDEL', KEYS[1], 'tokens', 'sealed')
  redis.call('HSET', KEYS[1], 'status', 'consumed')
  return {'ok', tokens, sealed}
end
return {st}";

struct Scripts {
    put: Script,
    take: Script,
    has: Script,
    register: Script,
    active: Script,
    create_session: Script,
    bind_browser: Script,
    take_state: Script,
    finish: Script,
    take_tokens: Script,
}

/// The relay's sets and the news channel: every callback, retrieval and registration names
/// them, so they are built once rather than formatted per call.
struct Fixed {
    pending: String,
    active: String,
    channel: String,
}

/// The key of a set of the relay's (`pending`, `active`) or, for `sessions`, of the broker's.
fn set_key(prefix: &str, name: &str) -> String {
    let tag = if name == "sessions" { BROKER } else { RELAY };
    tagged(prefix, tag, &format!(":{name}"))
}

fn unavailable(e: KvError) -> Unavailable {
    Unavailable(e.to_string())
}

pub struct RedisStore {
    kv: Kv,
    pub(crate) prefix: String,
    pub(crate) keys: Arc<Keyring>,
    durability: Durability,
    ttl: Duration,
    max_pending: usize,
    max_per_client: usize,
    scripts: Scripts,
    fixed: Fixed,
    /// `active_callbacks` as last counted by the background thread; -1: Redis unreachable.
    active_cache: AtomicI64,
    /// The provider of records written before sessions named theirs (`with_unnamed_provider`).
    unnamed_provider: String,
}

impl RedisStore {
    /// A store with a Redis layer of its own (tests, tools). Connects lazily: an unreachable
    /// Redis makes calls fail (503), not this.
    pub fn new(o: &RedisConfig, ttl: Duration, max_pending: usize) -> Result<Self, String> {
        Ok(RedisStore::on(Kv::open(&o.kv)?, o, ttl, max_pending))
    }

    /// A store on `kv`, the layer the replica shares with its outbox.
    pub fn on(kv: Kv, o: &RedisConfig, ttl: Duration, max_pending: usize) -> Self {
        RedisStore {
            kv,
            prefix: o.kv.prefix.clone(),
            keys: o.keys.clone(),
            durability: o.durability,
            ttl,
            max_pending,
            max_per_client: max_pending,
            scripts: Scripts {
                put: Script::with_now(&format!("{REGISTRATION}{PUT}")),
                take: Script::with_now(&format!("{REPLICAS_ONLINE}{REGISTRATION}{OPENS}{TAKE}")),
                // Reads only.
                has: Script::with_now(&format!("{REGISTRATION}{OPENS}{HAS}")).idempotent(),
                register: Script::with_now(REGISTER),
                // Only drops expired entries: running it twice changes nothing.
                active: Script::with_now(ACTIVE).idempotent(),
                create_session: Script::with_now(CREATE_SESSION),
                bind_browser: Script::with_now(BIND_BROWSER),
                take_state: Script::with_now(&format!("{REPLICAS_ONLINE}{TAKE_STATE}")),
                finish: Script::with_now(FINISH),
                take_tokens: Script::with_now(&format!("{REPLICAS_ONLINE}{TAKE_TOKENS}")),
            },
            fixed: Fixed {
                pending: set_key(&o.kv.prefix, "pending"),
                active: set_key(&o.kv.prefix, "active"),
                channel: format!("{}notify", o.kv.prefix),
            },
            active_cache: AtomicI64::new(-1),
            unnamed_provider: String::new(),
        }
    }

    /// Caps each client's share of `max_pending`, across every replica on this Redis.
    /// Defaults to `max_pending`: no share smaller than the whole.
    pub fn with_max_per_client(mut self, max_per_client: usize) -> Self {
        self.max_per_client = max_per_client;
        self
    }

    /// Names the provider of sessions and tokens stored by the version before providers had
    /// names (they were all that version's one provider's). Defaults to none: such records
    /// then belong to no configured provider.
    pub fn with_unnamed_provider(mut self, name: &str) -> Self {
        self.unnamed_provider = name.to_string();
        self
    }

    /// The Redis layer (the connection store shares it).
    pub fn kv(&self) -> &Kv {
        &self.kv
    }

    pub(crate) fn durability(&self) -> Durability {
        self.durability
    }

    fn channel(&self) -> &str {
        &self.fixed.channel
    }

    /// Starts the two background threads a serving replica needs: one refreshes the count
    /// `/health` reports (so `/health` never waits on Redis), one listens for other replicas'
    /// news and hands each waiter key to `on_notify`. The subscription follows Redis through
    /// failovers (`Kv::subscribe`); whenever it is (again) in place, what was published
    /// meanwhile was missed, so `on_gap` is called: every local long-poll should look again.
    pub fn start_background(
        self: &Arc<Self>,
        on_notify: impl Fn(&str) + Send + 'static,
        on_gap: impl Fn() + Send + 'static,
    ) {
        let store = self.clone();
        std::thread::Builder::new()
            .name("redis-count".into())
            .spawn(move || loop {
                let n = store.active_callbacks().map(|n| n as i64).unwrap_or(-1);
                store.active_cache.store(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_secs(1));
            })
            .expect("spawn redis-count thread");
        let mut subscription = self.kv.subscribe(&[self.channel()]);
        std::thread::Builder::new()
            .name("redis-subscriber".into())
            .spawn(move || {
                let mut first = true;
                while let Some(event) = subscription.blocking_next() {
                    match event {
                        Event::Message { payload, .. } => {
                            if let Ok(key) = std::str::from_utf8(&payload) {
                                on_notify(key);
                            }
                        }
                        Event::Gap => {
                            if !first {
                                crate::logging::info(
                                    "redis_subscriber",
                                    json!({ "action": "subscribed again (or news was missed): every long-poll looks again" }),
                                );
                            }
                            first = false;
                            on_gap();
                        }
                    }
                }
            })
            .expect("spawn redis-subscriber thread");
    }

    /// Sends `call` once: every write. If the reply is lost, Redis may have run it, and running
    /// it again would answer wrongly (a store "repeated", so no replica is told it landed), so
    /// the request fails closed.
    fn run<T: FromRedisValue>(&self, call: Call) -> StoreResult<T> {
        self.kv.run_blocking(call).map_err(unavailable)
    }

    /// A read: asked again by the layer if its reply is lost.
    fn read<T: FromRedisValue>(&self, call: Call) -> StoreResult<T> {
        self.run(call.idempotent())
    }

    /// `run`, awaited (on the event loop, or in `block_on` on a blocking thread).
    async fn run_async<T: FromRedisValue>(&self, call: Call) -> StoreResult<T> {
        self.kv.run(call).await.map_err(unavailable)
    }

    /// `read`, awaited.
    async fn read_async<T: FromRedisValue>(&self, call: Call) -> StoreResult<T> {
        self.run_async(call.idempotent()).await
    }

    /// Runs one of the steps below, written once as futures, from a blocking thread.
    fn blocking<R>(&self, step: impl std::future::Future<Output = R>) -> R {
        self.kv.block_on(step)
    }

    /// A take (`what`, for the log), whose script's reply begins `ok` when it hands something
    /// out. Sent once, with the replicas required as its last argument: a script that finds
    /// fewer online refuses (`no_replicas`) before it changes anything. With a replicated
    /// Redis it is followed by WAIT, and what it took is handed out only if enough replicas
    /// acknowledged it: otherwise it fails closed, used up on this primary, and a failover
    /// that undid it would leave it to be taken once more, never twice.
    async fn take(&self, call: Call, what: &'static str) -> StoreResult<Vec<Vec<u8>>> {
        let Durability { replicas, wait } = self.durability;
        let call = call.arg(replicas);
        let (reply, acked) = if replicas == 0 {
            (self.run_async::<Vec<Vec<u8>>>(call).await?, 0)
        } else {
            let done = self
                .kv
                .run_durable::<Vec<Vec<u8>>>(call, replicas, wait)
                .await
                .map_err(unavailable)?;
            (done.value, done.replicas)
        };
        let first = reply.first().map(Vec::as_slice);
        if first == Some(b"no_replicas") {
            crate::logging::warn(
                "take_refused",
                json!({ "take": what, "needed": replicas,
                        "effect": "nothing taken (503): fewer replicas online than OAUTH_RELAY_REDIS_MIN_REPLICAS_ACKED" }),
            );
            return Err(Unavailable(format!(
                "redis: fewer than {replicas} replicas online; the {what} was not taken"
            )));
        }
        if first == Some(b"ok") && acked < replicas {
            crate::logging::warn(
                "take_not_replicated",
                json!({ "take": what, "replicas": acked, "needed": replicas,
                        "wait_ms": wait.as_millis() as u64,
                        "effect": "not handed out (503): a failover could have undone the take" }),
            );
            return Err(Unavailable(format!(
                "redis: the {what} take reached {acked} of {replicas} replicas within {} ms",
                wait.as_millis()
            )));
        }
        Ok(reply)
    }

    fn key(&self, kind: &str, id: &str) -> String {
        let tag = match kind {
            "s" | "l" | "o" => BROKER,
            _ => RELAY,
        };
        // `concat`, not `format!`: several keys per request, each one exact allocation.
        tagged(
            &self.prefix,
            tag,
            &[":", kind, ":", &self.keys.name(kind, id)].concat(),
        )
    }

    /// A set of the relay's (`pending`, `active`) or, for `sessions`, of the broker's.
    fn set(&self, name: &str) -> String {
        set_key(&self.prefix, name)
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis() as u64
    }

    fn seal_json(&self, context: &str, v: &Value) -> Vec<u8> {
        self.keys.seal(context.as_bytes(), v.to_string().as_bytes())
    }

    fn open_json(&self, context: &str, sealed: &[u8]) -> StoreResult<Value> {
        self.keys
            .open(context.as_bytes(), sealed)
            .and_then(|p| serde_json::from_slice(&p).ok())
            .ok_or_else(|| {
                Unavailable(
                    "redis: a value did not decrypt (wrong OAUTH_RELAY_ENCRYPTION_KEY?)".into(),
                )
            })
    }

    fn open_text(&self, context: &str, sealed: &[u8]) -> StoreResult<String> {
        self.keys
            .open(context.as_bytes(), sealed)
            .and_then(|p| String::from_utf8(p).ok())
            .ok_or_else(|| {
                Unavailable(
                    "redis: a value did not decrypt (wrong OAUTH_RELAY_ENCRYPTION_KEY?)".into(),
                )
            })
    }

    /// What Redis keeps of a retrieval hash, and compares: its keyed MAC, so reading Redis does
    /// not even give the hash to try secrets against.
    fn guard(&self, hash: &RetrievalHash) -> [u8; 32] {
        let mut input = b"oauth-relay retrieval hash v1\0".to_vec();
        input.extend_from_slice(hash.as_bytes());
        self.keys.mac(&input)
    }

    /// What Redis keeps of a browser's binding-cookie hash, and compares: its keyed MAC.
    fn browser(&self, hash: &BindingHash) -> [u8; 32] {
        let mut input = b"oauth-relay browser binding v1\0".to_vec();
        input.extend_from_slice(hash.as_bytes());
        self.keys.mac(&input)
    }

    /// A proof as the scripts take it: the presented guard (empty when none), authorized.
    fn proof_args(&self, proof: &Proof) -> (Vec<u8>, &'static str) {
        (
            proof
                .secret
                .as_ref()
                .map(|h| self.guard(h).to_vec())
                .unwrap_or_default(),
            if proof.authorized { "1" } else { "0" },
        )
    }

    /// The sorted set of `client`'s share.
    fn share_key(&self, client: Client) -> String {
        self.key("q", &client.id())
    }

    fn session_key(&self, handle: &str) -> String {
        self.key("s", handle)
    }

    /// The handle a link id or OAuth state points to.
    fn handle_for(&self, kind: &str, id: &str) -> StoreResult<Option<String>> {
        let key = self.key(kind, id);
        let sealed: Option<Vec<u8>> = self.read(Call::command("GET").key(&key))?;
        sealed.map(|s| self.open_text(&key, &s)).transpose()
    }

    fn load_session(&self, handle: &str) -> StoreResult<Option<(Session, SessionStatus, u64)>> {
        let key = self.session_key(handle);
        type Fields = (
            Option<Vec<u8>>,
            Option<String>,
            Option<u64>,
            Option<Vec<u8>>,
        );
        let (data, status, exp, verifier): Fields = self.read(
            Call::command("HMGET")
                .key(&key)
                .arg("data")
                .arg("status")
                .arg("exp")
                .arg("verifier"),
        )?;
        let (Some(data), Some(status), Some(exp)) = (data, status, exp) else {
            return Ok(None);
        };
        let v = self.open_json(&format!("{key}/data"), &data)?;
        // Present until the OAuth state is taken: the link's PKCE challenge is derived from it.
        let verifier = match verifier {
            Some(sealed) => self.open_text(&format!("{key}/verifier"), &sealed)?,
            None => String::new(),
        };
        Ok(Some((
            session_from_json(&v, Secret::new(verifier), &self.unnamed_provider)?,
            parse_status(&status),
            exp,
        )))
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

fn from_unix_secs(v: &Value) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(v.as_u64().unwrap_or(0))
}

fn parse_status(s: &str) -> SessionStatus {
    match s {
        "pending" => SessionStatus::Pending,
        "ready" => SessionStatus::Ready,
        "consumed" => SessionStatus::Consumed,
        other => SessionStatus::Failed(other.strip_prefix("failed:").unwrap_or(other).to_string()),
    }
}

fn session_to_json(s: &Session) -> Value {
    json!({
        "handle": s.handle, "link_id": s.link_id, "oauth_state": s.oauth_state,
        "provider": s.provider, "nonce": s.nonce,
        "expected_email": s.expected_email, "expected_subject": s.expected_subject,
        "force_consent": s.force_consent, "scopes": s.scopes, "return_url": s.return_url,
        "expires_at": s.expires_at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs(),
        "seal_to": s.seal_to.as_ref().map(SealKey::to_jwk),
        "keep": s.keep, "connection": s.connection,
    })
}

/// Reads sessions written by this version and by the ones before it (Microsoft only: no
/// `provider`, `nonce` or `expected_subject`; before return URLs: no `return_url`; before sealed
/// hand-offs: no `seal_to`), so a rolling upgrade loses no sign-in. A `seal_to` that no longer
/// reads as a key fails closed: the tokens are never kept in the clear instead.
fn session_from_json(v: &Value, verifier: Secret, unnamed: &str) -> StoreResult<Session> {
    let text = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    let opt = |k: &str| v[k].as_str().map(String::from);
    let seal_to =
        match &v["seal_to"] {
            Value::Null => None,
            jwk => Some(SealKey::from_jwk(jwk).map_err(|_| {
                Unavailable("redis: a session's seal_to is not a usable key".into())
            })?),
        };
    Ok(Session {
        handle: text("handle"),
        link_id: text("link_id"),
        oauth_state: text("oauth_state"),
        verifier,
        provider: opt("provider").unwrap_or_else(|| unnamed.into()),
        nonce: text("nonce"),
        expected_email: opt("expected_email"),
        expected_subject: opt("expected_subject"),
        force_consent: v["force_consent"].as_bool().unwrap_or(false),
        scopes: v["scopes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
        expires_at: from_unix_secs(&v["expires_at"]),
        return_url: opt("return_url"),
        seal_to,
        keep: v["keep"].as_bool().unwrap_or(false),
        connection: opt("connection"),
    })
}

fn callback_to_json(cb: &Callback) -> Value {
    json!({ "state": cb.state, "code": cb.code.as_ref().map(Secret::expose),
            "error": cb.error, "error_description": cb.error_description,
            "iss": cb.iss, "session_state": cb.session_state, "error_uri": cb.error_uri })
}

/// Reads callbacks written by this version and by the ones before it (no `iss`,
/// `session_state` or `error_uri`: they read as absent).
fn callback_from_json(v: &Value) -> Callback {
    let opt = |k: &str| v[k].as_str().map(String::from);
    Callback {
        state: opt("state").unwrap_or_default(),
        code: opt("code").map(Secret::new),
        error: opt("error"),
        error_description: opt("error_description"),
        iss: opt("iss"),
        session_state: opt("session_state"),
        error_uri: opt("error_uri"),
    }
}

fn tokens_to_json(t: &Tokens) -> Value {
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    json!({
        "provider": t.provider,
        "access_token": t.access_token.expose(),
        "refresh_token": t.refresh_token.as_ref().map(Secret::expose),
        "id_token": t.id_token.as_ref().map(Secret::expose), "token_type": t.token_type,
        "scope": t.scope, "expiry": t.expiry.map(secs),
        "subject": t.subject, "email": t.email, "email_verified": t.email_verified,
        "tenant": t.tenant,
        "connection": t.connection.as_ref().map(|k| json!({
            "id": k.id, "credential": k.credential.as_ref().map(Secret::expose),
        })),
    })
}

/// Reads tokens written by this version and by the one before it (Microsoft only: a refresh
/// token and an expiry always, no `provider`, `subject`, `email_verified` or `tenant`).
fn tokens_from_json(v: &Value, unnamed: &str) -> Tokens {
    let text = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    let opt = |k: &str| v[k].as_str().filter(|s| !s.is_empty()).map(String::from);
    Tokens {
        provider: opt("provider").unwrap_or_else(|| unnamed.into()),
        access_token: Secret::new(text("access_token")),
        refresh_token: opt("refresh_token").map(Secret::new),
        id_token: v["id_token"].as_str().map(Secret::new),
        token_type: text("token_type"),
        scope: text("scope"),
        expiry: v["expiry"].is_u64().then(|| from_unix_secs(&v["expiry"])),
        subject: text("subject"),
        email: opt("email"),
        email_verified: v["email_verified"].as_bool().unwrap_or(false),
        tenant: opt("tenant"),
        connection: v["connection"]["id"].as_str().map(|id| Kept {
            id: id.to_string(),
            credential: v["connection"]["credential"].as_str().map(Secret::new),
        }),
    }
}

/// The relay's steps, written once: awaited on the event loop (`Store::*_async`) and run
/// from blocking threads (`Store`'s own calls, through `RedisStore::blocking`).
impl RedisStore {
    /// With `tell`, the news is published by the script itself (`Store::put_callback_async`).
    async fn callback_put(
        &self,
        cb: Callback,
        require_registered: bool,
        client: Client,
        tell: bool,
    ) -> StoreResult<Put> {
        let key = self.key("c", &cb.state);
        let fp = self.keys.mac(&cb.fingerprint());
        let mut value = b"L".to_vec();
        value.extend_from_slice(&fp);
        value.extend(self.seal_json(&key, &callback_to_json(&cb)));
        let mut call = Call::script(&self.scripts.put)
            .key(&key)
            .key(self.key("r", &cb.state))
            .key(&self.fixed.pending)
            .key(&self.fixed.active)
            .key(self.key("w", &cb.state))
            .key(self.share_key(client))
            .arg(value)
            .arg(&fp[..])
            .arg(self.ttl_ms())
            .arg(if require_registered { "1" } else { "0" })
            .arg(self.max_pending)
            .arg(self.max_per_client);
        if tell {
            call = call
                .arg(self.channel())
                .arg(self.waiter_key("relay", &cb.state));
        }
        let outcome: String = self.run_async(call).await?;
        Ok(match outcome.as_str() {
            "stored" => Put::Stored,
            "stored_registered" => Put::StoredRegistered,
            "repeated" => Put::Repeated,
            "conflicted" => Put::Conflicted,
            "in_conflict" => Put::InConflict,
            "conflict" => Put::Conflict,
            "not_registered" => Put::NotRegistered,
            "expired" => Put::Expired,
            "quota" => Put::Quota,
            _ => Put::Full,
        })
    }

    async fn callback_take(&self, state: &str, proof: &Proof) -> StoreResult<Take> {
        let key = self.key("c", state);
        let owner = self.key("w", state);
        let (guard, authorized) = self.proof_args(proof);
        // The share the entry counts against is named in its owner link: read it, so that the
        // take declares every key it touches. It is written once, when the entry is made; the
        // script checks it is still the one declared.
        let mut tries = 0;
        let reply: Vec<Vec<u8>> = loop {
            let share: Option<String> = self.read_async(Call::command("GET").key(&owner)).await?;
            let share = share.unwrap_or_else(|| self.set("q:none"));
            let reply = self
                .take(
                    Call::script(&self.scripts.take)
                        .key(&key)
                        .key(&self.fixed.pending)
                        .key(&self.fixed.active)
                        .key(self.key("r", state))
                        .key(&owner)
                        .key(&share)
                        .arg(&guard)
                        .arg(authorized)
                        .arg(self.ttl_ms()),
                    "callback",
                )
                .await?;
            tries += 1;
            match reply.first().map(Vec::as_slice) {
                // Made between the read and the take: nothing changed, look again.
                Some(b"share_moved") if tries < 3 => continue,
                Some(b"share_moved") => {
                    return Err(Unavailable(
                        "redis: a callback's owner link keeps changing".into(),
                    ))
                }
                _ => break reply,
            }
        };
        let field = |i: usize| reply.get(i).map(Vec::as_slice).unwrap_or_default();
        match field(0) {
            b"ok" => {
                let v = self.open_json(&key, field(1))?;
                Ok(Take::Taken(callback_from_json(&v)))
            }
            b"taken" => Ok(Take::AlreadyTaken),
            b"pending" => Ok(Take::Pending {
                expires_in: Duration::from_millis(
                    std::str::from_utf8(field(1))
                        .ok()
                        .and_then(|ms| ms.parse().ok())
                        .unwrap_or(0),
                ),
            }),
            b"expired" => Ok(Take::Expired),
            b"conflict" => Ok(Take::Conflict),
            _ => Ok(Take::Missing),
        }
    }

    async fn callback_has(&self, state: &str, proof: &Proof) -> StoreResult<bool> {
        let (guard, authorized) = self.proof_args(proof);
        self.read_async(
            Call::script(&self.scripts.has)
                .key(self.key("c", state))
                .key(self.key("r", state))
                .arg(&guard)
                .arg(authorized),
        )
        .await
    }

    async fn state_register(
        &self,
        state: &str,
        ttl: Duration,
        guard: Option<&RetrievalHash>,
        client: Option<Client>,
    ) -> StoreResult<Register> {
        let guard = guard.map(|h| self.guard(h).to_vec()).unwrap_or_default();
        // Declared either way; a trusted caller's registration leaves it untouched.
        let share = self.share_key(client.unwrap_or(Client::Unknown));
        let outcome: String = self
            .run_async(
                Call::script(&self.scripts.register)
                    .key(self.key("c", state))
                    .key(self.key("r", state))
                    .key(&self.fixed.pending)
                    .key(self.key("w", state))
                    .key(&share)
                    .arg(ttl.as_millis() as u64)
                    .arg(self.max_pending)
                    .arg(&guard)
                    .arg(self.ttl_ms())
                    .arg(self.max_per_client)
                    .arg(if client.is_some() { "1" } else { "0" }),
            )
            .await?;
        Ok(match outcome.as_str() {
            "ok" => Register::Registered {
                expires_at: SystemTime::now() + ttl,
            },
            "exists" => Register::Exists,
            "quota" => Register::Quota,
            _ => Register::Full,
        })
    }
}

impl Store for RedisStore {
    fn put_callback_from(
        &self,
        cb: Callback,
        require_registered: bool,
        client: Client,
    ) -> StoreResult<Put> {
        self.blocking(self.callback_put(cb, require_registered, client, false))
    }

    fn take_callback_by(&self, state: &str, proof: &Proof) -> StoreResult<Take> {
        self.blocking(self.callback_take(state, proof))
    }

    fn has_callback_for(&self, state: &str, proof: &Proof) -> StoreResult<bool> {
        self.blocking(self.callback_has(state, proof))
    }

    fn register_by(
        &self,
        state: &str,
        ttl: Duration,
        guard: Option<&RetrievalHash>,
        client: Option<Client>,
    ) -> StoreResult<Register> {
        self.blocking(self.state_register(state, ttl, guard, client))
    }

    fn put_callback_async(
        self: Arc<Self>,
        cb: Callback,
        require_registered: bool,
        client: Client,
    ) -> Later<StoreResult<Put>> {
        Box::pin(async move {
            self.callback_put(cb, require_registered, client, true)
                .await
        })
    }

    fn take_callback_async(
        self: Arc<Self>,
        state: String,
        proof: Proof,
    ) -> Later<StoreResult<Take>> {
        Box::pin(async move { self.callback_take(&state, &proof).await })
    }

    fn has_callback_async(
        self: Arc<Self>,
        state: String,
        proof: Proof,
    ) -> Later<StoreResult<bool>> {
        Box::pin(async move { self.callback_has(&state, &proof).await })
    }

    fn register_async(
        self: Arc<Self>,
        state: String,
        ttl: Duration,
        guard: Option<RetrievalHash>,
        client: Option<Client>,
    ) -> Later<StoreResult<Register>> {
        Box::pin(async move {
            self.state_register(&state, ttl, guard.as_ref(), client)
                .await
        })
    }

    fn active_callbacks(&self) -> StoreResult<usize> {
        self.read(Call::script(&self.scripts.active).key(&self.fixed.active))
    }

    fn active_callbacks_now(&self) -> Option<usize> {
        usize::try_from(self.active_cache.load(Ordering::Relaxed)).ok()
    }

    fn blocks(&self) -> bool {
        true
    }

    fn ping(&self) -> StoreResult<()> {
        self.kv.ping_blocking().map_err(unavailable)
    }

    fn waiter_key(&self, kind: &str, id: &str) -> String {
        [kind, ":", &self.keys.name(kind, id)].concat()
    }

    fn publish(&self, waiter_key: &str) {
        // Best effort: a replica that misses this answers its long-poll at the deadline
        // instead (or, if its subscription was down, looks again when it is back), and the
        // client's next poll finds the value.
        let _ = self
            .kv
            .publish_blocking(self.channel(), waiter_key.as_bytes());
    }

    fn create_session(&self, s: Session) -> StoreResult<bool> {
        let key = self.session_key(&s.handle);
        let (link, state) = (self.key("l", &s.link_id), self.key("o", &s.oauth_state));
        let keep = self.ttl_ms() * 2;
        let created: i64 = self.run(
            Call::script(&self.scripts.create_session)
                .key(&key)
                .key(&link)
                .key(&state)
                .key(self.set("sessions"))
                .arg(self.seal_json(&format!("{key}/data"), &session_to_json(&s)))
                .arg(self.keys.seal(
                    format!("{key}/verifier").as_bytes(),
                    s.verifier.expose().as_bytes(),
                ))
                .arg(self.keys.seal(link.as_bytes(), s.handle.as_bytes()))
                .arg(self.keys.seal(state.as_bytes(), s.handle.as_bytes()))
                .arg(unix_ms(s.expires_at))
                .arg(keep)
                .arg(self.max_pending),
        )?;
        Ok(created == 1)
    }

    fn session_by_link(&self, link_id: &str) -> StoreResult<Option<(Session, SessionStatus)>> {
        let Some(handle) = self.handle_for("l", link_id)? else {
            return Ok(None);
        };
        Ok(self.load_session(&handle)?.map(|(s, st, _)| (s, st)))
    }

    fn bind_browser(&self, handle: &str, browser: &BindingHash) -> StoreResult<()> {
        let key = self.session_key(handle);
        let mac = self.browser(browser);
        self.run::<i64>(
            Call::script(&self.scripts.bind_browser)
                .key(&key)
                .arg(&mac[..])
                .arg(super::MAX_BROWSERS),
        )?;
        Ok(())
    }

    fn take_oauth_state(
        &self,
        oauth_state: &str,
        browser: Option<&BindingHash>,
    ) -> StoreResult<StateTake> {
        let Some(handle) = self.handle_for("o", oauth_state)? else {
            return Ok(StateTake::Unknown);
        };
        let key = self.session_key(&handle);
        let mac = browser
            .map(|b| self.browser(b).to_vec())
            .unwrap_or_default();
        let reply = self.blocking(self.take(
            Call::script(&self.scripts.take_state).key(&key).arg(&mac),
            "oauth_state",
        ))?;
        let field = |i: usize| reply.get(i).map(Vec::as_slice).unwrap_or_default();
        match field(0) {
            b"ok" => {
                let data = self.open_json(&format!("{key}/data"), field(1))?;
                let verifier = self.open_text(&format!("{key}/verifier"), field(2))?;
                Ok(StateTake::Taken(session_from_json(
                    &data,
                    Secret::new(verifier),
                    &self.unnamed_provider,
                )?))
            }
            b"reused" => Ok(StateTake::Reused(parse_status(&String::from_utf8_lossy(
                field(1),
            )))),
            b"expired" => Ok(StateTake::Expired),
            b"other_browser" => Ok(StateTake::OtherBrowser),
            _ => Ok(StateTake::Unknown),
        }
    }

    fn finish_session(&self, handle: &str, outcome: Result<Handoff, String>) -> StoreResult<()> {
        let key = self.session_key(handle);
        let (status, field, value) = match &outcome {
            Ok(Handoff::Clear(t)) => (
                "ready".to_string(),
                "tokens",
                self.seal_json(&format!("{key}/tokens"), &tokens_to_json(t)),
            ),
            Ok(Handoff::Sealed { provider, jwe }) => (
                "ready".to_string(),
                "sealed",
                self.seal_json(
                    &format!("{key}/sealed"),
                    &json!({ "provider": provider, "jwe": jwe }),
                ),
            ),
            Err(reason) => (format!("failed:{reason}"), "tokens", Vec::new()),
        };
        self.run::<i64>(
            Call::script(&self.scripts.finish)
                .key(&key)
                .arg(status)
                .arg(value)
                .arg(self.ttl_ms())
                .arg(field),
        )?;
        Ok(())
    }

    fn session_status(&self, handle: &str) -> StoreResult<Option<(Session, SessionStatus)>> {
        let now = unix_ms(SystemTime::now());
        Ok(self
            .load_session(handle)?
            .filter(|(_, _, exp)| *exp > now)
            .map(|(s, st, _)| (s, st)))
    }

    fn take_tokens(&self, handle: &str) -> StoreResult<TokenTake> {
        let key = self.session_key(handle);
        let reply =
            self.blocking(self.take(Call::script(&self.scripts.take_tokens).key(&key), "tokens"))?;
        let first = String::from_utf8_lossy(reply.first().map(Vec::as_slice).unwrap_or_default())
            .to_string();
        let field = |i: usize| reply.get(i).map(Vec::as_slice).unwrap_or_default();
        Ok(match first.as_str() {
            "ok" if !field(2).is_empty() => {
                let v = self.open_json(&format!("{key}/sealed"), field(2))?;
                match (v["provider"].as_str(), v["jwe"].as_str()) {
                    (Some(provider), Some(jwe)) => TokenTake::Taken(Handoff::Sealed {
                        provider: provider.to_string(),
                        jwe: jwe.to_string(),
                    }),
                    _ => return Err(Unavailable("redis: a sealed hand-off is unreadable".into())),
                }
            }
            "ok" => {
                let v = self.open_json(&format!("{key}/tokens"), field(1))?;
                TokenTake::Taken(Handoff::Clear(tokens_from_json(&v, &self.unnamed_provider)))
            }
            "pending" => TokenTake::Pending,
            "consumed" => TokenTake::Consumed,
            "notfound" => TokenTake::NotFound,
            other => TokenTake::Failed(other.strip_prefix("failed:").unwrap_or(other).to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_and_tokens_of_the_previous_version_are_read() {
        let old = json!({
            "handle": "h", "link_id": "l", "oauth_state": "o",
            "expected_email": "ana@contoso.example", "force_consent": true,
            "scopes": ["openid", "offline_access"], "expires_at": 1_900_000_000u64,
        });
        let s = session_from_json(&old, Secret::new("v"), "m365").unwrap();
        assert_eq!(s.provider, "m365");
        assert_eq!(s.nonce, "");
        assert_eq!(s.expected_email.as_deref(), Some("ana@contoso.example"));
        assert_eq!(s.expected_subject, None);
        assert_eq!(s.return_url, None);
        assert_eq!(s.seal_to, None);
        assert!(s.force_consent);
        let old = json!({
            "access_token": "at", "refresh_token": "rt", "id_token": null,
            "token_type": "Bearer", "scope": "User.Read", "email": "ana@contoso.example",
            "expiry": 1_900_000_000u64,
        });
        let t = tokens_from_json(&old, "m365");
        assert_eq!(t.provider, "m365");
        assert_eq!(t.refresh_token.unwrap().expose(), "rt");
        assert_eq!(
            t.expiry,
            Some(UNIX_EPOCH + Duration::from_secs(1_900_000_000))
        );
        assert_eq!(t.email.as_deref(), Some("ana@contoso.example"));
        assert!(!t.email_verified && t.tenant.is_none());
    }

    #[test]
    fn callbacks_of_the_previous_version_are_read() {
        let old = json!({ "state": "s", "code": "c", "error": null, "error_description": null });
        let cb = callback_from_json(&old);
        assert_eq!(cb.code.unwrap().expose(), "c");
        assert_eq!((cb.iss, cb.session_state, cb.error_uri), (None, None, None));
        let new = Callback {
            state: "s".into(),
            iss: Some("https://as.example".into()),
            session_state: Some("ss".into()),
            error_uri: Some("https://as.example/e".into()),
            ..Callback::default()
        };
        assert_eq!(callback_from_json(&callback_to_json(&new)), new);
    }

    #[test]
    fn sessions_and_tokens_round_trip() {
        let s = Session {
            handle: "h".into(),
            link_id: "l".into(),
            oauth_state: "o".into(),
            verifier: Secret::new("v"),
            provider: "github".into(),
            nonce: "n".into(),
            expected_email: None,
            expected_subject: Some("5830144".into()),
            force_consent: false,
            scopes: vec!["read:user".into()],
            expires_at: UNIX_EPOCH + Duration::from_secs(1_900_000_000),
            return_url: Some("https://chat.example.com/c/1?x=\"<&>#/room".into()),
            seal_to: Some(crate::seal::PrivateKey::generate(crate::seal::Curve::X25519).public()),
            keep: true,
            connection: Some("conn_x".into()),
        };
        assert_eq!(
            session_from_json(&session_to_json(&s), Secret::new("v"), "m365").unwrap(),
            s
        );
        let mut broken = session_to_json(&s);
        broken["seal_to"]["x"] = json!("not a key");
        assert!(session_from_json(&broken, Secret::new("v"), "m365").is_err());
        let t = Tokens {
            provider: "github".into(),
            access_token: Secret::new("gho_x"),
            refresh_token: None,
            id_token: None,
            token_type: "bearer".into(),
            scope: "read:user,user:email".into(),
            expiry: None,
            subject: "5830144".into(),
            email: Some("ana@example.com".into()),
            email_verified: true,
            tenant: None,
            connection: None,
        };
        assert_eq!(tokens_from_json(&tokens_to_json(&t), "m365"), t);
        let kept = Tokens {
            connection: Some(Kept {
                id: "conn_x".into(),
                credential: Some(Secret::new("ckey_x")),
            }),
            ..t.clone()
        };
        assert_eq!(tokens_from_json(&tokens_to_json(&kept), "m365"), kept);
        let revived = Tokens {
            connection: Some(Kept {
                id: "conn_x".into(),
                credential: None,
            }),
            ..t
        };
        assert_eq!(tokens_from_json(&tokens_to_json(&revived), "m365"), revived);
    }
}
