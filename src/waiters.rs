//! Long-poll registry. A waiting request holds a `Parked` ticket (no thread) and awaits it; it is
//! woken by `notify(key)` when news under its key lands, or by `shutdown`. Its deadline is the
//! caller's own timer. The ticket keeps its place under the caps from parking until it is
//! dropped (the request answered, or the client hung up, so hyper dropped the request's
//! future): a wake-up never gives the place back, so a request woken by news that is not its to
//! have (a callback another's retrieval secret guards) waits on without parking again, and
//! cannot be refused a place it had, which would make it answer early and tell that the
//! callback landed. Dropping the ticket frees its place at once, so clients that leave cannot
//! hold the cap.
//!
//! Two caps: `max` waiters in all, and `max_per_client` for any one client (its address, as
//! `client_ip::share_key` counts it), so one client cannot take every place.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

#[derive(Default)]
struct Inner {
    next_id: u64,
    /// Waiters by key; a key has one or a few (several clients polling one state).
    by_key: HashMap<Box<str>, Vec<(u64, Arc<Notify>)>>,
    /// Places taken per client; a client with none has no entry.
    by_client: HashMap<IpAddr, usize>,
    count: usize,
}

pub struct Waiters {
    inner: Mutex<Inner>,
    closed: AtomicBool,
    max: usize,
    max_per_client: usize,
}

/// Why a long-poll was not parked: answer at once instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every place is taken (`OAUTH_RELAY_MAX_WAITERS`).
    Full,
    /// This client holds its whole share (`OAUTH_RELAY_MAX_WAITERS_PER_CLIENT`).
    ClientShare,
    /// The server is shutting down.
    ShuttingDown,
}

/// A parked long-poll. Await `woken()` as often as needed; drop it to leave.
pub struct Parked {
    waiters: Arc<Waiters>,
    key: Box<str>,
    id: u64,
    client: Option<IpAddr>,
    wake: Arc<Notify>,
}

impl Parked {
    /// Resolves when the key is notified (or was, since the last wake-up) or the registry shuts
    /// down. The place is kept either way.
    pub async fn woken(&mut self) {
        self.wake.notified().await;
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.waiters.leave(&self.key, self.id, self.client);
    }
}

