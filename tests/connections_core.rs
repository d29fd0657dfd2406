//! The core of kept connections (src/connections/), without HTTP routes: the single-flight
//! refresh against a fake identity provider that counts every presentation of every refresh
//! token and enforces its rotation rule, over every store backend (memory, a redb file, a real
//! `redis-server`), with replicas that race, die, and outlive a Redis crash.

use crate::support;

use oauth_relay::config::RedisConfig;
use oauth_relay::connections::durability::{redis_persistence, Persistence};
use oauth_relay::connections::embedded::EmbeddedConnections;
use oauth_relay::connections::memory::MemoryConnections;
use oauth_relay::connections::redis::RedisConnections;
use oauth_relay::connections::store::{ConnectionStore, Swap};
use oauth_relay::connections::{
    ConnError, Connections, Policy, RefreshFn, RefreshOutcome, Refresher, Rotation, Status,
};
use oauth_relay::keyring::Keyring;
use oauth_relay::kv::settings::Topology;
use oauth_relay::kv::KvSettings;
use oauth_relay::provider::{Grant, Identity};
use oauth_relay::secret::Secret;
use oauth_relay::store::redis::RedisStore;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};
use support::DurableRedis;

const KEY_1: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const KEY_2: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
const PROVIDER: &str = "idp";

/// What the fake provider does with the next presentations.
#[derive(Clone, Debug, PartialEq)]
enum Mode {
    /// Answers by its rotation rule.
    Normal,
    /// Answers an OAuth error other than `invalid_grant`; the token is not used up.
    Refuse,
    /// Says the grant is dead.
    Invalid,
    /// Processes the refresh (rotating) and loses the answer: the caller sees a timeout.
    LoseAnswer,
}

#[derive(Default)]
struct IdpState {
    /// Refresh tokens issued so far (the sign-in's is `rt` of generation 0).
    issued: u64,
    /// The refresh token a one-time or non-rotating provider accepts now.
    current: String,
    /// Every refresh token a reusable-after-rotation provider accepts.
    valid: HashSet<String>,
    spent: HashSet<String>,
    /// A one-time rotator saw a spent token again (RFC 9700 reuse detection): everything dies.
    revoked: bool,
    presented: HashMap<String, u32>,
    /// Presentations that have returned.
    answered: usize,
}

/// An identity provider that enforces its rotation rule and counts presentations per refresh
/// token (so per grant generation).
struct FakeIdp {
    rotation: Rotation,
    state: Mutex<IdpState>,
    mode: Mutex<Mode>,
    /// Each presentation takes this long (ignoring the budget it is given).
    delay: Duration,
    /// While set, the first presentation blocks until `release`.
    hold_first: Mutex<bool>,
    held: Condvar,
    entered: AtomicUsize,
}

fn rt(n: u64) -> String {
    format!("RT{n}-issued-by-the-idp")
}

fn at(n: u64) -> String {
    format!("AT{n}-issued-by-the-idp")
}

impl FakeIdp {
    fn new(rotation: Rotation) -> Arc<FakeIdp> {
        FakeIdp::slow(rotation, Duration::ZERO)
    }

    fn slow(rotation: Rotation, delay: Duration) -> Arc<FakeIdp> {
        Arc::new(FakeIdp {
            rotation,
            state: Mutex::new(IdpState {
                current: rt(0),
                valid: [rt(0)].into(),
                ..IdpState::default()
            }),
            mode: Mutex::new(Mode::Normal),
            delay,
            hold_first: Mutex::new(false),
            held: Condvar::new(),
            entered: AtomicUsize::new(0),
        })
    }

    fn hold_first(&self) {
        *self.hold_first.lock().unwrap() = true;
    }

