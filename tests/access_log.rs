//! The access log is written off the request's path (logging.rs): requests never wait for
//! stderr, and nothing logged is lost at exit. Against the real binary with its stderr a pipe
//! that the test leaves unread (a stalled log collector): every request is still answered; on
//! SIGTERM every access line logged before reaches stderr, in order; when more arrive than the
//! buffer holds, access lines (not events) are dropped, counted in /metrics and in a
//! `log_lines_dropped` line, and what was written plus what was dropped is every request. A
//! fatal error and a panic flush what came before them too.

use crate::support;

use oauth_relay::secret::short_hash;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use support::{eventually, free_port, BIN};

/// The relay on a free port with its stderr a pipe nobody reads yet; waits until it answers
/// `/health`. Returns the process, its address and how many `/health` requests that took.
fn start_unread(args: &[&str]) -> (Child, SocketAddr, usize) {
    let port = free_port();
    let child = support::oauth_relay(&["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start oauth-relay");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut polls = 0;
    eventually("the relay to answer /health", || {
        let mut stream = TcpStream::connect(addr).ok()?;
        polls += 1;
        (get(&mut stream, "/health") == 200).then_some(())
    });
    (child, addr, polls)
}

/// One GET on a keep-alive connection; the status.
fn get(stream: &mut TcpStream, path: &str) -> u16 {
    get_body(stream, path).0
}

fn get_body(stream: &mut TcpStream, path: &str) -> (u16, String) {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: relay\r\n\r\n").as_bytes())
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("an answer");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// SIGTERM, then (once the relay has stopped accepting, so it is shutting down with its log
/// still unread) reads the whole of stderr. Returns the JSON lines and the exit status.
fn stop_and_read(mut child: Child, addr: SocketAddr) -> (Vec<Value>, std::process::ExitStatus) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    eventually("the relay to stop accepting", || {
        TcpStream::connect(addr).is_err().then_some(())
    });
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let exit = eventually("the relay to exit", || child.try_wait().unwrap());
    let lines = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    (lines, exit)
}

fn events<'a>(lines: &'a [Value], name: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["event"] == name).collect()
}

#[test]
fn every_access_line_reaches_stderr_in_order_at_sigterm_however_slow_stderr_is() {
    let (child, addr, polls) = start_unread(&[]);
    // About 400 kB of access lines: far more than the pipe holds (64 KiB), all of it within the
    // relay's buffer. Every request is answered while nobody reads stderr.
    const N: usize = 2_000;
    let mut stream = TcpStream::connect(addr).unwrap();
    for i in 0..N {
        assert_eq!(get(&mut stream, &format!("/api/callback/s{i}")), 404);
    }
    drop(stream);
    let (lines, exit) = stop_and_read(child, addr);
    assert!(exit.success(), "{exit:?}");
    let requests = events(&lines, "request");
    let retrievals: Vec<&Value> = requests
        .iter()
        .copied()
        .filter(|l| l["route"] == "/api/callback/{state}")
        .collect();
    assert_eq!(retrievals.len(), N, "every access line, none lost at exit");
    for (i, line) in retrievals.iter().enumerate() {
        // In the order the requests were answered, each with its state's hash.
        assert_eq!(
            line["state"],
            short_hash(&format!("s{i}")),
            "line {i}: {line}"
        );
        assert_eq!(
            (line["status"].as_u64(), line["method"].as_str()),
            (Some(404), Some("GET"))
        );
        assert_eq!(line["level"], "info");
        assert_eq!(line["peer"], "127.0.0.1");
        assert!(line["ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{line}");
    }
    assert_eq!(requests.len(), N + polls);
    assert!(events(&lines, "log_lines_dropped").is_empty());
    // Events keep their place among the access lines.
    let position = |name: &str| lines.iter().position(|l| l["event"] == name).unwrap();
    let last_request = lines.iter().rposition(|l| l["event"] == "request").unwrap();
    assert!(position("listening") < position("request"));
    assert!(last_request < position("signal"));
    assert!(position("signal") < position("shutdown_complete"));
}

#[test]
fn a_stalled_stderr_costs_access_lines_not_requests_and_says_how_many() {
    let (child, addr, polls) = start_unread(&[]);
    // About 2.4 MB of access lines: more than the buffer keeps for them (1 MiB).
    const N: usize = 12_000;
    let mut stream = TcpStream::connect(addr).unwrap();
    for i in 0..N {
        assert_eq!(get(&mut stream, &format!("/api/callback/s{i}")), 404);
    }
    let (status, metrics) = get_body(&mut stream, "/metrics");
    assert_eq!(status, 200);
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("oauth_relay_log_lines_dropped_total "))
        .expect("the counter in /metrics")
        .parse()
        .unwrap();
    assert!(dropped > 0, "{metrics}");
    drop(stream);
    let (lines, exit) = stop_and_read(child, addr);
    assert!(exit.success(), "{exit:?}");
    let written = events(&lines, "request").len() as u64;
    let notes = events(&lines, "log_lines_dropped");
    assert!(!notes.is_empty());
    let reported: u64 = notes.iter().map(|n| n["dropped"].as_u64().unwrap()).sum();
    assert!(reported >= dropped);
    // Every request is either written or counted: nothing vanishes silently.
    assert_eq!(written + reported, (polls + N + 1) as u64);
    assert!(written < (polls + N) as u64);
    // The lines that matter were kept: they have room the access log cannot take.
    for name in [
        "listening",
        "signal",
        "shutdown_started",
        "shutdown_complete",
    ] {
        assert_eq!(events(&lines, name).len(), 1, "{name}");
    }
}

#[test]
fn a_fatal_error_reaches_stderr_before_the_exit() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = Command::new(BIN)
        .args(["--host", "127.0.0.1", "--port", &port])
        .env_remove("OAUTH_CALLBACK_PORT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let fatal: Value = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["event"] == "fatal")
        .unwrap_or_else(|| panic!("no fatal line in:\n{stderr}"));
    assert!(
        fatal["error"].as_str().unwrap().contains("cannot listen"),
        "{fatal}"
    );
}

const CHILD: &str = "OAUTH_RELAY_TEST_PANIC_CHILD";

/// In a child process (this test binary run again): lines logged, then a panic on a thread,
/// then at once an exit that flushes nothing, well within the writer's few milliseconds of
/// letting a batch gather. Only the panic hook can have written them.
#[test]
fn a_panic_flushes_every_line_logged_before_it() {
    const N: usize = 50;
    if std::env::var_os(CHILD).is_some() {
        oauth_relay::logging::init(oauth_relay::logging::Level::Info);
        oauth_relay::logging::install_panic_hook();
        for i in 0..N {
            oauth_relay::logging::info("before_the_panic", serde_json::json!({ "i": i }));
        }
        let _ = std::thread::spawn(|| panic!("a panic on purpose")).join();
        std::process::exit(0);
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            // Its name in the one test binary (tests/it.rs): module, then function.
            "access_log::a_panic_flushes_every_line_logged_before_it",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let before: Vec<u64> = events(&lines, "before_the_panic")
        .iter()
        .map(|l| l["i"].as_u64().unwrap())
        .collect();
    assert_eq!(before, (0..N as u64).collect::<Vec<_>>());
    let panic = events(&lines, "panic");
    assert_eq!(panic.len(), 1, "{stderr}");
    assert_eq!(panic[0]["message"], "a panic on purpose");
    assert!(
        lines.iter().rposition(|l| l["event"] == "before_the_panic")
            < lines.iter().position(|l| l["event"] == "panic")
    );
}
