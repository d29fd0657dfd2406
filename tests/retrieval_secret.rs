//! Retrieval that needs more than the state: a client registers its state with
//! base64url(SHA-256(secret)) and only a retrieval presenting the secret in `X-Retrieval-Secret`
//! gets the code. Anyone else gets exactly the unknown state's answer and takes nothing; long-polls
//! behave the same; registration with a hash needs no operator token on a server without one
//! (docs/api.md's example works on a server started with no settings), and with a token
//! everything needs it; across replicas on Redis; and the `register` and `wait` commands.

use crate::support;

use serde_json::json;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use support::{eventually, oauth_relay, HttpResponse, RedisServer, Relay, BIN};

const API_TOKEN: &str = "api-token-0123456789abcdef";
const HEADER: &str = "X-Retrieval-Secret";

/// base64url(SHA-256(secret)) without padding, computed the way docs/api.md tells clients to:
/// with openssl, not with the relay's code.
fn hash_of(secret: &str) -> String {
    let mut child = Command::new("sh")
        .args([
            "-c",
            "openssl dgst -sha256 -binary | base64 | tr '+/' '-_' | tr -d '=\\n'",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl (installed by scripts/test.sh)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(secret.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let hash = String::from_utf8(out.stdout).unwrap();
    assert_eq!(hash.len(), 43, "{hash:?}");
    hash
}

fn register(relay: &Relay, body: serde_json::Value, auth: Option<&str>) -> HttpResponse {
    let bearer = auth.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("Authorization", b));
    }
    relay.request("POST", "/api/states", &headers, body.to_string().as_bytes())
}

fn retrieve(relay: &Relay, path: &str, secret: Option<&str>, auth: Option<&str>) -> HttpResponse {
    let bearer = auth.map(|t| format!("Bearer {t}"));
    let mut headers = vec![];
    if let Some(s) = secret {
        headers.push((HEADER, s));
    }
    if let Some(b) = &bearer {
        headers.push(("Authorization", b));
    }
    relay.request("GET", path, &headers, b"")
}

/// Same status, same headers but the date, same bytes.
fn assert_same_answer(a: &HttpResponse, b: &HttpResponse, what: &str) {
    assert_eq!(a.status, b.status, "{what}");
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

#[test]
fn only_the_secret_gets_the_code_and_a_wrong_one_does_not_use_it_up() {
    // Registered-states mode without any operator token: the client's secret is the only key.
    let relay = Relay::start(&["--require-registered-state"]);
    let secret = "s3cret-only-the-client-has-0123456789";
    let created = register(
        &relay,
        json!({ "state": "st-1", "ttl_secs": 300, "retrieval_hash": hash_of(secret) }),
        None,
    );
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(created.json()["state"], "st-1");
    // Registered: nobody claims it again (without a hash nobody may register here at all).
    let again = register(
        &relay,
        json!({ "state": "st-1", "retrieval_hash": hash_of("attacker") }),
        None,
    );
    assert_eq!(again.status, 409);
    assert_eq!(again.json()["message"], "State already registered or used");
    let page = relay.get("/callback?code=the-code&state=st-1");
    assert_eq!(page.status, 200);
    let unknown = retrieve(&relay, "/api/callback/no-such-state", None, None);
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["message"], "Callback not found or expired");
    for (what, presented) in [
        ("no secret", None),
        ("a wrong secret", Some("wrong")),
        ("the hash as the secret", Some(hash_of(secret)).as_deref()),
        ("the secret with a space", Some(" s3cret")),
    ] {
        let refused = retrieve(&relay, "/api/callback/st-1", presented, None);
        assert_same_answer(&refused, &unknown, what);
        let waited = retrieve(&relay, "/api/callback/st-1?wait=0", presented, None);
        assert_same_answer(&waited, &unknown, what);
    }
    let got = retrieve(&relay, "/api/callback/st-1", Some(secret), None);
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["auth_code"], "the-code");
    assert_eq!(got.header("Cache-Control"), Some("no-store"));
    // The holder learns it is gone; others still learn nothing.
    assert_eq!(
        retrieve(&relay, "/api/callback/st-1", Some(secret), None).status,
        410
    );
    let after = retrieve(&relay, "/api/callback/st-1", Some("wrong"), None);
    assert_same_answer(&after, &unknown, "a wrong secret after retrieval");
    // The secret appears in no log line; the hash neither.
    for line in relay.logs() {
        assert!(
            !line.contains(secret) && !line.contains(&hash_of(secret)),
            "{line}"
        );
    }
}

