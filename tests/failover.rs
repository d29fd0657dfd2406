//! Three real `oauth-relay` processes on a replicated Redis: a Sentinel set (a primary, its
//! replica, three sentinels) and a Redis Cluster (three primaries with a replica each). The
//! same callback taken from all three at once goes to one; a stream of register, callback and
//! retrieve steps spread over the replicas goes on through a primary killed with SIGKILL, a
//! cluster slot moved to another primary and a cluster node restarted: no code is ever handed
//! out twice, and every loss is loud (a 503), never silent. Long-polls keep being answered
//! across replicas after a failover (the subscription follows the new primary).

use crate::support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::redis_topology::{wait_for, ClusterSet, SentinelSet};
use support::relay_api::{hash_of, As, KEY};
use support::{eventually, Relay};

/// How the replicas reach Redis: the settings of one topology.
fn replicas(topology: &[(&str, String)]) -> Vec<Relay> {
    let mut env: Vec<(&str, String)> = topology.to_vec();
    env.extend([
        ("OAUTH_RELAY_ENCRYPTION_KEY", KEY.to_string()),
        // Generous for a loaded two-core machine: a call during a failover fails within it.
        ("OAUTH_RELAY_REDIS_TIMEOUT_MS", "1000".into()),
        ("OAUTH_RELAY_REDIS_REPLICA_WAIT_MS", "1000".into()),
        // A long-poll that is never woken stays parked far longer than any wait below.
        ("OAUTH_RELAY_MAX_WAIT_SECS", "3600".into()),
        ("OAUTH_RELAY_MAX_PENDING_PER_CLIENT", "100000".into()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    (0..3)
        .map(|_| {
            let relay = Relay::start_env(&[], &env);
            eventually("the replica to be ready", || {
                (relay.get("/ready").status == 200).then_some(())
            });
            relay
        })
        .collect()
}

fn sentinel_env(set: &SentinelSet) -> Vec<(&'static str, String)> {
    vec![
        (
            "OAUTH_RELAY_REDIS_SENTINELS",
            set.sentinel_addrs().join(","),
        ),
        ("OAUTH_RELAY_REDIS_MASTER_NAME", set.name.clone()),
    ]
}

fn cluster_env(set: &ClusterSet) -> Vec<(&'static str, String)> {
    vec![("OAUTH_RELAY_REDIS_CLUSTER_NODES", set.seeds().join(","))]
}

/// The cluster slot of the relay's keys (`{oauth-relay:relay}`, src/store/redis.rs).
fn relay_slot() -> u16 {
    oauth_relay::kv::scripts::slot(b"oauth-relay:relay")
}

#[test]
fn on_sentinel_one_callback_taken_from_three_replicas_goes_to_one() {
    let set = SentinelSet::start();
    support::one_take_wins(&replicas(&sentinel_env(&set)));
}

#[test]
fn on_a_cluster_one_callback_taken_from_three_replicas_goes_to_one() {
    let set = ClusterSet::start();
    support::one_take_wins(&replicas(&cluster_env(&set)));
}

/// What one replica answered, and when.
#[derive(Clone, Copy, Debug)]
struct Seen {
    replica: usize,
    step: Step,
    status: u16,
    at: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Register,
    Callback,
    Retrieve,
}

/// One sign-in of the stream: its state and code, and what became of it.
#[derive(Debug, Default)]
struct Pair {
    state: String,
    code: String,
    /// When `/callback` was answered 200.
    stored_at: Option<Instant>,
    /// Every retrieval's status, in order.
    retrievals: Vec<u16>,
    /// The code a retrieval handed out, if one did.
    got: Option<String>,
}

/// A stream of sign-ins on `replicas` from `threads` threads: each registers a state with a
/// retrieval secret on one replica, sends its callback to the next and retrieves it from the
/// third, going on to the next replica whenever one answers 503 (as a client retries), until
/// each step has a definite answer.
struct Stream {
    pairs: Arc<Mutex<Vec<Pair>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Retries a step on the next replica while it answers 503 (or cannot be reached); gives up
/// after 120 s, which only a broken build reaches.
fn until_definite(
    replicas: &[Relay],
    first: usize,
    step: Step,
    seen: &Mutex<Vec<Seen>>,
    mut send: impl FnMut(&Relay) -> u16,
    mut each: impl FnMut(u16),
) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut i = first;
    loop {
        let status = send(&replicas[i % 3]);
        seen.lock().unwrap().push(Seen {
            replica: i % 3,
            step,
            status,
            at: Instant::now(),
        });
        each(status);
        if status != 503 {
            return status;
        }
        assert!(Instant::now() < deadline, "{step:?} never got an answer");
        std::thread::sleep(Duration::from_millis(50));
        i += 1;
    }
}

impl Stream {
    fn start(replicas: Arc<Vec<Relay>>, tag: &'static str, threads: usize) -> Stream {
        let pairs = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|t| {
                let (replicas, pairs, seen, stop) =
                    (replicas.clone(), pairs.clone(), seen.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut n = 0;
                    while !stop.load(Ordering::SeqCst) {
                        n += 1;
                        let first = t + n;
                        let state = format!("{tag}-{t}-{n}");
                        let secret = format!("secret-{state}");
                        let mut pair = Pair {
                            state: state.clone(),
                            code: format!("code-{state}"),
                            ..Pair::default()
                        };
                        let mut lost_a_reply = false;
                        let registered = until_definite(
                            &replicas,
                            first,
                            Step::Register,
                            &seen,
                            |r| {
                                As::anyone()
                                    .register(
                                        r,
                                        serde_json::json!({
                                            "state": state, "retrieval_hash": hash_of(&secret)
                                        }),
                                    )
                                    .status
                            },
                            |s| lost_a_reply |= s == 503,
                        );
                        // 409 only when a try whose answer was lost had registered it.
                        assert!(
                            registered == 201 || (registered == 409 && lost_a_reply),
                            "register {state}: {registered}"
                        );
                        let stored = until_definite(
                            &replicas,
                            first + 1,
                            Step::Callback,
                            &seen,
                            |r| {
                                r.get(&format!("/callback?code={}&state={state}", pair.code))
                                    .status
                            },
                            |_| {},
                        );
                        assert_eq!(stored, 200, "callback {state}");
                        pair.stored_at = Some(Instant::now());
                        let holder = As::holder(&secret);
                        let mut retrievals = Vec::new();
                        let mut got = None;
                        let answer = until_definite(
                            &replicas,
                            first + 2,
                            Step::Retrieve,
                            &seen,
                            |r| {
                                let res = holder.get(r, &format!("/api/callback/{state}"));
                                if res.status == 200 {
                                    got = res.json()["auth_code"].as_str().map(String::from);
                                }
                                res.status
                            },
                            |s| retrievals.push(s),
                        );
                        assert!(
                            matches!(answer, 200 | 404 | 410),
                            "retrieve {state}: {answer}"
                        );
                        pair.retrievals = retrievals;
                        pair.got = got;
                        pairs.lock().unwrap().push(pair);
                    }
                })
            })
            .collect();
        Stream {
            pairs,
            seen,
            stop,
            threads,
        }
    }

    fn done(&self) -> usize {
        self.pairs.lock().unwrap().len()
    }

    /// Waits until `more` pairs beyond those done now are done.
    fn wait_for(&self, more: usize, what: &str) {
        let target = self.done() + more;
        wait_for(what, 180, || (self.done() >= target).then_some(()));
    }

    fn finish(self) -> (Vec<Pair>, Vec<Seen>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().expect("a stream thread failed");
        }
        let pairs = std::mem::take(&mut *self.pairs.lock().unwrap());
        let seen = std::mem::take(&mut *self.seen.lock().unwrap());
        (pairs, seen)
    }
}

