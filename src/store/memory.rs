//! The in-memory store: one mutex over a map, a min-heap of expiries for live entries, and a
//! FIFO of retrieved markers. Everything is bounded by `max_pending` entries (`max_per_client`
//! of them per client) and `max_bytes` of what strangers choose the size of (states, codes,
//! error texts, issuers). A state is held once, as an `Arc<str>` shared by the map, the expiry
//! heap and the marker FIFO.

use super::{
    Callback, Client, Handoff, Proof, Put, Register, Session, SessionStatus, StateTake, Store,
    StoreResult, Take, TokenTake,
};
use crate::secret::{BindingHash, RetrievalHash};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// The hash of the retrieval secret a state was registered with, if any; it stays with the
/// entry through callback and retrieval. Boxed: most states have none, and `None` then costs
/// one pointer.
type Guard = Option<Box<RetrievalHash>>;

/// The client whose share a live entry counts against; `None` for a trusted caller's.
type Owner = Option<Client>;

enum Entry {
    /// Registered ahead of its callback until `until`; from then on a tombstone until
    /// `expires`, refusing a late callback and a new registration (which would hand the
    /// person's late sign-in to whoever registered next).
    Registered {
        until: Instant,
        expires: Instant,
        guard: Guard,
        owner: Owner,
    },
    Received {
        callback: Packed,
        fingerprint: [u8; 32],
        expires: Instant,
        guard: Guard,
        owner: Owner,
    },
    /// Two different callbacks arrived: both were dropped; only the answer remains.
    Conflict {
        expires: Instant,
        guard: Guard,
        owner: Owner,
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
    /// When the entry goes (a registration: when its tombstone does).
    fn expires(&self) -> Instant {
        match self {
            Entry::Registered { expires, .. }
            | Entry::Received { expires, .. }
            | Entry::Conflict { expires, .. }
            | Entry::Retrieved { expires, .. } => *expires,
        }
    }

    fn guard(&self) -> Option<&RetrievalHash> {
        match self {
            Entry::Registered { guard, .. }
            | Entry::Received { guard, .. }
            | Entry::Conflict { guard, .. }
            | Entry::Retrieved { guard, .. } => guard.as_deref(),
        }
    }

    /// The share the entry counts against while it lives.
    fn owner(&self) -> Owner {
        match self {
            Entry::Registered { owner, .. }
            | Entry::Received { owner, .. }
            | Entry::Conflict { owner, .. } => *owner,
            Entry::Retrieved { .. } => None,
        }
    }

    /// What the cap counts: everything but retrieved markers (tombstones and conflicts too).
    fn is_live(&self) -> bool {
        !matches!(self, Entry::Retrieved { .. })
    }

    /// The bytes `max_bytes` counts: the state (its key) and what the provider sent.
    fn bytes(&self, state: &str) -> usize {
        state.len()
            + match self {
                Entry::Received { callback, .. } => callback.payload_bytes(),
                _ => 0,
            }
    }
}

/// What the provider sent, besides the state (the map's key holds it), in one allocation of
/// the values' bytes: per parameter, in `Callback::values` order, 0 when absent, else its
/// length + 1 (a u32, big-endian) and its bytes. Six `Option<String>`s in the entry would cost
/// every entry (registrations, tombstones, markers) 144 bytes and a callback an allocation per
/// value. It holds the code, so it has no `Debug`.
struct Packed(Box<[u8]>);

impl Packed {
    const FIELDS: usize = 6;

    fn pack(cb: &Callback) -> Packed {
        let mut out = Vec::with_capacity(4 * Self::FIELDS + cb.payload_bytes());
        for value in cb.values() {
            match value {
                None => out.extend_from_slice(&0u32.to_be_bytes()),
                Some(v) => {
                    // Values are bounded far below 4 GiB (relay::MAX_PARAM_BYTES, the URL cap).
                    out.extend_from_slice(&(v.len() as u32 + 1).to_be_bytes());
                    out.extend_from_slice(v.as_bytes());
                }
            }
        }
        Packed(out.into_boxed_slice())
    }

    fn unpack(&self, state: &str) -> Callback {
        let mut rest = &self.0[..];
        let mut next = || {
            let (len, tail) = rest.split_at(4);
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            let (value, tail) = tail.split_at(len.saturating_sub(1));
            rest = tail;
            // Packed from `&str`s: always UTF-8.
            (len > 0).then(|| String::from_utf8_lossy(value).into_owned())
        };
        Callback {
            state: state.to_string(),
            code: next().map(crate::secret::Secret::new),
            error: next(),
            error_description: next(),
            iss: next(),
            session_state: next(),
            error_uri: next(),
        }
    }

