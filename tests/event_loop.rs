//! The relay's steps on Redis (a callback stored, a code taken, a state registered, a
//! long-poll's looks and answer) and a kept connection's fresh token are awaited on the event
//! loop, not run on the blocking pool: with that pool one thread big and the thread held by a
//! sign-in whose token endpoint never answers, the relay still serves all of them on Redis,
//! while a route that does run on the pool waits for it. And a take the client hung up on
//! mid-way still runs to its end, as it did on the pool: the code is used up and the log says
//! it was handed out, never taken silently.

use crate::support;

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;
use support::broker::{providers_env, short_hash, Broker, Planned};
use support::fake_github::{FakeGitHub, FakeGitHubConfig, GitHubUser};
use support::redis_topology::Standalone;
use support::relay_api::{hash_of, metric, As};
use support::{eventually, get_url, http, RedisServer, Relay};

const KEY: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// A token endpoint that accepts connections and never answers, until `release`: then it closes
/// them. Tells `held` of each connection it holds.
struct Hanging {
    url: String,
    release: mpsc::Sender<()>,
    held: mpsc::Receiver<()>,
}

impl Hanging {
    fn start() -> Hanging {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let (release, released) = mpsc::channel::<()>();
        let (hold, held) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let _ = hold.send(());
            // Held open, unanswered, until the test says so.
            let _ = released.recv();
            drop(stream);
        });
        Hanging { url, release, held }
    }
}

/// A request sent on a socket of its own and not read yet.
fn send(relay: &Relay, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(relay.addr).unwrap();
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        relay.addr
    );
    s.write_all(head.as_bytes()).unwrap();
    s
}

/// Whether the relay has begun to answer on `s` (without waiting for it to).
fn answered(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let got = matches!(s.peek(&mut byte), Ok(n) if n > 0);
    s.set_nonblocking(false).unwrap();
    got
}

/// A GitHub provider whose token endpoint is `hanging`'s: a sign-in there holds a blocking
/// thread until the test releases it.
fn stuck_at(hanging: &Hanging) -> Vec<(&'static str, String)> {
    vec![
        ("KIND", "github".into()),
        ("CLIENT_ID", "client-id".into()),
        ("CLIENT_SECRET", "client-secret".into()),
        // Never visited: the test brings the provider's redirect back itself.
        ("AUTHORIZE_URL", "http://127.0.0.1:9/authorize".into()),
        ("TOKEN_URL", hanging.url.clone()),
        ("API_URL", "http://127.0.0.1:9/api".into()),
    ]
}

