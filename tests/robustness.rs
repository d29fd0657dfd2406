//! The server stays up and answering under many half-open clients, descriptor exhaustion, an
//! idle listener, a panicking handler, a burst of connections, and a shutdown with work in
//! flight. (Attacks on the HTTP layer itself are in tests/hostile.rs.)

use crate::support;

use oauth_relay::http::{HttpRequest, Reply, Response};
use oauth_relay::server;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use support::{eventually, http, Relay, BIN};

/// Opens a connection and sends the start of a request that never finishes.
fn half_open(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect half-open client");
    s.write_all(b"GET /health HTTP/1.1\r\nHost: slow\r\nX-Slow: ")
        .unwrap();
    s
}

#[test]
fn a_thousand_half_open_clients_do_not_stop_service() {
    let relay = Relay::start(&["--read-timeout-secs", "30"]);
    let slow: Vec<TcpStream> = (0..1000).map(|_| half_open(relay.addr)).collect();
    for i in 0..50 {
        assert_eq!(relay.get("/health").status, 200);
        let state = format!("busy{i}");
        assert_eq!(
            relay.get(&format!("/callback?code=c&state={state}")).status,
            200
        );
        assert_eq!(relay.get(&format!("/api/callback/{state}")).status, 200);
    }
    drop(slow);
}

#[test]
fn a_silent_client_is_disconnected_after_the_read_timeout() {
    let relay = Relay::start(&["--read-timeout-secs", "1"]);
    let mut slow = half_open(relay.addr);
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 256];
    // EOF or reset: either way the server let go of it.
    match slow.read(&mut buf) {
        Ok(n) => assert_eq!(
            n,
            0,
            "unexpected answer {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "still connected"),
    }
    assert_eq!(relay.get("/health").status, 200);
}

#[test]
fn an_idle_listener_with_timeouts_keeps_accepting() {
    // A listener nobody connects to for longer than the read timeout must still accept (the
    // tiny_http server this replaced lost its accept thread that way).
    let relay = Relay::start(&["--read-timeout-secs", "1"]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(relay.get("/health").status, 200);
    assert!(
        !relay.logs().iter().any(|l| l.contains("accept_failed")),
        "an idle listener was reported as failed"
    );
}

#[test]
fn it_recovers_after_running_out_of_file_descriptors() {
    let mut wrapper = Command::new("prlimit");
    wrapper.args(["--nofile=64:64", BIN]);
    let relay = Relay::start_with(
        wrapper,
        &["--read-timeout-secs", "60", "--workers", "2"],
        &[],
    );
    let code = "c";
    assert_eq!(
        relay
            .get(&format!("/callback?code={code}&state=before"))
            .status,
        200
    );
    // Far more connections than 64 descriptors allow; the kernel queues the rest.
    let flood: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(relay.addr).ok())
        .collect();
    relay.wait_for_log("\"level\":\"error\"");
    drop(flood);
    let res = eventually("the relay to answer again", || {
        let mut s = TcpStream::connect(relay.addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).ok()?;
        (!raw.is_empty()).then(|| support::parse_response(&raw))
    });
    assert_eq!(res.status, 200);
    // Nothing stored before the outage was lost.
    assert_eq!(relay.get("/api/callback/before").json()["auth_code"], code);
    let metrics = relay.get("/metrics").text();
    assert!(
        !metrics.contains("oauth_relay_accept_errors_total 0"),
        "no accept error recorded:\n{metrics}"
    );
    assert!(relay.logs().iter().any(|l| l.contains("accept_resumed")));
}

fn test_server(handler: server::Handler, workers: usize) -> server::Running {
    let listener = server::bind("127.0.0.1", 0).unwrap();
    let opts = oauth_relay::config::ServerOptions {
        workers,
        ..Default::default()
    };
    server::start(
        listener,
        opts,
        handler,
        oauth_relay::waiters::Waiters::new(10, 10),
    )
    .unwrap()
}

#[test]
fn a_panicking_handler_costs_one_500_and_nothing_else() {
    let handler: server::Handler = Arc::new(|req: HttpRequest| {
        if req.path == "/boom" {
            panic!("handler bug");
        }
        Reply::Now(Response::json(200, &serde_json::json!({"ok": true})))
    });
    let running = test_server(handler, 2);
    for _ in 0..20 {
        let res = http(running.addr(), "GET", "/boom", &[], b"");
        assert_eq!(res.status, 500);
        assert_eq!(res.json()["message"], "Internal server error");
    }
    // Both workers survived all twenty panics.
    for _ in 0..10 {
        assert_eq!(http(running.addr(), "GET", "/fine", &[], b"").status, 200);
    }
    running.stopper().stop();
    running.wait().unwrap();
}

