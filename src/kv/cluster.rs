//! A Redis Cluster: which primary serves each of the 16384 slots (learnt with CLUSTER SLOTS
//! from any node that answers, the seeds first of all), a connection per node, and the map put
//! right when a node says MOVED, READONLY or CLUSTERDOWN, or stops answering.
//!
//! redis-rs's `cluster-async` follows MOVED and ASK itself, but the same machinery resends a
//! command after a lost reply (its retries treat a reset connection or a response timeout as
//! "reconnect and retry"), which would run a take twice; with retries off it follows no
//! redirect at all. Here the routing is ours, so only what is known not to have run is resent.

use super::node::{Conn, Dial, Node};
use super::scripts::SLOTS;
use super::settings::HostPort;
use super::topology::Unreached;
use redis::Value;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Refreshes closer together than this are merged (a failover makes every caller ask at once).
const MIN_REFRESH_GAP: Duration = Duration::from_millis(50);

struct SlotMap {
    generation: u64,
    /// For each slot, an index into `primaries`.
    owner: Vec<Option<u16>>,
    primaries: Vec<HostPort>,
    replicas: Vec<HostPort>,
}

pub(crate) struct Cluster {
    seeds: Vec<HostPort>,
    dial: Dial,
    nodes: Mutex<HashMap<HostPort, Arc<Node>>>,
    map: RwLock<Arc<SlotMap>>,
    refreshing: tokio::sync::Mutex<Option<Instant>>,
}

impl Cluster {
    pub fn new(seeds: Vec<HostPort>, dial: Dial) -> Cluster {
        Cluster {
            seeds,
            dial,
            nodes: Mutex::new(HashMap::new()),
            map: RwLock::new(Arc::new(SlotMap {
                generation: 0,
                owner: vec![None; SLOTS as usize],
                primaries: Vec::new(),
                replicas: Vec::new(),
            })),
            refreshing: tokio::sync::Mutex::new(None),
        }
    }

    fn map(&self) -> Arc<SlotMap> {
        self.map.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn node(&self, addr: &HostPort) -> Result<Arc<Node>, Unreached> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = nodes.get(addr) {
            return Ok(n.clone());
        }
        let n = self
            .dial
            .node(addr)
            .map_err(|e| Unreached(format!("node {addr}: {}", e.category())))?;
        nodes.insert(addr.clone(), n.clone());
        Ok(n)
    }

    /// The primary serving `slot` (any primary without one) and its shared connection.
    pub async fn primary(
        self: &Arc<Self>,
        slot: Option<u16>,
    ) -> Result<(Arc<Node>, Conn), Unreached> {
        let mut map = self.map();
        if map.primaries.is_empty() || slot.is_some_and(|s| map.owner[s as usize].is_none()) {
            self.refresh(map.generation).await?;
            map = self.map();
        }
        let addr = match slot {
            Some(s) => map.owner[s as usize].map(|i| &map.primaries[i as usize]),
            None => map.primaries.first(),
        }
        .ok_or_else(|| Unreached(format!("no primary serves slot {}", slot.unwrap_or(0))))?
        .clone();
        let node = self.node(&addr)?;
        match node.shared().await {
            Ok(conn) => Ok((node, conn)),
            Err(e) => {
                // A primary that cannot be reached may have been replaced: look again.
                self.refresh_later(map.generation);
                Err(Unreached(format!("{addr}: {e}")))
            }
        }
    }

    /// Every primary the map knows (after learning the map if it is empty).
    pub async fn primaries(self: &Arc<Self>) -> Result<Vec<Arc<Node>>, Unreached> {
        let mut map = self.map();
        if map.primaries.is_empty() {
            self.refresh(map.generation).await?;
            map = self.map();
        }
        map.primaries.iter().map(|a| self.node(a)).collect()
    }

    /// Every node to try, primaries first, then replicas, then the seeds.
    pub fn all_nodes(&self) -> Vec<HostPort> {
        let map = self.map();
        let mut all: Vec<HostPort> = Vec::new();
        for a in map.primaries.iter().chain(&map.replicas).chain(&self.seeds) {
            if !all.contains(a) {
                all.push(a.clone());
            }
        }
        all
    }

    /// MOVED: `slot` is served by `addr` from now on.
    pub fn moved(self: &Arc<Self>, slot: u16, addr: HostPort) {
        self.dial.env.counters.moved.fetch_add(1, Ordering::Relaxed);
        let generation = {
            let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
            let mut next = SlotMap {
                generation: map.generation + 1,
                owner: map.owner.clone(),
                primaries: map.primaries.clone(),
                replicas: map.replicas.clone(),
            };
            let i = match next.primaries.iter().position(|p| *p == addr) {
                Some(i) => i,
                None => {
                    next.primaries.push(addr);
                    next.primaries.len() - 1
                }
            };
            next.owner[slot as usize] = Some(i as u16);
            *map = Arc::new(next);
            map.generation
        };
        // One slot moved: others may have moved with it.
        self.refresh_later(generation);
    }

    /// `node` said READONLY or CLUSTERDOWN, or could not be reached: the map may be wrong.
    pub fn stale(self: &Arc<Self>) {
        self.refresh_later(self.map().generation);
    }

    fn refresh_later(self: &Arc<Self>, generation: u64) {
        let me = self.clone();
        self.dial.env.runtime.spawn(async move {
            let _ = me.refresh(generation).await;
        });
    }

