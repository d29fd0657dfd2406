//! Long-poll registry. A waiting request is parked here as a closure (holding the tiny_http
//! request), not as a blocked worker thread, so thousands of waiters cost memory, not threads.
//! It is woken by `notify(key)` when its value lands, or by the timer thread at its deadline,
//! or by `shutdown`; whichever comes first runs the closure exactly once.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// Runs once: with `true` when the registry refused to park it (full or shut down), so the
/// caller answers at once instead; with `false` when it is woken.
pub type Wake = Box<dyn FnOnce(bool) + Send>;

#[derive(Default)]
struct Inner {
    next_id: u64,
    parked: HashMap<u64, (String, Wake)>,
    by_key: HashMap<String, Vec<u64>>,
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    closed: bool,
}

pub struct Waiters {
    inner: Mutex<Inner>,
    timer: Condvar,
    max: usize,
}

impl Waiters {
    /// Creates the registry and its timer thread.
    pub fn start(max: usize) -> Arc<Waiters> {
        let waiters = Arc::new(Waiters {
            inner: Mutex::new(Inner::default()),
            timer: Condvar::new(),
            max,
        });
        let w = waiters.clone();
        std::thread::Builder::new()
            .name("waiter-timer".into())
            .spawn(move || w.run_timer())
            .expect("spawn waiter timer thread");
        waiters
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Parks `wake` under `key` until notified or `deadline`. Refused past the cap or after
    /// shutdown (the caller answers at once instead).
    pub fn park(&self, key: String, deadline: Instant, wake: Wake) -> Result<u64, Wake> {
        let mut inner = self.lock();
        if inner.closed || inner.parked.len() >= self.max {
            return Err(wake);
        }
        inner.next_id += 1;
        let id = inner.next_id;
        inner.by_key.entry(key.clone()).or_default().push(id);
        inner.parked.insert(id, (key, wake));
        let earliest = inner
            .deadlines
            .peek()
            .is_none_or(|Reverse((at, _))| deadline < *at);
        inner.deadlines.push(Reverse((deadline, id)));
        drop(inner);
        if earliest {
            self.timer.notify_one();
        }
        Ok(id)
    }

    /// Wakes every request parked under `key`. The closures run on the caller's thread, after
    /// the lock is released.
    pub fn notify(&self, key: &str) {
        let wakes: Vec<Wake> = {
            let mut inner = self.lock();
            let ids = inner.by_key.remove(key).unwrap_or_default();
            ids.into_iter()
                .filter_map(|id| inner.parked.remove(&id).map(|(_, w)| w))
                .collect()
        };
        for wake in wakes {
            wake(false);
        }
    }

    /// Wakes everything now and refuses new waiters (graceful shutdown).
    pub fn shutdown(&self) {
        let wakes: Vec<Wake> = {
            let mut inner = self.lock();
            inner.closed = true;
            inner.by_key.clear();
            inner.deadlines.clear();
            inner.parked.drain().map(|(_, (_, w))| w).collect()
        };
        self.timer.notify_one();
        for wake in wakes {
            wake(false);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().parked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn run_timer(&self) {
        let mut inner = self.lock();
        loop {
            if inner.closed {
                return;
            }
            let now = Instant::now();
            let mut due = Vec::new();
            while let Some(Reverse((at, id))) = inner.deadlines.peek().copied() {
                if at > now {
                    break;
                }
                inner.deadlines.pop();
                if let Some((key, wake)) = inner.parked.remove(&id) {
                    if let Some(ids) = inner.by_key.get_mut(&key) {
                        ids.retain(|i| *i != id);
                        if ids.is_empty() {
                            inner.by_key.remove(&key);
                        }
                    }
                    due.push(wake);
                }
            }
            if !due.is_empty() {
                drop(inner);
                for wake in due {
                    wake(false);
                }
                inner = self.lock();
                continue;
            }
            inner = match inner.deadlines.peek() {
                Some(Reverse((at, _))) => {
                    let timeout = at.saturating_duration_since(now);
                    self.timer
                        .wait_timeout(inner, timeout)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self.timer.wait(inner).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn sender_wake(tx: &mpsc::Sender<&'static str>, label: &'static str) -> Wake {
        let tx = tx.clone();
        Box::new(move |refused| {
            assert!(!refused);
            tx.send(label).unwrap()
        })
    }

    #[test]
    fn notify_wakes_only_that_key() {
        let w = Waiters::start(10);
        let (tx, rx) = mpsc::channel();
        let far = Instant::now() + Duration::from_secs(60);
        w.park("a".into(), far, sender_wake(&tx, "a")).ok().unwrap();
        w.park("b".into(), far, sender_wake(&tx, "b")).ok().unwrap();
        w.notify("a");
        assert_eq!(rx.recv().unwrap(), "a");
        assert_eq!(w.len(), 1);
        w.notify("a");
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn deadline_wakes_in_order() {
        let w = Waiters::start(10);
        let (tx, rx) = mpsc::channel();
        let now = Instant::now();
        w.park(
            "x".into(),
            now + Duration::from_millis(80),
            sender_wake(&tx, "late"),
        )
        .ok()
        .unwrap();
        w.park(
            "y".into(),
            now + Duration::from_millis(20),
            sender_wake(&tx, "early"),
        )
        .ok()
        .unwrap();
        assert_eq!(rx.recv().unwrap(), "early");
        assert_eq!(rx.recv().unwrap(), "late");
        assert!(w.is_empty());
    }

    #[test]
    fn cap_and_shutdown() {
        let w = Waiters::start(1);
        let (tx, rx) = mpsc::channel();
        let far = Instant::now() + Duration::from_secs(60);
        w.park("a".into(), far, sender_wake(&tx, "a")).ok().unwrap();
        assert!(w.park("b".into(), far, sender_wake(&tx, "b")).is_err());
        w.shutdown();
        assert_eq!(rx.recv().unwrap(), "a");
        assert!(w.park("c".into(), far, sender_wake(&tx, "c")).is_err());
    }
}
