//! A real webhook receiver for completion events, on the fake-HTTP core: it verifies each
//! request the Standard Webhooks way with its own HMAC (ring), independent of the relay's code:
//! signature over "{webhook-id}.{webhook-timestamp}.{body}" with the key decoded from the
//! `whsec_` secret, a timestamp within 5 minutes of its clock, and an id it has not accepted
//! before. Forged or stale requests get 401; a repeated id gets 200 (the sender must stop
//! retrying) but is counted as a duplicate, not accepted again. It can be down (nothing
//! listening on its port), fail scripted attempts, or hold requests until released.

use super::fake_http::{FakeReply, FakeRequest, FakeServer};
use base64::Engine;
use std::collections::{HashSet, VecDeque};
use std::net::TcpListener;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Same tolerance as the Standard Webhooks libraries.
pub const TOLERANCE_SECS: u64 = 5 * 60;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// Verified, but an id accepted before: answered 200, not processed again.
    Duplicate,
    /// Verified, answered with a scripted failure status.
    Failed(u16),
    BadSignature,
    Stale,
    Malformed,
}

#[derive(Debug, Clone)]
pub struct Attempt {
    pub id: String,
    pub timestamp: u64,
    pub signature: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub verdict: Verdict,
}

impl Attempt {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

struct Shared {
    key: Vec<u8>,
    script: Mutex<VecDeque<u16>>,
    attempts: Mutex<Vec<Attempt>>,
    accepted_ids: Mutex<HashSet<String>>,
    /// While true, verified requests wait before being answered.
    hold: Mutex<bool>,
    released: Condvar,
    held_now: Mutex<usize>,
}

pub struct Receiver {
    port: u16,
    shared: Arc<Shared>,
    server: Mutex<Option<FakeServer>>,
}

/// A fixed test secret: `whsec_` + base64 of 32 bytes.
pub fn test_secret() -> String {
    let key: Vec<u8> = (0u8..32)
        .map(|b| b.wrapping_mul(7).wrapping_add(3))
        .collect();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Receiver {
    /// A receiver for `secret`, listening at once.
    pub fn start(secret: &str) -> Receiver {
        let r = Receiver::down(secret);
        r.up();
        r
    }

    /// A receiver whose port is chosen but on which nothing listens yet (see `up`).
    pub fn down(secret: &str) -> Receiver {
        let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
        let key = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("a base64 secret");
        Receiver {
            port: super::free_port(),
            shared: Arc::new(Shared {
                key,
                script: Mutex::new(VecDeque::new()),
                attempts: Mutex::new(Vec::new()),
                accepted_ids: Mutex::new(HashSet::new()),
                hold: Mutex::new(false),
                released: Condvar::new(),
                held_now: Mutex::new(0),
            }),
            server: Mutex::new(None),
        }
    }

    /// Starts listening on its port.
    pub fn up(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("bind the receiver");
        let shared = self.shared.clone();
        *self.server.lock().unwrap() = Some(FakeServer::start_on(
            "webhook-receiver",
            listener,
            move |req| handle(&shared, req),
        ));
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks/oauth-relay", self.port)
    }

    /// The next attempts that pass verification are answered with these statuses, in order.
    pub fn fail_next(&self, statuses: &[u16]) {
        self.shared.script.lock().unwrap().extend(statuses);
    }

    /// Verified requests wait, unanswered, until `release`.
    pub fn hold(&self) {
        *self.shared.hold.lock().unwrap() = true;
    }

    pub fn release(&self) {
        *self.shared.hold.lock().unwrap() = false;
        self.shared.released.notify_all();
    }

    /// Requests waiting in `hold` now.
    pub fn held(&self) -> usize {
        *self.shared.held_now.lock().unwrap()
    }

    pub fn attempts(&self) -> Vec<Attempt> {
        self.shared.attempts.lock().unwrap().clone()
    }

    /// Events accepted (verified, first time), in arrival order.
    pub fn accepted(&self) -> Vec<Attempt> {
        self.attempts()
            .into_iter()
            .filter(|a| a.verdict == Verdict::Accepted)
            .collect()
    }

    /// Sends a request as the relay would, to test the receiver itself.
    pub fn post(&self, headers: &[(&str, &str)], body: &str) -> super::HttpResponse {
        super::http(
            format!("127.0.0.1:{}", self.port).parse().unwrap(),
            "POST",
            "/hooks/oauth-relay",
            headers,
            body.as_bytes(),
        )
    }
}

fn reply(status: u16) -> FakeReply {
    FakeReply {
        status,
        headers: vec![],
        body: vec![],
    }
}

fn handle(shared: &Shared, req: &FakeRequest) -> FakeReply {
    let header = |n: &str| req.header(n).unwrap_or_default().to_string();
    let (id, ts, signature) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let body = String::from_utf8_lossy(&req.body).into_owned();
    let timestamp = ts.parse::<u64>().unwrap_or(0);
    let verdict = verify(shared, &id, &ts, timestamp, &signature, &req.body, req);
    let verdict = match verdict {
        Err(v) => v,
        Ok(()) => {
            let scripted = shared.script.lock().unwrap().pop_front();
            match scripted {
                Some(status) => Verdict::Failed(status),
                None => {
                    wait_while_held(shared);
                    if shared.accepted_ids.lock().unwrap().insert(id.clone()) {
                        Verdict::Accepted
                    } else {
                        Verdict::Duplicate
                    }
                }
            }
        }
    };
    let status = match &verdict {
        Verdict::Accepted | Verdict::Duplicate => 204,
        Verdict::Failed(s) => *s,
        Verdict::BadSignature | Verdict::Stale => 401,
        Verdict::Malformed => 400,
    };
    shared.attempts.lock().unwrap().push(Attempt {
        id,
        timestamp,
        signature,
        headers: req.headers.clone(),
        body,
        verdict,
    });
    reply(status)
}

fn verify(
    shared: &Shared,
    id: &str,
    ts: &str,
    timestamp: u64,
    signature: &str,
    body: &[u8],
    req: &FakeRequest,
) -> Result<(), Verdict> {
    if req.method != "POST" || id.is_empty() || timestamp == 0 || signature.is_empty() {
        return Err(Verdict::Malformed);
    }
    if now_secs().abs_diff(timestamp) > TOLERANCE_SECS {
        return Err(Verdict::Stale);
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &shared.key);
    let mut signed = format!("{id}.{ts}.").into_bytes();
    signed.extend_from_slice(body);
    // Several space-separated signatures may be sent (key rotation); one valid v1 suffices.
    let valid = signature.split(' ').any(|s| {
        s.strip_prefix("v1,")
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .is_some_and(|mac| ring::hmac::verify(&key, &signed, &mac).is_ok())
    });
    if valid {
        Ok(())
    } else {
        Err(Verdict::BadSignature)
    }
}

fn wait_while_held(shared: &Shared) {
    let mut hold = shared.hold.lock().unwrap();
    if *hold {
        *shared.held_now.lock().unwrap() += 1;
        while *hold {
            hold = shared
                .released
                .wait_timeout(hold, Duration::from_secs(1))
                .unwrap()
                .0;
        }
        *shared.held_now.lock().unwrap() -= 1;
    }
}