/// A broker on `redis` with `providers`, its blocking pool one thread big; ready.
fn one_blocking_thread(
    planned: Planned,
    redis: &RedisServer,
    providers: &[(&str, Vec<(&'static str, String)>)],
) -> Broker {
    let mut env = providers_env(providers);
    for (k, v) in [
        ("OAUTH_RELAY_REDIS_URL", redis.url()),
        ("OAUTH_RELAY_ENCRYPTION_KEY", KEY.into()),
        ("OAUTH_RELAY_BLOCKING_THREADS", "1".into()),
        // Longer than any wait below: the exchange ends when the test releases it.
        ("OAUTH_RELAY_EXCHANGE_TIMEOUT_SECS", "3600".into()),
    ] {
        env.push((k.into(), v));
    }
    let broker = planned.start(&env);
    eventually("the relay to be ready", || {
        (broker.relay.get("/ready").status == 200).then_some(())
    });
    broker
}

/// A person signs in at `provider` (`stuck_at(hanging)`): the callback's code exchange takes
/// the only blocking thread and keeps it, since the token endpoint never answers. The sign-in's
/// page status, once `hanging` is released, and the session.
fn hold_the_blocking_thread(
    broker: &Broker,
    hanging: &Hanging,
    provider: &str,
) -> (std::thread::JoinHandle<u16>, Value) {
    let session = broker.session(provider, json!({ "expected_subject": "1" }));
    let authorize = broker.open(&session);
    let oauth_state = authorize
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("state="))
        .unwrap()
        .to_string();
    let arrival = format!("/login/{provider}/callback?code=provider-code&state={oauth_state}");
    let addr = broker.relay.addr;
    let sign_in = std::thread::spawn(move || http(addr, "GET", &arrival, &[], b"").status);
    hanging
        .held
        .recv_timeout(Duration::from_secs(120))
        .expect("the code exchange never reached the token endpoint");
    (sign_in, session)
}

/// `GET path` with `bearer`, sent on a socket of its own and not read yet: a route that runs on
/// the blocking pool, which waits for the thread.
fn queue_on_the_pool(relay: &Relay, path: &str, bearer: &str) -> TcpStream {
    let addr = relay.addr;
    let mut queued = TcpStream::connect(addr).unwrap();
    queued
        .write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {bearer}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    queued
}

/// Releases the held thread: the sign-in fails (its page says so) and the queued route is
/// answered.
fn release(hanging: &Hanging, sign_in: std::thread::JoinHandle<u16>, mut queued: TcpStream) {
    hanging.release.send(()).unwrap();
    let status = sign_in.join().unwrap();
    assert!(
        status >= 400,
        "the exchange failed, and the page says so: {status}"
    );
    let mut raw = Vec::new();
    queued.read_to_end(&mut raw).unwrap();
    assert_eq!(support::parse_response(&raw).status, 200);
}

#[test]
fn relay_steps_on_redis_are_served_while_the_only_blocking_thread_is_held() {
    let redis = RedisServer::start();
    let hanging = Hanging::start();
    let planned = Planned::new();
    let broker = one_blocking_thread(planned, &redis, &[("github", stuck_at(&hanging))]);
    let relay = &broker.relay;
    let addr = relay.addr;
    let (sign_in, session) = hold_the_blocking_thread(&broker, &hanging, "github");
    // A route that runs on the pool waits for the thread (what the relay's steps did before).
    let status = format!("/status/{}", session["state"].as_str().unwrap());
    let queued = queue_on_the_pool(relay, &status, support::broker::BROKER_TOKEN);

    // Meanwhile every step of the relay on Redis is served.
    let page = relay.get("/callback?code=code-1&state=state-1");
    assert_eq!(page.status, 200, "{}", page.text());
    let got = relay.get("/api/callback/state-1");
    assert_eq!(
        (got.status, got.json()["auth_code"].as_str()),
        (200, Some("code-1"))
    );
    assert_eq!(relay.get("/api/callback/state-1").status, 410);
    let res = As::anyone().register(
        relay,
        json!({ "state": "state-2", "retrieval_hash": hash_of("secret-2") }),
    );
    assert_eq!(res.status, 201, "{}", res.text());
    let res = As::holder("secret-2").get(relay, "/api/callback/state-2?wait=1");
    assert_eq!(
        (res.status, res.json()["status"].as_str()),
        (202, Some("pending"))
    );
    // A long-poll parks, and the callback's news answers it.
    let poll = std::thread::spawn(move || {
        http(
            addr,
            "GET",
            "/api/callback/state-2?wait=600",
            &[("X-Retrieval-Secret", "secret-2")],
            b"",
        )
    });
    eventually("the long-poll to park", || {
        (metric(relay, "oauth_relay_waiting_clients") == Some(1)).then_some(())
    });
    assert_eq!(relay.get("/callback?code=code-2&state=state-2").status, 200);
    let res = poll.join().unwrap();
    assert_eq!(
        (res.status, res.json()["auth_code"].as_str()),
        (200, Some("code-2"))
    );

    // All that while the thread was held: the sign-in and the route on the pool still wait.
    assert!(!sign_in.is_finished(), "the sign-in was answered early");
    assert!(!answered(&queued), "a route on the pool was answered early");
    release(&hanging, sign_in, queued);
}

#[test]
fn a_kept_connections_fresh_token_on_redis_is_served_while_the_only_blocking_thread_is_held() {
    let redis = RedisServer::start();
    let hanging = Hanging::start();
    let planned = Planned::new();
    let fake = FakeGitHub::start_with(FakeGitHubConfig {
        redirect_uri: planned.callback("gh"),
        github_app: true,
        access_token_lifetime_secs: 3600,
        user: GitHubUser::new(7, "ana-silva", "ana.silva@example.com"),
        ..FakeGitHubConfig::default()
    });
    let broker = one_blocking_thread(
        planned,
        &redis,
        &[
            ("gh", fake.provider_settings()),
            ("stuck", stuck_at(&hanging)),
        ],
    );
    let relay = &broker.relay;
    // A kept sign-in, while the pool is free.
    let session = broker.session(
        "gh",
        json!({ "expected_email": "ana.silva@example.com", "keep": true }),
    );
    let page = broker.sign_in(&session, |authorize| {
        get_url(authorize).header("Location").unwrap().to_string()
    });
    assert_eq!(page.status, 200, "{}", page.text());
    let handoff = broker.token(&session).json();
    let id = handoff["connection"]["id"].as_str().unwrap().to_string();
    let credential = handoff["connection"]["credential"]
        .as_str()
        .unwrap()
        .to_string();

    let (sign_in, _) = hold_the_blocking_thread(&broker, &hanging, "stuck");
    // The connection's status runs on the pool: it waits for the thread.
    let queued = queue_on_the_pool(relay, &format!("/connections/{id}"), &credential);
    // Its fresh token does not: read from Redis on the event loop, answered at once.
    let token = |bearer: &str, body: &str| {
        let auth = format!("Bearer {bearer}");
        relay.request(
            "POST",
            &format!("/connections/{id}/token"),
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        )
    };
    for body in ["", r#"{"min_ttl": 60, "wait": 5}"#] {
        let res = token(&credential, body);
        assert_eq!(res.status, 200, "{}", res.text());
        assert_eq!(res.json()["access_token"], handoff["access_token"]);
        assert_eq!(res.header("Cache-Control"), Some("no-store"));
    }
    // Nor does a wrong credential's answer, the unknown id's byte for byte.
    let wrong = token("ckey_not-the-credential", "");
    let unknown = relay.request(
        "POST",
        "/connections/conn_nobody/token",
        &[("Authorization", &format!("Bearer {credential}"))],
        b"",
    );
    assert_eq!((wrong.status, unknown.status), (404, 404));
    assert_eq!(wrong.body, unknown.body);
    assert_eq!(fake.counters().refresh_presentations, 0);

    assert!(!sign_in.is_finished(), "the sign-in was answered early");
    assert!(!answered(&queued), "a route on the pool was answered early");
    release(&hanging, sign_in, queued);
}

/// Sends `signal` to the process `pid` (read before it is stopped: a stopped server answers
/// nothing).
fn signal(pid: &str, signal: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), pid])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

