//! The in-memory store: one mutex over a map, a min-heap of expiries for live entries, and a
//! FIFO of retrieved markers. Everything is bounded by `max_pending`.

use super::{
    Callback, Put, Register, Session, SessionStatus, StateTake, Store, StoreResult, Take,
    TokenTake, Tokens,
};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

enum Entry {
    Registered {
        expires: Instant,
    },
    Received {
        callback: Callback,
        fingerprint: [u8; 32],
        expires: Instant,
    },
    /// The code is gone; only what is needed to answer 410 and to recognise a reload remains.
    Retrieved {
        fingerprint: [u8; 32],
        expires: Instant,
    },
}

impl Entry {
    fn expires(&self) -> Instant {
        match self {
            Entry::Registered { expires }
            | Entry::Received { expires, .. }
            | Entry::Retrieved { expires, .. } => *expires,
        }
    }

    fn is_live(&self) -> bool {
        !matches!(self, Entry::Retrieved { .. })
    }
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Expiry of registered and received entries. Entries that changed since their push leave
    /// stale items behind; `sweep` skips those.
    live_expiries: BinaryHeap<Reverse<(Instant, String)>>,
    /// Retrieved markers in retrieval order. Their lifetime starts at retrieval and is the same
    /// for all, so this order is also expiry order and the oldest can be evicted at the cap.
    retrieved: VecDeque<(Instant, String)>,
    /// Registered and received entries (what the cap counts).
    live: usize,
    /// Of those, registered states still waiting for their callback.
    registered: usize,
    retrieved_count: usize,
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
    tokens: Option<Tokens>,
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
}

impl MemoryStore {
    pub fn new(ttl: Duration, max_pending: usize) -> Self {
        MemoryStore {
            inner: Mutex::new(Inner::default()),
            sessions: Mutex::new(Sessions::default()),
            ttl,
            max_pending,
        }
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

    fn insert_live(&mut self, state: &str, entry: Entry) {
        if matches!(entry, Entry::Registered { .. }) {
            self.registered += 1;
        }
        self.live_expiries
            .push(Reverse((entry.expires(), state.to_string())));
        if let Some(old) = self.entries.insert(state.to_string(), entry) {
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

impl Store for MemoryStore {
    fn put_callback(&self, cb: Callback, require_registered: bool) -> StoreResult<Put> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.expire_one(&cb.state, now);
        let fingerprint = cb.fingerprint();
        let outcome = match inner.entries.get(&cb.state) {
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
        let state = cb.state.clone();
        inner.insert_live(
            &state,
            Entry::Received {
                callback: cb,
                fingerprint,
                expires: now + self.ttl,
            },
        );
        Ok(outcome)
    }

    fn take_callback(&self, state: &str) -> StoreResult<Take> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.expire_one(state, now);
        let Some(entry) = inner.entries.get_mut(state) else {
            return Ok(Take::Missing);
        };
        let (callback, fingerprint) = match entry {
            Entry::Registered { .. } => return Ok(Take::Missing),
            Entry::Retrieved { .. } => return Ok(Take::AlreadyTaken),
            Entry::Received {
                callback,
                fingerprint,
                ..
            } => (callback.clone(), *fingerprint),
        };
        let expires = now + self.ttl;
        *entry = Entry::Retrieved {
            fingerprint,
            expires,
        };
        inner.live -= 1;
        inner.retrieved_count += 1;
        inner.compact_expiries();
        inner.retrieved.push_back((expires, state.to_string()));
        // Markers are bounded too: past the cap the oldest is forgotten (it would answer 404
        // instead of 410; the code itself is long gone either way).
        while inner.retrieved_count > self.max_pending {
            let Some((at, key)) = inner.retrieved.pop_front() else {
                break;
            };
            if matches!(inner.entries.get(&key), Some(Entry::Retrieved { expires, .. }) if *expires == at)
            {
                inner.remove(&key);
            }
        }
        Ok(Take::Taken(callback))
    }

    fn has_callback(&self, state: &str) -> StoreResult<bool> {
        let now = Instant::now();
        let inner = self.lock();
        Ok(inner
            .entries
            .get(state)
            .is_some_and(|e| e.expires() > now && !matches!(e, Entry::Registered { .. })))
    }

    fn register_state(&self, state: &str, ttl: Duration) -> StoreResult<Register> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.expire_one(state, now);
        if inner.entries.contains_key(state) {
            return Ok(Register::Exists);
        }
        if inner.live >= self.max_pending {
            return Ok(Register::Full);
        }
        inner.insert_live(state, Entry::Registered { expires: now + ttl });
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
        if s.by_handle.len() >= self.max_pending {
            s.by_handle.retain(|_, e| e.expires > now);
            if s.by_handle.len() >= self.max_pending {
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
                tokens: None,
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

    fn finish_session(&self, handle: &str, outcome: Result<Tokens, String>) -> StoreResult<()> {
        let mut s = self.sessions();
        if let Some(entry) = s.by_handle.get_mut(handle) {
            match outcome {
                Ok(tokens) => {
                    entry.status = SessionStatus::Ready;
                    entry.tokens = Some(tokens);
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
                match entry.tokens.take() {
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
        let s = MemoryStore::new(Duration::from_millis(30), 10);
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
        let s = MemoryStore::new(Duration::from_secs(600), 100);
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
        let s = MemoryStore::new(Duration::from_secs(60), 50);
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
    fn retrieved_markers_are_bounded() {
        let s = MemoryStore::new(Duration::from_secs(60), 3);
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
