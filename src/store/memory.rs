//! The in-memory store: one mutex over a map, a min-heap of expiries for live entries, and a
//! FIFO of retrieved markers. Everything is bounded by `max_pending` entries and `max_bytes` of
//! what strangers choose the size of (states, codes, error texts). A state is held once, as an
//! `Arc<str>` shared by the map, the expiry heap and the marker FIFO.

use super::{
    Callback, Handoff, Proof, Put, Register, Session, SessionStatus, StateTake, Store, StoreResult,
    Take, TokenTake,
};
use crate::secret::RetrievalHash;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// The hash of the retrieval secret a state was registered with, if any; it stays with the
/// entry through callback and retrieval. Boxed: most states have none, and `None` then costs
/// one pointer.
type Guard = Option<Box<RetrievalHash>>;

enum Entry {
    Registered {
        expires: Instant,
        guard: Guard,
    },
    Received {
        /// Its `state` is left empty: the map's key holds it.
        callback: Callback,
        fingerprint: [u8; 32],
        expires: Instant,
        guard: Guard,
    },
    /// The code is gone; only what is needed to answer 410 (to whoever may know), and to
    /// recognise a reload, remains.
    Retrieved {
        fingerprint: [u8; 32],
        expires: Instant,
        guard: Guard,
    },
}

impl Entry {
    fn expires(&self) -> Instant {
        match self {
            Entry::Registered { expires, .. }
            | Entry::Received { expires, .. }
            | Entry::Retrieved { expires, .. } => *expires,
        }
    }

    fn guard(&self) -> Option<&RetrievalHash> {
        match self {
            Entry::Registered { guard, .. }
            | Entry::Received { guard, .. }
            | Entry::Retrieved { guard, .. } => guard.as_deref(),
        }
    }

    fn is_live(&self) -> bool {
        !matches!(self, Entry::Retrieved { .. })
    }

    /// The bytes `max_bytes` counts: the state (its key) and what the provider sent.
    fn bytes(&self, state: &str) -> usize {
        state.len()
            + match self {
                Entry::Received { callback, .. } => payload(callback),
                _ => 0,
            }
    }
}

fn payload(cb: &Callback) -> usize {
    cb.code.as_ref().map_or(0, |c| c.expose().len())
        + cb.error.as_ref().map_or(0, String::len)
        + cb.error_description.as_ref().map_or(0, String::len)
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Arc<str>, Entry>,
    /// Expiry of registered and received entries. Entries that changed since their push leave
    /// stale items behind; `sweep` skips those.
    live_expiries: BinaryHeap<Reverse<(Instant, Arc<str>)>>,
    /// Retrieved markers in retrieval order. Their lifetime starts at retrieval and is the same
    /// for all, so this order is also expiry order and the oldest can be evicted at the cap.
    retrieved: VecDeque<(Instant, Arc<str>)>,
    /// Registered and received entries (what the cap counts).
    live: usize,
    /// Of those, registered states still waiting for their callback.
    registered: usize,
    retrieved_count: usize,
    /// `Entry::bytes` of every entry.
    bytes: usize,
}

/// Broker sessions: few (people clicking links), so expiry is a linear sweep.
#[derive(Default)]
struct Sessions {
    by_handle: HashMap<String, SessionEntry>,
    link_to_handle: HashMap<String, String>,
    state_to_handle: HashMap<String, String>,
}

struct SessionEntry {
    session: Session,
    state_taken: bool,
    status: SessionStatus,
    /// What the caller is handed; for a sealed session only the sealed answer, ever.
    handoff: Option<Handoff>,
    expires: Instant,
}

impl Sessions {
    fn live(&self, handle: &str, now: Instant) -> Option<&SessionEntry> {
        self.by_handle.get(handle).filter(|e| e.expires > now)
    }

    fn remove(&mut self, handle: &str) {
        if let Some(e) = self.by_handle.remove(handle) {
            self.link_to_handle.remove(&e.session.link_id);
            self.state_to_handle.remove(&e.session.oauth_state);
        }
    }
}

pub struct MemoryStore {
    inner: Mutex<Inner>,
    sessions: Mutex<Sessions>,
    ttl: Duration,
    max_pending: usize,
    max_bytes: usize,
    max_sessions: usize,
}

impl MemoryStore {
    pub fn new(ttl: Duration, max_pending: usize, max_bytes: usize) -> Self {
        MemoryStore {
            inner: Mutex::new(Inner::default()),
            sessions: Mutex::new(Sessions::default()),
            ttl,
            max_pending,
            max_bytes,
            max_sessions: max_pending,
        }
    }

