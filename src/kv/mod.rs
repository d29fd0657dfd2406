//! The one way to Redis for the store, the event outbox and the connection vault: async,
//! multiplexed (every caller pipelines on one connection per server), on one server, on the
//! primary Sentinel names, or across a Redis Cluster, and failover-aware.
//!
//! **Where the work runs.** Every connection is opened on one dedicated thread with a
//! current-thread tokio runtime (`kv`), so its driver (the task that writes and reads the
//! socket) lives there, whichever runtime asked for it: a driver spawned on one of the server's
//! event loops would stall whenever that loop is busy and die with it. A caller on any tokio
//! runtime with timers runs the call itself ([`Kv::run`]): it hands the command to the driver
//! through the
//! connection's channel and awaits the reply on a oneshot, so a call costs one wake-up of each
//! thread, batched under load. A blocking thread ([`Kv::run_blocking`]) runs the call itself
//! too, blocked in `Handle::block_on` of the `kv` runtime (whose thread drives the sockets
//! and timers). Measured (`bench/kv.sh`, 32 callers on two
//! current-thread runtimes): running the call on the caller's runtime did about twice the calls
//! per second of spawning each call onto one runtime thread and awaiting its JoinHandle, and
//! more than `redis-benchmark -c 32` (the calls share one pipelined connection).
//!
//! **What a failure means.** Every error says whether the call may have run:
//! - [`KvError::Unavailable`]: it did not run. No connection could be had in time, or Redis
//!   answered that it did not run it (READONLY, MOVED/ASK beyond the deadline, TRYAGAIN,
//!   CLUSTERDOWN, LOADING, MASTERDOWN, BUSY, NOREPLICAS, OOM). Those answers but OOM are
//!   retried within the timeout on the right server (after a new look-up); so is NOSCRIPT (by
//!   EVAL). Safe to retry; a request may answer 503 with Retry-After.
//! - [`KvError::Lost`]: it was sent and no reply came (the connection died, or the timeout
//!   passed). It may have run. A call that is not idempotent is never sent again: a take must
//!   fail closed. Idempotent calls are sent again within the timeout instead. A connection is
//!   believed alive only while its socket is open (RESP3 tells the moment it closes), and one
//!   quiet for over a second answers a PING before a write goes out on it, so what dies
//!   between calls makes them `Unavailable`, not `Lost`. (A call handed to a connection in
//!   the instant it dies, before the layer has heard, is `Lost`: nobody can tell.)
//! - [`KvError::Server`]: Redis ran or parsed it and answered an error (a script error,
//!   WRONGTYPE, NOPERM, CROSSSLOT). Definite; retrying will not help.
//! - [`KvError::Invalid`]: refused before sending (keys of one call in different cluster slots).
//! - [`KvError::Reply`]: it ran, but the reply is not the type asked for.
//!
//! **Durability.** Redis replicates asynchronously: a write the primary acknowledged is lost if
//! the primary dies before a replica has it and that replica is promoted. [`Kv::run_durable`]
//! sends WAIT on the same connection right after the write and returns how many replicas had it
//! within the given time. One that did survives the failover of its primary when it is the
//! replica promoted (with one replica, always; with several, Sentinel and Cluster promote the
//! most up to date, though WAIT does not guarantee it); it can still be lost if that replica
//! restarts without persistence, or in a network split where the old primary keeps taking
//! writes until it learns it was demoted (`min-replicas-to-write` on the server bounds that).
//! A take acknowledged by no replica may be undone by a failover, so the value could be
//! handed out again: the caller decides whether to refuse it.
//!
//! **Why not redis-rs's own.** `connection-manager` reconnects but is bound to one address;
//! `sentinel` asks the sentinels only when connecting (redis-rs#1438); `cluster-async`'s
//! retries resend a command whose reply was lost. This module uses redis-rs's
//! `MultiplexedConnection` and does the rest (sentinel.rs, cluster.rs, call.rs).

mod call;
mod cluster;
mod health;
mod node;
mod pubsub;
pub mod scripts;
mod sentinel;
pub mod settings;
mod standalone;
mod topology;

