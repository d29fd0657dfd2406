//! The primary found through Redis Sentinel, and followed: every new connection to it starts
//! with asking the sentinels which server is the primary and that server's `ROLE`, so nothing
//! written goes to a server that was demoted, or restarted empty, behind our back.
//!
//! redis-rs's `sentinel` feature asks the sentinels only when a connection is made
//! (redis-rs#1438) and checks the role on a throwaway connection with no overall deadline; here
//! the primary is looked up again whenever the connection that was checked dies, whenever a
//! write meets `READONLY`, and whenever a poll of the sentinels (every second) names another
//! server; the look-up asks all sentinels at once and takes the first answer, so one hung
//! sentinel costs nothing.

use super::node::{self, Conn, Dial, Node};
use super::settings::{HostPort, SentinelSettings};
use super::topology::Unreached;
use super::Counters;
use redis::aio::MultiplexedConnection;
use redis::{IntoConnectionInfo, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the sentinels are asked whether the primary moved, when nothing else told us.
const POLL: Duration = Duration::from_secs(1);

/// A failed look-up is the answer for whoever asks within this long after it.
const SHARE_FAILURE: Duration = Duration::from_millis(50);

struct Asked {
    addr: HostPort,
    client: redis::Client,
    con: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

struct Primary {
    node: Arc<Node>,
    /// The connection whose `ROLE` said master: the primary is known only while it lives.
    conn: Conn,
}

pub(crate) struct Sentinel {
    name: String,
    sentinels: Vec<Arc<Asked>>,
    dial: Dial,
    timeout: Duration,
    nodes: Mutex<HashMap<HostPort, Arc<Node>>>,
    primary: Mutex<Option<Primary>>,
    /// Held while looking up; the last failure, and when.
    lookup: tokio::sync::Mutex<Option<(std::time::Instant, String)>>,
    changes: tokio::sync::watch::Sender<u64>,
    counters: Arc<Counters>,
}

impl Sentinel {
    pub fn new(s: &SentinelSettings, dial: Dial) -> Result<Sentinel, String> {
        let scheme = if s.tls { "rediss" } else { "redis" };
        let sentinels = s
            .sentinels
            .iter()
            .map(|addr| {
                let info = format!("{scheme}://{addr}")
                    .into_connection_info()
                    .map_err(|e| format!("OAUTH_RELAY_REDIS_SENTINELS {addr}: {}", e.category()))?;
                // Sentinels speak RESP2 to every client library; their replies are plain arrays.
                let client = node::client(
                    info,
                    s.username.as_deref(),
                    s.password.as_ref(),
                    dial.ca_pem.as_deref(),
                    redis::ProtocolVersion::RESP2,
                )
                .map_err(|e| format!("OAUTH_RELAY_REDIS_SENTINELS {addr}: {}", e.category()))?;
                Ok(Arc::new(Asked {
                    addr: addr.clone(),
                    client,
                    con: tokio::sync::Mutex::new(None),
                }))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Sentinel {
            name: s.master_name.clone(),
            sentinels,
            timeout: dial.env.timeout,
            counters: dial.env.counters.clone(),
            dial,
            nodes: Mutex::new(HashMap::new()),
            primary: Mutex::new(None),
            lookup: tokio::sync::Mutex::new(None),
            changes: tokio::sync::watch::channel(0).0,
        })
    }

    fn known(&self) -> Option<(Arc<Node>, Conn)> {
        let primary = self.primary.lock().unwrap_or_else(|e| e.into_inner());
        primary
            .as_ref()
            .filter(|p| p.conn.is_alive())
            .map(|p| (p.node.clone(), p.conn.clone()))
    }

    /// The address of the primary as last checked, if its connection still lives.
    pub fn known_addr(&self) -> Option<HostPort> {
        self.known().map(|(n, _)| n.addr.clone())
    }

    /// The primary and its checked connection, looked up if there is none.
    pub async fn primary(self: &Arc<Self>) -> Result<(Arc<Node>, Conn), Unreached> {
        if let Some(p) = self.known() {
            return Ok(p);
        }
        let mut failed = self.lookup.lock().await;
        if let Some(p) = self.known() {
            return Ok(p);
        }
        // Callers queued behind a look-up that just failed share its answer rather than each
        // ask again (during a failover, hundreds may be waiting).
        if let Some((at, why)) = &*failed {
            if at.elapsed() < SHARE_FAILURE {
                return Err(Unreached(why.clone()));
            }
        }
        let found = self.look_up().await;
        *failed = found
            .as_ref()
            .err()
            .map(|e| (std::time::Instant::now(), e.0.clone()));
        found
    }

    async fn look_up(self: &Arc<Self>) -> Result<(Arc<Node>, Conn), Unreached> {
        self.counters.lookups.fetch_add(1, Ordering::Relaxed);
        let addr = self.ask().await?;
        let node = self.node(&addr)?;
        // Whatever was open to that address predates this look-up.
        node.forget_all();
        let mut conn = node
            .open(None)
            .await
            .map_err(|e| Unreached(format!("primary {addr} (from the sentinels): {e}")))?;
        let role = conn
            .send(&redis::cmd("ROLE"))
            .await
            .map_err(|e| Unreached(format!("primary {addr}: ROLE: {e}")))?;
        if !is_master(&role) {
            conn.kill();
            return Err(Unreached(format!(
                "the sentinels name {addr} as primary of {}, but it is not (yet) one",
                self.name
            )));
        }
        node.install(conn.clone());
        let changed = {
            let mut primary = self.primary.lock().unwrap_or_else(|e| e.into_inner());
            let changed = primary.as_ref().is_none_or(|p| p.node.addr != addr);
            *primary = Some(Primary {
                node: node.clone(),
                conn: conn.clone(),
            });
            changed
        };
        if changed {
            self.changes.send_modify(|g| *g += 1);
        }
        Ok((node, conn))
    }

    /// `node` answered READONLY, refused a connection or lost one: if it is the primary we
    /// know, we no longer know it.
    pub fn stale(&self, node: &Arc<Node>) {
        let mut primary = self.primary.lock().unwrap_or_else(|e| e.into_inner());
        if primary.as_ref().is_some_and(|p| Arc::ptr_eq(&p.node, node)) {
            *primary = None;
            drop(primary);
            node.forget_all();
            self.changes.send_modify(|g| *g += 1);
        }
    }

    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn node(&self, addr: &HostPort) -> Result<Arc<Node>, Unreached> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = nodes.get(addr) {
            return Ok(n.clone());
        }
        let n = self
            .dial
            .node(addr)
            .map_err(|e| Unreached(format!("primary {addr}: {}", e.category())))?;
        nodes.insert(addr.clone(), n.clone());
        Ok(n)
    }

    /// Asks every sentinel at once; the first that names a primary wins.
    async fn ask(self: &Arc<Self>) -> Result<HostPort, Unreached> {
        let mut asking = tokio::task::JoinSet::new();
        for s in &self.sentinels {
            let (s, name, timeout) = (s.clone(), self.name.clone(), self.timeout);
            // On our runtime: a connection opened to a sentinel keeps its driver there.
            let asked = async move {
                let answer = tokio::time::timeout(timeout, ask_one(&s, &name)).await;
                (
                    s.addr.clone(),
                    answer.unwrap_or_else(|_| Err("no answer in time".into())),
                )
            };
            asking.spawn_on(asked, &self.dial.env.runtime);
        }
        let mut why = Vec::new();
        while let Some(done) = asking.join_next().await {
            match done {
                Ok((_, Ok(Some(addr)))) => return Ok(addr),
                Ok((at, Ok(None))) => why.push(format!("{at}: does not know {}", self.name)),
                Ok((at, Err(e))) => why.push(format!("{at}: {e}")),
                Err(_) => {}
            }
        }
        Err(Unreached(format!(
            "no sentinel named a primary: {}",
            why.join("; ")
        )))
    }

    /// Runs for as long as the layer: every `POLL`, while a primary is known, asks the
    /// sentinels whether it is still the one, so a switch no error revealed (a network split,
    /// a failover while we were idle) is followed within a second.
    pub async fn watch(self: Arc<Self>) {
        loop {
            tokio::time::sleep(POLL).await;
            let Some((node, _)) = self.known() else {
                continue;
            };
            if let Ok(addr) = self.ask().await {
                if addr != node.addr {
                    crate::logging::warn(
                        "redis_primary_moved",
                        serde_json::json!({ "from": node.addr.to_string(), "to": addr.to_string() }),
                    );
                    self.stale(&node);
                }
            }
        }
    }
}

async fn ask_one(s: &Asked, name: &str) -> Result<Option<HostPort>, String> {
    let mut con = s.con.lock().await;
    let mut cmd = redis::cmd("SENTINEL");
    cmd.arg("GET-MASTER-ADDR-BY-NAME").arg(name);
    for attempt in 0..2 {
        if con.is_none() {
            *con = Some(
                s.client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        let c = con.as_mut().expect("just opened");
        match cmd.query_async::<Option<(String, String)>>(c).await {
            Ok(None) => return Ok(None),
            Ok(Some((host, port))) => {
                return port
                    .parse()
                    .map(|port| Some(HostPort { host, port }))
                    .map_err(|_| format!("answered a port of {port:?}"))
            }
            // A cached connection the sentinel closed meanwhile: once more on a new one.
            Err(e) if attempt == 0 && e.is_io_error() => *con = None,
            Err(e) => {
                *con = None;
                return Err(e.to_string());
            }
        }
    }
    unreachable!("the second attempt returns")
}

fn is_master(role: &Value) -> bool {
    match role {
        Value::Array(items) => {
            matches!(
                items.first(),
                Some(Value::BulkString(b)) if b == b"master"
            ) || matches!(items.first(), Some(Value::SimpleString(s)) if s == "master")
        }
        _ => false,
    }
}
