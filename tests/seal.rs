//! Sealed hand-offs end to end: the real binary against the fake Microsoft identity platform,
//! sessions sealed to keys made by third-party libraries (`jose` in Node, `jwcrypto` in Python)
//! on P-256 and X25519, and the answers opened by those libraries as callers would (and refused
//! when altered, sealed to another key, replayed, stale or another session's). What the stores
//! hold afterwards: Redis scanned and every value decrypted with the broker's own keyring; the
//! in-memory broker's whole process dumped with gdb's `gcore`. Keys the broker cannot use are
//! refused, and a private key sent by mistake is echoed and logged nowhere. The CLI's `keygen`,
//! `open` and `login-link --seal-to`.

use crate::support;

use oauth_relay::keyring::Keyring;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::broker::{Broker, Planned, BROKER_TOKEN};
use support::fake_microsoft::{FakeConfig, FakeMicrosoft, DEFAULT_TENANT_ID};
use support::{get_url, HttpResponse, RedisServer};

const EMAIL: &str = "ana.silva@contoso.example";
const REDIS_KEY: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

struct Setup {
    _fake: FakeMicrosoft,
    broker: Broker,
}

/// A broker (the `m365` provider of the WK_M365_* variables) on a fake Microsoft; `env` adds
/// settings (Redis, the log level).
fn setup(env: &[(&str, &str)]) -> Setup {
    let planned = Planned::new();
    let cfg = FakeConfig {
        redirect_uris: vec![format!("{}/m365/callback", planned.public)],
        ..FakeConfig::default()
    };
    let fake = FakeMicrosoft::start_with(cfg.clone());
    let base = fake.base_url();
    let mut vars: Vec<(String, String)> = [
        ("WK_M365_CLIENT_ID", cfg.client_id.as_str()),
        ("WK_M365_TENANT_ID", DEFAULT_TENANT_ID),
        ("WK_M365_LOGIN_BASE_URL", &base),
        ("WK_M365_GRAPH_BASE_URL", &base),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if let Some(secret) = &cfg.client_secret {
        vars.push(("WK_M365_CLIENT_SECRET".into(), secret.clone()));
    }
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let broker = planned.start_wk(&vars);
    support::eventually("the broker to be ready", || {
        (broker.relay.get("/ready").status == 200).then_some(())
    });
    Setup {
        _fake: fake,
        broker,
    }
}

impl Setup {
    /// A session for EMAIL, sealed to `seal_to` unless it is null.
    fn session(&self, seal_to: &Value) -> Value {
        let res = self.broker.create(
            "/m365/sessions",
            &json!({ "expected_email": EMAIL, "seal_to": seal_to }),
        );
        assert_eq!(res.status, 200, "{}", res.text());
        res.json()
    }

    /// The link, Microsoft's sign-in and the redirect back, as a browser: the success page.
    fn sign_in(&self, session: &Value) {
        let authorize = self.broker.open(session);
        let res = get_url(&authorize);
        assert_eq!(res.status, 302, "{}", res.text());
        let page = self.broker.arrive(res.header("Location").unwrap());
        assert_eq!(page.status, 200, "{}", page.text());
        assert!(page.text().contains("Microsoft 365 connected"));
    }

    fn token(&self, session: &Value) -> HttpResponse {
        self.broker.token(session)
    }

    fn issuer(&self) -> &str {
        &self.broker.public
    }
}

/// A directory of the test's own, removed when the test ends, passed or not (a core is large).
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("oauth-relay-{what}-{}", support::free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A caller's JOSE library, run as a separate program (tests/support/oidc-provider/jose.mjs,
/// tests/support/jwcrypto_caller.py) with one JSON request and one JSON answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Library {
    Jose,
    Jwcrypto,
}

const LIBRARIES: [Library; 2] = [Library::Jose, Library::Jwcrypto];

impl Library {
    fn call(self, request: &Value) -> Value {
        let mut cmd = match self {
            Library::Jose => {
                let mut c = Command::new("node");
                c.arg(repo("tests/support/oidc-provider/jose.mjs"));
                c
            }
            Library::Jwcrypto => {
                let python = support::python::program("python");
                let mut c = Command::new(python);
                c.arg(repo("tests/support/jwcrypto_caller.py"));
                c
            }
        };
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{self:?}: {e} (run scripts/test.sh)"));
        std::io::Write::write_all(
            child.stdin.as_mut().unwrap(),
            request.to_string().as_bytes(),
        )
        .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{self:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// A key pair the library made: (private JWK, public JWK).
    fn generate(self, crv: &str) -> (Value, Value) {
        let pair = self.call(&json!({ "op": "generate", "crv": crv }));
        (pair["private"].clone(), pair["public"].clone())
    }

    /// Opens `jwe` as a caller expecting an answer of the session `audience` from `issuer`,
    /// having already seen the `seen` jtis, at `now` (seconds; the real time when `None`):
    /// the claims, or the library's refusal.
    fn open(
        self,
        key: &Value,
        jwe: &str,
        issuer: &str,
        audience: &str,
        seen: &[&str],
        now: Option<u64>,
    ) -> Result<(Value, Value), String> {
        let mut request = json!({ "op": "open", "key": key, "jwe": jwe, "issuer": issuer,
                                  "audience": audience, "seen": seen });
        if let Some(now) = now {
            request["now"] = json!(now);
        }
        let answer = self.call(&request);
        match answer["ok"].as_bool() {
            Some(true) => Ok((answer["claims"].clone(), answer["header"].clone())),
            _ => Err(answer["error"].as_str().unwrap_or("?").to_string()),
        }
    }
}

/// The sealed answer of a taken hand-off: the body is `{"sealed": JWE}` and nothing else.
fn sealed_of(res: &HttpResponse) -> String {
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.header("Cache-Control"), Some("no-store"));
    let body = res.json();
    assert_eq!(
        body.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["sealed"],
        "{body}"
    );
    body["sealed"].as_str().unwrap().to_string()
}

/// The secrets a token answer carries, to look for where they must not be.
fn secrets_of(claims: &Value) -> Vec<String> {
    let secrets: Vec<String> = ["access_token", "refresh_token", "id_token"]
        .iter()
        .filter_map(|k| claims[*k].as_str())
        .map(String::from)
        .collect();
    assert_eq!(secrets.len(), 3, "{claims}");
    assert!(secrets.iter().all(|s| s.len() > 40));
    secrets
}

fn state_of(session: &Value) -> &str {
    session["state"].as_str().unwrap()
}

#[test]
fn answers_sealed_to_keys_made_by_jose_and_jwcrypto_open_in_both_libraries() {
    let s = setup(&[]);
    for maker in LIBRARIES {
        for crv in ["P-256", "X25519"] {
            let (mut private, mut public) = maker.generate(crv);
            let kid = format!("{maker:?}-{crv}-key");
            public["kid"] = json!(kid);
            private["kid"] = json!(kid);
            let session = s.session(&public);
            // The key as the broker will seal to it: the caller's, kid and all.
            for member in ["kty", "crv", "x", "y", "kid"] {
                assert_eq!(
                    session["seal_to"].get(member),
                    public.get(member),
                    "{member}"
                );
            }
            s.sign_in(&session);
            assert_eq!(s.broker.status(&session)["status"], "ready");
            let res = s.token(&session);
            let jwe = sealed_of(&res);
            for opener in LIBRARIES {
                let (claims, header) = opener
                    .open(&private, &jwe, s.issuer(), state_of(&session), &[], None)
                    .unwrap_or_else(|e| panic!("{opener:?} refused {maker:?}'s {crv}: {e}"));
                assert_eq!(
                    (&header["alg"], &header["enc"], &header["kid"]),
                    (&json!("ECDH-ES"), &json!("A256GCM"), &json!(kid))
                );
                assert_eq!(header["epk"]["crv"], crv);
                assert_eq!(
                    (&claims["provider"], &claims["email"], &claims["tenant"]),
                    (&json!("m365"), &json!(EMAIL), &json!(DEFAULT_TENANT_ID))
                );
                assert_eq!(claims["token_type"], "Bearer");
                assert!(claims["subject"].as_str().is_some_and(|s| s.contains('/')));
                for secret in secrets_of(&claims).iter().chain([&EMAIL.to_string()]) {
                    assert!(
                        !res.text().contains(secret.as_str()),
                        "in the clear: {secret}"
                    );
                }
            }
            assert_eq!(s.token(&session).status, 410);
            assert_eq!(s.broker.status(&session)["status"], "consumed");
        }
    }
    // The long-poll is answered the same way the moment the sign-in completes.
    let (private, public) = Library::Jose.generate("X25519");
    let session = s.session(&public);
    let path = format!("/token/{}?wait=30", state_of(&session));
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| s.broker.relay.get_auth(&path, BROKER_TOKEN));
        std::thread::sleep(Duration::from_millis(200));
        assert!(!waiter.is_finished());
        s.sign_in(&session);
        let jwe = sealed_of(&waiter.join().unwrap());
        let (claims, _) = Library::Jwcrypto
            .open(&private, &jwe, s.issuer(), state_of(&session), &[], None)
            .unwrap();
        assert_eq!(claims["aud"], state_of(&session));
    });
    // Without seal_to, nothing changes: the tokens in the clear.
    let clear = s.session(&Value::Null);
    assert_eq!(clear["seal_to"], Value::Null);
    s.sign_in(&clear);
    assert!(s.token(&clear).json()["access_token"].is_string());
}

