//! One call to Redis (a command or a script, its keys and arguments) and how it is sent: to the
//! right server, again only when Redis said it did not run it (or the call is idempotent), never
//! past the deadline, and with what happened when no reply came.

use super::cluster::redirect;
use super::node::Conn;
use super::scripts::Script;
use super::topology::Unreached;
use super::{KvError, Shared};
use redis::{ToRedisArgs, Value};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::{timeout_at, Instant};

/// The longest pause between two tries of a call that Redis said it did not run.
const MAX_PAUSE: Duration = Duration::from_millis(200);

/// A connection quiet for longer than this is asked PING before a call that must not be lost
/// goes out on it. A socket that died without a word (a NAT or proxy dropped it, a network
/// split) is found by the PING, whose loss costs nothing, instead of by the call, whose loss
/// would be reported `Lost`; under traffic connections are never this quiet and skip it.
const CHECK_AFTER_IDLE: Duration = Duration::from_secs(1);

/// A command or a script call. Keys are given apart from other arguments: a cluster routes
/// the call by its first key, and every key must be in the same slot.
#[derive(Clone, Debug)]
pub struct Call {
    what: What,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
    idempotent: bool,
}

#[derive(Clone, Debug)]
enum What {
    Command(String),
    Script(Script),
}

impl Call {
    /// A command, e.g. `Call::command("GET").key(k)`; its keys come right after its name.
    /// Sent at most once unless marked [`idempotent`](Call::idempotent).
    pub fn command(name: &str) -> Call {
        Call {
            what: What::Command(name.to_string()),
            keys: Vec::new(),
            args: Vec::new(),
            idempotent: false,
        }
    }

    /// A script call, idempotent when the script is.
    pub fn script(script: &Script) -> Call {
        Call {
            idempotent: script.is_idempotent(),
            what: What::Script(script.clone()),
            keys: Vec::new(),
            args: Vec::new(),
        }
    }

    pub fn key(mut self, key: impl AsRef<[u8]>) -> Call {
        self.keys.push(key.as_ref().to_vec());
        self
    }

    pub fn arg(mut self, arg: impl ToRedisArgs) -> Call {
        self.args.extend(arg.to_redis_args());
        self
    }

    /// Running it twice is harmless (a read): a call whose reply was lost is sent again.
    pub fn idempotent(mut self) -> Call {
        self.idempotent = true;
        self
    }

    pub fn keys(&self) -> &[Vec<u8>] {
        &self.keys
    }

    pub fn is_idempotent(&self) -> bool {
        self.idempotent
    }

    fn slot(&self) -> Option<u16> {
        self.keys.first().map(|k| super::scripts::slot(k))
    }

    fn is_script(&self) -> bool {
        matches!(self.what, What::Script(_))
    }

    fn cmd(&self, eval: bool) -> redis::Cmd {
        let mut cmd = match &self.what {
            What::Command(name) => redis::cmd(name),
            What::Script(s) => {
                let mut cmd = if eval {
                    redis::cmd("EVAL").arg(s.body()).clone()
                } else {
                    redis::cmd("EVALSHA").arg(s.sha()).clone()
                };
                cmd.arg(self.keys.len());
                cmd
            }
        };
        for k in &self.keys {
            cmd.arg(k);
        }
        for a in &self.args {
            cmd.arg(a);
        }
        cmd
    }
}

/// What a call answered, and with `wait`, how many replicas acknowledged it.
pub(crate) struct Answer {
    pub value: Value,
    pub replicas: Option<u32>,
}

enum Lease {
    Shared(Conn),
    Exclusive(super::node::Exclusive),
}

impl Lease {
    fn conn(&mut self) -> &mut Conn {
        match self {
            Lease::Shared(c) => c,
            Lease::Exclusive(e) => &mut e.conn,
        }
    }
}

