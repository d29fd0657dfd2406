//! Several replicas, no sticky sessions: three real `oauth-relay` processes share one real
//! Redis, and each step of a flow goes to a different replica. Also Redis faults, a replica
//! killed mid-sign-in, and what Redis holds in the clear.

use crate::support;

use serde_json::{json, Value};
use std::time::Duration;
use support::fake_microsoft::{self as fake, FakeConfig, FakeMicrosoft, DEFAULT_TENANT_ID};
use support::{eventually, free_port, get_url, path_of, HttpResponse, RedisServer, Relay};

const KEY: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const BROKER_TOKEN: &str = "broker-token-0123456789abcdef";
const EMAIL: &str = "ana.silva@contoso.example";

fn replica(redis: &RedisServer, port: Option<u16>, extra: &[(&str, &str)]) -> Relay {
    let url = redis.url();
    let mut env = vec![
        ("OAUTH_RELAY_REDIS_URL", url.as_str()),
        ("OAUTH_RELAY_ENCRYPTION_KEY", KEY),
    ];
    env.extend_from_slice(extra);
    let port = port.map(|p| p.to_string());
    let args: Vec<&str> = match &port {
        Some(p) => vec!["--port", p],
        None => vec![],
    };
    let relay = Relay::start_env(&args, &env);
    eventually("the replica to be ready", || {
        (relay.get("/ready").status == 200).then_some(())
    });
    relay
}

fn three(redis: &RedisServer) -> [Relay; 3] {
    [
        replica(redis, None, &[]),
        replica(redis, None, &[]),
        replica(redis, None, &[]),
    ]
}

#[test]
fn a_relay_flow_spread_over_three_replicas() {
    let redis = RedisServer::start();
    let [a, b, c] = three(&redis);
    assert_eq!(a.get("/callback?code=code-1&state=st-1").status, 200);
    // A reload on another replica is recognised.
    assert_eq!(b.get("/callback?code=code-1&state=st-1").status, 200);
    let got = b.get("/api/callback/st-1");
    assert_eq!(
        (got.status, got.json()["auth_code"].as_str()),
        (200, Some("code-1"))
    );
    // Someone else's code after retrieval is refused there too.
    assert_eq!(c.get("/callback?code=evil&state=st-1").status, 409);
    assert_eq!(c.get("/api/callback/st-1").status, 410);
    assert_eq!(a.get("/api/callback/st-1").status, 410);
    assert_eq!(a.get("/api/callback/never").status, 404);
    // Before retrieval, it puts the state in conflict on every replica.
    assert_eq!(a.get("/callback?code=code-2&state=st-2").status, 200);
    assert_eq!(c.get("/callback?code=evil&state=st-2").status, 409);
    for r in [&a, &b, &c] {
        assert_eq!(r.get("/api/callback/st-2").status, 409);
    }
    for r in [&a, &b, &c] {
        eventually("the shared count on every replica", || {
            (r.active_callbacks() == 2).then_some(())
        });
    }
}

#[test]
fn a_long_poll_on_one_replica_is_answered_by_a_callback_on_another() {
    let redis = RedisServer::start();
    let [a, b, c] = three(&redis);
    std::thread::scope(|s| {
        let waiter = s.spawn(|| a.get("/api/callback/lp-x?wait=30"));
        let other = s.spawn(|| b.get("/api/callback/lp-x?wait=30"));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!waiter.is_finished());
        assert_eq!(c.get("/callback?code=far-away&state=lp-x").status, 200);
        let mut statuses = [waiter.join().unwrap(), other.join().unwrap()];
        statuses.sort_by_key(|r| r.status);
        assert_eq!(statuses[0].status, 200, "{}", statuses[0].text());
        assert_eq!(statuses[0].json()["auth_code"], "far-away");
        assert_eq!(statuses[1].status, 410);
    });
}

#[test]
fn concurrent_retrievals_across_replicas_hand_out_one_code() {
    let redis = RedisServer::start();
    let replicas = three(&redis);
    support::one_take_wins(&replicas);
}

struct BrokerSetup {
    fake: FakeMicrosoft,
    replicas: Vec<Relay>,
}

