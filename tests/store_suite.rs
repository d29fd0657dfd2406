//! The store's contract, written once against `&dyn Store` and run for every backend, so a new
//! backend (Redis, for several replicas) must give exactly the same guarantees.

use oauth_relay::secret::Secret;
use oauth_relay::store::memory::MemoryStore;
use oauth_relay::store::{Callback, Put, Register, Store, Take};
use std::sync::Arc;
use std::time::Duration;

fn cb(state: &str, code: &str) -> Callback {
    Callback {
        state: state.into(),
        code: Some(Secret::new(code)),
        error: None,
        error_description: None,
    }
}

/// Each check gets a fresh store with this TTL and cap.
type Factory<'a> = &'a dyn Fn(Duration, usize) -> Arc<dyn Store>;

fn first_callback_wins(new: Factory) {
    let s = new(Duration::from_secs(60), 10);
    assert_eq!(s.put_callback(cb("a", "1"), false).unwrap(), Put::Stored);
    assert_eq!(s.put_callback(cb("a", "1"), false).unwrap(), Put::Repeated);
    assert_eq!(s.put_callback(cb("a", "2"), false).unwrap(), Put::Conflict);
    match s.take_callback("a").unwrap() {
        Take::Taken(c) => assert_eq!(c.code.unwrap().expose(), "1"),
        other => panic!("{other:?}"),
    }
}

fn taken_once(new: Factory) {
    let s = new(Duration::from_secs(60), 10);
    assert_eq!(s.take_callback("a").unwrap(), Take::Missing);
    assert!(!s.has_callback("a").unwrap());
    s.put_callback(cb("a", "1"), false).unwrap();
    assert!(s.has_callback("a").unwrap());
    assert!(matches!(s.take_callback("a").unwrap(), Take::Taken(_)));
    assert_eq!(s.take_callback("a").unwrap(), Take::AlreadyTaken);
    assert!(s.has_callback("a").unwrap());
    // A reload after retrieval is recognised; a different code is still refused.
    assert_eq!(s.put_callback(cb("a", "1"), false).unwrap(), Put::Repeated);
    assert_eq!(s.put_callback(cb("a", "2"), false).unwrap(), Put::Conflict);
    assert_eq!(s.active_callbacks().unwrap(), 1);
}

fn taken_once_under_concurrency(new: Factory) {
    let s = new(Duration::from_secs(60), 1000);
    for round in 0..50 {
        let state = format!("r{round}");
        s.put_callback(cb(&state, "c"), false).unwrap();
        let wins: usize = std::thread::scope(|scope| {
            (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        matches!(s.take_callback(&state).unwrap(), Take::Taken(_)) as usize
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap())
                .sum()
        });
        assert_eq!(wins, 1, "round {round}");
    }
}

fn created_once_under_concurrency(new: Factory) {
    let s = new(Duration::from_secs(60), 1000);
    let stored: usize = std::thread::scope(|scope| {
        (0..8)
            .map(|i| {
                let s = &s;
                scope.spawn(move || {
                    (s.put_callback(cb("one", &format!("c{i}")), false).unwrap() == Put::Stored)
                        as usize
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum()
    });
    assert_eq!(stored, 1);
}

fn bounded(new: Factory) {
    let s = new(Duration::from_secs(60), 2);
    assert_eq!(s.put_callback(cb("a", "1"), false).unwrap(), Put::Stored);
    assert!(matches!(
        s.register_state("b", Duration::from_secs(60)).unwrap(),
        Register::Registered { .. }
    ));
    assert_eq!(s.put_callback(cb("c", "1"), false).unwrap(), Put::Full);
    assert_eq!(
        s.register_state("d", Duration::from_secs(60)).unwrap(),
        Register::Full
    );
    // A registered state may still receive its callback at the cap.
    assert_eq!(s.put_callback(cb("b", "1"), false).unwrap(), Put::Stored);
    assert!(matches!(s.take_callback("a").unwrap(), Take::Taken(_)));
    assert_eq!(s.put_callback(cb("c", "1"), false).unwrap(), Put::Stored);
}

fn registration(new: Factory) {
    let s = new(Duration::from_secs(60), 10);
    assert_eq!(
        s.put_callback(cb("r", "1"), true).unwrap(),
        Put::NotRegistered
    );
    assert!(matches!(
        s.register_state("r", Duration::from_secs(60)).unwrap(),
        Register::Registered { .. }
    ));
    assert_eq!(
        s.register_state("r", Duration::from_secs(60)).unwrap(),
        Register::Exists
    );
    assert!(!s.has_callback("r").unwrap());
    assert_eq!(s.take_callback("r").unwrap(), Take::Missing);
    assert_eq!(s.active_callbacks().unwrap(), 0);
    assert_eq!(s.put_callback(cb("r", "1"), true).unwrap(), Put::Stored);
    assert_eq!(s.active_callbacks().unwrap(), 1);
}

fn expiry(new: Factory) {
    let s = new(Duration::from_millis(300), 10);
    s.put_callback(cb("e", "1"), false).unwrap();
    s.register_state("reg", Duration::from_millis(300)).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    s.sweep();
    assert_eq!(s.take_callback("e").unwrap(), Take::Missing);
    assert!(!s.has_callback("e").unwrap());
    assert_eq!(
        s.put_callback(cb("reg", "1"), true).unwrap(),
        Put::NotRegistered
    );
    assert_eq!(s.active_callbacks().unwrap(), 0);
    // An expired state can be used afresh.
    assert_eq!(s.put_callback(cb("e", "2"), false).unwrap(), Put::Stored);
}

fn provider_errors_round_trip(new: Factory) {
    let s = new(Duration::from_secs(60), 10);
    let c = Callback {
        state: "p".into(),
        code: None,
        error: Some("access_denied".into()),
        error_description: Some("User cancelled".into()),
    };
    s.put_callback(c.clone(), false).unwrap();
    assert_eq!(s.take_callback("p").unwrap(), Take::Taken(c));
}

fn run_suite(new: Factory) {
    first_callback_wins(new);
    taken_once(new);
    taken_once_under_concurrency(new);
    created_once_under_concurrency(new);
    bounded(new);
    registration(new);
    expiry(new);
    provider_errors_round_trip(new);
}

#[test]
fn memory_store_keeps_the_contract() {
    run_suite(&|ttl, max| Arc::new(MemoryStore::new(ttl, max)));
}
