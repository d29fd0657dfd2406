//! The Redis layer (`oauth_relay::kv`) against real topologies: one server, a Sentinel set, a
//! Redis Cluster. Scripts by EVALSHA with the NOSCRIPT fallback, take-once races between
//! several handles (replicas in one process), pub/sub between handles, and what happens when
//! servers die, are demoted or hand their slots over while calls are under way.

use crate::support;

use oauth_relay::kv::scripts::{self, tagged};
use oauth_relay::kv::settings::{HostPort, SentinelSettings, Topology};
use oauth_relay::kv::{Call, Event, Kv, KvError, KvSettings, Script, Subscription};
use oauth_relay::secret::Secret;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::redis_topology::{
    cli, wait_for, Access, ClusterSet, SentinelOptions, SentinelSet, Standalone, TempDir, TestCa,
};

/// Generous for a loaded two-core machine; short enough that calls during a failover fail
/// and the stream of writes goes on.
const TIMEOUT: Duration = Duration::from_millis(1000);

fn with_timeout(topology: Topology) -> KvSettings {
    KvSettings {
        timeout: TIMEOUT,
        ..KvSettings::new(topology)
    }
}

fn standalone(url: &str) -> KvSettings {
    with_timeout(Topology::Standalone {
        url: Secret::new(url),
    })
}

fn sentinel_settings(set: &SentinelSet) -> SentinelSettings {
    SentinelSettings {
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
    }
}

fn cluster_settings(set: &ClusterSet) -> KvSettings {
    with_timeout(Topology::Cluster {
        seeds: set
            .seeds()
            .iter()
            .map(|a| HostPort::parse(a, 6379).unwrap())
            .collect(),
        tls: false,
    })
}

fn open(s: &KvSettings) -> Kv {
    Kv::open(s).expect("the settings are valid")
}

fn put() -> Script {
    Script::new("redis.call('SET', KEYS[1], ARGV[1]) return 1")
}

/// Hands out the value once: the second caller gets nil (Lua `false`, read as RESP2's nil).
fn take() -> Script {
    Script::new(
        "local v = redis.call('GET', KEYS[1]) if v then redis.call('DEL', KEYS[1]) return v end return false",
    )
}

fn incr() -> Script {
    Script::new("return redis.call('INCR', KEYS[1])")
}

/// Exactly one of many concurrent takers, spread over `handles` (some blocking threads, some
/// async tasks on a runtime of their own), gets each value.
fn one_winner_per_value(handles: &[Kv], tag: &str) {
    let (put, take) = (put(), take());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for round in 0..30 {
        let key = tagged("kvtest:", &format!("{tag}{round}"), ":code");
        let stored: i64 = handles[round % handles.len()]
            .run_blocking(Call::script(&put).key(&key).arg(format!("code-{round}")))
            .unwrap();
        assert_eq!(stored, 1);
        let winners = Arc::new(Mutex::new(Vec::new()));
        std::thread::scope(|scope| {
            for i in 0..6 {
                let (kv, key, take, winners) = (&handles[i % handles.len()], &key, &take, &winners);
                scope.spawn(move || {
                    let got: Option<String> = kv.run_blocking(Call::script(take).key(key)).unwrap();
                    winners.lock().unwrap().extend(got);
                });
            }
            let tasks: Vec<_> = (0..6)
                .map(|i| {
                    let kv = handles[(i + 1) % handles.len()].clone();
                    let (key, take, winners) = (key.clone(), take.clone(), winners.clone());
                    runtime.spawn(async move {
                        let got: Option<String> =
                            kv.run(Call::script(&take).key(&key)).await.unwrap();
                        winners.lock().unwrap().extend(got);
                    })
                })
                .collect();
            runtime.block_on(async {
                for t in tasks {
                    t.await.unwrap();
                }
            });
        });
        assert_eq!(
            *winners.lock().unwrap(),
            [format!("code-{round}")],
            "round {round}: exactly one taker gets the value"
        );
    }
}

