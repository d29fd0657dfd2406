//! Long-poll registry. A waiting request holds a `Parked` ticket (no thread) and awaits it; it is
//! woken by `notify(key)` when its value lands, or by `shutdown`. Its deadline is the caller's
//! own timer. Dropping the ticket (the client hung up, so hyper dropped the request's future)
//! frees its place at once, so clients that leave cannot hold the cap.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

#[derive(Default)]
struct Inner {
    next_id: u64,
    /// Waiters by key; a key has one or a few (several clients polling one state).
    by_key: HashMap<Box<str>, Vec<(u64, oneshot::Sender<()>)>>,
    count: usize,
    closed: bool,
}

pub struct Waiters {
    inner: Mutex<Inner>,
    max: usize,
}

/// The cap is reached or the server is shutting down: answer at once instead.
#[derive(Debug)]
pub struct Refused;

/// A parked long-poll. Await `woken()`; drop it to leave.
pub struct Parked {
    waiters: Arc<Waiters>,
    key: Box<str>,
    id: u64,
    rx: Option<oneshot::Receiver<()>>,
}

impl Parked {
    /// Resolves when the key is notified or the registry shuts down.
    pub async fn woken(&mut self) {
        if let Some(rx) = self.rx.as_mut() {
            let _ = rx.await;
        }
        self.rx = None;
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.waiters.leave(&self.key, self.id);
    }
}

impl Waiters {
    pub fn new(max: usize) -> Arc<Waiters> {
        Arc::new(Waiters {
            inner: Mutex::new(Inner::default()),
            max,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every mutation below is a single insert or remove: a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Parks a waiter under `key`, refused past the cap or after shutdown.
    pub fn park(self: &Arc<Self>, key: &str) -> Result<Parked, Refused> {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
        if inner.closed || inner.count >= self.max {
            return Err(Refused);
        }
        inner.next_id += 1;
        inner.count += 1;
        let id = inner.next_id;
        let key: Box<str> = key.into();
        inner.by_key.entry(key.clone()).or_default().push((id, tx));
        drop(inner);
        Ok(Parked {
            waiters: self.clone(),
            key,
            id,
            rx: Some(rx),
        })
    }

    /// Removes one waiter (woken, timed out or gone); a no-op when it was already notified.
    fn leave(&self, key: &str, id: u64) {
        let mut inner = self.lock();
        if let Some(list) = inner.by_key.get_mut(key) {
            let before = list.len();
            list.retain(|(i, _)| *i != id);
            let removed = before - list.len();
            if list.is_empty() {
                inner.by_key.remove(key);
            }
            inner.count -= removed;
        }
    }

    /// Wakes every request parked under `key`. They leave the registry when they resume.
    pub fn notify(&self, key: &str) {
        let senders = {
            let mut inner = self.lock();
            let list = inner.by_key.remove(key).unwrap_or_default();
            inner.count -= list.len();
            list
        };
        for (_, tx) in senders {
            let _ = tx.send(());
        }
    }

    /// Wakes everything now and refuses new waiters (graceful shutdown).
    pub fn shutdown(&self) {
        let senders: Vec<_> = {
            let mut inner = self.lock();
            inner.closed = true;
            inner.count = 0;
            inner.by_key.drain().flat_map(|(_, list)| list).collect()
        };
        for (_, tx) in senders {
            let _ = tx.send(());
        }
    }

    pub fn len(&self) -> usize {
        self.lock().count
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn notify_wakes_only_that_key() {
        let w = Waiters::new(10);
        let mut a = w.park("a").unwrap();
        let _b = w.park("b").unwrap();
        assert_eq!(w.len(), 2);
        w.notify("a");
        block_on(a.woken());
        assert_eq!(w.len(), 1);
        drop(a);
        assert_eq!(w.len(), 1, "a woken waiter that leaves frees nothing twice");
    }

    #[test]
    fn a_dropped_waiter_frees_its_place_at_once() {
        let w = Waiters::new(1);
        let a = w.park("a").unwrap();
        assert!(w.park("b").is_err(), "the cap is one");
        drop(a);
        assert!(w.is_empty());
        let _b = w
            .park("b")
            .expect("the place of a waiter that left is free");
    }

    #[test]
    fn several_waiters_on_one_key_are_all_woken() {
        let w = Waiters::new(10);
        let mut a = w.park("k").unwrap();
        let mut b = w.park("k").unwrap();
        w.notify("k");
        block_on(async {
            a.woken().await;
            b.woken().await;
        });
        assert!(w.is_empty());
    }

    #[test]
    fn shutdown_wakes_everyone_and_refuses_newcomers() {
        let w = Waiters::new(10);
        let mut a = w.park("a").unwrap();
        w.shutdown();
        block_on(a.woken());
        assert!(w.park("c").is_err());
        drop(a);
        assert!(w.is_empty());
    }
}
