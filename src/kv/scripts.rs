//! Lua scripts and the keys they touch: the shared `NOW` snippet, a script's body and SHA-1
//! (sent by EVALSHA, EVAL only when Redis answers NOSCRIPT), whether running it twice is
//! harmless, and the Redis Cluster rules for keys (hash tags, the slot of a key, and the check
//! that every key of one call lives in one slot).

use std::sync::Arc;

/// Lua that sets `now` to Redis's clock in milliseconds. Every script that compares or writes
/// a time uses Redis's clock rather than the replica's, so replicas whose clocks disagree still
/// agree on what has expired. Its one home: prefix it with [`Script::with_now`].
pub const NOW: &str = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) ";

/// Lua defining `replicas_online(need)`: whether at least `need` replicas of this server are
/// online (INFO replication; nothing is asked when `need` is 0). A take checks it before it
/// changes anything, so that where WAIT could not vouch for the take afterwards (the replica is
/// gone, as right after a failover), it refuses to run instead of using the value up.
pub const REPLICAS_ONLINE: &str = "local function replicas_online(need) if need <= 0 then return true end local n = 0 for _ in string.gmatch(redis.call('INFO', 'replication'), 'state=online') do n = n + 1 end return n >= need end ";

/// A Lua script, sent by EVALSHA; when Redis does not have it (NOSCRIPT: after a restart, on a
/// newly promoted primary, on another cluster node), by EVAL once, which also caches it there.
/// NOSCRIPT means nothing ran, so that second send is always safe.
#[derive(Clone)]
pub struct Script(Arc<Inner>);

struct Inner {
    body: String,
    sha: String,
    idempotent: bool,
}

impl Script {
    /// A script that must run at most once per call (a take, a create, any write whose second
    /// run would answer differently): if its reply is lost the call fails with
    /// [`KvError::Lost`](super::KvError::Lost) and is never sent again.
    pub fn new(body: &str) -> Script {
        Script(Arc::new(Inner {
            sha: redis::Script::new(body).get_hash().to_string(),
            body: body.to_string(),
            idempotent: false,
        }))
    }

    /// [`NOW`] followed by `body`.
    pub fn with_now(body: &str) -> Script {
        Script::new(&format!("{NOW}{body}"))
    }

    /// Marks the script as harmless to run twice (reads, or writes that converge, such as
    /// dropping expired entries): a call whose reply was lost is sent again within the timeout.
    pub fn idempotent(self) -> Script {
        let inner = &self.0;
        Script(Arc::new(Inner {
            body: inner.body.clone(),
            sha: inner.sha.clone(),
            idempotent: true,
        }))
    }

    pub fn sha(&self) -> &str {
        &self.0.sha
    }

    pub fn body(&self) -> &str {
        &self.0.body
    }

    pub fn is_idempotent(&self) -> bool {
        self.0.idempotent
    }
}

impl std::fmt::Debug for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Script({})", &self.0.sha[..12])
    }
}

/// How many slots a Redis Cluster has.
pub const SLOTS: u16 = 16384;

/// The cluster slot of `key`: CRC16 (XMODEM) of its hash tag (the bytes between the first `{`
/// and the next `}`, when not empty) or of the whole key, modulo 16384, as Redis computes it.
pub fn slot(key: &[u8]) -> u16 {
    crc16(hashed_part(key)) % SLOTS
}

fn hashed_part(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|&b| b == b'{') else {
        return key;
    };
    match key[open + 1..].iter().position(|&b| b == b'}') {
        Some(len) if len > 0 => &key[open + 1..open + 1 + len],
        _ => key,
    }
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= (byte as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// A key in the slot of `tag`: `{prefix tag}rest`, e.g. `tagged("oauth-relay:", "conn:42",
/// ":grant")` is `{oauth-relay:conn:42}:grant`. Every key built with the same prefix and tag
/// shares one slot, so one script may touch them all on a Redis Cluster. The prefix stays
/// inside the braces so that two deployments sharing a cluster spread differently.
///
/// A brace in the prefix or the tag would end the hash tag early and spread the keys over
/// slots: debug builds panic on it, and `KvSettings` refuses such a prefix on a cluster.
pub fn tagged(prefix: &str, tag: &str, rest: &str) -> String {
    debug_assert!(
        !prefix.contains(['{', '}']) && !tag.contains(['{', '}']),
        "a hash tag's prefix and tag must not contain braces"
    );
    // `concat`, not `format!`: a request builds several keys, each one exact allocation.
    ["{", prefix, tag, "}", rest].concat()
}

/// Checks that every key shares one slot (what Redis Cluster requires of one command or
/// script): `Err` names the first key that does not, by its slot only (keys may be secret).
pub fn same_slot<K: AsRef<[u8]>>(keys: &[K]) -> Result<(), String> {
    let mut slots = keys.iter().map(|k| slot(k.as_ref()));
    let Some(first) = slots.next() else {
        return Ok(());
    };
    match slots.position(|s| s != first) {
        None => Ok(()),
        Some(i) => Err(format!(
            "the keys of one call must share a cluster slot: key 1 is in slot {first}, key {} in slot {} (build them with kv::scripts::tagged)",
            i + 2,
            slot(keys[i + 1].as_ref())
        )),
    }
}

/// For tests: panics unless every key shares one slot.
pub fn assert_same_slot<K: AsRef<[u8]>>(keys: &[K]) {
    if let Err(e) = same_slot(keys) {
        panic!("{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_the_ones_redis_computes() {
        // From the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        // An empty tag, or no closing brace: the whole key is hashed.
        assert_eq!(slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        assert_eq!(slot(b"foo{bar"), crc16(b"foo{bar") % SLOTS);
        assert_eq!(slot(b"foo{{bar}}zap"), crc16(b"{bar") % SLOTS);
    }

    #[test]
    fn tagged_keys_share_a_slot() {
        let grant = tagged("oauth-relay:", "conn:42", ":grant");
        let intent = tagged("oauth-relay:", "conn:42", ":intent");
        assert_eq!(grant, "{oauth-relay:conn:42}:grant");
        assert!(same_slot(&[&grant, &intent]).is_ok());
        let other = tagged("oauth-relay:", "conn:43", ":grant");
        let e = same_slot(&[&grant, &intent, &other]).unwrap_err();
        assert!(e.contains("key 3"), "{e}");
        assert!(
            !e.contains("conn:43"),
            "a key must not appear in the error: {e}"
        );
    }

    #[test]
    #[should_panic(expected = "braces")]
    fn a_brace_in_a_tag_is_refused() {
        tagged("p:", "a}b", "");
    }

    #[test]
    fn scripts_know_their_sha_and_whether_they_may_run_twice() {
        let s = Script::new("return 1");
        assert_eq!(s.sha(), "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
        assert!(!s.is_idempotent());
        let read = s.clone().idempotent();
        assert!(read.is_idempotent() && read.sha() == s.sha());
        assert!(Script::with_now("return now").body().starts_with(NOW));
    }
}
