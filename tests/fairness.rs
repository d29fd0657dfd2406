//! Fair shares at the front door (issue 13): one client, however it floods, cannot take a cap
//! that others need. The real binary over raw sockets; each client has an address of its own
//! (the whole of 127.0.0.0/8 is loopback on Linux, so a client socket bound to 127.0.0.2 is
//! another client than one bound to 127.0.0.3). For each flood by one client (half-sent heads,
//! half-sent bodies, idle keep-alive connections, busy connections, long-polls, a flood of the
//! public listener): another client is served, `/health` and `/ready` answer on the internal
//! listener, `/metrics` counts what the flooder was refused, the flooder gets 429 or is shed
//! past its share, memory stays bounded, and a stored callback is still there. Then the client
//! address behind a trusted proxy, and a wrong-secret long-poll that must answer at its own
//! deadline even with every waiter place taken.
//!
//! No test asserts how fast anything is answered: waits are bounded only so that a hang fails
//! (`HANG`, `eventually`), and the one time comparison is a lower bound (an answer must not
//! come before its deadline).

use crate::support;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::{eventually, parse_response, proc_status_bytes, HttpResponse, Relay};

/// How long one socket read or write may block before the test calls it a hang.
const HANG: Duration = Duration::from_secs(30);

/// Peak resident memory allowed to a relay under these floods (debug build, caps of at most a
/// few hundred connections): about 11 MiB idle.
const MEMORY_BOUND: u64 = 64 * 1024 * 1024;

/// The clients, each its own loopback address.
const FLOODER: [u8; 4] = [127, 0, 0, 2];
const OTHER: [u8; 4] = [127, 0, 0, 3];
const KUBELET: [u8; 4] = [127, 0, 0, 4];
const PROXY: [u8; 4] = [127, 0, 0, 5];
const SPOOFER: [u8; 4] = [127, 0, 0, 6];

/// A connection from `source` to `addr`, whose reads and writes fail after `HANG`.
fn connect_from(source: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from((source, 0)).into())
        .expect("bind a loopback source address");
    socket.connect(&addr.into()).expect("connect to the relay");
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(HANG)).unwrap();
    stream.set_write_timeout(Some(HANG)).unwrap();
    stream
}

/// Reads until the server closes (EOF or reset), returning what it sent.
fn read_until_close(s: &mut TcpStream) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return raw,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("no answer and no close for {HANG:?}; so far: {raw:?}")
            }
            Err(_) => return raw,
        }
        assert!(raw.len() < 1 << 20, "an endless answer");
    }
}

/// Without blocking: `None` while the connection is open and silent; otherwise what the server
/// sends until it closes (empty when it just closed).
fn closed_or_answered(s: &mut TcpStream) -> Option<Vec<u8>> {
    s.set_nonblocking(true).unwrap();
    let mut probe = [0u8; 1];
    let peeked = s.peek(&mut probe);
    s.set_nonblocking(false).unwrap();
    match peeked {
        Err(e) if e.kind() == ErrorKind::WouldBlock => None,
        Ok(0) | Err(_) => Some(Vec::new()),
        Ok(_) => Some(read_until_close(s)),
    }
}

/// One request from `source` on a fresh connection (`Connection: close`), read to the end.
fn request_from(
    source: [u8; 4],
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpResponse {
    let mut s = connect_from(source, addr);
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    // An error here (the server refused at once) shows in what is read.
    let _ = s.write_all(head.as_bytes());
    let raw = read_until_close(&mut s);
    assert!(!raw.is_empty(), "GET {path}: closed without an answer");
    parse_response(&raw)
}

/// Reads exactly one answer on a keep-alive connection.
fn read_one(s: &mut TcpStream) -> HttpResponse {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = parse_response(&raw[..end + 4]);
            let len: usize = head.header("content-length").unwrap().parse().unwrap();
            if raw.len() >= end + 4 + len {
                let mut res = head;
                res.body = raw[end + 4..end + 4 + len].to_vec();
                return res;
            }
        }
        let n = s.read(&mut buf).expect("read an answer");
        assert!(n > 0, "closed mid-answer: {raw:?}");
        raw.extend_from_slice(&buf[..n]);
    }
}