#[test]
fn registration_rules() {
    let hash = hash_of("x");
    // No API token (registered-states mode or not): anyone may register with a hash; without
    // one the refusal names the setting that allows it; a malformed hash is refused.
    for mode in [&["--require-registered-state"][..], &[]] {
        let relay = Relay::start(mode);
        let no_hash = register(&relay, json!({ "state": "a" }), None);
        assert_eq!(no_hash.status, 400, "{mode:?}: {}", no_hash.text());
        let message = no_hash.json()["message"].as_str().unwrap().to_string();
        assert!(
            message.contains("retrieval_hash") && message.contains("OAUTH_RELAY_API_TOKEN"),
            "{message}"
        );
        for bad in [json!("short"), json!(42), json!(format!("{hash}="))] {
            let res = register(&relay, json!({ "state": "a", "retrieval_hash": bad }), None);
            assert_eq!(res.status, 400, "{mode:?}: {bad}");
        }
        let res = register(
            &relay,
            json!({ "state": "a", "retrieval_hash": hash }),
            None,
        );
        assert_eq!(res.status, 201, "{mode:?}: {}", res.text());
    }
    // An unregistered state's callback is still refused in registered-states mode.
    let relay = Relay::start(&["--require-registered-state"]);
    assert_eq!(
        relay.get("/callback?code=c&state=never-registered").status,
        400
    );
    drop(relay);

    // With an API token (registered-states mode or not), everything under /api/ needs it: with
    // a hash or without.
    for mode in [
        &["--require-registered-state", "--api-token", API_TOKEN][..],
        &["--api-token", API_TOKEN],
    ] {
        let relay = Relay::start(mode);
        for body in [
            json!({ "state": "b", "retrieval_hash": hash }),
            json!({ "state": "b" }),
        ] {
            let refused = register(&relay, body, None);
            assert_eq!(refused.status, 401, "{mode:?}");
            assert_eq!(refused.json()["message"], "Missing or invalid API token");
        }
        assert_eq!(
            register(
                &relay,
                json!({ "state": "b", "retrieval_hash": hash }),
                Some(API_TOKEN)
            )
            .status,
            201
        );
        assert_eq!(
            register(&relay, json!({ "state": "c" }), Some(API_TOKEN)).status,
            201
        );
    }
}

#[test]
fn registrations_with_a_hash_are_bounded_like_callbacks() {
    let relay = Relay::start(&["--require-registered-state", "--max-pending", "2"]);
    for (state, status) in [("p1", 201), ("p2", 201), ("p3", 503)] {
        let res = register(
            &relay,
            json!({ "state": state, "retrieval_hash": hash_of(state) }),
            None,
        );
        assert_eq!(res.status, status, "{state}: {}", res.text());
    }
}

