//! Who gets a connection: the cap on open connections and its shares (per client, and per
//! listener when there are two), and which idle connection is closed to make room. Decisions
//! only: the accept loop (`accept.rs`) acts on them.

use super::Counters;
use crate::config::ServerOptions;
use crate::http::Listener;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// Every open connection, and what the caps and shares count of them. A connection shed to make
/// room stops counting the moment it is asked to close (it does no more work, and is gone as
/// soon as its event loop sees the request), so one newcomer sheds one connection, not one per
/// check it passes.
#[derive(Default)]
pub(super) struct Conns {
    slots: HashMap<u64, Arc<Slot>>,
    /// Counted connections: in all, on the internal listener, and per client.
    counted: usize,
    internal: usize,
    by_client: HashMap<IpAddr, usize>,
    /// Where sheds and shares reached are counted.
    counters: Arc<Counters>,
}

/// Why a newcomer was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Its client holds its whole share, every connection of it busy: 429.
    ClientShare,
    /// Its listener's share or the cap is reached with nothing idle to close: 503.
    Full,
}

impl Conns {
    pub(super) fn new(counters: Arc<Counters>) -> Conns {
        Conns {
            counters,
            ..Conns::default()
        }
    }

    /// Counted connections on `which` (the sole listener's are all of them).
    fn on(&self, which: Listener) -> usize {
        match which {
            Listener::Internal => self.internal,
            Listener::Public | Listener::Sole => self.counted - self.internal,
        }
    }

    pub(super) fn insert(&mut self, id: u64, slot: Arc<Slot>) {
        self.counted += 1;
        if slot.listener == Listener::Internal {
            self.internal += 1;
        }
        if let Some(client) = slot.client {
            *self.by_client.entry(client).or_insert(0) += 1;
        }
        slot.counted.store(true, Ordering::Relaxed);
        self.slots.insert(id, slot);
    }

    /// Stops counting a connection (shed, or gone); a no-op the second time.
    fn uncount(&mut self, slot: &Slot) {
        if !slot.counted.swap(false, Ordering::Relaxed) {
            return;
        }
        self.counted -= 1;
        if slot.listener == Listener::Internal {
            self.internal -= 1;
        }
        if let Some(client) = slot.client {
            if let Some(held) = self.by_client.get_mut(&client) {
                *held -= 1;
                if *held == 0 {
                    self.by_client.remove(&client);
                }
            }
        }
    }

    /// Asks every connection to close (the drain at shutdown).
    pub(super) fn close_all(&self) {
        for slot in self.slots.values() {
            slot.closing.store(true, Ordering::Release);
            slot.close.notify_one();
        }
    }

    /// Forgets a closed connection; false when it was not here.
    pub(super) fn remove(&mut self, id: u64) -> bool {
        match self.slots.remove(&id) {
            Some(slot) => {
                self.uncount(&slot);
                true
            }
            None => false,
        }
    }

