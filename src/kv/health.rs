//! Whether Redis answers (every primary, within the timeout) and whether it keeps what it is
//! given across a restart (AOF or RDB snapshots), read where the server allows it.

use super::node::Node;
use super::topology::Unreached;
use super::{KvError, Shared};
use redis::Value;
use std::sync::Arc;
use tokio::time::{timeout_at, Instant};

/// What one primary says about persistence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persistence {
    pub node: String,
    /// `appendonly` (CONFIG GET), or `aof_enabled` (INFO persistence) where CONFIG is refused.
    pub aof: Option<bool>,
    /// The RDB `save` schedule (`""`: no snapshots); `None` where CONFIG is refused.
    pub rdb_schedule: Option<String>,
    /// `appendfsync` (`always`, `everysec`, `no`); `None` where CONFIG is refused.
    pub fsync: Option<String>,
    /// CONFIG was refused (managed services often rename or forbid it).
    pub config_refused: bool,
}

impl Persistence {
    /// `Some(false)` when this primary would come back empty from a restart, `Some(true)` when
    /// it writes an AOF or snapshots, `None` when that cannot be told.
    pub fn persists(&self) -> Option<bool> {
        match (self.aof, self.rdb_schedule.as_deref()) {
            (Some(true), _) => Some(true),
            (_, Some(s)) if !s.trim().is_empty() => Some(true),
            (Some(false), Some(_)) => Some(false),
            _ => None,
        }
    }
}

fn unreached(e: Unreached) -> KvError {
    KvError::Unavailable(e.0)
}

/// PING on every primary at once; Ok only if all answered before the deadline.
pub(crate) async fn ping(shared: &Shared) -> Result<(), KvError> {
    let deadline = Instant::now() + shared.timeout;
    let nodes = timeout_at(deadline, shared.backend.primaries())
        .await
        .map_err(|_| KvError::Unavailable("timed out finding the primaries".into()))?
        .map_err(unreached)?;
    let mut pings = tokio::task::JoinSet::new();
    for node in nodes {
        pings.spawn(async move {
            let answer = timeout_at(deadline, ask(&node, &redis::cmd("PING"))).await;
            (node.addr.to_string(), answer)
        });
    }
    while let Some(done) = pings.join_next().await {
        let (addr, answer) = done.map_err(|_| KvError::Unavailable("a ping failed".into()))?;
        match answer {
            Err(_) => return Err(KvError::Unavailable(format!("{addr}: no reply in time"))),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(_)) => {}
        }
    }
    Ok(())
}

/// One command on a node's shared connection, once (health checks read only).
async fn ask(node: &Arc<Node>, cmd: &redis::Cmd) -> Result<Value, KvError> {
    let mut conn = node
        .shared()
        .await
        .map_err(|e| KvError::Unavailable(format!("{}: {e}", node.addr)))?;
    match conn.send(cmd).await {
        Ok(Value::ServerError(e)) => Err(KvError::Server {
            code: e.code().to_string(),
            message: e.details().unwrap_or_default().to_string(),
        }),
        Ok(v) => Ok(v),
        Err(e) => {
            node.forget(&conn);
            Err(KvError::Unavailable(format!("{}: {e}", node.addr)))
        }
    }
}

pub(crate) async fn persistence(shared: &Shared) -> Result<Vec<Persistence>, KvError> {
    let deadline = Instant::now() + shared.timeout;
    async fn within<T>(
        deadline: Instant,
        f: impl std::future::Future<Output = Result<T, KvError>>,
    ) -> Result<T, KvError> {
        timeout_at(deadline, f)
            .await
            .unwrap_or_else(|_| Err(KvError::Unavailable("no reply in time".into())))
    }
    let nodes = within(deadline, async {
        shared.backend.primaries().await.map_err(unreached)
    })
    .await?;
    let mut all = Vec::new();
    for node in nodes {
        let config = |name: &'static str| {
            let node = node.clone();
            async move {
                let v = ask(&node, redis::cmd("CONFIG").arg("GET").arg(name)).await?;
                Ok::<_, KvError>(config_value(&v, name))
            }
        };
        let (aof, save, fsync) = (
            within(deadline, config("appendonly")).await,
            within(deadline, config("save")).await,
            within(deadline, config("appendfsync")).await,
        );
        let refused =
            |r: &Result<Option<String>, KvError>| matches!(r, Err(KvError::Server { .. }));
        let config_refused = refused(&aof) || refused(&save);
        let (mut aof, save) = match (aof, save) {
            (Ok(a), Ok(s)) => (a.map(|a| a == "yes"), s),
            (Err(e @ KvError::Unavailable(_)), _) | (_, Err(e @ KvError::Unavailable(_))) => {
                return Err(e)
            }
            _ => (None, None),
        };
        if aof.is_none() {
            let node = node.clone();
            let info = within(deadline, async move {
                ask(&node, redis::cmd("INFO").arg("persistence")).await
            })
            .await?;
            aof = info_field(&info, "aof_enabled").map(|v| v == "1");
        }
        all.push(Persistence {
            node: node.addr.to_string(),
            aof,
            rdb_schedule: save,
            fsync: fsync.ok().flatten(),
            config_refused,
        });
    }
    Ok(all)
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

/// CONFIG GET's answer: a map over RESP3, a flat list of name, value over RESP2.
fn config_value(v: &Value, name: &str) -> Option<String> {
    match v {
        Value::Map(pairs) => pairs
            .iter()
            .find(|(k, _)| text(k).as_deref() == Some(name))
            .and_then(|(_, v)| text(v)),
        Value::Array(items) => items
            .chunks(2)
            .find(|kv| text(&kv[0]).as_deref() == Some(name))
            .and_then(|kv| kv.get(1).and_then(text)),
        _ => None,
    }
}

fn info_field(v: &Value, field: &str) -> Option<String> {
    text(v)?.lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|r| r.strip_prefix(':'))
            .map(|r| r.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persistence_is_told_from_what_is_known() {
        let p = |aof, rdb: Option<&str>| Persistence {
            node: "n".into(),
            aof,
            rdb_schedule: rdb.map(String::from),
            fsync: None,
            config_refused: false,
        };
        assert_eq!(p(Some(true), Some("")).persists(), Some(true));
        assert_eq!(p(Some(false), Some("3600 1")).persists(), Some(true));
        assert_eq!(p(Some(false), Some("")).persists(), Some(false));
        assert_eq!(p(Some(false), None).persists(), None);
        assert_eq!(p(None, None).persists(), None);
    }

    #[test]
    fn config_and_info_replies_are_read_in_both_protocols() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let map = Value::Map(vec![(b("save"), b("3600 1"))]);
        assert_eq!(config_value(&map, "save").as_deref(), Some("3600 1"));
        let flat = Value::Array(vec![b("appendonly"), b("no")]);
        assert_eq!(config_value(&flat, "appendonly").as_deref(), Some("no"));
        let info = Value::VerbatimString {
            format: redis::VerbatimFormat::Text,
            text: "# Persistence\r\nloading:0\r\naof_enabled:1\r\n".into(),
        };
        assert_eq!(info_field(&info, "aof_enabled").as_deref(), Some("1"));
    }
}