/// Three broker replicas behind one public URL. The "load balancer" is the test: it sends
/// each request to whichever replica it likes, whatever host the URL names.
fn brokers(redis: &RedisServer) -> BrokerSetup {
    let public_port = free_port();
    let public = format!("http://127.0.0.1:{public_port}");
    let fake = FakeMicrosoft::start_with(FakeConfig {
        redirect_uris: vec![format!("{public}/m365/callback")],
        ..FakeConfig::default()
    });
    let base = fake.base_url();
    let env = [
        ("WK_PUBLIC_BASE_URL", public.as_str()),
        ("WK_M365_CLIENT_ID", "test-client-id"),
        ("WK_M365_TENANT_ID", DEFAULT_TENANT_ID),
        ("WK_M365_BROKER_TOKEN", BROKER_TOKEN),
        ("WK_M365_LOGIN_BASE_URL", base.as_str()),
        ("WK_M365_GRAPH_BASE_URL", base.as_str()),
    ];
    let replicas = vec![
        replica(redis, Some(public_port), &env),
        replica(redis, None, &env),
        replica(redis, None, &env),
    ];
    BrokerSetup { fake, replicas }
}

fn create(r: &Relay) -> Value {
    let auth = format!("Bearer {BROKER_TOKEN}");
    let res = r.request(
        "POST",
        "/m365/sessions",
        &[("Authorization", &auth)],
        json!({ "expected_email": EMAIL }).to_string().as_bytes(),
    );
    assert_eq!(res.status, 200, "{}", res.text());
    res.json()
}

/// Opens the link on `r` and follows Microsoft's redirect: the callback path.
fn click(r: &Relay, session: &Value) -> String {
    let res = r.get(&path_of(session["login_url"].as_str().unwrap()));
    assert_eq!(res.status, 302, "{}", res.text());
    let res = get_url(res.header("Location").unwrap());
    assert_eq!(res.status, 302);
    path_of(res.header("Location").unwrap())
}

fn token(r: &Relay, session: &Value) -> HttpResponse {
    r.get_auth(
        &format!("/token/{}", session["state"].as_str().unwrap()),
        BROKER_TOKEN,
    )
}

#[test]
fn a_broker_flow_spread_over_three_replicas() {
    let redis = RedisServer::start();
    let s = brokers(&redis);
    let [a, b, c] = [&s.replicas[0], &s.replicas[1], &s.replicas[2]];
    let session = create(a);
    let callback = click(b, &session);
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            a.get_auth(
                &format!("/token/{}?wait=30", session["state"].as_str().unwrap()),
                BROKER_TOKEN,
            )
        });
        std::thread::sleep(Duration::from_millis(300));
        let page = c.get(&callback);
        assert_eq!(page.status, 200, "{}", page.text());
        assert!(page.text().contains("Microsoft 365 connected (read-only)"));
        let tokens = waiter.join().unwrap();
        assert_eq!(tokens.status, 200, "{}", tokens.text());
        assert!(tokens.json()["refresh_token"].is_string());
    });
    assert_eq!(token(b, &session).status, 410);
    assert_eq!(token(c, &session).status, 410);
    // The reload on yet another replica changes nothing.
    assert!(a.get(&callback).text().contains("Already connected"));
    assert_eq!(s.fake.redeemed_codes(), 1);
}

#[test]
fn a_replica_killed_between_click_and_callback_does_not_break_the_sign_in() {
    let redis = RedisServer::start();
    let mut s = brokers(&redis);
    let session = create(&s.replicas[1]);
    let callback = click(&s.replicas[1], &session);
    let mut killed = s.replicas.remove(1);
    killed.signal("KILL");
    killed.wait_exit();
    assert_eq!(s.replicas[1].get(&callback).status, 200);
    assert_eq!(token(&s.replicas[0], &session).status, 200);
}

#[test]
fn redis_holds_no_code_token_state_handle_or_email_in_the_clear() {
    let redis = RedisServer::start();
    let s = brokers(&redis);
    let [a, b] = [&s.replicas[0], &s.replicas[1]];
    a.get("/callback?code=RELAY-CODE-xyz&state=RELAY-STATE-abc");
    a.get("/callback?code=RELAY-CODE-2&state=RELAY-STATE-2");
    b.get("/api/callback/RELAY-STATE-2");
    let session = create(a);
    let pending = create(b);
    click(b, &pending);
    let callback = click(b, &session);
    b.get(&callback);
    let dump = redis.dump();
    let form = &s.fake.token_requests()[0];
    let link = session["login_url"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let needles = [
        "RELAY-CODE",
        "RELAY-STATE",
        EMAIL,
        "contoso",
        session["state"].as_str().unwrap(),
        pending["state"].as_str().unwrap(),
        &link,
        fake::param(form, "code").unwrap(),
        fake::param(form, "code_verifier").unwrap(),
    ];
    // The tokens are still waiting in Redis (not fetched yet): they must be sealed too.
    let tokens = token(a, &session).json();
    let access = tokens["access_token"].as_str().unwrap().to_string();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_string();
    for needle in needles
        .iter()
        .copied()
        .chain([access.as_str(), refresh.as_str()])
    {
        assert!(
            !dump.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle} is in Redis in the clear"
        );
    }
}

