//! The store's contract, written once against `&dyn Store` and run for every backend, so a new
//! backend (Redis, for several replicas) must give exactly the same guarantees: taken once,
//! conflicts that hand out nothing, registrations that say "not yet" and "expired" to their
//! owner only and leave a tombstone, per-client shares, and every kept parameter round trip.

use crate::support;

use oauth_relay::config::RedisConfig;
use oauth_relay::keyring::Keyring;
use oauth_relay::kv::settings::{HostPort, SentinelSettings, Topology};
use oauth_relay::kv::{Kv, KvSettings};
use oauth_relay::secret::{BindingHash, RetrievalHash, Secret};
use oauth_relay::store::memory::MemoryStore;
use oauth_relay::store::redis::RedisStore;
use oauth_relay::store::{
    Callback, Client, Handoff, Proof, Put, Register, Session, SessionStatus, StateTake, Store,
    Take, TokenTake, Tokens, MAX_BROWSERS,
};
use std::sync::Arc;
use std::time::Duration;
use std::time::SystemTime;
use support::redis_topology::{ClusterSet, SentinelSet};

fn cb(state: &str, code: &str) -> Callback {
    Callback {
        state: state.into(),
        code: Some(Secret::new(code)),
        ..Callback::default()
    }
}

const KEY: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// Each check gets a fresh store with this TTL and cap.
type Factory<'a> = &'a dyn Fn(Duration, usize) -> Arc<dyn Store>;

/// The same, with each client's share of the cap.
type SharedFactory<'a> = &'a dyn Fn(Duration, usize, usize) -> Arc<dyn Store>;

/// Two different callbacks for one state: nobody can tell which is the person's (a stranger
/// who saw the state may have sent theirs first), so neither is handed out, and the state says
/// so until it expires. A reload of either changes nothing.
fn a_second_different_callback_puts_the_state_in_conflict(new: Factory) {
    let s = new(Duration::from_secs(60), 10);
    assert_eq!(s.put_callback(cb("a", "1"), false).unwrap(), Put::Stored);
    assert_eq!(s.put_callback(cb("a", "1"), false).unwrap(), Put::Repeated);
    assert_eq!(
        s.put_callback(cb("a", "2"), false).unwrap(),
        Put::Conflicted
    );
    for again in ["1", "2", "3"] {
        assert_eq!(
            s.put_callback(cb("a", again), false).unwrap(),
            Put::InConflict
        );
    }
    assert!(s.has_callback("a").unwrap());
    for _ in 0..2 {
        assert_eq!(s.take_callback("a").unwrap(), Take::Conflict);
    }
    assert_eq!(s.active_callbacks().unwrap(), 1);
    // Nothing usable went to anyone: a stranger is told nothing at all.
    assert_eq!(s.take_callback_by("a", &stranger()).unwrap(), Take::Missing);
}

/// A registered state, guarded by its owner's secret: a stranger's callback first, then the
/// person's. The owner learns of the conflict and gets no code; nobody else learns anything.
fn a_strangers_callback_does_not_pre_empt_a_registered_state(new: Factory) {
    let s = new(Duration::from_secs(60), 10);
    let owner = RetrievalHash::of_secret("owner");
    s.register_guarded("g", Duration::from_secs(60), Some(&owner))
        .unwrap();
    assert_eq!(
        s.put_callback(cb("g", "THEIRS"), true).unwrap(),
        Put::StoredRegistered
    );
    assert!(s.has_callback_for("g", &holder_of("owner")).unwrap());
    assert_eq!(
        s.put_callback(cb("g", "MINE"), true).unwrap(),
        Put::Conflicted
    );
    assert_eq!(
        s.put_callback(cb("g", "THEIRS"), true).unwrap(),
        Put::InConflict
    );
    assert!(s.has_callback_for("g", &holder_of("owner")).unwrap());
    assert_eq!(
        s.take_callback_by("g", &holder_of("owner")).unwrap(),
        Take::Conflict
    );
    for proof in [stranger(), Proof::authorized(), holder_of("THEIRS")] {
        assert!(!s.has_callback_for("g", &proof).unwrap());
        assert_eq!(s.take_callback_by("g", &proof).unwrap(), Take::Missing);
    }
    // A different callback after the owner took the first: refused, the owner keeps it.
    s.register_guarded("h", Duration::from_secs(60), Some(&owner))
        .unwrap();
    s.put_callback(cb("h", "MINE"), true).unwrap();
    assert!(matches!(
        s.take_callback_by("h", &holder_of("owner")).unwrap(),
        Take::Taken(_)
    ));
    assert_eq!(
        s.put_callback(cb("h", "THEIRS"), true).unwrap(),
        Put::Conflict
    );
    assert_eq!(
        s.take_callback_by("h", &holder_of("owner")).unwrap(),
        Take::AlreadyTaken
    );
}