/// Sends `call`, with `wait` (replicas, time) also WAIT on the same connection right after it.
pub(crate) async fn execute(
    shared: &Shared,
    call: &Call,
    wait: Option<(u32, Duration)>,
) -> Result<Answer, KvError> {
    let counters = &shared.counters;
    let backend = &shared.backend;
    let deadline = Instant::now() + shared.timeout + wait.map_or(Duration::ZERO, |w| w.1);
    let slot = call.slot();
    let mut eval = false;
    let mut ask: Option<std::sync::Arc<super::node::Node>> = None;
    let mut pause = Duration::from_millis(5);
    let mut why = String::from("no server answered");
    let mut redirects = 0;
    let unavailable = |why: &str| {
        counters.unavailable.fetch_add(1, Ordering::Relaxed);
        Err(KvError::Unavailable(why.to_string()))
    };
    // Waits before the next try; false when that would pass the deadline.
    let rest = |pause: &mut Duration| {
        let wake = Instant::now() + *pause;
        *pause = (*pause * 2).min(MAX_PAUSE);
        async move {
            if wake >= deadline {
                return false;
            }
            tokio::time::sleep_until(wake).await;
            true
        }
    };
    loop {
        let found = match &ask {
            Some(node) => {
                timeout_at(deadline, async {
                    let conn = node
                        .shared()
                        .await
                        .map_err(|e| Unreached(format!("{} (ASK): {e}", node.addr)))?;
                    Ok((node.clone(), conn))
                })
                .await
            }
            None => timeout_at(deadline, backend.primary(slot)).await,
        };
        let (node, conn) = match found {
            Err(_) => return unavailable(&format!("timed out; {why}")),
            Ok(Err(Unreached(e))) => {
                why = e;
                ask = None;
                if !rest(&mut pause).await {
                    return unavailable(&why);
                }
                continue;
            }
            Ok(Ok(found)) => found,
        };
        let mut lease = match wait {
            None => Lease::Shared(conn),
            Some(_) => match timeout_at(deadline, node.exclusive()).await {
                Err(_) => return unavailable(&format!("timed out; {why}")),
                Ok(Err(e)) => {
                    why = format!("{}: {e}", node.addr);
                    backend.stale(&node);
                    if !rest(&mut pause).await {
                        return unavailable(&why);
                    }
                    continue;
                }
                Ok(Ok(e)) => Lease::Exclusive(e),
            },
        };
        if !lease.conn().is_alive() {
            // It died while we were getting it: nothing was sent, take a new one.
            node.forget(lease.conn());
            continue;
        }
        if !call.idempotent && lease.conn().idle() > CHECK_AFTER_IDLE {
            let ping = redis::cmd("PING");
            match timeout_at(deadline, lease.conn().send(&ping)).await {
                Ok(Ok(_)) => {}
                failed => {
                    node.forget(lease.conn());
                    backend.stale(&node);
                    why = match failed {
                        Ok(Err(e)) => format!("{}: {e}", node.addr),
                        _ => format!("{}: no answer to PING in time", node.addr),
                    };
                    if !rest(&mut pause).await {
                        return unavailable(&why);
                    }
                    continue;
                }
            }
        }
        let cmd = call.cmd(eval);
        let pipelined = ask.is_some() || wait.is_some();
        let sent = if pipelined {
            let mut p = redis::pipe();
            if ask.is_some() {
                p.cmd("ASKING");
            }
            p.add_command(cmd);
            if let Some((replicas, time)) = wait {
                p.cmd("WAIT").arg(replicas).arg(time.as_millis() as u64);
            }
            timeout_at(deadline, lease.conn().send_all(&p)).await
        } else {
            timeout_at(deadline, lease.conn().send(&cmd))
                .await
                .map(|r| r.map(|v| vec![v]))
        };
        let replies = match sent {
            Err(_) => {
                // It may be stuck (a network split): the next call gets a new connection.
                node.forget(lease.conn());
                backend.stale(&node);
                let words = format!(
                    "{}: no reply in {} ms",
                    node.addr,
                    shared.timeout.as_millis()
                );
                if call.idempotent {
                    return unavailable(&words);
                }
                counters.lost.fetch_add(1, Ordering::Relaxed);
                return Err(KvError::Lost(words));
            }
            Ok(Err(e)) => {
                node.forget(lease.conn());
                backend.stale(&node);
                why = format!("{}: {e}", node.addr);
                if call.idempotent {
                    if !rest(&mut pause).await {
                        return unavailable(&why);
                    }
                    continue;
                }
                counters.lost.fetch_add(1, Ordering::Relaxed);
                return Err(KvError::Lost(why));
            }
            Ok(Ok(replies)) => replies,
        };
        let mut replies = replies.into_iter().skip(ask.is_some() as usize);
        let (Some(value), replicas) = (replies.next(), replies.next()) else {
            counters.lost.fetch_add(1, Ordering::Relaxed);
            return Err(KvError::Lost(format!("{}: a reply was missing", node.addr)));
        };
        if let Lease::Exclusive(e) = &mut lease {
            e.reusable();
        }
        let Value::ServerError(e) = value else {
            let replicas = wait.map(|_| match replicas {
                Some(Value::Int(n)) => n.max(0) as u32,
                // WAIT refused (some managed services do): count no replica rather than fail
                // a write that ran.
                _ => 0,
            });
            let value = if call.is_script() {
                resp2(value)
            } else {
                value
            };
            return Ok(Answer { value, replicas });
        };
        // Every code below means Redis did not run the call: trying again is safe.
        let detail = e.details().unwrap_or_default();
        match e.code() {
            "NOSCRIPT" if call.is_script() && !eval => eval = true,
            "MOVED" => {
                ask = None;
                match redirect(detail) {
                    Some((slot, addr)) => backend.moved(slot, addr),
                    None => return Err(server(&e)),
                }
                why = format!("{}: MOVED {detail}", node.addr);
                // Two nodes disagreeing (a migration under way) must not spin.
                redirects += 1;
                if redirects > 2 && !rest(&mut pause).await {
                    return unavailable(&why);
                }
            }
            "ASK" => {
                let Some((_, addr)) = redirect(detail) else {
                    return Err(server(&e));
                };
                counters.asked.fetch_add(1, Ordering::Relaxed);
                match backend.node_at(&addr) {
                    Ok(n) => ask = Some(n),
                    Err(Unreached(w)) => return Err(KvError::Invalid(w)),
                }
            }
            code @ ("READONLY" | "MASTERDOWN" | "CLUSTERDOWN" | "TRYAGAIN" | "LOADING" | "BUSY"
            | "NOREPLICAS") => {
                if matches!(code, "READONLY" | "MASTERDOWN" | "CLUSTERDOWN") {
                    backend.stale(&node);
                }
                ask = None;
                why = format!("{}: {code} {detail}", node.addr);
                if !rest(&mut pause).await {
                    return unavailable(&why);
                }
            }
            // Refused before running, and not going to pass within the timeout.
            "OOM" => return unavailable(&format!("{}: OOM {detail}", node.addr)),
            _ => return Err(server(&e)),
        }
    }
}

