//! One Redis server as the layer talks to it: one shared multiplexed connection that every
//! caller pipelines on, a few exclusive connections for commands that block their connection
//! (WAIT), and how both are opened (TLS, ACL user, password, RESP3).
//!
//! RESP3 is what lets a connection say it died: redis-rs sends a `Disconnection` push the
//! moment its driver sees the socket close, so a connection Redis closed (restart, failover,
//! CLIENT KILL, idle timeout) is replaced before the next command instead of being the one to
//! find out. A command only ever goes out on a connection believed alive; if that connection
//! then dies, the command may have run (`Lost`), and if it was known dead, nothing was sent.

use super::settings::HostPort;
use super::Counters;
use crate::secret::Secret;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// At most this many exclusive connections per server: past it, durable calls wait for one.
const MAX_EXCLUSIVE: usize = 32;

/// What every node shares: the timeout, the layer's runtime (where every connection's driver
/// runs, whichever runtime asked for the connection) and the counters.
#[derive(Clone)]
pub(crate) struct Env {
    pub timeout: Duration,
    pub runtime: tokio::runtime::Handle,
    pub counters: Arc<Counters>,
}

/// How to open connections to data nodes found at run time (the primary Sentinel names, the
/// cluster's nodes).
#[derive(Clone)]
pub(crate) struct Dial {
    pub tls: bool,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub ca_pem: Option<Vec<u8>>,
    pub env: Env,
}

impl Dial {
    pub fn node(&self, at: &HostPort) -> redis::RedisResult<Arc<Node>> {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let info = format!("{scheme}://{at}/0").into_connection_info()?;
        let client = client(
            info,
            self.username.as_deref(),
            self.password.as_ref(),
            self.ca_pem.as_deref(),
            ProtocolVersion::RESP3,
        )?;
        Ok(Node::new(at.clone(), client, &self.env))
    }
}

/// A client for `info` with the given credentials and CA (the public web roots without one).
pub(crate) fn client(
    info: redis::ConnectionInfo,
    username: Option<&str>,
    password: Option<&Secret>,
    ca_pem: Option<&[u8]>,
    protocol: ProtocolVersion,
) -> redis::RedisResult<redis::Client> {
    crate::outbound::install_crypto_provider();
    let mut settings = info.redis_settings().clone().set_protocol(protocol);
    if let Some(user) = username {
        settings = settings.set_username(user);
    }
    if let Some(password) = password {
        settings = settings.set_password(password.expose());
    }
    let tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
    let info = info.set_redis_settings(settings);
    match ca_pem {
        Some(pem) if tls => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            },
        ),
        _ => redis::Client::open(info),
    }
}

/// A connection and whether it is still believed alive.
#[derive(Clone)]
pub(crate) struct Conn {
    con: MultiplexedConnection,
    alive: Arc<AtomicBool>,
    /// When it last answered, in ms since `since()`.
    answered: Arc<AtomicU64>,
    /// The node's epoch when it was opened.
    epoch: u64,
}

/// The layer's clock for idle times.
fn since() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

impl Conn {
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// How long since it last answered anything.
    pub fn idle(&self) -> Duration {
        Duration::from_millis(since().saturating_sub(self.answered.load(Ordering::Relaxed)))
    }

    fn answered(&self) {
        self.answered.store(since(), Ordering::Relaxed);
    }

    fn is(&self, other: &Conn) -> bool {
        Arc::ptr_eq(&self.alive, &other.alive)
    }

    /// Marks it dead: it is dropped once the calls already on it are answered.
    pub fn kill(&self) {
        self.alive.store(false, Ordering::SeqCst);
    }

    pub async fn send(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        let reply = self.con.send_packed_command(cmd).await;
        if reply.is_ok() {
            self.answered();
        }
        reply
    }

    pub async fn send_all(&mut self, p: &redis::Pipeline) -> redis::RedisResult<Vec<redis::Value>> {
        let replies = self.con.send_packed_commands(p, 0, p.len()).await;
        if replies.is_ok() {
            self.answered();
        }
        replies
    }

    pub async fn subscribe(&mut self, channels: &[String]) -> redis::RedisResult<()> {
        self.con.subscribe(channels).await
    }
}

pub(crate) struct Node {
    pub addr: HostPort,
    client: redis::Client,
    timeout: Duration,
    runtime: tokio::runtime::Handle,
    shared: Mutex<Option<Conn>>,
    /// One connect at a time: callers arriving meanwhile wait for it instead of opening more.
    connecting: tokio::sync::Mutex<()>,
    idle: Mutex<Vec<Conn>>,
    exclusive: Arc<tokio::sync::Semaphore>,
    /// Moves when everything opened so far must go (the server's role changed).
    epoch: AtomicU64,
    counters: Arc<Counters>,
}