/// Flips one character in the middle of part `part` of a compact JWE.
fn altered(jwe: &str, part: usize) -> String {
    let mut parts: Vec<String> = jwe.split('.').map(String::from).collect();
    let mut chars: Vec<char> = parts[part].chars().collect();
    let at = chars.len() / 2;
    chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
    parts[part] = chars.into_iter().collect();
    parts.join(".")
}

#[test]
fn altered_foreign_replayed_and_stale_answers_are_refused_by_both_libraries() {
    let s = setup(&[]);
    let (private, public) = Library::Jose.generate("P-256");
    let (other, _) = Library::Jwcrypto.generate("P-256");
    let a = s.session(&public);
    let b = s.session(&public);
    s.sign_in(&a);
    s.sign_in(&b);
    let jwe_a = sealed_of(&s.token(&a));
    let jwe_b = sealed_of(&s.token(&b));
    let (state_a, iss) = (state_of(&a), s.issuer());
    for lib in LIBRARIES {
        let (claims, _) = lib.open(&private, &jwe_a, iss, state_a, &[], None).unwrap();
        // What makes refusing possible travels inside the seal.
        let (iat, exp) = (
            claims["iat"].as_u64().unwrap(),
            claims["exp"].as_u64().unwrap(),
        );
        assert_eq!(exp, iat + 600 + 60, "the hand-out window and the grace");
        assert_eq!(claims["aud"], state_a);
        assert_eq!(claims["iss"], iss);
        let jti = claims["jti"].as_str().unwrap();
        let (claims_b, _) = lib
            .open(&private, &jwe_b, iss, state_of(&b), &[], None)
            .unwrap();
        assert_ne!(claims_b["jti"], claims["jti"]);
        let refused = |jwe: &str, key: &Value, aud: &str, seen: &[&str], now: Option<u64>| {
            lib.open(key, jwe, iss, aud, seen, now)
                .expect_err("an answer that must be refused was opened")
        };
        // A replay: the same answer again, to a caller that keeps the jtis it saw.
        let e = refused(&jwe_a, &private, state_a, &[jti], None);
        assert!(e.contains("replayed"), "{lib:?}: {e}");
        // Another session's answer passed off as this one's.
        let e = refused(&jwe_b, &private, state_a, &[], None);
        assert!(e.to_lowercase().contains("aud"), "{lib:?}: {e}");
        // Stale: past exp it is refused (jwcrypto allows clocks 60 s of leeway by default), a
        // moment before exp it is not.
        let e = refused(&jwe_a, &private, state_a, &[], Some(exp + 61));
        assert!(e.to_lowercase().contains("exp"), "{lib:?}: {e}");
        assert!(lib
            .open(&private, &jwe_a, iss, state_a, &[], Some(exp - 1))
            .is_ok());
        // Another key, and any part altered (the header is authenticated too).
        refused(&jwe_a, &other, state_a, &[], None);
        for part in [0, 2, 3, 4] {
            refused(&altered(&jwe_a, part), &private, state_a, &[], None);
        }
        // Another issuer.
        assert!(lib
            .open(
                &private,
                &jwe_a,
                "https://elsewhere.example",
                state_a,
                &[],
                None
            )
            .is_err());
    }
}