/// The answers in what one connection received, one after another (each has a length).
fn split_answers(mut raw: &[u8]) -> Vec<HttpResponse> {
    let mut answers = Vec::new();
    while let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
        let mut res = parse_response(&raw[..end + 4]);
        let len: usize = res.header("content-length").unwrap().parse().unwrap();
        res.body = raw[end + 4..end + 4 + len].to_vec();
        raw = &raw[end + 4 + len..];
        answers.push(res);
    }
    assert!(raw.is_empty(), "a partial answer: {raw:?}");
    answers
}

/// A long-poll sent from `source` and left waiting.
fn long_poll_from(
    source: [u8; 4],
    addr: SocketAddr,
    state: &str,
    wait: u64,
    headers: &str,
) -> TcpStream {
    let mut s = connect_from(source, addr);
    let _ = s.write_all(
        format!(
            "GET /api/callback/{state}?wait={wait} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    s
}

/// Every sample of `/metrics` on `addr` (asked for from the kubelet's address), by its name
/// with labels.
fn metrics(addr: SocketAddr) -> HashMap<String, u64> {
    let res = request_from(KUBELET, addr, "/metrics", &[]);
    assert_eq!(res.status, 200, "/metrics: {}", res.text());
    res.text()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(name, value)| (name.to_string(), value.parse().unwrap()))
        .collect()
}

const QUOTA_CONNECTIONS: &str = "oauth_relay_quota_refused_total{share=\"connections\"}";
const QUOTA_WAITERS: &str = "oauth_relay_quota_refused_total{share=\"waiters\"}";

fn waiting(addr: SocketAddr) -> u64 {
    metrics(addr)["oauth_relay_waiting_clients"]
}

/// A relay with split listeners and small caps, so floods stay cheap: 64 connections, of which
/// 8 are kept for each listener and `per_client` may be one client's; 8 long-polls,
/// `waiters_per_client` per client. A callback (the canary) is stored first.
fn split_relay(per_client: usize, waiters_per_client: usize) -> Relay {
    let (per_client, waiters_per_client) = (per_client.to_string(), waiters_per_client.to_string());
    let relay = Relay::start(&[
        "--internal-addr",
        "127.0.0.1:0",
        "--max-connections",
        "64",
        "--public-reserved-connections",
        "8",
        "--internal-reserved-connections",
        "8",
        "--max-connections-per-client",
        &per_client,
        "--max-waiters",
        "8",
        "--max-waiters-per-client",
        &waiters_per_client,
        "--read-timeout-secs",
        "60",
        "--max-wait-secs",
        "600",
    ]);
    let res = request_from(
        OTHER,
        relay.addr,
        "/callback?code=canary-code&state=canary",
        &[],
    );
    assert_eq!(res.status, 200, "storing the canary: {}", res.text());
    relay
}

/// The SHA-256 of `SECRET`, base64url without padding: what a state is registered with so that
/// only a retrieval presenting `SECRET` gets its callback.
const SECRET: &str = "canary-secret";
const SECRET_HASH: &str = "MzueFvSs3Bx7zYufJa_36ab5_Ytl8QDJlymT7YhMKjo";

/// While (or after) one client floods: others are served on both listeners, the probes answer
/// on the internal one, memory is bounded and the stored callback is still there.
fn assert_others_are_served(relay: &mut Relay, flood: &str) {
    assert!(
        relay.child.try_wait().unwrap().is_none(),
        "{flood}: the relay exited"
    );
    for path in ["/health", "/ready"] {
        let res = request_from(KUBELET, relay.internal(), path, &[]);
        assert_eq!(res.status, 200, "{flood}: internal {path}: {}", res.text());
    }
    let res = request_from(OTHER, relay.addr, "/health", &[]);
    assert_eq!(res.status, 200, "{flood}: public /health: {}", res.text());
    static ROUND: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let state = format!("during-{}", ROUND.fetch_add(1, Ordering::Relaxed));
    let res = request_from(
        OTHER,
        relay.addr,
        &format!("/callback?code=k&state={state}"),
        &[],
    );
    assert_eq!(res.status, 200, "{flood}: public /callback: {}", res.text());
    let res = request_from(
        OTHER,
        relay.internal(),
        &format!("/api/callback/{state}"),
        &[],
    );
    assert_eq!(
        res.status,
        200,
        "{flood}: internal retrieval: {}",
        res.text()
    );
    let hwm = proc_status_bytes(relay.pid(), "VmHWM");
    assert!(
        hwm < MEMORY_BOUND,
        "{flood}: VmHWM {} MiB",
        hwm / (1024 * 1024)
    );
}

/// The canary is retrieved whole at the end (nothing stored was lost).
fn assert_canary_kept(relay: &Relay, flood: &str) {
    let res = request_from(OTHER, relay.internal(), "/api/callback/canary", &[]);
    assert_eq!(res.status, 200, "{flood}: the canary: {}", res.text());
    assert_eq!(res.json()["auth_code"], "canary-code", "{flood}");
}

/// One client opens `count` connections to `addr`, each sending `opening` (and, with `answered`,
/// reading the one answer it gets); returns them all.
fn flood_from(
    source: [u8; 4],
    addr: SocketAddr,
    count: usize,
    opening: &[u8],
    answered: bool,
) -> Vec<TcpStream> {
    (0..count)
        .map(|_| {
            let mut s = connect_from(source, addr);
            s.write_all(opening).unwrap();
            if answered {
                let res = read_one(&mut s);
                assert_eq!(res.status, 200, "a flood request: {}", res.text());
            }
            s
        })
        .collect()
}

/// How many of `conns` the server still holds open (neither closed nor answered).
fn still_open(conns: &mut [TcpStream]) -> usize {
    conns
        .iter_mut()
        .filter_map(|s| match closed_or_answered(s) {
            None => Some(()),
            Some(raw) => {
                // Shed: closed, with no answer or a refusal, never a success.
                if !raw.is_empty() {
                    let status = parse_response(&raw).status;
                    assert!(status >= 400, "a flood connection got {status}");
                }
                None
            }
        })
        .count()
}

/// A flood of 200 connections by one client on the public listener, each sending `opening`:
/// held to its share of 16 (its oldest closed first), everyone else served.
fn one_client_floods(opening: &[u8], answered: bool, flood: &str) {
    let mut relay = split_relay(16, 3);
    let before = metrics(relay.internal());
    let mut conns = flood_from(FLOODER, relay.addr, 200, opening, answered);
    assert_others_are_served(&mut relay, flood);
    // Once its share was reached, each newcomer closed its oldest connection: it keeps its 16
    // newest (the cap was never reached, so nobody else closed any of them).
    eventually("the flooder to be held to its share", || {
        (still_open(&mut conns) <= 16).then_some(())
    });
    for (i, s) in conns.iter_mut().enumerate().skip(200 - 16) {
        assert!(
            closed_or_answered(s).is_none(),
            "{flood}: connection {i}, among the newest, was closed"
        );
    }
    let after = metrics(relay.internal());
    assert!(
        after[QUOTA_CONNECTIONS] >= before[QUOTA_CONNECTIONS] + 200 - 16,
        "{flood}: the share was reached {} times",
        after[QUOTA_CONNECTIONS] - before[QUOTA_CONNECTIONS]
    );
    assert!(after["oauth_relay_connections_shed_total"] >= 200 - 16);
    assert_eq!(
        after["oauth_relay_connections_refused_total"], 0,
        "{flood}: nobody was refused for want of room"
    );
    drop(conns);
    assert_others_are_served(&mut relay, flood);
    assert_canary_kept(&relay, flood);
}

#[test]
fn half_sent_bodies_from_one_client_are_held_to_its_share() {
    // Issue 13, item 1: a head that promises a byte of body that never comes made the
    // connection busy for good, so 1,024 of them took every connection there was.
    one_client_floods(
        b"POST /callback HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n",
        false,
        "half-sent bodies",
    );
}

#[test]
fn half_sent_heads_from_one_client_are_held_to_its_share() {
    one_client_floods(
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Partial: ",
        false,
        "half-sent heads",
    );
}

#[test]
fn idle_keep_alive_connections_from_one_client_are_held_to_its_share() {
    one_client_floods(
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
        true,
        "idle keep-alive connections",
    );
}

#[test]
fn a_client_whose_every_connection_is_busy_gets_429_past_its_share() {
    // Long-polls keep connections busy: with a waiter share above the connection share, the
    // flooder's connections are all busy when it asks for one more.
    let mut relay = split_relay(4, 8);
    let polls: Vec<TcpStream> = (0..4)
        .map(|i| long_poll_from(FLOODER, relay.internal(), &format!("busy{i}"), 600, ""))
        .collect();
    eventually("four parked long-polls", || {
        (waiting(relay.internal()) == 4).then_some(())
    });
    let before = metrics(relay.internal());
    for listener in [relay.addr, relay.internal()] {
        // The refusal is written before the request is read: bytes, the same for any path.
        let mut s = connect_from(FLOODER, listener);
        let res = parse_response(&read_until_close(&mut s));
        assert_eq!(res.status, 429, "{}", res.text());
        assert_eq!(res.header("retry-after"), Some("5"));
        assert_eq!(res.media_type(), "application/json");
        assert_eq!(
            res.json()["message"],
            "Too many connections from this client; try again later"
        );
    }
    let after = metrics(relay.internal());
    assert_eq!(after[QUOTA_CONNECTIONS], before[QUOTA_CONNECTIONS] + 2);
    // Its long-polls were not touched, and another client is served and answered by a callback.
    assert_eq!(waiting(relay.internal()), 4);
    assert_others_are_served(&mut relay, "busy connections");
    drop(polls);
    assert_canary_kept(&relay, "busy connections");
}

#[test]
fn long_polls_from_one_client_are_held_to_its_share_of_waiters() {
    // A connection share above its twenty long-polls: none is shed before it is read.
    let mut relay = split_relay(32, 3);
    let internal = relay.internal();
    // Twenty long-polls from one client, up to the cap and past it: three park, the rest are
    // refused at once with 429 (its share), not 503 (the cap).
    let mut polls: Vec<TcpStream> = (0..20)
        .map(|i| long_poll_from(FLOODER, internal, &format!("flood{i}"), 600, ""))
        .collect();
    let mut refused = Vec::new();
    eventually("three parked and seventeen refused", || {
        for s in polls.iter_mut() {
            if let Some(raw) = closed_or_answered(s) {
                refused.push(parse_response(&raw));
            }
        }
        polls.retain_mut(|s| closed_or_answered(s).is_none());
        (refused.len() == 17 && polls.len() == 3).then_some(())
    });
    for res in &refused {
        assert_eq!(res.status, 429, "{}", res.text());
        assert_eq!(res.header("retry-after"), Some("5"));
        assert_eq!(
            res.json(),
            serde_json::json!({"status": "error", "message": "Too many waiting requests from this client; try again later"})
        );
    }
    assert_eq!(waiting(internal), 3);
    let m = metrics(internal);
    assert_eq!(m[QUOTA_WAITERS], 17);
    // Another client still parks, and its callback answers it.
    let mut mine = long_poll_from(OTHER, internal, "mine", 600, "");
    eventually("the other client's long-poll to park", || {
        (waiting(internal) == 4).then_some(())
    });
    assert_eq!(
        request_from(KUBELET, relay.addr, "/callback?code=km&state=mine", &[]).status,
        200
    );
    let res = parse_response(&read_until_close(&mut mine));
    assert_eq!(res.json()["auth_code"], "km", "{}", res.text());
    // The cap itself is still 503 when several clients fill it, each within its share.
    let others: Vec<TcpStream> = [OTHER, KUBELET, PROXY, SPOOFER]
        .iter()
        .flat_map(|source| (0..3).map(move |i| (*source, i)))
        .map(|(source, i)| {
            long_poll_from(source, internal, &format!("fill{}-{i}", source[3]), 600, "")
        })
        .collect();
    eventually("the cap of 8 to fill", || {
        (waiting(internal) == 8).then_some(())
    });
    let res = request_from([127, 0, 0, 7], internal, "/api/callback/late?wait=5", &[]);
    assert_eq!(res.status, 503, "{}", res.text());
    drop(others);
    assert_others_are_served(&mut relay, "long-polls");
    drop(polls);
    assert_canary_kept(&relay, "long-polls");
}

#[test]
fn a_public_flood_never_takes_the_internal_listeners_connections() {
    // One client without a per-client limit that bites (1,000), so only the listeners' shares
    // stand between its flood and the internal listener: of 40 connections, 8 are the internal
    // listener's own.
    let mut relay = Relay::start(&[
        "--internal-addr",
        "127.0.0.1:0",
        "--max-connections",
        "40",
        "--public-reserved-connections",
        "4",
        "--internal-reserved-connections",
        "8",
        "--max-connections-per-client",
        "1000",
        "--read-timeout-secs",
        "60",
    ]);
    let internal = relay.internal();
    // Eight idle keep-alive connections on the internal listener (a scraper, the kubelet),
    // opened first, so they are the longest idle of all when the flood comes.
    let mut kept: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = connect_from(KUBELET, internal);
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            assert_eq!(read_one(&mut s).status, 200);
            s
        })
        .collect();
    // 300 idle keep-alive connections and half-sent heads on the public listener.
    let mut flood = flood_from(
        FLOODER,
        relay.addr,
        150,
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
        true,
    );
    flood.extend(flood_from(
        FLOODER,
        relay.addr,
        150,
        b"GET /health HTTP/1.1\r\nX-Partial: ",
        false,
    ));
    // Every internal connection is still open and answering.
    for (i, s) in kept.iter_mut().enumerate() {
        assert!(
            closed_or_answered(s).is_none(),
            "internal keep-alive connection {i} was closed for the public flood"
        );
        for path in ["/health", "/ready"] {
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .unwrap();
            assert_eq!(read_one(s).status, 200, "{path} on kept connection {i}");
        }
    }
    // The flooder holds at most the public listener's share (40 - 8).
    let open = eventually("the flood to be held to the public share", || {
        let open = still_open(&mut flood);
        (open <= 32).then_some(open)
    });
    assert!(open > 0);
    let m = metrics(internal);
    assert!(m["oauth_relay_connections_shed_total"] >= 300 - 32);
    assert_eq!(m[QUOTA_CONNECTIONS], 0, "no per-client share was involved");
    // New clients get in on both listeners, probes included.
    for path in ["/health", "/ready", "/metrics"] {
        let res = request_from(KUBELET, internal, path, &[]);
        assert_eq!(res.status, 200, "a new internal {path}: {}", res.text());
    }
    assert_eq!(request_from(OTHER, relay.addr, "/health", &[]).status, 200);
    let stored = request_from(OTHER, relay.addr, "/callback?code=k&state=split", &[]);
    assert_eq!(stored.status, 200);
    drop(flood);
    let res = request_from(OTHER, internal, "/api/callback/split", &[]);
    assert_eq!(res.json()["auth_code"], "k", "{}", res.text());
    let hwm = proc_status_bytes(relay.pid(), "VmHWM");
    assert!(hwm < MEMORY_BOUND, "VmHWM {} MiB", hwm / (1024 * 1024));
    assert!(relay.child.try_wait().unwrap().is_none());
}