    fn release(&self) {
        *self.hold_first.lock().unwrap() = false;
        self.held.notify_all();
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn presented(&self, token: &str) -> u32 {
        self.state
            .lock()
            .unwrap()
            .presented
            .get(token)
            .copied()
            .unwrap_or(0)
    }

    fn total_presentations(&self) -> u32 {
        self.state.lock().unwrap().presented.values().sum()
    }

    fn answered(&self) -> usize {
        self.state.lock().unwrap().answered
    }

    fn current(&self) -> String {
        self.state.lock().unwrap().current.clone()
    }

    fn present(&self, token: &Secret) -> RefreshOutcome {
        *self
            .state
            .lock()
            .unwrap()
            .presented
            .entry(token.expose().to_string())
            .or_default() += 1;
        let first = self.entered.fetch_add(1, Ordering::SeqCst) == 0;
        if first {
            let mut hold = self.hold_first.lock().unwrap();
            while *hold {
                hold = self.held.wait(hold).unwrap();
            }
        }
        std::thread::sleep(self.delay);
        let mode = self.mode.lock().unwrap().clone();
        let mut s = self.state.lock().unwrap();
        s.answered += 1;
        let t = token.expose().to_string();
        match mode {
            Mode::Refuse => return RefreshOutcome::Refused("temporarily_unavailable".into()),
            Mode::Invalid => return RefreshOutcome::InvalidGrant,
            Mode::Normal | Mode::LoseAnswer => {}
        }
        if s.revoked {
            return RefreshOutcome::InvalidGrant;
        }
        let accepted = match self.rotation {
            Rotation::OneTime | Rotation::NoRotation => t == s.current,
            Rotation::ReusableAfterRotation => s.valid.contains(&t),
        };
        if !accepted {
            if self.rotation == Rotation::OneTime && s.spent.contains(&t) {
                s.revoked = true;
            }
            return RefreshOutcome::InvalidGrant;
        }
        s.issued += 1;
        let n = s.issued;
        let new_refresh = match self.rotation {
            Rotation::OneTime => {
                s.spent.insert(t);
                s.current = rt(n);
                Some(rt(n))
            }
            Rotation::ReusableAfterRotation => {
                s.valid.insert(rt(n));
                s.current = rt(n);
                Some(rt(n))
            }
            Rotation::NoRotation => None,
        };
        if mode == Mode::LoseAnswer {
            return RefreshOutcome::Ambiguous("timeout_or_reset".into());
        }
        RefreshOutcome::Granted(Grant {
            access_token: Secret::new(at(n)),
            refresh_token: new_refresh.map(Secret::new),
            id_token: None,
            token_type: "Bearer".into(),
            scope: "openid".into(),
            expiry: Some(SystemTime::now() + Duration::from_secs(3600)),
        })
    }
}

fn refreshers(
    idp: &Arc<FakeIdp>,
    idle_limit: Option<Duration>,
) -> HashMap<String, Arc<dyn Refresher>> {
    let p = idp.clone();
    let mut r = RefreshFn::new(
        idp.rotation,
        move |token: &Secret, _: &[String], _: Duration| p.present(token),
    );
    r.idle_limit = idle_limit;
    [(PROVIDER.to_string(), Arc::new(r) as Arc<dyn Refresher>)].into()
}

/// Timings small enough for tests: a replica that stops beating is given up on after 1 s, an
/// unknown outcome settles in 1.5 s, a refresh's budget is 0.2 s.
fn fast() -> Policy {
    Policy {
        refresh_ahead: Duration::from_secs(300),
        refresh_timeout: Duration::from_millis(200),
        heartbeat: Duration::from_millis(50),
        stale_after: Duration::from_secs(1),
        settle: Duration::from_millis(1500),
        backoff_min: Duration::from_millis(300),
        backoff_max: Duration::from_secs(2),
        min_refresh_interval: Duration::from_secs(30),
        max_refreshing: 32,
        record_patience: Duration::from_secs(60),
    }
}

fn identity(subject: &str) -> Identity {
    Identity {
        subject: subject.into(),
        email: Some(format!("{subject}@example.com")),
        email_verified: true,
        tenant: Some("tenant-1".into()),
        unverified_email: None,
    }
}

/// The sign-in's grant, generation 0, whose access token has already expired.
fn expired_grant() -> Grant {
    Grant {
        access_token: Secret::new(at(0)),
        refresh_token: Some(Secret::new(rt(0))),
        id_token: None,
        token_type: "Bearer".into(),
        scope: "openid".into(),
        expiry: Some(SystemTime::now() - Duration::from_secs(10)),
    }
}

fn keyring(spec: &str) -> Arc<Keyring> {
    Arc::new(Keyring::parse(spec).unwrap())
}

fn keys() -> Arc<Keyring> {
    keyring(&format!("names:{KEY_1},k1:{KEY_1}"))
}

fn in_a_while() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

/// A fresh path under the target directory's scratch space.
fn scratch(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "connections-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn redis_config(url: String, prefix: &str, keys: Arc<Keyring>) -> RedisConfig {
    RedisConfig::new(
        KvSettings {
            prefix: prefix.to_string(),
            timeout: Duration::from_secs(2),
            ..KvSettings::new(Topology::Standalone {
                url: Secret::new(url),
            })
        },
        keys,
    )
}

/// One replica on Redis: its own pool, store and `Connections`, told of the others' news
/// through the relay store's subscriber, as the service will be.
fn redis_replica(url: &str, prefix: &str, idp: &Arc<FakeIdp>, policy: Policy) -> Arc<Connections> {
    let store = Arc::new(
        RedisStore::new(
            &redis_config(url.into(), prefix, keys()),
            Duration::from_secs(600),
            1000,
        )
        .unwrap(),
    );
    let conns = Arc::new(Connections::new(
        Arc::new(RedisConnections::new(store.clone(), 10_000)),
        refreshers(idp, None),
        policy,
    ));
    let weak = Arc::downgrade(&conns);
    store.start_background(
        move |key| {
            if let Some(c) = weak.upgrade() {
                c.notified(key)
            }
        },
        || {},
    );
    conns
}

fn replicas_on(
    store: Arc<dyn ConnectionStore>,
    n: usize,
    idp: &Arc<FakeIdp>,
    policy: Policy,
) -> Vec<Arc<Connections>> {
    (0..n)
        .map(|_| {
            Arc::new(Connections::new(
                store.clone(),
                refreshers(idp, None),
                policy.clone(),
            ))
        })
        .collect()
}

fn create(c: &Connections, subject: &str) -> (String, Secret) {
    let (conn, credential) = c
        .create(
            PROVIDER,
            &identity(subject),
            vec!["openid".into()],
            expired_grant(),
        )
        .unwrap();
    assert_eq!(conn.grant.generation, 0);
    (conn.id, credential)
}

/// 50 callers spread over `replicas` ask at once for a token of a connection whose token has
/// expired: the provider sees one presentation, and every caller gets the one fresh token.
fn fifty_callers_one_presentation(replicas: &[Arc<Connections>], idp: &Arc<FakeIdp>) {
    let (id, _) = create(&replicas[0], "fifty");
    let barrier = Arc::new(Barrier::new(50));
    let callers: Vec<_> = (0..50)
        .map(|i| {
            let (c, id, barrier) = (
                replicas[i % replicas.len()].clone(),
                id.clone(),
                barrier.clone(),
            );
            std::thread::spawn(move || {
                barrier.wait();
                c.token(&id, Duration::from_secs(60), in_a_while())
            })
        })
        .collect();
    let answers: Vec<_> = callers.into_iter().map(|t| t.join().unwrap()).collect();
    for a in &answers {
        let a = a
            .as_ref()
            .unwrap_or_else(|e| panic!("a caller failed: {e}"));
        assert_eq!(a.access_token.expose(), at(1));
        assert_eq!(a.generation, 1);
    }
    assert_eq!(
        idp.presented(&rt(0)),
        1,
        "generation 0 presented more than once"
    );
    assert_eq!(idp.total_presentations(), 1);
    let stored = replicas[1 % replicas.len()].get(&id).unwrap();
    assert_eq!(stored.grant.generation, 1);
    assert_eq!(stored.grant.refresh_token.unwrap().expose(), idp.current());
    assert!(stored.intent.is_none());
}

#[test]
fn fifty_callers_one_presentation_memory() {
    let idp = FakeIdp::new(Rotation::OneTime);
    let store = Arc::new(MemoryConnections::new(1000));
    fifty_callers_one_presentation(&replicas_on(store, 3, &idp, fast()), &idp);
}

#[test]
fn fifty_callers_one_presentation_redb() {
    let idp = FakeIdp::new(Rotation::OneTime);
    let path = scratch("redb").join("connections.redb");
    let store = Arc::new(EmbeddedConnections::open(&path, keys(), 1000).unwrap());
    fifty_callers_one_presentation(&replicas_on(store, 3, &idp, fast()), &idp);
}

#[test]
fn fifty_callers_on_three_replicas_one_presentation_redis() {
    let server = support::RedisServer::start();
    let idp = FakeIdp::new(Rotation::OneTime);
    let replicas: Vec<_> = (0..3)
        .map(|_| redis_replica(&server.url(), "fifty:", &idp, fast()))
        .collect();
    fifty_callers_one_presentation(&replicas, &idp);
}

/// The provider takes 4 s: 20 times the refresh budget, 4 times `stale_after` and more than
/// the settle window. The intent stays its owner's while the owner beats, so nobody presents
/// again.
/// The first look (`token_at_once`, awaited on the server's event loop on Redis) answers only
/// what `token` would answer at once: nothing for a token that needs a refresh (and presents
/// nothing), the unknown id's refusal for a wrong credential, and the token once it lasts.
fn the_first_look_answers_only_a_lasting_token(c: &Connections, idp: &Arc<FakeIdp>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let first_look = |id: &str, credential: &str, min_ttl: u64| {
        rt.block_on(c.token_at_once(id, Some(credential), Duration::from_secs(min_ttl)))
    };
    let (id, credential) = create(c, "first-look");
    let credential = credential.expose().to_string();
    // Expired: a refresh is needed, which the first look leaves to `token`.
    assert!(matches!(first_look(&id, &credential, 60), Ok(None)));
    assert_eq!(idp.total_presentations(), 0);
    assert!(matches!(
        first_look(&id, "ckey_wrong", 60),
        Err(ConnError::NotFound)
    ));
    assert!(matches!(
        first_look("conn_nobody", &credential, 60),
        Err(ConnError::NotFound)
    ));
    let fresh = c
        .token_for(
            &id,
            Some(&credential),
            Duration::from_secs(60),
            in_a_while(),
        )
        .unwrap();
    assert_eq!(fresh.access_token.expose(), at(1));
    // Fresh now (an hour left): answered at the first look, and nothing more presented.
    let token = first_look(&id, &credential, 60)
        .unwrap()
        .expect("a fresh token");
    assert_eq!(
        (token.access_token.expose(), token.generation),
        (at(1).as_str(), 1)
    );
    // Asked for more life than it has, just after a refresh (another would only bring the
    // provider's lifetime again): answered as it is, at the first look as by `token`.
    let longer = first_look(&id, &credential, 7200)
        .unwrap()
        .expect("a token");
    let by_token = c
        .token_for(
            &id,
            Some(&credential),
            Duration::from_secs(7200),
            Instant::now(),
        )
        .unwrap();
    assert_eq!(longer.access_token.expose(), at(1));
    assert_eq!(by_token.access_token.expose(), at(1));
    assert_eq!(idp.total_presentations(), 1);
}

#[test]
fn the_first_look_answers_only_a_lasting_token_in_every_store() {
    let idp = FakeIdp::new(Rotation::OneTime);
    let memory = Arc::new(MemoryConnections::new(1000));
    the_first_look_answers_only_a_lasting_token(&replicas_on(memory, 1, &idp, fast())[0], &idp);
    let idp = FakeIdp::new(Rotation::OneTime);
    let path = scratch("first-look").join("connections.redb");
    let redb = Arc::new(EmbeddedConnections::open(&path, keys(), 1000).unwrap());
    the_first_look_answers_only_a_lasting_token(&replicas_on(redb, 1, &idp, fast())[0], &idp);
    let server = support::RedisServer::start();
    let idp = FakeIdp::new(Rotation::OneTime);
    let on_redis = redis_replica(&server.url(), "first-look:", &idp, fast());
    the_first_look_answers_only_a_lasting_token(&on_redis, &idp);
}

#[test]
fn a_provider_slower_than_every_internal_timeout_still_sees_one_presentation_memory() {
    let idp = FakeIdp::slow(Rotation::OneTime, Duration::from_secs(4));
    let store = Arc::new(MemoryConnections::new(1000));
    fifty_callers_one_presentation(&replicas_on(store, 3, &idp, fast()), &idp);
}

#[test]
fn a_provider_slower_than_every_internal_timeout_still_sees_one_presentation_redb() {
    let idp = FakeIdp::slow(Rotation::OneTime, Duration::from_secs(4));
    let path = scratch("redb").join("connections.redb");
    let store = Arc::new(EmbeddedConnections::open(&path, keys(), 1000).unwrap());
    fifty_callers_one_presentation(&replicas_on(store, 3, &idp, fast()), &idp);
}

#[test]
fn a_provider_slower_than_every_internal_timeout_still_sees_one_presentation_redis() {
    let server = support::RedisServer::start();
    let idp = FakeIdp::slow(Rotation::OneTime, Duration::from_secs(4));
    let replicas: Vec<_> = (0..3)
        .map(|_| redis_replica(&server.url(), "slow:", &idp, fast()))
        .collect();
    fifty_callers_one_presentation(&replicas, &idp);
}

/// Replica A begins a refresh and dies while the provider holds its presentation (dropped:
/// it stops beating and will record nothing); replica B then wants a token.
fn a_replica_dies_mid_refresh(a: Arc<Connections>, idp: &Arc<FakeIdp>) -> String {
    let (id, _) = create(&a, "dies");
    idp.hold_first();
    let caller = {
        let (a, id) = (a.clone(), id.clone());
        std::thread::spawn(move || {
            a.token(
                &id,
                Duration::from_secs(60),
                Instant::now() + Duration::from_millis(300),
            )
        })
    };
    support::eventually("replica A to present", || {
        (idp.entered.load(Ordering::SeqCst) == 1).then_some(())
    });
    assert!(matches!(caller.join().unwrap(), Err(ConnError::Pending)));
    drop(a);
    id
}

#[test]
fn a_dead_replicas_generation_is_never_presented_again_to_a_one_time_rotator() {
    for backend in ["memory", "redb", "redis"] {
        let idp = FakeIdp::new(Rotation::OneTime);
        let server = support::RedisServer::start();
        let (a, b) = match backend {
            "memory" => {
                let mut r = replicas_on(Arc::new(MemoryConnections::new(100)), 2, &idp, fast());
                (r.remove(0), r.remove(0))
            }
            "redb" => {
                let path = scratch("redb").join("c.redb");
                let store = Arc::new(EmbeddedConnections::open(&path, keys(), 100).unwrap());
                let mut r = replicas_on(store, 2, &idp, fast());
                (r.remove(0), r.remove(0))
            }
            _ => (
                redis_replica(&server.url(), "dies:", &idp, fast()),
                redis_replica(&server.url(), "dies:", &idp, fast()),
            ),
        };
        let id = a_replica_dies_mid_refresh(a, &idp);
        // B waits while A's heartbeat is recent, then gives the connection up: the outcome of
        // A's presentation is unknown and generation 0 may not be presented again.
        let e = support::eventually("B to give the grant up", || {
            match b.token(
                &id,
                Duration::from_secs(60),
                Instant::now() + Duration::from_secs(2),
            ) {
                Err(ConnError::Pending) => None,
                other => Some(other),
            }
        });
        assert_eq!(
            e.unwrap_err(),
            ConnError::NeedsReauth(Some("refresh_ambiguous".into())),
            "{backend}"
        );
        // A's presentation comes back after its replica died: nobody records it, and nobody
        // presented generation 0 a second time.
        idp.release();
        support::eventually("A's presentation to return", || {
            (idp.answered() == 1).then_some(())
        });
        assert_eq!(idp.presented(&rt(0)), 1, "{backend}");
        assert_eq!(idp.total_presentations(), 1, "{backend}");
        let c = b.get(&id).unwrap();
        assert_eq!(c.status, Status::NeedsReauth, "{backend}");
        assert_eq!(c.grant.generation, 0, "{backend}");
    }
}

#[test]
fn a_dead_replicas_refresh_is_presented_once_more_after_the_settle_window_where_harmless() {
    for backend in ["memory", "redb", "redis"] {
        let idp = FakeIdp::new(Rotation::ReusableAfterRotation);
        let server = support::RedisServer::start();
        let (a, b) = match backend {
            "memory" => {
                let mut r = replicas_on(Arc::new(MemoryConnections::new(100)), 2, &idp, fast());
                (r.remove(0), r.remove(0))
            }
            "redb" => {
                let path = scratch("redb").join("c.redb");
                let store = Arc::new(EmbeddedConnections::open(&path, keys(), 100).unwrap());
                let mut r = replicas_on(store, 2, &idp, fast());
                (r.remove(0), r.remove(0))
            }
            _ => (
                redis_replica(&server.url(), "settle:", &idp, fast()),
                redis_replica(&server.url(), "settle:", &idp, fast()),
            ),
        };
        let id = a_replica_dies_mid_refresh(a, &idp);
        let token = b.token(&id, Duration::from_secs(60), in_a_while()).unwrap();
        assert_eq!(token.generation, 1, "{backend}");
        assert_eq!(token.access_token.expose(), at(1), "{backend}");
        // A's presentation plus exactly one re-presentation.
        assert_eq!(idp.presented(&rt(0)), 2, "{backend}");
        idp.release();
        support::eventually("A's presentation to return", || {
            (idp.answered() == 2).then_some(())
        });
        let again = b.token(&id, Duration::from_secs(60), in_a_while()).unwrap();
        assert_eq!(again.access_token.expose(), at(1), "{backend}");
        assert_eq!(idp.total_presentations(), 2, "{backend}");
    }
}

/// Redis is killed (SIGKILL) and started again on its data while the provider holds the one
/// presentation: the intent survived (fsync always), the commit after the restart lands, and
/// the grant the provider rotated to is the one kept.
#[test]
fn a_redis_crash_mid_refresh_neither_repeats_a_presentation_nor_loses_the_grant() {
    let mut server = DurableRedis::start();
    let idp = FakeIdp::new(Rotation::OneTime);
    let policy = Policy {
        stale_after: Duration::from_secs(20),
        ..fast()
    };
    let a = redis_replica(&server.url(), "crash:", &idp, policy.clone());
    let b = redis_replica(&server.url(), "crash:", &idp, policy);
    let (id, _) = create(&a, "crash");
    idp.hold_first();
    let caller = {
        let (a, id) = (a.clone(), id.clone());
        std::thread::spawn(move || a.token(&id, Duration::from_secs(60), in_a_while()))
    };
    support::eventually("the presentation", || {
        (idp.entered.load(Ordering::SeqCst) == 1).then_some(())
    });
    server.crash_and_restart();
    // The intent is still there after the crash: another replica waits instead of presenting.
    let waiting = b.token(
        &id,
        Duration::from_secs(60),
        Instant::now() + Duration::from_millis(500),
    );
    assert_eq!(waiting.unwrap_err(), ConnError::Pending);
    idp.release();
    let token = caller.join().unwrap().unwrap();
    assert_eq!(token.access_token.expose(), at(1));
    assert_eq!(
        b.token(&id, Duration::from_secs(60), in_a_while())
            .unwrap()
            .generation,
        1
    );
    assert_eq!(idp.presented(&rt(0)), 1);
    assert_eq!(idp.total_presentations(), 1);
    let c = b.get(&id).unwrap();
    assert_eq!(c.grant.refresh_token.unwrap().expose(), idp.current());
    assert!(c.intent.is_none() && c.status == Status::Active);
}

#[test]
fn the_redis_store_survives_a_redis_restart_with_persistence() {
    let mut server = DurableRedis::start();
    let idp = FakeIdp::new(Rotation::OneTime);
    let a = redis_replica(&server.url(), "restart:", &idp, fast());
    let (id, credential) = create(&a, "restart");
    assert_eq!(
        a.token(&id, Duration::from_secs(60), in_a_while())
            .unwrap()
            .generation,
        1
    );
    let before = a.get(&id).unwrap();
    server.crash_and_restart();
    let b = redis_replica(&server.url(), "restart:", &idp, fast());
    let after = support::eventually("Redis to answer after its restart", || b.get(&id).ok());
    assert_eq!(after, before);
    assert!(b.authorize(&id, credential.expose()).is_ok());
    let token = b.token(&id, Duration::from_secs(60), in_a_while()).unwrap();
    assert_eq!(token.access_token.expose(), at(1));
    assert_eq!(idp.total_presentations(), 1);
    assert_eq!(b.list(Some(PROVIDER), Some("restart")).unwrap().len(), 1);
}

#[test]
fn invalid_grant_needs_reauth_and_revive_with_the_same_account_brings_it_back() {
    let idp = FakeIdp::new(Rotation::OneTime);
    let c = &replicas_on(Arc::new(MemoryConnections::new(100)), 1, &idp, fast())[0];
    let (id, _) = create(c, "ana");
    idp.set_mode(Mode::Invalid);
    assert_eq!(
        c.token(&id, Duration::from_secs(60), in_a_while())
            .unwrap_err(),
        ConnError::NeedsReauth(Some("invalid_grant".into()))
    );
    assert_eq!(c.get(&id).unwrap().status, Status::NeedsReauth);
    // Asking again presents nothing.
    assert!(c.token(&id, Duration::from_secs(60), in_a_while()).is_err());
    assert_eq!(idp.total_presentations(), 1);
    let new_grant = || Grant {
        access_token: Secret::new("AT-after-reauth"),
        refresh_token: Some(Secret::new("RT-after-reauth")),
        id_token: None,
        token_type: "Bearer".into(),
        scope: "openid".into(),
        expiry: Some(SystemTime::now() + Duration::from_secs(3600)),
    };
    // Another account cannot take the connection over: nothing changes.
    let mut stranger = identity("ana");
    stranger.subject = "mallory".into();
    assert_eq!(
        c.revive(&id, new_grant(), &stranger).unwrap_err(),
        ConnError::IdentityMismatch
    );
    let mut other_tenant = identity("ana");
    other_tenant.tenant = Some("tenant-2".into());
    assert_eq!(
        c.revive(&id, new_grant(), &other_tenant).unwrap_err(),
        ConnError::IdentityMismatch
    );
    assert_eq!(c.get(&id).unwrap().status, Status::NeedsReauth);
    let revived = c.revive(&id, new_grant(), &identity("ana")).unwrap();
    assert_eq!(revived.id, id);
    assert_eq!(revived.status, Status::Active);
    assert_eq!(revived.grant.generation, 1);
    let token = c.token(&id, Duration::from_secs(60), in_a_while()).unwrap();
    assert_eq!(token.access_token.expose(), "AT-after-reauth");
    assert_eq!(idp.total_presentations(), 1);
}

#[test]
fn a_refused_refresh_backs_off_without_using_the_token_up() {
    let idp = FakeIdp::new(Rotation::OneTime);
    let c = &replicas_on(Arc::new(MemoryConnections::new(100)), 1, &idp, fast())[0];
    let (id, _) = create(c, "backoff");
    idp.set_mode(Mode::Refuse);
    let e = c
        .token(&id, Duration::from_secs(60), in_a_while())
        .unwrap_err();
    let ConnError::BackingOff { until, reason } = e else {
        panic!("{e:?}")
    };
    assert_eq!(reason.as_deref(), Some("temporarily_unavailable"));
    assert!(until > SystemTime::now() - Duration::from_secs(1));
    // During the back-off nothing is presented.
    assert!(matches!(
        c.token(&id, Duration::from_secs(60), in_a_while()),
        Err(ConnError::BackingOff { .. })
    ));
    assert_eq!(idp.presented(&rt(0)), 1);
    let stored = c.get(&id).unwrap();
    assert!(stored.intent.is_none() && stored.status == Status::Active && stored.failures == 1);
    // After it, the same refresh token (not used up) is presented again and works.
    idp.set_mode(Mode::Normal);
    let token = support::eventually("the back-off to end", || {
        c.token(&id, Duration::from_secs(60), in_a_while()).ok()
    });
    assert_eq!(token.access_token.expose(), at(1));
    assert_eq!(idp.presented(&rt(0)), 2);
    assert_eq!(c.get(&id).unwrap().failures, 0);
}

#[test]
fn a_lost_answer_follows_the_rotation_rule() {
    // One-time: the provider rotated but the answer was lost. Presenting again would be reuse.
    let idp = FakeIdp::new(Rotation::OneTime);
    let c = &replicas_on(Arc::new(MemoryConnections::new(100)), 1, &idp, fast())[0];
    let (id, _) = create(c, "lost");
    idp.set_mode(Mode::LoseAnswer);
    assert_eq!(
        c.token(&id, Duration::from_secs(60), in_a_while())
            .unwrap_err(),
        ConnError::NeedsReauth(Some("refresh_ambiguous".into()))
    );
    assert_eq!(idp.total_presentations(), 1);
    assert!(!idp.state.lock().unwrap().revoked);
    // Reusable after rotation: presented once more after the settle window, and it works.
    let idp = FakeIdp::new(Rotation::ReusableAfterRotation);
    let c = &replicas_on(Arc::new(MemoryConnections::new(100)), 1, &idp, fast())[0];
    let (id, _) = create(c, "lost");
    idp.set_mode(Mode::LoseAnswer);
    let e = c.token(
        &id,
        Duration::from_secs(60),
        Instant::now() + Duration::from_millis(200),
    );
    assert_eq!(e.unwrap_err(), ConnError::Pending);
    idp.set_mode(Mode::Normal);
    let token = c.token(&id, Duration::from_secs(60), in_a_while()).unwrap();
    assert_eq!(token.access_token.expose(), at(2));
    assert_eq!(idp.presented(&rt(0)), 2);
    assert_eq!(idp.total_presentations(), 2);
}

#[test]
fn refreshes_are_serialized_generation_after_generation() {
    for rotation in [
        Rotation::OneTime,
        Rotation::ReusableAfterRotation,
        Rotation::NoRotation,
    ] {
        let idp = FakeIdp::new(rotation);
        let policy = Policy {
            min_refresh_interval: Duration::ZERO,
            ..fast()
        };
        let c = &replicas_on(Arc::new(MemoryConnections::new(100)), 1, &idp, policy)[0];
        let (id, _) = create(c, "gen");
        for n in 1..=3u64 {
            // Ask for more life than the token has: a refresh each time.
            let t = c
                .token(&id, Duration::from_secs(7200), in_a_while())
                .unwrap();
            assert_eq!((t.generation, t.access_token.expose()), (n, at(n).as_str()));
        }
        let stored = c.get(&id).unwrap();
        let expected_refresh = match rotation {
            Rotation::NoRotation => rt(0),
            _ => rt(3),
        };
        assert_eq!(
            stored.grant.refresh_token.unwrap().expose(),
            expected_refresh
        );
        for n in 0..3 {
            // A refresh token that never changes is presented each time; others once each.
            let presented = match (rotation, n) {
                (Rotation::NoRotation, 0) => 3,
                (Rotation::NoRotation, _) => 0,
                _ => 1,
            };
            assert_eq!(
                idp.presented(&rt(n)),
                presented,
                "{rotation:?} generation {n}"
            );
        }
    }
}

#[test]
fn the_keep_alive_refreshes_idle_grants_through_the_same_path() {
    let idp = FakeIdp::new(Rotation::NoRotation);
    let store = Arc::new(MemoryConnections::new(100));
    let c = Connections::new(
        store,
        refreshers(&idp, Some(Duration::from_millis(400))),
        fast(),
    );
    let mut fresh = expired_grant();
    fresh.expiry = Some(SystemTime::now() + Duration::from_secs(3600));
    let (conn, _) = c
        .create(PROVIDER, &identity("idle"), vec![], fresh)
        .unwrap();
    assert!(conn.next_refresh_at.is_some());
    support::eventually("the keep-alive to come due", || {
        c.due(10).unwrap().contains(&conn.id).then_some(())
    });
    support::eventually("the keep-alive to refresh", || {
        c.keep_alive_tick(10, in_a_while());
        (c.get(&conn.id).unwrap().grant.generation >= 1).then_some(())
    });
    let stored = c.get(&conn.id).unwrap();
    assert!(stored.next_refresh_at.unwrap() > stored.last_refresh_at.unwrap());
    assert!(idp.presented(&rt(0)) >= 1);
    // The access token did not need it: the keep-alive refreshed because of the idle limit.
}

#[test]
fn forget_hands_the_tokens_back_once_and_keeps_nothing() {
    let idp = FakeIdp::new(Rotation::OneTime);
    let path = scratch("redb").join("connections.redb");
    let store = Arc::new(EmbeddedConnections::open(&path, keys(), 100).unwrap());
    let c = &replicas_on(store.clone(), 1, &idp, fast())[0];
    let (id, credential) = create(c, "forget");
    assert!(c.authorize(&id, credential.expose()).is_ok());
    assert_eq!(
        c.authorize(&id, "ckey_wrong").unwrap_err(),
        ConnError::NotFound
    );
    let gone = c.forget(&id, in_a_while()).unwrap();
    assert_eq!(gone.refresh_token.unwrap().expose(), rt(0));
    assert_eq!(gone.provider, PROVIDER);
    assert_eq!(
        c.forget(&id, in_a_while()).unwrap_err(),
        ConnError::NotFound
    );
    assert_eq!(c.get(&id).unwrap_err(), ConnError::NotFound);
    assert_eq!(
        c.token(&id, Duration::from_secs(1), in_a_while())
            .unwrap_err(),
        ConnError::NotFound
    );
    assert!(c.list(Some(PROVIDER), Some("forget")).unwrap().is_empty());

    // A refresh in progress is waited for: the tokens handed back are the newest.
    let (id, _) = create(c, "forget-while-refreshing");
    idp.hold_first();
    let caller = {
        let (c, id) = (c.clone(), id.clone());
        std::thread::spawn(move || {
            c.token(
                &id,
                Duration::from_secs(60),
                Instant::now() + Duration::from_millis(200),
            )
        })
    };
    support::eventually("the presentation", || {
        (idp.entered.load(Ordering::SeqCst) == 1).then_some(())
    });
    assert_eq!(caller.join().unwrap().unwrap_err(), ConnError::Pending);
    let releaser = {
        let idp = idp.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            idp.release();
        })
    };
    let gone = c.forget(&id, in_a_while()).unwrap();
    releaser.join().unwrap();
    assert!(!gone.interrupted);
    assert_eq!(gone.refresh_token.unwrap().expose(), rt(1));
    assert_eq!(gone.access_token.expose(), at(1));

    // Past the deadline it is deleted anyway, and says so; the refresh's outcome is dropped.
    let idp = FakeIdp::new(Rotation::OneTime);
    let c = &replicas_on(store, 1, &idp, fast())[0];
    let (id, _) = create(c, "forget-interrupted");
    idp.hold_first();
    let caller = {
        let (c, id) = (c.clone(), id.clone());
        std::thread::spawn(move || {
            c.token(
                &id,
                Duration::from_secs(60),
                Instant::now() + Duration::from_millis(200),
            )
        })
    };
    support::eventually("the presentation", || {
        (idp.entered.load(Ordering::SeqCst) == 1).then_some(())
    });
    let gone = c
        .forget(&id, Instant::now() + Duration::from_millis(300))
        .unwrap();
    assert!(gone.interrupted);
    assert_eq!(gone.refresh_token.unwrap().expose(), rt(0));
    idp.release();
    assert_eq!(caller.join().unwrap().unwrap_err(), ConnError::Pending);
    support::eventually("the refresh to end", || (c.refreshing() == 0).then_some(()));
    assert_eq!(c.get(&id).unwrap_err(), ConnError::NotFound);
    assert_eq!(idp.answered(), 1);
}