/// An exclusive connection, back to the node's idle list on drop unless it was spoiled.
pub(crate) struct Exclusive {
    pub conn: Conn,
    node: Arc<Node>,
    _permit: tokio::sync::OwnedSemaphorePermit,
    reusable: bool,
}

impl Exclusive {
    /// A call on it was answered in full: it may serve another.
    pub fn reusable(&mut self) {
        self.reusable = true;
    }
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        if self.reusable && self.conn.is_alive() {
            self.node.give_back(self.conn.clone());
        }
    }
}

impl Node {
    pub fn new(addr: HostPort, client: redis::Client, env: &Env) -> Arc<Node> {
        Arc::new(Node {
            addr,
            client,
            timeout: env.timeout,
            runtime: env.runtime.clone(),
            shared: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            idle: Mutex::new(Vec::new()),
            exclusive: Arc::new(tokio::sync::Semaphore::new(MAX_EXCLUSIVE)),
            epoch: AtomicU64::new(0),
            counters: env.counters.clone(),
        })
    }

    fn current(&self) -> Option<Conn> {
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        match &*shared {
            Some(c) if c.is_alive() => Some(c.clone()),
            Some(_) => {
                *shared = None;
                None
            }
            None => None,
        }
    }

    /// The shared connection, opened if there is none alive.
    pub async fn shared(&self) -> redis::RedisResult<Conn> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let c = self.open(None).await?;
        *self.shared.lock().unwrap_or_else(|e| e.into_inner()) = Some(c.clone());
        Ok(c)
    }

    /// Makes `c` the shared connection (one the caller opened and checked, e.g. its ROLE).
    pub fn install(&self, c: Conn) {
        *self.shared.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
    }

    /// Drops `c` if it is the shared connection (it failed or timed out).
    pub fn forget(&self, c: &Conn) {
        c.kill();
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if shared.as_ref().is_some_and(|s| s.is(c)) {
            *shared = None;
        }
    }

    /// Drops every connection opened so far (the server's role changed behind them).
    pub fn forget_all(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if let Some(c) = self.shared.lock().unwrap_or_else(|e| e.into_inner()).take() {
            c.kill();
        }
        for c in self
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            c.kill();
        }
    }

    /// An exclusive connection: WAIT blocks the connection it is sent on until replicas
    /// acknowledge (or its timeout), so it must not hold up the shared one.
    pub async fn exclusive(self: &Arc<Self>) -> redis::RedisResult<Exclusive> {
        let permit = self
            .exclusive
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let epoch = self.epoch.load(Ordering::SeqCst);
        let pooled = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.retain(|c| c.is_alive() && c.epoch == epoch);
            idle.pop()
        };
        let conn = match pooled {
            Some(c) => c,
            None => self.open(None).await?,
        };
        Ok(Exclusive {
            conn,
            node: self.clone(),
            _permit: permit,
            reusable: false,
        })
    }

    fn give_back(&self, c: Conn) {
        if c.epoch == self.epoch.load(Ordering::SeqCst) {
            self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(c);
        }
    }

    /// Opens a new connection; `push` receives what Redis pushes on it (pub/sub messages).
    pub async fn open(&self, push: Option<UnboundedSender<PushInfo>>) -> redis::RedisResult<Conn> {
        let alive = Arc::new(AtomicBool::new(true));
        let (seen, counters) = (alive.clone(), self.counters.clone());
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            // Our own deadline covers each call (super::call); dropping its future is safe.
            .set_response_timeout(None)
            .set_push_sender(move |info: PushInfo| -> Result<(), ()> {
                if info.kind == PushKind::Disconnection {
                    seen.store(false, Ordering::SeqCst);
                    counters.disconnects.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(push) = &push {
                    let _ = push.send(info);
                }
                Ok(())
            });
        let epoch = self.epoch.load(Ordering::SeqCst);
        // redis-rs spawns the driver on the runtime it is asked from: ask from ours.
        let client = self.client.clone();
        let con = self
            .runtime
            .spawn(async move {
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
            })
            .await
            .map_err(|_| {
                redis::RedisError::from(std::io::Error::other("the Redis runtime stopped"))
            })??;
        self.counters.connects.fetch_add(1, Ordering::Relaxed);
        Ok(Conn {
            con,
            alive,
            answered: Arc::new(AtomicU64::new(since())),
            epoch,
        })
    }
}