/// The checks every fault must pass, once the stream is over and Redis whole again: no code
/// handed out twice (each pair's code once at most, and a second retrieval of every state now
/// answers 410 or 404, never the code), and no silent loss. A take whose reply was lost, or
/// that no replica acknowledged in time, answered 503; a 410 first (taken, by nobody we told)
/// would be a silent loss. A callback stored just before the primary died may be lost with it
/// (replication is asynchronous, and storing a callback does not wait for replicas:
/// docs/scaling.md): then the retrieval says 404. `lossy_until`: callbacks stored before it may
/// be lost so; `None`: none may (nothing was lost in the fault).
fn no_code_twice_and_no_silent_loss(
    replicas: &[Relay],
    pairs: &[Pair],
    lossy_until: Option<Instant>,
) -> (usize, usize) {
    let mut handed: HashMap<&str, usize> = HashMap::new();
    let (mut loud, mut lost_callbacks) = (0, 0);
    for p in pairs {
        if let Some(code) = &p.got {
            assert_eq!(code, &p.code, "{} got another pair's code", p.state);
            *handed.entry(code).or_default() += 1;
        }
        let first_definite = p.retrievals.iter().find(|s| **s != 503);
        match (p.got.is_some(), first_definite) {
            (true, _) => {}
            (false, Some(410)) => {
                assert!(
                    p.retrievals.first() == Some(&503),
                    "{}: taken without a word: {:?}",
                    p.state,
                    p.retrievals
                );
                loud += 1;
            }
            (false, Some(404)) => {
                let stored = p.stored_at.unwrap();
                assert!(
                    lossy_until.is_some_and(|t| stored < t),
                    "{}: a callback stored after the failover is missing: {:?}",
                    p.state,
                    p.retrievals
                );
                lost_callbacks += 1;
            }
            other => panic!("{}: {other:?} {:?}", p.state, p.retrievals),
        }
    }
    assert!(handed.values().all(|n| *n == 1), "a code handed out twice");
    // Once more, now: nothing taken comes back.
    for (i, p) in pairs.iter().enumerate() {
        let secret = format!("secret-{}", p.state);
        let again = until_definite(
            replicas,
            i,
            Step::Retrieve,
            &Mutex::new(Vec::new()),
            |r| {
                As::holder(&secret)
                    .get(r, &format!("/api/callback/{}", p.state))
                    .status
            },
            |_| {},
        );
        if p.got.is_some() || p.retrievals.contains(&410) {
            assert_eq!(again, 410, "{} was taken, and is back", p.state);
        } else {
            assert!(matches!(again, 404 | 410), "{}: {again}", p.state);
        }
    }
    (loud, lost_callbacks)
}