fn listing(store: Arc<dyn ConnectionStore>) {
    let idp = FakeIdp::new(Rotation::OneTime);
    let mut refs = refreshers(&idp, None);
    refs.insert("other".into(), refs[PROVIDER].clone());
    let c = Connections::new(store, refs, fast());
    let (a, _) = c
        .create(PROVIDER, &identity("ana"), vec![], expired_grant())
        .unwrap();
    let (b, _) = c
        .create(PROVIDER, &identity("ana"), vec![], expired_grant())
        .unwrap();
    let (d, _) = c
        .create(PROVIDER, &identity("bob"), vec![], expired_grant())
        .unwrap();
    let (e, _) = c
        .create("other", &identity("ana"), vec![], expired_grant())
        .unwrap();
    let ids = |v: Vec<oauth_relay::connections::Connection>| {
        let mut ids: Vec<String> = v.into_iter().map(|c| c.id).collect();
        ids.sort();
        ids
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(
        ids(c.list(Some(PROVIDER), Some("ana")).unwrap()),
        sorted(vec![a.id.clone(), b.id.clone()])
    );
    assert_eq!(
        ids(c.list(Some(PROVIDER), None).unwrap()),
        sorted(vec![a.id.clone(), b.id.clone(), d.id.clone()])
    );
    assert_eq!(
        ids(c.list(Some("other"), Some("ana")).unwrap()),
        vec![e.id.clone()]
    );
    assert_eq!(c.list(None, None).unwrap().len(), 4);
    c.forget(&b.id, in_a_while()).unwrap();
    assert_eq!(
        ids(c.list(Some(PROVIDER), Some("ana")).unwrap()),
        vec![a.id]
    );
}

#[test]
fn connections_are_listed_by_provider_and_subject_in_every_store() {
    listing(Arc::new(MemoryConnections::new(100)));
    listing(Arc::new(
        EmbeddedConnections::open(&scratch("redb").join("c.redb"), keys(), 100).unwrap(),
    ));
    let server = support::RedisServer::start();
    let store = Arc::new(
        RedisStore::new(
            &redis_config(server.url(), "list:", keys()),
            Duration::from_secs(60),
            10,
        )
        .unwrap(),
    );
    listing(Arc::new(RedisConnections::new(store, 100)));
}

#[test]
fn stores_are_bounded() {
    let server = support::RedisServer::start();
    let redis = Arc::new(
        RedisStore::new(
            &redis_config(server.url(), "cap:", keys()),
            Duration::from_secs(60),
            10,
        )
        .unwrap(),
    );
    let stores: Vec<Arc<dyn ConnectionStore>> = vec![
        Arc::new(MemoryConnections::new(2)),
        Arc::new(EmbeddedConnections::open(&scratch("redb").join("c.redb"), keys(), 2).unwrap()),
        Arc::new(RedisConnections::new(redis, 2)),
    ];
    for store in stores {
        let idp = FakeIdp::new(Rotation::OneTime);
        let c = Connections::new(store, refreshers(&idp, None), fast());
        create(&c, "a");
        create(&c, "b");
        let full = c.create(PROVIDER, &identity("c"), vec![], expired_grant());
        assert_eq!(full.unwrap_err(), ConnError::Full);
    }
}

/// Every byte of `needle` absent from `haystack`.
fn absent(haystack: &[u8], needle: &str, what: &str) {
    assert!(
        !haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes()),
        "{what} found in the clear"
    );
}