// ---------------------------------------------------------------------------------------------
// The client address behind a trusted proxy.

#[test]
fn clients_behind_a_trusted_proxy_have_shares_of_their_own() {
    let relay = Relay::start(&[
        "--trusted-proxies",
        "127.0.0.5, 192.0.2.0/24",
        "--max-waiters-per-client",
        "2",
        "--max-connections-per-client",
        "3",
        "--max-wait-secs",
        "600",
    ]);
    let addr = relay.addr;
    let behind = |client: &str| format!("X-Forwarded-For: 203.0.113.99, {client}, 192.0.2.10\r\n");
    // Two long-polls for client A through the proxy (another proxy of ours in between); its
    // third is refused; clients B and C, through the same proxy, have their own shares. Six
    // connections from the proxy, every one busy: a proxy is not held to a client's share of
    // three connections.
    let mut a: Vec<TcpStream> = (0..2)
        .map(|i| long_poll_from(PROXY, addr, &format!("a{i}"), 600, &behind("198.51.100.1")))
        .collect();
    eventually("A's two long-polls", || (waiting(addr) == 2).then_some(()));
    let mut third = long_poll_from(PROXY, addr, "a2", 600, &behind("198.51.100.1"));
    let res = parse_response(&read_until_close(&mut third));
    assert_eq!(res.status, 429, "A's third long-poll: {}", res.text());
    let b: Vec<TcpStream> = (0..2)
        .map(|i| long_poll_from(PROXY, addr, &format!("b{i}"), 600, &behind("198.51.100.2")))
        .collect();
    let c: Vec<TcpStream> = (0..2)
        .map(|i| long_poll_from(PROXY, addr, &format!("c{i}"), 600, &behind("198.51.100.3")))
        .collect();
    eventually("six long-polls through the proxy", || {
        (waiting(addr) == 6).then_some(())
    });
    // The access log names the client it resolved.
    relay.wait_for_log("\"client\":\"198.51.100.1\"");
    // A callback answers one of A's.
    assert_eq!(
        request_from(OTHER, addr, "/callback?code=ka&state=a0", &[]).status,
        200
    );
    let res = parse_response(&read_until_close(&mut a[0]));
    assert_eq!(res.json()["auth_code"], "ka");
    assert_eq!(metrics(addr)[QUOTA_WAITERS], 1);
    drop((a, b, c));
}

