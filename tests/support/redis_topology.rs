//! Real Redis topologies for tests, from Debian's `redis-server` and `redis-sentinel`, on
//! 127.0.0.1 free ports in a temporary directory, every process killed on Drop: one server
//! (optionally with AOF), a Sentinel set (a primary, a replica, three sentinels) and a Redis
//! Cluster (three primaries with a replica each); and what tests do to them: kill a node
//! (SIGKILL), restart it, make the sentinels fail over, migrate a slot, wait until the
//! cluster is whole again. Every wait polls with a generous deadline (a loaded two-core
//! machine may be slow); none asserts how long anything took.

use super::free_port;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Polls `check` every 50 ms until it gives a value; panics naming `what` after `secs`.
pub fn wait_for<T>(what: &str, secs: u64, check: impl FnMut() -> Option<T>) -> T {
    wait_or_tell(what, secs, check, String::new)
}

/// [`wait_for`], with `tell()` (the servers' logs, say) in the panic message.
pub fn wait_or_tell<T>(
    what: &str,
    secs: u64,
    mut check: impl FnMut() -> Option<T>,
    tell: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("gave up waiting for {what}{}", tell());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `n` lines of every `*.log` in `dir`, for a panic message.
fn log_tails(dir: &TempDir, n: usize) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(&dir.0) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_some_and(|x| x == "log") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("\n--- {}\n", path.display()));
            out.push_str(&lines[lines.len().saturating_sub(n)..].join("\n"));
        }
    }
    out
}

/// A directory removed on Drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "oauth-relay-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A private CA and a certificate for 127.0.0.1 and localhost that it signed (openssl).
pub struct TestCa {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

impl TestCa {
    pub fn new(dir: &TempDir) -> TestCa {
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir.0)
                .output()
                .expect("openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=kv-test-ca",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "srv.key",
            "-out",
            "srv.csr",
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(
            dir.0.join("ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.pem",
            "-days",
            "2",
            "-extfile",
            "ext",
        ]);
        TestCa {
            ca: dir.path("ca.pem"),
            cert: dir.path("srv.pem"),
            key: dir.path("srv.key"),
        }
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(&self.ca).unwrap()
    }

    /// What a server (or sentinel) needs to speak TLS only, on `port`.
    fn server_args(&self, port: u16) -> Vec<String> {
        [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &self.cert,
            "--tls-key-file",
            &self.key,
            "--tls-ca-cert-file",
            &self.ca,
            "--tls-auth-clients",
            "no",
            "--tls-replication",
            "yes",
        ]
        .map(String::from)
        .to_vec()
    }
}

/// How redis-cli reaches a node (TLS, password).
#[derive(Clone, Default)]
pub struct Access {
    pub tls_ca: Option<String>,
    pub password: Option<String>,
}

impl Access {
    fn args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(ca) = &self.tls_ca {
            a.extend(["--tls".into(), "--cacert".into(), ca.clone()]);
        }
        if let Some(pw) = &self.password {
            a.extend(["-a".into(), pw.clone(), "--no-auth-warning".into()]);
        }
        a
    }
}