/// The next message on `sub` within `secs` (Gaps skipped), publishing with `publish` until one
/// comes: after a failover the subscriber may still be on its way to the new primary.
fn receive(sub: &mut Subscription, secs: u64, mut publish: impl FnMut()) -> (String, Vec<u8>) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last_publish = Instant::now() - Duration::from_secs(1);
    loop {
        match sub.try_next() {
            Some(Event::Message { channel, payload }) => return (channel, payload),
            Some(Event::Gap) => continue,
            None => {}
        }
        assert!(Instant::now() < deadline, "no message arrived");
        if last_publish.elapsed() > Duration::from_millis(300) {
            publish();
            last_publish = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for the subscription's first Gap: it is in place.
fn subscribed(sub: &mut Subscription) {
    wait_for("the subscription", 60, || {
        matches!(sub.try_next(), Some(Event::Gap)).then_some(())
    });
}

fn pubsub_between(a: &Kv, b: &Kv, channel: &str) {
    let mut sub = a.subscribe(&[channel]);
    subscribed(&mut sub);
    let (got, payload) = receive(&mut sub, 30, || {
        b.publish_blocking(channel, b"news").unwrap();
    });
    assert_eq!((got.as_str(), payload.as_slice()), (channel, &b"news"[..]));
}

/// `cmdstat_<name>` calls from INFO commandstats.
fn calls(node: &support::redis_topology::RedisNode, name: &str) -> u64 {
    node.info("commandstats", &format!("cmdstat_{name}"))
        .and_then(|v| {
            v.split(',')
                .find_map(|f| f.strip_prefix("calls="))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn standalone_scripts_go_by_sha_and_fall_back_to_eval_once() {
    let redis = Standalone::start();
    let kv = open(&standalone(&redis.url()));
    let now = Script::with_now("return now").idempotent();
    let key = tagged("kvtest:", "sha", ":n");
    for _ in 0..10 {
        let n: i64 = kv.run_blocking(Call::script(&incr()).key(&key)).unwrap();
        assert!(n > 0);
    }
    assert_eq!(
        calls(&redis.node, "eval"),
        1,
        "EVAL only after the first NOSCRIPT"
    );
    assert!(calls(&redis.node, "evalsha") >= 10);
    // Redis forgets its scripts (a restart, SCRIPT FLUSH): NOSCRIPT again, EVAL once again.
    assert_eq!(redis.node.cli(&["SCRIPT", "FLUSH"]), "OK");
    let n: i64 = kv.run_blocking(Call::script(&incr()).key(&key)).unwrap();
    assert_eq!(n, 11, "the NOSCRIPT answer ran nothing; EVAL ran it once");
    assert_eq!(calls(&redis.node, "eval"), 2);
    // The shared NOW snippet reads Redis's clock in milliseconds.
    let ms: i64 = kv.run_blocking(Call::script(&now)).unwrap();
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!((ms - unix_ms).abs() < 60_000, "{ms} vs {unix_ms}");
    // A script error is Redis's definite answer, not a lost reply.
    let e = kv
        .run_blocking::<i64>(Call::script(&Script::new(
            "return redis.call('NOSUCHCOMMAND')",
        )))
        .unwrap_err();
    assert!(
        matches!(e, KvError::Server { .. }) && !e.retry_safe(),
        "{e:?}"
    );
    // A reply of the wrong type: it ran.
    let e = kv
        .run_blocking::<i64>(Call::command("SET").key("kvtest:t").arg("not a number"))
        .unwrap_err();
    assert!(matches!(e, KvError::Reply(_)) && e.may_have_run(), "{e:?}");
}

#[test]
fn standalone_take_once_and_pubsub_across_handles() {
    let redis = Standalone::start();
    let handles: Vec<Kv> = (0..3).map(|_| open(&standalone(&redis.url()))).collect();
    one_winner_per_value(&handles, "s");
    pubsub_between(&handles[0], &handles[1], "kvtest:news");
}

#[test]
fn a_reader_that_falls_behind_is_told_it_missed_messages() {
    let redis = Standalone::start();
    let kv = open(&standalone(&redis.url()));
    let mut sub = kv.subscribe(&["kvtest:flood"]);
    subscribed(&mut sub);
    // Nobody reads while 5,000 messages arrive: past the buffer they are dropped, not queued
    // without bound, and the reader learns it.
    for i in 0..5000 {
        kv.publish_blocking("kvtest:flood", format!("{i}").as_bytes())
            .unwrap();
    }
    let mut events = Vec::new();
    wait_for("the gap to be reported", 60, || {
        while let Some(e) = sub.try_next() {
            events.push(e);
        }
        events.contains(&Event::Gap).then_some(())
    });
    let messages = events.iter().take_while(|e| **e != Event::Gap).count();
    assert!(
        (1..5000).contains(&messages),
        "{messages} messages before the gap"
    );
    // After the gap, messages flow again.
    let (_, payload) = receive(&mut sub, 30, || {
        kv.publish_blocking("kvtest:flood", b"again").unwrap();
    });
    assert_eq!(payload, b"again");
}

#[test]
fn calls_work_from_every_runtime_and_blocking_thread() {
    let redis = Standalone::start();
    let kv = open(&standalone(&redis.url()));
    let key = tagged("kvtest:", "rt", ":n");
    // The first call, which opens the connection, comes from a runtime that then goes away:
    // the connection's driver is not on it.
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let n: i64 = rt
            .block_on(kv.run(Call::script(&incr()).key(&key)))
            .unwrap();
        assert_eq!((n, kv.stats().connects), (1, 1));
    }
    // Event loops as the server runs them: current-thread runtimes, one per thread.
    std::thread::scope(|scope| {
        for _ in 0..3 {
            let (kv, key) = (kv.clone(), key.clone());
            scope.spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    for _ in 0..100 {
                        let _: i64 = kv.run(Call::script(&incr()).key(&key)).await.unwrap();
                    }
                });
            });
        }
        // Plain threads, and a runtime's blocking pool (where the server runs blocking work).
        for _ in 0..2 {
            let (kv, key) = (kv.clone(), key.clone());
            scope.spawn(move || {
                for _ in 0..100 {
                    let _: i64 = kv.run_blocking(Call::script(&incr()).key(&key)).unwrap();
                }
            });
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (k, key2) = (kv.clone(), key.clone());
        rt.block_on(async move {
            tokio::task::spawn_blocking(move || {
                for _ in 0..100 {
                    let _: i64 = k.run_blocking(Call::script(&incr()).key(&key2)).unwrap();
                }
            })
            .await
            .unwrap();
        });
    });
    let n: i64 = kv
        .run_blocking(Call::command("GET").key(&key).idempotent())
        .unwrap();
    assert_eq!(n, 601);
    // Every runtime that called is gone; the one connection they all used is not.
    let n: i64 = kv.run_blocking(Call::script(&incr()).key(&key)).unwrap();
    assert_eq!((n, kv.stats().connects), (602, 1));
}

#[test]
fn a_lost_reply_is_reported_never_retried_and_nothing_sent_is_unavailable() {
    let mut redis = Standalone::start();
    let kv = open(&standalone(&redis.url()));
    let key = tagged("kvtest:", "lost", ":code");
    let _: i64 = kv
        .run_blocking(Call::script(&put()).key(&key).arg("c"))
        .unwrap();
    // Redis knows the take script already (a NOSCRIPT after the stall would run nothing).
    let none: Option<String> = kv
        .run_blocking(Call::script(&take()).key("kvtest:{lost}:other"))
        .unwrap();
    assert_eq!(none, None);
    // Redis stalls (a slow script, a fork, a paused VM) past the timeout: the take is queued
    // on the server and will run; the caller must hear that it may have.
    let port = redis.node.port;
    let stall = std::thread::spawn(move || cli(port, &Access::default(), &["DEBUG", "SLEEP", "5"]));
    // Only once Redis has stopped answering (a PING on a socket of its own goes unanswered):
    // on a loaded machine the DEBUG SLEEP may take a while to start.
    wait_for("Redis to stall", 30, || redis_stalled(port).then_some(()));
    let e = kv
        .run_blocking::<Option<String>>(Call::script(&take()).key(&key))
        .unwrap_err();
    assert!(matches!(e, KvError::Lost(_)) && e.may_have_run(), "{e:?}");
    // An idempotent read in the same stall: nothing changed, so not "lost".
    let stall2 =
        std::thread::spawn(move || cli(port, &Access::default(), &["DEBUG", "SLEEP", "2"]));
    stall.join().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let e = kv
        .run_blocking::<Option<String>>(Call::command("GET").key(&key).idempotent())
        .unwrap_err();
    assert!(
        matches!(e, KvError::Unavailable(_)) && e.retry_safe(),
        "{e:?}"
    );
    stall2.join().unwrap();
    // The take ran once, after the stall, and was not sent again: the value is gone, and a
    // take now finds nothing (a resend would have found nothing too, and said "nothing"
    // to a caller whose code was handed to nobody).
    let left: Option<String> = kv
        .run_blocking(Call::command("GET").key(&key).idempotent())
        .unwrap();
    assert_eq!(left, None);
    assert!(kv.stats().lost >= 1);
    // Redis down: once the layer has seen its connection close, a connection is refused
    // before anything is sent. (A call handed to the connection in the instant it dies is
    // reported Lost: nobody can tell whether it went out.)
    let disconnects = kv.stats().disconnects;
    redis.node.kill();
    wait_for("the layer to see Redis go", 30, || {
        (kv.stats().disconnects > disconnects).then_some(())
    });
    let e = kv
        .run_blocking::<i64>(Call::script(&put()).key(&key).arg("c"))
        .unwrap_err();
    assert!(matches!(e, KvError::Unavailable(_)), "{e:?}");
    assert!(matches!(kv.ping_blocking(), Err(KvError::Unavailable(_))));
    // Back (empty): the first write goes through on a new connection, nothing reported lost.
    redis.node.restart();
    let lost = kv.stats().lost;
    wait_for("Redis to answer the layer", 30, || kv.ping_blocking().ok());
    let stored: i64 = kv
        .run_blocking(Call::script(&put()).key(&key).arg("c"))
        .unwrap();
    assert_eq!((stored, kv.stats().lost), (1, lost));
}

/// Whether Redis on `port` leaves a PING unanswered for 200 ms.
fn redis_stalled(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(_answered) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn a_write_after_a_quiet_spell_checks_its_connection_first() {
    let redis = Standalone::start();
    let kv = open(&standalone(&redis.url()));
    let key = tagged("kvtest:", "quiet", ":n");
    let n: i64 = kv.run_blocking(Call::script(&incr()).key(&key)).unwrap();
    assert_eq!(n, 1);
    // Quiet for over a second, then Redis does not answer (as a connection a NAT dropped
    // would not): the PING that goes first is what goes unanswered, so the write was not
    // sent, and the caller may safely try again.
    std::thread::sleep(Duration::from_millis(1500));
    let port = redis.node.port;
    let stall = std::thread::spawn(move || cli(port, &Access::default(), &["DEBUG", "SLEEP", "5"]));
    // Only once Redis has stopped answering (a PING on a socket of its own goes unanswered):
    // on a loaded machine the DEBUG SLEEP may take a while to start.
    wait_for("Redis to stall", 30, || redis_stalled(port).then_some(()));
    let e = kv
        .run_blocking::<i64>(Call::script(&incr()).key(&key))
        .unwrap_err();
    assert!(
        matches!(e, KvError::Unavailable(_)) && e.retry_safe(),
        "{e:?}"
    );
    stall.join().unwrap();
    let n: i64 = kv
        .run_blocking(Call::command("GET").key(&key).idempotent())
        .unwrap();
    assert_eq!(n, 1, "the write never went out");
    assert_eq!(kv.stats().lost, 0);
}

#[test]
fn connections_redis_closed_are_replaced_before_a_write_goes_out() {
    let redis = Standalone::start();
    let kv = open(&standalone(&redis.url()));
    let key = tagged("kvtest:", "killed", ":n");
    for round in 1..=5 {
        let n: i64 = kv.run_blocking(Call::script(&incr()).key(&key)).unwrap();
        assert_eq!(n, round);
        // What Redis's idle `timeout`, a proxy or CLIENT KILL do: the connection goes away
        // while nobody uses it. The layer hears it close and the next write goes on a new one.
        let stats = kv.stats();
        let killed: u32 = redis
            .node
            .cli(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
            .parse()
            .unwrap();
        assert!(killed >= 1);
        wait_for("the layer to see its connection close", 30, || {
            (kv.stats().disconnects > stats.disconnects).then_some(())
        });
        let connects = stats.connects;
        let n: i64 = kv.run_blocking(Call::script(&incr()).key(&key)).unwrap();
        assert_eq!(n, round + 1, "not lost, not run twice");
        assert!(kv.stats().connects > connects);
        let _: i64 = kv.run_blocking(Call::command("DECR").key(&key)).unwrap();
    }
    assert_eq!(kv.stats().lost, 0);
}

#[test]
fn durable_writes_count_the_replicas_that_have_them() {
    let primary = Standalone::start();
    let kv = open(&standalone(&primary.url()));
    let key = tagged("kvtest:", "durable", ":v");
    let w = kv
        .run_durable_blocking::<i64>(
            Call::script(&put()).key(&key).arg("1"),
            1,
            Duration::from_millis(100),
        )
        .unwrap();
    assert_eq!((w.value, w.replicas), (1, 0), "no replica to acknowledge");
    let replica = Standalone::start_with(
        false,
        &["--replicaof", "127.0.0.1", &primary.node.port.to_string()],
    );
    wait_for("the replica to sync", 60, || {
        (replica
            .node
            .info("replication", "master_link_status")
            .as_deref()
            == Some("up"))
        .then_some(())
    });
    let w = kv
        .run_durable_blocking::<i64>(
            Call::script(&put()).key(&key).arg("2"),
            1,
            Duration::from_millis(2000),
        )
        .unwrap();
    assert_eq!((w.value, w.replicas), (1, 1));
    assert_eq!(replica.node.cli(&["GET", &key]), "2");
    // WAIT blocks the connection it is sent on: it went on an exclusive one, so calls on the
    // shared connection are not held up by a WAIT that cannot be satisfied.
    let stuck = {
        let (kv, key) = (kv.clone(), key.clone());
        std::thread::spawn(move || {
            kv.run_durable_blocking::<i64>(
                Call::script(&put()).key(&key).arg("3"),
                5,
                Duration::from_millis(1500),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let read: String = kv
        .run_blocking(Call::command("GET").key(&key).idempotent())
        .unwrap();
    assert_eq!(read, "3", "answered while the WAIT still waits");
    assert!(
        !stuck.is_finished(),
        "the WAIT for 5 replicas is still waiting"
    );
    assert_eq!(stuck.join().unwrap().unwrap().replicas, 1);
}

#[test]
fn persistence_is_reported_where_redis_tells() {
    let plain = Standalone::start();
    let kv = open(&standalone(&plain.url()));
    let p = kv.persistence_blocking().unwrap();
    assert_eq!(p.len(), 1);
    assert_eq!(
        (p[0].aof, p[0].rdb_schedule.as_deref()),
        (Some(false), Some(""))
    );
    assert_eq!(p[0].persists(), Some(false));
    let aof = Standalone::start_with(true, &[]);
    let p = open(&standalone(&aof.url()))
        .persistence_blocking()
        .unwrap();
    assert_eq!((p[0].aof, p[0].persists()), (Some(true), Some(true)));
    // A managed Redis that forbids CONFIG: what INFO tells is used, the schedule is unknown.
    let managed = Standalone::start_with(true, &["--rename-command", "CONFIG", ""]);
    let p = open(&standalone(&managed.url()))
        .persistence_blocking()
        .unwrap();
    assert!(p[0].config_refused);
    assert_eq!((p[0].aof, p[0].rdb_schedule.as_deref()), (Some(true), None));
    assert_eq!(p[0].persists(), Some(true));
}

#[test]
fn an_acl_user_and_password_from_the_settings() {
    let redis = Standalone::start_with(
        false,
        &[
            "--user",
            "relay",
            "on",
            ">pa55-word",
            "~*",
            "&*",
            "+@all",
            "--user",
            "default",
            "off",
        ],
    );
    let url = redis.url();
    let mut s = standalone(&url.replace("redis://", "redis://relay@"));
    s.password = Some(Secret::new("pa55-word"));
    let kv = open(&s);
    kv.ping_blocking().unwrap();
    let stored: i64 = kv
        .run_blocking(Call::script(&put()).key("kvtest:acl").arg("x"))
        .unwrap();
    assert_eq!(stored, 1);
    s.password = Some(Secret::new("wrong"));
    let e = open(&s).ping_blocking().unwrap_err();
    assert!(matches!(e, KvError::Unavailable(_)), "{e:?}");
    assert!(
        !e.to_string().contains("wrong"),
        "the password must not be in errors: {e}"
    );
}

// ---------------------------------------------------------------------------------------------
// Sentinel

fn sentinel(set: &SentinelSet) -> KvSettings {
    with_timeout(Topology::Sentinel(sentinel_settings(set)))
}

#[test]
fn sentinel_scripts_take_once_and_pubsub() {
    let set = SentinelSet::start();
    let handles: Vec<Kv> = (0..3).map(|_| open(&sentinel(&set))).collect();
    one_winner_per_value(&handles, "sentinel");
    pubsub_between(&handles[1], &handles[2], "kvtest:sentinel-news");
    let primary = set.primary_by_sentinels().unwrap();
    let replica = set.other_than(primary);
    let key = tagged("kvtest:", "where", ":v");
    let _: i64 = handles[0]
        .run_blocking(Call::script(&put()).key(&key).arg("here"))
        .unwrap();
    assert_eq!(cli(primary, &Access::default(), &["GET", &key]), "here");
    wait_for("the write to reach the replica", 30, || {
        (cli(replica, &Access::default(), &["GET", &key]) == "here").then_some(())
    });
}

#[derive(Debug, Default)]
struct Tally {
    acked: Vec<usize>,
    unacked: Vec<usize>,
    lost: Vec<usize>,
    unavailable: usize,
}

#[test]
fn sentinel_failover_mid_stream_is_followed_without_a_rebuild() {
    let mut set = SentinelSet::start();
    let handles: Vec<Kv> = (0..3).map(|_| open(&sentinel(&set))).collect();
    let old = set.primary_by_sentinels().unwrap();
    let mut sub = handles[2].subscribe(&["kvtest:failover"]);
    subscribed(&mut sub);
    let key = |i: usize| tagged("kvtest:", "stream", &format!(":{i}"));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (kv, tally, stop) = (handles[0].clone(), tally.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let call = Call::script(&put()).key(key(i)).arg(i);
                match kv.run_durable_blocking::<i64>(call, 1, Duration::from_millis(300)) {
                    Ok(w) if w.replicas >= 1 => tally.lock().unwrap().acked.push(i),
                    Ok(_) => tally.lock().unwrap().unacked.push(i),
                    Err(KvError::Lost(_)) => tally.lock().unwrap().lost.push(i),
                    Err(KvError::Unavailable(_)) => tally.lock().unwrap().unavailable += 1,
                    Err(e) => panic!("write {i}: {e:?}"),
                }
                i += 1;
            }
        })
    };
    wait_for("50 writes before the kill", 60, || {
        (tally.lock().unwrap().acked.len() >= 50).then_some(())
    });
    set.node(old).kill();
    let new = set.wait_for_new_primary(old);
    // With its replica dead, the new primary has none: its writes are done, unacknowledged.
    let done = |t: &Tally| t.acked.len() + t.unacked.len();
    let before = done(&tally.lock().unwrap());
    wait_for("50 writes on the new primary", 120, || {
        (done(&tally.lock().unwrap()) >= before + 50).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    eprintln!(
        "writes: {} acknowledged by a replica, {} not, {} lost (may have run), {} unavailable (did not run)",
        tally.acked.len(),
        tally.unacked.len(),
        tally.lost.len(),
        tally.unavailable
    );
    // The writes in flight at the kill, and during the failover, were reported as such.
    assert!(tally.lost.len() + tally.unavailable >= 1, "{tally:?}");
    // No write reported done and acknowledged by a replica is missing on the new primary.
    let reader = &handles[1];
    let keys: Vec<String> = tally.acked.iter().map(|i| key(*i)).collect();
    let mut mget = Call::command("MGET").idempotent();
    for k in &keys {
        mget = mget.key(k);
    }
    let values: Vec<Option<usize>> = reader.run_blocking(mget).unwrap();
    for (i, v) in tally.acked.iter().zip(&values) {
        assert_eq!(
            v,
            &Some(*i),
            "write {i} was acknowledged by a replica, then lost"
        );
    }
    // What WAIT did not vouch for may be gone (asynchronous replication): shown, not asserted.
    if !tally.unacked.is_empty() || !tally.lost.is_empty() {
        let mut unacked = Call::command("MGET").idempotent();
        for i in tally.unacked.iter().chain(&tally.lost) {
            unacked = unacked.key(key(*i));
        }
        let values: Vec<Option<usize>> = reader.run_blocking(unacked).unwrap();
        eprintln!(
            "of the writes no replica acknowledged or whose reply was lost, {} of {} are on the new primary",
            values.iter().flatten().count(),
            values.len()
        );
    }
    // Every handle follows the new primary without being rebuilt, the idle ones included.
    for kv in &handles {
        let k = tagged("kvtest:", "after", ":v");
        let _: i64 = kv
            .run_blocking(Call::script(&put()).key(&k).arg(new))
            .unwrap();
        assert_eq!(cli(new, &Access::default(), &["GET", &k]), new.to_string());
        assert!(kv.stats().lookups >= 1);
    }
    // Pub/sub resumed on the new primary.
    let (channel, _) = receive(&mut sub, 60, || {
        handles[1]
            .publish_blocking("kvtest:failover", b"again")
            .unwrap();
    });
    assert_eq!(channel, "kvtest:failover");
    assert!(
        handles[2].stats().subscribed >= 2,
        "subscribed again after the failover"
    );
    // The old primary comes back: the sentinels make it a replica; the layer stays put.
    set.node(old).restart();
    wait_for("the old primary to be made a replica", 120, || {
        (set.node(old).cli(&["ROLE"]).lines().next() == Some("slave")).then_some(())
    });
    let _: i64 = handles[0]
        .run_blocking(Call::script(&put()).key(key(0)).arg("last"))
        .unwrap();
    assert_eq!(cli(new, &Access::default(), &["GET", &key(0)]), "last");
}

#[test]
fn readonly_from_a_demoted_primary_leads_to_a_new_lookup() {
    let set = SentinelSet::start();
    let kv = open(&sentinel(&set));
    let p = set.primary_by_sentinels().unwrap();
    let r = set.other_than(p);
    let first = tagged("kvtest:", "ro", ":1");
    let _: i64 = kv
        .run_blocking(Call::script(&put()).key(&first).arg(1))
        .unwrap();
    let mut sub = kv.subscribe(&["kvtest:ro"]);
    subscribed(&mut sub);
    // Behind the layer's back (and the sentinels'): the replica is promoted and the primary
    // made its replica. The layer's connection to the old primary stays open.
    let none = Access::default();
    assert_eq!(cli(r, &none, &["REPLICAOF", "NO", "ONE"]), "OK");
    assert_eq!(
        cli(p, &none, &["REPLICAOF", "127.0.0.1", &r.to_string()]),
        "OK"
    );
    wait_for("the old primary to be a replica", 30, || {
        (cli(p, &none, &["ROLE"]).lines().next() == Some("slave")).then_some(())
    });
    let lookups = kv.stats().lookups;
    // READONLY: not run; the layer asks the sentinels again. They still name the old primary,
    // whose ROLE now says replica, so the write is refused as not run.
    let second = tagged("kvtest:", "ro", ":2");
    let e = kv
        .run_blocking::<i64>(Call::script(&put()).key(&second).arg(2))
        .unwrap_err();
    assert!(matches!(e, KvError::Unavailable(_)), "{e:?}");
    assert!(kv.stats().lookups > lookups, "READONLY led to a look-up");
    assert_eq!(
        cli(r, &none, &["EXISTS", &second]),
        "0",
        "the write did not run anywhere"
    );
    // Now the sentinels learn it: they fail over to the server that is already primary.
    set.failover();
    assert_eq!(set.wait_for_new_primary(p), r);
    let stored: i64 = wait_for("a write to go through again", 60, || {
        kv.run_blocking(Call::script(&put()).key(&second).arg(2))
            .ok()
    });
    assert_eq!(stored, 1);
    assert_eq!(cli(r, &none, &["GET", &second]), "2");
    let (channel, _) = receive(&mut sub, 60, || {
        kv.publish_blocking("kvtest:ro", b"moved").unwrap();
    });
    assert_eq!(channel, "kvtest:ro");
}

#[test]
fn sentinel_over_tls_with_passwords_and_a_private_ca() {
    let certs = TempDir::new("kv-tls");
    let ca = TestCa::new(&certs);
    let mut set = SentinelSet::start_with(SentinelOptions {
        password: Some("data-pa55"),
        sentinel_password: Some("sentinel-pa55"),
        tls: Some(&ca),
    });
    let mut s = sentinel_settings(&set);
    s.tls = true;
    s.data_tls = true;
    s.password = Some(Secret::new("sentinel-pa55"));
    let mut settings = with_timeout(Topology::Sentinel(s));
    settings.password = Some(Secret::new("data-pa55"));
    settings.ca_pem = Some(ca.ca_pem());
    let handles: Vec<Kv> = (0..2).map(|_| open(&settings)).collect();
    handles[0].ping_blocking().unwrap();
    one_winner_per_value(&handles, "tls");
    pubsub_between(&handles[0], &handles[1], "kvtest:tls");
    // A failover is followed over TLS too.
    let old = set.primary_by_sentinels().unwrap();
    set.node(old).kill();
    let new = set.wait_for_new_primary(old);
    let key = tagged("kvtest:", "tls", ":after");
    let _: i64 = wait_for("a write on the new primary", 60, || {
        handles[1]
            .run_blocking(Call::script(&put()).key(&key).arg(new))
            .ok()
    });
    assert_eq!(set.node(new).cli(&["GET", &key]), new.to_string());
    // Without the CA, the certificates are not trusted: fail closed.
    let mut untrusted = settings.clone();
    untrusted.ca_pem = None;
    let e = open(&untrusted).ping_blocking().unwrap_err();
    assert!(matches!(e, KvError::Unavailable(_)), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// Cluster

#[test]
fn cluster_scripts_take_once_pubsub_and_crossslot() {
    let set = ClusterSet::start();
    let handles: Vec<Kv> = (0..3).map(|_| open(&cluster_settings(&set))).collect();
    // Tags spread over every primary; each primary meets the script for the first time.
    one_winner_per_value(&handles, "cluster");
    let mut primaries = std::collections::HashSet::new();
    for round in 0..30 {
        let key = tagged("kvtest:", &format!("cluster{round}"), ":code");
        primaries.insert(set.owner_of(scripts::slot(key.as_bytes())));
    }
    assert_eq!(
        primaries.len(),
        3,
        "the keys were spread over the three primaries"
    );
    for port in &primaries {
        let node = set.nodes.iter().find(|n| n.port == *port).unwrap();
        assert!(
            calls(node, "evalsha") > calls(node, "eval"),
            "EVALSHA, EVAL only after NOSCRIPT"
        );
    }
    // A script whose keys share a tag runs; one whose keys do not is refused before sending.
    let two = Script::new(
        "redis.call('SET', KEYS[1], ARGV[1]) redis.call('SET', KEYS[2], ARGV[1]) return 2",
    );
    let (a, b) = (
        tagged("kvtest:", "pair", ":a"),
        tagged("kvtest:", "pair", ":b"),
    );
    let n: i64 = handles[0]
        .run_blocking(Call::script(&two).key(&a).key(&b).arg("v"))
        .unwrap();
    assert_eq!(n, 2);
    let stray = tagged("kvtest:", "other", ":c");
    assert!(scripts::same_slot(&[&a, &stray]).is_err());
    let e = handles[0]
        .run_blocking::<i64>(Call::script(&two).key(&a).key(&stray).arg("v"))
        .unwrap_err();
    assert!(matches!(e, KvError::Invalid(_)) && e.retry_safe(), "{e:?}");
    // Pub/sub across nodes: published through any node, on any handle, it arrives.
    let mut sub = handles[1].subscribe(&["kvtest:cluster-news"]);
    subscribed(&mut sub);
    for node in &set.nodes {
        cli(
            node.port,
            &Access::default(),
            &["PUBLISH", "kvtest:cluster-news", &node.port.to_string()],
        );
    }
    let mut from: Vec<String> = (0..set.nodes.len())
        .map(|_| String::from_utf8(receive(&mut sub, 30, || {}).1).unwrap())
        .collect();
    from.sort();
    let mut ports: Vec<String> = set.nodes.iter().map(|n| n.port.to_string()).collect();
    ports.sort();
    assert_eq!(from, ports, "a message published on each node arrived");
    pubsub_between(&handles[1], &handles[2], "kvtest:cluster-news2");
    handles[0].ping_blocking().unwrap();
    assert_eq!(handles[0].persistence_blocking().unwrap().len(), 3);
}

/// Writers incrementing counters in one slot while the test does something to the cluster;
/// what each reported.
struct Traffic {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(usize, usize, usize)>>,
}

impl Traffic {
    fn start(handles: &[Kv], keys: &[String]) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let (kv, key, stop) = (
                    handles[i % handles.len()].clone(),
                    key.clone(),
                    stop.clone(),
                );
                std::thread::spawn(move || {
                    let (mut ok, mut lost, mut unavailable) = (0, 0, 0);
                    while !stop.load(Ordering::SeqCst) {
                        match kv.run_blocking::<i64>(Call::script(&incr()).key(&key)) {
                            Ok(n) => {
                                ok += 1;
                                assert!(n as usize >= ok, "{key}: {n} after {ok} increments");
                            }
                            Err(KvError::Lost(_)) => lost += 1,
                            Err(KvError::Unavailable(_)) => unavailable += 1,
                            Err(e) => panic!("{key}: {e:?}"),
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    (ok, lost, unavailable)
                })
            })
            .collect();
        Traffic { stop, threads }
    }

    /// Stops the writers; each key's (increments reported done, lost, unavailable).
    fn stop(self) -> Vec<(usize, usize, usize)> {
        self.stop.store(true, Ordering::SeqCst);
        self.threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect()
    }
}

/// Every counter holds at least what was reported done, and at most that plus what was lost.
fn counters_add_up(kv: &Kv, keys: &[String], outcomes: &[(usize, usize, usize)]) {
    for (key, (ok, lost, _)) in keys.iter().zip(outcomes) {
        let n: usize = kv
            .run_blocking(Call::command("GET").key(key).idempotent())
            .unwrap();
        assert!(
            *ok <= n && n <= ok + lost,
            "{key}: {n}, with {ok} reported done and {lost} lost"
        );
    }
}

#[test]
fn cluster_slot_migration_during_traffic_is_followed() {
    let set = ClusterSet::start();
    let handles: Vec<Kv> = (0..2).map(|_| open(&cluster_settings(&set))).collect();
    let keys: Vec<String> = (0..4)
        .map(|i| tagged("kvtest:", "migrating", &format!(":w{i}")))
        .collect();
    let slot = scripts::slot(keys[0].as_bytes());
    let stored: Vec<String> = (0..50)
        .map(|i| tagged("kvtest:", "migrating", &format!(":k{i}")))
        .collect();
    for (i, k) in stored.iter().enumerate() {
        let _: i64 = handles[0]
            .run_blocking(Call::script(&put()).key(k).arg(i))
            .unwrap();
    }
    let (from, to) = {
        let from = set.owner_of(slot);
        (from, set.primary_other_than(from))
    };
    let traffic = Traffic::start(&handles, &keys);
    std::thread::sleep(Duration::from_millis(300));
    set.begin_migration(slot, from, to);
    // Half the stored keys move: asked for on the old owner, they are answered with ASK.
    let mut moved = 0;
    while moved < 25 {
        moved += set.move_keys(slot, from, to, 5);
    }
    for (i, k) in stored.iter().enumerate() {
        let v: String = handles[1]
            .run_blocking(Call::command("GET").key(k).idempotent())
            .unwrap();
        assert_eq!(v, i.to_string());
    }
    assert!(handles[1].stats().asked >= 1, "ASK was followed");
    std::thread::sleep(Duration::from_millis(300));
    set.finish_migration(slot, from, to);
    assert_eq!(set.owner_of(slot), to);
    // After the move, the old owner answers MOVED; both handles follow.
    wait_for("traffic on the new owner", 60, || {
        (handles.iter().all(|h| h.stats().moved >= 1)).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    let outcomes = traffic.stop();
    eprintln!("migration: (done, lost, unavailable) per writer: {outcomes:?}");
    assert!(outcomes.iter().all(|(ok, _, _)| *ok > 0));
    counters_add_up(&handles[0], &keys, &outcomes);
    for (i, k) in stored.iter().enumerate() {
        assert_eq!(cli(to, &Access::default(), &["GET", k]), i.to_string());
    }
}

#[test]
fn cluster_primary_killed_its_replica_promoted_traffic_resumes() {
    let mut set = ClusterSet::start();
    let handles: Vec<Kv> = (0..2).map(|_| open(&cluster_settings(&set))).collect();
    let keys: Vec<String> = (0..4)
        .map(|i| tagged("kvtest:", "failover", &format!(":w{i}")))
        .collect();
    let slot = scripts::slot(keys[0].as_bytes());
    let old = set.owner_of(slot);
    let replica = set.replica_of(old);
    let mut sub = handles[1].subscribe(&["kvtest:cluster-failover"]);
    subscribed(&mut sub);
    let traffic = Traffic::start(&handles, &keys);
    std::thread::sleep(Duration::from_millis(500));
    set.node(old).kill();
    assert_eq!(set.wait_for_new_owner(slot, old), replica);
    let done_at_promotion = handles.iter().map(|h| h.stats()).collect::<Vec<_>>();
    wait_for("writes to succeed on the promoted replica", 60, || {
        let v: Option<i64> = handles[0]
            .run_blocking(Call::script(&incr()).key(tagged("kvtest:", "failover", ":probe")))
            .ok();
        v
    });
    std::thread::sleep(Duration::from_millis(500));
    let outcomes = traffic.stop();
    eprintln!(
        "failover: (done, lost, unavailable) per writer: {outcomes:?}; stats at promotion {done_at_promotion:?}"
    );
    counters_add_up(&handles[0], &keys, &outcomes);
    assert!(
        handles.iter().all(|h| h.stats().refreshes >= 2),
        "the slot map was learnt again"
    );
    // Pub/sub goes on, whether or not the subscriber's node was the one killed.
    let (channel, _) = receive(&mut sub, 60, || {
        handles[0]
            .publish_blocking("kvtest:cluster-failover", b"after")
            .unwrap();
    });
    assert_eq!(channel, "kvtest:cluster-failover");
}