/// What a connection holds that must never be readable at rest.
fn secrets_of(c: &Connections, subject: &str) -> (String, Vec<(String, &'static str)>) {
    let mut grant = expired_grant();
    grant.access_token = Secret::new("AT-visible-at-rest-0");
    grant.refresh_token = Some(Secret::new("RT-visible-at-rest-0"));
    let (conn, credential) = c
        .create(PROVIDER, &identity(subject), vec![], grant)
        .unwrap();
    (
        conn.id.clone(),
        vec![
            ("AT-visible-at-rest-0".into(), "the first access token"),
            ("RT-visible-at-rest-0".into(), "the first refresh token"),
            ("issued-by-the-idp".into(), "a refreshed token"),
            (credential.expose().to_string(), "the credential"),
            (conn.id.clone(), "the connection id"),
            (subject.to_string(), "the subject"),
            (format!("{subject}@example.com"), "the e-mail"),
        ],
    )
}

#[test]
fn nothing_is_in_the_clear_in_redis() {
    let server = support::RedisServer::start();
    let idp = FakeIdp::new(Rotation::OneTime);
    let c = redis_replica(&server.url(), "clear:", &idp, fast());
    let (id, secrets) = secrets_of(&c, "SUBJECT-visible-in-redis");
    // The first refresh token is presented, it is rotated: both generations went through Redis.
    idp.state.lock().unwrap().current = "RT-visible-at-rest-0".into();
    c.token(&id, Duration::from_secs(60), in_a_while()).unwrap();
    let mut all = Vec::new();
    let client = redis::Client::open(server.url()).unwrap();
    let mut con = client.get_connection().unwrap();
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query(&mut con).unwrap();
    assert!(keys.len() >= 4, "{} keys", keys.len());
    for key in keys {
        all.extend_from_slice(&key);
        let dump: Vec<u8> = redis::cmd("DUMP").arg(&key).query(&mut con).unwrap();
        all.extend(dump);
    }
    for (secret, what) in &secrets {
        absent(&all, secret, what);
    }
}

#[test]
fn nothing_is_in_the_clear_in_the_redb_file() {
    let idp = FakeIdp::new(Rotation::OneTime);
    let path = scratch("redb").join("connections.redb");
    let secrets = {
        let store = Arc::new(EmbeddedConnections::open(&path, keys(), 100).unwrap());
        let c = &replicas_on(store, 1, &idp, fast())[0];
        let (id, secrets) = secrets_of(c, "SUBJECT-visible-in-redb");
        idp.state.lock().unwrap().current = "RT-visible-at-rest-0".into();
        c.token(&id, Duration::from_secs(60), in_a_while()).unwrap();
        secrets
    };
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 1000);
    for (secret, what) in &secrets {
        absent(&bytes, secret, what);
    }
}