pub use call::Call;
pub use health::Persistence;
pub use pubsub::{Event, Subscription};
pub use scripts::Script;
pub use settings::{KvSettings, SettingsError};

use redis::{FromRedisValue, Value};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why a call failed, and whether it may have run (see the module's documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvError {
    /// Not run; safe to retry.
    Unavailable(String),
    /// Sent without a reply: it may have run. Never retried for a non-idempotent call.
    Lost(String),
    /// Redis answered with an error.
    Server { code: String, message: String },
    /// Refused before sending: the call is wrong (keys in different slots).
    Invalid(String),
    /// It ran, but the reply was not what the caller asked for.
    Reply(String),
}

impl KvError {
    /// Nothing ran: the same call may be sent again.
    pub fn retry_safe(&self) -> bool {
        matches!(self, KvError::Unavailable(_) | KvError::Invalid(_))
    }

    /// The call may have changed something (what a take must treat as "taken, answer lost").
    pub fn may_have_run(&self) -> bool {
        matches!(
            self,
            KvError::Lost(_) | KvError::Server { .. } | KvError::Reply(_)
        )
    }
}

impl std::fmt::Display for KvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KvError::Unavailable(why) => write!(f, "redis unavailable: {why}"),
            KvError::Lost(why) => write!(f, "redis reply lost (the call may have run): {why}"),
            KvError::Server { code, message } => write!(f, "redis: {code} {message}"),
            KvError::Invalid(why) => write!(f, "redis call refused: {why}"),
            KvError::Reply(why) => write!(f, "redis reply unexpected: {why}"),
        }
    }
}

impl std::error::Error for KvError {}

/// What the layer has done so far (for metrics, logs and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections opened to data nodes (shared, exclusive and subscribers).
    pub connects: u64,
    /// Connections to data nodes seen closing (by the server, the network or the layer).
    pub disconnects: u64,
    /// Times the sentinels were asked for the primary for a new connection.
    pub lookups: u64,
    /// Times a cluster's slot map was learnt again.
    pub refreshes: u64,
    /// MOVED answers followed.
    pub moved: u64,
    /// ASK answers followed.
    pub asked: u64,
    /// Subscriptions made (the first, and each one after a move or a lost connection).
    pub subscribed: u64,
    /// Calls failed `Lost`.
    pub lost: u64,
    /// Calls failed `Unavailable`.
    pub unavailable: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    connects: AtomicU64,
    disconnects: AtomicU64,
    lookups: AtomicU64,
    refreshes: AtomicU64,
    moved: AtomicU64,
    asked: AtomicU64,
    subscribed: AtomicU64,
    lost: AtomicU64,
    unavailable: AtomicU64,
}

/// A value written with [`Kv::run_durable`], and how many replicas had it within the wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Durable<T> {
    pub value: T,
    pub replicas: u32,
}

/// What the tasks on the layer's runtime share.
pub(crate) struct Shared {
    backend: topology::Backend,
    timeout: Duration,
    counters: Arc<Counters>,
}

/// Owns the runtime thread; the last `Kv` handle to go stops it (and every connection).
struct Runtime {
    handle: tokio::runtime::Handle,
    thread: std::thread::ThreadId,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = stop.send(());
        }
    }
}

/// A handle to Redis. Cheap to clone; all clones share the connections.
#[derive(Clone)]
pub struct Kv {
    shared: Arc<Shared>,
    runtime: Arc<Runtime>,
}