/// A registration says "not yet" (with the time it has left) to its owner while it waits, and
/// "expired" once it ended; to anyone else nothing. Expired, it stays a tombstone for the
/// store's TTL: nobody may register the state again (a late sign-in would go to them), and a
/// late callback is refused. Then it is forgotten.
fn registrations_say_pending_then_expired_and_leave_a_tombstone(new: Factory) {
    let ttl = Duration::from_millis(1500);
    let s = new(ttl, 10);
    let owner = RetrievalHash::of_secret("owner");
    let lives = Duration::from_millis(400);
    s.register_guarded("t", lives, Some(&owner)).unwrap();
    s.register_state("u", lives).unwrap();
    match s.take_callback_by("t", &holder_of("owner")).unwrap() {
        Take::Pending { expires_in } => {
            assert!(
                expires_in <= lives && !expires_in.is_zero(),
                "{expires_in:?}"
            )
        }
        other => panic!("{other:?}"),
    }
    // Unguarded: the API token check is what opens it.
    assert!(matches!(
        s.take_callback("u").unwrap(),
        Take::Pending { .. }
    ));
    for proof in [stranger(), Proof::authorized(), holder_of("other")] {
        assert_eq!(s.take_callback_by("t", &proof).unwrap(), Take::Missing);
    }
    assert!(!s.has_callback_for("t", &holder_of("owner")).unwrap());
    support::eventually("the registration to end", || {
        (s.take_callback_by("t", &holder_of("owner")).unwrap() == Take::Expired).then_some(())
    });
    s.sweep();
    // "u" was registered just after "t": it may outlive it by a millisecond.
    support::eventually("the second registration to end", || {
        (s.take_callback("u").unwrap() == Take::Expired).then_some(())
    });
    assert!(s.has_callback_for("t", &holder_of("owner")).unwrap());
    for proof in [stranger(), Proof::authorized(), holder_of("other")] {
        assert!(!s.has_callback_for("t", &proof).unwrap());
        assert_eq!(s.take_callback_by("t", &proof).unwrap(), Take::Missing);
    }
    let other = RetrievalHash::of_secret("other");
    for state in ["t", "u"] {
        assert_eq!(
            s.register_guarded(state, Duration::from_secs(60), Some(&other))
                .unwrap(),
            Register::Exists,
            "{state}"
        );
        assert_eq!(
            s.register_state(state, Duration::from_secs(60)).unwrap(),
            Register::Exists
        );
        for registered_only in [false, true] {
            assert_eq!(
                s.put_callback(cb(state, "late"), registered_only).unwrap(),
                Put::Expired
            );
        }
    }
    // The tombstone holds a place under the cap, and counts no callback.
    assert_eq!(s.active_callbacks().unwrap(), 0);
    // Gone after the TTL: the state is unknown again.
    support::eventually("the tombstone to go", || {
        s.sweep();
        (s.take_callback_by("t", &holder_of("owner")).unwrap() == Take::Missing).then_some(())
    });
    assert!(matches!(
        s.register_guarded("t", Duration::from_secs(60), Some(&other))
            .unwrap(),
        Register::Registered { .. }
    ));
}

/// Tombstones count against the cap like the registrations they were.
fn tombstones_are_bounded(new: Factory) {
    let s = new(Duration::from_secs(60), 2);
    s.register_state("a", Duration::from_millis(100)).unwrap();
    s.register_state("b", Duration::from_millis(100)).unwrap();
    support::eventually("both registrations to end", || {
        (s.take_callback("a").unwrap() == Take::Expired
            && s.take_callback("b").unwrap() == Take::Expired)
            .then_some(())
    });
    s.sweep();
    assert_eq!(
        s.register_state("c", Duration::from_secs(1)).unwrap(),
        Register::Full
    );
    assert_eq!(s.put_callback(cb("c", "1"), false).unwrap(), Put::Full);
}

