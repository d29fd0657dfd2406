//! The in-memory store: one mutex over a map, a min-heap of expiries for live entries, and a
//! FIFO of retrieved markers. Everything is bounded by `max_pending`.

use super::{Callback, Put, Register, Store, StoreResult, Take};
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
    live: usize,
    retrieved_count: usize,
}

pub struct MemoryStore {
    inner: Mutex<Inner>,
    ttl: Duration,
    max_pending: usize,
}

impl MemoryStore {
    pub fn new(ttl: Duration, max_pending: usize) -> Self {
        MemoryStore {
            inner: Mutex::new(Inner::default()),
            ttl,
            max_pending,
        }
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
            if e.is_live() {
                self.live -= 1;
            } else {
                self.retrieved_count -= 1;
            }
        }
    }

    fn insert_live(&mut self, state: &str, entry: Entry) {
        self.live_expiries
            .push(Reverse((entry.expires(), state.to_string())));
        if let Some(old) = self.entries.insert(state.to_string(), entry) {
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
        let now = Instant::now();
        let inner = self.lock();
        // Swept once a second; count precisely anyway so /health never reports the dead.
        Ok(inner
            .entries
            .values()
            .filter(|e| !matches!(e, Entry::Registered { .. }) && e.expires() > now)
            .count())
    }

    fn sweep(&self) {
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
        assert_eq!((inner.live, inner.retrieved_count), (0, 0));
        assert!(inner.live_expiries.is_empty() && inner.retrieved.is_empty());
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