/// Waits until a store the test dropped is closed: a refresh worker may still hold it
/// for a moment after the answer (as a process may still be exiting).
fn until_closed(store: std::sync::Weak<EmbeddedConnections>) {
    support::eventually("the replica to let go of its file", || {
        store.upgrade().is_none().then_some(())
    });
}

#[test]
fn the_redb_store_survives_a_restart_and_a_key_rotation() {
    let idp = FakeIdp::new(Rotation::OneTime);
    let path = scratch("redb").join("connections.redb");
    let old_keys = format!("names:{KEY_1},k1:{KEY_1}");
    let (id, before, closed) = {
        let store = Arc::new(EmbeddedConnections::open(&path, keyring(&old_keys), 100).unwrap());
        let closed = Arc::downgrade(&store);
        let c = &replicas_on(store, 1, &idp, fast())[0];
        let (id, _) = create(c, "restart");
        c.token(&id, Duration::from_secs(60), in_a_while()).unwrap();
        (id.clone(), c.get(&id).unwrap(), closed)
    };
    until_closed(closed);
    // A second opening while the first is open is refused (the file is locked).
    let open = EmbeddedConnections::open(&path, keyring(&old_keys), 100).unwrap();
    assert!(EmbeddedConnections::open(&path, keyring(&old_keys), 100).is_err());
    drop(open);
    // Rotated: k2 encrypts, k1 still opens what it sealed.
    let rotated = format!("names:{KEY_1},k2:{KEY_2},k1:{KEY_1}");
    let closed = {
        let store = Arc::new(EmbeddedConnections::open(&path, keyring(&rotated), 100).unwrap());
        let closed = Arc::downgrade(&store);
        let c = &replicas_on(store, 1, &idp, fast())[0];
        assert_eq!(c.get(&id).unwrap(), before);
        let t = c.token(&id, Duration::from_secs(60), in_a_while()).unwrap();
        assert_eq!(t.access_token.expose(), at(1));
        assert_eq!(idp.total_presentations(), 1);
        // Rewritten under k2 by a revive.
        c.revive(&id, expired_grant(), &identity("restart"))
            .unwrap();
        closed
    };
    until_closed(closed);
    // k1 retired: the record written under k2 still opens.
    {
        let store = Arc::new(
            EmbeddedConnections::open(&path, keyring(&format!("names:{KEY_1},k2:{KEY_2}")), 100)
                .unwrap(),
        );
        assert_eq!(
            store
                .load(&id)
                .unwrap()
                .found
                .unwrap()
                .conn
                .grant
                .generation,
            2
        );
    }
    // Another names key would find nothing: refused at opening instead.
    let err = EmbeddedConnections::open(&path, keyring(&format!("k2:{KEY_2}")), 100)
        .err()
        .unwrap();
    assert!(err.contains("names"), "{err}");
}

