//! Shared test helpers: start the real binary on a free port (stopped on Drop), and a tiny raw
//! HTTP/1.1 client so tests control every byte they send.
#![allow(dead_code)] // each test crate uses a different subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_oauth-relay");

/// Removes from `command` every `OAUTH_*`/`WK_*` variable of the caller's environment, so that
/// only the settings a test gives count.
pub fn without_callers_settings(command: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars() {
        if key.starts_with("OAUTH_") || key.starts_with("WK_") {
            command.env_remove(key);
        }
    }
    command
}

/// The binary with `args` and none of the caller's settings.
pub fn oauth_relay(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    without_callers_settings(&mut command).args(args);
    command
}

/// A running `oauth-relay` with its stderr (JSON log lines) captured.
pub struct Relay {
    pub child: Child,
    /// The public listener (the only one unless `--internal-addr` was given).
    pub addr: SocketAddr,
    /// The internal listener, when `--internal-addr` (or `OAUTH_RELAY_INTERNAL_ADDR`) was given.
    pub internal_addr: Option<SocketAddr>,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Relay {
    pub fn start(args: &[&str]) -> Relay {
        Relay::start_with(Command::new(BIN), args, &[])
    }

    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Relay {
        Relay::start_with(Command::new(BIN), args, env)
    }

    /// Starts `command` (the binary, or a wrapper such as `prlimit ... BIN`) on 127.0.0.1 and a
    /// free port, and waits for its `listening` log line.
    pub fn start_with(mut command: Command, args: &[&str], env: &[(&str, &str)]) -> Relay {
        without_callers_settings(&mut command).args(["--host", "127.0.0.1"]);
        if !args.contains(&"--port") {
            command.args(["--port", "0"]);
        }
        command
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start oauth-relay");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(addr) = listening_addr(&line) {
                        let _ = tx.send(addr);
                    }
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let (addr, internal_addr) = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addrs) => addrs,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "oauth-relay did not start; its log:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
        };
        Relay {
            child,
            addr,
            internal_addr,
            logs,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The internal listener's address; panics when the relay was started without one.
    pub fn internal(&self) -> SocketAddr {
        self.internal_addr
            .expect("the relay was started without --internal-addr")
    }

    /// A URL on the internal listener.
    pub fn internal_url(&self, path: &str) -> String {
        format!("http://{}{}", self.internal(), path)
    }

    /// A request to the internal listener.
    pub fn internal_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        http(self.internal(), method, path, headers, body)
    }

    pub fn get(&self, path: &str) -> HttpResponse {
        self.request("GET", path, &[], b"")
    }

    pub fn get_auth(&self, path: &str, token: &str) -> HttpResponse {
        self.request(
            "GET",
            path,
            &[("Authorization", &format!("Bearer {token}"))],
            b"",
        )
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        http(self.addr, method, path, headers, body)
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits until a log line contains `needle` (the log is written asynchronously).
    pub fn wait_for_log(&self, needle: &str) -> String {
        eventually(&format!("a log line containing {needle:?}"), || {
            self.logs().into_iter().find(|l| l.contains(needle))
        })
    }

    /// Waits until `n` log lines contain `needle`, and returns every log line then.
    pub fn wait_for_logs(&self, needle: &str, n: usize) -> Vec<String> {
        eventually(&format!("{n} log lines containing {needle:?}"), || {
            let logs = self.logs();
            (logs.iter().filter(|l| l.contains(needle)).count() >= n).then_some(logs)
        })
    }

    pub fn active_callbacks(&self) -> u64 {
        self.get("/health").json()["active_callbacks"]
            .as_u64()
            .unwrap()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit (bounded, so a hang fails instead of blocking CI).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let child = &mut self.child;
        eventually("the process to exit", || child.try_wait().unwrap())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The public and (when there is one) internal address from the `listening` log line.
fn listening_addr(line: &str) -> Option<(SocketAddr, Option<SocketAddr>)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["event"] != "listening" {
        return None;
    }
    let internal = v["internal_addr"].as_str().and_then(|a| a.parse().ok());
    Some((v["addr"].as_str()?.parse().ok()?, internal))
}

/// Polls `check` until it returns Some, failing after a generous bound. This is not a timing
/// assertion: the bound only keeps a broken build from hanging CI.
pub fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The media type without parameters (`text/html; charset=utf-8` -> `text/html`).
    pub fn media_type(&self) -> String {
        self.header("content-type")
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap()
            .trim()
            .to_string()
    }
}

/// The cookies answers have set, kept as one browser keeps a host's cookies (all tests talk to
/// 127.0.0.1, and a browser shares a host's cookies across its ports): `http` sends them with
/// every request that does not bring its own `Cookie` header, and keeps or removes what each
/// answer's `Set-Cookie` says. The broker's login link sets one that its callback needs back, so
/// a test following the link then the callback is the person's browser; a stranger's requests
/// go through `http_without_cookies`. Each entry: name, value, expiry.
static JAR: Mutex<Vec<(String, String, Instant)>> = Mutex::new(Vec::new());