#[test]
fn the_api_token_alone_does_not_open_a_guarded_callback() {
    let relay = Relay::start(&["--require-registered-state", "--api-token", API_TOKEN]);
    let secret = "client-secret-0123456789";
    register(
        &relay,
        json!({ "state": "g", "retrieval_hash": hash_of(secret) }),
        Some(API_TOKEN),
    );
    register(&relay, json!({ "state": "plain" }), Some(API_TOKEN));
    relay.get("/callback?code=guarded-code&state=g");
    relay.get("/callback?code=plain-code&state=plain");
    // The operator's token, which every client holds, is not the client's secret.
    let unknown = retrieve(&relay, "/api/callback/unknown", None, Some(API_TOKEN));
    let token_only = retrieve(&relay, "/api/callback/g", None, Some(API_TOKEN));
    assert_same_answer(&token_only, &unknown, "the token alone");
    let wrong = retrieve(&relay, "/api/callback/g", Some("wrong"), Some(API_TOKEN));
    assert_same_answer(&wrong, &unknown, "the token and a wrong secret");
    // A secret opens only what it guards: the plain state is the token's.
    let plain_with_secret = retrieve(&relay, "/api/callback/plain", Some(secret), Some(API_TOKEN));
    assert_eq!(plain_with_secret.json()["auth_code"], "plain-code");
    let got = retrieve(&relay, "/api/callback/g", Some(secret), Some(API_TOKEN));
    assert_eq!(got.json()["auth_code"], "guarded-code");
}

/// With an API token configured, a request without it is refused at once, whatever else it
/// carries: a retrieval secret (right, wrong or junk) is no way past the token, with `wait` or
/// without, so nobody without the token can park long-polls and fill OAUTH_RELAY_MAX_WAITERS.
#[test]
fn with_an_api_token_a_retrieval_secret_is_no_way_past_it() {
    let relay = Relay::start(&[
        "--require-registered-state",
        "--api-token",
        API_TOKEN,
        "--max-waiters",
        "2",
    ]);
    let secret = "client-secret-0123456789";
    register(
        &relay,
        json!({ "state": "g", "retrieval_hash": hash_of(secret) }),
        Some(API_TOKEN),
    );
    let refused = retrieve(&relay, "/api/callback/unknown", None, None);
    assert_eq!(refused.status, 401);
    for presented in ["junk", "wrong", secret] {
        for path in [
            "/api/callback/g",
            "/api/callback/g?wait=60",
            "/api/callback/x?wait=60",
        ] {
            // Each answered at once (a parked one would hold this thread for a minute; the
            // parked count below shows none was).
            let res = retrieve(&relay, path, Some(presented), None);
            assert_same_answer(&res, &refused, &format!("{presented} {path}"));
        }
    }
    assert_eq!(waiting_clients(&relay), 0);
    // The places are all there for clients with the token.
    assert_eq!(relay.get("/callback?code=c&state=g").status, 200);
    let got = retrieve(
        &relay,
        "/api/callback/g?wait=60",
        Some(secret),
        Some(API_TOKEN),
    );
    assert_eq!(got.json()["auth_code"], "c");
}

fn waiting_clients(relay: &Relay) -> u64 {
    relay
        .get("/metrics")
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("oauth_relay_waiting_clients "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

#[test]
fn long_polls_need_the_secret_and_a_wrong_one_is_not_told_the_callback_landed() {
    let relay = Relay::start(&["--require-registered-state"]);
    let secret = "long-poll-secret-0123456789";
    register(
        &relay,
        json!({ "state": "lp", "retrieval_hash": hash_of(secret) }),
        None,
    );
    // A stranger long-polls with a wrong secret over a raw socket we can look at.
    let mut stranger = std::net::TcpStream::connect(relay.addr).unwrap();
    write!(
        stranger,
        "GET /api/callback/lp?wait=60 HTTP/1.1\r\nHost: x\r\n{HEADER}: wrong\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    eventually("the stranger to park", || {
        (waiting_clients(&relay) == 1).then_some(())
    });
    let addr = relay.addr;
    let holder = std::thread::spawn(move || {
        support::http(
            addr,
            "GET",
            "/api/callback/lp?wait=60",
            &[(HEADER, "long-poll-secret-0123456789")],
            b"",
        )
    });
    eventually("the holder to park", || {
        (waiting_clients(&relay) == 2).then_some(())
    });
    assert_eq!(relay.get("/callback?code=lp-code&state=lp").status, 200);
    let got = holder.join().unwrap();
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["auth_code"], "lp-code");
    // The stranger was woken with the holder, looked, and waits on: still parked, no answer.
    eventually("the stranger to be parked again", || {
        (waiting_clients(&relay) == 1).then_some(())
    });
    stranger.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    match stranger.read(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the stranger was answered early: {other:?}"),
    }
}

