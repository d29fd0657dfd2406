//! Calls per second through `oauth_relay::kv`, for `bench/kv.sh` (which compares them with
//! `redis-benchmark` at the same concurrency). Every call is an EVALSHA of a one-line script.
//!
//!   kv_bench URL MODE CALLERS SECONDS
//!
//! MODE: `loops` (CALLERS tasks spread over two current-thread runtimes, as the server's event
//! loops are, each awaiting `Kv::run`), `handoff` (the same callers, but each call spawned onto
//! one dedicated runtime thread and its JoinHandle awaited: the design `Kv::run` did not take),
//! `blocking` (CALLERS threads calling `run_blocking`), `sync` (CALLERS threads with a
//! synchronous connection each: the store's pool before this layer, without its blocking-pool hop).

use oauth_relay::kv::settings::Topology;
use oauth_relay::kv::{Call, Kv, KvSettings, Script};
use oauth_relay::secret::Secret;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BODY: &str = "return redis.call('INCR', KEYS[1])";
const KEY: &str = "bench:kv";
const EVENT_LOOPS: usize = 2;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, mode, callers, seconds] = &args[..] else {
        eprintln!("usage: kv_bench URL loops|blocking|sync CALLERS SECONDS");
        std::process::exit(2);
    };
    let callers: usize = callers.parse().expect("CALLERS");
    let run_for = Duration::from_secs(seconds.parse().expect("SECONDS"));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let script = Script::new(BODY);
    let kv = Kv::open(&KvSettings::new(Topology::Standalone {
        url: Secret::new(url.clone()),
    }))
    .expect("settings");
    // Loads the script (NOSCRIPT, then EVAL) and opens the connection before timing.
    let _: i64 = kv
        .run_blocking(Call::script(&script).key(KEY))
        .expect("warm-up call");
    let mut threads = Vec::new();
    // For `handoff`: one more runtime on a thread of its own, where every call is run.
    let dedicated = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let handoff = dedicated.handle().clone();
    let (_keep, parked) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || dedicated.block_on(parked));
    match mode.as_str() {
        "loops" | "handoff" => {
            let hand_off = mode == "handoff";
            for n in 0..EVENT_LOOPS {
                let (kv, script, done, stop) =
                    (kv.clone(), script.clone(), done.clone(), stop.clone());
                let handoff = handoff.clone();
                let tasks = callers / EVENT_LOOPS + usize::from(n < callers % EVENT_LOOPS);
                threads.push(std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async move {
                        let mut all = Vec::new();
                        for _ in 0..tasks {
                            let (kv, script, done, stop) =
                                (kv.clone(), script.clone(), done.clone(), stop.clone());
                            let handoff = handoff.clone();
                            all.push(tokio::spawn(async move {
                                while !stop.load(Ordering::Relaxed) {
                                    let call = Call::script(&script).key(KEY);
                                    let _: i64 = if hand_off {
                                        let kv = kv.clone();
                                        handoff
                                            .spawn(async move { kv.run(call).await })
                                            .await
                                            .unwrap()
                                    } else {
                                        kv.run(call).await
                                    }
                                    .unwrap();
                                    done.fetch_add(1, Ordering::Relaxed);
                                }
                            }));
                        }
                        for t in all {
                            t.await.unwrap();
                        }
                    });
                }));
            }
        }
        "blocking" => {
            for _ in 0..callers {
                let (kv, script, done, stop) =
                    (kv.clone(), script.clone(), done.clone(), stop.clone());
                threads.push(std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let _: i64 = kv.run_blocking(Call::script(&script).key(KEY)).unwrap();
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
        }
        "sync" => {
            let client = redis::Client::open(url.as_str()).expect("URL");
            for _ in 0..callers {
                let mut con = client.get_connection().expect("connect");
                let (script, done, stop) = (redis::Script::new(BODY), done.clone(), stop.clone());
                threads.push(std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let _: i64 = script.key(KEY).invoke(&mut con).unwrap();
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
        }
        other => panic!("unknown mode {other}"),
    }
    // One second to get going, then the measured window.
    std::thread::sleep(Duration::from_secs(1));
    let (start, before) = (Instant::now(), done.load(Ordering::Relaxed));
    std::thread::sleep(run_for);
    let (elapsed, after) = (start.elapsed(), done.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    println!("{:.0}", (after - before) as f64 / elapsed.as_secs_f64());
}