#[test]
fn redis_going_away_means_quick_503s_a_failing_ready_and_then_recovery() {
    let mut redis = RedisServer::start();
    let mut r = replica(&redis, None, &[]);
    assert_eq!(r.get("/callback?code=before&state=keep").status, 200);
    redis.stop();
    let page = r.get("/callback?code=c&state=during");
    assert_eq!(page.status, 503);
    assert_eq!(page.media_type(), "text/html");
    let api = r.get("/api/callback/keep");
    assert_eq!(
        (api.status, api.json()["message"].as_str()),
        (503, Some("State storage is unavailable; try again shortly"))
    );
    assert_eq!(r.get("/ready").status, 503);
    let health = eventually("/health to report the outage", || {
        let h = r.get("/health");
        (h.json()["status"] == "degraded").then_some(h)
    });
    assert_eq!(health.status, 200);
    let metrics = r.get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.text().contains("oauth_relay_store_up 0"),
        "{}",
        metrics.text()
    );
    assert!(r.child.try_wait().unwrap().is_none(), "the replica died");
    redis.restart();
    eventually("/ready to recover", || {
        (r.get("/ready").status == 200).then_some(())
    });
    // The restarted Redis lost its data (no persistence here); service itself is back.
    assert_eq!(r.get("/callback?code=after&state=back").status, 200);
    assert_eq!(r.get("/api/callback/back").json()["auth_code"], "after");
    eventually("/health to report healthy again", || {
        (r.get("/health").json()["status"] == "healthy").then_some(())
    });
}

