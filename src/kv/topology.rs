//! The three topologies behind one face: which server a call goes to, and what happens when a
//! server says it is the wrong one (READONLY, MOVED, a refused connection).

use super::cluster::Cluster;
use super::node::{Conn, Dial, Env, Node};
use super::sentinel::Sentinel;
use super::settings::{HostPort, KvSettings, Topology};
use super::standalone::Standalone;
use std::sync::Arc;

/// No connection to the right server could be had (nothing was sent); the words say why.
#[derive(Debug)]
pub(crate) struct Unreached(pub String);

pub(crate) enum Backend {
    Standalone(Standalone),
    Sentinel(Arc<Sentinel>),
    Cluster(Arc<Cluster>),
}

impl Backend {
    pub fn new(s: &KvSettings, env: &Env) -> Result<Backend, String> {
        let dial = |tls: bool| Dial {
            tls,
            username: s.username.clone(),
            password: s.password.clone(),
            ca_pem: s.ca_pem.clone(),
            env: env.clone(),
        };
        Ok(match &s.topology {
            Topology::Standalone { url } => Backend::Standalone(Standalone::new(url, s, env)?),
            Topology::Sentinel(t) => {
                Backend::Sentinel(Arc::new(Sentinel::new(t, dial(t.data_tls))?))
            }
            Topology::Cluster { seeds, tls } => {
                Backend::Cluster(Arc::new(Cluster::new(seeds.clone(), dial(*tls))))
            }
        })
    }

    /// Starts what runs beside the calls (on the layer's runtime).
    pub fn start(&self, runtime: &tokio::runtime::Handle) {
        if let Backend::Sentinel(s) = self {
            runtime.spawn(s.clone().watch());
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Backend::Cluster(_))
    }

    /// The primary for a key in `slot` (any key: `None`) and its shared connection.
    pub async fn primary(&self, slot: Option<u16>) -> Result<(Arc<Node>, Conn), Unreached> {
        match self {
            Backend::Standalone(s) => s.primary().await,
            Backend::Sentinel(s) => s.primary().await,
            Backend::Cluster(c) => c.primary(slot).await,
        }
    }

    /// Every primary (one, unless on a cluster).
    pub async fn primaries(&self) -> Result<Vec<Arc<Node>>, Unreached> {
        match self {
            Backend::Cluster(c) => c.primaries().await,
            _ => self.primary(None).await.map(|(n, _)| vec![n]),
        }
    }

    /// A cluster node named by MOVED or ASK.
    pub fn node_at(&self, addr: &HostPort) -> Result<Arc<Node>, Unreached> {
        match self {
            Backend::Cluster(c) => c.node(addr),
            _ => Err(Unreached(format!(
                "{addr} redirected a call, but Redis is not configured as a cluster"
            ))),
        }
    }

    pub fn moved(&self, slot: u16, addr: HostPort) {
        if let Backend::Cluster(c) = self {
            c.moved(slot, addr);
        }
    }

    /// `node` said READONLY, MASTERDOWN or CLUSTERDOWN, or failed us: look the topology up again.
    pub fn stale(&self, node: &Arc<Node>) {
        match self {
            Backend::Standalone(_) => {}
            Backend::Sentinel(s) => s.stale(node),
            Backend::Cluster(c) => c.stale(),
        }
    }

    /// Where the subscriber should listen, on its `attempt`th try: the primary (standalone,
    /// Sentinel), or on a cluster any node, taking the next one each time (a published message
    /// reaches every node of a cluster).
    pub async fn pubsub_node(&self, attempt: usize) -> Result<Arc<Node>, Unreached> {
        match self {
            Backend::Cluster(c) => {
                let all = c.all_nodes();
                if all.is_empty() {
                    return Err(Unreached("no cluster node is known".into()));
                }
                c.node(&all[attempt % all.len()])
            }
            _ => self.primary(None).await.map(|(n, _)| n),
        }
    }

    /// Whether a subscriber on `node` should stay there: on Sentinel, only while it is the
    /// primary (it may have been demoted without its connections being closed).
    pub fn still_serves(&self, node: &Node) -> bool {
        match self {
            Backend::Sentinel(s) => s.known_addr().is_none_or(|a| a == node.addr),
            _ => true,
        }
    }

    /// Moves whenever the primary changes (Sentinel); never otherwise.
    pub fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        match self {
            Backend::Sentinel(s) => Some(s.changes()),
            _ => None,
        }
    }
}