/// For each replica, how long after `from` it first answered `step` with `status`.
fn first_after(seen: &[Seen], from: Instant, step: Step, status: u16) -> Vec<Option<Duration>> {
    (0..3)
        .map(|r| {
            seen.iter()
                .filter(|s| s.replica == r && s.step == step && s.status == status && s.at > from)
                .map(|s| s.at - from)
                .min()
        })
        .collect()
}

fn logs_with(replicas: &[Relay], needle: &str) -> usize {
    replicas
        .iter()
        .map(|r| r.logs().iter().filter(|l| l.contains(needle)).count())
        .sum()
}

#[test]
fn a_sentinel_failover_mid_traffic_hands_no_code_out_twice_and_loses_none_silently() {
    let mut set = SentinelSet::start();
    let replicas = Arc::new(replicas(&sentinel_env(&set)));
    let stream = Stream::start(replicas.clone(), "fo", 3);
    stream.wait_for(30, "30 sign-ins before the kill");
    let old = set.primary_by_sentinels().unwrap();
    let killed = Instant::now();
    set.node(old).kill();
    let new = set.wait_for_new_primary(old);
    let promoted = Instant::now();
    // The new primary has no replica until the old one is back: no take may be handed out
    // meanwhile (it would not survive the next failover), and each says so: refused before it
    // ran (`take_refused`), or, had the replica gone after the check, not acknowledged.
    wait_for("a take refused for want of a replica", 120, || {
        (logs_with(&replicas, "\"take_refused\"") + logs_with(&replicas, "\"take_not_replicated\"")
            > 0)
        .then_some(())
    });
    set.node(old).restart();
    set.wait_until_watched();
    let whole = Instant::now();
    stream.wait_for(
        30,
        "30 sign-ins after the old primary came back as a replica",
    );
    let (pairs, seen) = stream.finish();
    let (loud, lost) = no_code_twice_and_no_silent_loss(&replicas, &pairs, Some(promoted));
    let stored = first_after(&seen, killed, Step::Callback, 200);
    let taken = first_after(&seen, killed, Step::Retrieve, 200);
    eprintln!(
        "{} sign-ins; {loud} takes lost loudly (503, then 410); {lost} callbacks lost with the old primary; \
         primary {old} killed, {new} promoted after {:?}, the old one back as its replica after {:?}; \
         first callback stored after the kill, per replica: {stored:?}; first take: {taken:?}",
        pairs.len(),
        promoted - killed,
        whole - killed,
    );
    assert!(
        stored.iter().all(Option::is_some),
        "every replica stores again"
    );
    assert!(
        taken.iter().all(Option::is_some),
        "every replica takes again"
    );
    // Every replica resubscribed on the new primary.
    for r in replicas.iter() {
        assert!(
            r.logs()
                .iter()
                .any(|l| l.contains("\"redis_subscriber\"") && l.contains("subscribed again")),
            "a replica never resubscribed"
        );
    }
}