/// Every value in Redis (string, hash field, set and sorted-set member, list item) with the
/// contexts the broker seals under: the key, and `key/field` for a hash field.
fn redis_values(redis: &RedisServer) -> Vec<(Vec<String>, Vec<u8>)> {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_connection().unwrap();
    let keys: Vec<String> = redis::Commands::scan(&mut con)
        .unwrap()
        .collect::<Result<Vec<String>, _>>()
        .unwrap();
    assert!(!keys.is_empty());
    let mut out = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query(&mut con).unwrap();
        let values: Vec<(Vec<String>, Vec<u8>)> = match kind.as_str() {
            "string" => {
                let v: Vec<u8> = redis::cmd("GET").arg(&key).query(&mut con).unwrap();
                vec![(vec![key.clone()], v)]
            }
            "hash" => {
                let fields: Vec<(String, Vec<u8>)> =
                    redis::cmd("HGETALL").arg(&key).query(&mut con).unwrap();
                fields
                    .into_iter()
                    .flat_map(|(f, v)| {
                        [
                            (vec![key.clone()], f.clone().into_bytes()),
                            (vec![key.clone(), format!("{key}/{f}")], v),
                        ]
                    })
                    .collect()
            }
            "zset" | "set" | "list" => {
                let cmd = match kind.as_str() {
                    "zset" => redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).clone(),
                    "set" => redis::cmd("SMEMBERS").arg(&key).clone(),
                    _ => redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).clone(),
                };
                let members: Vec<Vec<u8>> = cmd.query(&mut con).unwrap();
                members
                    .into_iter()
                    .map(|m| (vec![key.clone()], m))
                    .collect()
            }
            other => panic!("a {other} at {key}: this test must learn to read it"),
        };
        out.push((vec![], key.into_bytes()));
        out.extend(values);
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn redis_holds_no_token_and_nothing_the_brokers_key_opens_after_a_sealed_sign_in() {
    let redis = RedisServer::start();
    let url = redis.url();
    let s = setup(&[
        ("OAUTH_RELAY_REDIS_URL", &url),
        ("OAUTH_RELAY_ENCRYPTION_KEY", REDIS_KEY),
    ]);
    let (private, public) = Library::Jose.generate("X25519");
    let sealed = s.session(&public);
    s.sign_in(&sealed);
    // The control: a session without seal_to, whose tokens wait in Redis too.
    let clear = s.session(&Value::Null);
    s.sign_in(&clear);

    // Everything Redis holds now, and everything in it the broker's own keyring opens, tried
    // as the broker would (under the key, or key/field) and at every offset (values carry a
    // prefix before what is sealed).
    let stored = redis_values(&redis);
    let keyring = Keyring::parse(REDIS_KEY).unwrap();
    let mut opened: Vec<Vec<u8>> = Vec::new();
    for (contexts, value) in &stored {
        for context in contexts {
            for at in 0..value.len().min(80) {
                if let Some(plain) = keyring.open(context.as_bytes(), &value[at..]) {
                    opened.push(plain);
                }
            }
        }
    }

    let clear_tokens = s.token(&clear).json();
    let jwe = sealed_of(&s.token(&sealed));
    let (claims, _) = Library::Jose
        .open(&private, &jwe, s.issuer(), state_of(&sealed), &[], None)
        .unwrap();
    // The method finds tokens where they are: the control's, decrypted with the keyring.
    let control = clear_tokens["refresh_token"].as_str().unwrap();
    assert!(opened.iter().any(|p| contains(p, control)));
    assert!(!stored.iter().any(|(_, v)| contains(v, control)));
    // What the keyring opens of the sealed session's hand-off is that JWE, and no more.
    assert!(opened.iter().any(|p| contains(p, &jwe)));
    for secret in secrets_of(&claims) {
        assert!(
            !stored.iter().any(|(_, v)| contains(v, &secret)),
            "a sealed session's token is in Redis"
        );
        assert!(
            !opened.iter().any(|p| contains(p, &secret)),
            "the broker's keyring opens a sealed session's token"
        );
    }
}