#[test]
fn a_forwarding_header_from_anyone_else_does_not_escape_a_share() {
    let relay = Relay::start(&[
        "--trusted-proxies",
        "127.0.0.5",
        "--max-waiters-per-client",
        "2",
        "--max-connections-per-client",
        "3",
        "--max-wait-secs",
        "600",
    ]);
    let addr = relay.addr;
    // A client that is not a trusted proxy names another client in each request: ignored.
    let spoofed =
        |n: u32| format!("X-Forwarded-For: 198.51.100.{n}\r\nForwarded: for=198.51.100.{n}\r\n");
    let polls: Vec<TcpStream> = (0..2)
        .map(|i| long_poll_from(SPOOFER, addr, &format!("s{i}"), 600, &spoofed(i)))
        .collect();
    eventually("two long-polls", || (waiting(addr) == 2).then_some(()));
    let mut third = long_poll_from(SPOOFER, addr, "s2", 600, &spoofed(2));
    let res = parse_response(&read_until_close(&mut third));
    assert_eq!(res.status, 429, "{}", res.text());
    // Nor through the trusted proxy: what the spoofer wrote is to the left of what the proxy
    // appended (the spoofer's own address), and the walk from the right stops there.
    for n in [50, 51] {
        let mut through = long_poll_from(
            PROXY,
            addr,
            &format!("p{n}"),
            600,
            &format!("X-Forwarded-For: 198.51.100.{n}, 127.0.0.6\r\n"),
        );
        let res = parse_response(&read_until_close(&mut through));
        assert_eq!(
            res.status,
            429,
            "the spoofer through the proxy: {}",
            res.text()
        );
    }
    assert_eq!(metrics(addr)[QUOTA_WAITERS], 3);
    drop(polls);
}