#[test]
fn redis_without_an_encryption_key_is_refused_at_start_up() {
    let out = std::process::Command::new(support::BIN)
        .env("OAUTH_RELAY_REDIS_URL", "redis://127.0.0.1:1/0")
        .env_remove("OAUTH_RELAY_ENCRYPTION_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("OAUTH_RELAY_ENCRYPTION_KEY"));
}

/// Runs `redis-server` with extra arguments on a free port; killed on drop.
struct CustomRedis(std::process::Child);

impl Drop for CustomRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn custom_redis(args: &[&str]) -> CustomRedis {
    CustomRedis(
        std::process::Command::new("redis-server")
            .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server"),
    )
}

fn relay_on(url: &str, extra: &[(&str, &str)]) -> Relay {
    let mut env = vec![
        ("OAUTH_RELAY_REDIS_URL", url),
        ("OAUTH_RELAY_ENCRYPTION_KEY", KEY),
    ];
    env.extend_from_slice(extra);
    Relay::start_env(&[], &env)
}

#[test]
fn the_redis_password_can_come_from_a_file() {
    let port = free_port().to_string();
    let _redis = custom_redis(&["--port", &port, "--requirepass", "pa55-word"]);
    let dir = std::env::temp_dir().join(format!("oauth-relay-pw-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let (good, bad) = (dir.join("good"), dir.join("bad"));
    std::fs::write(&good, "pa55-word\n").unwrap();
    std::fs::write(&bad, "wrong\n").unwrap();
    let url = format!("redis://127.0.0.1:{port}/0");
    let ok = relay_on(
        &url,
        &[("OAUTH_RELAY_REDIS_PASSWORD_FILE", good.to_str().unwrap())],
    );
    eventually("ready with the right password", || {
        (ok.get("/ready").status == 200).then_some(())
    });
    assert_eq!(ok.get("/callback?code=c&state=pw").status, 200);
    let refused = relay_on(
        &url,
        &[("OAUTH_RELAY_REDIS_PASSWORD_FILE", bad.to_str().unwrap())],
    );
    assert_eq!(refused.get("/ready").status, 503);
    assert!(
        !refused
            .logs()
            .iter()
            .any(|l| l.contains("wrong") || l.contains("pa55")),
        "password logged"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rediss_with_a_private_ca() {
    let dir = support::redis_topology::TempDir::new("tls");
    let support::redis_topology::TestCa { cert, key, ca } =
        support::redis_topology::TestCa::new(&dir);
    let port = free_port().to_string();
    let _redis = custom_redis(&[
        "--port",
        "0",
        "--tls-port",
        &port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ]);
    let url = format!("rediss://localhost:{port}/0");
    let trusted = relay_on(&url, &[("OAUTH_RELAY_REDIS_CA_FILE", ca.as_str())]);
    eventually("ready over TLS", || {
        (trusted.get("/ready").status == 200).then_some(())
    });
    assert_eq!(trusted.get("/callback?code=c&state=tls").status, 200);
    assert_eq!(trusted.get("/api/callback/tls").json()["auth_code"], "c");
    // Without the CA, the server's certificate is not trusted: fail closed.
    let untrusted = relay_on(&url, &[]);
    assert_eq!(untrusted.get("/ready").status, 503);
    untrusted.wait_for_log("UnknownIssuer");
}

fn redis_cli(redis: &RedisServer, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `threads` clients at once, each sending `rounds` of every kind of request (store a
/// callback, take it, `/health`, `/ready`); returns the requests that did not answer 200.
fn every_kind(r: &Relay, tag: &str, threads: usize, rounds: usize) -> Vec<String> {
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut failed = Vec::new();
                    for i in 0..rounds {
                        let state = format!("{tag}-{t}-{i}");
                        for path in [
                            format!("/callback?code=c-{state}&state={state}"),
                            format!("/api/callback/{state}"),
                            "/health".to_string(),
                            "/ready".to_string(),
                        ] {
                            let status = r.get(&path).status;
                            if status != 200 {
                                failed.push(format!("{path}: {status}"));
                            }
                        }
                    }
                    failed
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
}

/// A replica on `redis`, kept busy by 8 clients at once until it holds connections to Redis
/// (Redis's `normal` clients, less the `redis-cli` asking; the subscription is not one). The
/// Redis layer multiplexes every call on one connection per server, so one is all there is.
fn with_several_pooled_connections(redis: &RedisServer) -> Relay {
    let r = replica(redis, None, &[]);
    let mut round = 0;
    eventually("the replica to hold a connection to Redis", || {
        round += 1;
        let failed = every_kind(&r, &format!("fill{round}"), 8, 5);
        assert!(failed.is_empty(), "{failed:?}");
        let clients = redis_cli(redis, &["CLIENT", "LIST", "TYPE", "normal"]);
        (clients.lines().count() > 1).then_some(())
    });
    r
}

#[test]
fn after_redis_restarts_no_request_fails_on_a_connection_pooled_before() {
    let mut redis = RedisServer::start();
    let r = with_several_pooled_connections(&redis);
    let subscriber_drops = || {
        r.logs()
            .iter()
            .filter(|l| l.contains("\"redis_subscriber\""))
            .count()
    };
    let drops = subscriber_drops();
    redis.restart();
    // No request saw the outage; the replica's subscription did. (Waiting for /ready instead
    // would hide the fault: each /ready that met a dead connection answered 503 and dropped
    // it, so the poll itself emptied the pool.)
    eventually("the replica to see its subscription drop", || {
        (subscriber_drops() > drops).then_some(())
    });
    let failed = every_kind(&r, "after", 8, 25);
    assert!(
        failed.is_empty(),
        "{} of 800 requests failed after the restart: {failed:?}",
        failed.len()
    );
}

#[test]
fn connections_redis_closed_while_idle_are_not_used() {
    let redis = RedisServer::start();
    let r = with_several_pooled_connections(&redis);
    // What Redis's idle `timeout`, a proxy or a NAT does to quiet connections: no outage the
    // subscription would notice.
    redis_cli(&redis, &["CLIENT", "KILL", "TYPE", "normal"]);
    // Longer than the store uses a pooled connection unchecked.
    std::thread::sleep(Duration::from_millis(1500));
    let failed = every_kind(&r, "after", 8, 25);
    assert!(
        failed.is_empty(),
        "{} of 800 requests failed: {failed:?}",
        failed.len()
    );
}

#[test]
fn start_up_warns_when_redis_would_lose_everything_in_a_restart() {
    // The test server persists nothing (no snapshots, no append-only file).
    let redis = RedisServer::start();
    let r = replica(&redis, None, &[]);
    let line = r.wait_for_log("\"redis_persistence\"");
    assert!(
        line.contains("persists nothing") && line.contains("appendfsync always"),
        "{line}"
    );
}