impl Waiters {
    pub fn new(max: usize, max_per_client: usize) -> Arc<Waiters> {
        Arc::new(Waiters {
            inner: Mutex::new(Inner::default()),
            closed: AtomicBool::new(false),
            max,
            max_per_client,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every mutation below is a single insert or remove: a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Parks a waiter under `key` for `client` (`None`: counted under no client's share),
    /// refused past either cap or after shutdown.
    pub fn park(self: &Arc<Self>, key: &str, client: Option<IpAddr>) -> Result<Parked, Refused> {
        let mut inner = self.lock();
        if self.is_closed() {
            return Err(Refused::ShuttingDown);
        }
        // A client at its share is told so (429) whether or not the others left room.
        if let Some(c) = client {
            if inner.by_client.get(&c).copied().unwrap_or(0) >= self.max_per_client {
                return Err(Refused::ClientShare);
            }
        }
        if inner.count >= self.max {
            return Err(Refused::Full);
        }
        if let Some(c) = client {
            *inner.by_client.entry(c).or_insert(0) += 1;
        }
        inner.next_id += 1;
        inner.count += 1;
        let id = inner.next_id;
        let key: Box<str> = key.into();
        let wake = Arc::new(Notify::new());
        inner
            .by_key
            .entry(key.clone())
            .or_default()
            .push((id, wake.clone()));
        drop(inner);
        Ok(Parked {
            waiters: self.clone(),
            key,
            id,
            client,
            wake,
        })
    }

    /// Removes one waiter (answered, timed out or gone) and frees its place.
    fn leave(&self, key: &str, id: u64, client: Option<IpAddr>) {
        let mut inner = self.lock();
        let Some(list) = inner.by_key.get_mut(key) else {
            return;
        };
        let before = list.len();
        list.retain(|(i, _)| *i != id);
        if list.len() == before {
            return;
        }
        if list.is_empty() {
            inner.by_key.remove(key);
        }
        inner.count -= 1;
        if let Some(c) = client {
            if let Some(held) = inner.by_client.get_mut(&c) {
                *held -= 1;
                if *held == 0 {
                    inner.by_client.remove(&c);
                }
            }
        }
    }

    /// Wakes every request parked under `key`. They keep their places until they answer.
    pub fn notify(&self, key: &str) {
        let wakes: Vec<Arc<Notify>> = match self.lock().by_key.get(key) {
            Some(list) => list.iter().map(|(_, wake)| wake.clone()).collect(),
            None => return,
        };
        // A waiter that is not awaiting right now (checking whether the news is its) finds the
        // wake-up stored and looks again.
        for wake in wakes {
            wake.notify_one();
        }
    }

    /// Wakes every parked request to look again (news for any of them may have been missed:
    /// the shared store's subscription was down). They keep their places.
    pub fn notify_all(&self) {
        let wakes: Vec<Arc<Notify>> = self
            .lock()
            .by_key
            .values()
            .flatten()
            .map(|(_, wake)| wake.clone())
            .collect();
        for wake in wakes {
            wake.notify_one();
        }
    }

    /// Wakes everything now and refuses new waiters (graceful shutdown).
    pub fn shutdown(&self) {
        let wakes: Vec<Arc<Notify>> = {
            let inner = self.lock();
            self.closed.store(true, Ordering::Release);
            inner
                .by_key
                .values()
                .flatten()
                .map(|(_, wake)| wake.clone())
                .collect()
        };
        for wake in wakes {
            wake.notify_one();
        }
    }

    /// Whether `shutdown` was called: a woken waiter then answers with what it has.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
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

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([192, 0, 2, last]))
    }

    #[test]
    fn notify_wakes_only_that_key() {
        let w = Waiters::new(10, 10);
        let mut a = w.park("a", None).unwrap();
        let mut b = w.park("b", None).unwrap();
        w.notify("a");
        block_on(a.woken());
        let b_woken = block_on(async {
            tokio::time::timeout(std::time::Duration::from_millis(20), b.woken())
                .await
                .is_ok()
        });
        assert!(!b_woken, "b was woken by news under a");
        drop(a);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn a_woken_waiter_keeps_its_place_until_it_leaves() {
        let w = Waiters::new(1, 1);
        let mut a = w.park("k", ip(1)).unwrap();
        w.notify("k");
        block_on(a.woken());
        // Still counted: nobody can take the place while it decides whether the news was its.
        assert_eq!(w.len(), 1);
        assert_eq!(w.park("other", ip(2)).err(), Some(Refused::Full));
        // It waits on without parking again, and is woken by the next news too.
        w.notify("k");
        block_on(a.woken());
        drop(a);
        assert!(w.is_empty());
        let _b = w
            .park("other", ip(2))
            .expect("the place of a waiter that left");
    }

    #[test]
    fn news_that_lands_while_a_waiter_is_not_awaiting_is_not_lost() {
        let w = Waiters::new(10, 10);
        let mut a = w.park("k", None).unwrap();
        // Notified between parking and awaiting (the waiter was checking the store).
        w.notify("k");
        w.notify("k");
        block_on(a.woken());
    }

    #[test]
    fn a_dropped_waiter_frees_its_place_at_once() {
        let w = Waiters::new(1, 1);
        let a = w.park("a", None).unwrap();
        assert_eq!(w.park("b", None).err(), Some(Refused::Full));
        drop(a);
        assert!(w.is_empty());
        let _b = w
            .park("b", None)
            .expect("the place of a waiter that left is free");
    }

    #[test]
    fn one_client_cannot_take_every_place() {
        let w = Waiters::new(4, 2);
        let a1 = w.park("a1", ip(1)).unwrap();
        let _a2 = w.park("a2", ip(1)).unwrap();
        assert_eq!(w.park("a3", ip(1)).err(), Some(Refused::ClientShare));
        let _b1 = w.park("b1", ip(2)).unwrap();
        let _n = w.park("n", None).unwrap();
        assert_eq!(w.park("b2", ip(2)).err(), Some(Refused::Full));
        drop(a1);
        let _a3 = w.park("a3", ip(1)).expect("a share frees with its waiter");
        assert_eq!(w.len(), 4);
    }

    #[test]
    fn several_waiters_on_one_key_are_all_woken() {
        let w = Waiters::new(10, 10);
        let mut a = w.park("k", None).unwrap();
        let mut b = w.park("k", None).unwrap();
        w.notify("k");
        block_on(async {
            a.woken().await;
            b.woken().await;
        });
        drop((a, b));
        assert!(w.is_empty());
    }

    #[test]
    fn notify_all_wakes_every_key_and_keeps_every_place() {
        let w = Waiters::new(10, 10);
        let mut a = w.park("a", ip(1)).unwrap();
        let mut b = w.park("b", None).unwrap();
        w.notify_all();
        block_on(async {
            a.woken().await;
            b.woken().await;
        });
        assert_eq!(w.len(), 2);
        assert!(!w.is_closed(), "a gap is not a shutdown");
        let _c = w.park("c", None).expect("newcomers still park");
    }

    #[test]
    fn shutdown_wakes_everyone_and_refuses_newcomers() {
        let w = Waiters::new(10, 10);
        let mut a = w.park("a", None).unwrap();
        w.shutdown();
        block_on(a.woken());
        assert!(w.is_closed());
        assert_eq!(w.park("c", None).err(), Some(Refused::ShuttingDown));
        drop(a);
        assert!(w.is_empty());
    }
}