#[test]
fn a_take_whose_client_hung_up_runs_to_its_end_and_is_logged() {
    // Each in a directory of its own (the replica's full sync writes a snapshot).
    let primary = Standalone::start();
    let port = primary.node.port.to_string();
    let replica = Standalone::start_with(false, &["--replicaof", "127.0.0.1", &port]);
    eventually("the replica to be online", || {
        primary
            .node
            .info("replication", "slave0")
            .filter(|s| s.contains("state=online"))
            .map(|_| ())
    });
    let url = primary.url();
    let relay = Relay::start_env(
        &[],
        &[
            ("OAUTH_RELAY_REDIS_URL", url.as_str()),
            ("OAUTH_RELAY_ENCRYPTION_KEY", KEY),
            // Every take waits for the replica, as long as it takes.
            ("OAUTH_RELAY_REDIS_MIN_REPLICAS_ACKED", "1"),
            ("OAUTH_RELAY_REDIS_REPLICA_WAIT_MS", "3600000"),
        ],
    );
    eventually("the relay to be ready", || {
        (relay.get("/ready").status == 200).then_some(())
    });
    assert_eq!(relay.get("/callback?code=kept&state=hung-up").status, 200);

    // The replica stops acknowledging: the take runs on the primary, then waits (WAIT) for it.
    let pid = replica.node.info("server", "process_id").unwrap();
    signal(&pid, "STOP");
    let client = send(&relay, "/api/callback/hung-up");
    eventually("the take to wait for the replica", || {
        (primary.node.info("clients", "blocked_clients").as_deref() == Some("1")).then_some(())
    });
    // The client hangs up, and the relay sees it go.
    let open = metric(&relay, "oauth_relay_open_connections").unwrap();
    drop(client);
    eventually("the relay to close the connection", || {
        (metric(&relay, "oauth_relay_open_connections").unwrap() < open).then_some(())
    });
    signal(&pid, "CONT");

    // The take ran to its end: the code is used up, and handed out as far as the log knows.
    let line = relay.wait_for_log("callback_retrieved");
    assert!(line.contains(&short_hash("hung-up")), "{line}");
    assert!(!line.contains("kept"), "{line}");
    let again = relay.get("/api/callback/hung-up");
    assert_eq!(again.status, 410, "{}", again.text());
}
