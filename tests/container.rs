//! The container image, without a container engine: builds the static binary with the same script
//! the Dockerfile runs, checks it is static, and runs it in an empty root directory (no libc, no
//! shell, no /etc: what `distroless/static` adds beyond that is not needed by the binary).
//! There it must serve /health, pass and fail its own `healthcheck` as a HEALTHCHECK would see
//! it, and exit 0 on SIGTERM.
//!
//! Self-contained on purpose (std, serde_json and ureq only; not `tests/support`).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const MAX_BINARY_BYTES: u64 = 10_000_000;

/// Kills the relay (if still running) and removes the root directory, also when a test panics.
struct Guard {
    child: Option<Child>,
    root: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Runs scripts/build-static.sh into its own target dir (never waiting on the outer build's lock)
/// and returns the path it prints as its last stdout line. That dir is `static` in the target
/// directory this test was built in (the parent of CARGO_TARGET_TMPDIR), so a CARGO_TARGET_DIR
/// elsewhere is honoured and the checkout stays clean.
fn build_static() -> PathBuf {
    let repo = Path::new(REPO);
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is inside the target directory");
    let output = Command::new(repo.join("scripts/build-static.sh"))
        .current_dir(repo)
        .env("CARGO_TARGET_DIR", target.join("static"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/build-static.sh");
    assert!(
        output.status.success(),
        "scripts/build-static.sh failed ({}); its cargo output is above",
        output.status
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("build-static.sh printed no path; stdout: {stdout:?}"));
    let bin = PathBuf::from(last.trim());
    assert!(
        bin.is_file(),
        "build-static.sh printed {bin:?}, which is not a file"
    );
    bin
}

/// The ELF's program-header types, parsed with std (ELF64 little-endian only, as built here).
fn program_header_types(elf: &[u8]) -> Vec<u32> {
    assert!(
        elf.len() >= 64 && &elf[..4] == b"\x7fELF",
        "not an ELF file"
    );
    assert_eq!(elf[4], 2, "not ELF64 (EI_CLASS)");
    assert_eq!(elf[5], 1, "not little-endian (EI_DATA)");
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    assert!(phentsize >= 56, "bad e_phentsize {phentsize}");
    assert!(
        phoff + phnum * phentsize <= elf.len(),
        "program headers past the end of the file"
    );
    (0..phnum)
        .map(|i| {
            let o = phoff + i * phentsize;
            u32::from_le_bytes(elf[o..o + 4].try_into().unwrap())
        })
        .collect()
}

const PT_INTERP: u32 = 3;

/// The first directory of $PATH, then of the usual sbin/bin ones (chroot lives in /usr/sbin,
/// often not on a non-root $PATH), holding a file `name`.
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// How to run a program with the empty directory as `/`. Each form ends in execve of the relay
/// in the same process, so the PID we spawn is the relay's and SIGTERM reaches it. Hence no
/// `unshare --fork`: that leaves unshare as the parent, waiting, with the relay a grandchild the
/// signal never reaches (and the status we would read would be unshare's). The test checks
/// /proc/PID/comm before signalling.
#[derive(Clone, Debug)]
struct Jail {
    prefix: Vec<String>,
}

impl Jail {
    fn candidates(root: &Path) -> Vec<Jail> {
        let root = root.to_str().expect("utf-8 temp path").to_string();
        let chroot = find_tool("chroot").map(|p| p.display().to_string());
        let unshare = find_tool("unshare").map(|p| p.display().to_string());
        let mut out = Vec::new();
        let mut add = |v: Option<Vec<String>>| out.extend(v.map(|prefix| Jail { prefix }));
        let as_root = chroot.as_ref().map(|c| vec![c.clone(), root.clone()]);
        let userns_root = unshare.as_ref().map(|u| {
            vec![
                u.clone(),
                "--user".into(),
                "--map-root-user".into(),
                format!("--root={root}"),
            ]
        });
        let userns_chroot = unshare
            .as_ref()
            .zip(chroot.as_ref())
            .map(|(u, c)| vec![u.clone(), "--map-root-user".into(), c.clone(), root.clone()]);
        if effective_uid() == Some(0) {
            add(as_root);
            add(userns_root);
        } else {
            add(userns_root);
            add(userns_chroot);
        }
        out
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.prefix[0]);
        c.args(&self.prefix[1..])
            .arg("/oauth-relay")
            .args(args)
            // Nothing from the test's environment (OAUTH_*, RUST_*, ...): the image sets its own.
            .env_clear()
            .stdin(Stdio::null());
        c
    }

    fn output(&self, args: &[&str]) -> Output {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", self.prefix))
    }
}

/// The first way of entering the empty root that actually runs the binary there, or a failure
/// that says why none did.
fn pick_jail(root: &Path) -> Jail {
    let mut tried = Vec::new();
    for jail in Jail::candidates(root) {
        match jail.command(&["--version"]).output() {
            Ok(out)
                if out.status.success()
                    && String::from_utf8_lossy(&out.stdout).contains("oauth-relay") =>
            {
                return jail
            }
            Ok(out) => tried.push(format!(
                "{:?}: {}, stderr: {}",
                jail.prefix,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => tried.push(format!("{:?}: {e}", jail.prefix)),
        }
    }
    panic!(
        "cannot run the binary in an empty root: this test needs root (for chroot) or \
         unprivileged user namespaces (for `unshare --user --map-root-user --root`). \
         Tried: {tried:#?}"
    );
}

fn wait_exit(child: &mut Child, limit: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            start.elapsed() < limit,
            "the relay did not exit within {limit:?} of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_port() -> u16 {
    // Bound and released: nothing listens there afterwards (nobody else picks it this quickly).
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn static_binary_serves_from_an_empty_root() {
    let bin = build_static();

    // Static: no PT_INTERP, so no dynamic loader (and no libc) is needed at run time.
    let elf = std::fs::read(&bin).expect("read the binary");
    let types = program_header_types(&elf);
    assert!(!types.is_empty(), "no program headers");
    assert!(
        !types.contains(&PT_INTERP),
        "{bin:?} has a PT_INTERP program header: it is dynamically linked"
    );

    let size = elf.len() as u64;
    println!(
        "static binary {}: {size} bytes ({:.2} MB, {:.2} MiB)",
        bin.display(),
        size as f64 / 1e6,
        size as f64 / (1024.0 * 1024.0)
    );
    assert!(
        size < MAX_BINARY_BYTES,
        "binary is {size} bytes, over the {MAX_BINARY_BYTES} byte budget"
    );

    // A fresh, empty root holding only the binary (under the target dir, which allows exec).
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "container-root-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&root).expect("create the root directory");
    let mut guard = Guard {
        child: None,
        root: root.clone(),
    };
    std::fs::copy(&bin, root.join("oauth-relay")).expect("copy the binary");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            root.join("oauth-relay"),
            std::fs::Permissions::from_mode(0o555),
        )
        .unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let entries: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        entries,
        ["oauth-relay"],
        "the root must hold the binary only"
    );

    let jail = pick_jail(&root);
    println!("running in the empty root with {:?}", jail.prefix);

    // Serve, and learn the port from the `listening` line on stderr.
    let mut child = jail
        .command(&["--host", "127.0.0.1", "--port", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the relay");
    let stderr = child.stderr.take().unwrap();
    let pid = child.id();
    guard.child = Some(child);
    let logs = Arc::new(Mutex::new(Vec::<String>::new()));
    let (tx, rx) = mpsc::channel::<SocketAddr>();
    {
        let logs = logs.clone();
        std::thread::spawn(move || {
            // Keeps draining stderr until the relay exits, so it never blocks on a full pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if json["event"] == "listening" {
                    if let Some(addr) = json["addr"].as_str().and_then(|a| a.parse().ok()) {
                        let _ = tx.send(addr);
                    }
                }
                logs.lock().unwrap().push(line);
            }
        });
    }
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|e| {
            panic!(
                "no `listening` line from the relay ({e}); its stderr: {:#?}",
                logs.lock().unwrap()
            )
        });
    let port = addr.port();
    assert_ne!(port, 0);

    // The PID we will signal is the relay itself, not a wrapper (chroot and unshare exec it).
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("read /proc/PID/comm");
    assert_eq!(comm.trim(), "oauth-relay", "PID {pid} is not the relay");

    // /health from outside the root.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .get(&format!("http://127.0.0.1:{port}/health"))
        .call()
        .expect("GET /health");
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .expect("read /health body");
    assert_eq!(status, 200, "/health answered {status}: {body}");
    let health: serde_json::Value = serde_json::from_str(&body).expect("/health is JSON");
    assert_eq!(health["status"], "healthy", "/health body: {body}");

    // `healthcheck` as the image's HEALTHCHECK runs it: inside the same empty root.
    let ok = jail.output(&["healthcheck", "--port", &port.to_string()]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "healthcheck against the running relay: {}, stderr: {}",
        ok.status,
        String::from_utf8_lossy(&ok.stderr)
    );
    let dead_port = free_port();
    let bad = jail.output(&["healthcheck", "--port", &dead_port.to_string()]);
    assert_eq!(
        bad.status.code(),
        Some(1),
        "healthcheck against port {dead_port} where nothing listens: {}, stderr: {}",
        bad.status,
        String::from_utf8_lossy(&bad.stderr)
    );

    // SIGTERM: graceful stop, exit status 0 (not "killed by signal").
    let kill = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(kill.success(), "kill -TERM {pid} failed: {kill}");
    let status = wait_exit(guard.child.as_mut().unwrap(), Duration::from_secs(60));
    assert_eq!(
        status.code(),
        Some(0),
        "relay exited with {status} after SIGTERM; its stderr: {:#?}",
        logs.lock().unwrap()
    );
}

/// The Docker build context holds only what the Dockerfile COPYs and .dockerignore lets through;
/// a file the build needs but neither names (a build.rs, say) breaks `docker build`
/// while every other test passes. Rebuild that context and let cargo resolve it offline.
#[test]
fn the_docker_build_context_has_everything_the_build_needs() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(repo.join("Dockerfile")).unwrap();
    let ignore = std::fs::read_to_string(repo.join(".dockerignore")).unwrap();
    let context =
        std::env::temp_dir().join(format!("oauth-relay-docker-context-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&context);
    std::fs::create_dir_all(&context).unwrap();
    let mut copied = 0;
    for line in dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let words: Vec<&str> = line
            .split_whitespace()
            .skip(1)
            .filter(|w| !w.starts_with("--"))
            .collect();
        for source in &words[..words.len() - 1] {
            let name = source.trim_end_matches('/');
            assert!(
                ignore.lines().any(|l| l.trim() == format!("!{name}")
                    || l.trim() == format!("!{name}/")
                    || l.trim().starts_with(&format!("!{name}/"))),
                ".dockerignore does not let {name} into the build context"
            );
            let status = Command::new("cp")
                .arg("-r")
                .arg(repo.join(name))
                .arg(context.join(name))
                .status()
                .unwrap();
            assert!(status.success(), "cp {name}");
            copied += 1;
        }
    }
    assert!(
        copied >= 4,
        "found only {copied} COPY sources in the Dockerfile"
    );
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--locked",
            // Only what a Linux build resolves (other platforms' crates may not be cached).
            "--filter-platform",
            "x86_64-unknown-linux-gnu",
        ])
        .current_dir(&context)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&context);
    assert!(
        out.status.success(),
        "the Docker build context does not resolve: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