/// Each client holds at most its share of pending entries: callbacks for unregistered states
/// and registrations without the API token. A callback for a registered state counts against
/// its registration's client; retrieval and expiry free the place; a trusted registration
/// counts against nobody's. An IPv6 client is its /64.
fn shares(new: SharedFactory) {
    let ip = |s: &str| Client::of(Some(s.parse().unwrap()));
    let (a, b) = (ip("192.0.2.1"), ip("198.51.100.7"));
    let s = new(Duration::from_secs(60), 100, 2);
    assert_eq!(
        s.put_callback_from(cb("a1", "1"), false, a).unwrap(),
        Put::Stored
    );
    assert_eq!(
        s.put_callback_from(cb("a2", "1"), false, a).unwrap(),
        Put::Stored
    );
    assert_eq!(
        s.put_callback_from(cb("a3", "1"), false, a).unwrap(),
        Put::Quota
    );
    assert_eq!(
        s.register_by("a3", Duration::from_secs(60), None, Some(a))
            .unwrap(),
        Register::Quota
    );
    // Nothing was stored for the refused one; a reload of a stored one is still a reload.
    assert_eq!(s.take_callback("a3").unwrap(), Take::Missing);
    assert_eq!(
        s.put_callback_from(cb("a1", "1"), false, a).unwrap(),
        Put::Repeated
    );
    // Others are served; a trusted registration counts against nobody.
    assert_eq!(
        s.put_callback_from(cb("b1", "1"), false, b).unwrap(),
        Put::Stored
    );
    assert!(matches!(
        s.register_by("t1", Duration::from_secs(60), None, None)
            .unwrap(),
        Register::Registered { .. }
    ));
    assert!(matches!(
        s.register_by("b2", Duration::from_secs(60), None, Some(b))
            .unwrap(),
        Register::Registered { .. }
    ));
    assert_eq!(
        s.register_by("b3", Duration::from_secs(60), None, Some(b))
            .unwrap(),
        Register::Quota
    );
    // A's callback for B's registration counts against B's share, which has room for it.
    assert_eq!(
        s.put_callback_from(cb("b2", "1"), false, a).unwrap(),
        Put::StoredRegistered
    );
    // So does one for the trusted registration (nobody's).
    assert_eq!(
        s.put_callback_from(cb("t1", "1"), false, a).unwrap(),
        Put::StoredRegistered
    );
    // A conflict still holds its place.
    assert_eq!(
        s.put_callback_from(cb("a1", "2"), false, b).unwrap(),
        Put::Conflicted
    );
    assert_eq!(
        s.put_callback_from(cb("a4", "1"), false, a).unwrap(),
        Put::Quota
    );
    // A retrieval frees one place of A's.
    assert!(matches!(s.take_callback("a2").unwrap(), Take::Taken(_)));
    assert_eq!(
        s.put_callback_from(cb("a4", "1"), false, a).unwrap(),
        Put::Stored
    );
    assert_eq!(
        s.put_callback_from(cb("a5", "1"), false, a).unwrap(),
        Put::Quota
    );
    // IPv6: one /64 is one client; the next /64 another; an IPv4-mapped address is IPv4.
    let v6 = ip("2001:db8::1");
    assert_eq!(
        s.put_callback_from(cb("v1", "1"), false, v6).unwrap(),
        Put::Stored
    );
    assert_eq!(
        s.put_callback_from(cb("v2", "1"), false, ip("2001:db8::ffff:2"))
            .unwrap(),
        Put::Stored
    );
    assert_eq!(
        s.put_callback_from(cb("v3", "1"), false, ip("2001:db8::3"))
            .unwrap(),
        Put::Quota
    );
    assert_eq!(
        s.put_callback_from(cb("v3", "1"), false, ip("2001:db8:0:1::3"))
            .unwrap(),
        Put::Stored
    );
    assert_eq!(
        s.put_callback_from(cb("m1", "1"), false, ip("::ffff:192.0.2.1"))
            .unwrap(),
        Put::Quota
    );
    // Requests without an address are one client.
    assert_eq!(s.put_callback(cb("n1", "1"), false).unwrap(), Put::Stored);
    assert_eq!(s.put_callback(cb("n2", "1"), false).unwrap(), Put::Stored);
    assert_eq!(s.put_callback(cb("n3", "1"), false).unwrap(), Put::Quota);

    // Expiry frees the place, and a registration's tombstone holds it until it goes.
    let s = new(Duration::from_millis(300), 100, 1);
    assert_eq!(
        s.put_callback_from(cb("x", "1"), false, a).unwrap(),
        Put::Stored
    );
    assert_eq!(
        s.put_callback_from(cb("y", "1"), false, a).unwrap(),
        Put::Quota
    );
    support::eventually("A's callback to expire", || {
        s.sweep();
        (s.put_callback_from(cb("y", "1"), false, a).unwrap() == Put::Stored).then_some(())
    });
    assert!(matches!(
        s.register_by("r", Duration::from_millis(100), None, Some(b))
            .unwrap(),
        Register::Registered { .. }
    ));
    support::eventually("B's registration to end", || {
        (s.take_callback("r").unwrap() == Take::Expired).then_some(())
    });
    assert_eq!(
        s.put_callback_from(cb("z", "1"), false, b).unwrap(),
        Put::Quota
    );
    support::eventually("B's tombstone to go", || {
        s.sweep();
        (s.put_callback_from(cb("z", "1"), false, b).unwrap() == Put::Stored).then_some(())
    });
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
    let outcomes: Vec<Put> = std::thread::scope(|scope| {
        (0..8)
            .map(|i| {
                let s = &s;
                scope.spawn(move || s.put_callback(cb("one", &format!("c{i}")), false).unwrap())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect()
    });
    let count = |p: Put| outcomes.iter().filter(|o| **o == p).count();
    assert_eq!(count(Put::Stored), 1, "{outcomes:?}");
    assert_eq!(count(Put::Conflicted), 1, "{outcomes:?}");
    assert_eq!(count(Put::InConflict), 6, "{outcomes:?}");
    assert_eq!(s.take_callback("one").unwrap(), Take::Conflict);
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
    // A registered state may still receive its callback at the cap (and is told apart from an
    // unregistered one: anyone can make those).
    assert_eq!(
        s.put_callback(cb("b", "1"), false).unwrap(),
        Put::StoredRegistered
    );
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
    assert!(matches!(
        s.take_callback("r").unwrap(),
        Take::Pending { .. }
    ));
    assert_eq!(s.active_callbacks().unwrap(), 0);
    assert_eq!(
        s.put_callback(cb("r", "1"), true).unwrap(),
        Put::StoredRegistered
    );
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
    // The registration is a tombstone for the TTL, then forgotten.
    assert_eq!(s.put_callback(cb("reg", "1"), true).unwrap(), Put::Expired);
    support::eventually("the tombstone to go", || {
        s.sweep();
        (s.put_callback(cb("reg", "1"), true).unwrap() == Put::NotRegistered).then_some(())
    });
    assert_eq!(s.active_callbacks().unwrap(), 0);
    // An expired state can be used afresh.
    assert_eq!(s.put_callback(cb("e", "2"), false).unwrap(), Put::Stored);
}

/// Every parameter kept (RFC 9207's `iss`, OpenID's `session_state`, RFC 6749's `error_uri`,
/// the error texts) comes back as it was sent, on any backend.
fn kept_parameters_round_trip(new: Factory) {
    let s = new(Duration::from_secs(60), 10);
    let c = Callback {
        state: "p".into(),
        code: None,
        error: Some("access_denied".into()),
        error_description: Some("User cancelled".into()),
        iss: Some("https://as.example/tenant?x=\"1\"".into()),
        session_state: Some("a1b2.c3".into()),
        error_uri: Some("https://as.example/errors/access_denied".into()),
    };
    s.put_callback(c.clone(), false).unwrap();
    assert_eq!(s.take_callback("p").unwrap(), Take::Taken(c));
    let c = Callback {
        state: "i".into(),
        code: Some(Secret::new("code")),
        iss: Some("https://as.example".into()),
        ..Callback::default()
    };
    s.put_callback(c.clone(), false).unwrap();
    assert_eq!(s.take_callback("i").unwrap(), Take::Taken(c));
}

/// The issuer is part of what makes two callbacks the same: a reload is one, the same code
/// from another issuer is not.
fn the_issuer_is_part_of_the_callback(new: Factory) {
    let s = new(Duration::from_secs(60), 10);
    let from = |iss: Option<&str>| Callback {
        iss: iss.map(String::from),
        ..cb("f", "same-code")
    };
    assert_eq!(
        s.put_callback(from(Some("https://a.example")), false)
            .unwrap(),
        Put::Stored
    );
    assert_eq!(
        s.put_callback(from(Some("https://a.example")), false)
            .unwrap(),
        Put::Repeated
    );
    assert_eq!(
        s.put_callback(from(Some("https://b.example")), false)
            .unwrap(),
        Put::Conflicted
    );
    let s = new(Duration::from_secs(60), 10);
    s.put_callback(from(None), false).unwrap();
    assert_eq!(
        s.put_callback(from(Some("https://a.example")), false)
            .unwrap(),
        Put::Conflicted
    );
}

fn session(n: usize, ttl: Duration) -> Session {
    Session {
        handle: format!("handle-{n}"),
        link_id: format!("link-{n}"),
        oauth_state: format!("ostate-{n}"),
        verifier: Secret::new(format!("verifier-{n}")),
        provider: "corp".into(),
        nonce: format!("nonce-{n}"),
        expected_email: Some("ana@contoso.example".into()),
        expected_subject: (n % 2 == 1).then(|| format!("subject-{n}")),
        force_consent: false,
        scopes: vec!["offline_access".into(), "Mail.Read".into()],
        expires_at: SystemTime::now() + ttl,
        return_url: None,
        seal_to: None,
        keep: n % 2 == 1,
        connection: (n % 2 == 1).then(|| format!("conn_{n}")),
    }
}

/// A browser opens session `n`'s link: the hash of the binding cookie it was given.
fn open_link(s: &dyn Store, n: usize) -> BindingHash {
    static OPENED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let nth = OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let browser = BindingHash::of_value(&format!("cookie-{n}-{nth}"));
    s.bind_browser(&format!("handle-{n}"), &browser).unwrap();
    browser
}

/// Only a browser that opened the link takes the OAuth state; any other callback (no cookie,
/// a wrong one, one forgotten past the bound) takes nothing, so the person can still finish.
fn browsers_are_bound(new: Factory) {
    let ttl = Duration::from_secs(60);
    let s = new(ttl, 100);
    assert!(s.create_session(session(1, ttl)).unwrap());
    let stranger = BindingHash::of_value("a-guess");
    for _ in 0..3 {
        assert_eq!(
            s.take_oauth_state("ostate-1", None).unwrap(),
            StateTake::OtherBrowser
        );
        assert_eq!(
            s.take_oauth_state("ostate-1", Some(&stranger)).unwrap(),
            StateTake::OtherBrowser,
            "before any browser opened the link"
        );
    }
    let phone = open_link(&*s, 1);
    let laptop = open_link(&*s, 1);
    assert_eq!(
        s.take_oauth_state("ostate-1", Some(&stranger)).unwrap(),
        StateTake::OtherBrowser
    );
    assert_eq!(
        s.take_oauth_state("ostate-1", None).unwrap(),
        StateTake::OtherBrowser
    );
    assert_eq!(
        s.session_status("handle-1").unwrap().unwrap().1,
        SessionStatus::Pending
    );
    match s.take_oauth_state("ostate-1", Some(&phone)).unwrap() {
        StateTake::Taken(taken) => assert_eq!(taken.verifier.expose(), "verifier-1"),
        other => panic!("{other:?}"),
    }
    // Used up, whoever asks; a binding after that changes nothing.
    s.bind_browser("handle-1", &stranger).unwrap();
    for browser in [Some(&laptop), Some(&stranger), None] {
        assert_eq!(
            s.take_oauth_state("ostate-1", browser).unwrap(),
            StateTake::Reused(SessionStatus::Pending)
        );
    }
    // Unknown states are unknown to anyone.
    assert_eq!(
        s.take_oauth_state("nope", None).unwrap(),
        StateTake::Unknown
    );
    // The newest MAX_BROWSERS are remembered.
    assert!(s.create_session(session(2, ttl)).unwrap());
    let browsers: Vec<BindingHash> = (0..=MAX_BROWSERS).map(|_| open_link(&*s, 2)).collect();
    assert_eq!(
        s.take_oauth_state("ostate-2", Some(&browsers[0])).unwrap(),
        StateTake::OtherBrowser,
        "the oldest browser was kept past the bound"
    );
    assert!(matches!(
        s.take_oauth_state("ostate-2", Some(&browsers[1])).unwrap(),
        StateTake::Taken(_)
    ));
    // Binding a session that does not exist is no error, and binds nothing.
    s.bind_browser("handle-none", &stranger).unwrap();
}

/// A session's return URL comes back with its link (for the page) and with its state (for the
/// success page), exactly as stored, on any replica; a session without one has none.
fn return_urls_round_trip(new: Factory) {
    let ttl = Duration::from_secs(60);
    let s = new(ttl, 100);
    let url = "https://chat.example.com/c/42?thread=a&b=\"<x>\"#/room/!r:example.com";
    let with = Session {
        return_url: Some(url.into()),
        ..session(7, ttl)
    };
    assert!(s.create_session(with).unwrap());
    assert!(s.create_session(session(8, ttl)).unwrap());
    let (by_link, _) = s.session_by_link("link-7").unwrap().unwrap();
    assert_eq!(by_link.return_url.as_deref(), Some(url));
    let (by_handle, _) = s.session_status("handle-7").unwrap().unwrap();
    assert_eq!(by_handle.return_url.as_deref(), Some(url));
    let browser = open_link(&*s, 7);
    match s.take_oauth_state("ostate-7", Some(&browser)).unwrap() {
        StateTake::Taken(taken) => assert_eq!(taken.return_url.as_deref(), Some(url)),
        other => panic!("{other:?}"),
    }
    let (without, _) = s.session_by_link("link-8").unwrap().unwrap();
    assert_eq!(without.return_url, None);
}

fn tokens() -> Tokens {
    Tokens {
        provider: "corp".into(),
        access_token: Secret::new("at"),
        // A provider without refresh tokens (GitHub), and one without expiry.
        refresh_token: None,
        id_token: Some(Secret::new("it")),
        token_type: "Bearer".into(),
        scope: "Mail.Read".into(),
        expiry: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000)),
        subject: "subject-1".into(),
        email: Some("ana@contoso.example".into()),
        email_verified: true,
        tenant: Some("11111111-2222-3333-4444-555555555555".into()),
        // A kept sign-in's hand-off: the connection and its credential instead of the refresh
        // token.
        connection: Some(oauth_relay::store::Kept {
            id: "conn_1".into(),
            credential: Some(Secret::new("ckey_1")),
        }),
    }
}