#[test]
fn one_slow_handler_does_not_hold_up_the_others() {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let rx = Arc::new(std::sync::Mutex::new(rx));
    // Handlers run on the event loop and must not block; slow work is returned as
    // `Reply::Later`, which runs on the blocking pool (as the broker's code exchange and every
    // Redis call do).
    let handler: server::Handler = Arc::new(move |req: HttpRequest| {
        if req.path == "/stuck" {
            let rx = rx.clone();
            return Reply::later(move || {
                let _ = rx.lock().unwrap().recv();
                Response::json(200, &serde_json::json!({}))
            });
        }
        Reply::Now(Response::json(200, &serde_json::json!({})))
    });
    let running = test_server(handler, 4);
    let addr = running.addr();
    let stuck = std::thread::spawn(move || http(addr, "GET", "/stuck", &[], b"").status);
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..20 {
        assert_eq!(http(addr, "GET", "/quick", &[], b"").status, 200);
    }
    tx.send(()).unwrap();
    assert_eq!(stuck.join().unwrap(), 200);
    running.stopper().stop();
    running.wait().unwrap();
}

#[test]
fn shutdown_finishes_in_flight_requests_then_stops_accepting() {
    let handler: server::Handler = Arc::new(|req: HttpRequest| {
        if req.path == "/slow" {
            std::thread::sleep(Duration::from_millis(500));
        }
        Reply::Now(Response::json(200, &serde_json::json!({"done": true})))
    });
    let running = test_server(handler, 2);
    let addr = running.addr();
    let in_flight = std::thread::spawn(move || http(addr, "GET", "/slow", &[], b""));
    std::thread::sleep(Duration::from_millis(100));
    running.stopper().stop();
    let res = in_flight.join().unwrap();
    assert_eq!(
        (res.status, res.json()["done"].as_bool()),
        (200, Some(true))
    );
    running.wait().unwrap();
    assert!(
        TcpStream::connect(addr).is_err(),
        "still accepting after shutdown"
    );
}

#[test]
fn the_bound_port_is_released_on_exit() {
    let mut relay = Relay::start(&[]);
    let addr = relay.addr;
    assert!(is_listening(addr.port()));
    relay.signal("TERM");
    assert!(relay.wait_exit().success());
    // Not `bind`: with the suite's many client connections, another test's socket may use the
    // same number as its source port. What matters is that nothing listens there any more.
    assert!(
        !is_listening(addr.port()),
        "port {} still listening after exit",
        addr.port()
    );
}

/// Whether a socket is in LISTEN state on `port` (from /proc/net/tcp and tcp6).
fn is_listening(port: u16) -> bool {
    let hex_port = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|line| {
                let cols: Vec<&str> = line.split_whitespace().collect();
                cols.len() > 3 && cols[1].ends_with(&hex_port) && cols[3] == "0A"
            })
    })
}

#[test]
fn healthcheck_exit_codes() {
    let relay = Relay::start(&[]);
    let port = relay.addr.port().to_string();
    let ok = Command::new(BIN)
        .args(["healthcheck", "--port", &port])
        .status()
        .unwrap();
    assert_eq!(ok.code(), Some(0));
    drop(relay);
    let down = Command::new(BIN)
        .args(["healthcheck", "--port", &port])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(down.code(), Some(1));
}

#[test]
fn a_burst_of_connections_is_served_at_once() {
    // Keep-alive connections stay open while a burst arrives; every connection of the burst is
    // answered (the tiny_http server this replaced queued them behind its keep-alive threads).
    let relay = Relay::start(&["--workers", "1"]);
    let mut keep_alive: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(relay.addr).unwrap())
        .collect();
    for c in &mut keep_alive {
        c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
    }
    for round in 0..3 {
        let mut conns: Vec<TcpStream> = (0..32)
            .map(|_| TcpStream::connect(relay.addr).unwrap())
            .collect();
        for c in &mut conns {
            c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
        }
        for (i, c) in conns.iter_mut().enumerate() {
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut buf = [0u8; 12];
            c.read_exact(&mut buf).unwrap_or_else(|e| {
                panic!("round {round}: connection {i} of a burst got no answer: {e}")
            });
            assert_eq!(&buf, b"HTTP/1.1 200");
        }
    }
    drop(keep_alive);
}