    /// Asks the connection idle the longest among `eligible` ones to close (idle: between
    /// requests, or still receiving one; a request being answered or a parked long-poll is
    /// busy). False when there is none.
    pub(super) fn shed_oldest(&mut self, eligible: impl Fn(&Slot) -> bool) -> bool {
        let victim = self
            .slots
            .values()
            .filter(|s| {
                s.in_flight.load(Ordering::Acquire) == 0
                    && !s.closing.load(Ordering::Acquire)
                    && eligible(s)
            })
            .min_by_key(|s| s.ready_since_us.load(Ordering::Relaxed))
            .cloned();
        match victim {
            Some(slot) => {
                slot.closing.store(true, Ordering::Release);
                slot.close.notify_one();
                self.uncount(&slot);
                self.counters
                    .connections_shed
                    .fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Makes room for a newcomer on `which` from `client` (`None`: a trusted proxy), closing
    /// idle connections where a share or the cap is reached: first the client's own share,
    /// then the listener's (all but what the other listener keeps for itself), then the cap.
    pub(super) fn make_room(
        &mut self,
        opts: &ServerOptions,
        which: Listener,
        client: Option<IpAddr>,
    ) -> Result<(), Refusal> {
        if let Some(client) = client {
            if self.by_client.get(&client).copied().unwrap_or(0) >= opts.max_connections_per_client
            {
                self.counters
                    .quota_connections
                    .fetch_add(1, Ordering::Relaxed);
                if !self.shed_oldest(|s| s.client == Some(client)) {
                    return Err(Refusal::ClientShare);
                }
            }
        }
        let reserved = |l: Listener| match l {
            Listener::Public => opts.public_reserved,
            Listener::Internal => opts.internal_reserved,
            Listener::Sole => 0,
        };
        let other = match which {
            Listener::Public => Listener::Internal,
            Listener::Internal => Listener::Public,
            Listener::Sole => Listener::Sole,
        };
        let listener_full = self.on(which) >= opts.max_connections.saturating_sub(reserved(other));
        if listener_full || self.counted >= opts.max_connections {
            // The newcomer's listener may always give up one of its own; the other only one
            // beyond what it keeps for itself, and only when the newcomer's listener has room
            // left (closing one elsewhere would not make it any).
            let spare = |l: Listener| self.on(l) > reserved(l);
            let (public_spare, internal_spare) =
                (spare(Listener::Public), spare(Listener::Internal));
            let eligible = |s: &Slot| {
                s.listener == which
                    || (!listener_full
                        && match s.listener {
                            Listener::Internal => internal_spare,
                            _ => public_spare,
                        })
            };
            if !self.shed_oldest(eligible) {
                return Err(Refusal::Full);
            }
        }
        Ok(())
    }
}

/// One connection's state, as the accept loop and its requests see it.
pub(super) struct Slot {
    /// Requests whose answer is being worked on (0 or 1: hyper serves one at a time).
    pub(super) in_flight: AtomicU32,
    /// When the connection became ready for its next request (accepted, or its last answer
    /// done), in `Shared::now_us`: the start of that request's deadline, and what "idle the
    /// longest" compares.
    pub(super) ready_since_us: AtomicU64,
    /// Asked to close (shed at the cap, or shutdown).
    pub(super) closing: AtomicBool,
    pub(super) close: Notify,
    /// A head on this connection named both `Content-Length` and `Transfer-Encoding`. hyper
    /// reads such a request as chunked and drops the length before we see the headers, so the
    /// socket wrapper (`Guarded`) notices it in the bytes; the request is then refused.
    pub(super) framing_conflict: AtomicBool,
    /// The listener it came in on: whose share it counts against.
    pub(super) listener: Listener,
    /// The client whose share it counts against; `None` for a trusted proxy's.
    pub(super) client: Option<IpAddr>,
    /// Counted by the caps and shares (`Conns`); changed only under its lock.
    pub(super) counted: AtomicBool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection as `admit` would record it: on `listener`, from `client`, ready since
    /// `since` ms, busy or not.
    fn slot(listener: Listener, client: Option<u8>, since: u64, busy: bool) -> Arc<Slot> {
        Arc::new(Slot {
            in_flight: AtomicU32::new(busy as u32),
            ready_since_us: AtomicU64::new(since),
            closing: AtomicBool::new(false),
            close: Notify::new(),
            framing_conflict: AtomicBool::new(false),
            listener,
            client: client.map(ip),
            counted: AtomicBool::new(false),
        })
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    fn opts(max: usize, per_client: usize, public: usize, internal: usize) -> ServerOptions {
        ServerOptions {
            max_connections: max,
            max_connections_per_client: per_client,
            public_reserved: public,
            internal_reserved: internal,
            ..ServerOptions::default()
        }
    }

    /// Admits like `admit` does; the connection's id is `since`.
    fn admit(
        conns: &mut Conns,
        o: &ServerOptions,
        l: Listener,
        client: Option<u8>,
        since: u64,
        busy: bool,
    ) -> Result<(), &'static str> {
        match conns.make_room(o, l, client.map(ip)) {
            Ok(()) => {
                conns.insert(since, slot(l, client, since, busy));
                Ok(())
            }
            Err(Refusal::ClientShare) => Err("429"),
            Err(Refusal::Full) => Err("503"),
        }
    }

    fn shed(conns: &Conns) -> Vec<u64> {
        let mut ids: Vec<u64> = conns
            .slots
            .iter()
            .filter(|(_, s)| s.closing.load(Ordering::Acquire))
            .map(|(id, _)| *id)
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn a_client_at_its_share_gives_up_its_own_oldest_idle_connection_or_gets_429() {
        let o = opts(100, 3, 0, 0);
        let mut c = Conns::default();
        let sole = Listener::Sole;
        admit(&mut c, &o, sole, Some(9), 1, false).unwrap();
        admit(&mut c, &o, sole, Some(1), 2, false).unwrap();
        admit(&mut c, &o, sole, Some(1), 3, true).unwrap();
        admit(&mut c, &o, sole, Some(1), 4, false).unwrap();
        // At its share: its oldest idle one (2) goes, not another client's older one (1), not
        // its busy one (3).
        admit(&mut c, &o, sole, Some(1), 5, false).unwrap();
        assert_eq!(shed(&c), [2]);
        admit(&mut c, &o, sole, Some(1), 6, false).unwrap();
        assert_eq!(shed(&c), [2, 4]);
        // Every connection it holds is busy now: refused, and nothing else is closed for it.
        for id in [5, 6] {
            c.slots[&id].in_flight.store(1, Ordering::Release);
        }
        assert_eq!(admit(&mut c, &o, sole, Some(1), 7, false), Err("429"));
        assert_eq!(shed(&c), [2, 4]);
        // Others are not held to its share, nor is a trusted proxy's connection (no client).
        admit(&mut c, &o, sole, Some(2), 8, false).unwrap();
        for id in 10..20 {
            admit(&mut c, &o, sole, None, id, false).unwrap();
        }
        assert_eq!(shed(&c), [2, 4]);
        // A shed connection that closes frees nothing twice.
        assert!(c.remove(2));
        assert!(!c.remove(2));
        assert_eq!((c.counted, c.by_client[&ip(1)]), (15, 3));
    }

    #[test]
    fn a_public_flood_never_takes_what_the_internal_listener_keeps() {
        // 10 connections: the public listener may hold 10 - 3, the internal one 10 - 2.
        let o = opts(10, usize::MAX, 2, 3);
        let mut c = Conns::default();
        let (public, internal) = (Listener::Public, Listener::Internal);
        // Three idle internal connections first (a scraper's keep-alive, say): the oldest.
        for id in 0..3 {
            admit(&mut c, &o, internal, Some(1), id, false).unwrap();
        }
        for id in 10..17 {
            admit(&mut c, &o, public, Some(2), id, false).unwrap();
        }
        assert_eq!(c.on(public), 7);
        // The flood goes on: each newcomer closes the oldest public connection, never one of
        // the older internal ones.
        for id in 17..40 {
            admit(&mut c, &o, public, Some(2), id, false).unwrap();
            assert!(shed(&c).iter().all(|id| *id >= 10), "{:?}", shed(&c));
        }
        assert_eq!((c.on(public), c.on(internal)), (7, 3));
        // Busy, it is refused rather than take the internal listener's room.
        for s in c.slots.values() {
            if s.listener == public {
                s.in_flight.store(1, Ordering::Release);
            }
        }
        assert_eq!(admit(&mut c, &o, public, Some(3), 40, false), Err("503"));
        // The internal listener still gets in, on what it keeps: an idle connection of its own
        // makes room (the cap is reached), never a public one.
        admit(&mut c, &o, internal, Some(4), 41, false).unwrap();
        assert_eq!(shed(&c).iter().filter(|id| **id < 10).count(), 1);
        assert_eq!((c.on(public), c.on(internal), c.counted), (7, 3, 10));
    }

    #[test]
    fn at_the_cap_a_listener_takes_back_only_what_the_other_holds_beyond_its_reserve() {
        let o = opts(10, usize::MAX, 2, 3);
        let mut c = Conns::default();
        let (public, internal) = (Listener::Public, Listener::Internal);
        // The internal listener holds 8 (its limit: 10 - 2), idle and older than anything.
        for id in 0..8 {
            admit(&mut c, &o, internal, Some(1), id, false).unwrap();
        }
        // The public one has 2 of its own left before the cap...
        admit(&mut c, &o, public, Some(2), 10, true).unwrap();
        admit(&mut c, &o, public, Some(2), 11, true).unwrap();
        assert!(shed(&c).is_empty());
        // ...and then takes back internal ones, oldest first, down to the internal reserve.
        for id in 12..17 {
            admit(&mut c, &o, public, Some(2), id, true).unwrap();
        }
        assert_eq!(shed(&c), [0, 1, 2, 3, 4]);
        assert_eq!((c.on(public), c.on(internal)), (7, 3));
        // The public listener is at its limit (10 - 3) with everything busy: 503.
        assert_eq!(admit(&mut c, &o, public, Some(2), 17, false), Err("503"));
        assert_eq!(c.on(internal), 3);
    }

    #[test]
    fn what_admission_does_is_counted_where_it_is_reported() {
        let counters = Arc::new(Counters::default());
        let mut c = Conns::new(counters.clone());
        let o = opts(3, 2, 0, 0);
        let sole = Listener::Sole;
        admit(&mut c, &o, sole, Some(1), 1, false).unwrap();
        admit(&mut c, &o, sole, Some(1), 2, true).unwrap();
        // At its share: its idle one is shed for it (one shed, one share reached).
        admit(&mut c, &o, sole, Some(1), 3, true).unwrap();
        // At its share, all busy: refused (another share reached, nothing shed).
        assert_eq!(admit(&mut c, &o, sole, Some(1), 4, false), Err("429"));
        // At the cap with nothing idle: refused, nothing shed.
        admit(&mut c, &o, sole, Some(2), 5, true).unwrap();
        assert_eq!(admit(&mut c, &o, sole, Some(3), 6, false), Err("503"));
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        assert_eq!(
            (
                load(&counters.connections_shed),
                load(&counters.quota_connections)
            ),
            (1, 2)
        );
        // The drain asks every connection to close.
        c.close_all();
        assert!(c.slots.values().all(|s| s.closing.load(Ordering::Acquire)));
    }
}