    /// Caps broker sessions separately (each costs more than a callback). Defaults to
    /// `max_pending`.
    pub fn with_max_sessions(mut self, max_sessions: usize) -> Self {
        self.max_sessions = max_sessions;
        self
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the map consistent (every mutation is a single
        // insert or remove), so a poisoned lock is safe to keep using.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    /// Removes `state` if it has expired, so every operation sees only live data.
    fn expire_one(&mut self, state: &str, now: Instant) {
        if self.entries.get(state).is_some_and(|e| e.expires() <= now) {
            self.remove(state);
        }
    }

    fn remove(&mut self, state: &str) {
        if let Some(e) = self.entries.remove(state) {
            self.bytes -= e.bytes(state);
            if matches!(e, Entry::Registered { .. }) {
                self.registered -= 1;
            }
            if e.is_live() {
                self.live -= 1;
            } else {
                self.retrieved_count -= 1;
            }
        }
    }

    /// Retrieved entries leave their expiry behind in the heap until it comes due. Under steady
    /// callback-then-retrieve traffic those stale items would outnumber the live ones by far
    /// (one per retrieval within the TTL), so drop them once they are the majority: amortised
    /// O(1) per retrieval, and the heap stays within twice the live entries.
    fn compact_expiries(&mut self) {
        if self.live_expiries.len() > 2 * self.live + 64 {
            let entries = &self.entries;
            self.live_expiries.retain(|Reverse((at, key))| {
                entries
                    .get(key)
                    .is_some_and(|e| e.is_live() && e.expires() == *at)
            });
        }
    }

    fn key(&self, state: &str) -> Arc<str> {
        match self.entries.get_key_value(state) {
            Some((key, _)) => key.clone(),
            None => Arc::from(state),
        }
    }

    fn insert_live(&mut self, state: &str, entry: Entry) {
        if matches!(entry, Entry::Registered { .. }) {
            self.registered += 1;
        }
        let key = self.key(state);
        self.bytes += entry.bytes(state);
        self.live_expiries
            .push(Reverse((entry.expires(), key.clone())));
        if let Some(old) = self.entries.insert(key, entry) {
            self.bytes -= old.bytes(state);
            if matches!(old, Entry::Registered { .. }) {
                self.registered -= 1;
            }
            if !old.is_live() {
                self.retrieved_count -= 1;
                self.live += 1;
            }
        } else {
            self.live += 1;
        }
    }
}

impl MemoryStore {
    /// Forgets retrieved markers, oldest first, while they or the bytes are over their bounds
    /// (a forgotten marker answers 404 instead of 410; its code is long gone either way).
    fn evict_markers(&self, inner: &mut Inner, extra_bytes: usize) {
        while inner.retrieved_count > self.max_pending || inner.bytes + extra_bytes > self.max_bytes
        {
            let Some((at, key)) = inner.retrieved.pop_front() else {
                break;
            };
            if matches!(inner.entries.get(&key), Some(Entry::Retrieved { expires, .. }) if *expires == at)
            {
                inner.remove(&key);
            }
        }
    }
}

impl Store for MemoryStore {
    fn put_callback(&self, cb: Callback, require_registered: bool) -> StoreResult<Put> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.expire_one(&cb.state, now);
        let fingerprint = cb.fingerprint();
        let outcome = match inner.entries.get(cb.state.as_str()) {
            Some(
                Entry::Received { fingerprint: f, .. } | Entry::Retrieved { fingerprint: f, .. },
            ) => {
                return Ok(if *f == fingerprint {
                    Put::Repeated
                } else {
                    Put::Conflict
                });
            }
            Some(Entry::Registered { .. }) => Put::Stored,
            None if require_registered => return Ok(Put::NotRegistered),
            None if inner.live >= self.max_pending => return Ok(Put::Full),
            None => Put::Stored,
        };
        let guard = match inner.entries.get_mut(cb.state.as_str()) {
            Some(Entry::Registered { guard, .. }) => guard.take(),
            _ => None,
        };
        let mut cb = cb;
        let state = std::mem::take(&mut cb.state);
        let added = state.len() + payload(&cb);
        self.evict_markers(&mut inner, added);
        if inner.bytes + added > self.max_bytes {
            // The registration stays as it was.
            if let Some(Entry::Registered { guard: g, .. }) = inner.entries.get_mut(state.as_str())
            {
                *g = guard;
            }
            return Ok(Put::Full);
        }
        inner.insert_live(
            &state,
            Entry::Received {
                callback: cb,
                fingerprint,
                expires: now + self.ttl,
                guard,
            },
        );
        Ok(outcome)
    }

    fn take_callback_by(&self, state: &str, proof: &Proof) -> StoreResult<Take> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.expire_one(state, now);
        let Some(entry) = inner.entries.get_mut(state) else {
            return Ok(Take::Missing);
        };
        if !proof.opens(entry.guard()) {
            return Ok(Take::Missing);
        }
        let (callback, fingerprint, guard) = match entry {
            Entry::Registered { .. } => return Ok(Take::Missing),
            Entry::Retrieved { .. } => return Ok(Take::AlreadyTaken),
            Entry::Received {
                callback,
                fingerprint,
                guard,
                ..
            } => (
                Callback {
                    state: state.to_string(),
                    ..std::mem::replace(
                        callback,
                        Callback {
                            state: String::new(),
                            code: None,
                            error: None,
                            error_description: None,
                        },
                    )
                },
                *fingerprint,
                guard.take(),
            ),
        };
        let expires = now + self.ttl;
        *entry = Entry::Retrieved {
            fingerprint,
            expires,
            guard,
        };
        inner.bytes -= payload(&callback);
        inner.live -= 1;
        inner.retrieved_count += 1;
        inner.compact_expiries();
        let key = inner.key(state);
        inner.retrieved.push_back((expires, key));
        self.evict_markers(&mut inner, 0);
        Ok(Take::Taken(callback))
    }