/// The child half of the crash test: writes generation after generation until killed.
fn redb_writer(path: &Path) -> ! {
    let store = Arc::new(EmbeddedConnections::open(path, keys(), 100).unwrap());
    let idp = FakeIdp::new(Rotation::OneTime);
    let c = Connections::new(store.clone(), refreshers(&idp, None), fast());
    let (id, _) = create(&c, "crash");
    println!("\nid {id}");
    loop {
        let v = store.load(&id).unwrap().found.unwrap();
        let mut n = v.conn.clone();
        let g = n.grant.generation + 1;
        n.grant.generation = g;
        n.grant.access_token = Secret::new(at(g));
        n.grant.refresh_token = Some(Secret::new(rt(g)));
        assert_eq!(
            store.swap(v.revision, &n).unwrap(),
            Swap::Done(v.revision + 1)
        );
        println!("committed {g}");
        std::io::stdout().flush().unwrap();
    }
}

/// A process writing to the file in a loop is killed (SIGKILL, most likely mid-transaction);
/// the file then opens, and holds a consistent record no older than the last commit reported.
#[test]
fn the_redb_store_survives_a_crash_mid_transaction() {
    if let Ok(path) = std::env::var("CONNECTIONS_CORE_REDB_WRITER") {
        redb_writer(Path::new(&path));
    }
    let path = scratch("redb").join("connections.redb");
    // This very test, by its full name in the test binary (`connections_core::...`).
    let (_, module) = module_path!().split_once("::").unwrap_or(("", ""));
    let me = format!("{module}::the_redb_store_survives_a_crash_mid_transaction");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            me.trim_start_matches("::"),
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("CONNECTIONS_CORE_REDB_WRITER", &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut id = None;
    let mut last = 0u64;
    while last < 40 {
        let line = lines.next().expect("the writer stopped").unwrap();
        if let Some(i) = line.strip_prefix("id ") {
            id = Some(i.to_string());
        } else if let Some(g) = line.strip_prefix("committed ") {
            last = g.parse().unwrap();
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let id = id.expect("the writer named no connection");
    let store = EmbeddedConnections::open(&path, keys(), 100).unwrap();
    let c = store
        .load(&id)
        .unwrap()
        .found
        .expect("the connection is gone")
        .conn;
    let g = c.grant.generation;
    assert!(
        g >= last,
        "generation {g} is older than the last commit reported ({last})"
    );
    assert_eq!(c.grant.access_token.expose(), at(g));
    assert_eq!(c.grant.refresh_token.unwrap().expose(), rt(g));
    // And it takes writes again.
    let v = store.load(&id).unwrap().found.unwrap();
    assert!(matches!(
        store.swap(v.revision, &v.conn).unwrap(),
        Swap::Done(_)
    ));
}

#[test]
fn the_redis_persistence_check_tells_what_a_crash_would_lose() {
    let plain = support::RedisServer::start();
    let store = RedisStore::new(
        &redis_config(plain.url(), "p:", keys()),
        Duration::from_secs(60),
        10,
    )
    .unwrap();
    let p = redis_persistence(store.kv());
    assert_eq!(p, Persistence::None);
    assert!(p.warning().unwrap().contains("appendfsync always"));
    let durable = DurableRedis::start();
    let store = RedisStore::new(
        &redis_config(durable.url(), "p:", keys()),
        Duration::from_secs(60),
        10,
    )
    .unwrap();
    assert_eq!(redis_persistence(store.kv()), Persistence::AofAlways);
    assert_eq!(redis_persistence(store.kv()).warning(), None);
    let mut con = redis::Client::open(durable.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("appendfsync")
        .arg("everysec")
        .query(&mut con)
        .unwrap();
    assert_eq!(
        redis_persistence(store.kv()),
        Persistence::AofRelaxed("everysec".into())
    );
    let unreachable = RedisStore::new(
        &redis_config(
            format!("redis://127.0.0.1:{}/0", support::free_port()),
            "p:",
            keys(),
        ),
        Duration::from_secs(60),
        10,
    )
    .unwrap();
    assert!(matches!(
        redis_persistence(unreachable.kv()),
        Persistence::Unknown(_)
    ));
}

#[test]
fn redis_refuses_a_changed_names_key() {
    let server = support::RedisServer::start();
    let store = |spec: &str| {
        Arc::new(
            RedisStore::new(
                &redis_config(server.url(), "names:", keyring(spec)),
                Duration::from_secs(60),
                10,
            )
            .unwrap(),
        )
    };
    RedisConnections::new(store(&format!("names:{KEY_1},k1:{KEY_1}")), 10)
        .check_key_names()
        .unwrap();
    RedisConnections::new(store(&format!("names:{KEY_1},k2:{KEY_2}")), 10)
        .check_key_names()
        .unwrap();
    let err = RedisConnections::new(store(&format!("k2:{KEY_2}")), 10)
        .check_key_names()
        .unwrap_err()
        .to_string();
    assert!(err.contains("names"), "{err}");
}

/// On a replicated Redis (Sentinel), a refresh token is presented only once its intent is on a
/// replica: with the replica down, WAIT cannot vouch for the intent (a failover could bring
/// the record back without it, and another replica present the same one-time token), so
/// nothing is presented and the attempt records `not_sent`; once the replica is back, the
/// refresh goes ahead, once.
#[test]
fn on_sentinel_a_refresh_token_is_presented_only_once_its_intent_is_on_a_replica() {
    use oauth_relay::kv::settings::{HostPort, SentinelSettings};
    use support::redis_topology::SentinelSet;
    let mut set = SentinelSet::start();
    let mut config = RedisConfig::new(
        KvSettings {
            prefix: "durable:".into(),
            timeout: Duration::from_secs(2),
            ..KvSettings::new(Topology::Sentinel(SentinelSettings {
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
            }))
        },
        keys(),
    );
    config.durability.wait = Duration::from_millis(500);
    assert_eq!(
        config.durability.replicas, 1,
        "Sentinel waits for one replica"
    );
    let store = Arc::new(RedisStore::new(&config, Duration::from_secs(600), 1000).unwrap());
    let idp = FakeIdp::new(Rotation::OneTime);
    let c = Connections::new(
        Arc::new(RedisConnections::new(store, 1000)),
        refreshers(&idp, None),
        fast(),
    );
    let (id, _) = create(&c, "ana");
    let primary = set.primary_by_sentinels().unwrap();
    let replica = set.other_than(primary);
    set.node(replica).kill();
    let refused = c.token(
        &id,
        Duration::from_secs(60),
        Instant::now() + Duration::from_secs(3),
    );
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(idp.total_presentations(), 0, "presented with no replica");
    set.node(replica).restart();
    set.wait_until_watched();
    let fresh = support::eventually("a refresh once the replica is back", || {
        c.token(
            &id,
            Duration::from_secs(60),
            Instant::now() + Duration::from_secs(5),
        )
        .ok()
    });
    assert_eq!(fresh.generation, 1);
    assert_eq!(idp.presented(&rt(0)), 1);
    assert_eq!(idp.total_presentations(), 1);
}
