//! The in-process outbox of a single replica: events by age, the unregistered ones also apart
//! (the cap drops those first, see outbox.rs), and a due-time index, under one mutex; a
//! condition variable wakes the delivery threads. Events do not outlive the process (with Redis
//! they do, see redis_outbox.rs).

use super::outbox::{Claimed, Class, Outbox, OutboxError, Pushed};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

struct Entry {
    id: String,
    body: String,
    created_ms: u64,
    attempts: u32,
    /// `None` while a delivery thread holds it.
    due: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    /// By sequence number: the first is the oldest.
    entries: BTreeMap<u64, Entry>,
    /// The sequence numbers of the unregistered events among them.
    unregistered: BTreeSet<u64>,
    due: BTreeSet<(Instant, u64)>,
    next_seq: u64,
}

pub struct MemoryOutbox {
    inner: Mutex<Inner>,
    wake: Condvar,
    max: usize,
}

impl MemoryOutbox {
    pub fn new(max: usize) -> Self {
        MemoryOutbox {
            inner: Mutex::new(Inner::default()),
            wake: Condvar::new(),
            max: max.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every mutation keeps the two maps consistent before it can panic.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn seq_of(token: &str) -> Option<u64> {
    token.parse().ok()
}

impl Inner {
    fn remove(&mut self, seq: u64) -> Option<Entry> {
        let e = self.entries.remove(&seq)?;
        if let Some(at) = e.due {
            self.due.remove(&(at, seq));
        }
        self.unregistered.remove(&seq);
        Some(e)
    }
}

impl Outbox for MemoryOutbox {
    fn push(
        &self,
        id: &str,
        body: &str,
        created_ms: u64,
        class: Class,
    ) -> Result<Pushed, OutboxError> {
        let now = Instant::now();
        let mut inner = self.lock();
        let mut pushed = Pushed::default();
        while inner.entries.len() >= self.max {
            if let Some(&seq) = inner.unregistered.first() {
                inner.remove(seq);
                pushed.dropped_unregistered += 1;
            } else if class == Class::Unregistered {
                // Only registered events fill the outbox: they stay.
                pushed.dropped_unregistered += 1;
                return Ok(pushed);
            } else if let Some(&seq) = inner.entries.keys().next() {
                inner.remove(seq);
                pushed.dropped_registered += 1;
            }
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.entries.insert(
            seq,
            Entry {
                id: id.to_string(),
                body: body.to_string(),
                created_ms,
                attempts: 0,
                due: Some(now),
            },
        );
        inner.due.insert((now, seq));
        if class == Class::Unregistered {
            inner.unregistered.insert(seq);
        }
        drop(inner);
        self.wake.notify_one();
        pushed.queued = true;
        Ok(pushed)
    }

    fn claim(&self) -> Result<Option<Claimed>, OutboxError> {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(&(at, seq)) = inner.due.first() else {
            return Ok(None);
        };
        if at > now {
            return Ok(None);
        }
        inner.due.pop_first();
        let entry = inner
            .entries
            .get_mut(&seq)
            .expect("every due item has its entry");
        entry.due = None;
        Ok(Some(Claimed {
            id: entry.id.clone(),
            body: entry.body.clone(),
            created_ms: entry.created_ms,
            attempts: entry.attempts,
            token: seq.to_string(),
        }))
    }

    fn remove(&self, claim: &Claimed) -> Result<(), OutboxError> {
        if let Some(seq) = seq_of(&claim.token) {
            self.lock().remove(seq);
        }
        Ok(())
    }

    fn reschedule(&self, claim: &Claimed, delay: Duration) -> Result<(), OutboxError> {
        let Some(seq) = seq_of(&claim.token) else {
            return Ok(());
        };
        let at = Instant::now() + delay;
        let mut inner = self.lock();
        // Dropped at the cap meanwhile: nothing to put back.
        if let Some(e) = inner.entries.get_mut(&seq) {
            e.attempts += 1;
            e.due = Some(at);
            inner.due.insert((at, seq));
        }
        drop(inner);
        self.wake.notify_one();
        Ok(())
    }

    fn count(&self) -> Result<usize, OutboxError> {
        Ok(self.lock().entries.len())
    }

    fn count_now(&self) -> Option<usize> {
        Some(self.lock().entries.len())
    }

    fn wait(&self, at_most: Duration) {
        let inner = self.lock();
        let until_due = inner
            .due
            .first()
            .map(|(at, _)| at.saturating_duration_since(Instant::now()))
            .unwrap_or(at_most)
            .min(at_most);
        if until_due.is_zero() {
            return;
        }
        let _ = self.wake.wait_timeout(inner, until_due);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(dropped_registered: usize, dropped_unregistered: usize) -> Pushed {
        Pushed {
            queued: true,
            dropped_registered,
            dropped_unregistered,
        }
    }

    #[test]
    fn claims_in_order_retries_later_and_drops_the_oldest_at_the_cap() {
        let o = MemoryOutbox::new(3);
        for i in 0..3 {
            let pushed = o.push(&format!("e{i}"), "{}", i, Class::Registered);
            assert_eq!(pushed.unwrap(), queued(0, 0));
        }
        let first = o.claim().unwrap().unwrap();
        assert_eq!((first.id.as_str(), first.attempts), ("e0", 0));
        o.reschedule(&first, Duration::from_secs(3600)).unwrap();
        let second = o.claim().unwrap().unwrap();
        assert_eq!(second.id, "e1");
        o.remove(&second).unwrap();
        assert_eq!(o.count().unwrap(), 2);
        // e0 (waiting for its retry) is the oldest: the fifth event pushes it out.
        assert_eq!(
            o.push("e3", "{}", 3, Class::Registered).unwrap(),
            queued(0, 0)
        );
        assert_eq!(
            o.push("e4", "{}", 4, Class::Registered).unwrap(),
            queued(1, 0)
        );
        assert_eq!(o.count().unwrap(), 3);
        let ids: Vec<String> = std::iter::from_fn(|| o.claim().unwrap().map(|c| c.id)).collect();
        assert_eq!(ids, ["e2", "e3", "e4"]);
        // A lapsed claim changes nothing.
        o.reschedule(&first, Duration::ZERO).unwrap();
        assert!(o.claim().unwrap().is_none());
    }

    #[test]
    fn unregistered_events_never_push_out_the_others() {
        let o = MemoryOutbox::new(4);
        let ids = |o: &MemoryOutbox| -> Vec<String> {
            let inner = o.lock();
            inner.entries.values().map(|e| e.id.clone()).collect()
        };
        // A flood of unregistered events fills the outbox, the newest kept.
        for i in 0..10 {
            let pushed = o.push(&format!("junk{i}"), "{}", i, Class::Unregistered);
            assert_eq!(pushed.unwrap(), queued(0, usize::from(i >= 4)));
        }
        assert_eq!(ids(&o), ["junk6", "junk7", "junk8", "junk9"]);
        // Registered events push the unregistered ones out, oldest first...
        for i in 0..4 {
            let pushed = o.push(&format!("real{i}"), "{}", 10 + i, Class::Registered);
            assert_eq!(pushed.unwrap(), queued(0, 1));
        }
        assert_eq!(ids(&o), ["real0", "real1", "real2", "real3"]);
        // ... and then no unregistered event gets in: it is dropped itself.
        let refused = o.push("junk10", "{}", 20, Class::Unregistered).unwrap();
        assert_eq!(
            refused,
            Pushed {
                queued: false,
                dropped_registered: 0,
                dropped_unregistered: 1
            }
        );
        assert_eq!(ids(&o), ["real0", "real1", "real2", "real3"]);
        // Among registered events the oldest makes room, as before.
        assert_eq!(
            o.push("real4", "{}", 21, Class::Registered).unwrap(),
            queued(1, 0)
        );
        assert_eq!(ids(&o), ["real1", "real2", "real3", "real4"]);
        // A delivered event frees its place for anyone.
        let claim = o.claim().unwrap().unwrap();
        o.remove(&claim).unwrap();
        assert_eq!(
            o.push("junk11", "{}", 22, Class::Unregistered).unwrap(),
            queued(0, 0)
        );
        assert_eq!(
            o.push("real5", "{}", 23, Class::Registered).unwrap(),
            queued(0, 1)
        );
        assert!(o.lock().unregistered.is_empty());
        assert_eq!(o.count().unwrap(), 4);
    }
}