    fn has_callback_for(&self, state: &str, proof: &Proof) -> StoreResult<bool> {
        let now = Instant::now();
        let inner = self.lock();
        Ok(inner.entries.get(state).is_some_and(|e| {
            e.expires() > now && !matches!(e, Entry::Registered { .. }) && proof.opens(e.guard())
        }))
    }

    fn register_guarded(
        &self,
        state: &str,
        ttl: Duration,
        guard: Option<&RetrievalHash>,
    ) -> StoreResult<Register> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.expire_one(state, now);
        if inner.entries.contains_key(state) {
            return Ok(Register::Exists);
        }
        self.evict_markers(&mut inner, state.len());
        if inner.live >= self.max_pending || inner.bytes + state.len() > self.max_bytes {
            return Ok(Register::Full);
        }
        inner.insert_live(
            state,
            Entry::Registered {
                expires: now + ttl,
                guard: guard.cloned().map(Box::new),
            },
        );
        Ok(Register::Registered {
            expires_at: SystemTime::now() + ttl,
        })
    }

    fn active_callbacks(&self) -> StoreResult<usize> {
        // O(1) for /health: counters, not a scan under the lock. Entries past their expiry
        // count until the next sweep (at most a second later).
        let inner = self.lock();
        Ok(inner.live - inner.registered + inner.retrieved_count)
    }

    fn create_session(&self, session: Session) -> StoreResult<bool> {
        let now = Instant::now();
        let mut s = self.sessions();
        if s.by_handle.len() >= self.max_sessions {
            s.by_handle.retain(|_, e| e.expires > now);
            if s.by_handle.len() >= self.max_sessions {
                return Ok(false);
            }
        }
        let expires = now
            + session
                .expires_at
                .duration_since(SystemTime::now())
                .unwrap_or_default();
        s.link_to_handle
            .insert(session.link_id.clone(), session.handle.clone());
        s.state_to_handle
            .insert(session.oauth_state.clone(), session.handle.clone());
        s.by_handle.insert(
            session.handle.clone(),
            SessionEntry {
                session,
                state_taken: false,
                status: SessionStatus::Pending,
                handoff: None,
                expires,
            },
        );
        Ok(true)
    }

    fn session_by_link(&self, link_id: &str) -> StoreResult<Option<(Session, SessionStatus)>> {
        let s = self.sessions();
        // Expired but not yet swept sessions are returned too, so the person is told the
        // link expired rather than that it never existed.
        Ok(s.link_to_handle
            .get(link_id)
            .and_then(|h| s.by_handle.get(h))
            .map(|e| (e.session.clone(), e.status.clone())))
    }

    fn take_oauth_state(&self, oauth_state: &str) -> StoreResult<StateTake> {
        let now = Instant::now();
        let mut s = self.sessions();
        let Some(handle) = s.state_to_handle.get(oauth_state).cloned() else {
            return Ok(StateTake::Unknown);
        };
        let Some(entry) = s.by_handle.get_mut(&handle) else {
            return Ok(StateTake::Unknown);
        };
        if entry.expires <= now {
            return Ok(StateTake::Expired);
        }
        if entry.state_taken {
            return Ok(StateTake::Reused(entry.status.clone()));
        }
        entry.state_taken = true;
        let session = entry.session.clone();
        // The verifier is single-use: nothing but this taker ever sees it again.
        entry.session.verifier = crate::secret::Secret::new("");
        Ok(StateTake::Taken(session))
    }

    fn finish_session(&self, handle: &str, outcome: Result<Handoff, String>) -> StoreResult<()> {
        let mut s = self.sessions();
        if let Some(entry) = s.by_handle.get_mut(handle) {
            match outcome {
                Ok(handoff) => {
                    entry.status = SessionStatus::Ready;
                    entry.handoff = Some(handoff);
                    // The caller gets a full lifetime to collect them.
                    entry.expires = Instant::now() + self.ttl;
                }
                Err(reason) => entry.status = SessionStatus::Failed(reason),
            }
        }
        Ok(())
    }

    fn session_status(&self, handle: &str) -> StoreResult<Option<(Session, SessionStatus)>> {
        let s = self.sessions();
        Ok(s.live(handle, Instant::now())
            .map(|e| (e.session.clone(), e.status.clone())))
    }

    fn take_tokens(&self, handle: &str) -> StoreResult<TokenTake> {
        let now = Instant::now();
        let mut s = self.sessions();
        let Some(entry) = s.by_handle.get_mut(handle).filter(|e| e.expires > now) else {
            return Ok(TokenTake::NotFound);
        };
        Ok(match &entry.status {
            SessionStatus::Pending => TokenTake::Pending,
            SessionStatus::Consumed => TokenTake::Consumed,
            SessionStatus::Failed(r) => TokenTake::Failed(r.clone()),
            SessionStatus::Ready => {
                entry.status = SessionStatus::Consumed;
                match entry.handoff.take() {
                    Some(t) => TokenTake::Taken(t),
                    None => TokenTake::Consumed,
                }
            }
        })
    }

    fn sweep(&self) {
        {
            let now = Instant::now();
            let mut s = self.sessions();
            let expired: Vec<String> = s
                .by_handle
                .iter()
                .filter(|(_, e)| e.expires <= now)
                .map(|(h, _)| h.clone())
                .collect();
            for handle in expired {
                s.remove(&handle);
            }
        }
        let now = Instant::now();
        let mut inner = self.lock();
        while let Some(Reverse((at, _))) = inner.live_expiries.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, key))) = inner.live_expiries.pop() else {
                break;
            };
            if inner
                .entries
                .get(&key)
                .is_some_and(|e| e.is_live() && e.expires() == at)
            {
                inner.remove(&key);
            }
        }
        while inner.retrieved.front().is_some_and(|(at, _)| *at <= now) {
            let Some((at, key)) = inner.retrieved.pop_front() else {
                break;
            };
            if inner
                .entries
                .get(&key)
                .is_some_and(|e| !e.is_live() && e.expires() == at)
            {
                inner.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn cb(state: &str, code: &str) -> Callback {
        Callback {
            state: state.into(),
            code: Some(Secret::new(code)),
            error: None,
            error_description: None,
        }
    }

    #[test]
    fn expired_entries_are_swept_and_counts_follow() {
        let s = MemoryStore::new(Duration::from_millis(30), 10, usize::MAX);
        assert_eq!(s.put_callback(cb("a", "1"), false).unwrap(), Put::Stored);
        assert_eq!(s.put_callback(cb("b", "1"), false).unwrap(), Put::Stored);
        assert!(matches!(s.take_callback("b").unwrap(), Take::Taken(_)));
        assert_eq!(s.active_callbacks().unwrap(), 2);
        std::thread::sleep(Duration::from_millis(40));
        s.sweep();
        let inner = s.lock();
        assert!(inner.entries.is_empty());
        assert_eq!(
            (inner.live, inner.registered, inner.retrieved_count),
            (0, 0, 0)
        );
        assert!(inner.live_expiries.is_empty() && inner.retrieved.is_empty());
    }

    #[test]
    fn retrieval_traffic_does_not_grow_the_expiry_heap() {
        let s = MemoryStore::new(Duration::from_secs(600), 100, usize::MAX);
        for i in 0..10_000 {
            let state = format!("p{i}");
            s.put_callback(cb(&state, "c"), false).unwrap();
            assert!(matches!(s.take_callback(&state).unwrap(), Take::Taken(_)));
        }
        let inner = s.lock();
        assert!(
            inner.live_expiries.len() <= 64,
            "{} stale expiries kept",
            inner.live_expiries.len()
        );
        assert!(inner.retrieved.len() <= 100 + 1);
        assert_eq!(inner.retrieved_count, 100);
    }

    #[test]
    fn counters_match_a_full_scan() {
        let s = MemoryStore::new(Duration::from_secs(60), 50, usize::MAX);
        for i in 0..200 {
            let state = format!("s{}", i % 37);
            match i % 5 {
                0 => drop(s.register_state(&state, Duration::from_secs(60))),
                1 | 2 => drop(s.put_callback(cb(&state, &format!("c{i}")), i % 2 == 0)),
                _ => drop(s.take_callback(&state)),
            }
            let inner = s.lock();
            let scan = |f: fn(&Entry) -> bool| inner.entries.values().filter(|e| f(e)).count();
            assert_eq!(
                inner.registered,
                scan(|e| matches!(e, Entry::Registered { .. }))
            );
            assert_eq!(inner.live, scan(|e| e.is_live()));
            assert_eq!(inner.retrieved_count, scan(|e| !e.is_live()));
            let bytes: usize = inner.entries.iter().map(|(k, e)| e.bytes(k)).sum();
            assert_eq!(inner.bytes, bytes);
            drop(inner);
            assert_eq!(
                s.active_callbacks().unwrap(),
                s.lock()
                    .entries
                    .values()
                    .filter(|e| !matches!(e, Entry::Registered { .. }))
                    .count()
            );
        }
    }

    #[test]
    fn bytes_are_bounded_and_a_state_is_held_once() {
        // Room for two entries of a 1,000-byte state and a 100-byte code.
        let s = MemoryStore::new(Duration::from_secs(60), 100, 2_300);
        let state = |i: usize| format!("{i:0>1000}");
        assert_eq!(
            s.put_callback(cb(&state(1), &"c".repeat(100)), false)
                .unwrap(),
            Put::Stored
        );
        assert_eq!(
            s.put_callback(cb(&state(2), &"c".repeat(100)), false)
                .unwrap(),
            Put::Stored
        );
        assert_eq!(
            s.put_callback(cb(&state(3), &"c".repeat(100)), false)
                .unwrap(),
            Put::Full
        );
        assert_eq!(
            s.register_state(&state(4), Duration::from_secs(9)).unwrap(),
            Register::Full
        );
        {
            let inner = s.lock();
            assert_eq!(inner.bytes, 2 * 1_100);
            let (key, _) = inner.entries.get_key_value(state(1).as_str()).unwrap();
            // The map, the expiry heap and nothing else: one allocation of the state.
            assert_eq!(Arc::strong_count(key), 2);
        }
        // Retrieving frees the code's bytes; the marker (state only) gives way to new callbacks.
        assert!(
            matches!(s.take_callback(&state(1)).unwrap(), Take::Taken(c) if c.state == state(1))
        );
        assert_eq!(s.lock().bytes, 1_000 + 1_100);
        assert_eq!(
            s.put_callback(cb(&state(3), &"c".repeat(100)), false)
                .unwrap(),
            Put::Stored
        );
        assert_eq!(
            s.take_callback(&state(1)).unwrap(),
            Take::Missing,
            "the oldest marker went"
        );
        assert!(matches!(
            s.take_callback(&state(2)).unwrap(),
            Take::Taken(_)
        ));
    }

    #[test]
    fn retrieved_markers_are_bounded() {
        let s = MemoryStore::new(Duration::from_secs(60), 3, usize::MAX);
        for i in 0..10 {
            let state = format!("s{i}");
            assert_eq!(s.put_callback(cb(&state, "c"), false).unwrap(), Put::Stored);
            assert!(matches!(s.take_callback(&state).unwrap(), Take::Taken(_)));
        }
        assert_eq!(s.active_callbacks().unwrap(), 3);
        assert_eq!(s.take_callback("s9").unwrap(), Take::AlreadyTaken);
        assert_eq!(s.take_callback("s0").unwrap(), Take::Missing);
    }
}