#[test]
fn the_forwarded_header_is_read_when_configured() {
    let relay = Relay::start(&[
        "--trusted-proxies",
        "127.0.0.5",
        "--client-ip-header",
        "forwarded",
        "--max-waiters-per-client",
        "1",
        "--max-wait-secs",
        "600",
    ]);
    let addr = relay.addr;
    let a = long_poll_from(
        PROXY,
        addr,
        "f0",
        600,
        "Forwarded: for=198.51.100.1;proto=https\r\n",
    );
    let b = long_poll_from(
        PROXY,
        addr,
        "f1",
        600,
        "Forwarded: for=\"[2001:db8::1]:4711\"\r\n",
    );
    eventually("two clients' long-polls", || {
        (waiting(addr) == 2).then_some(())
    });
    // The same IPv6 /64 is the same client; X-Forwarded-For is not read now.
    let mut c = long_poll_from(
        PROXY,
        addr,
        "f2",
        600,
        "Forwarded: for=\"[2001:db8::2]\"\r\nX-Forwarded-For: 198.51.100.9\r\n",
    );
    let res = parse_response(&read_until_close(&mut c));
    assert_eq!(res.status, 429, "{}", res.text());
    drop((a, b));
}

// ---------------------------------------------------------------------------------------------
// Issue 13, item 6: a long-poll without the right secret tells nothing of when the callback
// landed, even when every waiter place is taken.

