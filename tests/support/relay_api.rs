//! Requests a relay client makes (register a state, retrieve a callback, with a retrieval secret
//! and the API token or without), and what tests compare answers and counters with.

use super::{eventually, http, http_from, HttpResponse, RedisServer, Relay};
use base64::Engine;
use std::net::{IpAddr, SocketAddr};

pub const KEY: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// base64url(SHA-256(secret)) without padding, as a client registers it.
pub fn hash_of(secret: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// Who sends a request: the loopback address it comes from, its retrieval secret, its token.
#[derive(Clone, Copy, Default)]
pub struct As<'a> {
    pub from: Option<IpAddr>,
    pub secret: Option<&'a str>,
    pub token: Option<&'a str>,
}

impl<'a> As<'a> {
    pub fn anyone() -> As<'a> {
        As::default()
    }

    pub fn holder(secret: &'a str) -> As<'a> {
        As {
            secret: Some(secret),
            ..As::default()
        }
    }

    pub fn token(mut self, token: &'a str) -> As<'a> {
        self.token = Some(token);
        self
    }

    pub fn from(mut self, ip: &str) -> As<'a> {
        self.from = Some(ip.parse().unwrap());
        self
    }

    pub fn send(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        let bearer = self.token.map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = extra.to_vec();
        if let Some(s) = self.secret {
            headers.push(("X-Retrieval-Secret", s));
        }
        if let Some(b) = &bearer {
            headers.push(("Authorization", b));
        }
        match self.from {
            Some(ip) => http_from(ip, addr, method, path, &headers, body),
            None => http(addr, method, path, &headers, body),
        }
    }

    pub fn get(&self, relay: &Relay, path: &str) -> HttpResponse {
        self.send(relay.addr, "GET", path, &[], b"")
    }

    /// `POST /api/states` with `body`.
    pub fn register(&self, relay: &Relay, body: serde_json::Value) -> HttpResponse {
        self.send(
            relay.addr,
            "POST",
            "/api/states",
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    }
}

/// Same status, same headers but the date, same bytes.
pub fn assert_same_answer(a: &HttpResponse, b: &HttpResponse, what: &str) {
    assert_eq!(a.status, b.status, "{what}: {} vs {}", a.text(), b.text());
    assert_eq!(a.body, b.body, "{what}: {} vs {}", a.text(), b.text());
    let headers = |r: &HttpResponse| {
        let mut h: Vec<(String, String)> = r
            .headers
            .iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case("date"))
            .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
            .collect();
        h.sort();
        h
    };
    assert_eq!(headers(a), headers(b), "{what}");
}

/// A sample of /metrics (`name` with its labels, as written), when there is one.
pub fn metric(relay: &Relay, name: &str) -> Option<u64> {
    relay
        .get("/metrics")
        .text()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|n| n.trim().parse().ok())
}

pub fn waiting_clients(relay: &Relay) -> u64 {
    metric(relay, "oauth_relay_waiting_clients").unwrap()
}

/// A replica on `redis`, ready, with `args`.
pub fn replica(redis: &RedisServer, args: &[&str]) -> Relay {
    let url = redis.url();
    let relay = Relay::start_env(
        args,
        &[
            ("OAUTH_RELAY_REDIS_URL", url.as_str()),
            ("OAUTH_RELAY_ENCRYPTION_KEY", KEY),
        ],
    );
    eventually("the replica to be ready", || {
        (relay.get("/ready").status == 200).then_some(())
    });
    relay
}