fn sessions_state_and_tokens_are_taken_once(new: Factory) {
    let ttl = Duration::from_secs(60);
    let s = new(ttl, 100);
    assert!(s.create_session(session(1, ttl)).unwrap());
    let (by_link, status) = s.session_by_link("link-1").unwrap().unwrap();
    assert_eq!(
        (by_link.handle.as_str(), status),
        ("handle-1", SessionStatus::Pending)
    );
    // The link needs the verifier to compute the PKCE challenge, on any replica.
    assert_eq!(by_link.verifier.expose(), "verifier-1");
    assert!(s.session_by_link("link-x").unwrap().is_none());
    assert_eq!(
        s.take_oauth_state("nope", None).unwrap(),
        StateTake::Unknown
    );
    let browser = open_link(&*s, 1);
    let takes: Vec<StateTake> = std::thread::scope(|scope| {
        (0..8)
            .map(|_| scope.spawn(|| s.take_oauth_state("ostate-1", Some(&browser)).unwrap()))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect()
    });
    let taken: Vec<&Session> = takes
        .iter()
        .filter_map(|t| match t {
            StateTake::Taken(s) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(taken.len(), 1, "{takes:?}");
    assert_eq!(taken[0].verifier.expose(), "verifier-1");
    assert_eq!(taken[0].scopes, vec!["offline_access", "Mail.Read"]);
    // Everything the callback needs comes back with the state, on any replica.
    assert_eq!(
        (
            taken[0].provider.as_str(),
            taken[0].nonce.as_str(),
            taken[0].expected_subject.as_deref()
        ),
        ("corp", "nonce-1", Some("subject-1"))
    );
    // So does whether to keep the grant, and the connection a re-authorization is for.
    assert!(taken[0].keep);
    assert_eq!(taken[0].connection.as_deref(), Some("conn_1"));
    assert_eq!(s.take_tokens("handle-1").unwrap(), TokenTake::Pending);
    s.finish_session("handle-1", Ok(tokens().into())).unwrap();
    assert_eq!(
        s.session_status("handle-1").unwrap().unwrap().1,
        SessionStatus::Ready
    );
    assert_eq!(
        s.take_oauth_state("ostate-1", Some(&browser)).unwrap(),
        StateTake::Reused(SessionStatus::Ready)
    );
    let got: Vec<TokenTake> = std::thread::scope(|scope| {
        (0..8)
            .map(|_| scope.spawn(|| s.take_tokens("handle-1").unwrap()))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(
        got.iter()
            .filter(|t| matches!(t, TokenTake::Taken(_)))
            .count(),
        1,
        "{got:?}"
    );
    assert!(got.contains(&TokenTake::Taken(Handoff::Clear(tokens()))));
    assert_eq!(s.take_tokens("handle-1").unwrap(), TokenTake::Consumed);
    assert_eq!(
        s.session_status("handle-1").unwrap().unwrap().1,
        SessionStatus::Consumed
    );

    assert!(s.create_session(session(2, ttl)).unwrap());
    let browser = open_link(&*s, 2);
    assert!(matches!(
        s.take_oauth_state("ostate-2", Some(&browser)).unwrap(),
        StateTake::Taken(_)
    ));
    s.finish_session("handle-2", Err("email_mismatch".into()))
        .unwrap();
    assert_eq!(
        s.take_tokens("handle-2").unwrap(),
        TokenTake::Failed("email_mismatch".into())
    );
    assert_eq!(s.take_tokens("unknown").unwrap(), TokenTake::NotFound);
}

/// A session sealed to a caller's key keeps its key through every step, and its hand-off is only
/// the sealed answer, handed out once like tokens.
fn sealed_handoffs_round_trip(new: Factory) {
    use oauth_relay::seal::{Curve, PrivateKey};
    let ttl = Duration::from_secs(60);
    let s = new(ttl, 100);
    let key = PrivateKey::generate(Curve::P256).public();
    let sealed = Session {
        seal_to: Some(key.clone()),
        ..session(9, ttl)
    };
    assert!(s.create_session(sealed).unwrap());
    let (by_link, _) = s.session_by_link("link-9").unwrap().unwrap();
    assert_eq!(by_link.seal_to.as_ref(), Some(&key));
    let browser = open_link(&*s, 9);
    let taken = match s.take_oauth_state("ostate-9", Some(&browser)).unwrap() {
        StateTake::Taken(taken) => taken,
        other => panic!("{other:?}"),
    };
    assert_eq!(taken.seal_to, Some(key));
    let handoff = Handoff::Sealed {
        provider: "corp".into(),
        jwe: "eyJhbGciOiJFQ0RILUVTIn0..aXY.Y2lwaGVy.dGFn".into(),
    };
    s.finish_session("handle-9", Ok(handoff.clone())).unwrap();
    assert_eq!(
        s.session_status("handle-9").unwrap().unwrap().1,
        SessionStatus::Ready
    );
    assert_eq!(
        s.take_tokens("handle-9").unwrap(),
        TokenTake::Taken(handoff)
    );
    assert_eq!(s.take_tokens("handle-9").unwrap(), TokenTake::Consumed);
}

fn sessions_expire_and_are_bounded(new: Factory) {
    let ttl = Duration::from_millis(1500);
    let s = new(ttl, 2);
    assert!(s
        .create_session(session(1, Duration::from_millis(100)))
        .unwrap());
    let browser = open_link(&*s, 1);
    assert!(s.create_session(session(2, ttl)).unwrap());
    assert!(
        !s.create_session(session(3, ttl)).unwrap(),
        "the cap let a session in"
    );
    std::thread::sleep(Duration::from_millis(200));
    // Expired but remembered: the person is told it expired, not that it never existed.
    for browser in [Some(&browser), None] {
        assert!(matches!(
            s.take_oauth_state("ostate-1", browser).unwrap(),
            StateTake::Expired | StateTake::Unknown
        ));
    }
    assert!(s.session_status("handle-1").unwrap().is_none());
    assert_eq!(s.take_tokens("handle-1").unwrap(), TokenTake::NotFound);
}

fn holder_of(secret: &str) -> Proof {
    Proof {
        secret: Some(RetrievalHash::of_secret(secret)),
        authorized: false,
    }
}

fn stranger() -> Proof {
    Proof {
        secret: None,
        authorized: false,
    }
}

/// A state registered with a retrieval hash: its callback goes only to the secret's holder;
/// everyone else (the API token alone, a wrong secret, nothing) is told `Missing` and takes
/// nothing, before and after the holder has it.
fn retrieval_secrets(new: Factory) {
    let s = new(Duration::from_secs(60), 10);
    let right = RetrievalHash::of_secret("right secret");
    assert!(matches!(
        s.register_guarded("g", Duration::from_secs(60), Some(&right))
            .unwrap(),
        Register::Registered { .. }
    ));
    assert_eq!(
        s.register_guarded("g", Duration::from_secs(60), Some(&right))
            .unwrap(),
        Register::Exists
    );
    assert_eq!(
        s.register_state("g", Duration::from_secs(60)).unwrap(),
        Register::Exists
    );
    let authorized_with_wrong = Proof {
        secret: Some(RetrievalHash::of_secret("wrong")),
        authorized: true,
    };
    let others = [
        Proof::authorized(),
        holder_of("wrong"),
        holder_of(""),
        authorized_with_wrong,
        stranger(),
    ];
    for proof in &others {
        assert_eq!(s.take_callback_by("g", proof).unwrap(), Take::Missing);
    }
    assert_eq!(
        s.put_callback(cb("g", "the code"), true).unwrap(),
        Put::StoredRegistered
    );
    for proof in &others {
        assert!(!s.has_callback_for("g", proof).unwrap(), "{proof:?}");
        assert_eq!(s.take_callback_by("g", proof).unwrap(), Take::Missing);
    }
    assert!(s.has_callback_for("g", &holder_of("right secret")).unwrap());
    match s.take_callback_by("g", &holder_of("right secret")).unwrap() {
        Take::Taken(c) => assert_eq!(c.code.unwrap().expose(), "the code"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.take_callback_by("g", &holder_of("right secret")).unwrap(),
        Take::AlreadyTaken
    );
    assert!(s.has_callback_for("g", &holder_of("right secret")).unwrap());
    for proof in &others {
        assert!(!s.has_callback_for("g", proof).unwrap());
        assert_eq!(s.take_callback_by("g", proof).unwrap(), Take::Missing);
    }
    // A reload after retrieval is still recognised; a planted code is still refused.
    assert_eq!(
        s.put_callback(cb("g", "the code"), true).unwrap(),
        Put::Repeated
    );
    assert_eq!(
        s.put_callback(cb("g", "planted"), true).unwrap(),
        Put::Conflict
    );

    // Without a hash, a secret opens nothing: only the API token check does.
    s.put_callback(cb("open", "c"), false).unwrap();
    assert_eq!(
        s.take_callback_by("open", &holder_of("any")).unwrap(),
        Take::Missing
    );
    assert!(!s.has_callback_for("open", &stranger()).unwrap());
    assert!(matches!(
        s.take_callback_by(
            "open",
            &Proof {
                secret: Some(RetrievalHash::of_secret("any")),
                authorized: true
            }
        )
        .unwrap(),
        Take::Taken(_)
    ));
}

/// Wrong secrets racing the right one: exactly one take, the holder's.
fn retrieval_secrets_under_concurrency(new: Factory) {
    let s = new(Duration::from_secs(60), 1000);
    for round in 0..20 {
        let state = format!("race{round}");
        let right = RetrievalHash::of_secret("right");
        s.register_guarded(&state, Duration::from_secs(60), Some(&right))
            .unwrap();
        s.put_callback(cb(&state, "c"), true).unwrap();
        let outcomes: Vec<(bool, Take)> = std::thread::scope(|scope| {
            (0..8)
                .map(|i| {
                    let (s, state) = (&s, &state);
                    scope.spawn(move || {
                        let holder = i == 5;
                        let proof = holder_of(if holder { "right" } else { "wrong" });
                        (holder, s.take_callback_by(state, &proof).unwrap())
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect()
        });
        for (holder, take) in outcomes {
            if holder {
                assert!(matches!(take, Take::Taken(_)), "round {round}: {take:?}");
            } else {
                assert_eq!(take, Take::Missing, "round {round}");
            }
        }
    }
}

/// Guarded registrations count against the cap like any other, and expire like any other.
fn retrieval_secrets_are_bounded_and_expire(new: Factory) {
    let h = RetrievalHash::of_secret("s");
    let s = new(Duration::from_secs(60), 1);
    assert!(matches!(
        s.register_guarded("a", Duration::from_secs(60), Some(&h))
            .unwrap(),
        Register::Registered { .. }
    ));
    assert_eq!(
        s.register_guarded("b", Duration::from_secs(60), Some(&h))
            .unwrap(),
        Register::Full
    );
    assert_eq!(s.put_callback(cb("c", "1"), false).unwrap(), Put::Full);
    // A short TTL: the expired registration's tombstone goes soon.
    let s = new(Duration::from_millis(300), 10);
    s.register_guarded("short", Duration::from_millis(200), Some(&h))
        .unwrap();
    // Asking changes nothing while it lives, or while its tombstone does (Exists); once that
    // has gone the state is free.
    support::eventually("the registration and its tombstone to go", || {
        s.sweep();
        matches!(
            s.register_guarded("short", Duration::from_secs(60), None)
                .unwrap(),
            Register::Registered { .. }
        )
        .then_some(())
    });
    // What replaced it is unguarded: the expired hash is gone with its registration.
    assert_eq!(
        s.put_callback(cb("short", "1"), true).unwrap(),
        Put::StoredRegistered
    );
    assert!(matches!(s.take_callback("short").unwrap(), Take::Taken(_)));
}

fn run_suite(new: Factory, shared: SharedFactory) {
    a_second_different_callback_puts_the_state_in_conflict(new);
    a_strangers_callback_does_not_pre_empt_a_registered_state(new);
    registrations_say_pending_then_expired_and_leave_a_tombstone(new);
    tombstones_are_bounded(new);
    shares(shared);
    kept_parameters_round_trip(new);
    the_issuer_is_part_of_the_callback(new);
    retrieval_secrets(new);
    retrieval_secrets_under_concurrency(new);
    retrieval_secrets_are_bounded_and_expire(new);
    sessions_state_and_tokens_are_taken_once(new);
    sessions_expire_and_are_bounded(new);
    browsers_are_bound(new);
    sealed_handoffs_round_trip(new);
    return_urls_round_trip(new);
    taken_once(new);
    taken_once_under_concurrency(new);
    created_once_under_concurrency(new);
    bounded(new);
    registration(new);
    expiry(new);
}

#[test]
fn memory_store_keeps_the_contract() {
    run_suite(
        &|ttl, max| Arc::new(MemoryStore::new(ttl, max, usize::MAX)),
        &|ttl, max, per_client| {
            Arc::new(MemoryStore::new(ttl, max, usize::MAX).with_max_per_client(per_client))
        },
    );
}

/// The Redis settings of a check: `base`'s topology under `prefix`. Takes wait up to 5 s for
/// a replica (a loaded two-core machine may lag): what is asserted is the contract, not speed.
fn config_on(base: &KvSettings, prefix: &str) -> RedisConfig {
    let mut config = RedisConfig::new(
        KvSettings {
            prefix: prefix.to_string(),
            timeout: Duration::from_secs(2),
            ..base.clone()
        },
        Arc::new(Keyring::parse(KEY).unwrap()),
    );
    config.durability.wait = Duration::from_secs(5);
    config
}

fn standalone(url: String) -> KvSettings {
    KvSettings::new(Topology::Standalone {
        url: Secret::new(url),
    })
}

fn redis_store(
    server: &support::RedisServer,
    prefix: &str,
    ttl: Duration,
    max: usize,
) -> Arc<dyn Store> {
    redis_store_shared(server, prefix, ttl, max, max)
}

fn redis_store_shared(
    server: &support::RedisServer,
    prefix: &str,
    ttl: Duration,
    max: usize,
    per_client: usize,
) -> Arc<dyn Store> {
    Arc::new(
        RedisStore::new(&config_on(&standalone(server.url()), prefix), ttl, max)
            .unwrap()
            .with_max_per_client(per_client),
    )
}

#[test]
fn redis_store_keeps_the_contract() {
    let server = support::RedisServer::start();
    let n = std::sync::atomic::AtomicUsize::new(0);
    // A fresh prefix per check: the same isolation as a fresh memory store.
    let prefix = || format!("t{}:", n.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
    run_suite(
        &|ttl, max| redis_store(&server, &prefix(), ttl, max),
        &|ttl, max, per_client| redis_store_shared(&server, &prefix(), ttl, max, per_client),
    );
}

/// The contract on `base`'s topology, every check on one shared Redis layer (as a replica's
/// store, outbox and connections share one) under a prefix of its own.
fn keeps_the_contract_on(base: KvSettings) {
    let kv = Kv::open(&base).unwrap();
    let n = std::sync::atomic::AtomicUsize::new(0);
    let prefix = || format!("t{}:", n.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
    let store = |ttl, max, per_client| -> Arc<dyn Store> {
        Arc::new(
            RedisStore::on(kv.clone(), &config_on(&base, &prefix()), ttl, max)
                .with_max_per_client(per_client),
        )
    };
    run_suite(&|ttl, max| store(ttl, max, max), &store);
    // Every take was acknowledged by a replica (WAIT) before it was handed out.
    assert_eq!(kv.stats().lost, 0, "{:?}", kv.stats());
}

#[test]
fn redis_sentinel_store_keeps_the_contract() {
    let set = SentinelSet::start();
    keeps_the_contract_on(KvSettings::new(Topology::Sentinel(SentinelSettings {
        sentinels: set
            .sentinel_addrs()
            .iter()
            .map(|a| HostPort::parse(a, 26379).unwrap())
            .collect(),
        master_name: set.name.clone(),
        username: None,
        password: None,
        tls: false,
        data_tls: false,
    })));
}

#[test]
fn redis_cluster_store_keeps_the_contract() {
    let set = ClusterSet::start();
    keeps_the_contract_on(KvSettings::new(Topology::Cluster {
        seeds: set
            .seeds()
            .iter()
            .map(|a| HostPort::parse(a, 6379).unwrap())
            .collect(),
        tls: false,
    }));
}

#[test]
fn redis_holds_nothing_usable_in_the_clear() {
    let server = support::RedisServer::start();
    let s = redis_store(&server, "scan:", Duration::from_secs(60), 100);
    s.put_callback(cb("STATE-visible-1", "CODE-secret-1"), false)
        .unwrap();
    s.put_callback(cb("STATE-visible-2", "CODE-secret-2"), false)
        .unwrap();
    s.take_callback("STATE-visible-2").unwrap();
    s.register_state("STATE-registered-3", Duration::from_secs(60))
        .unwrap();
    // Guarded: one registered, one received, one retrieved. Not even the hash is kept.
    let hash = RetrievalHash::of_secret("RETRIEVAL-secret");
    for i in 4..7 {
        s.register_guarded(
            &format!("STATE-guarded-{i}"),
            Duration::from_secs(60),
            Some(&hash),
        )
        .unwrap();
    }
    for i in 5..7 {
        s.put_callback(
            cb(&format!("STATE-guarded-{i}"), &format!("CODE-secret-{i}")),
            true,
        )
        .unwrap();
    }
    let holder = holder_of("RETRIEVAL-secret");
    assert!(matches!(
        s.take_callback_by("STATE-guarded-6", &holder).unwrap(),
        Take::Taken(_)
    ));
    // A browser bound to a session: Redis keeps a keyed MAC of its cookie's hash, not the hash.
    assert!(s
        .create_session(session(1, Duration::from_secs(60)))
        .unwrap());
    let browser = BindingHash::of_value("COOKIE-value");
    s.bind_browser("handle-1", &browser).unwrap();
    // The kept parameters, and the clients counted by their shares.
    let client = Client::of(Some("203.0.113.77".parse().unwrap()));
    s.put_callback_from(
        Callback {
            iss: Some("https://ISSUER-visible.example".into()),
            session_state: Some("SESSION-visible".into()),
            error_uri: Some("https://ERROR-visible.example".into()),
            ..cb("STATE-visible-7", "CODE-secret-7")
        },
        false,
        client,
    )
    .unwrap();
    s.register_by(
        "STATE-registered-8",
        Duration::from_secs(60),
        Some(&hash),
        Some(Client::of(Some("2001:db8:77::1".parse().unwrap()))),
    )
    .unwrap();
    let dump = server.dump();
    assert!(!dump.is_empty());
    let encoded = hash.encode();
    for needle in [
        "STATE-".as_bytes(),
        b"CODE-",
        b"secret",
        b"visible",
        b"RETRIEVAL",
        b"ISSUER",
        b"SESSION",
        b"ERROR",
        b"203.0.113",
        b"2001:db8",
        &hash.as_bytes()[..],
        &hash.as_bytes()[..8],
        encoded.as_bytes(),
        &browser.as_bytes()[..8],
    ] {
        assert!(
            !dump.windows(needle.len()).any(|w| w == needle),
            "{:?} stored in the clear",
            String::from_utf8_lossy(needle)
        );
    }
}

/// What earlier versions wrote still reads, so a rolling upgrade loses nothing: a callback
/// without the later parameters (under the fingerprint they computed, so its reload is still a
/// reload), and a registration without an end or a share (live until its key expires).
#[test]
fn what_earlier_versions_stored_still_reads() {
    let server = support::RedisServer::start();
    let keys = Keyring::parse(KEY).unwrap();
    let s = redis_store(&server, "old:", Duration::from_secs(60), 100);
    let mut con = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let mut set = |key: &str, value: &[u8]| {
        redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("PX")
            .arg(60_000)
            .query::<()>(&mut con)
            .unwrap()
    };
    // The keys of this version (`{<prefix>relay}:...`, src/store/redis.rs) holding values as
    // earlier versions wrote them.
    let key = format!("{{old:relay}}:c:{}", keys.name("c", "before"));
    let before = serde_json::json!({ "state": "before", "code": "old-code",
                                     "error": null, "error_description": null });
    let mut value = b"L".to_vec();
    // The fingerprint as earlier versions computed it: code, error, description.
    value.extend(keys.mac(&oauth_relay::secret::fingerprint(&[
        Some("old-code"),
        None,
        None,
    ])));
    value.extend(keys.seal(key.as_bytes(), before.to_string().as_bytes()));
    set(&key, &value);
    assert_eq!(
        s.put_callback(cb("before", "old-code"), false).unwrap(),
        Put::Repeated
    );
    assert_eq!(
        s.take_callback("before").unwrap(),
        Take::Taken(cb("before", "old-code"))
    );
    set(
        &format!("{{old:relay}}:r:{}", keys.name("r", "old-registration")),
        b"1",
    );
    assert!(matches!(
        s.take_callback("old-registration").unwrap(),
        Take::Pending { expires_in } if expires_in > Duration::from_secs(50)
    ));
    assert_eq!(
        s.register_state("old-registration", Duration::from_secs(60))
            .unwrap(),
        Register::Exists
    );
    assert_eq!(
        s.put_callback(cb("old-registration", "c"), true).unwrap(),
        Put::StoredRegistered
    );
    assert!(matches!(
        s.take_callback("old-registration").unwrap(),
        Take::Taken(_)
    ));
}

/// A TCP proxy in front of Redis that, once armed, lets the next command naming `armed` reach
/// Redis and then cuts that connection instead of passing the reply back: Redis ran the
/// command, the store never hears of it.
struct LosesAReply {
    port: u16,
    armed: Arc<std::sync::Mutex<Option<&'static [u8]>>>,
}

impl LosesAReply {
    fn start(redis_port: u16) -> LosesAReply {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed: Arc<std::sync::Mutex<Option<&'static [u8]>>> = Arc::default();
        let arm = armed.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let mut client = client.unwrap();
                let mut server = TcpStream::connect(("127.0.0.1", redis_port)).unwrap();
                let (mut client_w, mut server_r) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let (cut_w, arm) = (cut.clone(), arm.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while let Ok(n @ 1..) = client.read(&mut buf) {
                        let mut arm = arm.lock().unwrap();
                        if arm.is_some_and(|c| buf[..n].windows(c.len()).any(|w| w == c)) {
                            *arm = None;
                            cut_w.store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                        drop(arm);
                        if server.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = server.shutdown(Shutdown::Both);
                });
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while let Ok(n @ 1..) = server_r.read(&mut buf) {
                        if cut.load(std::sync::atomic::Ordering::SeqCst)
                            || client_w.write_all(&buf[..n]).is_err()
                        {
                            break;
                        }
                    }
                    let _ = client_w.shutdown(Shutdown::Both);
                    let _ = server_r.shutdown(Shutdown::Both);
                });
            }
        });
        LosesAReply { port, armed }
    }

    fn lose_the_reply_to_the_next(&self, command: &'static [u8]) {
        *self.armed.lock().unwrap() = Some(command);
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

fn redis_cli(server: &support::RedisServer, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &server.port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// How many times Redis ran `command` (lower case), from its own statistics.
fn calls(server: &support::RedisServer, command: &str) -> u64 {
    redis_cli(server, &["INFO", "commandstats"])
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
}

fn redis_store_at(url: String) -> Arc<dyn Store> {
    let config = config_on(&standalone(url), "lost:");
    Arc::new(RedisStore::new(&config, Duration::from_secs(60), 100).unwrap())
}

#[test]
fn a_take_or_a_write_whose_reply_is_lost_fails_closed_and_is_not_sent_again() {
    let server = support::RedisServer::start();
    let proxy = LosesAReply::start(server.port);
    let s = redis_store_at(proxy.url());
    // Loads both scripts, so below each call is one EVALSHA.
    s.put_callback(cb("warm", "0"), false).unwrap();
    s.take_callback("warm").unwrap();

    let before = calls(&server, "evalsha");
    proxy.lose_the_reply_to_the_next(b"EVALSHA");
    assert!(s.put_callback(cb("lost", "1"), false).is_err());
    assert_eq!(
        calls(&server, "evalsha") - before,
        1,
        "the write went out once"
    );
    // Redis did store it: the reload finds it.
    assert_eq!(
        s.put_callback(cb("lost", "1"), false).unwrap(),
        Put::Repeated
    );

    let before = calls(&server, "evalsha");
    proxy.lose_the_reply_to_the_next(b"EVALSHA");
    assert!(s.take_callback("lost").is_err());
    assert_eq!(
        calls(&server, "evalsha") - before,
        1,
        "the take went out once"
    );
    // Redis ran the take: the code is gone, and nobody was handed it twice.
    assert_eq!(s.take_callback("lost").unwrap(), Take::AlreadyTaken);
}

#[test]
fn a_read_whose_pooled_connection_dies_is_asked_again_on_a_new_one() {
    let server = support::RedisServer::start();
    let proxy = LosesAReply::start(server.port);
    let s = redis_store_at(proxy.url());
    s.put_callback(cb("here", "1"), false).unwrap();
    // Loads the read-only script, so below the read is one EVALSHA.
    assert!(s.has_callback("here").unwrap());
    let before = calls(&server, "evalsha");
    proxy.lose_the_reply_to_the_next(b"EVALSHA");
    assert!(s.has_callback("here").unwrap());
    assert_eq!(calls(&server, "evalsha") - before, 2);
}

#[test]
fn a_pooled_connection_redis_closed_while_idle_is_replaced_before_use() {
    let server = support::RedisServer::start();
    let s = redis_store_at(server.url());
    s.put_callback(cb("before", "1"), false).unwrap();
    let killed = redis_cli(&server, &["CLIENT", "KILL", "TYPE", "normal"]);
    assert_eq!(killed.trim(), "1");
    // Idle longer than the store uses a pooled connection unchecked; nothing else (no
    // background thread here) tells it the connection is gone.
    std::thread::sleep(Duration::from_millis(1100));
    assert!(matches!(s.take_callback("before").unwrap(), Take::Taken(_)));
}