/// The jar's live cookies as a `Cookie` header value (`None` when it has none).
fn jar_cookies() -> Option<String> {
    let now = Instant::now();
    let mut jar = JAR.lock().unwrap_or_else(|e| e.into_inner());
    jar.retain(|(_, _, expires)| *expires > now);
    let pairs: Vec<String> = jar.iter().map(|(n, v, _)| format!("{n}={v}")).collect();
    (!pairs.is_empty()).then(|| pairs.join("; "))
}

/// Keeps what an answer's `Set-Cookie` headers say: a cookie, or its removal (`Max-Age=0`).
fn keep_cookies(res: &HttpResponse) {
    let mut jar = JAR.lock().unwrap_or_else(|e| e.into_inner());
    for (_, set) in res
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
    {
        let mut parts = set.split(';');
        let Some((name, value)) = parts.next().and_then(|p| p.trim().split_once('=')) else {
            continue;
        };
        let max_age = parts
            .filter_map(|a| a.trim().split_once('='))
            .find(|(k, _)| k.eq_ignore_ascii_case("max-age"))
            .and_then(|(_, v)| v.parse::<u64>().ok());
        jar.retain(|(n, _, _)| n != name);
        if max_age != Some(0) && !value.is_empty() {
            let lifetime = Duration::from_secs(max_age.unwrap_or(24 * 3600));
            jar.push((name.into(), value.into(), Instant::now() + lifetime));
        }
    }
}

/// One request on a fresh connection (`Connection: close`), read to the end, as the tests'
/// browser: with the jar's cookies unless `headers` has a `Cookie` of its own (see `JAR`).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let jar = jar_cookies().filter(|_| {
        !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("cookie"))
    });
    let mut with_jar: Vec<(&str, &str)> = headers.to_vec();
    if let Some(cookies) = &jar {
        with_jar.push(("Cookie", cookies));
    }
    let res = http_without_cookies(addr, method, path, &with_jar, body);
    keep_cookies(&res);
    res
}

/// One request on a fresh connection, sending exactly `headers`: no cookie from the jar, and
/// the answer's `Set-Cookie` is not kept (a stranger's client, or another browser).
pub fn http_without_cookies(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    read_response(&mut stream)
}

/// `http` from another loopback address (`127.0.0.2`, say: all of 127/8 is the loopback
/// interface), so the relay sees another client.
pub fn http_from(
    source: std::net::IpAddr,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::new(source, 0).into())
        .unwrap_or_else(|e| panic!("bind {source}: {e}"));
    socket.connect(&addr.into()).expect("connect");
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    read_response(&mut stream)
}

pub fn read_response(stream: &mut TcpStream) -> HttpResponse {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read response");
    parse_response(&raw)
}

pub fn parse_response(raw: &[u8]) -> HttpResponse {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

pub mod broker;
pub mod fake_as;
pub mod fake_client;
pub mod fake_github;
pub mod fake_google;
pub mod fake_http;
pub mod fake_microsoft;
pub mod fake_provider;
pub mod oidc;
pub mod openapi;
pub mod python;
pub mod redis_topology;
pub mod relay_api;
pub mod webhook_receiver;

/// A loopback port for a service whose own URL must be known before it starts (the broker's
/// public base URL, a Redis node, a sentinel), that no other test of this run is given while
/// this test process lives.
///
/// A port taken from `bind(127.0.0.1:0)` and let go is back in the kernel's ephemeral range,
/// where the next test's `bind(0)` may be handed it: a sentinel of one test then reconnects to
/// the port its killed primary had and finds another test's Redis there (and tells it to
/// become a replica). So ports come from below the ephemeral range (where the kernel hands
/// out none by itself), each reserved by a lock on a file named after it, held until the
/// process ends (nextest runs each test in a process of its own), and checked free by binding.
pub fn free_port() -> u16 {
    static HELD: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());
    const LOW: u32 = 20_000;
    let high = ephemeral_floor().max(LOW + 1_000);
    let dir = std::env::temp_dir().join("oauth-relay-test-ports");
    std::fs::create_dir_all(&dir).expect("the ports' lock directory");
    for _ in 0..10_000 {
        let mut b = [0u8; 4];
        getrandom::fill(&mut b).expect("random bytes");
        let port = (LOW + u32::from_le_bytes(b) % (high - LOW)) as u16;
        let file = match std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
        {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                panic!("cannot reserve test ports in {}: {e}", dir.display())
            }
            Err(_) => continue,
        };
        if file.try_lock().is_err() {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            HELD.lock().unwrap().push(file);
            return port;
        }
    }
    panic!("no free loopback port below the ephemeral range");
}