    /// Learns the map again, unless it changed since `seen` (someone else just did).
    async fn refresh(&self, seen: u64) -> Result<(), Unreached> {
        let mut last = self.refreshing.lock().await;
        if self.map().generation != seen {
            return Ok(());
        }
        if let Some(at) = *last {
            tokio::time::sleep_until((at + MIN_REFRESH_GAP).into()).await;
        }
        *last = Some(Instant::now());
        self.dial
            .env
            .counters
            .refreshes
            .fetch_add(1, Ordering::Relaxed);
        let mut why = Vec::new();
        for addr in self.all_nodes() {
            match tokio::time::timeout(self.dial.env.timeout, self.ask_slots(&addr)).await {
                Ok(Ok(next)) => {
                    let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
                    let generation = map.generation + 1;
                    *map = Arc::new(SlotMap { generation, ..next });
                    return Ok(());
                }
                Ok(Err(e)) => why.push(format!("{addr}: {e}")),
                Err(_) => why.push(format!("{addr}: no answer in time")),
            }
        }
        Err(Unreached(format!(
            "no cluster node told its slots: {}",
            why.join("; ")
        )))
    }

    async fn ask_slots(&self, addr: &HostPort) -> Result<SlotMap, String> {
        let node = self.node(addr).map_err(|e| e.0)?;
        let mut conn = node.shared().await.map_err(|e| e.to_string())?;
        let reply = conn.send(&redis::cmd("CLUSTER").arg("SLOTS").clone()).await;
        let reply = match reply {
            Ok(Value::ServerError(e)) => return Err(e.to_string()),
            Ok(v) => v,
            Err(e) => {
                node.forget(&conn);
                return Err(e.to_string());
            }
        };
        let map = parse_slots(&reply, &addr.host)?;
        if map.primaries.is_empty() {
            return Err("serves no slot (not part of a cluster yet?)".into());
        }
        Ok(map)
    }
}

/// CLUSTER SLOTS: `[[start, end, [host, port, id, ...], replica...], ...]`. An empty host means
/// the node we asked (Redis does not know the address it is reached at); `?` an unknown one.
fn parse_slots(reply: &Value, asked: &str) -> Result<SlotMap, String> {
    let Value::Array(ranges) = reply else {
        return Err("CLUSTER SLOTS answered something else than a list".into());
    };
    let mut map = SlotMap {
        generation: 0,
        owner: vec![None; SLOTS as usize],
        primaries: Vec::new(),
        replicas: Vec::new(),
    };
    for range in ranges {
        let Value::Array(parts) = range else {
            continue;
        };
        let (Some(Value::Int(start)), Some(Value::Int(end))) = (parts.first(), parts.get(1)) else {
            continue;
        };
        let mut nodes = parts[2..].iter().filter_map(|n| endpoint(n, asked));
        let Some(primary) = nodes.next() else {
            continue;
        };
        for replica in nodes {
            if !map.replicas.contains(&replica) {
                map.replicas.push(replica);
            }
        }
        let i = match map.primaries.iter().position(|p| *p == primary) {
            Some(i) => i,
            None => {
                map.primaries.push(primary);
                map.primaries.len() - 1
            }
        };
        let (start, end) = (*start as usize, *end as usize);
        if start > end || end >= SLOTS as usize {
            return Err(format!("CLUSTER SLOTS named slots {start}-{end}"));
        }
        for slot in &mut map.owner[start..=end] {
            *slot = Some(i as u16);
        }
    }
    Ok(map)
}

fn endpoint(node: &Value, asked: &str) -> Option<HostPort> {
    let Value::Array(fields) = node else {
        return None;
    };
    let host = match fields.first()? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok()?,
        Value::SimpleString(s) => s.clone(),
        _ => return None,
    };
    let port = match fields.get(1)? {
        Value::Int(p) => u16::try_from(*p).ok()?,
        _ => return None,
    };
    match host.as_str() {
        "?" => None,
        "" => Some(HostPort {
            host: asked.to_string(),
            port,
        }),
        _ => Some(HostPort { host, port }),
    }
}

/// The slot and address of a MOVED or ASK error's detail: `3999 127.0.0.1:6381`.
pub(crate) fn redirect(detail: &str) -> Option<(u16, HostPort)> {
    let mut words = detail.split_ascii_whitespace();
    let slot = words.next()?.parse().ok().filter(|s| *s < SLOTS)?;
    // Redis writes IPv6 addresses without brackets: the port is after the last colon.
    let (host, port) = words.next()?.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then_some(())?;
    Some((
        slot,
        HostPort {
            host: host.to_string(),
            port: port.parse().ok()?,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn the_slot_map_is_read_from_cluster_slots() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                Value::Array(vec![bulk("10.0.0.1"), Value::Int(7000), bulk("id1")]),
                Value::Array(vec![bulk("10.0.0.4"), Value::Int(7003), bulk("id4")]),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                Value::Array(vec![bulk(""), Value::Int(7001), bulk("id2")]),
            ]),
        ]);
        let map = parse_slots(&reply, "seed").unwrap();
        assert_eq!(map.primaries.len(), 2);
        assert_eq!(
            map.primaries[map.owner[0].unwrap() as usize].to_string(),
            "10.0.0.1:7000"
        );
        assert_eq!(
            map.primaries[map.owner[16383].unwrap() as usize].to_string(),
            "seed:7001"
        );
        assert_eq!(map.replicas[0].to_string(), "10.0.0.4:7003");
        assert!(parse_slots(&Value::Int(1), "x").is_err());
    }

    #[test]
    fn redirects_name_a_slot_and_an_address() {
        let (slot, addr) = redirect("3999 127.0.0.1:6381").unwrap();
        assert_eq!((slot, addr.to_string().as_str()), (3999, "127.0.0.1:6381"));
        assert_eq!(redirect("1 ::1:7000").unwrap().1.to_string(), "[::1]:7000");
        assert!(redirect("99999 a:1").is_none());
        assert!(redirect("12").is_none());
    }
}