#[test]
fn across_replicas_on_redis() {
    let redis = RedisServer::start();
    let key = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let url = redis.url();
    let env = [
        ("OAUTH_RELAY_REDIS_URL", url.as_str()),
        ("OAUTH_RELAY_ENCRYPTION_KEY", key),
        ("OAUTH_RELAY_REQUIRE_REGISTERED_STATE", "true"),
    ];
    let [a, b, c] = [(); 3].map(|_| {
        let relay = Relay::start_env(&[], &env);
        eventually("the replica to be ready", || {
            (relay.get("/ready").status == 200).then_some(())
        });
        relay
    });
    let secret = "replicated-secret-0123456789";
    assert_eq!(
        register(
            &a,
            json!({ "state": "r1", "retrieval_hash": hash_of(secret) }),
            None
        )
        .status,
        201
    );
    assert_eq!(
        register(
            &b,
            json!({ "state": "r1", "retrieval_hash": hash_of("x") }),
            None
        )
        .status,
        409
    );
    // The holder long-polls on C; the callback lands on B.
    let c_addr = c.addr;
    let holder = std::thread::spawn(move || {
        support::http(
            c_addr,
            "GET",
            "/api/callback/r1?wait=60",
            &[(HEADER, "replicated-secret-0123456789")],
            b"",
        )
    });
    eventually("the holder to park on C", || {
        (waiting_clients(&c) == 1).then_some(())
    });
    // A wrong secret on A, before the callback: nothing.
    let unknown = retrieve(&a, "/api/callback/unknown", None, None);
    assert_same_answer(
        &retrieve(&a, "/api/callback/r1", Some("wrong"), None),
        &unknown,
        "wrong secret on A",
    );
    assert_eq!(b.get("/callback?code=r1-code&state=r1").status, 200);
    // Wrong secrets and none, on every replica, after the callback: the unknown state's answer,
    // and they do not use it up.
    for (r, what) in [(&a, "A"), (&b, "B"), (&c, "C")] {
        for presented in [None, Some("wrong")] {
            assert_same_answer(
                &retrieve(r, "/api/callback/r1", presented, None),
                &unknown,
                what,
            );
        }
    }
    let got = holder.join().unwrap();
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["auth_code"], "r1-code");
    assert_eq!(
        retrieve(&a, "/api/callback/r1", Some(secret), None).status,
        410
    );
    assert_same_answer(
        &retrieve(&b, "/api/callback/r1", Some("wrong"), None),
        &unknown,
        "wrong secret after retrieval",
    );
    // Redis holds neither the secret nor its hash.
    let dump = redis.dump();
    for needle in [secret.to_string(), hash_of(secret)] {
        assert!(
            !dump.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle} in Redis"
        );
    }
}