fn server(e: &redis::ServerError) -> KvError {
    KvError::Server {
        code: e.code().to_string(),
        message: e.details().unwrap_or_default().to_string(),
    }
}

/// A script's reply as a RESP2 client sees it: over RESP3, Lua's `false` arrives as a boolean
/// instead of nil, and `true` as a boolean instead of 1. Scripts written for RESP2 (all of
/// ours) keep their meaning.
fn resp2(v: Value) -> Value {
    match v {
        Value::Boolean(false) => Value::Nil,
        Value::Boolean(true) => Value::Int(1),
        Value::Array(items) => Value::Array(items.into_iter().map(resp2).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_go_by_sha_and_by_body_after_noscript() {
        let s = Script::new("return KEYS[1]");
        let call = Call::script(&s).key("k").arg(7).arg("x");
        let packed = |c: redis::Cmd| {
            c.args_iter()
                .map(|a| match a {
                    redis::Arg::Simple(b) => String::from_utf8_lossy(b).to_string(),
                    _ => "other".into(),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            packed(call.cmd(false)),
            ["EVALSHA", s.sha(), "1", "k", "7", "x"]
        );
        assert_eq!(
            packed(call.cmd(true)),
            ["EVAL", "return KEYS[1]", "1", "k", "7", "x"]
        );
        let get = Call::command("HMGET").key("h").arg("a").arg("b");
        assert_eq!(packed(get.cmd(false)), ["HMGET", "h", "a", "b"]);
        assert!(!get.is_idempotent() && get.clone().idempotent().is_idempotent());
        assert!(Call::script(&s.idempotent()).is_idempotent());
    }

    #[test]
    fn resp3_booleans_read_as_resp2() {
        let v = Value::Array(vec![
            Value::Boolean(false),
            Value::Boolean(true),
            Value::Int(3),
        ]);
        assert_eq!(
            resp2(v),
            Value::Array(vec![Value::Nil, Value::Int(1), Value::Int(3)])
        );
    }
}