/// `redis-cli` against 127.0.0.1:`port`; its output (`--raw`), trimmed.
pub fn cli(port: u16, access: &Access, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--raw"])
        .args(access.args())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli is not installed: run scripts/test.sh, which installs it");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One `redis-server` or `redis-sentinel` process; killed on Drop.
pub struct RedisNode {
    pub port: u16,
    program: &'static str,
    args: Vec<String>,
    pub access: Access,
    child: Option<Child>,
}

impl RedisNode {
    fn spawn(program: &'static str, port: u16, args: Vec<String>, access: Access) -> RedisNode {
        let mut node = RedisNode {
            port,
            program,
            args,
            access,
            child: None,
        };
        node.restart();
        node
    }

    /// Starts it (again, on the same port and with the same files) and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new(self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{} is not installed ({e}): run scripts/test.sh, which installs it",
                    self.program
                )
            });
        self.child = Some(child);
        let port = self.port;
        wait_for(
            &format!("{} on port {port} to answer", self.program),
            60,
            || {
                if let Some(status) = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                {
                    panic!("{} on port {port} exited: {status}", self.program);
                }
                self.answers().then_some(())
            },
        );
    }

    /// Whether it answers PING (any reply, NOAUTH included).
    pub fn answers(&self) -> bool {
        if self.access.tls_ca.is_some() {
            return !cli(self.port, &self.access, &["PING"]).is_empty();
        }
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).is_ok() && !line.is_empty()
    }

    /// SIGKILL: what a crash, an OOM kill or a lost machine look like to everyone else.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, &self.access, args)
    }

    /// `field:value` from INFO `section`.
    pub fn info(&self, section: &str, field: &str) -> Option<String> {
        self.cli(&["INFO", section]).lines().find_map(|l| {
            l.trim()
                .strip_prefix(field)
                .and_then(|r| r.strip_prefix(':'))
                .map(String::from)
        })
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Arguments every data node gets: loopback only, its own files, fast full syncs.
fn server_args(dir: &TempDir, port: u16, tls: Option<&TestCa>) -> Vec<String> {
    let own = dir.0.join(format!("node-{port}"));
    std::fs::create_dir_all(&own).unwrap();
    let mut args: Vec<String> = [
        "--bind",
        "127.0.0.1",
        "--dir",
        own.to_str().unwrap(),
        "--logfile",
        &dir.path(&format!("redis-{port}.log")),
        "--save",
        "",
        "--appendonly",
        "no",
        "--repl-diskless-sync",
        "yes",
        "--repl-diskless-sync-delay",
        "0",
        "--enable-debug-command",
        "local",
    ]
    .map(String::from)
    .to_vec();
    match tls {
        Some(ca) => args.extend(ca.server_args(port)),
        None => args.extend(["--port".into(), port.to_string()]),
    }
    args
}

/// One server.
pub struct Standalone {
    pub node: RedisNode,
    pub dir: TempDir,
}

impl Standalone {
    pub fn start() -> Standalone {
        Standalone::start_with(false, &[])
    }

    /// With `aof`, an append-only file fsynced every second; `extra` arguments after ours.
    pub fn start_with(aof: bool, extra: &[&str]) -> Standalone {
        let dir = TempDir::new("redis");
        let port = free_port();
        let mut args = server_args(&dir, port, None);
        if aof {
            args.extend(["--appendonly".into(), "yes".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Standalone {
            node: RedisNode::spawn("redis-server", port, args, Access::default()),
            dir,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.node.port)
    }
}

/// What a Sentinel set is started with.
#[derive(Default)]
pub struct SentinelOptions<'a> {
    /// `requirepass` (and `masterauth`) of the data nodes.
    pub password: Option<&'a str>,
    /// `requirepass` of the sentinels.
    pub sentinel_password: Option<&'a str>,
    /// TLS everywhere (data nodes, sentinels, replication) with this CA.
    pub tls: Option<&'a TestCa>,
}

/// A primary, its replica and three sentinels watching them under `name`.
pub struct SentinelSet {
    pub name: String,
    pub data: Vec<RedisNode>,
    pub sentinels: Vec<RedisNode>,
    pub dir: TempDir,
}

impl SentinelSet {
    pub fn start() -> SentinelSet {
        SentinelSet::start_with(SentinelOptions::default())
    }

    pub fn start_with(o: SentinelOptions) -> SentinelSet {
        let dir = TempDir::new("sentinel");
        // A name of this process's own: sentinels only listen to hellos for the names they
        // watch, so no other test's sentinels can ever join this set.
        let name = format!("kvprimary-{}", std::process::id());
        let data_access = Access {
            tls_ca: o.tls.map(|c| c.ca.clone()),
            password: o.password.map(String::from),
        };
        let (primary_port, replica_port) = (free_port(), free_port());
        let mut data = Vec::new();
        for (port, replica_of) in [(primary_port, None), (replica_port, Some(primary_port))] {
            let mut args = server_args(&dir, port, o.tls);
            if let Some(pw) = o.password {
                args.extend(["--requirepass", pw, "--masterauth", pw].map(String::from));
            }
            if let Some(p) = replica_of {
                args.extend(["--replicaof".into(), "127.0.0.1".into(), p.to_string()]);
            }
            data.push(RedisNode::spawn(
                "redis-server",
                port,
                args,
                data_access.clone(),
            ));
        }
        let sentinel_access = Access {
            tls_ca: o.tls.map(|c| c.ca.clone()),
            password: o.sentinel_password.map(String::from),
        };
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let mut conf = format!(
                "bind 127.0.0.1\ndir {dir}\nlogfile {log}\n\
                 sentinel monitor {name} 127.0.0.1 {primary_port} 2\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 10000\n\
                 sentinel parallel-syncs {name} 1\n",
                dir = dir.0.display(),
                log = dir.path(&format!("sentinel-{port}.log")),
            );
            match o.tls {
                Some(ca) => conf.push_str(&format!(
                    "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\n\
                     tls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n",
                    ca.cert, ca.key, ca.ca
                )),
                None => conf.push_str(&format!("port {port}\n")),
            }
            if let Some(pw) = o.password {
                conf.push_str(&format!("sentinel auth-pass {name} {pw}\n"));
            }
            if let Some(pw) = o.sentinel_password {
                conf.push_str(&format!("requirepass {pw}\nsentinel sentinel-pass {pw}\n"));
            }
            let file = dir.path(&format!("sentinel-{port}.conf"));
            std::fs::write(&file, conf).unwrap();
            sentinels.push(RedisNode::spawn(
                "redis-sentinel",
                port,
                vec![file],
                sentinel_access.clone(),
            ));
        }
        let set = SentinelSet {
            name,
            data,
            sentinels,
            dir,
        };
        set.wait_until_watched();
        set
    }

    /// `127.0.0.1:port` of each sentinel.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect()
    }

    /// Until every sentinel knows the primary, its replica (in sync) and the two others: what
    /// a failover needs.
    pub fn wait_until_watched(&self) {
        let primary = self.primary_by_sentinels().expect("a primary");
        wait_or_tell(
            "the sentinels to know each other and the replica",
            90,
            || {
                let replica = self.data.iter().find(|n| n.port != primary)?;
                (replica.info("replication", "master_link_status").as_deref() == Some("up"))
                    .then_some(())?;
                self.sentinels
                    .iter()
                    .filter(|s| s.is_running())
                    .all(|s| {
                        let fields = self.sentinel_fields(s);
                        fields.get("num-other-sentinels").map(String::as_str) == Some("2")
                            && fields.get("num-slaves").map(String::as_str) == Some("1")
                            && fields.get("flags").map(String::as_str) == Some("master")
                    })
                    .then_some(())
            },
            || log_tails(&self.dir, 20),
        );
    }

    fn sentinel_fields(&self, s: &RedisNode) -> std::collections::HashMap<String, String> {
        let out = s.cli(&["SENTINEL", "MASTER", &self.name]);
        let lines: Vec<&str> = out.lines().collect();
        lines
            .chunks(2)
            .filter(|kv| kv.len() == 2)
            .map(|kv| (kv[0].to_string(), kv[1].to_string()))
            .collect()
    }

    /// The primary's port as the running sentinels agree on it (`None` while they disagree).
    pub fn primary_by_sentinels(&self) -> Option<u16> {
        let answers: Vec<u16> = self
            .sentinels
            .iter()
            .filter(|s| s.is_running())
            .filter_map(|s| {
                let out = s.cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &self.name]);
                out.lines().nth(1)?.trim().parse().ok()
            })
            .collect();
        let first = *answers.first()?;
        answers.iter().all(|p| *p == first).then_some(first)
    }

    pub fn node(&mut self, port: u16) -> &mut RedisNode {
        self.data
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a data node on that port")
    }

    pub fn other_than(&self, port: u16) -> u16 {
        self.data.iter().find(|n| n.port != port).unwrap().port
    }

    /// SENTINEL FAILOVER: the sentinels promote the replica without waiting for agreement.
    pub fn failover(&self) {
        let s = self.sentinels.iter().find(|s| s.is_running()).unwrap();
        let answer = s.cli(&["SENTINEL", "FAILOVER", &self.name]);
        assert_eq!(answer, "OK", "SENTINEL FAILOVER");
    }

    /// Waits until the sentinels agree on a primary other than `old`, and it says so itself.
    pub fn wait_for_new_primary(&self, old: u16) -> u16 {
        wait_or_tell(
            "the sentinels to promote another primary",
            120,
            || {
                let now = self.primary_by_sentinels()?;
                let node = self.data.iter().find(|n| n.port == now)?;
                (now != old && node.cli(&["ROLE"]).lines().next() == Some("master")).then_some(now)
            },
            || log_tails(&self.dir, 30),
        )
    }
}