/// The lowest port of the kernel's ephemeral range (32768 where it cannot be read).
fn ephemeral_floor() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A real `redis-server` on a free port, with no persistence, stopped on Drop.
pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_on(free_port())
    }

    fn start_on(port: u16) -> RedisServer {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is not installed: run scripts/test.sh, which installs it");
        let server = RedisServer { child, port };
        wait_for_pong(port);
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Stops the server (as a crash would: state in it is lost).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port;
        *self = RedisServer::start_on(port);
    }

    /// Every key and value in the database (for scanning what is stored in the clear).
    pub fn dump(&self) -> Vec<u8> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--no-raw", "--scan"])
            .output()
            .expect("redis-cli");
        let mut all = out.stdout.clone();
        for key in String::from_utf8_lossy(&out.stdout).lines() {
            for cmd in [
                vec!["GET", key],
                vec!["HGETALL", key],
                vec!["ZRANGE", key, "0", "-1"],
            ] {
                let v = Command::new("redis-cli")
                    .args(["-p", &self.port.to_string(), "--raw"])
                    .args(&cmd)
                    .output()
                    .unwrap();
                all.extend(v.stdout);
            }
        }
        all
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh, empty directory under the target directory's scratch space (left there: a failed
/// test's files help to see why).
pub fn scratch(name: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "scratch-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A real `redis-server` that persists every write before answering it (AOF, fsync always),
/// in its own directory, so that it can be killed and started again with its data.
pub struct DurableRedis(redis_topology::Standalone);

impl DurableRedis {
    pub fn start() -> DurableRedis {
        let server = redis_topology::Standalone::start_with(true, &["--appendfsync", "always"]);
        wait_for_pong(server.node.port);
        DurableRedis(server)
    }

    pub fn url(&self) -> String {
        self.0.url()
    }

    /// Kills it as a crash would (SIGKILL) and starts it again on the same port and directory.
    pub fn crash_and_restart(&mut self) {
        self.crash();
        self.start_again();
    }

    /// Kills it as a crash would (SIGKILL); `start_again` brings it back on its data.
    pub fn crash(&mut self) {
        self.0.node.kill();
    }

    /// Starts it again on its port and files, and waits until it answers PONG (its data
    /// loaded: `RedisNode::restart` takes a `LOADING` error for an answer).
    pub fn start_again(&mut self) {
        self.0.node.restart();
        wait_for_pong(self.0.node.port);
    }
}

/// The path (with query) of an absolute URL: what a load balancer forwards to any replica.
pub fn path_of(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    format!("/{}", rest.split_once('/').map(|(_, p)| p).unwrap_or(""))
}

/// GET an absolute `http://` URL (a fake upstream's), without following redirects.
pub fn get_url(url: &str) -> HttpResponse {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    http(host.parse().unwrap(), "GET", &format!("/{path}"), &[], b"")
}

impl Relay {
    /// The relay's process id (for its /proc entries).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// A kB figure from /proc/<pid>/status (`VmRSS`, `VmHWM`, ...), in bytes.
pub fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unreadable {line:?}"));
    kib * 1024
}

/// Raises this process's soft limit on open files to at least `needed` (child processes started
/// afterwards inherit it), so that a test holding many sockets, and the relay serving them, run
/// the same on a machine whose default soft limit is 1,024. Fails clearly when the hard limit is
/// too low. std has no setrlimit, so this asks `prlimit` (util-linux, as robustness.rs does).
pub fn raise_fd_limit(needed: u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut numbers = line.split_whitespace().filter_map(|w| {
        w.parse::<u64>()
            .ok()
            .or((w == "unlimited").then_some(u64::MAX))
    });
    let (soft, hard) = (numbers.next().unwrap(), numbers.next().unwrap());
    if soft >= needed {
        return;
    }
    assert!(
        hard >= needed,
        "this test needs {needed} open files; the hard limit is {hard} (raise it, e.g. `ulimit -Hn {needed}`)"
    );
    let status = Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            &format!("--nofile={needed}:"),
        ])
        .status()
        .expect("prlimit (util-linux)");
    assert!(
        status.success(),
        "prlimit could not raise the open-file limit"
    );
}

/// Ten rounds of one callback and twelve concurrent retrievals spread over the replicas:
/// exactly one 200 each time.
pub fn one_take_wins(replicas: &[Relay]) {
    for round in 0..10 {
        let state = format!("race-{round}-{}", std::process::id());
        assert_eq!(
            replicas[round % 3]
                .get(&format!("/callback?code=c{round}&state={state}"))
                .status,
            200
        );
        let statuses: Vec<u16> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..12)
                .map(|i| {
                    let (r, state) = (&replicas[i % 3], &state);
                    s.spawn(move || r.get(&format!("/api/callback/{state}")).status)
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            statuses.iter().filter(|s| **s == 200).count(),
            1,
            "{statuses:?}"
        );
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 410),
            "{statuses:?}"
        );
    }
}

/// Waits until the redis-server on `port` answers PING.
fn wait_for_pong(port: u16) {
    eventually("redis-server to answer PING", || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.write_all(b"PING\r\n").ok()?;
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).ok()?;
        (&buf == b"+PONG\r\n").then_some(())
    });
}