/// How many times `needle` occurs in the file at `path` (grep is fast on a large core).
fn occurrences(path: &Path, needle: &str) -> usize {
    let out = Command::new("grep")
        .args(["-F", "-a", "-o", "-e", needle])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// The in-memory store keeps only the sealed answer: a core dump of the whole broker process,
/// taken while a sealed and a clear hand-off both wait, holds the clear session's tokens and the
/// sealed answer, and none of the sealed session's tokens. glibc is asked to overwrite what the
/// process frees (`perturb`; its per-thread cache, which skips that, off), so the dump shows
/// what the process holds rather than what it dropped and has not reused yet (without it, freed
/// heap keeps such residues: the buffer of the Graph call that carried the access token, the
/// parsed token response; docs/broker.md, "Sealed hand-off").
#[test]
fn the_in_memory_broker_process_holds_no_sealed_token() {
    let s = setup(&[(
        "GLIBC_TUNABLES",
        "glibc.malloc.tcache_count=0:glibc.malloc.perturb=165",
    )]);
    let (private, public) = Library::Jwcrypto.generate("P-256");
    // The control first, the sealed sign-in last: nothing after it overwrites what it left.
    let clear = s.session(&Value::Null);
    s.sign_in(&clear);
    let sealed = s.session(&public);
    s.sign_in(&sealed);

    let dir = TempDir::new("core");
    let dir = &dir.0;
    let pid = s.broker.relay.pid();
    let out = Command::new("gcore")
        .arg("-o")
        .arg(dir.join("core"))
        .arg(pid.to_string())
        .output()
        .expect("gcore (gdb) is not installed: run scripts/test.sh, which installs it");
    let core = dir.join(format!("core.{pid}"));
    assert!(
        core.exists(),
        "gcore wrote no core: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let clear_tokens = s.token(&clear).json();
    let jwe = sealed_of(&s.token(&sealed));
    let (claims, _) = Library::Jwcrypto
        .open(&private, &jwe, s.issuer(), state_of(&sealed), &[], None)
        .unwrap();
    let found = |secret: &str| occurrences(&core, secret);
    let control: Vec<usize> = secrets_of(&clear_tokens).iter().map(|t| found(t)).collect();
    let stored = found(&jwe);
    let leaked: Vec<usize> = secrets_of(&claims).iter().map(|t| found(t)).collect();
    // The method finds what the process holds: the clear session's tokens, the sealed answer.
    assert!(control.iter().all(|n| *n > 0), "control: {control:?}");
    assert!(stored > 0);
    assert_eq!(
        leaked,
        [0, 0, 0],
        "the process holds a sealed session's access, refresh or id token"
    );
}

#[test]
fn keys_the_broker_cannot_use_are_refused_and_a_private_one_is_repeated_nowhere() {
    let s = setup(&[("OAUTH_RELAY_LOG_LEVEL", "debug")]);
    let b64 = |n: usize, byte: u8| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(vec![byte; n])
    };
    let (p256_private, p256) = Library::Jose.generate("P-256");
    let (x25519_private, x25519) = Library::Jwcrypto.generate("X25519");
    let with = |base: &Value, k: &str, v: Value| {
        let mut j = base.clone();
        j[k] = v;
        j
    };
    let cases = [
        (
            json!("a string"),
            "seal_to must be a public JWK (a JSON object)",
        ),
        (
            json!({ "kty": "RSA", "n": b64(256, 7), "e": "AQAB" }),
            "RSA keys are not supported",
        ),
        (
            json!({ "kty": "EC", "crv": "P-384", "x": b64(48, 1), "y": b64(48, 2) }),
            "EC keys must be on P-256",
        ),
        (
            json!({ "kty": "OKP", "crv": "Ed25519", "x": b64(32, 3) }),
            "is for signatures; use an X25519 key",
        ),
        (
            with(
                &with(&p256, "x", json!(b64(32, 255))),
                "y",
                json!(b64(32, 255)),
            ),
            "not a point on P-256",
        ),
        (
            with(&p256, "y", json!("short")),
            "x and y must be the base64url",
        ),
        (
            with(&x25519, "x", json!(b64(32, 0))),
            "low-order X25519 point",
        ),
        (with(&p256, "use", json!("sig")), "use must be \"enc\""),
        (
            with(&x25519, "key_ops", json!(["sign"])),
            "key_ops must allow",
        ),
        (with(&p256, "alg", json!("RSA-OAEP")), "alg must be ECDH-ES"),
        (p256_private.clone(), "holds a private key"),
        (x25519_private.clone(), "holds a private key"),
    ];
    let secrets = [
        p256_private["d"].as_str().unwrap(),
        x25519_private["d"].as_str().unwrap(),
    ];
    for (i, (jwk, words)) in cases.iter().enumerate() {
        // Both session endpoints: Microsoft's own, and the general one.
        let (path, mut body) = if i % 2 == 0 {
            ("/m365/sessions", json!({ "expected_email": EMAIL }))
        } else {
            (
                "/sessions",
                json!({ "provider": "m365", "expected_email": EMAIL }),
            )
        };
        body["seal_to"] = jwk.clone();
        let res = s.broker.create(path, &body);
        assert_eq!(res.status, 400, "{jwk}: {}", res.text());
        let answer = res.json();
        assert_eq!(answer["status"], "error");
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(words), "{jwk}: {message}");
        for d in secrets {
            assert!(!res.text().contains(d), "the private key came back");
        }
    }
    // The requests were logged (at debug level), the private keys nowhere.
    // The access log is written off the request path: wait for every refusal's line.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let logs = loop {
        let logs = s.broker.relay.logs();
        let refusals = logs.iter().filter(|l| l.contains("\"status\":400")).count();
        if refusals >= cases.len() || std::time::Instant::now() > deadline {
            break logs;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(logs.len() > cases.len());
    for line in logs {
        for d in secrets {
            assert!(!line.contains(d), "a private key in the log: {line}");
        }
    }
}

fn oauth_relay(args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(support::BIN)
        .args(args)
        .env_remove("OAUTH_RELAY_BROKER_TOKEN")
        .env_remove("WK_M365_BROKER_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command that refuses before reading its input closes the pipe: what it answered is
    // what the test checks, so a write it never read is no failure.
    match std::io::Write::write_all(child.stdin.as_mut().unwrap(), stdin.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        written => written.unwrap(),
    }
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn keygen_open_and_login_link_seal_to_round_trip() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::PermissionsExt;
    let s = setup(&[]);
    let dir = TempDir::new("keys");
    let dir = &dir.0;
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();

    // keygen: the private JWK in a file only its owner reads, the public one printed.
    let out = oauth_relay(&["keygen", "--out", &path("caller.jwk")], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let public: Value = serde_json::from_slice(&out.stdout).unwrap();
    let file = std::fs::read_to_string(path("caller.jwk")).unwrap();
    let private: Value = serde_json::from_str(&file).unwrap();
    let mode = std::fs::metadata(path("caller.jwk"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(public.get("d").is_none() && private["d"].is_string());
    assert_eq!(
        (&public["kty"], &public["crv"]),
        (&json!("EC"), &json!("P-256"))
    );
    for member in ["kty", "crv", "x", "y", "kid"] {
        assert_eq!(public[member], private[member], "{member}");
    }
    // Its kid is the RFC 7638 thumbprint, as jose computes it.
    let thumbprint = Library::Jose.call(&json!({ "op": "thumbprint", "jwk": public }));
    assert_eq!(public["kid"], thumbprint["thumbprint"]);
    // Never over an existing key.
    let again = oauth_relay(&["keygen", "--out", &path("caller.jwk")], "");
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("never overwrites"));
    assert_eq!(std::fs::read_to_string(path("caller.jwk")).unwrap(), file);
    let x = oauth_relay(
        &["keygen", "--curve", "x25519", "--out", &path("x.jwk")],
        "",
    );
    assert!(x.status.success());
    let x_public: Value = serde_json::from_slice(&x.stdout).unwrap();
    assert_eq!(
        (&x_public["kty"], &x_public["crv"]),
        (&json!("OKP"), &json!("X25519"))
    );
    let other = oauth_relay(&["keygen", "--out", &path("other.jwk")], "");
    assert!(other.status.success());

    // The printed key is what a caller sends; `open` opens the answer with the key file.
    let session = s.session(&public);
    s.sign_in(&session);
    let answer = s.token(&session).text();
    let state = state_of(&session);
    let key = path("caller.jwk");
    let opened = oauth_relay(&["open", "--key", &key, "--audience", state], &answer);
    assert!(opened.status.success(), "{}", text(&opened.stderr));
    let claims: Value = serde_json::from_slice(&opened.stdout).unwrap();
    assert_eq!(claims["aud"], state);
    assert_eq!(claims["email"], EMAIL);
    assert!(claims["access_token"].is_string());
    // The JWE alone opens too, and jose opens it with the same key file.
    let jwe = serde_json::from_str::<Value>(&answer).unwrap()["sealed"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(oauth_relay(&["open", "--key", &key], &jwe).status.success());
    let (by_jose, _) = Library::Jose
        .open(&private, &jwe, s.issuer(), state, &[], None)
        .unwrap();
    assert_eq!(by_jose["jti"], claims["jti"]);
    // Refused: another session's audience, another key, another curve, an altered answer.
    for (args, words) in [
        (
            vec!["--key", &key, "--audience", "another-state"],
            "another audience",
        ),
        (
            vec!["--key", &path("other.jwk")],
            "does not open with this key",
        ),
        (vec!["--key", &path("x.jwk")], "another curve"),
    ] {
        let mut all = vec!["open"];
        all.extend(args);
        let out = oauth_relay(&all, &answer);
        assert_eq!(out.status.code(), Some(1));
        assert!(text(&out.stderr).contains(words), "{}", text(&out.stderr));
        assert!(out.stdout.is_empty());
    }
    let out = oauth_relay(&["open", "--key", &key], &altered(&jwe, 3));
    assert_eq!(out.status.code(), Some(1));
    // A public key is no key to open with.
    std::fs::write(path("public.jwk"), public.to_string()).unwrap();
    let out = oauth_relay(&["open", "--key", &path("public.jwk")], &answer);
    assert!(text(&out.stderr).contains("no private part"));

    // login-link: with the private key it opens the answer and prints the tokens; with the
    // public key it prints the sealed answer as it came.
    for (file, opens) in [(key.clone(), true), (path("public.jwk"), false)] {
        let mut child = Command::new(support::BIN)
            .args(["login-link", EMAIL, "--seal-to", &file, "--wait"])
            .args(["--timeout-secs", "60"])
            .env("WK_CALLBACK_SERVER", s.broker.relay.url(""))
            .env("WK_M365_BROKER_TOKEN", BROKER_TOKEN)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let login_url = lines.next().unwrap().unwrap();
        let login_url = login_url.strip_prefix("login_url: ").unwrap().to_string();
        s.sign_in(&json!({ "login_url": login_url }));
        let last: Value = serde_json::from_str(&lines.last().unwrap().unwrap()).unwrap();
        assert!(child.wait().unwrap().success());
        if opens {
            assert!(
                last["access_token"].is_string() && last["jti"].is_string(),
                "{last}"
            );
        } else {
            assert!(last["sealed"].is_string(), "{last}");
            let out = oauth_relay(&["open", "--key", &key], &last.to_string());
            assert!(out.status.success(), "{}", text(&out.stderr));
        }
    }
    // A key login-link cannot send is refused before anything is asked of the broker.
    std::fs::write(path("rsa.jwk"), r#"{"kty":"RSA","n":"AQAB","e":"AQAB"}"#).unwrap();
    let out = Command::new(support::BIN)
        .args(["login-link", EMAIL, "--seal-to", &path("rsa.jwk")])
        .env("WK_CALLBACK_SERVER", s.broker.relay.url(""))
        .env("WK_M365_BROKER_TOKEN", BROKER_TOKEN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("RSA keys are not supported"));
}

/// Issue 16 for kept connections: the credential of a connection made by a sealed session
/// travels inside the seal, and a connection's access token, asked for with a `seal_to`, comes
/// sealed to it (`aud` the connection), opened by jose and jwcrypto on both curves; the
/// `token` command opens it with a key file, or prints it sealed.
#[test]
fn kept_connections_hand_out_their_credential_and_access_tokens_sealed() {
    let dir = TempDir::new("sealed-connections");
    let file = dir.0.join("connections.redb");
    let file = file.to_str().unwrap();
    let s = setup(&[
        ("OAUTH_RELAY_ENCRYPTION_KEY", REDIS_KEY),
        ("OAUTH_RELAY_CONNECTIONS_FILE", file),
    ]);
    let (private, public) = Library::Jose.generate("P-256");
    let res = s.broker.create(
        "/m365/sessions",
        &json!({ "expected_email": EMAIL, "seal_to": public, "keep": true }),
    );
    assert_eq!(res.status, 200, "{}", res.text());
    let session = res.json();
    assert_eq!(session["keep"], true);
    s.sign_in(&session);
    let res = s.token(&session);
    let jwe = sealed_of(&res);
    let (claims, _) = Library::Jwcrypto
        .open(&private, &jwe, s.issuer(), state_of(&session), &[], None)
        .unwrap();
    assert!(claims["refresh_token"].is_null(), "the broker keeps it");
    let id = claims["connection"]["id"].as_str().unwrap().to_string();
    let credential = claims["connection"]["credential"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(credential.starts_with("ckey_"));
    assert!(!res.text().contains(&credential) && !res.text().contains(&id));

    let relay = &s.broker.relay;
    let auth = format!("Bearer {credential}");
    let ask = |body: &Value| {
        relay.request(
            "POST",
            &format!("/connections/{id}/token"),
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body.to_string().as_bytes(),
        )
    };
    let clear = ask(&json!({})).json();
    let access = clear["access_token"].as_str().unwrap().to_string();
    assert_eq!(access, claims["access_token"].as_str().unwrap());
    for maker in LIBRARIES {
        for crv in ["P-256", "X25519"] {
            let (key, public) = maker.generate(crv);
            let res = ask(&json!({ "seal_to": public, "min_ttl": 60 }));
            let jwe = sealed_of(&res);
            assert!(!res.text().contains(&access), "the token in the clear");
            for opener in LIBRARIES {
                let (claims, header) = opener
                    .open(&key, &jwe, s.issuer(), &id, &[], None)
                    .unwrap_or_else(|e| panic!("{opener:?} refused {maker:?}'s {crv}: {e}"));
                assert_eq!(header["epk"]["crv"], crv);
                assert_eq!(claims["access_token"], access.as_str());
                assert_eq!(claims["connection"], id.as_str());
                assert_eq!(claims["aud"], id.as_str());
                assert_eq!(claims["token_type"], clear["token_type"]);
                assert!(claims["expires_in"].as_u64().unwrap() > 60);
                assert_eq!(
                    claims["exp"].as_u64().unwrap(),
                    claims["iat"].as_u64().unwrap() + 60
                );
                // Another connection's answer is refused by its audience.
                assert!(opener
                    .open(&key, &jwe, s.issuer(), "conn_another", &[], None)
                    .is_err());
            }
        }
    }
    // A key the broker cannot seal to: 400, nothing sealed or handed out.
    let rsa = ask(&json!({ "seal_to": { "kty": "RSA", "n": "AQAB", "e": "AQAB" } }));
    assert_eq!(rsa.status, 400);
    assert!(!rsa.text().contains(&access));

    // oauth-relay token --seal-to: a private key opens it (checking aud), a public key prints
    // the sealed answer.
    std::fs::write(dir.0.join("private.jwk"), private.to_string()).unwrap();
    std::fs::write(dir.0.join("public.jwk"), public.to_string()).unwrap();
    let server = relay.url("");
    for (file, opens) in [("private.jwk", true), ("public.jwk", false)] {
        let key = dir.0.join(file);
        let out = Command::new(support::BIN)
            .args(["token", &id, "--server", &server, "--credential-stdin"])
            .arg("--seal-to")
            .arg(&key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                std::io::Write::write_all(
                    child.stdin.as_mut().unwrap(),
                    format!("{credential}\n").as_bytes(),
                )?;
                child.wait_with_output()
            })
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let printed = text(&out.stdout);
        if opens {
            assert_eq!(printed.trim(), access);
        } else {
            let sealed: Value = serde_json::from_str(printed.trim()).unwrap();
            let (claims, _) = Library::Jose
                .open(
                    &private,
                    sealed["sealed"].as_str().unwrap(),
                    s.issuer(),
                    &id,
                    &[],
                    None,
                )
                .unwrap();
            assert_eq!(claims["access_token"], access.as_str());
        }
    }
}