impl Kv {
    /// Starts the layer's thread. Connects lazily: an unreachable Redis makes calls fail
    /// (`Unavailable`), not this.
    pub fn open(settings: &KvSettings) -> Result<Kv, String> {
        let counters = Arc::new(Counters::default());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the Redis runtime: {e}"))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("kv".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                runtime.shutdown_timeout(Duration::from_millis(100));
            })
            .map_err(|e| format!("cannot start the Redis thread: {e}"))?;
        let env = node::Env {
            timeout: settings.timeout,
            runtime: handle.clone(),
            counters: counters.clone(),
        };
        let shared = Arc::new(Shared {
            backend: topology::Backend::new(settings, &env)?,
            timeout: settings.timeout,
            counters,
        });
        shared.backend.start(&handle);
        Ok(Kv {
            shared,
            runtime: Arc::new(Runtime {
                handle,
                thread: thread.thread().id(),
                stop: Mutex::new(Some(stop)),
            }),
        })
    }

    /// Runs `call` and reads its reply as `T`. Awaited on a tokio runtime (with timers, as
    /// the server's event loops are), the call runs right there and only the connections'
    /// drivers are on the layer's thread; anywhere else it runs on the layer's thread.
    /// Dropping the future before it ends is allowed: the call then may or may not have run,
    /// as with [`KvError::Lost`].
    pub async fn run<T: FromRedisValue>(&self, call: Call) -> Result<T, KvError> {
        self.check(&call)?;
        let answer = self.execute(call, None).await?;
        convert(answer.value)
    }

    /// Runs `call` (a write), then WAIT for `replicas` replicas for at most `wait`, on the same
    /// connection; the call may take the timeout plus `wait`. See the module's documentation
    /// for what an acknowledgement protects against.
    pub async fn run_durable<T: FromRedisValue>(
        &self,
        call: Call,
        replicas: u32,
        wait: Duration,
    ) -> Result<Durable<T>, KvError> {
        self.check(&call)?;
        let answer = self.execute(call, Some((replicas, wait))).await?;
        Ok(Durable {
            value: convert(answer.value)?,
            replicas: answer.replicas.unwrap_or(0),
        })
    }

    /// [`Kv::run`] for a blocking thread (never an event loop: it blocks until the answer).
    pub fn run_blocking<T: FromRedisValue>(&self, call: Call) -> Result<T, KvError> {
        self.check(&call)?;
        let answer = self.block_on(call::execute(&self.shared, &call, None))?;
        convert(answer.value)
    }

    /// Runs every call at once from a blocking thread (a page of reads, say, whose keys live in
    /// different slots and so cannot be one command); the answers in the order of `calls`.
    pub fn run_all_blocking<T: FromRedisValue + Send + 'static>(
        &self,
        calls: Vec<Call>,
    ) -> Vec<Result<T, KvError>> {
        let n = calls.len();
        let shared = &self.shared;
        let checked: Vec<Result<Call, KvError>> = calls
            .into_iter()
            .map(|c| self.check(&c).map(|_| c))
            .collect();
        self.block_on(async move {
            let mut set = tokio::task::JoinSet::new();
            let mut out: Vec<Option<Result<T, KvError>>> = (0..n).map(|_| None).collect();
            for (i, call) in checked.into_iter().enumerate() {
                match call {
                    Err(e) => out[i] = Some(Err(e)),
                    Ok(call) => {
                        let shared = shared.clone();
                        set.spawn(async move {
                            let answer = call::execute(&shared, &call, None).await;
                            (i, answer.and_then(|a| convert::<T>(a.value)))
                        });
                    }
                }
            }
            while let Some(done) = set.join_next().await {
                if let Ok((i, answer)) = done {
                    out[i] = Some(answer);
                }
            }
            out.into_iter()
                .map(|a| {
                    a.unwrap_or_else(|| Err(KvError::Lost("the call's task ended early".into())))
                })
                .collect()
        })
    }

    /// [`Kv::run_durable`] for a blocking thread.
    pub fn run_durable_blocking<T: FromRedisValue>(
        &self,
        call: Call,
        replicas: u32,
        wait: Duration,
    ) -> Result<Durable<T>, KvError> {
        self.check(&call)?;
        let answer = self.block_on(call::execute(&self.shared, &call, Some((replicas, wait))))?;
        Ok(Durable {
            value: convert(answer.value)?,
            replicas: answer.replicas.unwrap_or(0),
        })
    }

    /// PUBLISH, once; returns how many subscribers the server it reached delivered to (on a
    /// cluster, that node's only). Best effort by nature: a subscriber that misses it learns of
    /// the gap ([`Event::Gap`]).
    pub async fn publish(&self, channel: &str, message: &[u8]) -> Result<i64, KvError> {
        self.run(Call::command("PUBLISH").arg(channel).arg(message))
            .await
    }

    /// [`Kv::publish`] for a blocking thread.
    pub fn publish_blocking(&self, channel: &str, message: &[u8]) -> Result<i64, KvError> {
        self.run_blocking(Call::command("PUBLISH").arg(channel).arg(message))
    }

    /// Listens to `channels` until the `Subscription` is dropped, following the primary (or
    /// the cluster) through failovers; an [`Event::Gap`] comes first and after every
    /// re-subscription.
    pub fn subscribe(&self, channels: &[&str]) -> Subscription {
        Subscription::start(
            self.shared.clone(),
            &self.runtime.handle,
            channels.iter().map(|c| c.to_string()).collect(),
        )
    }

    /// PING on every primary; never waits longer than the timeout.
    pub async fn ping(&self) -> Result<(), KvError> {
        let shared = self.shared.clone();
        self.on_runtime(async move { health::ping(&shared).await })
            .await?
    }

    /// [`Kv::ping`] for a blocking thread.
    pub fn ping_blocking(&self) -> Result<(), KvError> {
        self.block_on(health::ping(&self.shared))
    }

    /// Whether each primary persists its data, where the server tells (so the service can warn
    /// when a restart of Redis would lose everything).
    pub async fn persistence(&self) -> Result<Vec<Persistence>, KvError> {
        let shared = self.shared.clone();
        self.on_runtime(async move { health::persistence(&shared).await })
            .await?
    }

    /// [`Kv::persistence`] for a blocking thread.
    pub fn persistence_blocking(&self) -> Result<Vec<Persistence>, KvError> {
        self.block_on(health::persistence(&self.shared))
    }

    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            connects: n(&c.connects),
            disconnects: n(&c.disconnects),
            lookups: n(&c.lookups),
            refreshes: n(&c.refreshes),
            moved: n(&c.moved),
            asked: n(&c.asked),
            subscribed: n(&c.subscribed),
            lost: n(&c.lost),
            unavailable: n(&c.unavailable),
        }
    }

    /// Every key of one call must share a slot: a cluster refuses the call here; elsewhere
    /// debug builds panic, so a script that could not run on a cluster is caught by any test.
    fn check(&self, call: &Call) -> Result<(), KvError> {
        let cluster = self.shared.backend.is_cluster();
        if !cluster && !cfg!(debug_assertions) {
            return Ok(());
        }
        if let Err(e) = scripts::same_slot(call.keys()) {
            if cluster {
                return Err(KvError::Invalid(e));
            }
            debug_assert!(false, "{e}");
        }
        Ok(())
    }

    async fn execute(
        &self,
        call: Call,
        wait: Option<(u32, Duration)>,
    ) -> Result<call::Answer, KvError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return call::execute(&self.shared, &call, wait).await;
        }
        let shared = self.shared.clone();
        self.on_runtime(async move { call::execute(&shared, &call, wait).await })
            .await?
    }

    async fn on_runtime<R: Send + 'static>(
        &self,
        work: impl Future<Output = R> + Send + 'static,
    ) -> Result<R, KvError> {
        self.runtime
            .handle
            .spawn(work)
            .await
            .map_err(|_| KvError::Lost("the Redis runtime stopped during the call".into()))
    }

    /// Runs `work` on this (blocking) thread; the connections it uses are driven by the
    /// layer's thread, which never stops running its runtime. Measured: about 1.5 times the
    /// calls per second of spawning the call onto the layer's thread and waiting on a channel.
    /// Public so a caller can write a step of several calls once, as a future awaiting
    /// [`Kv::run`], and also run it from a blocking thread (the store's relay steps).
    pub fn block_on<R>(&self, work: impl Future<Output = R>) -> R {
        assert_ne!(
            std::thread::current().id(),
            self.runtime.thread,
            "a blocking Redis call on the Redis thread would wait for itself"
        );
        self.runtime.handle.block_on(work)
    }
}

fn convert<T: FromRedisValue>(v: Value) -> Result<T, KvError> {
    redis::from_redis_value(v).map_err(|e| KvError::Reply(e.to_string()))
}