#[test]
fn a_wrong_secret_long_poll_answers_at_its_deadline_with_the_waiter_cap_full() {
    const WAIT: u64 = 8;
    // One event loop: a request pipelined behind the callback is then served in the same turn
    // of the loop as the callback's wake-ups, before any woken long-poll runs. Were a wake-up
    // to give its place back (to park again once it has looked), that request would take it.
    let relay = Relay::start(&[
        "--workers",
        "1",
        "--require-registered-state",
        "--max-waiters",
        "3",
        "--max-waiters-per-client",
        "3",
        "--max-wait-secs",
        "600",
    ]);
    let addr = relay.addr;
    let registered = support::http(
        addr,
        "POST",
        "/api/states",
        &[],
        format!(r#"{{"state":"guarded","retrieval_hash":"{SECRET_HASH}"}}"#).as_bytes(),
    );
    assert_eq!(registered.status, 201, "{}", registered.text());
    // Two strangers long-poll the guarded state with a wrong secret; another client takes the
    // last place.
    let sent = Instant::now();
    let mut strangers: Vec<TcpStream> = (0..2)
        .map(|_| {
            long_poll_from(
                FLOODER,
                addr,
                "guarded",
                WAIT,
                "X-Retrieval-Secret: wrong\r\n",
            )
        })
        .collect();
    eventually("the strangers to park", || {
        (waiting(addr) == 2).then_some(())
    });
    let mut filler = long_poll_from(OTHER, addr, "filler", 600, "");
    eventually("the cap to be full", || (waiting(addr) == 3).then_some(()));
    // The callback lands, and a long-poll right behind it asks for a place.
    let mut s = connect_from(KUBELET, addr);
    s.write_all(
        b"GET /callback?code=guarded-code&state=guarded HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /api/callback/late?wait=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    // Both answers, read to the close: they may come in one read.
    let answers = split_answers(&read_until_close(&mut s));
    let landed_at = sent.elapsed();
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert_eq!(answers[0].status, 200, "{}", answers[0].text());
    assert!(
        landed_at < Duration::from_secs(WAIT),
        "the set-up took {landed_at:?}, past the strangers' deadline: nothing was tested"
    );
    // The strangers, woken, kept their places: there was none for it.
    let late = &answers[1];
    assert_eq!(
        late.status,
        503,
        "the long-poll behind the callback: {}",
        late.text()
    );
    // They answer at their deadline, as if nothing had landed.
    for (i, s) in strangers.iter_mut().enumerate() {
        let res = parse_response(&read_until_close(s));
        let answered_at = sent.elapsed();
        assert_eq!(res.status, 404, "stranger {i}: {}", res.text());
        assert_eq!(res.json()["message"], "Callback not found or expired");
        assert!(
            answered_at >= Duration::from_secs(WAIT),
            "stranger {i} was answered {answered_at:?} after asking, before its {WAIT} s \
             deadline (the callback landed at {landed_at:?}): the timing tells it landed"
        );
    }
    assert!(
        closed_or_answered(&mut filler).is_none(),
        "the filler was answered"
    );
    // The callback was neither used up nor told: the owner gets it.
    let res = request_from(
        OTHER,
        addr,
        "/api/callback/guarded",
        &[("X-Retrieval-Secret", SECRET)],
    );
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["auth_code"], "guarded-code");
}

// ---------------------------------------------------------------------------------------------

#[test]
fn the_metrics_text_stays_valid_prometheus() {
    let relay = Relay::start(&["--max-connections-per-client", "1"]);
    // One refusal of each share, so the labelled family has something to show.
    let _held = long_poll_from(FLOODER, relay.addr, "held", 30, "");
    eventually("the long-poll to park", || {
        (waiting(relay.addr) == 1).then_some(())
    });
    let mut refused = connect_from(FLOODER, relay.addr);
    assert_eq!(parse_response(&read_until_close(&mut refused)).status, 429);
    let text = request_from(OTHER, relay.addr, "/metrics", &[]).text();
    let mut help = std::collections::HashSet::new();
    let mut typed: HashMap<String, String> = HashMap::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(help.insert(name.to_string()), "HELP {name} twice");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge"].contains(&kind), "{line}");
            assert!(help.contains(name), "TYPE {name} before its HELP");
            assert!(
                typed.insert(name.to_string(), kind.to_string()).is_none(),
                "TYPE {name} twice"
            );
            current = name.to_string();
        } else {
            let (series, value) = line.rsplit_once(' ').unwrap();
            value.parse::<u64>().unwrap_or_else(|_| panic!("{line}"));
            let name = series.split('{').next().unwrap();
            assert_eq!(name, current, "{line}: a sample outside its family");
            if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
                assert!(
                    labels.starts_with('{') && labels.ends_with('}') && labels.contains("=\""),
                    "{line}"
                );
            }
        }
    }
    assert_eq!(
        typed["oauth_relay_quota_refused_total"], "counter",
        "{text}"
    );
    let m = metrics(relay.addr);
    assert_eq!(m[QUOTA_CONNECTIONS], 1, "{text}");
    assert_eq!(m[QUOTA_WAITERS], 0, "{text}");
}