#[test]
fn after_a_sentinel_failover_long_polls_are_answered_across_replicas() {
    let mut set = SentinelSet::start();
    let replicas = replicas(&sentinel_env(&set));
    let [a, b, c] = [&replicas[0], &replicas[1], &replicas[2]];
    std::thread::scope(|s| {
        // Parked before the failover, answered after it.
        let early = s.spawn(|| a.get("/api/callback/lp-across?wait=3600"));
        eventually("the long-poll to park", || {
            (support::relay_api::waiting_clients(a) == 1).then_some(())
        });
        let old = set.primary_by_sentinels().unwrap();
        set.node(old).kill();
        set.wait_for_new_primary(old);
        set.node(old).restart();
        set.wait_until_watched();
        let late = s.spawn(|| b.get("/api/callback/lp-across?wait=3600"));
        eventually("the second long-poll to park", || {
            (support::relay_api::waiting_clients(b) == 1).then_some(())
        });
        assert!(!early.is_finished() && !late.is_finished());
        let stored = until_definite(
            &replicas,
            2,
            Step::Callback,
            &Mutex::new(Vec::new()),
            |r| {
                r.get("/callback?code=after-failover&state=lp-across")
                    .status
            },
            |_| {},
        );
        assert_eq!(stored, 200);
        // Woken through the new primary's pub/sub (a long-poll never woken would wait an hour).
        eventually("both long-polls to be answered", || {
            (early.is_finished() && late.is_finished()).then_some(())
        });
        let mut answers = [early.join().unwrap(), late.join().unwrap()];
        answers.sort_by_key(|r| r.status);
        assert_eq!(answers[0].status, 200, "{}", answers[0].text());
        assert_eq!(answers[0].json()["auth_code"], "after-failover");
        assert_eq!(answers[1].status, 410);
    });
    let _ = c;
}

#[test]
fn a_cluster_slot_migration_mid_traffic_loses_nothing() {
    let set = ClusterSet::start();
    let replicas = Arc::new(replicas(&cluster_env(&set)));
    let slot = relay_slot();
    let from = set.owner_of(slot);
    let to = set.primary_other_than(from);
    let stream = Stream::start(replicas.clone(), "mig", 3);
    stream.wait_for(20, "20 sign-ins before the migration");
    // Keys move a few at a time while the stream goes on: a script whose keys are all still on
    // the old node runs there, one whose keys all moved is sent on (ASK), one whose keys are
    // split waits (TRYAGAIN, retried by the layer, a 503 past its timeout, retried by the
    // client); then the slot is handed over (MOVED).
    set.begin_migration(slot, from, to);
    for _ in 0..5 {
        set.move_keys(slot, from, to, 3);
        std::thread::sleep(Duration::from_millis(200));
    }
    set.finish_migration(slot, from, to);
    stream.wait_for(20, "20 sign-ins after the migration");
    let (pairs, _) = stream.finish();
    assert_eq!(set.owner_of(slot), to);
    let (loud, lost) = no_code_twice_and_no_silent_loss(&replicas, &pairs, None);
    eprintln!(
        "{} sign-ins across the move of slot {slot} from {from} to {to}; {loud} takes lost loudly",
        pairs.len()
    );
    assert_eq!(lost, 0);
    // Nothing was lost in a migration: every sign-in got its code but those whose take's
    // answer was lost (503, then 410).
    assert_eq!(
        pairs.iter().filter(|p| p.got.is_some()).count() + loud,
        pairs.len()
    );
}

#[test]
fn a_cluster_primary_killed_and_restarted_mid_traffic_hands_no_code_out_twice() {
    let mut set = ClusterSet::start();
    let replicas = Arc::new(replicas(&cluster_env(&set)));
    let slot = relay_slot();
    let old = set.owner_of(slot);
    let stream = Stream::start(replicas.clone(), "node", 3);
    stream.wait_for(20, "20 sign-ins before the kill");
    let killed = Instant::now();
    set.node(old).kill();
    let new = set.wait_for_new_owner(slot, old);
    let promoted = Instant::now();
    set.node(old).restart();
    set.wait_ok();
    let whole = Instant::now();
    stream.wait_for(20, "20 sign-ins after the restarted node rejoined");
    let (pairs, seen) = stream.finish();
    let (loud, lost) = no_code_twice_and_no_silent_loss(&replicas, &pairs, Some(promoted));
    eprintln!(
        "{} sign-ins; {loud} takes lost loudly; {lost} callbacks lost with the old primary; \
         {old} killed, {new} serves the slot after {:?}, the cluster whole after {:?}; \
         first take after the kill, per replica: {:?}",
        pairs.len(),
        promoted - killed,
        whole - killed,
        first_after(&seen, killed, Step::Retrieve, 200),
    );
}