/// A Redis Cluster of three primaries with one replica each.
pub struct ClusterSet {
    pub nodes: Vec<RedisNode>,
    pub dir: TempDir,
}

impl ClusterSet {
    pub fn start() -> ClusterSet {
        let dir = TempDir::new("cluster");
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let (port, bus) = (free_port(), free_port());
            let mut args = server_args(&dir, port, None);
            args.extend(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &dir.path(&format!("nodes-{port}.conf")),
                    "--cluster-port",
                    &bus.to_string(),
                    "--cluster-node-timeout",
                    "1000",
                ]
                .map(String::from),
            );
            nodes.push(RedisNode::spawn(
                "redis-server",
                port,
                args,
                Access::default(),
            ));
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let set = ClusterSet { nodes, dir };
        set.wait_ok();
        set
    }

    /// `127.0.0.1:port` of every node (what a client is given as seeds).
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect()
    }

    pub fn node(&mut self, port: u16) -> &mut RedisNode {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node on that port")
    }

    fn running(&self) -> impl Iterator<Item = &RedisNode> {
        self.nodes.iter().filter(|n| n.is_running())
    }

    /// Until every running node says `cluster_state:ok` with all slots served, agrees on who
    /// serves them, and every replica is in sync.
    pub fn wait_ok(&self) {
        let ok = || {
            let mut views = Vec::new();
            for n in self.running() {
                let info = n.cli(&["CLUSTER", "INFO"]);
                if !info.contains("cluster_state:ok") || !info.contains("cluster_slots_ok:16384") {
                    return None;
                }
                views.push(self.owners(n)?);
                if n.cli(&["ROLE"]).lines().next() == Some("slave")
                    && n.info("replication", "master_link_status").as_deref() != Some("up")
                {
                    return None;
                }
            }
            views.windows(2).all(|w| w[0] == w[1]).then_some(())
        };
        wait_or_tell("the cluster to be ok", 120, ok, || log_tails(&self.dir, 20));
    }

    /// Slot ranges and their primary's port, as `n` sees them (failed primaries left out).
    fn owners(&self, n: &RedisNode) -> Option<Vec<(u16, u16, u16)>> {
        let mut ranges = Vec::new();
        for line in n.cli(&["CLUSTER", "NODES"]).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let port: u16 = f[1].split(['@', ':']).nth(1)?.parse().ok()?;
            for range in &f[8..] {
                if range.starts_with('[') {
                    continue; // a slot being migrated or imported
                }
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                ranges.push((a.parse().ok()?, b.parse().ok()?, port));
            }
        }
        ranges.sort();
        Some(ranges)
    }

    /// The port of the primary serving `slot`, as the first running node sees it.
    pub fn owner_of(&self, slot: u16) -> u16 {
        let n = self.running().next().unwrap();
        self.owners(n)
            .unwrap()
            .into_iter()
            .find(|(a, b, _)| (*a..=*b).contains(&slot))
            .map(|(_, _, p)| p)
            .expect("a primary serves every slot")
    }

    /// The port of a replica of the primary on `port`.
    pub fn replica_of(&self, port: u16) -> u16 {
        let id = self.id(port);
        self.running()
            .find(|n| {
                n.cli(&["CLUSTER", "NODES"])
                    .lines()
                    .any(|l| l.contains("myself") && l.contains("slave") && l.contains(&id))
            })
            .map(|n| n.port)
            .expect("a replica")
    }

    pub fn id(&self, port: u16) -> String {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .unwrap()
            .cli(&["CLUSTER", "MYID"])
    }

    /// Another primary than the one on `port`.
    pub fn primary_other_than(&self, port: u16) -> u16 {
        let n = self.running().next().unwrap();
        self.owners(n)
            .unwrap()
            .into_iter()
            .map(|(_, _, p)| p)
            .find(|p| *p != port)
            .unwrap()
    }

    /// First half of moving `slot` from `from` to `to`: marked importing and migrating, no key
    /// moved yet (clients asking `from` for a key it no longer has get ASK).
    pub fn begin_migration(&self, slot: u16, from: u16, to: u16) {
        let s = slot.to_string();
        let (from_id, to_id) = (self.id(from), self.id(to));
        assert_eq!(
            self.node_ref(to)
                .cli(&["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id]),
            "OK"
        );
        assert_eq!(
            self.node_ref(from)
                .cli(&["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id]),
            "OK"
        );
    }

    /// Moves up to `count` keys of `slot` from `from` to `to` (MIGRATE ... KEYS); how many.
    pub fn move_keys(&self, slot: u16, from: u16, to: u16, count: usize) -> usize {
        let s = slot.to_string();
        let listed = self
            .node_ref(from)
            .cli(&["CLUSTER", "GETKEYSINSLOT", &s, &count.to_string()]);
        let keys: Vec<&str> = listed.lines().filter(|k| !k.is_empty()).collect();
        if keys.is_empty() {
            return 0;
        }
        let mut args = vec![
            "MIGRATE".to_string(),
            "127.0.0.1".into(),
            to.to_string(),
            "".into(),
            "0".into(),
            "5000".into(),
            "KEYS".into(),
        ];
        args.extend(keys.iter().map(|k| k.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let answer = self.node_ref(from).cli(&args);
        assert!(
            answer == "OK" || answer == "NOKEY",
            "MIGRATE answered {answer:?}"
        );
        keys.len()
    }

    /// Second half: the remaining keys moved, and every primary told that `to` serves `slot`.
    pub fn finish_migration(&self, slot: u16, from: u16, to: u16) {
        while self.move_keys(slot, from, to, 100) > 0 {}
        let s = slot.to_string();
        let to_id = self.id(to);
        for port in [to, from] {
            assert_eq!(
                self.node_ref(port)
                    .cli(&["CLUSTER", "SETSLOT", &s, "NODE", &to_id]),
                "OK"
            );
        }
        let others: Vec<u16> = self
            .running()
            .map(|n| n.port)
            .filter(|p| *p != to && *p != from)
            .collect();
        for port in others {
            self.node_ref(port)
                .cli(&["CLUSTER", "SETSLOT", &s, "NODE", &to_id]);
        }
    }

    /// The whole move of `slot` from `from` to `to`.
    pub fn migrate_slot(&self, slot: u16, from: u16, to: u16) {
        self.begin_migration(slot, from, to);
        self.finish_migration(slot, from, to);
    }

    fn node_ref(&self, port: u16) -> &RedisNode {
        self.nodes.iter().find(|n| n.port == port).unwrap()
    }

    /// Waits until another primary than `old` serves `slot` and the cluster is ok again.
    pub fn wait_for_new_owner(&self, slot: u16, old: u16) -> u16 {
        let taken_over = || {
            let n = self.running().next()?;
            let owners = self.owners(n)?;
            owners
                .into_iter()
                .find(|(a, b, _)| (*a..=*b).contains(&slot))
                .map(|(_, _, p)| p)
                .filter(|p| *p != old)
        };
        let new = wait_or_tell("a replica to take over the slot", 120, taken_over, || {
            log_tails(&self.dir, 20)
        });
        self.wait_ok();
        new
    }
}