#[test]
fn register_and_wait_commands() {
    let relay = Relay::start(&["--require-registered-state"]);
    let server = relay.url("");
    let out = oauth_relay(&["register", "cli-1", "--server", &server])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(secret.len(), 43, "{secret:?}");
    // Twice: 409, exit 1.
    let again = oauth_relay(&["register", "cli-1", "--server", &server])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already registered"));
    assert_eq!(relay.get("/callback?code=cli-code&state=cli-1").status, 200);
    // A wrong secret waits in vain (its own --timeout-secs) and uses nothing up.
    let wrong = oauth_relay(&[
        "wait",
        "cli-1",
        "--server",
        &server,
        "--timeout-secs",
        "1",
        "--retrieval-secret-env",
        "THE_SECRET",
    ])
    .env("THE_SECRET", "wrong")
    .output()
    .unwrap();
    assert_eq!(wrong.status.code(), Some(1));
    assert!(wrong.stdout.is_empty());
    // An unset variable is named.
    let unset = oauth_relay(&[
        "wait",
        "cli-1",
        "--server",
        &server,
        "--retrieval-secret-env",
        "NOT_SET_ANYWHERE",
    ])
    .output()
    .unwrap();
    assert_eq!(unset.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unset.stderr).contains("NOT_SET_ANYWHERE"));
    // The right one, from standard input.
    let mut waiter = oauth_relay(&[
        "wait",
        "cli-1",
        "--server",
        &server,
        "--retrieval-secret-stdin",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    writeln!(waiter.stdin.take().unwrap(), "{secret}").unwrap();
    let got = waiter.wait_with_output().unwrap();
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(v["auth_code"], "cli-code");

    // From a variable, on a second state.
    let out = oauth_relay(&["register", "cli-2", "--server", &server])
        .output()
        .unwrap();
    let secret = String::from_utf8(out.stdout).unwrap().trim().to_string();
    relay.get("/callback?code=cli-code-2&state=cli-2");
    let got = oauth_relay(&[
        "wait",
        "cli-2",
        "--server",
        &server,
        "--retrieval-secret-env",
        "THE_SECRET",
    ])
    .env("THE_SECRET", &secret)
    .output()
    .unwrap();
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(v["auth_code"], "cli-code-2");
}

/// The API page's example (docs/api.md, "A retrieval secret: the state alone is not enough"),
/// run as written (sh, curl, openssl, the CLI) against a server started with no settings: the
/// registration is 201, and the retrieval with the secret gets the code. The person's redirect
/// (step 2) is a curl to /callback where the example says to send the person.
#[test]
fn the_documented_example_works_on_a_server_with_no_settings() {
    let relay = Relay::start(&[]);
    let page = include_str!("../docs/api.md");
    let section = page
        .split("\n## A retrieval secret")
        .nth(1)
        .expect("docs/api.md's retrieval secret section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("its sh block");
    let lines: Vec<&str> = block.lines().collect();
    let cli_from = lines
        .iter()
        .position(|l| l.starts_with("# or, with the CLI"))
        .expect("the CLI part");
    let person = |line: &str| {
        if line.starts_with("# 2.") {
            format!("curl -s -o /dev/null \"$RELAY/callback?code=doc-code-$STATE&state=$STATE\"\n{line}")
        } else {
            line.to_string()
        }
    };
    let by_hand: Vec<String> = lines[..cli_from].iter().map(|l| person(l)).collect();
    // The CLI lines: the person's redirect comes between `register` and `wait`.
    let with_cli: Vec<String> = lines[cli_from..]
        .iter()
        .map(|l| {
            if l.starts_with("oauth-relay wait") {
                format!("curl -s -o /dev/null \"$RELAY/callback?code=doc-code-$STATE&state=$STATE\"\n{l}")
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(by_hand.iter().any(|l| l.contains("/api/states")));
    assert!(with_cli.iter().any(|l| l.contains("\noauth-relay wait")));
    // `oauth-relay` on the PATH, as the example assumes.
    let bin = std::env::temp_dir().join(format!("doc-example-bin-{}", std::process::id()));
    std::fs::create_dir_all(&bin).unwrap();
    let link = bin.join("oauth-relay");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    for (state, script) in [("doc-1", by_hand), ("doc-2", with_cli)] {
        let out = Command::new("sh")
            .args(["-ec", &script.join("\n")])
            .env("RELAY", relay.url(""))
            .env("STATE", state)
            .env("PATH", &path)
            .env_remove("OAUTH_RELAY_API_TOKEN")
            .env_remove("OAUTH_RELAY_SERVER")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{state}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // What the example prints: the code, once, to the holder of the secret.
        assert!(
            stdout.contains(&format!("\"auth_code\":\"doc-code-{state}\"")),
            "{state}: {stdout}"
        );
        if state == "doc-1" {
            assert!(stdout.contains("\"status\":\"registered\""), "{stdout}");
        }
        assert_eq!(relay.get(&format!("/api/callback/{state}")).status, 404);
    }
    let _ = std::fs::remove_dir_all(&bin);
}