    fn payload_bytes(&self) -> usize {
        self.0.len() - 4 * Self::FIELDS
    }
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
    /// Of those, registered states still waiting for their callback (or tombstones).
    registered: usize,
    retrieved_count: usize,
    /// `Entry::bytes` of every entry.
    bytes: usize,
    /// Live entries per owner (clients with none are not kept).
    shares: HashMap<Client, usize>,
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
    /// Hashes of the binding cookies of the browsers that opened the link, oldest first (at most
    /// `MAX_BROWSERS`).
    browsers: Vec<BindingHash>,
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
    max_per_client: usize,
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
            max_per_client: max_pending,
        }
    }

    /// Caps each client's share of `max_pending` (`Store::put_callback_from`,
    /// `Store::register_by`). Defaults to `max_pending`: no share smaller than the whole.
    pub fn with_max_per_client(mut self, max_per_client: usize) -> Self {
        self.max_per_client = max_per_client;
        self
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
            self.unshare(e.owner());
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

    fn share_of(&self, client: Client) -> usize {
        self.shares.get(&client).copied().unwrap_or(0)
    }

    fn share(&mut self, owner: Owner) {
        if let Some(client) = owner {
            *self.shares.entry(client).or_default() += 1;
        }
    }

    fn unshare(&mut self, owner: Owner) {
        if let Some(client) = owner {
            if let Some(n) = self.shares.get_mut(&client) {
                *n -= 1;
                if *n == 0 {
                    self.shares.remove(&client);
                }
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
        self.share(entry.owner());
        self.live_expiries
            .push(Reverse((entry.expires(), key.clone())));
        if let Some(old) = self.entries.insert(key, entry) {
            self.bytes -= old.bytes(state);
            self.unshare(old.owner());
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
    fn put_callback_from(
        &self,
        cb: Callback,
        require_registered: bool,
        client: Client,
    ) -> StoreResult<Put> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.expire_one(&cb.state, now);
        let fingerprint = cb.fingerprint();
        let known = match inner.entries.get_mut(cb.state.as_str()) {
            None => false,
            Some(Entry::Conflict { .. }) => return Ok(Put::InConflict),
            Some(Entry::Retrieved { fingerprint: f, .. }) => {
                return Ok(if *f == fingerprint {
                    Put::Repeated
                } else {
                    Put::Conflict
                });
            }
            Some(Entry::Received { fingerprint: f, .. }) if *f == fingerprint => {
                return Ok(Put::Repeated)
            }
            Some(entry @ Entry::Received { .. }) => {
                // Nobody can tell which of the two is the person's: neither is handed out, and
                // the first one's data goes now.
                let (conflict, freed) = match entry {
                    Entry::Received {
                        callback,
                        expires,
                        guard,
                        owner,
                        ..
                    } => (
                        Entry::Conflict {
                            expires: *expires,
                            guard: guard.take(),
                            owner: *owner,
                        },
                        callback.payload_bytes(),
                    ),
                    _ => return Ok(Put::InConflict),
                };
                *entry = conflict;
                inner.bytes -= freed;
                return Ok(Put::Conflicted);
            }
            Some(Entry::Registered { until, .. }) if *until <= now => return Ok(Put::Expired),
            Some(Entry::Registered { .. }) => true,
        };
        if !known {
            if require_registered {
                return Ok(Put::NotRegistered);
            }
            if inner.share_of(client) >= self.max_per_client {
                return Ok(Put::Quota);
            }
            if inner.live >= self.max_pending {
                return Ok(Put::Full);
            }
        }
        let state = cb.state.as_str();
        let added = state.len() + cb.payload_bytes();
        self.evict_markers(&mut inner, added);
        if inner.bytes + added > self.max_bytes {
            // The registration, if any, stays as it was.
            return Ok(Put::Full);
        }
        // A registered state's callback keeps its registration's guard and share.
        let (guard, owner) = match inner.entries.get_mut(state) {
            Some(Entry::Registered { guard, owner, .. }) => (guard.take(), *owner),
            _ => (None, Some(client)),
        };
        inner.insert_live(
            state,
            Entry::Received {
                callback: Packed::pack(&cb),
                fingerprint,
                expires: now + self.ttl,
                guard,
                owner,
            },
        );
        Ok(if known {
            Put::StoredRegistered
        } else {
            Put::Stored
        })
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
        match entry {
            Entry::Registered { until, .. } if *until <= now => return Ok(Take::Expired),
            Entry::Registered { until, .. } => {
                return Ok(Take::Pending {
                    expires_in: *until - now,
                })
            }
            Entry::Retrieved { .. } => return Ok(Take::AlreadyTaken),
            Entry::Conflict { .. } => return Ok(Take::Conflict),
            Entry::Received { .. } => {}
        }
        let expires = now + self.ttl;
        let (callback, owner) = match entry {
            Entry::Received {
                callback,
                fingerprint,
                guard,
                owner,
                ..
            } => {
                let taken = (callback.unpack(state), *owner);
                *entry = Entry::Retrieved {
                    fingerprint: *fingerprint,
                    expires,
                    guard: guard.take(),
                };
                taken
            }
            _ => return Ok(Take::Missing),
        };
        inner.bytes -= callback.payload_bytes();
        inner.unshare(owner);
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
            e.expires() > now
                && proof.opens(e.guard())
                && match e {
                    Entry::Registered { until, .. } => *until <= now,
                    _ => true,
                }
        }))
    }

    fn register_by(
        &self,
        state: &str,
        ttl: Duration,
        guard: Option<&RetrievalHash>,
        client: Option<Client>,
    ) -> StoreResult<Register> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.expire_one(state, now);
        if inner.entries.contains_key(state) {
            return Ok(Register::Exists);
        }
        if client.is_some_and(|c| inner.share_of(c) >= self.max_per_client) {
            return Ok(Register::Quota);
        }
        self.evict_markers(&mut inner, state.len());
        if inner.live >= self.max_pending || inner.bytes + state.len() > self.max_bytes {
            return Ok(Register::Full);
        }
        inner.insert_live(
            state,
            Entry::Registered {
                until: now + ttl,
                expires: now + ttl + self.ttl,
                guard: guard.cloned().map(Box::new),
                owner: client,
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
            // Through `remove`, so the link and state indexes go with each expired session.
            let expired: Vec<String> = s
                .by_handle
                .iter()
                .filter(|(_, e)| e.expires <= now)
                .map(|(handle, _)| handle.clone())
                .collect();
            for handle in expired {
                s.remove(&handle);
            }
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
                browsers: Vec::new(),
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

    fn bind_browser(&self, handle: &str, browser: &BindingHash) -> StoreResult<()> {
        let now = Instant::now();
        let mut s = self.sessions();
        if let Some(entry) = s.by_handle.get_mut(handle) {
            if entry.expires > now && !entry.state_taken {
                if entry.browsers.len() >= super::MAX_BROWSERS {
                    entry.browsers.remove(0);
                }
                entry.browsers.push(browser.clone());
            }
        }
        Ok(())
    }

    fn take_oauth_state(
        &self,
        oauth_state: &str,
        browser: Option<&BindingHash>,
    ) -> StoreResult<StateTake> {
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
        // Every known browser is compared (no early exit), each in constant time.
        let opened_here = browser.is_some_and(|b| {
            entry
                .browsers
                .iter()
                .fold(false, |found, known| found | known.matches(b))
        });
        if !opened_here {
            return Ok(StateTake::OtherBrowser);
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
            ..Callback::default()
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
        let s = MemoryStore::new(Duration::from_millis(30), 50, usize::MAX).with_max_per_client(7);
        let clients = [
            Client::of(Some([10, 0, 0, 1].into())),
            Client::of(Some([10, 0, 0, 2].into())),
            Client::Unknown,
        ];
        for i in 0..400 {
            let state = format!("s{}", i % 37);
            let client = clients[i % 3];
            // Short registrations, a short TTL and a pause now and then: tombstones, expiries
            // and conflicts come and go among the rest.
            let ttl = Duration::from_millis(if i % 7 == 0 { 1 } else { 60 });
            match i % 6 {
                0 => drop(s.register_by(&state, ttl, None, Some(client))),
                1 => drop(s.register_state(&state, ttl)),
                2 | 3 => drop(s.put_callback_from(
                    cb(&state, &format!("c{}", i % 4)),
                    i % 2 == 0,
                    client,
                )),
                _ => drop(s.take_callback(&state)),
            }
            if i % 50 == 49 {
                std::thread::sleep(Duration::from_millis(35));
                s.sweep();
            }
            let inner = s.lock();
            let mut shares: HashMap<Client, usize> = HashMap::new();
            for e in inner.entries.values() {
                if let Some(c) = e.owner() {
                    *shares.entry(c).or_default() += 1;
                }
            }
            assert_eq!(inner.shares, shares, "step {i}");
            assert!(inner.shares.values().all(|n| *n <= 7), "step {i}");
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
    fn callbacks_pack_and_unpack_exactly() {
        let full = Callback {
            state: "s".into(),
            code: Some(Secret::new("c\u{e9}")),
            error: Some(String::new()),
            error_description: Some("d".repeat(300)),
            iss: Some("https://as.example".into()),
            session_state: None,
            error_uri: Some("u".into()),
        };
        for cb in [
            full,
            cb("s", "x"),
            Callback {
                state: "s".into(),
                ..Callback::default()
            },
        ] {
            let packed = Packed::pack(&cb);
            assert_eq!(packed.payload_bytes(), cb.payload_bytes());
            assert_eq!(packed.unpack("s"), cb);
        }
    }

    #[test]
    fn an_entry_stays_small() {
        // What `budget::PENDING_ENTRY` was measured with: a registration, tombstone or marker
        // does not pay for a callback's fields (they are packed).
        assert!(
            std::mem::size_of::<Entry>() <= 88,
            "{}",
            std::mem::size_of::<Entry>()
        );
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
